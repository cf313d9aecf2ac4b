//! [`SimStorage`]: segments in memory with a separate durable image, for
//! crash and fault-injection tests.
//!
//! Each segment has two copies of its bytes: the *live* buffer the log writes
//! through its pointer (the page cache) and the *durable* image that only
//! [`SegmentMap::sync`] updates (the disk). A test can then:
//!
//! 1. schedule faults with [`SimStorage::inject`]: a crash at the N-th sync
//!    (that sync persists nothing, or a torn half of its last page; every
//!    later sync and create fails), an EIO at the N-th sync or the N-th
//!    write, or ENOSPC after N segment creations;
//! 2. take [`SimStorage::power_loss_image`] (only durable bytes survive) or
//!    [`SimStorage::process_crash_image`] (the page cache survives, as after
//!    `kill -9`) and reopen a log on it.

use super::{SegmentMap, Storage};
use crate::WalError;
use std::alloc::Layout;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

/// Page size the simulation tears at.
const SIM_PAGE: usize = 4096;

/// A fault to inject into a [`SimStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The machine loses power during the `n`-th sync (1-based, counting syncs
    /// of all segments). With `tear`, the first half of that sync's last page
    /// reaches the disk; otherwise nothing of it does. Every later sync and
    /// create fails with EIO.
    CrashAtSync {
        /// Which sync.
        n: u64,
        /// Persist a torn half page.
        tear: bool,
    },
    /// The `n`-th sync fails with EIO and persists nothing.
    EioAtSync(u64),
    /// Segment creations after the first `n` fail with ENOSPC.
    NoSpaceAfterCreates(u64),
    /// The `n`-th write (1-based, counting the writes of frames and
    /// paddings to all segments) fails with EIO and writes nothing.
    EioAtWrite(u64),
}

#[derive(Debug, Default)]
struct Counters {
    writes: u64,
    syncs: u64,
    creates: u64,
    crashed: bool,
    faults: Vec<SimFault>,
}

/// In-memory storage with crash simulation and fault injection.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    segments: Arc<Mutex<BTreeMap<u64, Arc<SimSegment>>>>,
    counters: Arc<Mutex<Counters>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; the
    // simulation keeps going rather than poisoning every later test step.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimStorage {
    /// An empty simulated directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules a fault.
    pub fn inject(&self, fault: SimFault) {
        lock(&self.counters).faults.push(fault);
    }

    /// Syncs performed so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.counters).syncs
    }

    /// Writes of frames and paddings so far (what [`SimFault::EioAtWrite`]
    /// counts).
    pub fn writes(&self) -> u64 {
        lock(&self.counters).writes
    }

    /// Whether a scheduled crash has happened.
    pub fn crashed(&self) -> bool {
        lock(&self.counters).crashed
    }

    /// A fresh storage holding only what reached the durable image, as after
    /// a power loss. Call it when no appender is running.
    pub fn power_loss_image(&self) -> SimStorage {
        self.image(|s| lock(&s.durable).clone())
    }

    /// A fresh storage holding everything written to the live buffers, as
    /// after `kill -9` (the page cache survives). Call it when no appender is
    /// running.
    pub fn process_crash_image(&self) -> SimStorage {
        self.image(|s| s.live_copy())
    }

    fn image(&self, bytes: impl Fn(&SimSegment) -> Vec<u8>) -> SimStorage {
        let out = SimStorage::new();
        let segs = lock(&self.segments);
        let mut map = lock(&out.segments);
        for (&base, seg) in segs.iter() {
            let data = bytes(seg);
            if let Some(copy) = SimSegment::from_bytes(&data, out.counters.clone()) {
                map.insert(base, Arc::new(copy));
            }
        }
        drop(map);
        out
    }

    /// Adds a segment with exactly these bytes (live and durable), as if a
    /// file with this content were found on disk. For fuzzing and property
    /// tests of recovery.
    pub fn insert_raw(&self, base: u64, bytes: &[u8]) {
        if let Some(seg) = SimSegment::from_bytes(bytes, self.counters.clone()) {
            lock(&self.segments).insert(base, Arc::new(seg));
        }
    }

    /// The live bytes of a segment, if it exists. Call it when no appender
    /// is running.
    pub fn segment_bytes(&self, base: u64) -> Option<Vec<u8>> {
        lock(&self.segments).get(&base).map(|s| s.live_copy())
    }

    /// Overwrites bytes of a segment in both images (to simulate corruption).
    pub fn corrupt(&self, base: u64, offset: usize, bytes: &[u8]) -> bool {
        let segs = lock(&self.segments);
        let Some(seg) = segs.get(&base) else { return false };
        if offset.saturating_add(bytes.len()) > seg.len {
            return false;
        }
        let mut durable = lock(&seg.durable);
        durable[offset..offset + bytes.len()].copy_from_slice(bytes);
        // SAFETY: the range is inside the live buffer (checked above) and the
        // caller runs this only while no appender writes to the segment.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.ptr.as_ptr().add(offset), bytes.len())
        };
        true
    }

    fn eio(what: &str) -> io::Error {
        io::Error::other(format!("simulated EIO during {what}"))
    }
}

impl Storage for SimStorage {
    fn list(&self) -> Result<Vec<u64>, WalError> {
        Ok(lock(&self.segments).keys().copied().collect())
    }

