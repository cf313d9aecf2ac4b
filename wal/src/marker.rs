//! [`RunMarker`]: one word, in a shared mapping of a small file, that names
//! the job a thread is running now.
//!
//! A runtime that must count a crash during a run as that job's
//! interruption (so a job that kills the process every time is buried as a
//! poison pill) could log a `Reserve` record before each run: one log
//! append per job. The marker does the same for the cost of a store:
//!
//! 1. Before a run, the runner stores the job's id; after it, 0.
//! 2. The store goes to a `MAP_SHARED` mapping of the file, which is the
//!    page cache itself: once the store is done, a `kill -9` of the process
//!    cannot undo it (a power loss can, like any write not yet synced).
//! 3. On the next start, [`RunMarker::open`] returns the id found there
//!    (0: nothing was running); the runtime counts the interruption for
//!    that job if the log says it is still live, writes that decision to
//!    the log, and only then clears the marker (so a crash in between
//!    counts it on the following start instead).
//!
//! One runner writes a marker (a shard thread); the file holds the id as 8
//! little-endian bytes at offset 0.

use crate::{FileAccess, WalError};
use memmap2::MmapRaw;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The marker's file name inside a log directory (ignored by the log, which
/// reads only `*.wal` files).
pub const MARKER_FILE: &str = "running";

/// Bytes of the marker file.
const LEN: u64 = 8;

/// The job id a runner is running now, kept where a crash cannot lose it.
#[derive(Debug)]
pub struct RunMarker {
    map: MmapRaw,
}

impl RunMarker {
    /// Opens (creating if needed, with `access`'s mode) the marker in
    /// `dir`; returns it and the id it holds (0 if none).
    pub fn open(dir: &Path, access: FileAccess) -> Result<(RunMarker, u64), WalError> {
        let path = dir.join(MARKER_FILE);
        let file = access.open_file(
            "open run marker",
            &path,
            OpenOptions::new().read(true).write(true).create(true).truncate(false),
        )?;
        let len = file.metadata().map_err(|e| WalError::io("inspect run marker", &path, e))?.len();
        if len != LEN {
            // New, or not ours: a marker that cannot be read names no job.
            file.set_len(0).map_err(|e| WalError::io("size run marker", &path, e))?;
            file.set_len(LEN).map_err(|e| WalError::io("size run marker", &path, e))?;
        }
        let map = MmapRaw::map_raw(&file).map_err(|e| WalError::io("mmap run marker", &path, e))?;
        let marker = RunMarker { map };
        let was = marker.word().load(Ordering::Relaxed);
        Ok((marker, u64::from_le(was)))
    }

    fn word(&self) -> &AtomicU64 {
        let ptr = self.map.as_mut_ptr().cast::<AtomicU64>();
        // SAFETY: the mapping is at least `LEN` (8) bytes of a file that is
        // never truncated while mapped, page aligned (so aligned for a
        // u64), and lives as long as `self`; every access goes through this
        // atomic, so there is no data race within the process.
        #[allow(unsafe_code)]
        unsafe {
            &*ptr
        }
    }

    /// Step 1: `id` runs now (0: nothing runs).
    #[inline]
    pub fn set(&self, id: u64) {
        self.word().store(id.to_le(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_set_last_is_read_back_once_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let (m, was) = RunMarker::open(dir.path(), FileAccess::Private).unwrap();
        assert_eq!(was, 0, "a new marker names no job");
        m.set(42);
        m.set(7);
        // No drop, no sync: what a kill -9 would leave behind.
        std::mem::forget(m);
        let (m, was) = RunMarker::open(dir.path(), FileAccess::Private).unwrap();
        assert_eq!(was, 7);
        drop(m);
        let (m, was) = RunMarker::open(dir.path(), FileAccess::Private).unwrap();
        assert_eq!(was, 7, "opening alone clears nothing");
        m.set(0);
        drop(m);
        let (_, was) = RunMarker::open(dir.path(), FileAccess::Private).unwrap();
        assert_eq!(was, 0, "a finished run leaves nothing to count");
        let bytes = std::fs::read(dir.path().join(MARKER_FILE)).unwrap();
        assert_eq!(bytes, 0u64.to_le_bytes());
    }

    #[test]
    fn a_marker_of_the_wrong_size_names_no_job() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARKER_FILE), b"garbage!!").unwrap();
        let (_, was) = RunMarker::open(dir.path(), FileAccess::Private).unwrap();
        assert_eq!(was, 0);
    }

    #[test]
    fn the_marker_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _ = RunMarker::open(dir.path(), FileAccess::Private).unwrap();
        let mode = std::fs::metadata(dir.path().join(MARKER_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
