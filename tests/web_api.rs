//! `spindle web` over HTTP against a real spindled: `/metrics` parsed by
//! a real Prometheus text parser (prometheus-parse), the JSON API, the
//! actions (pause, resume, clear, kick, delete) seen from the daemon
//! through the Rust client, and the guards (token, Origin, read-only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/web.rs"]
mod web;

use std::collections::HashMap;
use std::time::Duration;

use common::{Addr, Server};
use prometheus_parse::{LineInfo, Scrape, Value as PromValue};
use serde_json::{json, Value};
use spindle::client::Client;
use web::{poll, WebProc};

fn sock(s: &Server) -> std::path::PathBuf {
    match s.addr() {
        Addr::Unix(p) => p.clone(),
        Addr::Tcp(_) => unreachable!("unix socket expected"),
    }
}

/// spindled with a data directory (so the log's metrics exist).
fn daemon(data: &tempfile::TempDir) -> Server {
    Server::spindled(&["-b", data.path().to_str().unwrap()])
}

fn client(s: &Server) -> Client {
    Client::connect_unix(sock(s)).unwrap()
}

/// Puts `body` into `tube`, returning its id.
fn put(c: &mut Client, tube: &str, body: &[u8]) -> u64 {
    c.use_tube(tube).unwrap();
    c.put(100, Duration::ZERO, Duration::from_secs(60), body).unwrap()
}

/// Puts into `tube`, reserves and buries the job.
fn buried(c: &mut Client, tube: &str, body: &[u8]) -> u64 {
    let id = put(c, tube, body);
    c.watch(tube).unwrap();
    let j = c.reserve_job(id).unwrap();
    c.bury(j.id, 100).unwrap();
    id
}

fn sample<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a PromValue> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| &x.value)
}

fn scalar(v: Option<&PromValue>) -> f64 {
    match v {
        Some(PromValue::Counter(x) | PromValue::Gauge(x) | PromValue::Untyped(x)) => *x,
        other => panic!("not a scalar: {other:?}"),
    }
}

