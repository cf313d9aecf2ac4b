//! spindled's start and stop: socket mode, stale and live socket files,
//! the peer-uid allowlist, SIGTERM with nothing lost, flag errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SPINDLED: &str = env!("CARGO_BIN_EXE_spindled");
/// A guard against hanging, never a synchronisation device.
const LIMIT: Duration = Duration::from_secs(20);

struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn start(sock: &Path, args: &[&str]) -> Daemon {
        // `SPINDLE_TEST_SHARDS=N` (see tests/common) spreads connections.
        let shards: Vec<String> = match std::env::var("SPINDLE_TEST_SHARDS") {
            Ok(n) if !args.contains(&"--shards") => vec!["--shards".into(), n],
            _ => Vec::new(),
        };
        let child = Command::new(SPINDLED)
            .arg("--socket")
            .arg(sock)
            .args(args)
            .args(&shards)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start spindled");
        let mut d = Daemon { child: Some(child) };
        let deadline = Instant::now() + LIMIT;
        while UnixStream::connect(sock).is_err() {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("spindled exited at start: {st}");
            }
            assert!(Instant::now() < deadline, "spindled did not start listening");
            std::thread::sleep(Duration::from_millis(2));
        }
        d
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then wait for the exit status.
    fn term(&mut self) -> std::process::ExitStatus {
        let st = Command::new("kill").args(["-s", "TERM", &self.pid().to_string()]).status();
        assert!(st.unwrap().success());
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "spindled did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request line (plus optional body), one reply line.
fn cmd(s: &mut BufReader<UnixStream>, line: &str) -> String {
    s.get_mut().write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_line(&mut reply).unwrap();
    reply
}

fn connect(sock: &Path) -> BufReader<UnixStream> {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    BufReader::new(s)
}

fn run(args: &[&str]) -> Output {
    Command::new(SPINDLED).args(args).output().expect("run spindled")
}

#[test]
fn the_socket_is_private_by_default_and_the_mode_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let d = Daemon::start(&a, &[]);
    let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(d);
    let b = dir.path().join("b.sock");
    let _d = Daemon::start(&b, &["--socket-mode", "660"]);
    let mode = std::fs::metadata(&b).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // Stale: a socket file nobody accepts on.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    // Another test's `Command::spawn` may have forked while the listener
    // was open; its child holds the fd until it execs, and a connection
    // made meanwhile would queue on the stale socket (and be reset later).
    // Wait until nobody holds it.
    let deadline = Instant::now() + LIMIT;
    while UnixStream::connect(&sock).is_ok() {
        assert!(Instant::now() < deadline, "the stale socket stays live");
        std::thread::sleep(Duration::from_millis(2));
    }
    let _d = Daemon::start(&sock, &[]);
    let mut c = connect(&sock);
    assert_eq!(cmd(&mut c, "use t\r\n"), "USING t\r\n");
    // Live: a second daemon on the same path refuses, naming it.
    let out = run(&["--socket", sock.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening") && err.contains("s.sock"), "{err}");
    // ... and the first keeps serving.
    assert_eq!(cmd(&mut c, "use u\r\n"), "USING u\r\n");
}

#[test]
fn peers_outside_the_uid_allowlist_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let me = std::fs::metadata("/proc/self").unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&me);
    let other = (uid + 1).to_string();
    let sock = dir.path().join("deny.sock");
    let _deny = Daemon::start(&sock, &["--allow-uid", &other]);
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let _ = s.write_all(b"stats\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "a refused peer got a reply: {:?}", String::from_utf8_lossy(&buf));

    let sock2 = dir.path().join("allow.sock");
    let _allow = Daemon::start(&sock2, &["--allow-uid", &uid.to_string()]);
    let mut c = connect(&sock2);
    assert_eq!(cmd(&mut c, "use t\r\n"), "USING t\r\n");
}

#[test]
fn sigterm_stops_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sock = dir.path().join("t.sock");
    let data_s = data.to_str().unwrap();
    let mut d = Daemon::start(&sock, &["-b", data_s]);
    let mut c = connect(&sock);
    for i in 0..100 {
        let r = cmd(&mut c, &format!("put {i} 0 60 5\r\njob{i:02}\r\n"));
        assert_eq!(r, format!("INSERTED {}\r\n", i + 1));
    }
    assert_eq!(cmd(&mut c, "put 0 3600 60 1\r\nd\r\n"), "INSERTED 101\r\n");
    // One job is reserved (it comes back ready), one buried.
    assert_eq!(cmd(&mut c, "reserve\r\n"), "RESERVED 1 5\r\n");
    let mut body = String::new();
    c.read_line(&mut body).unwrap();
    assert_eq!(cmd(&mut c, "reserve\r\n"), "RESERVED 2 5\r\n");
    body.clear();
    c.read_line(&mut body).unwrap();
    assert_eq!(cmd(&mut c, "bury 2 0\r\n"), "BURIED\r\n");
    let st = d.term();
    assert!(st.success(), "exit status {st}");
    assert!(!sock.exists(), "the socket file is removed on a clean stop");

    let _d2 = Daemon::start(&sock, &["-b", data_s]);
    let mut c = connect(&sock);
    let state = |c: &mut BufReader<UnixStream>, id: u64| -> String {
        let head = cmd(c, &format!("stats-job {id}\r\n"));
        let n: usize = head.trim_end().strip_prefix("OK ").expect(&head).parse().unwrap();
        let mut yaml = vec![0; n + 2];
        c.read_exact(&mut yaml).unwrap();
        let yaml = String::from_utf8(yaml).unwrap();
        yaml.lines().find_map(|l| l.strip_prefix("state: ")).unwrap().to_string()
    };
    assert_eq!(state(&mut c, 1), "ready");
    assert_eq!(state(&mut c, 2), "buried");
    assert_eq!(state(&mut c, 101), "delayed");
    for id in 3..=100 {
        assert_eq!(state(&mut c, id), "ready", "job {id}");
    }
    // Ids continue after the last one handed out.
    assert_eq!(cmd(&mut c, "put 0 0 60 1\r\nx\r\n"), "INSERTED 102\r\n");
}

