//! The record frame: how one appended payload is laid out in a segment.
//!
//! Every frame starts on a [`FRAME_ALIGN`]-byte boundary and has a 16-byte
//! header followed by the payload and zero padding up to the next boundary:
//!
//! ```text
//! offset  size  field
//!      0     4  head     u32 LE: bits 0..24 payload length, bits 24..32 kind (0 = no frame)
//!      4     4  crc      u32 LE: masked CRC32C of head ‖ lsn ‖ payload
//!      8     8  lsn      u64 LE: the frame's own log position
//!     16   len  payload
//!  16+len  pad  zeros up to a multiple of 16
//! ```
//!
//! A frame is written in one call (`segment.rs`: a `pwritev`, or a copy
//! through a writable mapping) and read only below the published position,
//! where it is complete. After a crash the CRC and
//! the LSN (which must equal the frame's position) reject torn, zeroed and
//! stale frames; `docs/wal-format.md` gives the full rules.
//!
//! Everything here is pure functions over byte slices: the recovery scanner and
//! the fuzz target use them directly.

/// Frames start on this boundary so payloads are 16-byte aligned for zero-copy
/// reads of rkyv archives (rkyv's `AlignedVec` uses 16 as well).
pub const FRAME_ALIGN: u64 = 16;
/// Bytes of frame header before the payload.
pub const FRAME_HEADER: u64 = 16;
/// Largest payload one frame can carry: the head word has 24 bits of length.
pub const MAX_PAYLOAD: u64 = (1 << 24) - 1;
/// Kind of the frame that fills the unused tail of a segment.
pub const KIND_PADDING: u8 = 0xFF;

/// The constant LevelDB/RocksDB add when masking CRCs, so that a CRC stored
/// next to the data it covers does not checksum to a fixed point.
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

/// Masks a CRC the LevelDB way: rotate right by 15, add a constant.
pub(crate) fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

/// Bytes a frame with `payload_len` bytes of payload occupies in the log.
pub const fn frame_len(payload_len: u64) -> u64 {
    FRAME_HEADER + align_up(payload_len)
}

/// Rounds `n` up to a multiple of [`FRAME_ALIGN`].
pub const fn align_up(n: u64) -> u64 {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Packs kind and length into the head word.
pub(crate) const fn head(kind: u8, payload_len: u32) -> u32 {
    ((kind as u32) << 24) | (payload_len & 0x00FF_FFFF)
}

/// The checksum stored in a frame: masked CRC32C of head ‖ lsn ‖ payload.
///
/// One `crc32c` call costs ~130 instructions before its first byte (the
/// CPU feature check and alignment), so the 12 bytes of head and LSN go in
/// the same call as the payload: copied together when the payload is small
/// (most records are), else as one call before the payload's.
pub(crate) fn frame_crc(head: u32, lsn: u64, payload: &[u8]) -> u32 {
    const SMALL: usize = 116;
    let mut buf = [0u8; 12 + SMALL];
    buf[..4].copy_from_slice(&head.to_le_bytes());
    buf[4..12].copy_from_slice(&lsn.to_le_bytes());
    let crc = match buf.get_mut(12..12 + payload.len()) {
        Some(dst) => {
            dst.copy_from_slice(payload);
            crc32c::crc32c(&buf[..12 + payload.len()])
        }
        None => crc32c::crc32c_append(crc32c::crc32c(&buf[..12]), payload),
    };
    mask_crc(crc)
}

/// A frame read back from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's log sequence number: its byte position in the log.
    pub lsn: u64,
    /// The caller's record kind (1..=254).
    pub kind: u8,
    /// The payload, 16-byte aligned when the segment mapping is.
    pub payload: &'a [u8],
}

/// What [`decode`] found at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record; the next frame starts `len` bytes further on.
    Record {
        /// The record.
        record: Record<'a>,
        /// Bytes the frame occupies, padding included.
        len: u64,
    },
    /// A valid padding frame: the rest of the segment holds no records.
    Padding,
    /// The head word is zero: nothing was ever written here.
    End,
    /// Something is here but it is not a valid frame.
    Invalid(Invalid),
}

