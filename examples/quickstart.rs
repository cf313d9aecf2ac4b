//! Quickstart: what Spindle does today, end to end, in a temporary directory.
//!
//! The job engine (issue #3) is not built yet, so this runs the layer it
//! stands on: one shard's write-ahead log. It appends one million 64-byte
//! records from two threads, commits a batch durably, reopens the log as a
//! restart after a crash would, checks every record came back, and prints the
//! figures. Run with `cargo run --release --example quickstart`.

use spindle::wal::{SyncPolicy, Wal, WalOptions};
use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

const RECORDS: u64 = 1_000_000;
const THREADS: u64 = 2;

fn main() -> Result<(), Box<dyn Error>> {
    let dir =
        tempfile::Builder::new().prefix("spindle-quickstart").tempdir_in(std::env::temp_dir())?;
    let path = dir.path().join("shard-000");
    let opts = WalOptions { sync: SyncPolicy::default(), ..WalOptions::default() };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let (wal, _) = Wal::open(&path, opts.clone())?;
    let wal = Arc::new(wal);
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || -> Result<(), spindle::wal::WalError> {
                let mut appender = wal.appender();
                let mut record = [0u8; 64];
                for i in (t..RECORDS).step_by(THREADS as usize) {
                    record[..8].copy_from_slice(&i.to_le_bytes());
                    appender.append(1, &record)?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "appender thread panicked")??;
    }
    let append_secs = started.elapsed().as_secs_f64();

    let commit_start = Instant::now();
    wal.sync()?;
    let commit = commit_start.elapsed();
    let stats = wal.stats();
    Arc::try_unwrap(wal).map_err(|_| "log still shared")?.close()?;

    let reopen = Instant::now();
    let (wal, report) = Wal::open(&path, opts)?;
    let mut seen = vec![false; RECORDS as usize];
    wal.replay(|r| {
        let mut id = [0u8; 8];
        id.copy_from_slice(&r.payload[..8]);
        if let Some(s) = seen.get_mut(u64::from_le_bytes(id) as usize) {
            *s = true;
        }
    })?;
    let recovery = reopen.elapsed();
    let missing = seen.iter().filter(|s| !**s).count();
    wal.close()?;

    println!("spindle quickstart — write-ahead log of one shard ({cores} cores)");
    println!("  appended      {RECORDS} x 64 B records from {THREADS} threads");
    println!("  append rate   {:.2} M records/s", RECORDS as f64 / append_secs / 1e6);
    println!(
        "  durable sync  {:.2} ms for {} MiB",
        commit.as_secs_f64() * 1e3,
        stats.published_lsn >> 20
    );
    println!("  segments      {} created, {} fsync(s)", stats.segments_created, stats.syncs);
    println!(
        "  recovery      {} records in {:.1} ms, {missing} missing",
        report.records,
        recovery.as_secs_f64() * 1e3
    );
    if missing != 0 || report.records != RECORDS {
        return Err("recovery did not return every record".into());
    }
    Ok(())
}
