//! Property tests of recovery over damaged logs and arbitrary segment files.
//!
//! 1. `damaged_log_recovers_exactly_its_undamaged_prefix`: a real log (random
//!    records over several 8 KiB segments) is damaged in one segment (tail
//!    lost, one bit flipped, or a range zeroed) and reopened. A model computes
//!    the first damaged *item* in log order (a segment header, a record
//!    frame's header and payload, or a padding frame's header; the zero bytes
//!    that align a payload, the space a padding frame covers and the zeros
//!    after the last record are not items) and from it the exact outcome:
//!    - Truncate mode returns exactly the records before that item, with the
//!      right content, `end_lsn` where that item began, and reports a cut
//!      exactly when non-zero bytes remain from there on;
//!    - Strict mode fails with `Corrupt` in exactly that case (at the damaged
//!      item's position for a bit flip) and otherwise returns the same records
//!      (a zeroed tail looks like a log that simply ended there);
//!    - after the Truncate-mode open the cut is permanent: Strict reopens
//!      return the same records, and a new record lands at `end_lsn`.
//! 2. `valid_segments_with_random_frames_recover_consistently` and
//!    `arbitrary_bytes_never_panic_recovery`: segment files built from CRC-valid
//!    frames (with reserved kinds, stale LSNs, holes, padding and flipped
//!    bytes), or plain random bytes, go through the fuzz target's checks
//!    (`wal/fuzz/fuzz_one.rs`): no panic in `decode`, `scan_segment_bytes` or
//!    `Wal::open_with`, no invented records, Strict and Truncate agree, and
//!    the log continues cleanly after recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

include!("../fuzz/fuzz_one.rs");

use fuzz_one::{
    check_images, open_collect, opts, padding_frame, record_frame, run, segment_header, Rec,
    AVOID_OPEN_BUGS, SEG_SIZE,
};
use proptest::prelude::*;
use proptest::sample::Index;
use spindle_wal::{decode, frame_len, Decoded, RecoveryMode, SimStorage, Storage, Wal, WalError};
use std::sync::Arc;

const HDR: u64 = 64;
/// Data bytes per segment.
const CAP: u64 = SEG_SIZE - HDR;

fn payload(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// Writes the records to a fresh log (first LSN 0) and closes it.
fn build(specs: &[(u8, usize, u8)]) -> (SimStorage, Vec<Rec>) {
    let storage = SimStorage::new();
    let (wal, _) = Wal::open_with(Arc::new(storage.clone()), opts(RecoveryMode::Truncate)).unwrap();
    let mut app = wal.appender();
    let recs = specs
        .iter()
        .map(|&(kind, len, seed)| {
            let p = payload(len, seed);
            (app.append(kind, &p).unwrap(), kind, p)
        })
        .collect();
    wal.close().unwrap();
    (storage, recs)
}

/// Base of the segment holding `lsn` (the log starts at 0, so bases are
/// multiples of the data capacity).
fn seg_of(lsn: u64) -> u64 {
    lsn / CAP * CAP
}

/// File offset of `lsn` in its segment.
fn off_of(lsn: u64) -> u64 {
    HDR + lsn % CAP
}

fn frame_end(r: &Rec) -> u64 {
    r.0 + frame_len(r.2.len() as u64)
}

/// Where the frames of a freshly written log are.
struct Layout {
    recs: Vec<Rec>,
    /// LSNs of padding frame headers.
    pads: Vec<u64>,
    /// Segment files, in order.
    bases: Vec<u64>,
}

impl Layout {
    fn new(storage: &SimStorage, recs: Vec<Rec>) -> Layout {
        let mut bases = storage.list().unwrap();
        bases.sort_unstable();
        let mut pads = Vec::new();
        for w in recs.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if seg_of(a.0) != seg_of(b.0) {
                assert_eq!(b.0, seg_of(b.0), "a record that changes segment starts it");
                let end = frame_end(a);
                if end < seg_of(a.0) + CAP {
                    pads.push(end);
                }
            } else {
                assert_eq!(b.0, frame_end(a), "records are contiguous inside a segment");
            }
        }
        // The model agrees with the bytes.
        let bytes = |lsn: u64| storage.segment_bytes(seg_of(lsn)).unwrap();
        for r in &recs {
            assert!(matches!(decode(&bytes(r.0)[off_of(r.0) as usize..], r.0),
                Decoded::Record { record, .. } if record.kind == r.1 && record.payload == r.2));
        }
        for &p in &pads {
            assert_eq!(decode(&bytes(p)[off_of(p) as usize..], p), Decoded::Padding);
        }
        // Every segment up to the last record's exists (the next one may; with
        // no records even the first may not: the preparer creates it).
        if let Some(last) = recs.last() {
            let want: Vec<u64> = (0..=seg_of(last.0)).step_by(CAP as usize).collect();
            assert_eq!(bases[..want.len().min(bases.len())], want[..]);
        }
        Layout { recs, pads, bases }
    }

    /// The first damaged item at or after file offset `o` of segment `base`,
    /// if byte `o` belongs to one: (record index it invalidates first, its
    /// LSN, file offset where recovery cuts).
    fn item_at(&self, base: u64, o: u64) -> Option<(usize, u64, u64)> {
        let first_in = |lsn: u64| self.recs.iter().position(|r| r.0 >= lsn);
        if o < HDR {
            // Meaningful only if records live in or after this segment.
            let i = first_in(base)?;
            return Some((i, base, 0));
        }
        let lsn = base + o - HDR;
        if let Some(i) = self.recs.iter().position(|r| r.0 <= lsn && lsn < frame_end(r)) {
            let r = &self.recs[i];
            // Bytes covered by the CRC: header and payload, not the alignment.
            return (lsn < r.0 + 16 + r.2.len() as u64).then_some((i, r.0, off_of(r.0)));
        }
        let p = *self.pads.iter().find(|&&p| p <= lsn && lsn < p + 16)?;
        let i = first_in(seg_of(p) + CAP).unwrap_or(self.recs.len());
        Some((i, p, off_of(p)))
    }
}

