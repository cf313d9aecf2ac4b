//! Bad input never hurts others: oversize lines and bodies, floods of
//! unknown commands, half-closed sockets, a thousand idle connections and
//! a client that never reads its replies. In each case a second,
//! well-behaved connection (the bystander) keeps working, the server stays
//! up, and its memory stays bounded: the peak resident size (`VmHWM` of
//! /proc/PID/status) may grow by at most [`GROWTH_LIMIT_MIB`] while the
//! abuser pushes several times that much at it.
//!
//! Where beanstalkd's exact reply is part of being a drop-in replacement
//! the scenario is also a differential test (`common::diff`); the memory
//! scenarios run against the server under test only (and against
//! beanstalkd itself with `SPINDLE_DIFF_SELF=1`, which checks the bounds
//! are fair: beanstalkd passes them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{diff, Conn, Server, REPLY_TIMEOUT};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

/// How much the server's peak RSS may grow during one abuse scenario.
const GROWTH_LIMIT_MIB: u64 = 32;

fn put(pri: u64, delay: u64, ttr: u64, body: &str) -> String {
    format!("put {pri} {delay} {ttr} {}\r\n{body}\r\n", body.len())
}

/// Sets `c` up as the bystander: its own tube, used and watched.
fn bystander(server: &Server) -> Conn {
    let mut c = server.connect();
    assert_eq!(c.cmd_str("use bystander\r\n"), "USING bystander\r\n");
    assert_eq!(c.cmd_str("watch bystander\r\n"), "WATCHING 2\r\n");
    assert_eq!(c.cmd_str("ignore default\r\n"), "WATCHING 1\r\n");
    c
}

/// `n` put/reserve/delete cycles on the bystander connection.
fn cycle(c: &mut Conn, n: usize) {
    for _ in 0..n {
        let ins = c.cmd_str(&put(0, 0, 60, "bystander"));
        let id = ins.strip_prefix("INSERTED ").map(|s| s.trim_end().to_string());
        let id = id.unwrap_or_else(|| panic!("bystander put: {ins:?}"));
        assert_eq!(c.cmd_str("reserve\r\n"), format!("RESERVED {id} 9\r\nbystander\r\n"));
        assert_eq!(c.cmd_str(&format!("delete {id}\r\n")), "DELETED\r\n");
    }
}

/// Peak RSS growth check.
fn assert_bounded(server: &Server, hwm_before: u64, what: &str) {
    let (rss, hwm) = server.mem_kib();
    assert!(
        hwm < hwm_before + GROWTH_LIMIT_MIB * 1024,
        "{}: peak RSS grew from {hwm_before} KiB to {hwm} KiB (now {rss} KiB) during {what}",
        server.kind().name()
    );
}

/// Writes `parts` on a clone of `stream` from another thread while the
/// bystander keeps cycling; returns the number of bytes the writer got out
/// (it stops at the first error: the server may close on abuse).
fn write_while_bystanding(stream: &UnixStream, parts: Vec<Vec<u8>>, by: &mut Conn) -> usize {
    let mut w = stream.try_clone().expect("clone stream");
    w.set_write_timeout(Some(REPLY_TIMEOUT)).expect("write timeout");
    let writer = thread::spawn(move || {
        let mut sent = 0;
        for p in parts {
            if w.write_all(&p).is_err() {
                break;
            }
            sent += p.len();
        }
        sent
    });
    while !writer.is_finished() {
        cycle(by, 1);
    }
    writer.join().expect("writer thread")
}

fn kinds() -> Vec<common::Kind> {
    vec![common::Kind::under_test()]
}

// ---------------------------------------------------------------------
// oversize lines
// ---------------------------------------------------------------------

/// A 10 kB line without CRLF, then its CRLF: beanstalkd answers
/// BAD_FORMAT once the CRLF arrives and goes on with the next command;
/// meanwhile another connection is served normally.
#[test]
fn oversize_line_replies_like_beanstalkd() {
    diff(&[], |s| {
        let a = s.open();
        let b = s.open();
        s.send(a, &[b'a'; 10_240]);
        s.cmd(b, put(0, 0, 60, "x").as_bytes());
        s.c(b, "reserve\r\n");
        s.c(b, "delete 1\r\n");
        s.send(a, &[b'b'; 10_240]);
        s.send(a, b"\r\nlist-tube-used\r\n");
        s.reply(a);
        s.reply(a);
        s.c(b, "stats\r\n");
        s.c(a, "stats\r\n");
    });
}

/// 64 MiB of one line without CRLF: memory stays bounded, the bystander is
/// served throughout, and the line is then answered with BAD_FORMAT (as
/// beanstalkd does) or the connection is closed.
#[test]
fn endless_line_memory_bounded() {
    for kind in kinds() {
        let server = Server::start(kind, &[]);
        let mut by = bystander(&server);
        cycle(&mut by, 1);
        let (_, hwm0) = server.mem_kib();
        let abuser = server.unix_stream();
        let parts = (0..64).map(|_| vec![b'a'; 1 << 20]).collect();
        let sent = write_while_bystanding(&abuser, parts, &mut by);
        cycle(&mut by, 20);
        assert_bounded(&server, hwm0, "a 64 MiB line");
        let mut a = Conn::from_unix(abuser, "abuser");
        if sent == 64 << 20 && a.try_send(b"\r\nlist-tube-used\r\n").is_ok() {
            match a.try_reply() {
                Ok(r) => {
                    assert_eq!(r, b"BAD_FORMAT\r\n", "after the overlong line");
                    assert_eq!(a.reply(), b"USING default\r\n", "next command");
                }
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
            }
        }
        cycle(&mut by, 5);
        let mut server = server;
        server.assert_alive();
    }
}

