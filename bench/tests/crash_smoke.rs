//! `spindle-bench crash`, short: one trial of each configuration finds
//! the books in order, and the same campaign with the log deleted after
//! each kill (`--inject-loss`) reports the lost jobs, so a clean run means
//! the books were checked, not that nothing was looked at.
//!
//! The daemon's trials need `spindled` next to `spindle-bench` (`cargo
//! test --workspace` builds it); without it only the library's run, with a
//! notice.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn bench() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_spindle-bench"))
}

/// `--target both` when spindled is built, else `library`.
fn target() -> &'static str {
    let spindled = bench().with_file_name("spindled");
    if spindled.is_file() {
        "both"
    } else {
        eprintln!("notice: {} not built; library trials only", spindled.display());
        "library"
    }
}

fn campaign(extra: &[&str]) -> Result<(Output, Value), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(bench())
        .args(["crash", "--json", "--max-ops", "400", "--target", target()])
        .arg("--dir")
        .arg(dir.path())
        .args(extra)
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!("no JSON summary ({e}); stderr: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    Ok((out, v))
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing from {v}"))
}

#[test]
fn every_configuration_keeps_its_books() -> Result<(), Box<dyn std::error::Error>> {
    let (out, v) = campaign(&["--trials", "7", "--seed", "1400"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "crash campaign failed:\n{stderr}");
    assert_eq!(count(&v, "violations"), 0, "{stderr}");
    let configs = v["configurations"].as_array().ok_or("no configurations")?;
    let both = target() == "both";
    assert_eq!(configs.len(), if both { 7 } else { 3 }, "{v}");
    assert_eq!(count(&v, "trials"), 7);
    assert_eq!(count(&v, "kills"), 14, "two rounds per trial");
    // The books were really checked: puts acknowledged, and in the
    // persistent modes jobs found after a restart.
    assert!(count(&v, "acked_puts") > 0, "{v}");
    assert!(count(&v, "checked_present") > 0, "{v}");
    if both {
        assert!(count(&v, "acked_deletes") > 0, "{v}");
        assert!(count(&v, "checked_gone") > 0, "{v}");
    }
    // One line per trial on stderr.
    assert_eq!(stderr.lines().filter(|l| l.starts_with("trial ")).count(), 7, "{stderr}");
    Ok(())
}

#[test]
fn a_lost_log_is_reported() -> Result<(), Box<dyn std::error::Error>> {
    let (out, v) =
        campaign(&["--trials", "2", "--seed", "1500", "--mode", "process", "--inject-loss"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a campaign that lost its log passed:\n{stderr}");
    assert!(count(&v, "violations") > 0, "{v}");
    // Every configuration that had acknowledged puts to lose reports them.
    let failed = v["failed_trials"].as_array().ok_or("no failed_trials")?;
    let configs = v["configurations"].as_array().ok_or("no configurations")?;
    let mut with_puts = 0;
    for c in configs.iter().filter(|c| c["acked_puts"].as_u64().unwrap_or(0) > 0) {
        with_puts += 1;
        assert!(
            failed.iter().any(|f| f["target"] == c["target"] && f["mode"] == c["mode"]),
            "{c} lost its log without a violation: {v}"
        );
    }
    assert!(with_puts > 0, "no acknowledged put to lose: {v}");
    assert!(stderr.contains("lost"), "{stderr}");
    Ok(())
}
