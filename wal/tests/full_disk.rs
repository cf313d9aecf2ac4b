//! A real full disk: the log on a 1 MiB tmpfs with 64 KiB segments.
//!
//! When the filesystem cannot hold another segment, `posix_fallocate` fails
//! with ENOSPC (tmpfs implements `fallocate`) and the append that needs the
//! segment must return `WalError::NoSpace`: no crash, no SIGBUS (segments are
//! fully allocated before they are mapped), no failed log, every acknowledged
//! record still readable. Releasing old segments makes room again, and the
//! log recovers after a reopen.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Without it these tests fail loudly,
//! unless `SPINDLE_SKIP_TMPFS=1` is set, in which case they print
//! `SKIPPED: cannot mount tmpfs: <error>` and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/records.rs"]
mod records;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use records::{collect, payload};
use spindle_wal::storage::SegmentMap;
use spindle_wal::{FsStorage, Storage, SyncPolicy, Wal, WalError, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use tmpfs::{mount_or_skip, space};

const SEGMENT_SIZE: u64 = 64 << 10;
const DISK_SIZE: u64 = 1 << 20;

fn opts() -> WalOptions {
    WalOptions { segment_size: SEGMENT_SIZE, sync: SyncPolicy::Always, ..WalOptions::default() }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Appends durable records from `next` on until one fails; returns the
/// acknowledged ones and the error.
fn fill(wal: &Wal, next: &mut u64) -> (Vec<(u64, Vec<u8>)>, WalError) {
    let mut app = wal.appender();
    let mut acked = Vec::new();
    loop {
        let p = payload(*next);
        match app.append(1, &p) {
            Ok(lsn) => {
                wal.wait_durable(lsn).expect("a sync on a full tmpfs still works");
                acked.push((lsn, p));
                *next += 1;
            }
            Err(e) => return (acked, e),
        }
        assert!(acked.len() < 100_000, "a 1 MiB disk must fill up");
    }
}

/// Checks `err` is the full-disk error for a segment file in `dir`, and that
/// the disk really has no room for a segment.
fn assert_no_space(err: &WalError, dir: &Path) {
    match err {
        WalError::NoSpace { path, .. } => {
            assert_eq!(path.parent(), Some(dir), "{err}");
            assert!(path.to_string_lossy().ends_with(".wal"), "{err}");
        }
        other => panic!("expected WalError::NoSpace, got {other:?}"),
    }
    assert!(err.to_string().contains("free disk space"), "{err}");
    let (_, free) = space(dir);
    assert!(free < SEGMENT_SIZE, "NoSpace with {free} bytes free");
    assert!(
        files(dir).iter().all(|f| !f.ends_with(".tmp")),
        "a failed segment creation must not leave its temporary file: {:?}",
        files(dir)
    );
}

#[test]
fn a_full_disk_is_no_space_and_release_below_makes_room_again() {
    let Some(fs) = mount_or_skip(DISK_SIZE) else { return };
    let dir: PathBuf = fs.path().join("wal");
    let mut next = 0u64;
    let (wal, _) = Wal::open(&dir, opts()).unwrap();

    let (mut acked, err) = fill(&wal, &mut next);
    assert_no_space(&err, &dir);
    let held = wal.stats().live_segments as u64;
    assert!(held >= 8 && held * SEGMENT_SIZE <= DISK_SIZE, "{held} segments on a 1 MiB disk");
    // Still full on retry of the record that needs a new segment (a smaller
    // one may still fit in the current segment); the log is not failed and
    // lost nothing.
    let err = wal.appender().append(1, &payload(next)).unwrap_err();
    assert_no_space(&err, &dir);
    let whole = vec![7u8; wal.max_payload() as usize];
    assert_no_space(&wal.appender().append(1, &whole).unwrap_err(), &dir);
    wal.sync().unwrap();
    assert_eq!(collect(&wal), acked, "every acknowledged record reads back");

    // Release the older half: whole segments go, and appends work again,
    // across several new segments.
    let cut = acked[acked.len() / 2].0;
    let (_, free_before) = space(&dir);
    let released = wal.release_below(cut).unwrap();
    assert!(released >= 2, "released {released}");
    let (_, free_after) = space(&dir);
    assert!(free_after >= free_before + released as u64 * SEGMENT_SIZE);
    let created = wal.stats().segments_created;
    let mut app = wal.appender();
    while wal.stats().segments_created < created + 2 {
        let p = payload(next);
        next += 1;
        let lsn = app.append(2, &p).expect("appends succeed after release_below");
        wal.wait_durable(lsn).unwrap();
        acked.push((lsn, p));
    }
    drop(app);
    let kept: Vec<(u64, Vec<u8>)> = acked.iter().filter(|(l, _)| *l >= cut).cloned().collect();
    let now = collect(&wal);
    assert!(now.first().unwrap().0 <= cut, "records at or above the cut are kept");
    assert!(now.ends_with(&kept), "kept and new records read back");
    wal.close().unwrap();

    // Reopen after the episode: recovery finds exactly what was there.
    let (wal, report) = Wal::open(&dir, opts()).unwrap();
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(collect(&wal), now);
    let lsn = wal.appender().append(3, b"after reopen").unwrap();
    wal.wait_durable(lsn).unwrap();
    wal.close().unwrap();
    fs.finish();
}

#[test]
fn a_full_disk_never_damages_the_log_across_reopen() {
    let Some(fs) = mount_or_skip(DISK_SIZE) else { return };
    let dir: PathBuf = fs.path().join("wal");
    // Something else on the disk, for the "operator" to delete later.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![0xAB; 256 << 10]).unwrap();

    let mut next = 0u64;
    let (wal, _) = Wal::open(&dir, opts()).unwrap();
    let (acked, err) = fill(&wal, &mut next);
    assert_no_space(&err, &dir);
    assert!(acked.len() > 100, "only {} records fit", acked.len());
    wal.close().unwrap();

    // The process restarts while the disk is still full. Opening creates a
    // new segment for the new run, so it may fail; either way nothing that
    // was acknowledged may be lost or damaged.
    let before = files(&dir);
    match Wal::open(&dir, opts()) {
        Err(e) => {
            eprintln!("reopen on the full disk failed as expected: {e}");
            assert_no_space(&e, &dir);
            assert_eq!(files(&dir), before, "a failed open must leave the files as they were");
        }
        Ok((wal, report)) => {
            eprintln!("reopen on the full disk succeeded: {report:?}");
            assert!(report.truncated.is_none(), "{report:?}");
            assert_eq!(collect(&wal), acked);
            wal.close().unwrap();
        }
    }

    // Space is freed outside the log; it opens and every record is there.
    std::fs::remove_file(&ballast).unwrap();
    let (wal, report) = Wal::open(&dir, opts()).unwrap();
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(report.records, acked.len() as u64);
    assert_eq!(collect(&wal), acked);
    let lsn = wal.appender().append(2, b"room again").unwrap();
    wal.wait_durable(lsn).unwrap();
    wal.close().unwrap();
    let (wal, report) = Wal::open(&dir, opts()).unwrap();
    assert_eq!(report.records, acked.len() as u64 + 1);
    assert_eq!(collect(&wal).last().unwrap(), &(lsn, b"room again".to_vec()));
    drop(wal);
    fs.finish();
}

/// [`FsStorage`] that records the outcome of every segment creation, so a
/// test can wait (on a condition variable, not a clock) until the preparer
/// thread has tried to create a segment.
#[derive(Debug)]
struct Observed {
    inner: FsStorage,
    /// `true` per successful creation, `false` per failed one, in order.
    creates: Mutex<Vec<bool>>,
    changed: Condvar,
}

impl Observed {
    fn creates(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        // Not poisoned by a failing assertion elsewhere: the WAL's threads
        // keep calling `create` while the test unwinds.
        self.creates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until `n` creations have finished; returns their outcomes.
    fn wait_for_creates(&self, n: usize) -> Vec<bool> {
        let mut c = self.creates();
        while c.len() < n {
            c = self.changed.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        c.clone()
    }
}

impl Storage for Observed {
    fn list(&self) -> Result<Vec<u64>, WalError> {
        self.inner.list()
    }
    fn create(&self, base: u64, len: u64, header: &[u8]) -> Result<Arc<dyn SegmentMap>, WalError> {
        let res = self.inner.create(base, len, header);
        self.creates().push(res.is_ok());
        self.changed.notify_all();
        res
    }
    fn open(&self, base: u64) -> Result<Arc<dyn SegmentMap>, WalError> {
        self.inner.open(base)
    }
    fn remove(&self, base: u64) -> Result<(), WalError> {
        self.inner.remove(base)
    }
    fn describe(&self, base: u64) -> PathBuf {
        self.inner.describe(base)
    }
}

/// The preparer fails to create the next segment ahead of need while the
/// disk is full; space is freed before any append needs that segment. The
/// `NoSpace` doc says appends succeed again once space is freed, so the
/// append that moves into the next segment must not get the old error.
#[test]
fn space_freed_before_the_next_segment_is_needed_is_used() {
    let Some(fs) = mount_or_skip(DISK_SIZE) else { return };
    let dir: PathBuf = fs.path().join("wal");
    // Leave room for one and a half segments: the first segment (created by
    // `open`) fits, the one the preparer makes ahead does not.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![0xAB; (DISK_SIZE - SEGMENT_SIZE * 3 / 2) as usize]).unwrap();
    let storage = Arc::new(Observed {
        inner: FsStorage::new(&dir).unwrap(),
        creates: Mutex::new(Vec::new()),
        changed: Condvar::new(),
    });
    let (wal, _) = Wal::open_with(storage.clone(), opts()).unwrap();
    assert_eq!(
        storage.wait_for_creates(2),
        [true, false],
        "open creates segment 0; the preparer's segment 1 must not fit"
    );
    // An operator frees space long before the log needs segment 1.
    std::fs::remove_file(&ballast).unwrap();
    let (_, free) = space(&dir);
    assert!(free >= 4 * SEGMENT_SIZE, "{free} bytes free");

    let mut app = wal.appender();
    let mut acked = Vec::new();
    for i in 0..1000u64 {
        let p = payload(i);
        match app.append(1, &p) {
            Ok(lsn) => acked.push((lsn, p)),
            Err(e) => {
                let creates = storage.creates().clone();
                panic!(
                    "append {i} failed with {e:?} although the disk has {free} bytes free: \
                     the preparer's NoSpace from before the space was freed was kept and \
                     returned (segment creations so far, true = ok: {creates:?})"
                )
            }
        }
    }
    assert!(wal.stats().segments_created >= 3, "the appends crossed into new segments");
    wal.sync().unwrap();
    assert_eq!(collect(&wal), acked);
    wal.close().unwrap();
    drop(storage);
    fs.finish();
}

/// `append_keeping` stops while the log can still hold `keep` more bytes,
/// and plain appends (the records that must always be loggable) use that
/// room; releasing segments lets kept appends through again.
#[test]
fn append_keeping_leaves_room_for_plain_appends() {
    let Some(fs) = mount_or_skip(DISK_SIZE) else { return };
    let dir: PathBuf = fs.path().join("wal");
    let (wal, _) = Wal::open(&dir, opts()).unwrap();
    let keep = 2 * SEGMENT_SIZE;
    let mut app = wal.appender();
    let mut acked = Vec::new();
    let err = loop {
        let p = payload(acked.len() as u64);
        match app.append_keeping(1, &p, keep) {
            Ok(lsn) => acked.push((lsn, p)),
            Err(e) => break e,
        }
        assert!(acked.len() < 100_000, "a 1 MiB disk must fill up");
    };
    assert_no_space(&err, &dir);
    assert!(acked.len() > 100, "only {} records fit", acked.len());
    assert_no_space(&wal.ensure_room(keep + 512).unwrap_err(), &dir);
    wal.ensure_room(0).unwrap();
    // At least one segment's worth of plain records still fits.
    let mut plain = 0u64;
    while plain < SEGMENT_SIZE {
        let lsn = app.append(2, &[9u8; 100]).expect("plain appends use the room kept");
        acked.push((lsn, vec![9u8; 100]));
        plain += spindle_wal::frame_len(100);
    }
    // Still nothing kept-appended, while the disk is full.
    assert_no_space(&app.append_keeping(1, b"x", keep).unwrap_err(), &dir);
    wal.sync().unwrap();
    assert_eq!(collect(&wal), acked, "nothing refused was written");

    // Release most of the log: kept appends work again without a reopen.
    let cut = acked[acked.len() * 3 / 4].0;
    assert!(wal.release_below(cut).unwrap() >= 2);
    drop(app);
    let mut app = wal.appender();
    for i in 0..200u64 {
        app.append_keeping(3, &payload(i), keep).expect("room again after release_below");
    }
    drop(app);
    wal.close().unwrap();
    fs.finish();
}

/// `Wal::open` opens a log on a disk without room for its first segment
/// (its records can be read); `ensure_room(0)` says the segment is missing.
#[test]
fn ensure_room_reports_a_first_segment_that_does_not_fit() {
    let Some(fs) = mount_or_skip(DISK_SIZE) else { return };
    let dir: PathBuf = fs.path().join("wal");
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![0xAB; (DISK_SIZE - SEGMENT_SIZE / 2) as usize]).unwrap();
    let (wal, _) = Wal::open(&dir, opts()).unwrap();
    assert_no_space(&wal.ensure_room(0).unwrap_err(), &dir);
    std::fs::remove_file(&ballast).unwrap();
    wal.ensure_room(0).unwrap();
    let lsn = wal.appender().append(1, b"first").unwrap();
    wal.wait_durable(lsn).unwrap();
    wal.close().unwrap();
    fs.finish();
}