#[test]
fn metrics_is_prometheus_text_with_command_tube_worker_and_log_families() {
    let data = common::tempdir();
    let d = daemon(&data);
    let mut c = client(&d);
    for i in 0..5 {
        put(&mut c, "emails", format!("mail {i}").as_bytes());
    }
    c.watch("emails").unwrap();
    let j = c.reserve().unwrap();
    c.delete(j.id).unwrap();
    buried(&mut c, "reports", b"bad report");
    let w = WebProc::start(&sock(&d), &[]);

    let mut r = web::agent().get(format!("{}/metrics", w.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ctype = r.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = r.body_mut().read_to_string().unwrap();

    // Every line is a comment or a sample the parser reads as one.
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Sample { .. } | LineInfo::Doc { .. } | LineInfo::Type { .. } => {}
            other => panic!("line {line:?} parsed as {other:?}"),
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let types: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    for s in &scrape.samples {
        let base = ["_count", "_sum", "_bucket"]
            .iter()
            .find_map(|x| s.metric.strip_suffix(x).filter(|b| types.contains_key(b)))
            .unwrap_or(&s.metric);
        assert!(types.contains_key(base), "{} has no # TYPE", s.metric);
    }

    assert_eq!(scalar(sample(&scrape, "spindle_commands_total", &[("cmd", "put")])), 6.0);
    assert_eq!(scalar(sample(&scrape, "spindle_commands_total", &[("cmd", "delete")])), 1.0);
    assert_eq!(scalar(sample(&scrape, "spindle_commands_total", &[("cmd", "bury")])), 1.0);
    let jobs =
        |tube, state| scalar(sample(&scrape, "spindle_jobs", &[("tube", tube), ("state", state)]));
    assert_eq!(jobs("emails", "ready"), 4.0);
    assert_eq!(jobs("reports", "buried"), 1.0);
    let ev = |tube, e| {
        scalar(sample(&scrape, "spindle_tube_events_total", &[("tube", tube), ("event", e)]))
    };
    assert_eq!(ev("emails", "put"), 5.0);
    assert_eq!(ev("emails", "reserve"), 1.0);
    assert_eq!(ev("emails", "delete"), 1.0);
    assert_eq!(ev("reports", "bury"), 1.0);
    assert_eq!(scalar(sample(&scrape, "spindle_tube_paused", &[("tube", "emails")])), 0.0);
    assert!(scalar(sample(&scrape, "spindle_desired_workers", &[("tube", "emails")])) >= 1.0);
    assert_eq!(scalar(sample(&scrape, "spindle_workers_active", &[("tube", "reports")])), 0.0);
    assert_eq!(scalar(sample(&scrape, "spindle_workers_waiting", &[("tube", "emails")])), 0.0);

    for tube in ["emails", "reports"] {
        match sample(&scrape, "spindle_run_seconds", &[("tube", tube)]) {
            Some(PromValue::Histogram(b)) => {
                assert_eq!(
                    b.last().unwrap().count,
                    1.0,
                    "{tube}: a delete or bury ended a run: {b:?}"
                )
            }
            other => panic!("spindle_run_seconds is not a histogram: {other:?}"),
        }
    }
    assert!(matches!(
        sample(&scrape, "spindle_wait_seconds", &[("tube", "emails")]),
        Some(PromValue::Summary(_))
    ));
    match sample(&scrape, "spindle_job_wait_seconds", &[("tube", "emails")]) {
        Some(PromValue::Histogram(b)) => {
            assert_eq!(b.last().unwrap().count, 1.0, "one reservation: {b:?}");
            assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "cumulative: {b:?}");
        }
        other => panic!("spindle_job_wait_seconds is not a histogram: {other:?}"),
    }
    assert_eq!(scalar(sample(&scrape, "spindle_log_enabled", &[])), 1.0);
    assert!(scalar(sample(&scrape, "spindle_log_bytes", &[])) > 0.0);
    assert!(scalar(sample(&scrape, "spindle_log_segments", &[])) >= 1.0);
    assert!(matches!(
        sample(&scrape, "spindle_log_fsync_seconds", &[]),
        Some(PromValue::Histogram(_))
    ));
    assert_eq!(scalar(sample(&scrape, "spindle_compactions_total", &[])), 0.0);
    assert!(sample(&scrape, "spindle_compaction_running", &[]).is_some());
}

#[test]
fn the_json_api_shows_queues_jobs_and_history() {
    let d = Server::spindled(&[]);
    let mut c = client(&d);
    let big: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let id = put(&mut c, "emails", &big);
    let bid = buried(&mut c, "reports", b"<script>alert(1)</script>");
    let w = WebProc::start(&sock(&d), &[]);

    let o = w.json("/api/overview");
    let q = o["queues"].as_array().unwrap().iter().find(|q| q["name"] == "emails").unwrap();
    assert_eq!(q["ready"], 1);
    assert_eq!(q["paused"], false);
    assert!(q["wait_p99_us"].is_u64() && q["desired_workers"].is_u64(), "{q}");
    assert_eq!(o["server"]["current-jobs-buried"], 1);
    assert_eq!(o["read_only"], false);

    let q = w.json("/api/queues/reports");
    assert_eq!(q["next"]["buried"]["id"], bid);
    assert_eq!(q["next"]["ready"], Value::Null);
    assert_eq!(q["stats"]["current-jobs-buried"], 1);

    let j = w.json(&format!("/api/jobs/{id}"));
    assert_eq!(j["size"], 10_000);
    assert_eq!(j["truncated"], true);
    assert_eq!(j["payload"].as_str().unwrap().len(), 4096);
    assert_eq!(j["stats"]["tube"], "emails");

    let mut r = web::agent().get(format!("{}/api/jobs/{id}/payload", w.base)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cd = r.headers().get("content-disposition").unwrap().to_str().unwrap().to_string();
    assert!(cd.starts_with("attachment"), "{cd}");
    assert_eq!(r.body_mut().read_to_vec().unwrap(), big);

    let (s, b) = w.get("/api/jobs/999999");
    assert_eq!(s, 404, "{b}");
    let (s, _) = w.get("/api/nothing");
    assert_eq!(s, 404);

    // The sampler fills the history the chart draws.
    poll("two history samples", || {
        (w.json("/api/history")["samples"].as_array().unwrap().len() >= 2).then_some(())
    });
}

#[test]
fn actions_reach_the_daemon_and_need_the_token_and_the_page_origin() {
    let d = Server::spindled(&[]);
    let mut c = client(&d);
    put(&mut c, "emails", b"one");
    put(&mut c, "emails", b"two");
    let bid = buried(&mut c, "reports", b"bad");
    let w = WebProc::start(&sock(&d), &[]);
    let token = w.token.clone().expect("a token in the page URL");

    // Without the token, from another origin, or as a plain form: refused.
    let pause = json!({"seconds": 600});
    let url = format!("{}/api/queues/emails/pause", w.base);
    let r = web::agent()
        .post(&url)
        .header("Content-Type", "application/json")
        .send(pause.to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = web::agent()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("X-Spindle-Token", &token)
        .header("Origin", "http://evil.example")
        .send(pause.to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = web::agent()
        .post(&url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Spindle-Token", &token)
        .send("seconds=600")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(c.stats_tube("emails").unwrap().get_u64("pause"), Some(0));

    let (s, b) = w.act("/api/queues/emails/pause", &pause);
    assert_eq!(s, 200, "{b}");
    assert_eq!(c.stats_tube("emails").unwrap().get_u64("pause"), Some(600));
    let (s, _) = w.act("/api/queues/emails/resume", &json!({}));
    assert_eq!(s, 200);
    assert_eq!(c.stats_tube("emails").unwrap().get_u64("pause-time-left"), Some(0));

    let (s, b) = w.act(&format!("/api/jobs/{bid}/kick"), &json!({}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(c.stats_job(bid).unwrap().get("state"), Some("ready"));
    let (s, _) = w.act(&format!("/api/jobs/{bid}/kick"), &json!({}));
    assert_eq!(s, 404, "a ready job cannot be kicked");
    let (s, _) = w.act(&format!("/api/jobs/{bid}/delete"), &json!({}));
    assert_eq!(s, 200);
    assert!(c.peek(bid).unwrap().is_none());

    let (s, b) = w.act("/api/queues/emails/clear", &json!({"states": ["reserved"]}));
    assert_eq!(s, 400, "{b}");
    let (s, b) = w.act("/api/queues/emails/clear", &json!({"states": ["ready"]}));
    assert_eq!((s, &b["cleared"]), (200, &json!(2)), "{b}");
    // The tube had nothing left and nobody using it: the daemon dropped it.
    match c.stats_tube("emails") {
        Ok(m) => assert_eq!(m.get_u64("current-jobs-ready"), Some(0)),
        Err(e) => assert!(matches!(e, spindle::client::ClientError::NotFound(_)), "{e}"),
    }

    buried(&mut c, "reports", b"again");
    let (s, b) = w.act("/api/queues/reports/kick", &json!({"count": 10}));
    assert_eq!((s, &b["kicked"]), (200, &json!(1)), "{b}");
}

#[test]
fn the_queue_view_shows_limits_schedules_and_a_job_can_be_cancelled() {
    use spindle::client::{NewSchedule, ScheduleRule, TubeLimits};
    let d = Server::spindled(&[]);
    let mut c = client(&d);
    let limits = TubeLimits { concurrency: 3, ..TubeLimits::default() };
    c.tube_limit("mail", limits).unwrap();
    c.schedule_add(&NewSchedule {
        tube: "mail".into(),
        name: "digest".into(),
        rule: ScheduleRule::Cron { tz: "UTC".into(), expr: "0 0 7 * * *".into() },
        pri: 0,
        ttr: std::time::Duration::from_secs(60),
        skip_missed: false,
        no_overlap: true,
        payload: b"d".to_vec(),
    })
    .unwrap();
    let id = put(&mut c, "mail", b"to cancel");
    let w = WebProc::start(&sock(&d), &[]);
    let q = w.json("/api/queues/mail");
    assert_eq!(q["stats"]["limit-concurrency"], json!(3), "{q}");
    let s = &q["schedules"][0];
    assert_eq!((&s["name"], &s["rule"]), (&json!("digest"), &json!("cron UTC 0 0 7 * * *")), "{q}");
    let (st, b) = w.act(&format!("/api/jobs/{id}/cancel"), &json!({}));
    assert_eq!((st, &b["running"]), (200, &json!(false)), "{b}");
    assert!(c.peek(id).unwrap().is_none());
    assert_eq!(w.json("/api/queues/mail")["stats"]["cancelled"], json!(1));
    let (st, _) = w.act(&format!("/api/jobs/{id}/cancel"), &json!({}));
    assert_eq!(st, 404);
}

#[test]
fn read_only_refuses_every_action() {
    let d = Server::spindled(&[]);
    let mut c = client(&d);
    let bid = buried(&mut c, "reports", b"bad");
    let w = WebProc::start(&sock(&d), &["--read-only"]);
    assert!(w.token.is_none());
    assert_eq!(w.json("/api/overview")["read_only"], true);
    assert_eq!(w.json("/api/queues/reports")["read_only"], true);
    assert_eq!(w.json(&format!("/api/jobs/{bid}"))["read_only"], true);
    let r = web::agent()
        .post(format!("{}/api/jobs/{bid}/kick", w.base))
        .header("Content-Type", "application/json")
        .header("X-Spindle-Token", "anything")
        .send("{}")
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(c.stats_job(bid).unwrap().get("state"), Some("buried"));
}