/// Why the bytes at a position are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer than 16 bytes remain, or the length runs past the segment.
    Truncated,
    /// The stored LSN is not the frame's position (stale or misplaced data).
    WrongLsn {
        /// The LSN the frame claims.
        found: u64,
    },
    /// The checksum does not match.
    BadChecksum,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Truncated => f.write_str("frame runs past the end of the segment"),
            Invalid::WrongLsn { found } => write!(f, "frame carries lsn {found}, not its position"),
            Invalid::BadChecksum => f.write_str("checksum mismatch"),
        }
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Decodes the frame that starts at `buf[0]`, which must sit at log position
/// `lsn`. `buf` runs to the end of the segment's data area. Never panics.
pub fn decode(buf: &[u8], lsn: u64) -> Decoded<'_> {
    let Some(head) = le_u32(buf, 0) else {
        // Fewer than 4 bytes left: only possible when the data area does not
        // end on a frame boundary, which a valid segment never does.
        return if buf.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Invalid(Invalid::Truncated)
        };
    };
    if head == 0 {
        return Decoded::End;
    }
    let (Some(stored_crc), Some(stored_lsn)) = (le_u32(buf, 4), le_u64(buf, 8)) else {
        return Decoded::Invalid(Invalid::Truncated);
    };
    let kind = (head >> 24) as u8;
    let len = u64::from(head & 0x00FF_FFFF);
    if kind == KIND_PADDING {
        // Padding covers the rest of the segment; its CRC covers head and lsn.
        if stored_lsn != lsn {
            return Decoded::Invalid(Invalid::WrongLsn { found: stored_lsn });
        }
        if stored_crc != frame_crc(head, stored_lsn, &[]) {
            return Decoded::Invalid(Invalid::BadChecksum);
        }
        return Decoded::Padding;
    }
    let total = frame_len(len);
    let Some(payload) = usize::try_from(len)
        .ok()
        .and_then(|l| buf.get(FRAME_HEADER as usize..FRAME_HEADER as usize + l))
    else {
        return Decoded::Invalid(Invalid::Truncated);
    };
    if (buf.len() as u64) < total {
        return Decoded::Invalid(Invalid::Truncated);
    }
    if stored_lsn != lsn {
        return Decoded::Invalid(Invalid::WrongLsn { found: stored_lsn });
    }
    if kind == 0 || stored_crc != frame_crc(head, stored_lsn, payload) {
        return Decoded::Invalid(Invalid::BadChecksum);
    }
    Decoded::Record { record: Record { lsn, kind, payload }, len: total }
}

/// A frame's 16-byte header at `lsn`: `h` (from [`head`]), the CRC of `h`,
/// `lsn` and `payload` (empty for padding), and `lsn`.
pub(crate) fn header(lsn: u64, h: u32, payload: &[u8]) -> [u8; FRAME_HEADER as usize] {
    let mut out = [0u8; FRAME_HEADER as usize];
    out[0..4].copy_from_slice(&h.to_le_bytes());
    out[4..8].copy_from_slice(&frame_crc(h, lsn, payload).to_le_bytes());
    out[8..16].copy_from_slice(&lsn.to_le_bytes());
    out
}

/// Writes a complete frame into `out`, which must be exactly
/// `frame_len(payload.len())` bytes: a batched append's buffer
/// (`log/batch.rs`), and tests and tools that build logs by hand.
pub fn encode_into(out: &mut [u8], lsn: u64, kind: u8, payload: &[u8]) {
    out[0..16].copy_from_slice(&header(lsn, head(kind, payload.len() as u32), payload));
    out[16..16 + payload.len()].copy_from_slice(payload);
    out[16 + payload.len()..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(lsn: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; frame_len(payload.len() as u64) as usize];
        encode_into(&mut v, lsn, kind, payload);
        v
    }

    /// The checksum is CRC32C of head ‖ LSN ‖ payload however it is
    /// computed (one call for small payloads, two for larger), and a frame
    /// keeps the bytes this format has always had.
    #[test]
    fn the_checksum_covers_head_lsn_and_payload_in_order() {
        let bytes: Vec<u8> = (0..400u32).map(|i| (i * 31 % 251) as u8).collect();
        for n in [0, 1, 100, 115, 116, 117, 118, 255, 400] {
            let p = &bytes[..n];
            let h = head(9, n as u32);
            let lsn: u64 = 0x0123_4567_89ab_cdef;
            let mut all = h.to_le_bytes().to_vec();
            all.extend_from_slice(&lsn.to_le_bytes());
            all.extend_from_slice(p);
            assert_eq!(frame_crc(h, lsn, p), mask_crc(crc32c::crc32c(&all)), "{n} bytes");
        }
        assert_eq!(
            frame(4096, 7, b"hello"),
            [
                0x05, 0x00, 0x00, 0x07, 0x21, 0x0c, 0x68, 0x05, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
    }

    #[test]
    fn round_trip() {
        let f = frame(4096, 7, b"hello");
        assert_eq!(f.len(), 32);
        match decode(&f, 4096) {
            Decoded::Record { record, len } => {
                assert_eq!(record, Record { lsn: 4096, kind: 7, payload: b"hello" });
                assert_eq!(len, 32);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn zero_head_is_end_and_zeroed_frame_never_passes() {
        assert_eq!(decode(&[0u8; 64], 0), Decoded::End);
        // A zeroed header with a non-zero head word must fail the CRC.
        let mut f = vec![0u8; 32];
        f[0..4].copy_from_slice(&head(1, 0).to_le_bytes());
        assert_eq!(decode(&f, 0), Decoded::Invalid(Invalid::BadChecksum));
    }

    #[test]
    fn stale_frame_at_wrong_position_is_rejected() {
        let f = frame(16, 3, b"x");
        assert_eq!(decode(&f, 32), Decoded::Invalid(Invalid::WrongLsn { found: 16 }));
    }

    #[test]
    fn flipped_payload_bit_is_rejected() {
        let mut f = frame(0, 3, b"payload");
        f[18] ^= 1;
        assert_eq!(decode(&f, 0), Decoded::Invalid(Invalid::BadChecksum));
    }

    #[test]
    fn length_past_end_is_truncated() {
        let f = frame(0, 3, &[1u8; 100]);
        assert_eq!(decode(&f[..64], 0), Decoded::Invalid(Invalid::Truncated));
    }

    #[test]
    fn mask_is_not_identity() {
        assert_ne!(mask_crc(0), 0);
    }
}
