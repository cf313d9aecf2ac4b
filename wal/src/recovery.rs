//! Recovery: find the valid prefix of the log when it is opened.
//!
//! 1. List the segments and read each header; order them by base LSN.
//! 2. Walk the chain from the oldest segment. Inside a segment, decode frames
//!    from its first data byte: records count, a padding frame ends the
//!    segment (the next must start at this segment's end), a zero head word
//!    ends the data (the next segment, from a later run, must start exactly
//!    there). The chain stops at the first invalid frame, bad header, or a
//!    segment that does not start where the previous one's data ended.
//! 3. Everything after the stop is measured: non-zero bytes left in the last
//!    segment and in every later segment. If there are none, the log simply
//!    ended. Otherwise, `Truncate` (the default) zeroes the rest of the last
//!    segment, deletes the later segments and reports segment, offset and
//!    bytes dropped; `Strict` returns `WalError::Corrupt` and changes nothing.
//!
//! Recovery reads untrusted bytes and never panics on any input; the property
//! tests and the fuzz target in `wal/fuzz/` check that.

use crate::record::{decode, Decoded, Record};
use crate::segment::{Header, Segment, SEGMENT_HEADER};
use crate::storage::Storage;
use crate::WalError;
use std::sync::Arc;

/// How to treat a damaged log on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Cut the log at the first damaged frame, report what was dropped, and
    /// open. Nothing before the damage is lost.
    #[default]
    Truncate,
    /// Refuse to open a log with a damaged or torn tail.
    Strict,
}

/// What was cut off during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// Base LSN (file name) of the segment where the damage starts.
    pub segment: u64,
    /// Byte offset in that segment file.
    pub offset: u64,
    /// Non-zero bytes discarded from there on, later segments included.
    pub bytes_dropped: u64,
    /// What was found at the cut.
    pub reason: String,
}

/// The outcome of opening a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments kept from earlier runs.
    pub segments: usize,
    /// Valid records found in them.
    pub records: u64,
    /// One past the last recovered record; new appends start here.
    pub end_lsn: u64,
    /// Set when a damaged or torn tail was cut off.
    pub truncated: Option<Truncation>,
    /// Segments deleted because they lay after the cut.
    pub removed_segments: Vec<u64>,
}

/// A kept segment and where its valid data ends.
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) seg: Arc<Segment>,
    pub(crate) data_end: u64,
}

/// Scans the valid data of one segment, calling `f` per record. Returns where
/// the valid data ends, whether it ended with padding, and the first invalid
/// frame (file offset and reason) if any.
pub(crate) fn scan_segment<'a>(
    bytes: &'a [u8],
    base: u64,
    mut f: impl FnMut(Record<'a>),
) -> (u64, bool, Option<(u64, String)>) {
    let mut off = SEGMENT_HEADER;
    loop {
        let lsn = base + (off - SEGMENT_HEADER);
        let Some(rest) = bytes.get(off as usize..) else { return (lsn, false, None) };
        if rest.is_empty() {
            return (lsn, false, None);
        }
        match decode(rest, lsn) {
            Decoded::Record { record, len } => {
                f(record);
                off += len;
            }
            Decoded::Padding => return (lsn, true, None),
            Decoded::End => return (lsn, false, None),
            Decoded::Invalid(why) => return (lsn, false, Some((off, why.to_string()))),
        }
    }
}

/// Index of one past the last non-zero byte at or after `from`, or `from`.
fn nonzero_end(bytes: &[u8], from: usize) -> usize {
    let Some(rest) = bytes.get(from..) else { return from };
    // Skip zero words eight bytes at a time from the end (a 64 MiB segment
    // is scanned at memory speed), then find the exact byte.
    let mut end = rest.len();
    while end >= 8 && rest[end - 8..end] == [0u8; 8] {
        end -= 8;
    }
    rest[..end].iter().rposition(|&b| b != 0).map_or(from, |i| from + i + 1)
}