#[derive(Debug, Clone)]
enum Damage {
    /// Zero from the offset to the end of the file (its tail was lost).
    Truncate,
    /// Flip one bit.
    Flip(u8),
    /// Zero this many bytes.
    Zero(usize),
}

#[derive(Debug, Clone)]
enum At {
    /// Any byte of any segment file.
    Anywhere(Index, Index),
    /// Near the start of a record's frame (bytes before it to well into it).
    NearRecord(Index, i64),
    /// The header or the first frame of a segment.
    SegmentStart(Index, u64),
}

fn damage() -> impl Strategy<Value = (Damage, At)> {
    let kind = prop_oneof![
        Just(Damage::Truncate),
        (0u8..8).prop_map(Damage::Flip),
        (1usize..300).prop_map(Damage::Zero),
    ];
    let at = prop_oneof![
        2 => (any::<Index>(), any::<Index>()).prop_map(|(s, o)| At::Anywhere(s, o)),
        2 => (any::<Index>(), -24i64..48).prop_map(|(r, d)| At::NearRecord(r, d)),
        1 => (any::<Index>(), 0u64..100).prop_map(|(s, o)| At::SegmentStart(s, o)),
    ];
    (kind, at)
}

fn records() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    let len = prop_oneof![8 => 0usize..600, 1 => Just(0usize), 1 => 7000usize..=8112];
    prop::collection::vec((1u8..=254, len, any::<u8>()), 0..80)
}

/// Every byte of every segment, for comparisons.
fn image(storage: &SimStorage) -> Vec<(u64, Vec<u8>)> {
    let mut bases = storage.list().unwrap();
    bases.sort_unstable();
    bases.into_iter().map(|b| (b, storage.segment_bytes(b).unwrap())).collect()
}

