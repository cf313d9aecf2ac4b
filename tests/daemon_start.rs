//! spindled's start and stop: socket mode, stale and live socket files,
//! anything else at the socket path refused and left alone, the data
//! directory's and log files' modes (and `--data-group`), the peer-uid
//! allowlist, SIGTERM with nothing lost, flag errors.
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
        Daemon::spawn(sock, Command::new(SPINDLED), args)
    }

    /// Starts spindled under `umask` (through `sh`, which sets it and execs).
    fn start_with_umask(sock: &Path, umask: &str, args: &[&str]) -> Daemon {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "umask \"$0\" && exec \"$@\"", umask, SPINDLED]);
        Daemon::spawn(sock, cmd, args)
    }

    fn spawn(sock: &Path, mut cmd: Command, args: &[&str]) -> Daemon {
        // `SPINDLE_TEST_IO_LOOPS=N` (see tests/common) spreads connections.
        let loops: Vec<String> = match std::env::var("SPINDLE_TEST_IO_LOOPS") {
            Ok(n) if !args.contains(&"--io-loops") => vec!["--io-loops".into(), n],
            _ => Vec::new(),
        };
        let child = cmd
            .arg("--socket")
            .arg(sock)
            .args(args)
            .args(&loops)
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
fn anything_but_a_socket_at_the_socket_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"precious\n").unwrap();
    let sub = dir.path().join("dir.sock");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inside"), b"x").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let cases = [(&file, "a regular file"), (&sub, "a directory"), (&link, "a symbolic link")];
    for (path, what) in cases {
        let p = path.to_str().unwrap();
        let unix = format!("unix:{p}");
        for args in [["--socket", p, "-b", data_s], ["-l", &unix, "-b", data_s]] {
            let out = run_refused(&args, path);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} started: {err}");
            assert!(err.contains(p) && err.contains(what), "{args:?}: {err}");
            assert!(err.contains("refusing to replace it"), "{args:?}: {err}");
        }
    }
    // Untouched, and refused before the data directory was created.
    assert_eq!(std::fs::read(&file).unwrap(), b"precious\n");
    assert_eq!(std::fs::read(sub.join("inside")).unwrap(), b"x");
    assert_eq!(std::fs::read_link(&link).unwrap(), file);
    assert!(!data.exists(), "the data directory was created");
}

/// Runs spindled, which must exit without ever putting a socket at
/// `path`; fails at once if it does (as it did, replacing the file).
fn run_refused(args: &[&str], path: &Path) -> Output {
    use std::os::unix::fs::FileTypeExt;
    let mut child = Command::new(SPINDLED)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        let replaced = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
        if replaced || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            match replaced {
                true => panic!("{args:?}: spindled replaced {} with its socket", path.display()),
                false => panic!("{args:?}: spindled neither exited nor listened"),
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait_with_output().unwrap()
}

/// The mode and gid of `dir` and of every file in it.
fn modes(dir: &Path) -> Vec<(String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).unwrap();
    let mut out = vec![(".".to_string(), m.mode() & 0o7777, m.gid())];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        out.push((e.file_name().to_string_lossy().into_owned(), m.mode() & 0o7777, m.gid()));
    }
    out.sort();
    out
}

/// The data directory is `dir_mode`, every file in it `file_mode`, and
/// all of them in group `gid` if given.
fn assert_modes(dir: &Path, dir_mode: u32, file_mode: u32, gid: Option<u32>) {
    let all = modes(dir);
    assert!(all.iter().any(|e| e.0 == "LOCK") && all.iter().any(|e| e.0.ends_with(".wal")));
    for (name, mode, g) in &all {
        let want = if name == "." { dir_mode } else { file_mode };
        assert_eq!(*mode, want, "{name} in {} is {mode:04o}: {all:?}", dir.display());
        if let Some(gid) = gid {
            assert_eq!(*g, gid, "{name}'s group: {all:?}");
        }
    }
}

/// Puts a few jobs, reserves and deletes one: the log is written.
fn write_some(sock: &Path) {
    let mut c = connect(sock);
    for _ in 0..10 {
        assert!(cmd(&mut c, "put 0 0 60 4\r\nbody\r\n").starts_with("INSERTED"));
    }
    let reserved = cmd(&mut c, "reserve\r\n");
    let id = reserved.split(' ').nth(1).expect(&reserved);
    let mut body = String::new();
    c.read_line(&mut body).unwrap();
    assert_eq!(cmd(&mut c, &format!("delete {id}\r\n")), "DELETED\r\n");
}

#[test]
fn the_data_directory_and_log_files_are_private_to_spindled() {
    let dir = tempfile::tempdir().unwrap();
    // Missing parents are created too.
    let data = dir.path().join("var/lib/spindled");
    let data_s = data.to_str().unwrap();
    let sock = dir.path().join("p.sock");
    let mut d = Daemon::start(&sock, &["-b", data_s]);
    write_some(&sock);
    assert_modes(&data, 0o700, 0o600, None);
    assert!(d.term().success());
    assert_modes(&data, 0o700, 0o600, None);

    // A data directory left world-readable (as spindled made it before) is
    // tightened at the next start, its files too.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _d = Daemon::start(&sock, &["-b", data_s]);
    write_some(&sock);
    assert_modes(&data, 0o700, 0o600, None);
}

#[test]
fn data_group_gives_a_group_read_access_whatever_the_umask() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    // Root may give the data to a group it is not in (`nogroup`, by name);
    // anyone else to their own group (by number).
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let (group, gid) = if root {
        ("nogroup".to_string(), 65534)
    } else {
        let gid = std::fs::metadata(dir.path()).unwrap().gid();
        (gid.to_string(), gid)
    };
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let sock = dir.path().join("g.sock");
    // umask 077 would make the files 0600 if the modes were not set
    // explicitly after creation.
    let mut d = Daemon::start_with_umask(&sock, "077", &["-b", data_s, "--data-group", &group]);
    write_some(&sock);
    assert_modes(&data, 0o750, 0o640, Some(gid));
    assert!(d.term().success());
    assert_modes(&data, 0o750, 0o640, Some(gid));
    // An unknown group is refused, naming it.
    let out = run(&["-b", data_s, "--data-group", "no-such-group-spindle"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no group named \"no-such-group-spindle\""), "{err}");
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
        (&["--io-loops", "0"], "choose 1 to"),
        (&["--shards", "3"], "use --io-loops 3"),
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
