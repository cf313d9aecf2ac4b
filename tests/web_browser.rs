//! The page in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver), against `spindle web` and a real spindled
//! under live traffic. It opens the overview while a burst arrives, saves
//! a screenshot, pauses a queue from the page and sees the daemon report
//! it paused, kicks a buried job, checks that a `<script>` payload is
//! shown as text and never runs, and that `--read-only` disables actions.
//!
//! Skips (with a printed reason) when chromium or chromedriver is missing,
//! unless `CI` is set: then it fails (`.ci/run` installs both). The
//! overview's screenshot goes to `$CARGO_TARGET_TMPDIR/web-overview.png`,
//! and also to `$SPINDLE_WEB_SCREENSHOT` when set (how `docs/web.png` was
//! made).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/web.rs"]
mod web;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Addr, Server};
use serde_json::{json, Value};
use spindle::client::Client;
use web::{poll, WebProc};
use webdriver::Browser;

const EVIL: &str = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">";

/// Producers putting into `emails` and `reports` and a worker completing
/// `emails`, until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(sock: &std::path::Path) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for tube in ["emails", "reports"] {
            let (stop, sock) = (Arc::clone(&stop), sock.to_path_buf());
            threads.push(std::thread::spawn(move || {
                let mut c = Client::connect_unix(&sock).unwrap();
                c.use_tube(tube).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.put(
                        100,
                        Duration::ZERO,
                        Duration::from_secs(60),
                        format!("{tube} {i}").as_bytes(),
                    )
                    .unwrap();
                    i += 1;
                    // Pacing, not synchronisation: a steady few hundred a second.
                    std::thread::sleep(Duration::from_millis(3));
                }
            }));
        }
        let (st, sock) = (Arc::clone(&stop), sock.to_path_buf());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect_unix(&sock).unwrap();
            c.watch("emails").unwrap();
            c.ignore("default").unwrap();
            while !st.load(Ordering::Relaxed) {
                if let Some(j) = c.reserve_with_timeout(Duration::from_secs(1)).unwrap() {
                    c.delete(j.id).unwrap();
                }
            }
        }));
        Traffic { stop, threads }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn the_page_shows_a_burst_pauses_a_queue_kicks_a_buried_job_and_keeps_a_script_payload_inert() {
    if let Err(why) = webdriver::available() {
        println!("skipped: {why}");
        return;
    }
    let d = Server::spindled(&[]);
    let sock = match d.addr() {
        Addr::Unix(p) => p.clone(),
        Addr::Tcp(_) => unreachable!(),
    };
    let mut c = Client::connect_unix(&sock).unwrap();
    c.use_tube("failing").unwrap();
    let buried = c.put(100, Duration::ZERO, Duration::from_secs(60), b"broken job").unwrap();
    c.watch("failing").unwrap();
    c.reserve_job(buried).unwrap();
    c.bury(buried, 100).unwrap();
    c.use_tube("evil").unwrap();
    let evil = c.put(100, Duration::ZERO, Duration::from_secs(60), EVIL.as_bytes()).unwrap();

    let w = WebProc::start(&sock, &[]);
    let traffic = Traffic::start(&sock);
    let b = Browser::start(1280, 1000);

    // The overview, with the burst arriving: both queues listed, a put
    // rate above zero, and a chart with some history.
    b.goto(&w.page);
    b.wait_for("tr[data-queue=\"emails\"]");
    b.wait_for("tr[data-queue=\"reports\"]");
    b.poll("a put rate on the overview", || {
        let t = b.text("#put-rate .n");
        (!t.is_empty() && t != "0.0/s").then_some(())
    });
    poll("ten samples for the chart", || {
        (w.json("/api/history")["samples"].as_array().unwrap().len() >= 10).then_some(())
    });
    b.poll("the chart drawn from them", || {
        let v = b.js(
            "const c = document.getElementById('chart'); return c ? c.toDataURL().length : 0;",
            &[],
        );
        (v.as_u64().unwrap_or(0) > 5_000).then_some(())
    });
    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("web-overview.png"), &png).unwrap();
    if let Some(p) = std::env::var_os("SPINDLE_WEB_SCREENSHOT") {
        std::fs::write(p, &png).unwrap();
    }

    // Pause `emails` from its queue page; the daemon reports it paused.
    b.goto(&format!("{}/#/queue/emails", w.base));
    b.wait_for("#pause-btn");
    b.type_into("#pause-secs", "600");
    b.click("#pause-btn");
    poll("the daemon to report emails paused", || {
        (c.stats_tube("emails").unwrap().get_u64("pause") == Some(600)).then_some(())
    });
    b.poll("the page to show it paused", || {
        b.text("#paused-state").starts_with("paused").then_some(())
    });
    drop(traffic);

    // Kick the buried job from its page.
    b.goto(&format!("{}/#/job/{buried}", w.base));
    b.poll("the buried job's page", || (b.text("#job-state") == "buried").then_some(()));
    b.click("#kick-btn");
    poll("the daemon to report the job ready", || {
        (c.stats_job(buried).unwrap().get("state") == Some("ready")).then_some(())
    });
    b.poll("the page to show it ready", || (b.text("#job-state") == "ready").then_some(()));

    // A payload of markup is shown as text and nothing in it runs.
    b.goto(&format!("{}/#/job/{evil}", w.base));
    b.poll("the evil job's payload", || (b.text("#payload") == EVIL).then_some(()));
    let v = b.js(
        "return [window.__pwned === undefined, \
                 document.querySelectorAll('#payload *').length, \
                 document.querySelectorAll('script').length, \
                 document.querySelectorAll('img').length];",
        &[],
    );
    assert_eq!(v, json!([true, 0, 1, 0]), "the payload must stay text");
    b.goto(&format!("{}/#/queue/evil", w.base));
    b.poll("the evil queue's peek", || b.text("#next-ready").contains("<script>").then_some(()));
    let v = b
        .js("return [window.__pwned === undefined, document.querySelectorAll('img').length];", &[]);
    assert_eq!(v, json!([true, 0]));

    // A read-only page offers no action, even opened straight on a job.
    let ro = WebProc::start(&sock, &["--read-only"]);
    b.goto(&format!("{}/#/job/{evil}", ro.base));
    b.poll("the read-only job page", || (b.text("#mode") == "read-only").then_some(()));
    let v: Value = b.js(
        "return ['#kick-btn', '#delete-btn'].map(s => document.querySelector(s).disabled);",
        &[],
    );
    assert_eq!(v, json!([true, true]));
}
