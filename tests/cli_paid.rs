//! `spindle schedule`, `spindle limit`, `spindle cancel`, `spindle put
//! --expires-in` and cancellation under `spindle work`, against this
//! package's spindled (plain beanstalkd has none of them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Addr, Server};
use serde_json::Value;
use spindle_client::Client;

/// A guard against hanging, never a synchronisation device.
const LIMIT: Duration = Duration::from_secs(30);

fn sock(s: &Server) -> PathBuf {
    match s.addr() {
        Addr::Unix(p) => p.clone(),
        Addr::Tcp(_) => unreachable!(),
    }
}

fn spindle(s: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("--socket")
        .arg(sock(s))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = spindle(s, args);
    assert!(
        out.status.success(),
        "spindle {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn schedule_add_list_pause_resume_rm() {
    let s = Server::spindled(&[]);
    ok(
        &s,
        &[
            "schedule",
            "add",
            "-q",
            "jobs",
            "nightly",
            "--cron",
            "0 0 3 * * *",
            "--tz",
            "Europe/Stockholm",
            "hi",
        ],
    );
    ok(&s, &["schedule", "add", "-q", "jobs", "often", "--every", "250ms", "--no-overlap", "x"]);
    let list: Value = serde_json::from_str(&ok(&s, &["schedule", "list", "--json"])).unwrap();
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["nightly", "often"]);
    assert_eq!(list[0]["rule"], "cron Europe/Stockholm 0 0 3 * * *");
    assert_eq!(list[1]["no-overlap"], true);
    ok(&s, &["schedule", "pause", "-q", "jobs", "often"]);
    assert!(ok(&s, &["schedule", "list"]).contains("often"));
    ok(&s, &["schedule", "resume", "-q", "jobs", "often"]);
    ok(&s, &["schedule", "rm", "-q", "jobs", "often"]);
    let list: Value = serde_json::from_str(&ok(&s, &["schedule", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Errors say what is wrong.
    let out = spindle(&s, &["schedule", "rm", "-q", "jobs", "often"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no schedule named"));
    let out = spindle(&s, &["schedule", "add", "bad", "--cron", "70 * * * *", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad cron expression"));
}

#[test]
fn limit_and_expiry_and_cancel() {
    let s = Server::spindled(&[]);
    ok(&s, &["limit", "-q", "mail", "--concurrency", "2", "--rate", "100/1s", "--burst", "5"]);
    let mut c = Client::connect_unix(sock(&s)).unwrap();
    let ext = c.stats_tube_ext("mail").unwrap();
    assert_eq!(ext.get("limit-concurrency"), Some("2"));
    assert_eq!(ext.get("limit-rate"), Some("100/1000/5"));
    let out = spindle(&s, &["limit", "-q", "mail", "--rate", "0/1s"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));

    let out = ok(&s, &["put", "-q", "mail", "--expires-in", "1h", "--json", "x"]);
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"].as_u64().unwrap();
    let out: Value = serde_json::from_str(&ok(&s, &["cancel", &id.to_string(), "--json"])).unwrap();
    assert_eq!(out["running"], false);
    assert!(!spindle(&s, &["cancel", &id.to_string()]).status.success());
}

#[test]
fn work_stops_the_command_of_a_cancelled_job() {
    let s = Server::spindled(&[]);
    let mut c = Client::connect_unix(sock(&s)).unwrap();
    c.use_tube("w").unwrap();
    let id = c.put(0, Duration::ZERO, Duration::from_secs(60), b"x").unwrap();
    let work = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("--socket")
        .arg(sock(&s))
        .args(["work", "-q", "w", "--max-jobs", "1", "--grace", "5", "--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command runs (the job is reserved), then cancel it.
    let start = Instant::now();
    while c.stats_job(id).unwrap().get("state") != Some("reserved") {
        assert!(start.elapsed() < LIMIT, "spindle work never reserved the job");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.cancel(id).unwrap(), spindle_client::CancelOutcome::Running);
    let out = work.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was cancelled"));
    assert!(matches!(c.stats_job(id), Err(spindle_client::ClientError::NotFound(_))));
}
