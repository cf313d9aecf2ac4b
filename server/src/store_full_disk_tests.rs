//! The store on a full disk (a real 1 MiB tmpfs, `docs/full-disk.md`),
//! without the reactor, so no timer runs compaction behind the test's
//! back: only the head-room carries the completions after puts are
//! refused. Mounting needs root; `SPINDLE_SKIP_TMPFS=1` skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../wal/tests/support/tmpfs.rs"]
mod tmpfs;

use super::tests::{cfg, open_log, run};
use super::*;
use spindle_core::compact::Pass;

const BODY: usize = 500;

fn put(s: &mut Store, t: Instant) -> String {
    run(s, 1, &format!("put 0 0 60 {BODY}"), &[b'x'; BODY], t)
}

/// A store with its log in `dir` (on the 1 MiB tmpfs), one connection.
fn on_disk(dir: &std::path::Path, t: Instant) -> Store {
    let c = StoreConfig { max_jobs: 100_000, max_bytes: 64 << 20, ..cfg() };
    let mut s = Store::new(c, Some(open_log(dir)), t);
    s.recover(t).unwrap();
    s.connect(1);
    s
}

#[test]
fn the_head_room_carries_every_completion_while_puts_are_refused() {
    let Some(fs) = tmpfs::mount_or_skip(1 << 20) else { return };
    let dir = fs.path().join("log");
    let t = Instant::now();
    let mut s = on_disk(&dir, t);
    let mut ids = Vec::new();
    loop {
        let r = put(&mut s, t);
        match r.strip_prefix("INSERTED ") {
            Some(id) => ids.push(id.trim_end().parse::<u64>().unwrap()),
            None => break assert_eq!(r, "OUT_OF_MEMORY\r\n"),
        }
        assert!(ids.len() < 10_000, "a 1 MiB disk must fill up");
    }
    assert!(ids.len() > 200, "only {} jobs fit", ids.len());
    // `put-batch` (the connection assembles it and calls the store).
    let mut w = Vec::new();
    s.put_batch(1, 0, 0, 60, vec![vec![b'y'; BODY]; 2], t, &mut w);
    assert_eq!(w, b"OUT_OF_MEMORY\r\n");
    assert_eq!(put(&mut s, t), "OUT_OF_MEMORY\r\n", "still full");
    let (_, free) = tmpfs::space(&dir);
    assert!(free < 64 << 10, "{free} bytes free: the disk is full");
    assert_eq!(s.table.totals().jobs, ids.len() as u64, "refused puts left nothing");

    // Every job: reserved, one in ten also released, buried and kicked
    // first, then deleted. No tick runs, so no compaction frees anything.
    for (k, _) in ids.iter().enumerate() {
        let r = run(&mut s, 1, "reserve-with-timeout 0", b"", t);
        let id: u64 = r.split(' ').nth(1).unwrap().parse().unwrap();
        if k % 10 == 0 {
            assert_eq!(run(&mut s, 1, &format!("release {id} 0 0"), b"", t), "RELEASED\r\n");
            assert!(run(&mut s, 1, &format!("reserve-job {id}"), b"", t).starts_with("RESERVED"));
            assert_eq!(run(&mut s, 1, &format!("bury {id} 0"), b"", t), "BURIED\r\n");
            assert_eq!(run(&mut s, 1, "kick 1", b"", t), "KICKED 1\r\n");
            assert!(run(&mut s, 1, &format!("reserve-job {id}"), b"", t).starts_with("RESERVED"));
        }
        assert_eq!(run(&mut s, 1, &format!("delete {id}"), b"", t), "DELETED\r\n", "job {id}");
    }
    assert_eq!(s.table.totals().jobs, 0);
    assert!(!s.log_failed());
    let (_, free) = tmpfs::space(&dir);
    assert!(free < 64 << 10, "{free} bytes free: nothing was released yet");

    // Compaction (a pass, then its release) frees the disk: puts again.
    let log = s.log.as_mut().unwrap();
    let published = log.wal.stats().published_lsn;
    let cut = log.wal.segments().iter().map(|g| g.1).filter(|&e| e <= published).max().unwrap();
    log.pass = Some(Pass::new(&s.table, cut));
    s.finish_compaction();
    let (_, free) = tmpfs::space(&dir);
    assert!(free > 4 * (64 << 10), "{free} bytes free after compaction");
    assert!(put(&mut s, t).starts_with("INSERTED "));

    // Everything logged reads back: the one job left after a restart.
    let l = s.log.take().unwrap();
    l.wal.shutdown().unwrap();
    drop(l);
    let mut r = Store::new(cfg(), Some(open_log(&dir)), t);
    r.recover(t).unwrap();
    assert_eq!(r.table.totals().jobs, 1);
    drop(r);
    fs.finish();
}

/// A `put-batch` the full disk refuses, in a round where another command
/// had logged something first, is taken back without a trace: no
/// deletes written for jobs that never reached the log (they would eat
/// the room kept for completions), no puts counted.
#[test]
fn a_refused_put_batch_after_other_records_in_its_round_leaves_nothing() {
    let Some(fs) = tmpfs::mount_or_skip(1 << 20) else { return };
    let dir = fs.path().join("log");
    let t = Instant::now();
    let mut s = on_disk(&dir, t);
    while put(&mut s, t).starts_with("INSERTED ") {}
    let puts =
        |s: &Store| s.table.queue_view(s.default_q).map(|v| (v.counters.puts, v.counters.deletes));
    let (before, jobs) = (puts(&s), s.table.totals().jobs);
    let tail = s.log.as_ref().unwrap().wal.stats().published_lsn;
    // In one round: a reservation (a record, joining the round), then the
    // batch, refused.
    let mut w = Vec::new();
    s.handle(1, crate::proto::parse(b"reserve-with-timeout 0").unwrap(), Vec::new(), t, &mut w);
    assert!(w.starts_with(b"RESERVED "));
    let mut w = Vec::new();
    s.put_batch(1, 0, 0, 60, vec![vec![b'y'; BODY]; 50], t, &mut w);
    assert_eq!(w, b"OUT_OF_MEMORY\r\n");
    assert!(s.write_log());
    assert_eq!((puts(&s), s.table.totals().jobs), (before, jobs));
    let written = s.log.as_ref().unwrap().wal.stats().published_lsn - tail;
    assert!(written < 256, "{written} bytes logged: the reservation's frame only");
    drop(s);
    fs.finish();
}
