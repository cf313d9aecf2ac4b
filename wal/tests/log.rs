//! Behaviour of the log over real files and over the simulated storage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use spindle_wal::{
    RecoveryMode, SimFault, SimStorage, Storage, SyncPolicy, Wal, WalError, WalOptions,
};
use std::sync::Arc;

fn opts(segment_size: u64, sync: SyncPolicy) -> WalOptions {
    WalOptions { segment_size, sync, ..WalOptions::default() }
}

fn payload(i: u64) -> Vec<u8> {
    // Varying lengths exercise padding and segment switches.
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize + j) as u8).collect::<Vec<u8>>()
}

fn collect(wal: &Wal) -> Vec<(u64, u8, Vec<u8>)> {
    let mut out = Vec::new();
    wal.replay(|r| out.push((r.lsn, r.kind, r.payload.to_vec()))).unwrap();
    out
}

#[test]
fn records_survive_close_and_reopen_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    {
        let (wal, report) = Wal::open(dir.path(), opts(8192, SyncPolicy::Always)).unwrap();
        assert_eq!(report.records, 0);
        let mut app = wal.appender();
        for i in 0..500u64 {
            let p = payload(i);
            let lsn = app.append(1 + (i % 200) as u8, &p).unwrap();
            written.push((lsn, 1 + (i % 200) as u8, p));
        }
        assert!(wal.stats().segments_created > 5, "small segments must roll over");
        assert_eq!(collect(&wal), written, "replay sees this run's records");
        wal.close().unwrap();
    }
    let (wal, report) = Wal::open(dir.path(), opts(8192, SyncPolicy::Always)).unwrap();
    assert_eq!(report.records, 500);
    assert!(report.truncated.is_none());
    assert_eq!(collect(&wal), written);
    // Appends continue after the recovered end, and a third open sees both runs.
    let mut app = wal.appender();
    let lsn = app.append(9, b"second run").unwrap();
    assert!(lsn >= written.last().unwrap().0);
    wal.close().unwrap();
    let (wal, report) = Wal::open(dir.path(), opts(8192, SyncPolicy::Always)).unwrap();
    assert_eq!(report.records, 501);
    assert_eq!(collect(&wal).last().unwrap().2, b"second run");
}

