//! The `crash` scenario (issue 14, item 4): a kill -9 campaign against the
//! daemon and the library, in every durability mode.
//!
//! Each trial picks one configuration (the trial number walks through them
//! in turn: `spindled` with `--durability memory`, with the default
//! `process` (fsync every 50 ms), with `-F` (process, never fsync) and with
//! `--durability sync`; the library engine with `Memory`, `Process` and
//! `Sync`) and runs `--rounds` rounds on one fresh data directory. A round
//! starts the process on the directory, drives a mixed load against it,
//! SIGKILLs it at a seeded random moment, restarts it and checks the books
//! (`crash_daemon.rs`, `crash_engine.rs` say exactly what is checked). The
//! next round runs on the recovered directory, so recovery of a recovered
//! log is covered too.
//!
//! The moment of the kill is one of (seeded, per round):
//!
//! * after a random number of acknowledged operations;
//! * right after the log rolls over to a new segment (the daemon's
//!   `binlog-current-index` changes; for the library, a `.wal` file appears
//!   under its data directory);
//! * during compaction (the daemon's `binlog-records-migrated` grows, i.e. a
//!   pass is rewriting live jobs; for the library, a shard holds more than
//!   the 4 segments that start its compaction, or releases segments, which
//!   ends it).
//!
//! Segments are small (64 KiB by default), so rollovers and compaction
//! passes happen many times per round. A trigger that has not fired by the
//! round's operation cap kills there instead (shown as `cap`).
//!
//! What "acknowledged" means, per mode (DESIGN.md, "Durability"): in
//! `process` and `sync` a put is acknowledged once its reply (`INSERTED`)
//! or `submit`'s `Ok` has been received, and a kill -9 of the process (not
//! a power loss, which this campaign does not simulate: the kernel keeps
//! the page cache) must lose none of them, whatever the fsync policy. In
//! `memory` mode nothing is promised across a crash, and the check is that
//! nothing comes back: the restarted process starts empty and wrote no
//! files.

use crate::args::Args;
use crate::burst_trace::Rng;
use crate::report::Report;
use crate::{crash_daemon, crash_engine, BoxResult};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench crash [options]
  --trials N        trials (default 20); trial i runs configuration i mod 7
                    (of those --target and --mode leave)
  --seed S          the first trial's seed (default: from the clock); trial
                    i uses S + i, and `--seed S+i --trials 1` with the same
                    --target and --mode reruns it
  --target T        daemon, library or both (default both)
  --mode M          memory, process, process-nofsync (daemon -F), sync or
                    all (default all)
  --rounds R        kill/restart rounds per trial, on one directory (default 2)
  --max-ops N       most acknowledged operations per round (default 3000)
  --segment BYTES   log segment size (default 65536)
  --spindled PATH   default: the spindled next to this executable
  --dir PATH        where trial directories go (default: the temp dir)
  --json            print one JSON object (the summary) instead of tables
  --inject-loss     a test of the checker: delete the log's segments after
                    each kill, so acknowledged jobs are lost and every
                    persistent trial must report violations

One line per trial goes to stderr. Exits non-zero on any violation.";

/// Which front-end a trial crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `spindled`, over the Rust client.
    Daemon,
    /// The library engine, in a child process (`crash-child`).
    Library,
}

/// The durability setting of a trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No disk: nothing survives, nothing may come back.
    Memory,
    /// The mmap'd log; the daemon fsyncs every 50 ms (its default `-f`).
    Process,
    /// The daemon's `-F`: the mmap'd log, never fsynced.
    ProcessNoFsync,
    /// A reply or `submit` waits for the fsync.
    Sync,
}

impl Mode {
    /// The name used by `--mode` and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Process => "process",
            Mode::ProcessNoFsync => "process-nofsync",
            Mode::Sync => "sync",
        }
    }
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Daemon => "daemon",
            Target::Library => "library",
        }
    }
}

/// Every configuration, in the order trials walk through them.
const CONFIGS: [(Target, Mode); 7] = [
    (Target::Daemon, Mode::Process),
    (Target::Library, Mode::Process),
    (Target::Daemon, Mode::Sync),
    (Target::Library, Mode::Sync),
    (Target::Daemon, Mode::ProcessNoFsync),
    (Target::Daemon, Mode::Memory),
    (Target::Library, Mode::Memory),
];

