//! Append throughput: one thread, or several threads each with its own
//! [`spindle_wal::Appender`], appending without syncing (`SyncPolicy::Never`).

use crate::io_counters::{IoCounters, IoSnapshot};
use crate::latency::{Latency, Percentiles};
use crate::setup::WalSetup;
use crate::BoxResult;
use spindle_wal::{Appender, SyncPolicy, Wal};
use std::path::Path;
use std::time::Instant;

/// Record kind used by every benchmark.
pub const KIND: u8 = 1;
/// Release whole segments every this many records per thread, so a long run
/// does not fill the disk.
const RELEASE_EVERY: u64 = 1 << 20;

/// Result of an append run.
#[derive(Debug, Clone)]
pub struct AppendRun {
    /// Records appended (all threads).
    pub records: u64,
    /// Wall time of the run.
    pub secs: f64,
    /// Payload bytes per record.
    pub payload: usize,
    /// Times an appender waited for the preparer.
    pub segment_waits: u64,
    /// Process counters over the run (faults, bytes read and written).
    pub io: IoSnapshot,
    /// Log bytes appended (frames), for per-page ratios.
    pub log_bytes: u64,
    /// Milliseconds per segment to open the log with its first and
    /// prepared-ahead segments ready.
    pub segment_create_ms: f64,
}

impl AppendRun {
    /// Records per second.
    pub fn per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }

    /// Payload bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.per_sec() * self.payload as f64
    }

    /// Page faults per 4 KiB of log written.
    pub fn faults_per_page(&self) -> f64 {
        (self.io.minor_faults + self.io.major_faults) as f64 / (self.log_bytes as f64 / 4096.0)
    }

    /// Major faults per 4 KiB of log written.
    pub fn major_faults_per_page(&self) -> f64 {
        self.io.major_faults as f64 / (self.log_bytes as f64 / 4096.0)
    }
}

/// `threads` threads append `records` records in total (each its share)
/// of `payload` bytes through their own appenders.
pub fn append_run(
    dir: &Path,
    setup: &WalSetup,
    threads: usize,
    payload: usize,
    records: u64,
    io: &IoCounters,
) -> BoxResult<AppendRun> {
    let t = Instant::now();
    let wal = setup.open(dir, SyncPolicy::Never)?;
    let segment_create_ms = ms_per_segment(t, setup);
    let per_thread = records / threads as u64;
    let wal_ref = &wal;
    let before = io.snapshot()?;
    let start = Instant::now();
    std::thread::scope(|s| -> BoxResult<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || append_loop(wal_ref, t, payload, per_thread)))
            .collect();
        for h in handles {
            h.join().map_err(|_| "append thread panicked")??;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let delta = io.snapshot()?.since(&before);
    let stats = wal.stats();
    wal.close()?;
    let records = per_thread * threads as u64;
    Ok(AppendRun {
        records,
        secs,
        payload,
        segment_waits: stats.segment_waits,
        io: delta,
        log_bytes: records * spindle_wal::frame_len(payload as u64),
        segment_create_ms,
    })
}

fn ms_per_segment(opened: Instant, setup: &WalSetup) -> f64 {
    opened.elapsed().as_secs_f64() * 1000.0 / (1 + setup.prepare_ahead) as f64
}

fn append_loop(wal: &Wal, thread: usize, payload: usize, n: u64) -> BoxResult<()> {
    let mut app = wal.appender();
    let data = vec![thread as u8 ^ 0x5A; payload];
    let mut last = 0;
    for i in 0..n {
        last = app.append(KIND, &data)?;
        // Only thread 0 releases: one releaser is enough, and the others
        // keep appending meanwhile as they would in production.
        if thread == 0 && i % RELEASE_EVERY == RELEASE_EVERY - 1 {
            wal.release_below(last)?;
        }
    }
    std::hint::black_box(last);
    Ok(())
}

/// Latency of single appends (one thread, no sync), timed one by one.
pub fn append_latency(
    dir: &Path,
    setup: &WalSetup,
    payload: usize,
    records: u64,
) -> BoxResult<Percentiles> {
    let wal = setup.open(dir, SyncPolicy::Never)?;
    let mut app = wal.appender();
    let data = vec![0x5Au8; payload];
    let mut lat = Latency::new()?;
    for _ in 0..records {
        let t = Instant::now();
        let lsn = app.append(KIND, &data)?;
        lat.record(t.elapsed());
        std::hint::black_box(lsn);
    }
    wal.close()?;
    Ok(lat.percentiles())
}

/// An open single-thread append measurement; [`AppendBench::run`] may be
/// called repeatedly (interleaved with other measurements) and accumulates.
#[derive(Debug)]
pub struct AppendBench {
    wal: Wal,
    app: Appender,
    data: Vec<u8>,
    run: AppendRun,
    last: u64,
}

impl AppendBench {
    /// Opens a fresh `SyncPolicy::Never` log in `dir`.
    pub fn new(dir: &Path, setup: &WalSetup, payload: usize) -> BoxResult<AppendBench> {
        let t = Instant::now();
        let wal = setup.open(dir, SyncPolicy::Never)?;
        let segment_create_ms = ms_per_segment(t, setup);
        let app = wal.appender();
        Ok(AppendBench {
            wal,
            app,
            data: vec![0x5Au8; payload],
            run: AppendRun {
                records: 0,
                secs: 0.0,
                payload,
                segment_waits: 0,
                io: IoSnapshot::default(),
                log_bytes: 0,
                segment_create_ms,
            },
            last: 0,
        })
    }

    /// Appends `n` more records, then releases the segments behind them
    /// (untimed).
    pub fn run(&mut self, n: u64, io: &IoCounters) -> BoxResult<()> {
        let before = io.snapshot()?;
        let start = Instant::now();
        for _ in 0..n {
            self.last = self.app.append(KIND, &self.data)?;
        }
        self.run.secs += start.elapsed().as_secs_f64();
        self.run.io.add(&io.snapshot()?.since(&before));
        self.run.records += n;
        self.run.log_bytes += n * spindle_wal::frame_len(self.data.len() as u64);
        self.wal.release_below(self.last)?;
        Ok(())
    }

    /// The summary; closes the log.
    pub fn finish(mut self) -> BoxResult<AppendRun> {
        self.run.segment_waits = self.wal.stats().segment_waits;
        self.wal.close()?;
        Ok(self.run)
    }
}