    fn create(&self, base: u64, len: u64, header: &[u8]) -> Result<Arc<dyn SegmentMap>, WalError> {
        {
            let mut c = lock(&self.counters);
            if c.crashed {
                return Err(WalError::io(
                    "create segment",
                    self.describe(base),
                    Self::eio("create"),
                ));
            }
            c.creates += 1;
            let n = c.creates;
            let full =
                c.faults.iter().any(|f| matches!(f, SimFault::NoSpaceAfterCreates(k) if n > *k));
            if full {
                return Err(WalError::NoSpace { path: self.describe(base), bytes: len });
            }
        }
        let len = usize::try_from(len).map_err(|_| WalError::Config("segment too large".into()))?;
        let seg = SimSegment::zeroed(len, self.counters.clone())
            .ok_or_else(|| WalError::Config(format!("cannot allocate {len} bytes")))?;
        let n = header.len().min(len);
        lock(&seg.durable)[..n].copy_from_slice(&header[..n]);
        // SAFETY: the buffer is `len` bytes, n <= len, and nobody else holds it yet.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), seg.ptr.as_ptr(), n) };
        let seg = Arc::new(seg);
        lock(&self.segments).insert(base, seg.clone());
        Ok(seg)
    }

    fn open(&self, base: u64) -> Result<Arc<dyn SegmentMap>, WalError> {
        match lock(&self.segments).get(&base) {
            Some(seg) => Ok(seg.clone()),
            None => Err(WalError::io(
                "open segment",
                self.describe(base),
                io::Error::from(io::ErrorKind::NotFound),
            )),
        }
    }

    fn remove(&self, base: u64) -> Result<(), WalError> {
        lock(&self.segments).remove(&base);
        Ok(())
    }

    fn describe(&self, base: u64) -> PathBuf {
        PathBuf::from(format!("sim:{base:020}.wal"))
    }
}

/// A heap buffer, page aligned, plus its durable image.
struct SimSegment {
    ptr: NonNull<u8>,
    len: usize,
    durable: Mutex<Vec<u8>>,
    counters: Arc<Mutex<Counters>>,
}

impl std::fmt::Debug for SimSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSegment").field("len", &self.len).finish()
    }
}

// SAFETY: the buffer is owned by the segment and only reached through raw
// pointers; the log's claim protocol keeps concurrent writers on disjoint
// ranges, the same contract a shared file mapping has.
unsafe impl Send for SimSegment {}
// SAFETY: as above; `durable` is behind a mutex.
unsafe impl Sync for SimSegment {}

impl SimSegment {
    fn layout(len: usize) -> Option<Layout> {
        Layout::from_size_align(len.max(1), SIM_PAGE).ok()
    }

    fn zeroed(len: usize, counters: Arc<Mutex<Counters>>) -> Option<Self> {
        let layout = Self::layout(len)?;
        // SAFETY: the layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)?;
        Some(SimSegment { ptr, len, durable: Mutex::new(vec![0; len]), counters })
    }

    fn from_bytes(bytes: &[u8], counters: Arc<Mutex<Counters>>) -> Option<Self> {
        let seg = Self::zeroed(bytes.len(), counters)?;
        // SAFETY: the new buffer has bytes.len() bytes and is not shared yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.ptr.as_ptr(), bytes.len()) };
        lock(&seg.durable).copy_from_slice(bytes);
        Some(seg)
    }

    fn live_copy(&self) -> Vec<u8> {
        // SAFETY: the buffer holds `len` initialised bytes; callers take images
        // only while no appender is writing.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }.to_vec()
    }
}

impl Drop for SimSegment {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `zeroed` with this same layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

// SAFETY: a page-aligned heap buffer of `len` bytes owned until drop;
// `sync` copies only the range it is given.
#[allow(unsafe_code)]
unsafe impl SegmentMap for SimSegment {
    fn ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    unsafe fn write_at(&self, offset: usize, parts: &[&[u8]]) -> io::Result<()> {
        {
            let mut c = lock(&self.counters);
            c.writes += 1;
            let n = c.writes;
            if c.faults.contains(&SimFault::EioAtWrite(n)) {
                return Err(SimStorage::eio("write"));
            }
        }
        // SAFETY: the buffer holds `len` bytes; the caller gives the range
        // to this thread alone.
        unsafe { super::copy_parts(self.ptr.as_ptr(), self.len, offset, parts) }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn sync(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "sync range out of bounds"));
        };
        let mut c = lock(&self.counters);
        if c.crashed {
            return Err(SimStorage::eio("sync after crash"));
        }
        c.syncs += 1;
        let n = c.syncs;
        let mut keep = end;
        let faults = c.faults.clone();
        for f in &faults {
            match *f {
                SimFault::EioAtSync(k) if k == n => return Err(SimStorage::eio("sync")),
                SimFault::CrashAtSync { n: k, tear } if k == n => {
                    c.crashed = true;
                    if !tear || len == 0 {
                        return Err(SimStorage::eio("sync (power lost)"));
                    }
                    // Persist everything before the last page of the range and
                    // the first half of that page.
                    let last_page = ((end - 1) / SIM_PAGE) * SIM_PAGE;
                    let start_of_last = last_page.max(offset);
                    keep = (start_of_last + SIM_PAGE / 2).min(end);
                }
                _ => {}
            }
        }
        let mut durable = lock(&self.durable);
        // SAFETY: offset..keep is inside the buffer, and the caller guarantees
        // nobody writes to this range while it is synced.
        let live =
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), keep - offset) };
        durable[offset..keep].copy_from_slice(live);
        if c.crashed {
            return Err(SimStorage::eio("sync (power lost mid-write)"));
        }
        Ok(())
    }
}
