//! A segment: one fixed-size, preallocated, mapped file of the log.
//!
//! ```text
//! offset  size  field
//!      0     8  magic        b"SPNDLWAL"
//!      8     2  version      u16 LE = 1
//!     10     2  header_len   u16 LE = 64
//!     12     4  shard        u32 LE
//!     16     8  base_lsn     u64 LE: LSN of the first data byte (offset 64)
//!     24     8  segment_len  u64 LE: file size in bytes
//!     32    28  reserved     zero
//!     60     4  crc          masked CRC32C of bytes 0..60
//!     64     …  frames (see record.rs), then zeros
//! ```
//!
//! This module holds the only raw-pointer access to segment memory; every
//! other module goes through the methods below. The mapping is read, never
//! written: frames go in through [`SegmentMap::write_at`].

use crate::record::{self, FRAME_ALIGN, FRAME_HEADER, KIND_PADDING};
use crate::storage::SegmentMap;
use std::io;
use std::sync::Arc;

/// Bytes of zeros written per call when recovery cuts a torn tail.
const ZERO_CHUNK: usize = 1 << 16;

/// Segment file magic.
pub(crate) const MAGIC: &[u8; 8] = b"SPNDLWAL";
/// On-disk format version.
pub(crate) const VERSION: u16 = 1;
/// Highest LSN a log may reach (2^62 bytes, 4 EiB): far beyond any real
/// log, and low enough that LSN arithmetic can never overflow a u64.
pub(crate) const MAX_LSN: u64 = 1 << 62;
/// Bytes before the first frame; a multiple of the frame alignment.
pub const SEGMENT_HEADER: u64 = 64;

/// The fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) shard: u32,
    pub(crate) base: u64,
    pub(crate) len: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER as usize] {
        let mut h = [0u8; SEGMENT_HEADER as usize];
        h[0..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&(SEGMENT_HEADER as u16).to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..24].copy_from_slice(&self.base.to_le_bytes());
        h[24..32].copy_from_slice(&self.len.to_le_bytes());
        let crc = record::mask_crc(crc32c::crc32c(&h[0..60]));
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses a header; `Err` says what is wrong. Never panics.
    pub(crate) fn decode(b: &[u8]) -> Result<Header, &'static str> {
        let b = b.get(..SEGMENT_HEADER as usize).ok_or("segment shorter than its header")?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if &b[0..8] != MAGIC {
            return Err("bad magic");
        }
        if u32_at(60) != record::mask_crc(crc32c::crc32c(&b[0..60])) {
            return Err("header checksum mismatch");
        }
        if u16_at(8) != VERSION {
            return Err("unsupported format version");
        }
        if u64::from(u16_at(10)) != SEGMENT_HEADER {
            return Err("unsupported header length");
        }
        let (base, len) = (u64_at(16), u64_at(24));
        if base.checked_add(len).is_none_or(|end| end > MAX_LSN) {
            return Err("base LSN out of range");
        }
        Ok(Header { shard: u32_at(12), base, len })
    }
}

/// A mapped segment.
#[derive(Debug)]
pub(crate) struct Segment {
    map: Arc<dyn SegmentMap>,
    /// LSN of the first data byte.
    pub(crate) base: u64,
}

impl Segment {
    /// Wraps a mapping whose length is at least the header.
    pub(crate) fn new(map: Arc<dyn SegmentMap>, base: u64) -> Option<Segment> {
        ((map.len() as u64) > SEGMENT_HEADER).then_some(Segment { map, base })
    }

