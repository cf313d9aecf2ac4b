//! Batched appends (`Appender::append_batched` + `flush_batch`): records
//! claimed now and written later in one write per run of frames.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use spindle_wal::{SimFault, SimStorage, SyncPolicy, Wal, WalError, WalOptions};
use std::sync::Arc;

#[path = "support/records.rs"]
mod records;
use records::{collect, payload};

fn opts(segment_size: u64) -> WalOptions {
    WalOptions { segment_size, sync: SyncPolicy::Never, ..WalOptions::default() }
}

fn sim(segment_size: u64) -> (SimStorage, Wal) {
    let storage = SimStorage::new();
    let (wal, _) = Wal::open_with(Arc::new(storage.clone()), opts(segment_size)).unwrap();
    (storage, wal)
}

/// What a `kill -9` now would leave: the page cache, reopened.
fn after_kill9(storage: &SimStorage, segment_size: u64) -> Vec<(u64, Vec<u8>)> {
    let (wal, _) =
        Wal::open_with(Arc::new(storage.process_crash_image()), opts(segment_size)).unwrap();
    collect(&wal)
}

#[test]
fn a_batch_is_invisible_until_flushed_then_reads_back_in_order_across_segments() {
    let (storage, wal) = sim(8192);
    let mut app = wal.appender();
    let mut want = Vec::new();
    for round in 0..10u64 {
        let before = collect(&wal);
        let mut batch = Vec::new();
        for i in 0..40u64 {
            let p = payload(round * 100 + i);
            batch.push((app.append_batched(1, &p, 0).unwrap(), p));
        }
        // Claimed, not written: neither readable nor safe from kill -9.
        assert_eq!(collect(&wal), before, "round {round}");
        assert_eq!(after_kill9(&storage, 8192), before, "round {round}");
        app.flush_batch().unwrap();
        want.extend(batch);
        assert_eq!(collect(&wal), want, "round {round}");
    }
    assert!(wal.stats().segments_created > 5, "the batches must cross segments");
    assert_eq!(after_kill9(&storage, 8192), want);
}

#[test]
fn a_batch_whose_frames_fill_a_segment_exactly_goes_on_in_the_next() {
    // A 8,192-byte segment holds 8,128 bytes of frames: four of 2,032
    // (2,016-byte payloads) fill it with no padding, and the fifth starts
    // the next segment right where the fourth ended.
    let (storage, wal) = sim(8192);
    let mut app = wal.appender();
    let mut want = Vec::new();
    for i in 0..10u64 {
        let p = vec![i as u8; 2016];
        want.push((app.append_batched(1, &p, 0).unwrap(), p));
    }
    assert_eq!(want[4].0, want[3].0 + 2032, "no padding between segments");
    app.flush_batch().unwrap();
    assert_eq!(collect(&wal), want);
    assert_eq!(after_kill9(&storage, 8192), want);
}

#[test]
fn a_plain_append_and_a_dropped_appender_flush_the_batch_first() {
    let (storage, wal) = sim(8192);
    let mut app = wal.appender();
    let a = app.append_batched(1, b"a", 0).unwrap();
    let b = app.append(1, b"b").unwrap();
    assert!(a < b);
    assert_eq!(collect(&wal), vec![(a, b"a".to_vec()), (b, b"b".to_vec())]);
    let c = app.append_batched(1, b"c", 0).unwrap();
    drop(app);
    let want = vec![(a, b"a".to_vec()), (b, b"b".to_vec()), (c, b"c".to_vec())];
    assert_eq!(collect(&wal), want);
    // Another appender is not held back by a batch once it is flushed.
    let d = wal.appender().append(1, b"d").unwrap();
    assert!(d > c);
    assert_eq!(after_kill9(&storage, 8192).len(), 4);
}

