//! The storage layer under the log: where segment bytes live and how they are
//! made durable.
//!
//! The log never touches files directly. It asks a [`Storage`] for segments
//! (each a fixed-size, already-allocated block of memory that stays mapped for
//! the segment's life) and tells each [`SegmentMap`] which byte ranges must
//! reach stable storage. Two implementations exist:
//!
//! - [`FsStorage`]: one file per segment in a directory, preallocated with
//!   `posix_fallocate` and mapped with memmap2. This is what production uses.
//! - [`SimStorage`]: segments in heap memory with a separate "durable" image
//!   that only [`SegmentMap::sync`] updates. Tests use it to crash the log at
//!   the N-th sync (optionally tearing the last page) and to inject ENOSPC or
//!   EIO after a countdown, in the style of redb's crash-testing backend.

mod fs;
mod sim;

pub use fs::{FsStorage, SyncMethod};
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
/// # Safety
///
/// The log writes and reads through [`SegmentMap::ptr`] with raw pointers,
/// so an implementation must guarantee: the memory is valid for
/// [`SegmentMap::len`] bytes (never changing) for as long as the map is
/// alive, is aligned to at least 4096 bytes, may be written by several
/// threads at disjoint offsets, and [`SegmentMap::sync`] only reads the range
/// it is given (which nobody writes during the call).
pub unsafe trait SegmentMap: Send + Sync + fmt::Debug {
    /// Start of the mapping.
    fn ptr(&self) -> *mut u8;
    /// Length of the mapping in bytes.
    fn len(&self) -> usize;
    /// Whether the mapping is empty (never, for a real segment).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes bytes `offset..offset + len` durable. The caller guarantees no
    /// thread is writing inside that range while the call runs.
    fn sync(&self, offset: usize, len: usize) -> std::io::Result<()>;
    /// Faults the mapping's pages in ahead of use (a hint; the default
    /// does nothing).
    fn prefault(&self) {}
}