    /// File length.
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// One past the last LSN this segment can hold.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.len() - SEGMENT_HEADER
    }

    fn offset(&self, lsn: u64) -> usize {
        (SEGMENT_HEADER + (lsn - self.base)) as usize
    }

    /// The whole file as bytes, header included.
    ///
    /// # Safety
    /// No thread may write to the segment while the slice lives (recovery of
    /// old segments, where nothing appends).
    pub(crate) unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is valid for len bytes while `self.map` lives,
        // and the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.map.ptr(), self.map.len()) }
    }

    /// The data bytes `from..to` (LSNs).
    ///
    /// # Safety
    /// `base <= from <= to <= end()` and no thread writes inside the range
    /// while the slice lives (it lies below `published`, or in an old segment).
    pub(crate) unsafe fn data(&self, from: u64, to: u64) -> &[u8] {
        debug_assert!(self.base <= from && from <= to && to <= self.end());
        // SAFETY: in bounds per the caller's contract; the range is immutable
        // for the slice's life.
        unsafe {
            std::slice::from_raw_parts(self.map.ptr().add(self.offset(from)), (to - from) as usize)
        }
    }

    /// Writes a record frame at `lsn`, through the file rather than the
    /// mapping (see [`SegmentMap::write_at`]: a store through a shared
    /// mapping makes every later sync write-protect the page again, one
    /// TLB shoot-down per page).
    ///
    /// # Safety
    /// The caller owns the claim `lsn..lsn + frame_len(payload.len())`, which
    /// lies inside this segment; no other thread reads or writes that range
    /// until the claim is published through the cursor.
    pub(crate) unsafe fn write_frame(&self, lsn: u64, kind: u8, payload: &[u8]) -> io::Result<()> {
        let padded = record::align_up(payload.len() as u64) as usize;
        let zeros = [0u8; FRAME_ALIGN as usize];
        let pad = zeros.get(..padded - payload.len()).unwrap_or_default();
        let header = record::header(lsn, record::head(kind, payload.len() as u32), payload);
        // SAFETY: the claimed range is exclusively ours and in bounds.
        unsafe { self.map.write_at(self.offset(lsn), &[&header, payload, pad]) }
    }

    /// Writes frames already encoded for `lsn` onwards (a flushed batch,
    /// `log/batch.rs`), as [`Segment::write_frame`] does (through the file,
    /// or the mapping under `WriteMethod::Mmap`).
    ///
    /// # Safety
    /// The caller owns the claims covering `lsn..lsn + bytes.len()`, which
    /// lie inside this segment; no other thread reads or writes that range
    /// until they are published through the cursor.
    pub(crate) unsafe fn write_encoded(&self, lsn: u64, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: the claimed range is exclusively ours and in bounds.
        unsafe { self.map.write_at(self.offset(lsn), &[bytes]) }
    }

    /// Writes a padding frame covering `lsn..end()` (its 16-byte header).
    ///
    /// # Safety
    /// As for [`Segment::write_frame`], for the range `lsn..end()`.
    pub(crate) unsafe fn write_padding(&self, lsn: u64) -> io::Result<()> {
        let pad_len = (self.end() - lsn - FRAME_HEADER) as u32;
        let header = record::header(lsn, record::head(KIND_PADDING, pad_len), &[]);
        // SAFETY: as in write_frame; the header fits because claims are
        // 16-byte multiples.
        unsafe { self.map.write_at(self.offset(lsn), &[&header]) }
    }

    /// Zeroes file bytes `from..to` (recovery cutting a torn tail).
    ///
    /// # Safety
    /// No other thread accesses the segment (recovery runs before appends).
    pub(crate) unsafe fn zero(&self, from: usize, to: usize) -> io::Result<()> {
        debug_assert!(from <= to && to <= self.map.len());
        let zeros = vec![0u8; (to - from).min(ZERO_CHUNK)];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len());
            // SAFETY: in bounds, and recovery is single-threaded.
            unsafe { self.map.write_at(at, &[&zeros[..n]])? };
            at += n;
        }
        Ok(())
    }

    /// Makes data LSNs `from..to` durable (file offsets computed here).
    pub(crate) fn sync(&self, from: u64, to: u64) -> std::io::Result<()> {
        self.map.sync(self.offset(from), (to - from) as usize)
    }

    /// Makes file bytes `from..to` durable.
    pub(crate) fn sync_file_range(&self, from: usize, to: usize) -> std::io::Result<()> {
        self.map.sync(from, to - from)
    }
}
