//! The write-amplification study: segment preparation (zero-fill vs
//! `posix_fallocate` only) × sync method (`msync` vs `fdatasync`), plus the
//! probe variants of `probe_storage.rs`, measured against the single-page
//! fdatasync floor.
//!
//! Background: ext4 on kernel 6.x may cache a file in large folios; one
//! small store through the mapping then dirties (and each sync writes) the
//! whole folio. `write_bytes` per commit exposes that directly: near 4 KiB
//! is the floor, ~1 MiB means a large folio is rewritten on every commit.
//!
//! The machine may be shared and its disk noisy, so measurements are
//! interleaved: every strategy (and the floor) runs a slice of its commits
//! in each round, so a noisy second hurts all of them alike.

use crate::append::{AppendBench, AppendRun};
use crate::commit::{CommitBench, CommitRun};
use crate::floor::{Floor, FloorBench};
use crate::io_counters::IoCounters;
use crate::report::format_number;
use crate::setup::{Strategy, WalSetup};
use crate::BoxResult;
use serde_json::{json, Value};
use std::path::Path;

/// Payload of the study's commits (and of the scenario's commit metrics).
pub const COMMIT_PAYLOAD: usize = 256;
/// Payload of the study's appends.
pub const APPEND_PAYLOAD: usize = 64;

/// Runs the floor and one single-committer bench per strategy, interleaved
/// over `rounds` rounds, `commits` timed commits (and floor syncs) each.
pub fn latency_phase(
    dir: &Path,
    base: &WalSetup,
    strategies: &[Strategy],
    commits: u64,
    rounds: u64,
    io: &IoCounters,
) -> BoxResult<(Floor, Vec<CommitRun>)> {
    let rounds = rounds.clamp(1, commits);
    let per_round = commits / rounds;
    let mut floor = FloorBench::new(dir, per_round * rounds)?;
    let mut benches = strategies
        .iter()
        .map(|s| {
            CommitBench::new(
                &dir.join(format!("commit-{}", s.name())),
                &base.with(*s),
                COMMIT_PAYLOAD,
            )
        })
        .collect::<BoxResult<Vec<_>>>()?;
    io.settle(std::time::Duration::from_secs(3))?;
    for _ in 0..rounds {
        floor.run(per_round, io)?;
        for b in &mut benches {
            b.run(per_round, io)?;
        }
    }
    let runs = benches.into_iter().map(CommitBench::finish).collect::<BoxResult<Vec<_>>>()?;
    for s in strategies {
        std::fs::remove_dir_all(dir.join(format!("commit-{}", s.name())))?;
    }
    Ok((floor.finish()?, runs))
}

/// One thread appending `APPEND_PAYLOAD`-byte records per strategy,
/// interleaved over `rounds` rounds, `records` records each.
pub fn append_phase(
    dir: &Path,
    base: &WalSetup,
    strategies: &[Strategy],
    records: u64,
    rounds: u64,
    io: &IoCounters,
) -> BoxResult<Vec<AppendRun>> {
    let rounds = rounds.clamp(1, records);
    let mut benches = strategies
        .iter()
        .map(|s| {
            AppendBench::new(
                &dir.join(format!("append-{}", s.name())),
                &base.with(*s),
                APPEND_PAYLOAD,
            )
        })
        .collect::<BoxResult<Vec<_>>>()?;
    for _ in 0..rounds {
        for b in &mut benches {
            b.run(records / rounds, io)?;
        }
    }
    let runs = benches.into_iter().map(AppendBench::finish).collect::<BoxResult<Vec<_>>>()?;
    for s in strategies {
        std::fs::remove_dir_all(dir.join(format!("append-{}", s.name())))?;
    }
    Ok(runs)
}

/// One strategy's numbers.
#[derive(Debug, Clone)]
pub struct StrategyResult {
    /// Which strategy.
    pub strategy: Strategy,
    /// Single-committer commits.
    pub commit: CommitRun,
    /// One thread appending 64 B records, `SyncPolicy::Never`.
    pub append: AppendRun,
}

/// Among the `FsStorage` strategies (the ones a user can pick), the one to
/// recommend: lowest commit p99, then lowest p50.
pub fn best(results: &[StrategyResult]) -> Option<&StrategyResult> {
    results.iter().filter(|r| matches!(r.strategy, Strategy::Fs { .. })).min_by(|a, b| {
        let (x, y) = (&a.commit.latency, &b.commit.latency);
        x.p99_us.total_cmp(&y.p99_us).then(x.p50_us.total_cmp(&y.p50_us))
    })
}

/// Column headers matching [`rows`].
pub const HEADER: [&str; 11] = [
    "strategy",
    "commit p50 µs",
    "commit p99 µs",
    "p50/floor",
    "p99/floor",
    "write_bytes/commit",
    "device B/commit",
    "append 64B/s",
    "faults/4KiB",
    "major/4KiB",
    "segment ms",
];

/// Table rows for the human report.
pub fn rows(results: &[StrategyResult], floor: &Floor) -> Vec<Vec<String>> {
    let fmt = format_number;
    results
        .iter()
        .map(|r| {
            let c = &r.commit;
            vec![
                r.strategy.name(),
                fmt(c.latency.p50_us),
                fmt(c.latency.p99_us),
                format!("{:.2}x", c.latency.p50_us / floor.latency.p50_us),
                format!("{:.2}x", c.latency.p99_us / floor.latency.p99_us),
                fmt(c.write_bytes_per_commit),
                c.device_bytes_per_commit.map(fmt).unwrap_or_else(|| "n/a".into()),
                fmt(r.append.per_sec()),
                format!("{:.3}", r.append.faults_per_page()),
                format!("{:.3}", r.append.major_faults_per_page()),
                fmt(r.append.segment_create_ms),
            ]
        })
        .collect()
}

/// The study as a JSON array.
pub fn to_json(results: &[StrategyResult]) -> Value {
    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    Value::Array(
        results
            .iter()
            .map(|r| {
                let c = &r.commit;
                json!({
                    "strategy": r.strategy.name(),
                    "commit_p50_us": r1(c.latency.p50_us),
                    "commit_p99_us": r1(c.latency.p99_us),
                    "commit_p999_us": r1(c.latency.p999_us),
                    "write_bytes_per_commit": c.write_bytes_per_commit.round(),
                    "device_write_bytes_per_commit": c.device_bytes_per_commit.map(f64::round),
                    "faults_per_commit": r1(c.faults_per_commit),
                    "syncs_per_commit": r1(c.syncs_per_commit),
                    "append_per_sec_64b": r.append.per_sec().round(),
                    "append_faults_per_4k": (r.append.faults_per_page() * 1000.0).round() / 1000.0,
                    "append_major_faults_per_4k": (r.append.major_faults_per_page() * 1000.0).round() / 1000.0,
                    "append_read_bytes": r.append.io.read_bytes,
                    "append_segment_waits": r.append.segment_waits,
                    "segment_create_ms": r1(r.append.segment_create_ms),
                })
            })
            .collect(),
    )
}
