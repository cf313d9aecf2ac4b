//! The storage layer under the log: where segment bytes live and how they are
//! made durable.
//!
//! The log never touches files directly. It asks a [`Storage`] for segments
//! (each a fixed-size, already-allocated block of memory that stays mapped for
//! the segment's life) and tells each [`SegmentMap`] which byte ranges must
//! reach stable storage. Two implementations exist:
//!
//! - [`FsStorage`]: one file per segment in a directory, preallocated with
//!   `posix_fallocate`, mapped with memmap2 for reading and written with
//!   `pwritev` (or through the mapping, [`WriteMethod::Mmap`]). This is
//!   what production uses.
//! - [`SimStorage`]: segments in heap memory with a separate "durable" image
//!   that only [`SegmentMap::sync`] updates. Tests use it to crash the log at
//!   the N-th sync (optionally tearing the last page) and to inject ENOSPC or
//!   EIO after a countdown, in the style of redb's crash-testing backend.

mod fs;
mod sim;

pub use fs::{FsStorage, SyncMethod, WriteMethod};
pub use sim::{SimFault, SimStorage};

use crate::WalError;
use std::fmt;
use std::sync::Arc;

/// A directory of segments, named by their base LSN.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The base LSNs of all complete segments, in any order.
    fn list(&self) -> Result<Vec<u64>, WalError>;
    /// Creates a segment of `len` bytes, fully allocated (never sparse), whose
    /// first bytes are `header`; the header is durable when this returns and
    /// the segment appears in [`Storage::list`] only once complete.
    fn create(&self, base: u64, len: u64, header: &[u8]) -> Result<Arc<dyn SegmentMap>, WalError>;
    /// Maps an existing segment.
    fn open(&self, base: u64) -> Result<Arc<dyn SegmentMap>, WalError>;
    /// Deletes a segment. Mappings already handed out stay valid.
    fn remove(&self, base: u64) -> Result<(), WalError>;
    /// A human name for a segment, used in errors and warnings.
    fn describe(&self, base: u64) -> std::path::PathBuf;
    /// The log is closed: release any lock on the directory. Mappings
    /// already handed out stay valid.
    fn close(&self) {}
}

/// One mapped segment.
///
/// The log reads a segment through [`SegmentMap::ptr`] and writes it only
/// with [`SegmentMap::write_at`], which [`FsStorage`] does with `pwritev`
/// by default ([`WriteMethod`]): a page of a shared file mapping that was
/// stored into is write-protected again by every sync that writes it back,
/// one TLB shoot-down per page, which the other cores take as interrupts;
/// with pages written by `pwrite` and only read through the mapping there
/// is nothing to protect (`docs/wal-format.md` §6, "Writes through the
/// file").
///
/// # Safety
///
/// An implementation must guarantee: the memory at [`SegmentMap::ptr`] is
/// valid for reads of [`SegmentMap::len`] bytes (never changing) for as long
/// as the map is alive, is aligned to at least 4096 bytes, shows what
/// [`SegmentMap::write_at`] wrote once that returns, and
/// [`SegmentMap::sync`] only reads the range it is given (which nobody
/// writes during the call).
pub unsafe trait SegmentMap: Send + Sync + fmt::Debug {
    /// Start of the mapping (read only).
    fn ptr(&self) -> *const u8;
    /// Length of the mapping in bytes.
    fn len(&self) -> usize;
    /// Whether the mapping is empty (never, for a real segment).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes `parts`, one after another, at byte `offset`.
    ///
    /// # Safety
    ///
    /// The range lies inside the segment, and no other thread reads or
    /// writes it while the call runs (the log's claim protocol gives each
    /// appender its own range, read by others only once published).
    unsafe fn write_at(&self, offset: usize, parts: &[&[u8]]) -> std::io::Result<()>;
    /// Makes bytes `offset..offset + len` durable. The caller guarantees no
    /// thread is writing inside that range while the call runs.
    fn sync(&self, offset: usize, len: usize) -> std::io::Result<()>;
    /// Brings the segment's pages into the page cache ahead of use (a hint;
    /// the default does nothing).
    fn prefault(&self) {}
}

/// Copies `parts`, one after another, to bytes `offset..` of the memory at
/// `dst`: [`SegmentMap::write_at`] for a segment kept in memory (a heap
/// buffer, or a writable mapping with [`WriteMethod::Mmap`]).
///
/// # Safety
///
/// `dst` is valid for writes of `len` bytes, no other thread reads or
/// writes the range written while the call runs, and no part of `parts`
/// lies inside it.
#[allow(unsafe_code)]
pub unsafe fn copy_parts(
    dst: *mut u8,
    len: usize,
    offset: usize,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    write_end(offset, parts, len)?;
    let mut at = offset;
    for p in parts {
        // SAFETY: in bounds (checked above) of memory valid for writes, and
        // the caller gives this range to this thread alone.
        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), dst.add(at), p.len()) };
        at += p.len();
    }
    Ok(())
}

/// Where writing `parts` at `offset` ends, if that is within `len` bytes:
/// the bounds check of every [`SegmentMap::write_at`].
pub(crate) fn write_end(offset: usize, parts: &[&[u8]], len: usize) -> std::io::Result<usize> {
    parts
        .iter()
        .try_fold(offset, |at, p| at.checked_add(p.len()))
        .filter(|&end| end <= len)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "write out of bounds"))
}
