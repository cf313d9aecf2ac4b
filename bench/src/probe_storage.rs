//! A bench-only [`Storage`] that mirrors `FsStorage`'s zero-filled, msync'd
//! segments with its page-cache choices made switchable, so the study can
//! check each one without editing the WAL crate:
//!
//! - **how the zero-fill is written**: buffered `pwrite`s of a given size
//!   (`FsStorage` uses 4 KiB; ext4 on 6.x sizes page-cache folios from the
//!   write, so 1 MiB writes leave 1 MiB folios cached), or `O_DIRECT`, which
//!   leaves nothing cached (the end state of the earlier
//!   zero-fill + `fadvise(DONTNEED)` design, reached without `unsafe`);
//! - **`MADV_RANDOM`** on the mapping (a fault brings in one 4 KiB page) or
//!   the kernel's normal read-around.
//!
//! Segments are always fully zero-filled (initialised extents) and synced
//! with `msync` on the dirty range, like `FsStorage`'s defaults.

use crate::BoxResult;
use memmap2::{Advice, MmapRaw};
use spindle_wal::storage::{copy_parts, SegmentMap};
use spindle_wal::{Storage, WalError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PAGE: usize = 4096;
const DIRECT_CHUNK: usize = 1 << 20;

/// How a new segment's zeros are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroFill {
    /// Buffered `pwrite`s of this many bytes; the pages stay cached.
    Buffered(usize),
    /// `O_DIRECT` writes; nothing stays cached.
    Direct,
}

/// The probe's switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// How zeros are written.
    pub zero_fill: ZeroFill,
    /// `madvise(MADV_RANDOM)` on the mapping.
    pub madv_random: bool,
}

impl Probe {
    /// A short name, e.g. `pwrite4k+random`.
    pub fn name(&self) -> String {
        let fill = match self.zero_fill {
            ZeroFill::Buffered(n) if n >= 1 << 20 => format!("pwrite{}m", n >> 20),
            ZeroFill::Buffered(n) => format!("pwrite{}k", n >> 10),
            ZeroFill::Direct => "direct".into(),
        };
        format!("{fill}+{}", if self.madv_random { "random" } else { "normal" })
    }
}

/// Segment files `<base, 20 digits>.wal` in one directory.
#[derive(Debug)]
pub struct ProbeStorage {
    dir: PathBuf,
    probe: Probe,
}

impl ProbeStorage {
    /// Uses (and creates) `dir`.
    pub fn new(dir: &Path, probe: Probe) -> BoxResult<ProbeStorage> {
        std::fs::create_dir_all(dir)?;
        Ok(ProbeStorage { dir: dir.to_path_buf(), probe })
    }

    fn path(&self, base: u64) -> PathBuf {
        self.dir.join(format!("{base:020}.wal"))
    }

    fn map(&self, file: File, path: &Path) -> Result<Arc<dyn SegmentMap>, WalError> {
        let map = MmapRaw::map_raw(&file).map_err(|e| io_err("mmap", path, e))?;
        if self.probe.madv_random {
            map.advise(Advice::Random).map_err(|e| io_err("madvise", path, e))?;
        }
        Ok(Arc::new(ProbeSegment { map }))
    }

    fn zero_fill(&self, tmp: &Path, len: u64) -> std::io::Result<File> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(true);
        let chunk = match self.probe.zero_fill {
            ZeroFill::Buffered(n) => n.max(1),
            ZeroFill::Direct => {
                opts.custom_flags(libc::O_DIRECT);
                DIRECT_CHUNK
            }
        };
        let file = opts.open(tmp)?;
        // O_DIRECT wants a block-aligned buffer; take an aligned window.
        let raw = vec![0u8; chunk + PAGE];
        let off = raw.as_ptr().align_offset(PAGE);
        let zeros = &raw[off..off + chunk];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(chunk as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
        drop(file);
        // Reopen buffered for the header and the mapping.
        OpenOptions::new().read(true).write(true).open(tmp)
    }
}

impl Storage for ProbeStorage {
    fn list(&self) -> Result<Vec<u64>, WalError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &self.dir, e))?;
            let name = entry.file_name();
            if let Some(base) =
                name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|s| s.parse().ok())
            {
                out.push(base);
            }
        }
        Ok(out)
    }

    fn create(&self, base: u64, len: u64, header: &[u8]) -> Result<Arc<dyn SegmentMap>, WalError> {
        let path = self.path(base);
        let tmp = path.with_extension("wal.tmp");
        let file = self.zero_fill(&tmp, len).map_err(|e| io_err("zero-fill", &tmp, e))?;
        file.write_all_at(header, 0).map_err(|e| io_err("write header", &tmp, e))?;
        file.sync_data().map_err(|e| io_err("sync header", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("sync directory", &self.dir, e))?;
        self.map(file, &path)
    }

    fn open(&self, base: u64) -> Result<Arc<dyn SegmentMap>, WalError> {
        let path = self.path(base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open segment", &path, e))?;
        self.map(file, &path)
    }

    fn remove(&self, base: u64) -> Result<(), WalError> {
        let path = self.path(base);
        std::fs::remove_file(&path).map_err(|e| io_err("remove segment", &path, e))
    }

    fn describe(&self, base: u64) -> PathBuf {
        self.path(base)
    }
}

#[derive(Debug)]
struct ProbeSegment {
    map: MmapRaw,
}

// SAFETY: a shared file mapping of the whole preallocated file, page
// aligned by mmap and valid until the segment is dropped.
#[allow(unsafe_code)]
unsafe impl SegmentMap for ProbeSegment {
    fn ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// A store through the mapping, as the log made before it wrote with
    /// `pwritev`: what the probe studies is how such stores meet the page
    /// cache's folios.
    unsafe fn write_at(&self, offset: usize, parts: &[&[u8]]) -> std::io::Result<()> {
        // SAFETY: a writable shared mapping of `len()` bytes; the caller
        // gives the range to this thread alone.
        unsafe { copy_parts(self.map.as_mut_ptr(), self.map.len(), offset, parts) }
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn sync(&self, offset: usize, len: usize) -> std::io::Result<()> {
        self.map.flush_range(offset, len)
    }
}

/// `WalError::io` is crate-private, so external `Storage` implementations
/// build the variant by hand.
fn io_err(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> WalError {
    WalError::Io { op, path: path.into(), source }
}
