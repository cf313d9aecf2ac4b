//! What spindled says on stderr by default: one line when it listens
//! (address, data directory, durability), one when recovery ends (jobs
//! restored, time taken), and no colour codes when stderr is not a
//! terminal (here it is a file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Addr, Server};

/// The log once its `listening` line is written (the socket accepts a
/// moment before it is).
fn listened(s: &Server) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = s.log_tail();
        if log.contains("listening on") {
            return log;
        }
        assert!(std::time::Instant::now() < deadline, "no listening line: {log}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn put(s: &Server, body: &str) {
    let r = s.connect().cmd_str(&format!("put 0 0 60 {}\r\n{body}\r\n", body.len()));
    assert!(r.starts_with("INSERTED "), "{r}");
}

#[test]
fn spindled_logs_where_it_listens_and_what_it_recovered_without_colour() {
    let data = common::tempdir();
    let dir = data.path().to_str().unwrap().to_string();
    let mut s = Server::spindled(&["-b", &dir]);
    let Addr::Unix(sock) = s.addr().clone() else { unreachable!() };
    for b in ["a", "b", "c"] {
        put(&s, b);
    }
    s.signal("TERM");
    assert!(s.wait_exit().success());
    let log = s.log_tail();
    assert!(!log.contains('\x1b'), "colour codes in a file: {log:?}");
    let listen =
        log.lines().find(|l| l.contains("listening on")).unwrap_or_else(|| panic!("{log}"));
    assert!(listen.contains(&format!("unix:{}", sock.display())), "{listen}");
    assert!(listen.contains(&format!("data dir {dir}")), "{listen}");
    assert!(listen.contains("durability: fsync every 50 ms"), "{listen}");
    assert!(log.contains("recovery done: 0 jobs restored in "), "{log}");

    let s = Server::spindled(&["-b", &dir, "-F"]);
    let log = listened(&s);
    assert!(log.contains("recovery done: 3 jobs restored in "), "{log}");
    assert!(log.contains("durability: no fsync"), "{log}");
    let s = Server::spindled(&[]);
    let log = listened(&s);
    assert!(log.contains("no data dir") && log.contains("durability: none"), "{log}");
    assert!(!log.contains("recovery done"), "nothing to recover without -b: {log}");
}