#[test]
fn concurrent_appenders_lose_nothing_and_lsns_are_unique() {
    let storage = SimStorage::new();
    let (wal, _) =
        Wal::open_with(Arc::new(storage.clone()), opts(16384, SyncPolicy::Never)).unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut app = wal.appender();
                (0..2000u32)
                    .map(|i| {
                        let mut p = vec![t + 1; (i % 90) as usize];
                        p.extend_from_slice(&i.to_le_bytes());
                        (app.append(t + 1, &p).unwrap(), p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut expected: Vec<(u64, Vec<u8>)> =
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    expected.sort();
    let got: Vec<(u64, Vec<u8>)> = collect(&wal).into_iter().map(|(l, _, p)| (l, p)).collect();
    assert_eq!(got, expected);
    // The same holds after a process crash (page cache kept).
    let image = storage.process_crash_image();
    let (wal2, report) = Wal::open_with(Arc::new(image), opts(16384, SyncPolicy::Never)).unwrap();
    assert_eq!(report.records, 8000);
    assert!(report.truncated.is_none());
    let got: Vec<(u64, Vec<u8>)> = collect(&wal2).into_iter().map(|(l, _, p)| (l, p)).collect();
    assert_eq!(got, expected);
}

#[test]
fn release_below_deletes_whole_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(8192, SyncPolicy::Always)).unwrap();
    let mut app = wal.appender();
    let lsns: Vec<u64> = (0..400).map(|i| app.append(1, &payload(i)).unwrap()).collect();
    wal.sync().unwrap();
    let before = wal.segments();
    let cut = lsns[300];
    let released = wal.release_below(cut).unwrap();
    assert!(released > 0);
    // Exactly the released segments are gone, all below the cut (the
    // preparer may add a spare meanwhile: it is not among them).
    let after = wal.segments();
    let gone: Vec<&(u64, u64)> = before.iter().filter(|s| !after.contains(s)).collect();
    assert_eq!(gone.len(), released, "before {before:?}, after {after:?}");
    assert!(gone.iter().all(|s| s.1 <= cut), "{gone:?} below {cut}");
    let mut first = None;
    wal.replay(|r| {
        first.get_or_insert(r.lsn);
    })
    .unwrap();
    let first = first.unwrap();
    assert!(first <= cut, "records at or above the cut are kept");
    // Records from `cut` on all survive a reopen.
    wal.close().unwrap();
    let (wal, report) = Wal::open(dir.path(), opts(8192, SyncPolicy::Always)).unwrap();
    assert!(report.truncated.is_none());
    let kept: Vec<u64> = collect(&wal).into_iter().map(|r| r.0).collect();
    assert!(lsns[300..].iter().all(|l| kept.contains(l)));
}

#[test]
fn record_limits_and_reserved_kinds_are_errors() {
    let storage = Arc::new(SimStorage::new());
    let (wal, _) = Wal::open_with(storage, opts(8192, SyncPolicy::Never)).unwrap();
    let mut app = wal.appender();
    assert!(matches!(app.append(0, b"x"), Err(WalError::ReservedKind(0))));
    assert!(matches!(app.append(255, b"x"), Err(WalError::ReservedKind(255))));
    let max = wal.max_payload() as usize;
    assert!(app.append(1, &vec![7; max]).is_ok());
    assert!(matches!(app.append(1, &vec![7; max + 1]), Err(WalError::RecordTooLarge { .. })));
}

#[test]
fn always_policy_acknowledged_records_survive_a_power_loss_at_any_sync() {
    // Crash at the 1st, 2nd, ... sync; with and without a torn page.
    for n in 1..=12u64 {
        for tear in [false, true] {
            let storage = SimStorage::new();
            storage.inject(SimFault::CrashAtSync { n, tear });
            let (wal, _) =
                Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Always)).unwrap();
            let mut app = wal.appender();
            let mut acked = Vec::new();
            let mut appended = std::collections::HashMap::new();
            for i in 0..200u64 {
                let p = payload(i);
                let Ok(lsn) = app.append(1, &p) else { break };
                appended.insert(lsn, p.clone());
                match wal.wait_durable(lsn) {
                    Ok(()) => acked.push((lsn, p)),
                    Err(e) => {
                        assert!(matches!(e, WalError::Failed(_)), "{e}");
                        break;
                    }
                }
            }
            assert!(storage.crashed(), "crash {n} must have happened");
            assert!(matches!(app.append(1, b"after"), Err(WalError::Failed(_))));
            drop(wal);
            let image = storage.power_loss_image();
            let (wal, _) = Wal::open_with(Arc::new(image), opts(8192, SyncPolicy::Always)).unwrap();
            let got = collect(&wal);
            for (lsn, p) in &acked {
                assert!(got.iter().any(|(l, _, q)| l == lsn && q == p), "acked {lsn} lost (n={n})");
            }
            for (lsn, _, q) in &got {
                assert_eq!(appended.get(lsn), Some(q), "record at {lsn} was invented (n={n})");
            }
        }
    }
}

#[test]
fn a_failed_sync_fails_the_log_for_good() {
    let storage = SimStorage::new();
    storage.inject(SimFault::EioAtSync(2));
    let (wal, _) =
        Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Always)).unwrap();
    let mut app = wal.appender();
    let a = app.append(1, b"one").unwrap();
    wal.wait_durable(a).unwrap();
    let b = app.append(1, b"two").unwrap();
    let err = wal.wait_durable(b).unwrap_err();
    assert!(err.to_string().contains("reopen"), "{err}");
    // No retry into silent loss: every later operation reports the failure.
    assert!(matches!(app.append(1, b"three"), Err(WalError::Failed(_))));
    assert!(matches!(wal.sync(), Ok(()) | Err(WalError::Failed(_))));
    assert!(wal.close().is_err());
}

#[test]
fn a_failed_write_fails_the_log_and_keeps_what_came_before() {
    let storage = SimStorage::new();
    storage.inject(SimFault::EioAtWrite(3));
    let (wal, _) =
        Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Never)).unwrap();
    let mut app = wal.appender();
    app.append(1, b"one").unwrap();
    app.append(1, b"two").unwrap();
    let err = app.append(1, b"three").unwrap_err();
    assert!(matches!(&err, WalError::Failed(why) if why.contains("write")), "{err}");
    // Nothing after the hole is acknowledged, by this appender or another.
    assert!(matches!(app.append(1, b"four"), Err(WalError::Failed(_))));
    assert!(matches!(wal.appender().append(1, b"five"), Err(WalError::Failed(_))));
    drop(wal);
    // After kill -9 the records before the failed write are all there.
    let (wal2, _) =
        Wal::open_with(Arc::new(storage.process_crash_image()), opts(8192, SyncPolicy::Never))
            .unwrap();
    let got: Vec<Vec<u8>> = collect(&wal2).into_iter().map(|(_, _, p)| p).collect();
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
}

