//! [`FsStorage`]: segment files in a directory, preallocated and mmapped.

use super::{SegmentMap, Storage};
use crate::{FileAccess, WalError};
use memmap2::MmapRaw;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a segment's dirty range is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// `msync(MS_SYNC)` on the page-rounded dirty range of the mapping.
    #[default]
    Msync,
    /// `fdatasync` on the segment file (writes every dirty page of the file).
    Fdatasync,
}

/// How appends put their bytes into a segment (`docs/wal-format.md` §6,
/// "Writes through the file").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    /// One `pwritev` per frame; segments are mapped read only. A sync
    /// then finds no page of the mapping to write-protect again, so it
    /// sends no TLB shoot-downs to the other cores and no append takes a
    /// fault inside its claim, where every later appender would wait for
    /// it (Process mode at 100 k jobs/s: submit→start p99 1,375 → 102 µs
    /// on 2 cores, `docs/benchmarks.md`).
    #[default]
    Pwrite,
    /// Stores through a writable shared mapping: no system call per frame,
    /// which a single appending thread that appends once per command
    /// (`spindled`) measured faster with (durable cycles 424-585 k/s
    /// against 295-324 k/s with `Pwrite`, 2 cores).
    Mmap,
}

/// Segment files `<base LSN, 20 digits>.wal` in one directory.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    /// Holds an exclusive `flock` on `dir/LOCK` for the storage's life, so
    /// two processes never append to one log.
    lock: std::sync::Mutex<Option<File>>,
    sync: SyncMethod,
    zero_fill: bool,
    prefault: bool,
    write: WriteMethod,
    access: FileAccess,
}

impl FsStorage {
    /// Uses (and creates if needed) `dir`, private to this process's user
    /// ([`FileAccess::Private`]).
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, WalError> {
        Self::with_access(dir, FileAccess::Private)
    }

    /// Uses (and creates if needed) `dir`, giving it and every file in it
    /// `access` (see [`FileAccess`] for what happens to an existing
    /// directory and to files written before).
    pub fn with_access(dir: impl AsRef<Path>, access: FileAccess) -> Result<Self, WalError> {
        let dir = dir.as_ref().to_path_buf();
        access.prepare_dir(&dir)?;
        let lock_path = dir.join("LOCK");
        let lock = access.open_file(
            "open lock file",
            &lock_path,
            OpenOptions::new().read(true).write(true).create(true).truncate(false),
        )?;
        // SAFETY: flock on a descriptor we own; it only reads its arguments.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => WalError::Locked { path: dir },
                _ => WalError::io("lock directory", &lock_path, err),
            });
        }
        Ok(FsStorage {
            dir,
            lock: std::sync::Mutex::new(Some(lock)),
            sync: SyncMethod::default(),
            zero_fill: false,
            prefault: false,
            write: WriteMethod::default(),
            access,
        })
    }

    /// Chooses how syncs are done (see `docs/wal-format.md` for measurements).
    pub fn with_sync_method(mut self, sync: SyncMethod) -> Self {
        self.sync = sync;
        self
    }

    /// When true, new segments are also written with zeros, one page per
    /// `pwrite`, after `posix_fallocate`, so their extents are initialised and
    /// their pages cached as 4 KiB folios. Off by default: on ext4 (kernel
    /// 6.18, 2 cores) it measured the same commit latency and bytes written
    /// per commit as `posix_fallocate` alone, but creating a 64 MiB segment
    /// took ~200-350 ms instead of ~1-2 ms, which capped sustained appends at the
    /// preparer's pace (`spindle-bench wal`, see docs/benchmarks.md).
    pub fn with_zero_fill(mut self, zero_fill: bool) -> Self {
        self.zero_fill = zero_fill;
        self
    }

    /// Chooses how appends write ([`WriteMethod::Pwrite`] by default).
    pub fn with_write_method(mut self, write: WriteMethod) -> Self {
        self.write = write;
        self
    }

    /// With [`WriteMethod::Mmap`] (ignored with `Pwrite`, which maps
    /// nothing writable): when true, a new segment's pages are faulted in writable
    /// (`MADV_POPULATE_WRITE`, Linux 5.14+; ignored where unsupported) by
    /// the thread that creates it, the log's preparer, so appends do not
    /// take the first-write fault of each page (reading the fallocated
    /// page, zeroing it, `page_mkwrite`). Under `spindled`'s `put-batch`
    /// those faults were ~15% of the appending thread's time (`perf`), and
    /// turning this on raised `put-batch` from 531-556 k to 647-689 k
    /// jobs/s (2 cores, `spindle-bench peer`, docs/benchmarks.md). The
    /// cost: the zeroed pages are
    /// dirty, so background writeback writes each new segment once in full
    /// besides its records (syncs with [`SyncMethod::Msync`] still write
    /// only the synced range), and a page written back before it is used
    /// faults once more (`page_mkwrite` only). Off by default.
    pub fn with_prefault(mut self, prefault: bool) -> Self {
        self.prefault = prefault;
        self
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Who may read the directory and its files.
    pub fn access(&self) -> FileAccess {
        self.access
    }

    fn path(&self, base: u64) -> PathBuf {
        self.dir.join(format!("{base:020}.wal"))
    }

    fn sync_dir(&self) -> Result<(), WalError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io("sync directory", &self.dir, e))
    }

    fn map(
        &self,
        file: File,
        path: &Path,
        advice: memmap2::Advice,
    ) -> Result<Arc<dyn SegmentMap>, WalError> {
        // With `Pwrite` the mapping is read only: no page of it is ever
        // writable, so a sync has nothing to write-protect (`SegmentMap`).
        let map = match self.write {
            WriteMethod::Pwrite => memmap2::MmapOptions::new().map_raw_read_only(&file),
            WriteMethod::Mmap => MmapRaw::map_raw(&file),
        }
        .map_err(|e| WalError::io("mmap", path, e))?;
        // Advice only changes performance, so a refusal is ignored.
        let _ = map.advise(advice);
        Ok(Arc::new(FsSegment { map, file, sync: self.sync, write: self.write }))
    }
}

