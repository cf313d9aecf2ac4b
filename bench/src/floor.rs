//! The durability floor: what one 4 KiB `pwrite` + `fdatasync` costs on this
//! filesystem, the physical reference for WAL commit latency.
//!
//! The file is preallocated by writing zeros with `O_DIRECT` and syncing, so
//! its extents are initialised (no extent conversion to journal) and none of
//! it sits in the page cache: each timed 4 KiB `pwrite` dirties exactly one
//! fresh 4 KiB page, the best case a log commit can hope for.

use crate::io_counters::{IoCounters, IoSnapshot};
use crate::latency::{Latency, Percentiles};
use crate::BoxResult;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;
/// Untimed syncs before measuring (first-touch effects).
const WARMUP: u64 = 16;

/// An open floor measurement; [`FloorBench::run`] may be called repeatedly
/// (interleaved with other measurements) and accumulates.
#[derive(Debug)]
pub struct FloorBench {
    path: PathBuf,
    file: File,
    page: Vec<u8>,
    next: u64,
    capacity: u64,
    lat: Latency,
    io: IoSnapshot,
    syncs: u64,
    /// How the file was preallocated: `o_direct` or `buffered` (fallback).
    pub prealloc: &'static str,
}

/// The fdatasync floor's summary.
#[derive(Debug, Clone)]
pub struct Floor {
    /// Latency of one pwrite + fdatasync.
    pub latency: Percentiles,
    /// `write_bytes` (this process) per sync.
    pub write_bytes_per_sync: f64,
    /// Bytes the device wrote per sync (machine-wide, journal included).
    pub device_bytes_per_sync: Option<f64>,
    /// How the file was preallocated.
    pub prealloc: &'static str,
}

impl FloorBench {
    /// Preallocates room for `syncs` timed syncs in `dir` and warms up.
    pub fn new(dir: &Path, syncs: u64) -> BoxResult<FloorBench> {
        let path = dir.join("floor.dat");
        let capacity = syncs + WARMUP;
        let len = (capacity as usize * PAGE).div_ceil(CHUNK) * CHUNK;
        let prealloc = preallocate(&path, len)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let page = vec![0xA5u8; PAGE];
        for i in 0..WARMUP {
            file.write_all_at(&page, i * PAGE as u64)?;
            file.sync_data()?;
        }
        Ok(FloorBench {
            path,
            file,
            page,
            next: WARMUP,
            capacity,
            lat: Latency::new()?,
            io: IoSnapshot::default(),
            syncs: 0,
            prealloc,
        })
    }

    /// Times `n` more pwrite + fdatasync pairs at the next 4 KiB offsets.
    pub fn run(&mut self, n: u64, io: &IoCounters) -> BoxResult<()> {
        if self.next + n > self.capacity {
            return Err("floor file too small for the syncs asked".into());
        }
        let before = io.snapshot()?;
        for _ in 0..n {
            let t = Instant::now();
            self.file.write_all_at(&self.page, self.next * PAGE as u64)?;
            self.file.sync_data()?;
            self.lat.record(t.elapsed());
            self.next += 1;
        }
        self.io.add(&io.snapshot()?.since(&before));
        self.syncs += n;
        Ok(())
    }

    /// The summary so far; deletes the file.
    pub fn finish(self) -> BoxResult<Floor> {
        let n = self.syncs.max(1) as f64;
        drop(self.file);
        std::fs::remove_file(&self.path)?;
        Ok(Floor {
            latency: self.lat.percentiles(),
            write_bytes_per_sync: self.io.write_bytes as f64 / n,
            device_bytes_per_sync: self.io.device_write_bytes.map(|b| b as f64 / n),
            prealloc: self.prealloc,
        })
    }
}

/// Writes `len` zero bytes and syncs them, bypassing the page cache when the
/// filesystem supports `O_DIRECT`.
fn preallocate(path: &Path, len: usize) -> BoxResult<&'static str> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    let (file, how) = match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => (f, "o_direct"),
        Err(_) => (opts.open(path)?, "buffered"),
    };
    // O_DIRECT needs a block-aligned buffer: take an aligned window of a
    // slightly larger allocation.
    let raw = vec![0u8; CHUNK + PAGE];
    let off = raw.as_ptr().align_offset(PAGE);
    let buf = raw.get(off..off + CHUNK).ok_or("cannot align buffer")?;
    let mut at = 0;
    while at < len {
        let n = buf.len().min(len - at);
        file.write_all_at(&buf[..n], at as u64)?;
        at += n;
    }
    file.sync_all()?;
    Ok(how)
}