/// Appenders on several threads while one write fails: every append that
/// returned `Ok` is found after a kill -9, whether it came before the
/// failed write or raced past it.
#[test]
fn no_acknowledged_record_is_lost_when_a_write_fails_under_concurrency() {
    for round in 0..20u64 {
        let storage = SimStorage::new();
        storage.inject(SimFault::EioAtWrite(200 + round * 7));
        let (wal, _) =
            Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Never)).unwrap();
        let acked: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    let wal = &wal;
                    s.spawn(move || {
                        let mut app = wal.appender();
                        (0..150u64)
                            .map_while(|i| app.append(1, &payload(t * 1000 + i)).ok())
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert!(acked.len() < 600, "the write fault must have happened");
        drop(wal);
        let (wal2, _) =
            Wal::open_with(Arc::new(storage.process_crash_image()), opts(8192, SyncPolicy::Never))
                .unwrap();
        let found: std::collections::HashSet<u64> =
            collect(&wal2).into_iter().map(|(lsn, _, _)| lsn).collect();
        let lost: Vec<u64> = acked.iter().copied().filter(|l| !found.contains(l)).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged but lost: {lost:?}");
    }
}

/// The log never stores through its mappings, so a sync has no page to
/// write-protect (`SegmentMap`): every segment is mapped read-only.
#[cfg(target_os = "linux")]
#[test]
fn segments_are_mapped_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(
        dir.path(),
        opts(16384, SyncPolicy::Interval(std::time::Duration::from_millis(1))),
    )
    .unwrap();
    let mut app = wal.appender();
    for i in 0..200u64 {
        app.append(1, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
    let dir_name = dir.path().to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let ours: Vec<&str> =
        maps.lines().filter(|l| l.contains(&dir_name) && l.ends_with(".wal")).collect();
    assert!(ours.len() > 1, "the log's segments are mapped: {ours:?}");
    for line in &ours {
        let perms = line.split_whitespace().nth(1).unwrap();
        assert_eq!(perms, "r--s", "{line}");
    }
    assert_eq!(collect(&wal).len(), 200);
    wal.close().unwrap();
}

#[test]
fn no_space_is_an_error_and_earlier_records_stay_readable() {
    let storage = SimStorage::new();
    storage.inject(SimFault::NoSpaceAfterCreates(3));
    let (wal, _) =
        Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Always)).unwrap();
    let mut app = wal.appender();
    let mut ok = Vec::new();
    let err = loop {
        match app.append(1, &[3u8; 500]) {
            Ok(lsn) => ok.push(lsn),
            Err(e) => break e,
        }
        assert!(ok.len() < 10_000, "must run out of space");
    };
    assert!(matches!(err, WalError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("free disk space"));
    // Still full on retry; the log is not failed, earlier records are intact.
    assert!(matches!(app.append(1, &[3u8; 500]), Err(WalError::NoSpace { .. })));
    wal.sync().unwrap();
    assert_eq!(collect(&wal).len(), ok.len());
}

#[test]
fn strict_mode_refuses_a_torn_tail_and_truncate_mode_cuts_it() {
    let storage = SimStorage::new();
    let (wal, _) =
        Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Never)).unwrap();
    let mut app = wal.appender();
    let lsns: Vec<u64> = (0..10).map(|i| app.append(1, &payload(i)).unwrap()).collect();
    drop(wal);
    // Flip a byte in the payload of the 8th record.
    let base = *storage.list().unwrap().iter().min().unwrap();
    let off = 64 + (lsns[7] - base) as usize + 20;
    let mut b = storage.segment_bytes(base).unwrap()[off];
    b ^= 0x40;
    assert!(storage.corrupt(base, off, &[b]));

    let strict = WalOptions { recovery: RecoveryMode::Strict, ..opts(8192, SyncPolicy::Never) };
    let err = Wal::open_with(Arc::new(storage.clone()), strict).unwrap_err();
    match err {
        WalError::Corrupt { segment, offset, .. } => {
            assert_eq!(segment, base);
            assert_eq!(offset, 64 + lsns[7] - base);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let (wal, report) =
        Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Never)).unwrap();
    let t = report.truncated.expect("truncation reported");
    assert_eq!((t.segment, t.offset), (base, 64 + lsns[7] - base));
    assert!(t.bytes_dropped > 0);
    let got: Vec<u64> = collect(&wal).into_iter().map(|r| r.0).collect();
    assert_eq!(got, lsns[..7]);
    // The cut is permanent: new appends after it survive another reopen.
    let mut app = wal.appender();
    let new = app.append(2, b"after the cut").unwrap();
    drop(wal);
    let (wal, report) = Wal::open_with(Arc::new(storage.clone()), strict_opts()).unwrap();
    assert!(report.truncated.is_none());
    let got: Vec<u64> = collect(&wal).into_iter().map(|r| r.0).collect();
    assert_eq!(got.len(), 8);
    assert_eq!(*got.last().unwrap(), new);
}

