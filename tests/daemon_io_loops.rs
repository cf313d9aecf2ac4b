//! spindled with connections spread over several event loops
//! (`--io-loops 3`, more loops than this machine's 2 cores): connections on
//! different loops share one job table with beanstalkd's semantics, in
//! order, and closing, half-closing, stopping and back-pressure work for a
//! connection whose socket another loop serves.
//!
//! New connections are dealt round-robin over the loops, so among any three
//! consecutive connections each loop serves one; every test uses at least
//! three. `.ci/run` also runs every other daemon test with
//! `SPINDLE_TEST_IO_LOOPS=3`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Conn, Server};

const LOOPS: &[&str] = &["--io-loops", "3"];

fn conns(s: &Server, n: usize) -> Vec<Conn> {
    (0..n).map(|_| s.connect()).collect()
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap()
}

#[test]
fn connections_on_every_loop_share_one_table() {
    let s = Server::spindled(LOOPS);
    let mut c = conns(&s, 6);
    for (i, conn) in c.iter_mut().enumerate() {
        assert_eq!(conn.cmd_str("use jobs\r\n"), "USING jobs\r\n");
        let body = format!("job-{i}");
        let put = format!("put {i} 0 60 {}\r\n{body}\r\n", body.len());
        assert_eq!(conn.cmd_str(&put), format!("INSERTED {}\r\n", i + 1));
    }
    // Each connection reserves one job (lowest priority number first),
    // wherever it was put.
    for (i, conn) in c.iter_mut().enumerate().rev() {
        assert_eq!(conn.cmd_str("watch jobs\r\n"), "WATCHING 2\r\n");
        let want = 6 - i;
        let body = format!("job-{}", 5 - i);
        assert_eq!(
            conn.cmd_str("reserve-with-timeout 0\r\n"),
            format!("RESERVED {want} {}\r\n{body}\r\n", body.len())
        );
    }
    // A job reserved on one loop is not deletable from another...
    assert_eq!(c[0].cmd_str("delete 1\r\n"), "NOT_FOUND\r\n");
    // ...but is by its holder.
    assert_eq!(c[5].cmd_str("delete 1\r\n"), "DELETED\r\n");
    let stats = text(c[1].cmd(b"stats-tube jobs\r\n"));
    assert!(stats.contains("current-jobs-reserved: 5\n"), "{stats}");
    assert!(stats.contains("total-jobs: 6\n"), "{stats}");
    // Closing the holders returns their jobs (c[0] still holds job 6).
    for conn in c.drain(1..) {
        drop(conn);
    }
    c[0].send(b"watch jobs\r\n");
    assert_eq!(text(c[0].reply()), "WATCHING 2\r\n");
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = text(c[0].cmd(b"reserve-with-timeout 5\r\n"));
        assert!(r.starts_with("RESERVED "), "{r}");
        got.push(r.split(' ').nth(1).unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, ["2", "3", "4", "5"]);
}

#[test]
fn a_waiter_on_one_loop_is_served_by_a_put_on_another_in_order() {
    let s = Server::spindled(LOOPS);
    let mut c = conns(&s, 3);
    // Each connection waits in turn, with a command pipelined behind the
    // reserve: its reply must come after RESERVED, never before.
    for w in 0..3 {
        let p = (w + 1) % 3;
        c[w].send(b"reserve\r\nlist-tube-used\r\n");
        let body = format!("for-{w}");
        let put = format!("put 0 0 60 {}\r\n{body}\r\n", body.len());
        let r = text(c[p].cmd(put.as_bytes()));
        assert!(r.starts_with("INSERTED "), "{r}");
        let id = r.trim_end().rsplit(' ').next().unwrap().to_string();
        assert_eq!(text(c[w].reply()), format!("RESERVED {id} {}\r\n{body}\r\n", body.len()));
        assert_eq!(text(c[w].reply()), "USING default\r\n");
        assert_eq!(c[w].cmd_str(&format!("delete {id}\r\n")), "DELETED\r\n");
    }
}

#[test]
fn half_close_ends_a_wait_and_quit_closes_on_every_loop() {
    let s = Server::spindled(LOOPS);
    for conn in conns(&s, 3).iter_mut() {
        conn.send(b"reserve\r\n");
        conn.shutdown_write();
        assert_eq!(text(conn.read_to_eof()), "TIMED_OUT\r\n");
    }
    for conn in conns(&s, 3).iter_mut() {
        conn.send(b"put 0 0 1 1\r\nx\r\nquit\r\nlist-tube-used\r\n");
        let r = text(conn.read_to_eof());
        assert!(r.starts_with("INSERTED ") && r.ends_with("\r\n") && r.len() < 20, "{r}");
    }
    let mut c = s.connect();
    let stats = text(c.cmd(b"stats\r\n"));
    assert!(stats.contains("current-jobs-ready: 3\n"), "{stats}");
    assert!(stats.contains("current-connections: 1\n"), "{stats}");
}