fn check_damage(specs: &[(u8, usize, u8)], damage: &Damage, at: &At) {
    let (storage, recs) = build(specs);
    let layout = Layout::new(&storage, recs);
    let recs = &layout.recs;
    let n = recs.len();

    // Undamaged, both modes give everything back.
    let (all, rep) = open_collect(&storage.process_crash_image(), RecoveryMode::Strict).unwrap();
    assert_eq!(&all, recs);
    assert!(rep.truncated.is_none());
    if layout.bases.is_empty() {
        return; // Nothing was written, not even a segment header.
    }

    // Where to damage.
    let (base, off) = match at {
        At::NearRecord(i, d) if n > 0 => {
            let lsn = (recs[i.index(n)].0 as i64 + d).max(0) as u64;
            let b = seg_of(lsn);
            if layout.bases.contains(&b) {
                (b, off_of(lsn))
            } else {
                (seg_of(recs[i.index(n)].0), off_of(recs[i.index(n)].0))
            }
        }
        At::NearRecord(i, d) => (layout.bases[i.index(layout.bases.len())], d.unsigned_abs()),
        At::Anywhere(s, o) => {
            (layout.bases[s.index(layout.bases.len())], o.index(SEG_SIZE as usize) as u64)
        }
        At::SegmentStart(s, o) => (layout.bases[s.index(layout.bases.len())], *o),
    };
    let before = storage.segment_bytes(base).unwrap();
    let off = off as usize;
    let patch: Vec<u8> = match damage {
        Damage::Truncate => vec![0; before.len() - off],
        Damage::Flip(bit) => vec![before[off] ^ (1 << bit)],
        Damage::Zero(len) => vec![0; (*len).min(before.len() - off)],
    };
    assert!(storage.corrupt(base, off, &patch));
    let after = storage.segment_bytes(base).unwrap();

    // The model: the first damaged item decides everything.
    let item = (0..after.len())
        .filter(|&o| before[o] != after[o])
        .find_map(|o| layout.item_at(base, o as u64));
    let (first_bad, end_lsn, cut_seg, cut_off) = match item {
        Some((i, lsn, cut_off)) => (i, lsn, base, cut_off),
        None => match recs.last() {
            Some(r) => (n, frame_end(r), seg_of(r.0), off_of(r.0) + frame_len(r.2.len() as u64)),
            None => (0, 0, 0, HDR),
        },
    };
    let expected = &recs[..first_bad];
    // Recovery must cut (Strict must fail) iff non-zero bytes remain from the
    // cut on: in the cut segment from the cut offset (data area only), and in
    // the data area of every later segment.
    let damaged = image(&storage);
    let leftovers = damaged.iter().any(|(b, bytes)| {
        let from = if *b == cut_seg { cut_off.max(HDR) } else { HDR };
        *b >= cut_seg && bytes[from as usize..].iter().any(|&x| x != 0)
    });
    let ctx = format!(
        "damage {damage:?} at segment {base} offset {off}; item {item:?}; {n} records; \
         expect {first_bad} records, end_lsn {end_lsn}, cut at ({cut_seg}, {cut_off}), \
         leftovers {leftovers}"
    );

    if std::env::var_os("PROPS_STATS").is_some() {
        eprintln!(
            "STAT kind={} item={} prefix={} leftovers={}",
            match damage {
                Damage::Truncate => "trunc",
                Damage::Flip(_) => "flip",
                Damage::Zero(_) => "zero",
            },
            item.is_some(),
            if first_bad == n {
                "all"
            } else if first_bad == 0 {
                "none"
            } else {
                "part"
            },
            leftovers
        );
    }

    // Strict, on a copy (a successful open changes the files).
    let copy = storage.process_crash_image();
    match open_collect(&copy, RecoveryMode::Strict) {
        Ok((got, rep)) => {
            assert!(!leftovers, "Strict opened a damaged log; {ctx}");
            assert_eq!(got, expected, "{ctx}");
            assert_eq!(rep.end_lsn, end_lsn, "{ctx}");
        }
        Err(WalError::Corrupt { segment, offset, dropped, .. }) => {
            assert!(leftovers, "Strict refused a log that only ended early; {ctx}");
            assert!(dropped > 0, "{ctx}");
            if let (Damage::Flip(_), Some(_)) = (damage, item) {
                assert_eq!((segment, offset), (cut_seg, cut_off), "{ctx}");
            }
            assert_eq!(image(&copy), damaged, "a failed Strict open changed the files; {ctx}");
        }
        Err(e) => panic!("Strict failed with {e}; {ctx}"),
    }

    // Truncate: exactly the prefix before the damage, never a panic.
    let (got, rep) = open_collect(&storage, RecoveryMode::Truncate).unwrap();
    assert_eq!(got, expected, "{ctx}");
    assert_eq!(rep.records, first_bad as u64, "{ctx}");
    assert_eq!(rep.end_lsn, end_lsn, "{ctx}");
    assert_eq!(rep.truncated.is_some(), leftovers, "{ctx}; report {rep:?}");

    // The cut is permanent: Strict now opens, with the same records.
    let (again, rep2) = open_collect(&storage, RecoveryMode::Strict)
        .unwrap_or_else(|e| panic!("Strict reopen after the cut: {e}; {ctx}"));
    assert_eq!(again, expected, "{ctx}");
    assert!(rep2.truncated.is_none(), "{ctx}");
    assert_eq!(rep2.end_lsn, end_lsn, "{ctx}");

    // And the log goes on right there.
    let (wal, _) = Wal::open_with(Arc::new(storage.clone()), opts(RecoveryMode::Strict)).unwrap();
    let lsn = wal.appender().append(9, b"after the cut").unwrap();
    assert_eq!(lsn, end_lsn, "{ctx}");
    wal.close().unwrap();
    let (last, _) = open_collect(&storage, RecoveryMode::Strict).unwrap();
    let mut want = expected.to_vec();
    want.push((lsn, 9, b"after the cut".to_vec()));
    assert_eq!(last, want, "{ctx}");
}