fn strict_opts() -> WalOptions {
    WalOptions { recovery: RecoveryMode::Strict, ..opts(8192, SyncPolicy::Never) }
}

#[test]
fn a_segment_of_another_shard_is_refused() {
    let storage = SimStorage::new();
    let (wal, _) =
        Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Never)).unwrap();
    wal.appender().append(1, b"x").unwrap();
    drop(wal);
    let other = WalOptions { shard: 3, ..opts(8192, SyncPolicy::Never) };
    assert!(matches!(
        Wal::open_with(Arc::new(storage), other),
        Err(WalError::WrongShard { expected: 3, found: 0, .. })
    ));
}

#[test]
fn a_directory_in_use_is_refused_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(8192, SyncPolicy::Never)).unwrap();
    let mut app = wal.appender();
    app.append(1, b"before close").unwrap();
    let err = Wal::open(dir.path(), opts(8192, SyncPolicy::Never)).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    wal.close().unwrap();
    // An appender that outlives its log is refused, not allowed to scribble.
    assert!(matches!(app.append(1, b"after close"), Err(WalError::Closed)));
    assert!(Wal::open(dir.path(), opts(8192, SyncPolicy::Never)).is_ok());
}

#[test]
fn never_policy_keeps_what_an_explicit_sync_covered_through_a_power_loss() {
    let storage = SimStorage::new();
    let (wal, _) =
        Wal::open_with(Arc::new(storage.clone()), opts(8192, SyncPolicy::Never)).unwrap();
    let mut app = wal.appender();
    let synced: Vec<(u64, Vec<u8>)> =
        (0..60).map(|i| (app.append(1, &payload(i)).unwrap(), payload(i))).collect();
    wal.sync().unwrap();
    assert!(wal.stats().durable_lsn > synced.last().unwrap().0);
    let unsynced: Vec<(u64, Vec<u8>)> =
        (60..120).map(|i| (app.append(1, &payload(i)).unwrap(), payload(i))).collect();
    let image = storage.power_loss_image();
    let (wal2, _) = Wal::open_with(Arc::new(image), opts(8192, SyncPolicy::Never)).unwrap();
    let got: Vec<(u64, Vec<u8>)> = collect(&wal2).into_iter().map(|(l, _, p)| (l, p)).collect();
    // Everything synced is there; nothing unsynced (never reached the disk
    // image) is invented.
    assert_eq!(got, synced);
    assert!(!unsynced.is_empty());
    // Under kill -9 instead, the page cache keeps the unsynced records too.
    let image = storage.process_crash_image();
    let (wal3, _) = Wal::open_with(Arc::new(image), opts(8192, SyncPolicy::Never)).unwrap();
    assert_eq!(collect(&wal3).len(), 120);
}

#[test]
fn prefaulted_segments_hold_and_replay_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let storage = || Arc::new(spindle_wal::FsStorage::new(dir.path()).unwrap().with_prefault(true));
    let mut written = Vec::new();
    {
        let (wal, _) = Wal::open_with(storage(), opts(16384, SyncPolicy::Always)).unwrap();
        let mut app = wal.appender();
        for i in 0..300u64 {
            let p = payload(i);
            written.push((app.append(1, &p).unwrap(), 1u8, p));
        }
        assert!(wal.stats().segments_created > 3, "small segments must roll over");
        wal.close().unwrap();
    }
    // Reopened with and without prefaulting: the zeroed tail of the last
    // segment reads as the end of the log, not as damage.
    for prefault in [true, false] {
        let s = Arc::new(spindle_wal::FsStorage::new(dir.path()).unwrap().with_prefault(prefault));
        let (wal, report) = Wal::open_with(s, opts(16384, SyncPolicy::Always)).unwrap();
        assert!(report.truncated.is_none(), "{report:?}");
        assert_eq!(collect(&wal), written);
        wal.close().unwrap();
    }
}