/// When a round's process is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// After this many acknowledged operations.
    Ops(u64),
    /// At the first segment rollover after this many operations.
    Rollover(u64),
    /// During the first compaction seen after this many operations.
    Compaction(u64),
}

impl Trigger {
    /// A seeded choice, with warm-ups and counts below `max_ops`.
    pub(crate) fn draw(rng: &mut Rng, max_ops: u64) -> Trigger {
        let n = 1 + below(rng, max_ops.max(2) - 1);
        match below(rng, 3) {
            0 => Trigger::Ops(n),
            1 => Trigger::Rollover(n / 4),
            _ => Trigger::Compaction(n / 4),
        }
    }
}

/// `--inject-loss`: removes every `.wal` file under `data` (and its shard
/// directories), as a disk that lost the log would.
pub(crate) fn lose_log(data: &std::path::Path) -> BoxResult<()> {
    let mut dirs = vec![data.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "wal") {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// A uniform draw in `0..n` (`n > 0`).
pub(crate) fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

/// The scenario's options.
#[derive(Debug, Clone)]
pub(crate) struct CrashOpts {
    pub(crate) trials: u64,
    pub(crate) seed: u64,
    pub(crate) configs: Vec<(Target, Mode)>,
    pub(crate) rounds: u32,
    pub(crate) max_ops: u64,
    pub(crate) segment: u64,
    pub(crate) spindled: Option<PathBuf>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) json: bool,
    /// Delete the log's segments after each kill (a test of the checker).
    pub(crate) inject_loss: bool,
}

impl CrashOpts {
    /// Reads the options (see [`USAGE`]).
    pub(crate) fn parse(mut a: Args) -> BoxResult<CrashOpts> {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let target: String = a.value_or("--target", "both".to_string())?;
        let mode: String = a.value_or("--mode", "all".to_string())?;
        let targets: &[Target] = match target.as_str() {
            "both" => &[Target::Daemon, Target::Library],
            "daemon" => &[Target::Daemon],
            "library" => &[Target::Library],
            t => return Err(format!("--target {t:?}: daemon, library or both").into()),
        };
        let modes: &[Mode] = match mode.as_str() {
            "all" => &[Mode::Memory, Mode::Process, Mode::ProcessNoFsync, Mode::Sync],
            "memory" => &[Mode::Memory],
            "process" => &[Mode::Process],
            "process-nofsync" => &[Mode::ProcessNoFsync],
            "sync" => &[Mode::Sync],
            m => return Err(format!("--mode {m:?}: memory, process, process-nofsync, sync").into()),
        };
        let configs: Vec<(Target, Mode)> = CONFIGS
            .iter()
            .copied()
            .filter(|(t, m)| targets.contains(t) && modes.contains(m))
            .collect();
        if configs.is_empty() {
            return Err(format!("no configuration is {target} with {mode}").into());
        }
        let o = CrashOpts {
            trials: a.value_or("--trials", 20)?,
            seed: a.value_or("--seed", clock)?,
            configs,
            rounds: a.value_or("--rounds", 2)?,
            max_ops: a.value_or("--max-ops", 3000)?,
            segment: a.value_or("--segment", 64 << 10)?,
            spindled: a.value("--spindled")?,
            dir: a.value("--dir")?,
            json: a.flag("--json"),
            inject_loss: a.flag("--inject-loss"),
        };
        a.finish()?;
        if o.rounds == 0 || o.max_ops < 10 {
            return Err("--rounds must be at least 1 and --max-ops at least 10".into());
        }
        Ok(o)
    }
}

/// What one round did and found.
#[derive(Debug, Default, Clone)]
pub(crate) struct RoundBooks {
    /// How the kill came (`ops 812`, `rollover`, `compaction`, `cap`).
    pub(crate) kill: String,
    /// Puts (submits) whose acknowledgement was received.
    pub(crate) acked_puts: u64,
    /// Deletes whose `DELETED` was received (daemon only: the library
    /// acknowledges no completion).
    pub(crate) acked_deletes: u64,
    /// Commands whose reply was lost in the kill (either outcome allowed).
    pub(crate) in_flight: u64,
    /// Jobs found after the restart whose presence was checked against an
    /// acknowledged put (body included).
    pub(crate) checked_present: u64,
    /// Acknowledged deletes checked to be still gone.
    pub(crate) checked_gone: u64,
    /// Every broken promise, in words.
    pub(crate) violations: Vec<String>,
    /// Where to look when there are violations (trigger, process log).
    pub(crate) context: String,
}

/// One trial: its configuration and rounds.
#[derive(Debug, Clone)]
pub(crate) struct TrialResult {
    pub(crate) seed: u64,
    pub(crate) target: Target,
    pub(crate) mode: Mode,
    /// What else the seed chose (event loops, shards).
    pub(crate) setup: String,
    pub(crate) rounds: Vec<RoundBooks>,
    pub(crate) secs: f64,
}

impl TrialResult {
    fn sum(&self, f: impl Fn(&RoundBooks) -> u64) -> u64 {
        self.rounds.iter().map(f).sum()
    }

    fn violations(&self) -> usize {
        self.rounds.iter().map(|r| r.violations.len()).sum()
    }

    fn line(&self, i: u64) -> String {
        let kills: Vec<&str> = self.rounds.iter().map(|r| r.kill.as_str()).collect();
        format!(
            "trial {i} seed {} {} {} ({}): kills [{}], puts {} acked, deletes {} acked, {} in flight, \
             {} present + {} gone checked, {} violations ({:.2} s)",
            self.seed,
            self.target.name(),
            self.mode.name(),
            self.setup,
            kills.join(", "),
            self.sum(|r| r.acked_puts),
            self.sum(|r| r.acked_deletes),
            self.sum(|r| r.in_flight),
            self.sum(|r| r.checked_present),
            self.sum(|r| r.checked_gone),
            self.violations(),
            self.secs
        )
    }
}

/// Runs the campaign; fails (after printing the summary) if any trial
/// found a violation.
pub(crate) fn run(o: &CrashOpts) -> BoxResult<Report> {
    let spindled = if o.configs.iter().any(|(t, _)| *t == Target::Daemon) {
        Some(crash_daemon::locate_spindled(o.spindled.as_deref())?)
    } else {
        None
    };
    let started = Instant::now();
    let mut results = Vec::new();
    for i in 0..o.trials {
        let seed = o.seed.wrapping_add(i);
        let (target, mode) = o.configs[(i % o.configs.len() as u64) as usize];
        let t0 = Instant::now();
        let dir = match &o.dir {
            Some(p) => {
                std::fs::create_dir_all(p)?;
                tempfile::Builder::new().prefix("spindle-crash-").tempdir_in(p)?
            }
            None => tempfile::Builder::new().prefix("spindle-crash-").tempdir()?,
        };
        let (setup, rounds) = match (target, &spindled) {
            (Target::Daemon, Some(bin)) => crash_daemon::trial(bin, dir.path(), mode, seed, o)?,
            (Target::Daemon, None) => return Err("no spindled located".into()),
            (Target::Library, _) => crash_engine::trial(dir.path(), mode, seed, o)?,
        };
        let secs = t0.elapsed().as_secs_f64();
        let r = TrialResult { seed, target, mode, setup, rounds, secs };
        eprintln!("{}", r.line(i));
        for (k, round) in r.rounds.iter().enumerate() {
            for v in round.violations.iter().take(20) {
                eprintln!("  VIOLATION round {k}: {v}");
            }
            if round.violations.len() > 20 {
                eprintln!("  ... and {} more in round {k}", round.violations.len() - 20);
            }
            if !round.violations.is_empty() {
                eprintln!("  round {k}: {}", round.context);
            }
        }
        if r.violations() > 0 {
            // The directory stays for a post-mortem (its log, the
            // daemon's output).
            eprintln!("  kept: {}", dir.keep().display());
            eprintln!(
                "  rerun: spindle-bench crash --seed {seed} --trials 1 --target {} --mode {} \
                 --rounds {} --max-ops {} --segment {}",
                target.name(),
                mode.name(),
                o.rounds,
                o.max_ops,
                o.segment
            );
        }
        results.push(r);
    }
    let report = summary(o, &results, started.elapsed().as_secs_f64());
    let violations: usize = results.iter().map(TrialResult::violations).sum();
    if violations > 0 {
        crate::print(&report, o.json)?;
        return Err(format!("{violations} violations of the durability promises").into());
    }
    Ok(report)
}

fn summary(o: &CrashOpts, results: &[TrialResult], secs: f64) -> Report {
    let mut r = Report::new(format!(
        "crash campaign: {} trials, {} rounds each, seeds {}..={}, segments of {} bytes",
        results.len(),
        o.rounds,
        o.seed,
        o.seed.wrapping_add(o.trials.saturating_sub(1)),
        o.segment
    ));
    let total = |f: &dyn Fn(&RoundBooks) -> u64| -> u64 { results.iter().map(|t| t.sum(f)).sum() };
    let kills_by = |what: &str| -> u64 {
        results
            .iter()
            .flat_map(|t| &t.rounds)
            .filter(|b| b.kill.split(' ').next() == Some(what))
            .count() as u64
    };
    let violations: u64 = results.iter().map(|t| t.violations() as u64).sum();
    r.section("totals");
    r.metric("trials", "trials", results.len() as f64, "");
    r.metric("kills", "kill -9s", results.iter().map(|t| t.rounds.len() as f64).sum(), "");
    r.metric("kills_after_ops", "  after a random count", kills_by("ops") as f64, "");
    r.metric("kills_at_rollover", "  at a segment rollover", kills_by("rollover") as f64, "");
    r.metric("kills_in_compaction", "  during compaction", kills_by("compaction") as f64, "");
    r.metric("kills_at_cap", "  at the cap (trigger not seen)", kills_by("cap") as f64, "");
    r.metric("acked_puts", "acknowledged puts", total(&|b| b.acked_puts) as f64, "");
    r.metric("acked_deletes", "acknowledged deletes", total(&|b| b.acked_deletes) as f64, "");
    r.metric("in_flight", "in flight at a kill", total(&|b| b.in_flight) as f64, "");
    r.metric("checked_present", "jobs checked present", total(&|b| b.checked_present) as f64, "");
    r.metric("checked_gone", "deletes checked gone", total(&|b| b.checked_gone) as f64, "");
    r.metric("violations", "violations", violations as f64, "");
    r.metric("seconds", "wall time", secs, "s");
    let mut rows = Vec::new();
    let mut per = Vec::new();
    for &(target, mode) in &o.configs {
        let ts: Vec<&TrialResult> =
            results.iter().filter(|t| t.target == target && t.mode == mode).collect();
        let s = |f: &dyn Fn(&RoundBooks) -> u64| -> u64 { ts.iter().map(|t| t.sum(f)).sum() };
        let v: usize = ts.iter().map(|t| t.violations()).sum();
        rows.push(vec![
            target.name().to_string(),
            mode.name().to_string(),
            ts.len().to_string(),
            s(&|b| b.acked_puts).to_string(),
            s(&|b| b.acked_deletes).to_string(),
            s(&|b| b.in_flight).to_string(),
            s(&|b| b.checked_present).to_string(),
            s(&|b| b.checked_gone).to_string(),
            v.to_string(),
        ]);
        per.push(json!({
            "target": target.name(),
            "mode": mode.name(),
            "trials": ts.len(),
            "acked_puts": s(&|b| b.acked_puts),
            "acked_deletes": s(&|b| b.acked_deletes),
            "in_flight": s(&|b| b.in_flight),
            "checked_present": s(&|b| b.checked_present),
            "checked_gone": s(&|b| b.checked_gone),
            "violations": v,
        }));
    }
    r.table(
        "per configuration",
        &[
            "target",
            "mode",
            "trials",
            "puts",
            "deletes",
            "in flight",
            "present",
            "gone",
            "violations",
        ],
        rows,
    );
    r.set("configurations", per);
    r.set("first_seed", o.seed);
    r.set("rounds", o.rounds);
    r.set("max_ops", o.max_ops);
    r.set("segment_bytes", o.segment);
    let bad: Vec<serde_json::Value> = results
        .iter()
        .filter(|t| t.violations() > 0)
        .map(|t| {
            json!({
                "seed": t.seed,
                "target": t.target.name(),
                "mode": t.mode.name(),
                "setup": t.setup,
                "violations": t.rounds.iter().flat_map(|b| b.violations.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    r.set("failed_trials", bad);
    r.note(
        "library deletes: the engine acknowledges no completion (delivery is at-least-once), \
         so a job completed before a kill may run again; only its putting is checked",
    );
    r
}
