//! `spindle --jetstream URL put|work` against a real nats-server (found as
//! `jetstream/tests/support/mod.rs` says; skipped, saying so, when none is
//! configured): a unique key put twice through the CLI is a duplicate with
//! the first id, and `spindle work` on another process runs the job once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../jetstream/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

fn spindle(url: &str, ns: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["--jetstream", url, "--namespace", ns])
        .args(args)
        .env_remove("SPINDLE_SOCKET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spindle {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_duplicate_key_through_the_cli_and_a_cli_worker_running_the_job_once() {
    let Some(srv) = support::nats("cli") else { return };
    let (url, ns) = (srv.url.as_str(), srv.ns.as_str());
    let first =
        json(&spindle(url, ns, &["put", "-q", "mail.x", "--unique", "k1", "--json", "hello"]));
    assert_eq!(first["duplicate"], false, "{first}");
    let again =
        json(&spindle(url, ns, &["put", "-q", "mail.x", "--unique", "k1", "--json", "other"]));
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"], "{again}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ran");
    let script = format!("cat >> {}; echo >> {}", file.display(), file.display());
    spindle(url, ns, &["work", "-q", "mail.x", "--exit-when-empty", "--", "sh", "-c", &script]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello\n");

    // Commands without a JetStream meaning are refused, not misapplied.
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["--jetstream", url, "--namespace", ns, "kick", "-q", "mail.x", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not work with --jetstream"));
}

#[test]
fn priorities_through_the_cli_run_by_band() {
    let Some(srv) = support::nats("cli_pri") else { return };
    let (url, ns) = (srv.url.as_str(), srv.ns.as_str());
    // A priority needs the queue's bands: refused before any node declared them.
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .args(["--jetstream", url, "--namespace", ns, "put", "-q", "jobs", "--pri", "5", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no priority bands"), "{out:?}");
    // A worker declares two bands (0-1023 and the rest) and finds nothing.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ran");
    let script = format!("cat >> {}; echo >> {}", file.display(), file.display());
    let work = ["work", "-q", "jobs", "--bands", "1024", "--exit-when-empty", "--"];
    let work: Vec<&str> = work.into_iter().chain(["sh", "-c", script.as_str()]).collect();
    spindle(url, ns, &work);
    for (pri, body) in [("70000", "late"), ("1024", "default"), ("3", "urgent")] {
        spindle(url, ns, &["put", "-q", "jobs", "--pri", pri, body]);
    }
    spindle(url, ns, &work);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "urgent\nlate\ndefault\n");
}