// ---------------------------------------------------------------------
// oversize bodies
// ---------------------------------------------------------------------

/// A 2 MB body declared and sent with `-z 1024`: JOB_TOO_BIG after the
/// whole body, then the connection goes on; the bystander is unaffected.
#[test]
fn oversize_body_replies_like_beanstalkd() {
    diff(&["-z", "1024"], |s| {
        let a = s.open();
        let b = s.open();
        let mut big = b"put 0 0 60 2000000\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 2_000_000));
        big.extend_from_slice(b"\r\nlist-tube-used\r\n");
        s.cmd(b, put(0, 0, 60, "small").as_bytes());
        s.send(a, &big);
        s.c(b, "reserve\r\n");
        s.reply(a);
        s.reply(a);
        s.c(a, "stats\r\n");
    });
}

/// `put` of a 100 MB body with `-z 1024`, streamed: the server must
/// discard it as it arrives (not buffer it), answer JOB_TOO_BIG at its
/// end, and keep the connection usable.
#[test]
fn oversize_body_streamed_not_buffered() {
    for kind in kinds() {
        let server = Server::start(kind, &["-z", "1024"]);
        let mut by = bystander(&server);
        cycle(&mut by, 1);
        let (_, hwm0) = server.mem_kib();
        let abuser = server.unix_stream();
        let mut parts = vec![b"put 0 0 60 100000000\r\n".to_vec()];
        parts.extend((0..100).map(|_| vec![b'x'; 1_000_000]));
        parts.push(b"\r\nlist-tube-used\r\n".to_vec());
        let sent = write_while_bystanding(&abuser, parts, &mut by);
        assert_eq!(sent, 100_000_000 + 22 + 18, "the server stopped reading the body");
        let mut a = Conn::from_unix(abuser, "abuser");
        assert_eq!(a.reply(), b"JOB_TOO_BIG\r\n");
        assert_eq!(a.reply(), b"USING default\r\n");
        assert_bounded(&server, hwm0, "a 100 MB body");
        cycle(&mut by, 5);
        let mut server = server;
        server.assert_alive();
    }
}

// ---------------------------------------------------------------------
// floods and half-closed sockets
// ---------------------------------------------------------------------

/// 20,000 unknown commands pipelined from one thread and read from
/// another: exactly 20,000 UNKNOWN_COMMAND replies, in order, while a
/// bystander is served.
#[test]
fn unknown_command_flood() {
    for kind in kinds() {
        let server = Server::start(kind, &[]);
        let mut by = bystander(&server);
        let s = server.unix_stream();
        let mut w = s.try_clone().expect("clone");
        let writer = thread::spawn(move || {
            let batch = b"no-such-command with args\r\n".repeat(1000);
            for _ in 0..20 {
                w.write_all(&batch).expect("flood write");
            }
        });
        let mut r = Conn::from_unix(s, "flooder");
        for i in 0..20_000 {
            let reply = r.reply();
            assert_eq!(reply, b"UNKNOWN_COMMAND\r\n", "reply {i}");
            if i % 1000 == 0 {
                cycle(&mut by, 1);
            }
        }
        writer.join().expect("writer");
        assert_eq!(r.cmd_str("list-tube-used\r\n"), "USING default\r\n");
        cycle(&mut by, 1);
    }
}

/// Half-closed connections (shutdown of the write side) with a put, a
/// blocking reserve, half a command line and half a body left behind: the
/// server answers what it must (INSERTED, TIMED_OUT), closes each, and
/// does not spin: over a one-second window (a `reserve-with-timeout 1` on
/// the bystander, timed by the server itself) it uses hardly more CPU than
/// over the same window with no half-closed socket, and that is well
/// under half a second.
#[test]
fn half_closed_sockets() {
    for kind in kinds() {
        let server = Server::start(kind, &[]);
        let mut by = bystander(&server);
        // A quiet second first: what the idle server uses by itself.
        let before = server.cpu_ticks();
        assert_eq!(by.cmd_str("reserve-with-timeout 1\r\n"), "TIMED_OUT\r\n");
        let idle = server.cpu_ticks() - before;
        assert!(idle < 50, "{} used {idle} CPU ticks in 1 s while idle", kind.name());
        let mut conns = Vec::new();
        for script in [
            format!("use elsewhere\r\n{}", put(0, 0, 60, "x")),
            "reserve\r\n".to_string(),
            "stats-tu".to_string(),
            "put 0 0 60 100\r\nonly part of the body".to_string(),
        ] {
            let mut c = server.connect();
            c.send(script.as_bytes());
            c.shutdown_write();
            conns.push(c);
        }
        cycle(&mut by, 3);
        let before = server.cpu_ticks();
        assert_eq!(by.cmd_str("reserve-with-timeout 1\r\n"), "TIMED_OUT\r\n");
        let used = server.cpu_ticks() - before;
        assert!(
            used < idle + 30,
            "{} used {used} CPU ticks in 1 s with half-closed sockets ({idle} when idle)",
            kind.name()
        );
        let got: Vec<String> = conns.iter_mut().map(|c| common::esc(&c.read_to_eof())).collect();
        assert!(
            got[0].starts_with("\"USING elsewhere\\r\\nINSERTED ") && got[0].ends_with("\\r\\n\""),
            "put then half-close: {}",
            got[0]
        );
        assert_eq!(
            got[1..],
            ["\"TIMED_OUT\\r\\n\"", "\"\"", "\"\""],
            "reserve, half line, half body"
        );
        cycle(&mut by, 1);
        let mut server = server;
        server.assert_alive();
    }
}