/// Bytes written per `pwrite` when zero-filling a new segment: one page.
/// ext4 (kernel 6.x) sizes page-cache folios from the write length, so 4 KiB
/// writes leave the segment cached as 4 KiB folios and a later small store
/// through the mapping dirties (and a sync writes) one page, not a large
/// folio. Measured in `docs/benchmarks.md` (`write_bytes_per_commit`).
const ZERO_CHUNK: usize = 4096;

impl Storage for FsStorage {
    fn list(&self) -> Result<Vec<u64>, WalError> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| WalError::io("list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| WalError::io("list", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".wal") {
                if let Ok(base) = stem.parse::<u64>() {
                    out.push(base);
                }
            } else if name.ends_with(".wal.tmp") {
                // A segment whose creation was interrupted; never listed.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(out)
    }

    fn create(&self, base: u64, len: u64, header: &[u8]) -> Result<Arc<dyn SegmentMap>, WalError> {
        let path = self.path(base);
        let tmp = path.with_extension("wal.tmp");
        let result = (|| {
            // Private before the first byte of it is written.
            let file = self.access.open_file(
                "create segment",
                &tmp,
                OpenOptions::new().read(true).write(true).create(true).truncate(true),
            )?;
            let len_off = libc::off_t::try_from(len)
                .map_err(|_| WalError::Config(format!("segment size {len} too large")))?;
            // SAFETY: `file` is an open descriptor we own; posix_fallocate only
            // reads its arguments and returns an error number.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
            if rc != 0 {
                let err = std::io::Error::from_raw_os_error(rc);
                return Err(match rc {
                    libc::ENOSPC | libc::EDQUOT => {
                        WalError::NoSpace { path: path.clone(), bytes: len }
                    }
                    _ => WalError::io("posix_fallocate", &tmp, err),
                });
            }
            if self.zero_fill {
                let zeros = vec![0u8; ZERO_CHUNK];
                let mut off = 0u64;
                while off < len {
                    let n = (len - off).min(ZERO_CHUNK as u64) as usize;
                    file.write_all_at(&zeros[..n], off)
                        .map_err(|e| WalError::io("zero-fill segment", &tmp, e))?;
                    off += n as u64;
                }
            }
            file.write_all_at(header, 0)
                .map_err(|e| WalError::io("write segment header", &tmp, e))?;
            file.sync_all().map_err(|e| WalError::io("sync new segment", &tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| WalError::io("rename segment", &path, e))?;
            self.sync_dir()?;
            // A segment being written faults one page at a time (no readahead
            // or fault-around), so a small store dirties one 4 KiB page even
            // where the kernel would otherwise bring pages in as large folios
            // and make every sync write a whole folio (docs/wal-format.md §6).
            // Unwritten (fallocated) extents read as zeros with no disk I/O.
            let map = self.map(file, &path, memmap2::Advice::Random)?;
            if self.prefault {
                map.prefault();
            }
            Ok(map)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn open(&self, base: u64) -> Result<Arc<dyn SegmentMap>, WalError> {
        let path = self.path(base);
        // A segment written before files were private is tightened here.
        let file = self.access.open_file(
            "open segment",
            &path,
            OpenOptions::new().read(true).write(true),
        )?;
        // Existing segments are read front to back by recovery.
        self.map(file, &path, memmap2::Advice::Sequential)
    }

    fn remove(&self, base: u64) -> Result<(), WalError> {
        let path = self.path(base);
        std::fs::remove_file(&path).map_err(|e| WalError::io("remove segment", &path, e))?;
        self.sync_dir()
    }

    fn describe(&self, base: u64) -> PathBuf {
        self.path(base)
    }

    fn close(&self) {
        // Closing the descriptor releases the flock.
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

#[derive(Debug)]
struct FsSegment {
    /// Read only with [`WriteMethod::Pwrite`], writable with `Mmap`.
    map: MmapRaw,
    file: File,
    sync: SyncMethod,
    write: WriteMethod,
}

// SAFETY: a shared file mapping of the whole (preallocated, never
// truncated) file, page aligned by mmap, valid until `map` is dropped; a
// `pwritev` to the file changes the page cache the mapping shows.
#[allow(unsafe_code)]
unsafe impl SegmentMap for FsSegment {
    fn ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    unsafe fn write_at(&self, offset: usize, parts: &[&[u8]]) -> std::io::Result<()> {
        if self.write == WriteMethod::Mmap {
            // SAFETY: a writable shared mapping (`Mmap`) of `len()` bytes;
            // the caller gives the range to this thread alone.
            return unsafe {
                super::copy_parts(self.map.as_mut_ptr(), self.map.len(), offset, parts)
            };
        }
        let total = super::write_end(offset, parts, self.map.len())? - offset;
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 4];
        let mut n = 0;
        for p in parts.iter().filter(|p| !p.is_empty()) {
            let Some(v) = iov.get_mut(n) else { return write_parts_at(&self.file, offset, parts) };
            *v = libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() };
            n += 1;
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        loop {
            // SAFETY: `iov[..n]` point into the live slices of `parts`, which
            // pwritev only reads; the descriptor is ours.
            let wrote =
                unsafe { libc::pwritev(self.file.as_raw_fd(), iov.as_ptr(), n as i32, off) };
            return match usize::try_from(wrote) {
                Ok(w) if w == total => Ok(()),
                // A short write (rare for a regular file): finish it plainly
                // (writing the same bytes again is harmless).
                Ok(_) => write_parts_at(&self.file, offset, parts),
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    Err(e)
                }
            };
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn sync(&self, offset: usize, len: usize) -> std::io::Result<()> {
        match self.sync {
            // memmap2 rounds the range out to page boundaries. `msync` writes
            // the file's range back also through a read-only mapping, as long
            // as the file was opened for writing (Linux keeps the mapping
            // shared, `VM_SHARED`, only then): every segment is.
            SyncMethod::Msync => self.map.flush_range(offset, len),
            SyncMethod::Fdatasync => self.file.sync_data(),
        }
    }

    fn prefault(&self) {
        // Only performance: an old kernel's EINVAL changes nothing.
        if self.write == WriteMethod::Mmap {
            let _ = self.map.advise(memmap2::Advice::PopulateWrite);
        }
    }
}

/// `parts` written one after another at `offset` with plain `pwrite`s: the
/// fallback of [`FsSegment::write_at`] (a short vectored write, or more
/// parts than it takes at once).
fn write_parts_at(file: &File, mut offset: usize, parts: &[&[u8]]) -> std::io::Result<()> {
    for p in parts {
        file.write_all_at(p, offset as u64)?;
        offset += p.len();
    }
    Ok(())
}
