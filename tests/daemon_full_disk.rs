//! spindled on a full disk (a real, small tmpfs; issue 14, item 2):
//!
//! - it refuses to start when its first log segment cannot be allocated;
//! - a put that cannot be logged gets `OUT_OF_MEMORY`, and every job it
//!   accepted is still there (also after a restart on the still full
//!   disk);
//! - `reserve`, `release`, `bury`, `kick`, `touch` and `delete` keep
//!   working while puts are refused (the log keeps head-room for them);
//! - once space is freed (by draining the queue, which lets compaction
//!   release segments, or by removing another file) puts succeed again
//!   without a restart.
//!
//! Mounting needs root; `SPINDLE_SKIP_TMPFS=1` skips these tests where it
//! cannot be done (see `wal/tests/support/tmpfs.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../wal/tests/support/tmpfs.rs"]
mod tmpfs;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tmpfs::mount_or_skip;

const SPINDLED: &str = env!("CARGO_BIN_EXE_spindled");
/// A guard against hanging, never a synchronisation device.
const LIMIT: Duration = Duration::from_secs(30);
/// The disk: 1 MiB.
const DISK: u64 = 1 << 20;
/// Log segments of 64 KiB (`-z 4096` lets them be this small).
const SEGMENT: &str = "65536";
/// Each job's body.
const BODY: usize = 500;

/// A spindled on a socket of its own; killed on drop.
struct Daemon {
    child: Child,
    sock: PathBuf,
}

/// How a start ended.
enum Started {
    Up(Daemon),
    Exited(ExitStatus, String),
}

