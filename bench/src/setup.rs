//! Opening a [`Wal`] for a measurement: which storage strategy, which
//! segment size, and waiting until the preparer is idle so its zero-fill does
//! not land inside a timed loop.

use crate::probe_storage::{Probe, ProbeStorage, ZeroFill};
use crate::BoxResult;
use spindle_wal::{FsStorage, Storage, SyncMethod, SyncPolicy, Wal, WalOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How segment files are prepared and synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `FsStorage` with its two public knobs.
    Fs {
        /// `FsStorage::with_zero_fill`.
        zero_fill: bool,
        /// `FsStorage::with_sync_method`.
        sync: SyncMethod,
    },
    /// The bench's [`ProbeStorage`] (zero-fill + msync, mitigations switchable).
    Probe(Probe),
}

impl Strategy {
    /// `FsStorage`'s defaults.
    pub const DEFAULT: Strategy = Strategy::Fs { zero_fill: false, sync: SyncMethod::Msync };

    /// The four `FsStorage` combinations, the default first.
    pub const FS: [Strategy; 4] = [
        Strategy::DEFAULT,
        Strategy::Fs { zero_fill: false, sync: SyncMethod::Fdatasync },
        Strategy::Fs { zero_fill: true, sync: SyncMethod::Msync },
        Strategy::Fs { zero_fill: true, sync: SyncMethod::Fdatasync },
    ];

    /// Probe variants: a control equal to `FsStorage::with_zero_fill(true)`
    /// (4 KiB buffered zero-fill, `MADV_RANDOM`), the same without `MADV_RANDOM`,
    /// 1 MiB buffered zero-fill (large folios stay cached), and `O_DIRECT`
    /// zero-fill (nothing cached: the old fill + `fadvise(DONTNEED)` design,
    /// and what a segment looks like after its pages were evicted) with and
    /// without `MADV_RANDOM`.
    pub const PROBES: [Strategy; 5] = [
        Strategy::Probe(Probe { zero_fill: ZeroFill::Buffered(4096), madv_random: true }),
        Strategy::Probe(Probe { zero_fill: ZeroFill::Buffered(4096), madv_random: false }),
        Strategy::Probe(Probe { zero_fill: ZeroFill::Buffered(1 << 20), madv_random: true }),
        Strategy::Probe(Probe { zero_fill: ZeroFill::Direct, madv_random: true }),
        Strategy::Probe(Probe { zero_fill: ZeroFill::Direct, madv_random: false }),
    ];

    /// A short name, e.g. `zero_fill+msync` or `probe:pwrite1m+random`.
    pub fn name(&self) -> String {
        match *self {
            Strategy::Fs { zero_fill, sync } => {
                let prep = if zero_fill { "zero_fill" } else { "fallocate" };
                let sync = match sync {
                    SyncMethod::Msync => "msync",
                    SyncMethod::Fdatasync => "fdatasync",
                };
                format!("{prep}+{sync}")
            }
            Strategy::Probe(p) => format!("probe:{}", p.name()),
        }
    }

    /// Parses a [`Strategy::name`] or `default`.
    pub fn parse(s: &str) -> BoxResult<Strategy> {
        if s == "default" {
            return Ok(Strategy::DEFAULT);
        }
        let all = || Strategy::FS.into_iter().chain(Strategy::PROBES);
        all().find(|st| st.name() == s).ok_or_else(|| {
            let names: Vec<String> = all().map(|s| s.name()).collect();
            format!("unknown strategy {s:?}; one of: default, {}", names.join(", ")).into()
        })
    }

    fn storage(&self, dir: &Path) -> BoxResult<Arc<dyn Storage>> {
        Ok(match *self {
            Strategy::Fs { zero_fill, sync } => {
                Arc::new(FsStorage::new(dir)?.with_zero_fill(zero_fill).with_sync_method(sync))
            }
            Strategy::Probe(p) => Arc::new(ProbeStorage::new(dir, p)?),
        })
    }
}

/// Everything needed to open a log for one measurement.
#[derive(Debug, Clone, Copy)]
pub struct WalSetup {
    /// Storage strategy.
    pub strategy: Strategy,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Segments prepared ahead.
    pub prepare_ahead: u64,
}

impl WalSetup {
    /// The same setup with another strategy.
    pub fn with(&self, strategy: Strategy) -> WalSetup {
        WalSetup { strategy, ..*self }
    }

    /// Opens a fresh log in `dir` with `sync` and waits until the preparer
    /// has created its ahead segments.
    pub fn open(&self, dir: &Path, sync: SyncPolicy) -> BoxResult<Wal> {
        let opts = WalOptions {
            segment_size: self.segment_size,
            sync,
            prepare_ahead: self.prepare_ahead,
            ..WalOptions::default()
        };
        let (wal, _report) = Wal::open_with(self.strategy.storage(dir)?, opts)?;
        wait_prepared(&wal, 1 + self.prepare_ahead)?;
        Ok(wal)
    }
}

/// Waits until `segments` segments have been created in this run.
pub fn wait_prepared(wal: &Wal, segments: u64) -> BoxResult<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal.stats().segments_created < segments {
        if Instant::now() > deadline {
            return Err("WAL preparer did not create its ahead segments in 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