/// Runs steps 1-3 over `storage`.
pub(crate) fn recover(
    storage: &dyn Storage,
    shard: u32,
    mode: RecoveryMode,
) -> Result<(Vec<Kept>, RecoveryReport), WalError> {
    let mut bases = storage.list()?;
    bases.sort_unstable();

    let mut kept: Vec<Kept> = Vec::new();
    let mut report = RecoveryReport::default();
    // (segment, offset, reason) of the first damage, and bytes dropped so far.
    let mut cut: Option<(u64, u64, String)> = None;
    let mut dropped = 0u64;
    let mut to_remove = Vec::new();
    let mut expected: Option<u64> = None;
    // Zeroing to do on the last kept segment: (segment index, from, to).
    let mut zero_tail: Option<(usize, usize, usize)> = None;

    for base in bases {
        let seg = Segment::new(storage.open(base)?, base).map(Arc::new);
        let holder = seg.clone();
        #[allow(unsafe_code)]
        // SAFETY: nothing appends while the log is being opened.
        let bytes = holder.as_deref().map(|s| unsafe { s.bytes() }).unwrap_or(&[]);
        if cut.is_some() {
            dropped += nonzero_end(bytes, SEGMENT_HEADER as usize)
                .saturating_sub(SEGMENT_HEADER as usize) as u64;
            to_remove.push(base);
            continue;
        }
        let header = Header::decode(bytes);
        let problem = match (&seg, &header) {
            (None, _) => Some("segment shorter than its header".to_string()),
            (_, Err(why)) => Some((*why).to_string()),
            (Some(s), Ok(h)) if h.base != base || h.len != s.len() => {
                Some("header does not match the file name or size".to_string())
            }
            (_, Ok(h)) if h.shard != shard => {
                return Err(WalError::WrongShard { segment: base, expected: shard, found: h.shard })
            }
            (_, Ok(_)) if expected.is_some_and(|e| e != base) => {
                Some(format!("segment does not continue the log at lsn {}", expected.unwrap_or(0)))
            }
            _ => None,
        };
        let (Some(seg), None) = (seg, problem.clone()) else {
            let reason = problem.unwrap_or_default();
            dropped += nonzero_end(bytes, SEGMENT_HEADER as usize)
                .saturating_sub(SEGMENT_HEADER as usize) as u64;
            cut = Some((base, 0, reason));
            to_remove.push(base);
            continue;
        };
        let mut records = 0u64;
        let (data_end, padded, invalid) = scan_segment(bytes, base, |_| records += 1);
        report.records += records;
        let stop_off = (SEGMENT_HEADER + (data_end - base)) as usize;
        expected = Some(if padded { seg.end() } else { data_end });
        let garbage_end = if padded { stop_off } else { nonzero_end(bytes, stop_off) };
        if garbage_end > stop_off {
            dropped += (garbage_end - stop_off) as u64;
            let reason = invalid
                .map(|(_, r)| r)
                .unwrap_or_else(|| "unfinished append (zero frame head) followed by data".into());
            cut = Some((base, stop_off as u64, reason));
            zero_tail = Some((kept.len(), stop_off, garbage_end));
        }
        kept.push(Kept { seg, data_end });
    }

    report.end_lsn = expected.unwrap_or(0);
    // Segments prepared ahead but never written hold no records; the next
    // run starts a fresh segment where the first of them started (which is
    // where the chain expected it), so they are deleted.
    while kept.last().is_some_and(|k| k.data_end == k.seg.base) {
        if let Some(k) = kept.pop() {
            report.end_lsn = k.seg.base;
            to_remove.push(k.seg.base);
        }
    }
    if let Some((segment, offset, reason)) = cut {
        if dropped > 0 {
            if mode == RecoveryMode::Strict {
                return Err(WalError::Corrupt { segment, offset, reason, dropped });
            }
            tracing::warn!(
                segment = %storage.describe(segment).display(),
                offset,
                bytes_dropped = dropped,
                %reason,
                "WAL tail is damaged; cutting the log there"
            );
            report.truncated = Some(Truncation { segment, offset, bytes_dropped: dropped, reason });
        }
    }
    if let Some((i, from, to)) = zero_tail {
        if let Some(k) = kept.get(i) {
            #[allow(unsafe_code)]
            // SAFETY: recovery is single-threaded; nothing else maps it yet.
            unsafe { k.seg.zero(from, to) }.map_err(|e| {
                WalError::io("cut the damaged tail of", storage.describe(k.seg.base), e)
            })?;
            k.seg.sync_file_range(from, to).map_err(|e| {
                WalError::io("sync truncated segment", storage.describe(k.seg.base), e)
            })?;
        }
    }
    for base in &to_remove {
        storage.remove(*base)?;
    }
    report.removed_segments = to_remove;
    report.segments = kept.len();
    Ok((kept, report))
}