fn args(data: &Path) -> Vec<String> {
    let mut a: Vec<String> =
        ["-b", &data.to_string_lossy(), "-z", "4096", "-s", SEGMENT, "-f", "10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    // `SPINDLE_TEST_IO_LOOPS=N` (see tests/common) spreads connections.
    if let Ok(n) = std::env::var("SPINDLE_TEST_IO_LOOPS") {
        a.push("--io-loops".into());
        a.push(n);
    }
    a
}

/// Starts spindled on `data` and waits until it listens or exits.
fn start(sock: &Path, data: &Path) -> Started {
    let mut child = Command::new(SPINDLED)
        .arg("--socket")
        .arg(sock)
        .args(args(data))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spindled");
    let deadline = Instant::now() + LIMIT;
    loop {
        if UnixStream::connect(sock).is_ok() {
            return Started::Up(Daemon { child, sock: sock.to_path_buf() });
        }
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return Started::Exited(st, err);
        }
        assert!(Instant::now() < deadline, "spindled neither listened nor exited");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn start_ok(sock: &Path, data: &Path) -> Daemon {
    match start(sock, data) {
        Started::Up(d) => d,
        Started::Exited(st, err) => panic!("spindled exited at start ({st}): {err}"),
    }
}

impl Daemon {
    fn connect(&self) -> Conn {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        Conn { r: BufReader::new(s.try_clone().unwrap()), w: s }
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(mut self) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let st = self.child.wait().unwrap();
        assert!(st.success(), "spindled stopped with {st}");
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "spindled died");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    /// Sends one command and reads one reply line (and its body, for
    /// `RESERVED`/`FOUND`, which is returned after the line).
    fn cmd(&mut self, line: &str, body: Option<&[u8]>) -> String {
        let mut out = line.as_bytes().to_vec();
        out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out).unwrap();
        let mut reply = String::new();
        self.r.read_line(&mut reply).unwrap();
        let reply = reply.trim_end().to_string();
        let words: Vec<&str> = reply.split(' ').collect();
        if matches!(words[0], "RESERVED" | "FOUND" | "OK") {
            let n: usize = words.last().unwrap().parse().unwrap();
            let mut b = vec![0; n + 2];
            self.r.read_exact(&mut b).unwrap();
        }
        reply
    }

    fn put(&mut self, body: &[u8]) -> String {
        self.cmd(&format!("put 0 0 120 {}", body.len()), Some(body))
    }

    /// Reserves with no wait; the job's id.
    fn reserve(&mut self) -> u64 {
        let r = self.cmd("reserve-with-timeout 0", None);
        let w: Vec<&str> = r.split(' ').collect();
        assert_eq!(w[0], "RESERVED", "reserve on a full disk: {r}");
        w[1].parse().unwrap()
    }
}

fn body(i: u64) -> Vec<u8> {
    let mut b = format!("job {i} ").into_bytes();
    b.resize(BODY, b'a' + (i % 26) as u8);
    b
}

/// Puts until a put is refused; returns the accepted ids and the refusal.
fn fill(c: &mut Conn, next: &mut u64) -> (Vec<u64>, String) {
    let mut ids = Vec::new();
    loop {
        let r = c.put(&body(*next));
        *next += 1;
        match r.strip_prefix("INSERTED ") {
            Some(id) => ids.push(id.parse().unwrap()),
            None => return (ids, r),
        }
        assert!(ids.len() < 10_000, "a 1 MiB disk must fill up");
    }
}

#[test]
fn refuses_to_start_when_the_first_segment_does_not_fit() {
    let Some(fs) = mount_or_skip(DISK) else { return };
    // Something else fills the disk but for 32 KiB: less than a segment.
    std::fs::write(fs.path().join("ballast"), vec![1u8; (DISK - (32 << 10)) as usize]).unwrap();
    let data = fs.path().join("data");
    let sock = fs.path().join("s.sock");
    match start(&sock, &data) {
        Started::Up(_) => panic!("spindled started with no room for its first log segment"),
        Started::Exited(st, err) => {
            assert!(!st.success(), "{st}");
            assert!(err.contains("no space") && err.contains("free disk space"), "{err}");
        }
    }
    fs.finish();
}

#[test]
fn a_full_disk_refuses_puts_keeps_completions_and_recovers_when_drained() {
    let Some(fs) = mount_or_skip(DISK) else { return };
    let data = fs.path().join("data");
    let sock = fs.path().join("s.sock");
    let mut d = start_ok(&sock, &data);
    let mut c = d.connect();
    let mut next = 0;
    let (mut ids, refused) = fill(&mut c, &mut next);
    assert_eq!(refused, "OUT_OF_MEMORY", "a put the log cannot hold");
    assert!(ids.len() > 200, "only {} jobs fit", ids.len());
    d.assert_alive();

    // Completions work with the disk full.
    let a = c.reserve();
    assert_eq!(c.cmd(&format!("touch {a}"), None), "TOUCHED");
    assert_eq!(c.cmd(&format!("release {a} 5 0"), None), "RELEASED");
    let b = c.reserve();
    assert_eq!(c.cmd(&format!("bury {b} 7"), None), "BURIED");
    assert_eq!(c.cmd("kick 1", None), "KICKED 1");
    let b2 = c.reserve();
    assert_eq!(c.cmd(&format!("bury {b2} 7"), None), "BURIED");
    assert_eq!(c.cmd(&format!("kick-job {b2}"), None), "KICKED");
    let e = c.reserve();
    assert_eq!(c.cmd(&format!("delete {e}"), None), "DELETED");
    ids.retain(|&i| i != e);
    assert_eq!(c.cmd(&format!("delete {}", ids[ids.len() / 2]), None), "DELETED");
    ids.remove(ids.len() / 2);
    drop(c);

    // Nothing accepted is lost, across a restart on the still full disk.
    d.stop();
    let d = start_ok(&sock, &data);
    let mut c = d.connect();
    for &id in &ids {
        let r = c.cmd(&format!("peek {id}"), None);
        assert!(r.starts_with(&format!("FOUND {id} {BODY}")), "job {id}: {r}");
    }

    // Drain the queue: every job can be reserved and deleted.
    for _ in 0..ids.len() {
        let id = c.reserve();
        assert_eq!(c.cmd(&format!("delete {id}"), None), "DELETED", "job {id}");
    }
    assert_eq!(c.cmd("reserve-with-timeout 0", None), "TIMED_OUT");

    // Compaction releases the drained segments; puts succeed again, without
    // a restart. (Polled: compaction runs on the daemon's timer.)
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = c.put(&body(next));
        next += 1;
        if r.starts_with("INSERTED") {
            break;
        }
        assert_eq!(r, "OUT_OF_MEMORY");
        assert!(Instant::now() < deadline, "puts still refused after the queue was drained");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Compaction released the first segment, written before the disk was
    // full.
    let first = data.join(format!("{:020}.wal", 0));
    while first.exists() {
        assert!(Instant::now() < deadline, "the first segment was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two segments' worth: the log allocates new segments again. (A pass
    // may still be releasing the drain's segments: a refusal meanwhile is
    // polled again.)
    let mut taken = 0;
    while taken < 200 {
        let r = c.put(&body(next));
        next += 1;
        if r.starts_with("INSERTED") {
            taken += 1;
        } else {
            assert_eq!(r, "OUT_OF_MEMORY");
            assert!(Instant::now() < deadline, "puts refused after the release");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(c);
    d.stop();
    fs.finish();
}

#[test]
fn puts_succeed_again_once_another_file_frees_space() {
    let Some(fs) = mount_or_skip(DISK) else { return };
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 512 << 10]).unwrap();
    let data = fs.path().join("data");
    let sock = fs.path().join("s.sock");
    let d = start_ok(&sock, &data);
    let mut c = d.connect();
    let mut next = 0;
    let (ids, refused) = fill(&mut c, &mut next);
    assert_eq!(refused, "OUT_OF_MEMORY");
    assert!(!ids.is_empty());
    std::fs::remove_file(&ballast).unwrap();
    // No restart and nothing drained: the next put finds the room.
    let (more, refused) = fill(&mut c, &mut next);
    assert_eq!(refused, "OUT_OF_MEMORY");
    assert!(more.len() > 100, "{} jobs after freeing 512 KiB", more.len());
    for &id in ids.iter().chain(&more) {
        let r = c.cmd(&format!("peek {id}"), None);
        assert!(r.starts_with(&format!("FOUND {id} ")), "job {id}: {r}");
    }
    drop(c);
    d.stop();
    fs.finish();
}