/// One frame (or non-frame) of a hand-built segment.
#[derive(Debug, Clone)]
enum Spec {
    /// A CRC-valid record: kind (0 and 255 included), payload length, seed,
    /// and how far the stored LSN is off (in frames).
    Record(u8, usize, u8, i8),
    /// A padding frame; ends the segment.
    Padding,
    /// Unwritten frames (zeros).
    Hole(usize),
    /// The segment ends here (zeros follow).
    Stop,
}

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![8 => 1u8..=254, 1 => Just(0u8), 1 => Just(255u8)];
    let skew = prop_oneof![9 => Just(0i8), 1 => -2i8..=2];
    prop_oneof![
        12 => (kind, 0usize..300, any::<u8>(), skew).prop_map(|(k, l, s, d)| Spec::Record(k, l, s, d)),
        1 => Just(Spec::Padding),
        1 => (1usize..4).prop_map(Spec::Hole),
        1 => Just(Spec::Stop),
    ]
}

#[derive(Debug, Clone)]
struct SegSpec {
    /// File length: 8192 or a small multiple of 16.
    len: u64,
    /// Shift of the base from where the previous segment says the log goes on
    /// (in 16-byte units); usually 0.
    shift: i8,
    /// Write no valid header.
    no_header: bool,
    frames: Vec<Spec>,
    /// Bytes to xor: (position, value).
    flips: Vec<(Index, u8)>,
}

fn seg_spec() -> impl Strategy<Value = SegSpec> {
    (
        prop_oneof![Just(SEG_SIZE), (1u64..80).prop_map(|k| HDR + 16 * k)],
        prop_oneof![8 => Just(0i8), 1 => -3i8..=3],
        prop::bool::weighted(0.05),
        prop::collection::vec(spec(), 0..24),
        prop::collection::vec((any::<Index>(), 1u8..=255), 0..2),
    )
        .prop_map(|(len, shift, no_header, frames, flips)| SegSpec {
            len,
            shift,
            no_header,
            frames,
            flips,
        })
}

/// Segment files from specs: the first starts at `first`; each next one
/// where the previous one's data ended (its end after a padding frame),
/// shifted by `shift` frames.
fn segments(first: u64, specs: &[SegSpec]) -> Vec<(u64, Vec<u8>)> {
    let mut base = first;
    let mut out = Vec::new();
    for s in specs {
        let base_here = base.saturating_add_signed(i64::from(s.shift) * 16);
        let mut img = vec![0u8; s.len as usize];
        if !s.no_header {
            img[..64].copy_from_slice(&segment_header(0, base_here, s.len));
        }
        let mut off = HDR as usize;
        let mut padded = false;
        for f in &s.frames {
            let lsn = base_here + (off as u64 - HDR);
            match *f {
                Spec::Record(kind, len, seed, skew) => {
                    let stored = lsn.saturating_add_signed(i64::from(skew) * 16);
                    let frame = record_frame(stored, kind, &payload(len, seed));
                    if off + frame.len() > img.len() {
                        break;
                    }
                    if AVOID_OPEN_BUGS && off == HDR as usize && kind == 255 {
                        continue; // Possibly a padding frame; see below.
                    }
                    img[off..off + frame.len()].copy_from_slice(&frame);
                    off += frame.len();
                }
                Spec::Padding => {
                    // At the first data byte of the last segment this once
                    // tripped a bug; see fuzz_one::AVOID_OPEN_BUGS.
                    if off + 16 <= img.len() && !(AVOID_OPEN_BUGS && off == HDR as usize) {
                        let rest = (img.len() - off - 16) as u32;
                        img[off..off + 16].copy_from_slice(&padding_frame(lsn, rest));
                        padded = true;
                    }
                    break;
                }
                Spec::Hole(k) => off = (off + 16 * k).min(img.len()),
                Spec::Stop => break,
            }
        }
        for (at, x) in &s.flips {
            let i = at.index(img.len());
            img[i] ^= x;
        }
        base = if padded { base_here + s.len - HDR } else { base_here + (off as u64 - HDR) };
        out.push((base_here, img));
    }
    out
}

/// `cases` unless `PROPTEST_CASES` says otherwise (for longer runs).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    // No regression files: wal/tests holds only sources and fuzz cases.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn damaged_log_recovers_exactly_its_undamaged_prefix(
        specs in records(),
        (damage, at) in damage(),
    ) {
        check_damage(&specs, &damage, &at);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_segments_with_random_frames_recover_consistently(
        first in (0u64..4096).prop_map(|k| k * 16),
        specs in prop::collection::vec(seg_spec(), 1..=3),
    ) {
        check_images(&segments(first, &specs));
    }

    #[test]
    fn arbitrary_bytes_never_panic_recovery(
        mode in any::<u8>(),
        bytes in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        // Any mode byte: raw files (with or without a valid header written
        // over them) or the structured builder, exactly as the fuzz target.
        let mut input = vec![mode];
        input.extend_from_slice(&bytes);
        run(&input);
        // And the bytes verbatim as one file.
        let mut raw = vec![0u8];
        raw.extend_from_slice(&bytes);
        run(&raw);
    }
}
