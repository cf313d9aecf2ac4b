//! The `wal` scenario: the fdatasync floor, commit latency, group commit,
//! append throughput, direct multi-producer append vs handoff to an owner
//! thread, and the storage-strategy study, in one run.
//!
//! Latency-sensitive phases run first, before bulk appends leave writeback
//! behind them.

use crate::append::{append_latency, append_run};
use crate::args::Args;
use crate::commit::group_commit_run;
use crate::dir::BenchDir;
use crate::handoff::handoff_run;
use crate::io_counters::IoCounters;
use crate::report::Report;
use crate::setup::{Strategy, WalSetup};
use crate::strategy::{self, StrategyResult, COMMIT_PAYLOAD};
use crate::system::Busy;
use crate::BoxResult;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench wal [options]
  --dir PATH          parent directory for the scratch files (default: ./target,
                      else /var/tmp, else /tmp; tmpfs is refused)
  --records N         64 B records for append throughput (default 5000000;
                      the 4 KiB run uses N/20, the latency sample and each
                      study strategy N/5)
  --commits N         single-committer commits per strategy, and floor syncs
                      (default 2000)
  --rounds N          interleaving rounds for floor/commit/study (default 10)
  --seconds S         duration of group-commit and handoff runs (default 1)
  --threads N         group-commit threads (default 16)
  --producers N       threads for direct vs handoff append (default 2)
  --segment-mib N     segment size in MiB (default 64)
  --prepare-ahead N   segments prepared ahead (default 1)
  --strategy NAME     storage strategy for the main runs: default,
                      zero_fill+msync, zero_fill+fdatasync, fallocate+msync,
                      fallocate+fdatasync, or a probe:... variant
                      (default: FsStorage's defaults, fallocate+msync)
  --no-study          skip the storage strategy study
  --json              print one JSON object instead of tables";

/// Parsed options.
#[derive(Debug, Clone)]
pub struct WalOpts {
    dir: Option<PathBuf>,
    records: u64,
    commits: u64,
    rounds: u64,
    seconds: f64,
    threads: usize,
    producers: usize,
    segment_mib: u64,
    prepare_ahead: u64,
    strategy: Strategy,
    study: bool,
    /// Print JSON.
    pub json: bool,
}

impl WalOpts {
    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<WalOpts> {
        let strategy: String = a.value_or("--strategy", "default".to_string())?;
        let o = WalOpts {
            dir: a.value("--dir")?,
            records: a.value_or("--records", 5_000_000)?,
            commits: a.value_or("--commits", 2000)?,
            rounds: a.value_or("--rounds", 10)?,
            seconds: a.value_or("--seconds", 1.0)?,
            threads: a.value_or("--threads", 16)?,
            producers: a.value_or("--producers", 2)?,
            segment_mib: a.value_or("--segment-mib", 64)?,
            prepare_ahead: a.value_or("--prepare-ahead", 1)?,
            strategy: Strategy::parse(&strategy)?,
            study: !a.flag("--no-study"),
            json: a.flag("--json"),
        };
        a.finish()?;
        if o.records < 100 || o.commits == 0 || o.rounds == 0 {
            return Err("--records must be at least 100, --commits and --rounds at least 1".into());
        }
        if o.threads == 0 || o.producers == 0 || o.segment_mib == 0 {
            return Err("--threads, --producers and --segment-mib must be at least 1".into());
        }
        if !(o.seconds > 0.0 && o.seconds.is_finite()) {
            return Err("--seconds must be a positive number".into());
        }
        Ok(o)
    }
}

/// Runs the scenario.
pub fn run(o: &WalOpts) -> BoxResult<Report> {
    let started = Instant::now();
    let busy_start = Busy::now();
    let dir = BenchDir::create(o.dir.as_deref())?;
    if dir.is_memory_fs() {
        return Err(format!(
            "{} is on {}: syncs there reach no disk; pass --dir on a real filesystem",
            dir.path().display(),
            dir.fs_type
        )
        .into());
    }
    let io = IoCounters::for_dir(dir.path())?;
    let setup = WalSetup {
        strategy: o.strategy,
        segment_size: o.segment_mib << 20,
        prepare_ahead: o.prepare_ahead,
    };
    let secs = Duration::from_secs_f64(o.seconds);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    // Which strategies to measure; the main one is always among them.
    let mut strategies: Vec<Strategy> = if o.study {
        Strategy::FS.into_iter().chain(Strategy::PROBES).collect()
    } else {
        Vec::new()
    };
    if !strategies.contains(&o.strategy) {
        strategies.insert(0, o.strategy);
    }
    let main_idx = strategies.iter().position(|s| *s == o.strategy).unwrap_or(0);

    progress(o, &format!("floor + commit latency, {} strategies interleaved", strategies.len()));
    let (floor, commits) = strategy::latency_phase(
        &dir.sub("latency")?,
        &setup,
        &strategies,
        o.commits,
        o.rounds,
        &io,
    )?;
    let commit = &commits[main_idx];

    progress(o, "group commit");
    io.settle(Duration::from_secs(2))?;
    let group = group_commit_run(&dir.sub("group")?, &setup, o.threads, COMMIT_PAYLOAD, secs, &io)?;

    progress(o, "append 64 B");
    let a64 = append_run(&dir.sub("append64")?, &setup, 1, 64, o.records, &io)?;
    progress(o, "append 4 KiB");
    let a4k = append_run(&dir.sub("append4k")?, &setup, 1, 4096, o.records / 20, &io)?;
    progress(o, "append latency");
    let alat = append_latency(&dir.sub("appendlat")?, &setup, 64, o.records / 5)?;
    progress(o, "multi-producer append");
    let multi = append_run(&dir.sub("multi")?, &setup, o.producers, 64, o.records, &io)?;
    progress(o, "handoff");
    let hand = handoff_run(&dir.sub("handoff")?, &setup, o.producers, secs)?;
    let hand1 = handoff_run(&dir.sub("handoff1")?, &setup, 1, secs)?;

    let study: Option<Vec<StrategyResult>> = if o.study {
        progress(o, "study: append per strategy");
        let appends = strategy::append_phase(
            &dir.sub("study")?,
            &setup,
            &strategies,
            o.records / 5,
            o.rounds,
            &io,
        )?;
        Some(
            strategies
                .iter()
                .zip(commits.iter())
                .zip(appends)
                .map(|((s, c), a)| StrategyResult { strategy: *s, commit: c.clone(), append: a })
                .collect(),
        )
    } else {
        None
    };
    let busy_end = Busy::now();

    let mut r = Report::new(format!(
        "spindle-bench wal — {cores} cores, {} ({} on {}), strategy {}, {} MiB segments\n\
         machine at start: {}; at end: {}",
        dir.path().display(),
        dir.fs_type,
        dir.mount_point.display(),
        o.strategy.name(),
        o.segment_mib,
        busy_start.describe(),
        busy_end.describe(),
    ));
    r.section(format!("fdatasync floor (4 KiB pwrite + fdatasync, {} syncs)", o.commits));
    r.metric("floor_fdatasync_p50_us", "p50", floor.latency.p50_us, "µs");
    r.metric("floor_fdatasync_p99_us", "p99", floor.latency.p99_us, "µs");
    r.metric("floor_fdatasync_p999_us", "p99.9", floor.latency.p999_us, "µs");
    r.metric("floor_write_bytes_per_sync", "write_bytes per sync", floor.write_bytes_per_sync, "B");
    if let Some(d) = floor.device_bytes_per_sync {
        r.metric(
            "floor_device_write_bytes_per_sync",
            "device bytes per sync (machine-wide)",
            d,
            "B",
        );
    }

    r.section(format!(
        "durable commit (SyncPolicy::Always, {COMMIT_PAYLOAD} B, one committer, {} commits)",
        o.commits
    ));
    r.metric("commit_p50_us", "append + wait_durable p50", commit.latency.p50_us, "µs");
    r.metric("commit_p99_us", "append + wait_durable p99", commit.latency.p99_us, "µs");
    r.metric("commit_p999_us", "append + wait_durable p99.9", commit.latency.p999_us, "µs");
    r.metric("commits_per_sec", "commits per second", commit.per_sec, "commits/s");
    r.metric(
        "write_bytes_per_commit",
        "write_bytes per commit",
        commit.write_bytes_per_commit,
        "B",
    );
    if let Some(d) = commit.device_bytes_per_commit {
        r.metric("device_write_bytes_per_commit", "device bytes per commit (machine-wide)", d, "B");
    }
    r.metric(
        "commit_syncs_per_commit",
        "flusher syncs per commit",
        commit.syncs_per_commit,
        "syncs",
    );
    r.metric(
        "commit_p50_over_floor_p50",
        "commit p50 / floor p50",
        commit.latency.p50_us / floor.latency.p50_us,
        "x",
    );
    r.metric(
        "commit_p99_over_floor_p99",
        "commit p99 / floor p99",
        commit.latency.p99_us / floor.latency.p99_us,
        "x",
    );

    r.section(format!(
        "group commit ({} committer threads, {COMMIT_PAYLOAD} B, {} s)",
        group.threads, o.seconds
    ));
    r.metric("group_commit_records_per_sec", "durable records/s", group.per_sec(), "records/s");
    r.metric("group_commit_p50_us", "commit p50", group.latency.p50_us, "µs");
    r.metric("group_commit_p99_us", "commit p99", group.latency.p99_us, "µs");
    r.metric(
        "group_commit_records_per_sync",
        "records per sync",
        group.records_per_sync(),
        "records",
    );
    r.metric(
        "group_commit_write_bytes_per_record",
        "write_bytes per record",
        group.write_bytes_per_record,
        "B",
    );

    r.section("append (SyncPolicy::Never, one thread)");
    r.metric("append_per_sec_64b", "64 B records", a64.per_sec(), "records/s");
    r.metric("append_mb_per_sec_64b", "64 B payload bandwidth", a64.bytes_per_sec() / 1e6, "MB/s");
    r.metric(
        "append_faults_per_4k_64b",
        "64 B: page faults per 4 KiB of log",
        a64.faults_per_page(),
        "faults",
    );
    r.metric(
        "append_segment_waits_64b",
        "64 B: waits for the preparer",
        a64.segment_waits as f64,
        "waits",
    );
    r.metric("append_per_sec_4k", "4 KiB records", a4k.per_sec(), "records/s");
    r.metric("append_gb_per_sec_4k", "4 KiB payload bandwidth", a4k.bytes_per_sec() / 1e9, "GB/s");
    r.metric(
        "append_segment_waits_4k",
        "4 KiB: waits for the preparer",
        a4k.segment_waits as f64,
        "waits",
    );
    r.metric(
        "segment_create_ms",
        "segment creation (at open, per segment)",
        a64.segment_create_ms,
        "ms",
    );
    r.metric("append_p50_us_64b", "64 B append p50", alat.p50_us, "µs");
    r.metric("append_p99_us_64b", "64 B append p99", alat.p99_us, "µs");
    r.metric("append_p999_us_64b", "64 B append p99.9", alat.p999_us, "µs");
    r.metric("append_max_us_64b", "64 B append max", alat.max_us, "µs");

    let p = o.producers;
    r.section(format!(
        "direct append vs handoff to an owner thread (64 B, {p} producers, no sync)"
    ));
    r.metric(
        &format!("multi_producer_append_per_sec_64b_{p}threads"),
        &format!("direct: {p} threads, own Appenders"),
        multi.per_sec(),
        "records/s",
    );
    r.metric(
        "handoff_append_per_sec_64b",
        &format!("handoff: {} producers → owner", hand.producers),
        hand.per_sec(),
        "records/s",
    );
    r.metric("handoff_roundtrip_p50_us", "handoff send→reply p50", hand.roundtrip.p50_us, "µs");
    r.metric("handoff_roundtrip_p99_us", "handoff send→reply p99", hand.roundtrip.p99_us, "µs");
    r.metric(
        "handoff_append_per_sec_64b_1producer",
        "handoff: 1 producer → owner",
        hand1.per_sec(),
        "records/s",
    );
    r.metric(
        "handoff_1producer_roundtrip_p50_us",
        "1 producer send→reply p50",
        hand1.roundtrip.p50_us,
        "µs",
    );
    r.metric(
        "handoff_1producer_roundtrip_p99_us",
        "1 producer send→reply p99",
        hand1.roundtrip.p99_us,
        "µs",
    );
    r.metric(
        "direct_over_handoff",
        "direct / handoff throughput",
        multi.per_sec() / hand.per_sec(),
        "x",
    );

    if let Some(results) = &study {
        r.table(
            &format!(
                "storage strategy study ({} commits of {COMMIT_PAYLOAD} B and {} appends of {} B per strategy, {} interleaved rounds; floor p50 {:.1} µs, p99 {:.1} µs, {:.0} write_bytes/sync)",
                o.commits, o.records / 5, strategy::APPEND_PAYLOAD, o.rounds,
                floor.latency.p50_us, floor.latency.p99_us, floor.write_bytes_per_sync
            ),
            &strategy::HEADER,
            strategy::rows(results, &floor),
        );
        r.set("strategies", strategy::to_json(results));
        if let Some(b) = strategy::best(results) {
            r.set("best_strategy", b.strategy.name());
            r.note(format!(
                "lowest commit p99 among FsStorage strategies: {} (p50 {:.1} µs, p99 {:.1} µs, {:.0} write_bytes/commit); FsStorage's default is {}",
                b.strategy.name(),
                b.commit.latency.p50_us,
                b.commit.latency.p99_us,
                b.commit.write_bytes_per_commit,
                Strategy::DEFAULT.name()
            ));
        }
        r.note("probe:* rows: the bench's ProbeStorage, zero-filled segments synced with msync like FsStorage's default, varying how zeros are written (pwrite4k = FsStorage's 4 KiB buffered writes, pwrite1m = 1 MiB buffered writes, direct = O_DIRECT, nothing left cached) and the mapping advice (random = MADV_RANDOM, normal = none).");
    }

    r.set("cores", cores as u64);
    r.set("dir", dir.path().display().to_string());
    r.set("fs_type", dir.fs_type.clone());
    r.set("floor_prealloc", floor.prealloc);
    r.set("machine_at_start", busy_start.to_json());
    r.set("machine_at_end", busy_end.to_json());
    r.set(
        "options",
        json!({
            "records_64b": o.records,
            "records_4k": o.records / 20,
            "commits": o.commits,
            "rounds": o.rounds,
            "seconds": o.seconds,
            "group_commit_threads": o.threads,
            "producers": o.producers,
            "segment_mib": o.segment_mib,
            "prepare_ahead": o.prepare_ahead,
            "strategy": o.strategy.name(),
            "study": o.study,
            "commit_payload": COMMIT_PAYLOAD,
            "device_stat": io.device_stat().map(|p| p.display().to_string()),
        }),
    );
    r.set("elapsed_s", (started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    Ok(r)
}

/// A progress line on stderr (stdout stays one JSON object with `--json`).
fn progress(o: &WalOpts, what: &str) {
    if !o.json {
        eprintln!("… {what}");
    }
}
