//! Durable commits under `SyncPolicy::Always`: append a record, then
//! [`Wal::wait_durable`] on it. One committer measures latency and bytes
//! written per commit; many committers measure group commit.

use crate::append::KIND;
use crate::io_counters::{IoCounters, IoSnapshot};
use crate::latency::{Latency, Percentiles};
use crate::setup::WalSetup;
use crate::BoxResult;
use spindle_wal::{Appender, SyncPolicy, Wal};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Untimed commits before measuring.
const WARMUP: u64 = 32;

/// An open single-committer measurement; [`CommitBench::run`] may be called
/// repeatedly (interleaved with other measurements) and accumulates.
#[derive(Debug)]
pub struct CommitBench {
    wal: Wal,
    app: Appender,
    data: Vec<u8>,
    lat: Latency,
    io: IoSnapshot,
    syncs: u64,
    commits: u64,
    secs: f64,
}

/// One committer's results.
#[derive(Debug, Clone)]
pub struct CommitRun {
    /// append + wait_durable latency.
    pub latency: Percentiles,
    /// `write_bytes` of this process per commit (page-cache dirtying).
    pub write_bytes_per_commit: f64,
    /// Device bytes written per commit (machine-wide, journal included).
    pub device_bytes_per_commit: Option<f64>,
    /// Page faults per commit (minor + major).
    pub faults_per_commit: f64,
    /// Syncs the flusher did per commit.
    pub syncs_per_commit: f64,
    /// Commits per second while committing (1 / mean latency).
    pub per_sec: f64,
}

impl CommitBench {
    /// Opens a fresh log in `dir` and warms it up.
    pub fn new(dir: &Path, setup: &WalSetup, payload: usize) -> BoxResult<CommitBench> {
        let wal = setup.open(dir, SyncPolicy::Always)?;
        let mut app = wal.appender();
        let data = vec![0xC3u8; payload];
        for _ in 0..WARMUP {
            let lsn = app.append(KIND, &data)?;
            wal.wait_durable(lsn)?;
        }
        Ok(CommitBench {
            wal,
            app,
            data,
            lat: Latency::new()?,
            io: IoSnapshot::default(),
            syncs: 0,
            commits: 0,
            secs: 0.0,
        })
    }

    /// `n` more timed commits.
    pub fn run(&mut self, n: u64, io: &IoCounters) -> BoxResult<()> {
        let syncs_before = self.wal.stats().syncs;
        let before = io.snapshot()?;
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let lsn = self.app.append(KIND, &self.data)?;
            self.wal.wait_durable(lsn)?;
            self.lat.record(t.elapsed());
        }
        self.secs += start.elapsed().as_secs_f64();
        self.io.add(&io.snapshot()?.since(&before));
        self.syncs += self.wal.stats().syncs - syncs_before;
        self.commits += n;
        Ok(())
    }

    /// The summary; closes the log.
    pub fn finish(self) -> BoxResult<CommitRun> {
        self.wal.close()?;
        let n = self.commits.max(1) as f64;
        Ok(CommitRun {
            latency: self.lat.percentiles(),
            write_bytes_per_commit: self.io.write_bytes as f64 / n,
            device_bytes_per_commit: self.io.device_write_bytes.map(|b| b as f64 / n),
            faults_per_commit: (self.io.minor_faults + self.io.major_faults) as f64 / n,
            syncs_per_commit: self.syncs as f64 / n,
            per_sec: n / self.secs.max(f64::MIN_POSITIVE),
        })
    }
}

/// Many committers' results.
#[derive(Debug, Clone)]
pub struct GroupRun {
    /// Committer threads.
    pub threads: usize,
    /// Records committed (all threads).
    pub records: u64,
    /// Wall time.
    pub secs: f64,
    /// Per-commit latency across all threads.
    pub latency: Percentiles,
    /// Flusher syncs in the run.
    pub syncs: u64,
    /// `write_bytes` per committed record.
    pub write_bytes_per_record: f64,
}

impl GroupRun {
    /// Committed records per second.
    pub fn per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }

    /// Records made durable by one sync on average.
    pub fn records_per_sync(&self) -> f64 {
        self.records as f64 / self.syncs.max(1) as f64
    }
}

/// `threads` threads each append a `payload`-byte record and wait until it
/// is durable, in a loop, for `duration`.
pub fn group_commit_run(
    dir: &Path,
    setup: &WalSetup,
    threads: usize,
    payload: usize,
    duration: Duration,
    io: &IoCounters,
) -> BoxResult<GroupRun> {
    let wal = setup.open(dir, SyncPolicy::Always)?;
    let stop = AtomicBool::new(false);
    let syncs_before = wal.stats().syncs;
    let before = io.snapshot()?;
    let start = Instant::now();
    let (records, latency) = std::thread::scope(|s| -> BoxResult<(u64, Latency)> {
        let (wal, stop) = (&wal, &stop);
        let handles: Vec<_> =
            (0..threads).map(|_| s.spawn(move || committer(wal, payload, stop))).collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut all = Latency::new()?;
        for h in handles {
            let (n, lat) = h.join().map_err(|_| "committer thread panicked")??;
            total += n;
            all.merge(&lat)?;
        }
        Ok((total, all))
    })?;
    let secs = start.elapsed().as_secs_f64();
    let delta = io.snapshot()?.since(&before);
    let syncs = wal.stats().syncs - syncs_before;
    wal.close()?;
    Ok(GroupRun {
        threads,
        records,
        secs,
        latency: latency.percentiles(),
        syncs,
        write_bytes_per_record: delta.write_bytes as f64 / records.max(1) as f64,
    })
}

fn committer(wal: &Wal, payload: usize, stop: &AtomicBool) -> BoxResult<(u64, Latency)> {
    let mut app = wal.appender();
    let data = vec![0x3Cu8; payload];
    let mut lat = Latency::new()?;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let lsn = app.append(KIND, &data)?;
        wal.wait_durable(lsn)?;
        lat.record(t.elapsed());
        n += 1;
    }
    Ok((n, lat))
}
