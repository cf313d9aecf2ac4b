//! Smoke test of `spindle-bench table`: a short run of every workload, its
//! JSON checked. No timing is asserted (the figures of a debug build on a
//! busy machine mean nothing); allocations are deterministic, so the
//! issue's allocation goals are.

use std::path::Path;
use std::process::Command;

#[test]
fn table_short_run() -> Result<(), Box<dyn std::error::Error>> {
    let exe = Path::new(env!("CARGO_BIN_EXE_spindle-bench"));
    let out = Command::new(exe)
        .args(["table", "--cycles", "4096", "--warmup", "4096", "--backlog", "2000"])
        .args(["--repeat", "2", "--json"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spindle-bench table failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rates = [
        "hot_cycles_per_sec",
        "cycles_per_sec",
        "hot_cycles_per_sec_no_records",
        "cycles_per_sec_no_records",
        "mixed_cycles_per_sec",
    ];
    for key in rates {
        let x = &v[key];
        assert!(x.as_f64().is_some_and(|x| x > 0.0), "{key} = {x}");
        let runs = v["runs"][key].as_array().map(Vec::len);
        assert_eq!(runs, Some(2), "runs.{key} = {}", v["runs"][key]);
    }
    for key in ["allocs_per_cycle", "hot_allocs_per_cycle", "backlog_allocs_per_cycle"] {
        assert!(v[key].as_f64().is_some(), "{key} = {}", v[key]);
    }
    // Issue 19: at most one allocation per cycle, none for a 16-byte
    // payload once the table has grown.
    assert!(v["allocs_per_cycle"].as_f64().is_some_and(|a| a <= 1.0), "{}", v["allocs_per_cycle"]);
    assert_eq!(v["hot_allocs_per_cycle"].as_f64(), Some(0.0), "hot cycles allocate");
    // The backlog workload reserves old jobs, never the one just put.
    assert_eq!(v["backlog_fresh_share"].as_f64(), Some(0.0));
    assert_eq!(v["backlog"].as_u64(), Some(2000));
    assert_eq!(
        v["cores"].as_u64(),
        std::thread::available_parallelism().ok().map(|n| n.get() as u64)
    );
    Ok(())
}

#[test]
fn table_help_and_bad_options() -> Result<(), Box<dyn std::error::Error>> {
    let exe = Path::new(env!("CARGO_BIN_EXE_spindle-bench"));
    let help = Command::new(exe).args(["table", "--help"]).output()?;
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--repeat"));
    let bad = Command::new(exe).args(["table", "--repeat", "0"]).output()?;
    assert!(!bad.status.success());
    let unknown = Command::new(exe).args(["table", "--bogus"]).output()?;
    assert!(!unknown.status.success());
    Ok(())
}