/// 1,000 idle connections and one active client: the active client is
/// served normally, `stats` counts them all, and they are forgotten once
/// closed.
#[test]
fn thousand_idle_connections() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read limits");
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(soft >= 1100, "open-file limit {soft} is too low for 1,000 connections (ulimit -n)");
    for kind in kinds() {
        let server = Server::start(kind, &[]);
        let mut by = bystander(&server);
        let idle: Vec<Conn> = (0..1000).map(|_| server.connect()).collect();
        // connect() returns once the kernel queued the connection; wait
        // until the server has accepted all of them.
        wait_connections(&mut by, "1001");
        cycle(&mut by, 200);
        let stats = by.cmd(b"stats\r\n");
        assert_eq!(common::yaml_value(&stats, "total-connections").as_deref(), Some("1002"));
        drop(idle);
        wait_connections(&mut by, "1");
        cycle(&mut by, 10);
    }
}

/// Polls `stats` on `c` until `current-connections` is `n`.
fn wait_connections(c: &mut Conn, n: &str) {
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let stats = c.cmd(b"stats\r\n");
        let now = common::yaml_value(&stats, "current-connections");
        if now.as_deref() == Some(n) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "current-connections {now:?}, want {n}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A client pipelines 2,000 `peek`s of a 60 kB job (120 MB of replies)
/// and `reserve`s, and never reads: the server must stop reading from it
/// instead of queueing replies without bound, and keep serving others.
/// Then the client goes away with replies unread.
#[test]
fn client_never_reads_replies() {
    for kind in kinds() {
        let server = Server::start(kind, &[]);
        let mut by = bystander(&server);
        let mut setup = server.connect();
        let body = "p".repeat(60_000);
        assert_eq!(setup.cmd_str(&put(0, 0, 60, &body)), "INSERTED 1\r\n");
        for _ in 0..50 {
            setup.cmd_str(&put(0, 0, 60, "r"));
        }
        cycle(&mut by, 1);
        let (_, hwm0) = server.mem_kib();
        let mut greedy = server.connect();
        let mut cmds = b"peek 1\r\n".repeat(2000);
        cmds.extend(b"reserve\r\n".repeat(100));
        let sent = greedy.send_nonblocking(&cmds);
        let mut lazy = server.connect();
        let sent_stats = lazy.send_nonblocking(&b"stats\r\n".repeat(20_000));
        cycle(&mut by, 300);
        assert_bounded(&server, hwm0, "clients that never read");
        assert!(sent > 0 && sent_stats > 0);
        drop(greedy);
        drop(lazy);
        cycle(&mut by, 20);
        // The jobs the greedy client reserved come back when it is gone.
        let mut check = server.connect();
        let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let stats = check.cmd(b"stats-tube default\r\n");
            if common::yaml_value(&stats, "current-jobs-reserved").as_deref() == Some("0") {
                assert_eq!(common::yaml_value(&stats, "current-jobs-ready").as_deref(), Some("51"));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "reservations not released");
            thread::sleep(Duration::from_millis(5));
        }
        let mut server = server;
        server.assert_alive();
    }
}

/// A connection reset with a reply in flight and a connection that sends
/// random bytes do not disturb the server.
#[test]
fn resets_and_garbage() {
    for kind in kinds() {
        let server = Server::start(kind, &[]);
        let mut by = bystander(&server);
        for _ in 0..20 {
            let mut c = server.unix_stream();
            c.write_all(b"stats\r\nlist-tubes\r\n").expect("write");
            drop(c);
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut garbage = vec![0u8; 1 << 20];
        for b in garbage.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *b = (rng >> 24) as u8;
        }
        let g = server.unix_stream();
        let sent = write_while_bystanding(&g, vec![garbage], &mut by);
        let mut r = g;
        r.set_read_timeout(Some(Duration::from_millis(1))).expect("timeout");
        let mut sink = [0u8; 4096];
        let _ = r.read(&mut sink);
        drop(r);
        assert!(sent > 0);
        cycle(&mut by, 10);
        let mut server = server;
        server.assert_alive();
    }
}