#[test]
fn big_replies_and_pipelines_cross_loops_intact() {
    // 200 pipelined puts of a 60 000-byte body, then 50 pipelined peeks, on
    // each of three connections: more than the loops' 256 KiB windows in
    // both directions, and every reply in order.
    let s = Server::spindled(LOOPS);
    let raw: Vec<_> = (0..3).map(|_| s.unix_stream()).collect();
    let body = vec![b'z'; 60_000];
    for (i, stream) in raw.into_iter().enumerate() {
        let mut writer = stream.try_clone().unwrap();
        let mut conn = Conn::from_unix(stream, &format!("c{i}"));
        let mut script = Vec::new();
        for _ in 0..200 {
            script.extend_from_slice(format!("put 0 0 60 {}\r\n", body.len()).as_bytes());
            script.extend_from_slice(&body);
            script.extend_from_slice(b"\r\n");
        }
        // A writer thread: the server answers while 12 MB arrive, so this
        // test does not depend on socket buffer sizes.
        let t = std::thread::spawn(move || {
            use std::io::Write;
            writer.write_all(&script).unwrap();
        });
        let mut last = 0;
        for _ in 0..200 {
            let r = text(conn.reply());
            let id: u64 = r.trim_end().strip_prefix("INSERTED ").unwrap().parse().unwrap();
            assert!(id > last, "ids out of order: {id} after {last}");
            last = id;
        }
        t.join().unwrap();
        let mut peek = Vec::new();
        for _ in 0..50 {
            peek.extend_from_slice(format!("peek {last}\r\n").as_bytes());
        }
        conn.send(&peek);
        let head = format!("FOUND {last} 60000\r\n");
        for _ in 0..50 {
            let r = conn.reply();
            assert_eq!(&r[..head.len()], head.as_bytes());
            assert_eq!(r.len(), head.len() + 60_002);
        }
    }
}

#[test]
fn sigterm_with_connections_on_every_loop_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut s = Server::spindled(&["-b", dir, "--io-loops", "3"]);
    let mut c = conns(&s, 3);
    for (i, conn) in c.iter_mut().enumerate() {
        let put = format!("put 0 {} 60 1\r\n{i}\r\n", i * 1000);
        assert_eq!(conn.cmd_str(&put), format!("INSERTED {}\r\n", i + 1));
    }
    assert!(c[1].cmd_str("reserve-with-timeout 0\r\n").starts_with("RESERVED 1 "));
    assert_eq!(c[2].cmd_str("bury 1 0\r\n"), "NOT_FOUND\r\n");
    s.signal("TERM");
    assert!(s.wait_exit().success(), "{}", s.log_tail());
    drop(c);
    let s = Server::spindled(&["-b", dir, "--io-loops", "3"]);
    let mut c = s.connect();
    // The reservation ended with the process: job 1 is ready again.
    assert_eq!(text(c.cmd(b"peek-ready\r\n")), "FOUND 1 1\r\n0\r\n");
    let stats = text(c.cmd(b"stats\r\n"));
    assert!(stats.contains("current-jobs-ready: 1\n"), "{stats}");
    assert!(stats.contains("current-jobs-delayed: 2\n"), "{stats}");
}

#[test]
fn a_lease_token_completes_a_job_from_another_loop() {
    let s = Server::spindled(LOOPS);
    let mut c = conns(&s, 3);
    assert_eq!(c[0].cmd_str("put 0 0 60 3\r\nabc\r\n"), "INSERTED 1\r\n");
    assert_eq!(c[1].cmd_str("reserve\r\n"), "RESERVED 1 3\r\nabc\r\n");
    assert_eq!(c[1].cmd_str("lease 1\r\n"), "LEASED 1 1\r\n");
    // The holder's token, sent by connections on the other loops.
    assert_eq!(c[2].cmd_str("touch-lease 1 1\r\n"), "TOUCHED\r\n");
    assert_eq!(c[0].cmd_str("delete-lease 1 2\r\n"), "STALE_LEASE\r\n");
    assert_eq!(c[0].cmd_str("delete-lease 1 1\r\n"), "DELETED\r\n");
    assert_eq!(c[1].cmd_str("delete 1\r\n"), "NOT_FOUND\r\n");
    // A lease ends with its holder's connection.
    assert_eq!(c[0].cmd_str("put 0 0 60 1\r\nx\r\n"), "INSERTED 2\r\n");
    assert_eq!(c[2].cmd_str("reserve\r\n"), "RESERVED 2 1\r\nx\r\n");
    assert_eq!(c[2].cmd_str("lease 2\r\n"), "LEASED 2 1\r\n");
    drop(c.pop());
    assert_eq!(c[1].cmd_str("reserve-with-timeout 10\r\n"), "RESERVED 2 1\r\nx\r\n");
    assert_eq!(c[0].cmd_str("delete-lease 2 1\r\n"), "STALE_LEASE\r\n");
}
