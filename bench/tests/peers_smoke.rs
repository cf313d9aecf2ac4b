//! Smoke tests of `spindle-bench peers` (throughput and `--rate`) and of
//! `spindle-bench latency`'s floors: short runs, their JSON checked. No
//! timing is asserted (the figures of a debug build on a busy machine mean
//! nothing); what is checked is that every system ran and reported.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let exe = Path::new(env!("CARGO_BIN_EXE_spindle-bench"));
    let out = Command::new(exe).args(args).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "spindle-bench {args:?} failed: {stderr}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn positive(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key].as_f64();
    assert!(x.is_some_and(|x| x > 0.0), "{key} = {}", v[key]);
    x.unwrap_or(0.0)
}

#[test]
fn peers_throughput_short_run() -> Result<(), Box<dyn std::error::Error>> {
    let v =
        run(&["peers", "--jobs", "20000", "--repeat", "1", "--floor-items", "10000", "--json"])?;
    for s in ["tokio", "crossbeam", "rayon", "spindle_memory", "spindle_process"] {
        positive(&v, &format!("{s}_jobs_per_sec"));
        positive(&v, &format!("{s}_cpu_us_per_job"));
    }
    let best = v["best_peer"].as_str().unwrap_or_default().to_string();
    assert!(["tokio", "crossbeam", "rayon"].contains(&best.as_str()), "best_peer = {best}");
    assert_eq!(
        positive(&v, "best_peer_jobs_per_sec"),
        positive(&v, &format!("{best}_jobs_per_sec"))
    );
    positive(&v, "spindle_memory_vs_best_peer");
    Ok(())
}

#[test]
fn peers_latency_short_run() -> Result<(), Box<dyn std::error::Error>> {
    let v = run(&["peers", "--rate", "2000", "--seconds", "0.2", "--repeat", "1", "--json"])?;
    for s in ["tokio", "crossbeam", "crossbeam_spinning", "spindle_memory", "spindle_process"] {
        let p50 = positive(&v, &format!("{s}_p50_us"));
        let p99 = positive(&v, &format!("{s}_p99_us"));
        assert!(p50 <= p99, "{s}: p50 {p50} > p99 {p99}");
    }
    assert!(v["spindle_memory_cpu_cores_used"].as_f64().is_some_and(|c| c >= 0.0));
    assert!(v["tokio_cpu_cores_used"].is_null(), "cores are measured for Spindle only");
    Ok(())
}

#[test]
fn latency_reports_three_floors() -> Result<(), Box<dyn std::error::Error>> {
    let v = run(&[
        "latency",
        "--rate",
        "2000",
        "--seconds",
        "0.2",
        "--floor-seconds",
        "0.1",
        "--durability",
        "memory",
        "--json",
    ])?;
    let mut p50s = Vec::new();
    for f in ["floor_parked", "floor_spinning", "floor_same_core"] {
        p50s.push(positive(&v, &format!("{f}_p50_us")));
        positive(&v, &format!("{f}_p99_us"));
    }
    let best = positive(&v, "floor_best_p50_us");
    assert_eq!(best, p50s.iter().copied().fold(f64::MAX, f64::min));
    positive(&v, "submit_to_start_p50_us");
    positive(&v, "submit_to_start_p99_us");
    assert!(v["cpu_cores_used"].as_f64().is_some_and(|c| c >= 0.0));
    Ok(())
}

#[test]
fn peers_rejects_bad_options() -> Result<(), Box<dyn std::error::Error>> {
    let exe = Path::new(env!("CARGO_BIN_EXE_spindle-bench"));
    for args in
        [&["peers", "--only", "nope"][..], &["peers", "--rate", "0"], &["peers", "--repeat", "0"]]
    {
        let out = Command::new(exe).args(args).output()?;
        assert!(!out.status.success(), "{args:?} was accepted");
    }
    Ok(())
}