#[test]
fn a_failed_write_in_a_flush_fails_the_log_and_keeps_the_runs_before_it() {
    let (storage, wal) = sim(8192);
    let mut app = wal.appender();
    app.append(1, b"before").unwrap(); // write 1
                                       // 300-byte frames: a run of one segment's worth, then the next segment.
    let mut lsns = Vec::new();
    for i in 0..40u64 {
        lsns.push(app.append_batched(2, &[i as u8; 284], 0).unwrap());
    }
    let first_run: Vec<u64> =
        lsns.iter().copied().take_while(|l| *l < lsns[0] - lsns[0] % 8192 + 8000).collect();
    assert!(first_run.len() < lsns.len(), "the batch must reach a second segment");
    // Write 2 is the first run, write 3 the padding before the second.
    storage.inject(SimFault::EioAtWrite(3));
    let err = app.flush_batch().unwrap_err();
    assert!(matches!(&err, WalError::Failed(why) if why.contains("write")), "{err}");
    assert!(matches!(app.append(1, b"after"), Err(WalError::Failed(_))));
    assert!(matches!(app.append_batched(1, b"after", 0), Err(WalError::Failed(_))));
    drop(wal);
    let got = after_kill9(&storage, 8192);
    assert_eq!(got.first().map(|r| r.1.as_slice()), Some(&b"before"[..]));
    let kept: Vec<u64> = got.iter().skip(1).map(|r| r.0).collect();
    // The runs before the failed write are there; nothing from the hole on.
    assert!(!kept.is_empty() && lsns.starts_with(&kept), "{kept:?}");
    assert!(kept.len() < lsns.len());
}

#[test]
fn no_room_claims_nothing_and_the_batch_before_it_still_flushes() {
    let storage = SimStorage::new();
    storage.inject(SimFault::NoSpaceAfterCreates(3));
    let (wal, _) = Wal::open_with(Arc::new(storage.clone()), opts(8192)).unwrap();
    let mut app = wal.appender();
    let mut staged = Vec::new();
    let err = loop {
        // Keep room for a 4 KiB record past each one, as the daemon's puts do.
        match app.append_batched(1, &[7u8; 500], 4096) {
            Ok(lsn) => staged.push(lsn),
            Err(e) => break e,
        }
        assert!(staged.len() < 10_000, "must run out of space");
    };
    assert!(matches!(err, WalError::NoSpace { .. }), "{err}");
    app.flush_batch().unwrap();
    let lsns: Vec<u64> = collect(&wal).into_iter().map(|r| r.0).collect();
    assert_eq!(lsns, staged, "every record claimed before the refusal, none after");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A plain append of this many bytes (flushes the batch first).
        Plain(usize),
        /// A batched append of this many bytes.
        Batched(usize),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Sizes around a quarter of a segment's 8,128 data bytes, 2,016
        // among them (four frames fill a segment exactly).
        let size = prop_oneof![0usize..400, 1900usize..2100, Just(2016usize)];
        prop_oneof![
            2 => size.clone().prop_map(Op::Plain),
            6 => size.prop_map(Op::Batched),
            1 => Just(Op::Flush),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any mix of plain and batched appends and flushes: the log reads
        /// back every record in LSN order once flushed, and a kill -9
        /// before the last flush keeps exactly what was written by then.
        #[test]
        fn batches_read_back_in_order_and_a_kill_keeps_what_was_flushed(
            ops in proptest::collection::vec(op(), 1..120)
        ) {
            let (storage, wal) = sim(8192);
            let mut app = wal.appender();
            let (mut written, mut staged) = (Vec::new(), Vec::new());
            for (i, o) in ops.iter().enumerate() {
                let p = vec![i as u8; match o { Op::Plain(n) | Op::Batched(n) => *n, Op::Flush => 0 }];
                match o {
                    Op::Plain(_) => {
                        let lsn = app.append(1, &p).unwrap();
                        written.append(&mut staged);
                        written.push((lsn, p));
                    }
                    Op::Batched(_) => staged.push((app.append_batched(1, &p, 0).unwrap(), p)),
                    Op::Flush => {
                        app.flush_batch().unwrap();
                        written.append(&mut staged);
                    }
                }
            }
            prop_assert_eq!(&collect(&wal), &written);
            prop_assert_eq!(&after_kill9(&storage, 8192), &written);
            app.flush_batch().unwrap();
            written.append(&mut staged);
            prop_assert!(written.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert_eq!(&collect(&wal), &written);
            prop_assert_eq!(&after_kill9(&storage, 8192), &written);
        }
    }
}