#[test]
fn bad_flags_get_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["--durability", "sync"], "needs a data directory"),
        (&["--durability", "memory", "-b", "/tmp/x"], "contradict"),
        (&["-z", "2000000000"], "maximum"),
        (&["--socket-mode", "9z"], "octal"),
        (&["--shards", "0"], "choose 1 to"),
        (&["-u", "nobody"], "does not switch users"),
    ];
    for (args, want) in cases {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let v = run(&["-v"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("spindled "));
}

/// A waiter served because another connection closed (its reserved job
/// returned) must go on to process the commands it pipelined after
/// `reserve` (over TCP nothing else would wake it).
#[test]
fn a_waiter_served_by_a_closing_holder_processes_its_pipelined_commands() {
    use std::net::{TcpListener, TcpStream};
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let _d = Daemon::start(&dir.path().join("w.sock"), &["--listen", &addr]);
    let tcp = || {
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        BufReader::new(s)
    };
    let mut b = tcp();
    b.get_mut().write_all(b"put 0 0 60 1\r\nx\r\nreserve\r\n").unwrap();
    let mut line = String::new();
    for want in ["INSERTED 1\r\n", "RESERVED 1 1\r\n", "x\r\n"] {
        line.clear();
        b.read_line(&mut line).unwrap();
        assert_eq!(line, want);
    }
    let mut a = tcp();
    a.get_mut().write_all(b"reserve\r\nlist-tube-used\r\n").unwrap();
    // Make sure a is parked before b goes away.
    let mut c = tcp();
    let deadline = Instant::now() + LIMIT;
    loop {
        c.get_mut().write_all(b"stats-tube default\r\n").unwrap();
        let mut head = String::new();
        c.read_line(&mut head).unwrap();
        let n: usize = head.trim_end()[3..].parse().unwrap();
        let mut yaml = vec![0; n + 2];
        c.read_exact(&mut yaml).unwrap();
        if String::from_utf8_lossy(&yaml).contains("current-waiting: 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "a never waited");
    }
    drop(b);
    for want in ["RESERVED 1 1\r\n", "x\r\n", "USING default\r\n"] {
        line.clear();
        a.read_line(&mut line).unwrap();
        assert_eq!(line, want);
    }
}
