//! Smoke test of `spindle-bench peer beanstalkd`: a short run of every
//! phase, its JSON checked. Fails without beanstalkd (CI installs it);
//! without a built `spindled` it checks the harness with beanstalkd on both
//! sides.

use std::path::Path;
use std::process::Command;

const BEANSTALKD: &str = "/usr/bin/beanstalkd";

#[test]
fn peer_beanstalkd_short_run() -> Result<(), Box<dyn std::error::Error>> {
    assert!(
        Path::new(BEANSTALKD).is_file(),
        "{BEANSTALKD} is not installed: apt-get install -y beanstalkd"
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_spindle-bench"));
    let spindled = exe.with_file_name("spindled");
    let mut cmd = Command::new(exe);
    cmd.args(["peer", "beanstalkd", "--seconds", "0.2", "--put-seconds", "0.1", "--json"]);
    if !spindled.is_file() {
        eprintln!(
            "notice: {} not built; checking the harness with beanstalkd on both sides",
            spindled.display()
        );
        cmd.args(["--spindled", BEANSTALKD]);
    }
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spindle-bench peer failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for mode in ["durable", "memory"] {
        for key in [
            "spindled_cycles_per_sec",
            "beanstalkd_cycles_per_sec",
            "ratio",
            "spindled_p50_us",
            "spindled_p99_us",
            "beanstalkd_p50_us",
            "beanstalkd_p99_us",
        ] {
            let x = &v[mode][key];
            assert!(x.as_f64().is_some_and(|x| x > 0.0), "{mode}.{key} = {x}");
        }
    }
    let batch = &v["batch_put_jobs_per_sec"];
    assert!(batch.is_null() || batch.as_f64().is_some_and(|x| x > 0.0), "batch = {batch}");
    assert_eq!(
        v["cores"].as_u64(),
        std::thread::available_parallelism().ok().map(|n| n.get() as u64)
    );
    Ok(())
}

/// The null server (`spindle-null`, the floor under the latency figures)
/// serves the scenario's memory phases: every cycle completes.
#[test]
fn peer_against_the_null_server() -> Result<(), Box<dyn std::error::Error>> {
    assert!(
        Path::new(BEANSTALKD).is_file(),
        "{BEANSTALKD} is not installed: apt-get install -y beanstalkd"
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_spindle-bench"));
    let null = env!("CARGO_BIN_EXE_spindle-null");
    let out = Command::new(exe)
        .args(["peer", "beanstalkd", "--mode", "memory", "--seconds", "0.2", "--json"])
        .args(["--spindled", null])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spindle-bench peer failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let m = &v["memory"];
    assert!(m["spindled_cycles_per_sec"].as_f64().is_some_and(|x| x > 0.0), "{m}");
    assert_eq!(m["spindled_latency_unfinished"].as_u64(), Some(0), "{m}");
    assert!(v["spindled_version"].as_str().is_some_and(|s| s.starts_with("spindle-null")), "{v}");
    Ok(())
}
