//! The `spindle` CLI against a private server: this package's `spindled`
//! by default, or the binary named by `$SPINDLE_TEST_SERVER` (e.g.
//! `beanstalkd`, to check the CLI's plain-beanstalkd fallbacks; `.ci/run`
//! runs both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use spindle::client::{Client, ConnectOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound on waiting for the server to come up; a guard against
/// hanging, never a synchronisation device.
const START_LIMIT: Duration = Duration::from_secs(20);
const TTR: Duration = Duration::from_secs(60);

struct Server {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let bin = std::env::var("SPINDLE_TEST_SERVER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_spindled").into());
        let dir = tempfile::Builder::new().prefix("spcli").tempdir_in("/tmp").unwrap();
        let sock = dir.path().join("b.sock");
        let child = Command::new(&bin)
            .arg("-l")
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{bin}`: {e}. With SPINDLE_TEST_SERVER=beanstalkd these tests \
                     need Debian's beanstalkd: `apt-get install -y beanstalkd`"
                )
            });
        let mut server = Server { child, sock, dir };
        let deadline = Instant::now() + START_LIMIT;
        while Client::connect_unix(&server.sock).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("`{bin}` exited with {status} before listening");
            }
            assert!(Instant::now() < deadline, "`{bin}` did not listen on {:?}", server.sock);
            std::thread::sleep(Duration::from_millis(5));
        }
        server
    }

    fn client(&self) -> Client {
        Client::connect_unix(&self.sock).unwrap()
    }

    /// Runs `spindle --socket SOCK args...`.
    fn spindle(&self, args: &[&str]) -> Output {
        self.spindle_with_stdin(args, None)
    }

    fn spindle_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spindle"));
        cmd.arg("--socket").arg(&self.sock).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(data) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(data).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs the CLI, asserts it succeeded, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.spindle(args);
        assert!(out.status.success(), "spindle {args:?} failed: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn put_stats_queues_and_peek() {
    let s = Server::start();
    let out = s.ok(&["put", "--queue", "q", "hello"]);
    assert!(out.starts_with("inserted job "), "{out}");
    let first: u64 = out["inserted job ".len()..].split(' ').next().unwrap().parse().unwrap();

    // Payload from stdin, JSON reply.
    let out =
        s.spindle_with_stdin(&["put", "-q", "q", "--pri", "5", "--json"], Some(b"from\nstdin"));
    assert!(out.status.success(), "{}", describe(&out));
    let put: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(put["queue"], "q");
    assert_eq!(put["duplicate"], false);
    let second = put["id"].as_u64().unwrap();
    assert!(second > first);
    s.ok(&["put", "-q", "q", "--delay", "100", "later"]);

    let server = s.json(&["stats", "--json"]);
    assert_eq!(server["current-jobs-ready"], 2);
    assert_eq!(server["current-jobs-delayed"], 1);
    assert_eq!(server["cmd-put"], 3);
    assert!(server["version"].is_string());
    let tube = s.json(&["stats", "--queue", "q", "--json"]);
    assert_eq!(tube["name"], "q");
    assert_eq!(tube["current-jobs-ready"], 2);
    assert_eq!(tube["current-jobs-urgent"], 1, "--pri 5 is urgent, the default is not");
    let text = s.ok(&["stats", "--queue", "q"]);
    assert!(
        text.lines().any(|l| l.starts_with("current-jobs-ready:") && l.ends_with(" 2")),
        "{text}"
    );
    let job = s.json(&["stats", "--job", &second.to_string(), "--json"]);
    assert_eq!((job["id"].as_u64(), job["pri"].as_u64()), (Some(second), Some(5)));

    let table = s.ok(&["queues"]);
    let row = table.lines().find(|l| l.starts_with("q ")).unwrap_or_else(|| panic!("{table}"));
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["q", "2", "0", "1", "0", "3", "-"]);
    let list = s.json(&["queues", "--json"]);
    let q = list.as_array().unwrap().iter().find(|t| t["name"] == "q").unwrap();
    assert_eq!((q["ready"].as_u64(), q["delayed"].as_u64()), (Some(2), Some(1)));

    // Peek by id, and the next ready job (priority 5 beats the default).
    let text = s.ok(&["peek", &first.to_string()]);
    assert_eq!(text, format!("job {first}, 5 bytes:\nhello\n"));
    let ready = s.json(&["peek", "--ready", "--queue", "q", "--json"]);
    assert_eq!(ready["id"].as_u64(), Some(second));
    assert_eq!(ready["body"], "from\nstdin");
    assert_eq!(ready["state"], "ready");
    let delayed = s.json(&["peek", "--delayed", "-q", "q", "--json"]);
    assert_eq!(delayed["body"], "later");
    let out = s.spindle(&["peek", "--buried", "-q", "q"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no buried job in q"));
    let out = s.spindle(&["peek", "999999"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job 999999"));
}

#[test]
fn kick_pause_and_clear() {
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("k").unwrap();
    c.watch("k").unwrap();
    let a = c.put(0, Duration::ZERO, TTR, b"a").unwrap();
    let b = c.put(0, Duration::ZERO, TTR, b"b").unwrap();
    for _ in 0..2 {
        let job = c.reserve().unwrap();
        c.bury(job.id, 0).unwrap();
    }
    let delayed = c.put(0, Duration::from_secs(100), TTR, b"d").unwrap();

    assert_eq!(s.ok(&["kick", "--queue", "k", "1"]), "kicked 1 job in k\n");
    assert_eq!(c.stats_job(a).unwrap().get("state"), Some("ready"));
    assert_eq!(c.stats_job(b).unwrap().get("state"), Some("buried"));
    assert_eq!(s.ok(&["kick", "--id", &delayed.to_string()]), format!("kicked job {delayed}\n"));
    assert_eq!(c.stats_job(delayed).unwrap().get("state"), Some("ready"));
    let out = s.spindle(&["kick", "--id", &delayed.to_string()]);
    assert!(!out.status.success(), "a ready job cannot be kicked: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", describe(&out));

    assert_eq!(s.ok(&["pause", "--queue", "k", "100"]), "paused k for 100 s\n");
    assert_eq!(s.json(&["stats", "-q", "k", "--json"])["pause"], 100);
    assert_eq!(c.reserve_with_timeout(Duration::ZERO).unwrap(), None, "paused");
    let out = s.spindle(&["pause", "--queue", "nosuch", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nosuch\" does not exist"));

    // Two ready (a, delayed) and one buried (b).
    let out = s.json(&["clear", "--queue", "k", "--state", "buried", "--json"]);
    assert_eq!(out["cleared"], 1);
    assert_eq!(s.ok(&["clear", "--queue", "k", "--state", "all"]), "cleared 2 jobs from k\n");
    assert_eq!(c.stats_tube("k").unwrap().get_u64("current-jobs-ready"), Some(0));
    let out = s.spindle(&["clear", "--queue", "k", "--state", "reserved"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be cleared"));
}

#[test]
fn work_runs_the_command_per_job_and_deletes_on_success() {
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("q").unwrap();
    for body in ["one\n", "two\n", "three\n"] {
        c.put(0, Duration::ZERO, TTR, body.as_bytes()).unwrap();
    }
    let file = s.dir.path().join("out.txt");
    let script = format!("cat >> '{}'", file.display());
    let out = s.spindle(&["work", "--queue", "q", "--exit-when-empty", "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one\ntwo\nthree\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 jobs done, 0 failed"));
    let t = c.stats_tube("q").unwrap();
    assert_eq!(t.get_u64("current-jobs-ready"), Some(0));
    assert_eq!(t.get_u64("current-jobs-reserved"), Some(0));
    assert_eq!(t.get_u64("cmd-delete"), Some(3));
}

#[test]
fn work_stops_after_max_jobs_across_slots_and_passes_the_job_id() {
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("m").unwrap();
    for i in 0..5 {
        c.put(0, Duration::ZERO, TTR, format!("{i}").as_bytes()).unwrap();
    }
    let dir = s.dir.path().join("ids");
    std::fs::create_dir(&dir).unwrap();
    let script = format!("cat > '{}'/$SPINDLE_JOB_ID.$SPINDLE_QUEUE", dir.display());
    let args =
        ["work", "-q", "m", "--concurrency", "2", "--max-jobs", "3", "--", "sh", "-c", &script];
    let out = s.spindle(&args);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    assert_eq!(c.stats_tube("m").unwrap().get_u64("current-jobs-ready"), Some(2));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (id, queue) = name.split_once('.').unwrap();
        assert_eq!(queue, "m");
        let body = std::fs::read(&path).unwrap();
        assert!(c.peek(id.parse().unwrap()).unwrap().is_none(), "job {id} deleted");
        assert_eq!(body.len(), 1);
    }
}

#[test]
fn work_fails_jobs_whose_command_exits_non_zero() {
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("f").unwrap();
    let id = c.put(7, Duration::ZERO, TTR, b"x").unwrap();
    let script = "echo 'something broke' >&2; exit 3";
    let out = s.spindle(&["work", "-q", "f", "--exit-when-empty", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 jobs done, 1 failed"), "{stderr}");
    assert!(stderr.contains("something broke"), "the command's stderr is passed on: {stderr}");
    // Retried later: back off in `delayed`, priority kept.
    let st = c.stats_job(id).unwrap();
    assert_eq!(
        (st.get("state"), st.get("pri"), st.get("reserves")),
        (Some("delayed"), Some("7"), Some("1"))
    );
    if c.supports_extensions().unwrap() {
        let ext = c.stats_job_ext(id).unwrap();
        assert!(ext.get("last-error").unwrap().contains("something broke"), "{ext:?}");
    } else {
        assert_eq!(st.get("releases"), Some("1"));
        // With --max-attempts 2 the second failure buries it.
        c.kick_job(id).unwrap();
        let args = ["work", "-q", "f", "--exit-when-empty", "--max-attempts", "2", "--", "false"];
        let out = s.spindle(&args);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(c.stats_job(id).unwrap().get("state"), Some("buried"));
    }
}

#[test]
fn work_touches_jobs_that_run_longer_than_half_their_ttr() {
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("slow").unwrap();
    let id = c.put(0, Duration::ZERO, Duration::from_secs(1), b"x").unwrap();
    // Runs 1.6 s against a 1 s lease: only touching (--touch) keeps it.
    let out =
        s.spindle(&["work", "-q", "slow", "--max-jobs", "1", "--touch", "--", "sleep", "1.6"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 job done, 0 failed"),
        "{}",
        describe(&out)
    );
    assert_eq!(c.peek(id).unwrap(), None);
    let st = c.stats().unwrap();
    assert!(st.get_u64("cmd-touch").unwrap() >= 2, "{st:?}");
    assert_eq!(st.get_u64("job-timeouts"), Some(0));
}

#[test]
fn top_once_shows_every_queue() {
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("jobs").unwrap();
    c.put(0, Duration::ZERO, TTR, b"x").unwrap();
    let text = s.ok(&["top", "--once"]);
    assert!(text.contains("QUEUE") && text.contains("WAIT p99"), "{text}");
    let row = text.lines().find(|l| l.starts_with("jobs ")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row.split_whitespace().nth(1), Some("1"), "{row}");
    let frame = s.json(&["top", "--once", "--json"]);
    let q = frame.as_array().unwrap().iter().find(|q| q["name"] == "jobs").unwrap();
    assert_eq!(q["ready"], 1);
    assert!(q["put_rate"].is_null(), "one frame has no rate");
}

#[test]
fn errors_name_the_socket_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("--socket")
        .arg(&sock)
        .arg("queues")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&sock.display().to_string()), "{stderr}");
    assert!(stderr.contains("spindled --socket"), "{stderr}");
    // The environment variable names the socket too.
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .env("SPINDLE_SOCKET", &sock)
        .args(["put", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&sock.display().to_string()));
    assert!(Path::new(env!("CARGO_BIN_EXE_spindle")).exists());
}

/// A server that another local user started: it runs as `nobody` (uid
/// 65534) on a socket in a fresh world-writable sticky directory, as
/// anyone could bind `/tmp/spindled-0.sock` before root's spindled does.
/// Only root can start a process as another user: elsewhere `start`
/// prints a notice and returns `None` (CI runs as root).
struct Squatter {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Squatter {
    fn start() -> Option<Squatter> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            eprintln!(
                "notice: not root, so no server can be started as a second user; \
                 the foreign-socket test is skipped (CI runs it as root)"
            );
            return None;
        }
        let setpriv = Command::new("setpriv").arg("--version").output();
        assert!(
            setpriv.is_ok_and(|o| o.status.success()),
            "this test runs a server as `nobody` with setpriv: `apt-get install -y util-linux`"
        );
        let dir = tempfile::Builder::new().prefix("squat").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        // `nobody` may not be able to reach the build directory: run a copy.
        let mut bin = std::env::var("SPINDLE_TEST_SERVER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_spindled").into());
        if bin.contains('/') {
            let copy = dir.path().join("server");
            std::fs::copy(&bin, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            bin = copy.to_str().unwrap().to_string();
        }
        let sock = dir.path().join("spindled-0.sock");
        let spawn = || {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin, "-l"])
                .arg(format!("unix:{}", sock.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut sq = Squatter { child: spawn(), sock: sock.clone(), _dir: dir };
        let deadline = Instant::now() + START_LIMIT;
        while std::os::unix::net::UnixStream::connect(&sq.sock).is_err() {
            if let Some(status) = sq.child.try_wait().unwrap() {
                // 126: setpriv could not exec the copy: "text file busy",
                // while another test's child, forked before the copy's
                // descriptor was closed, still held it open until its own
                // exec. That child's exec closes it: try again.
                if status.code() == Some(126) && Instant::now() < deadline {
                    sq.child = spawn();
                    continue;
                }
                panic!("the squatter `{bin}` exited with {status} before listening");
            }
            assert!(Instant::now() < deadline, "the squatter did not listen");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::metadata(&sq.sock).unwrap().uid(), 65534);
        Some(sq)
    }

    /// Total jobs the squatter has received, asked with the override.
    fn total_jobs(&self) -> u64 {
        let opts = ConnectOptions::default().allow_foreign_socket(true);
        let mut c = Client::connect_unix_with(&self.sock, opts).unwrap();
        c.stats().unwrap().get_u64("total-jobs").unwrap()
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spindle_at(sock: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_socket_another_user_bound_gets_nothing_unless_allowed() {
    let Some(sq) = Squatter::start() else { return };
    for args in [&["put", "secret"][..], &["stats"], &["work", "--", "true"]] {
        let out = spindle_at(&sq.sock, args);
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&sq.sock.display().to_string()), "{err}");
        assert!(err.contains("uid 65534 (nobody)"), "{err}");
        assert!(err.contains("--allow-foreign-socket"), "{err}");
    }
    // The environment's socket (as the default under /tmp would be) too.
    let out = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .env("SPINDLE_SOCKET", &sq.sock)
        .args(["put", "secret"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to uid 65534"));
    assert_eq!(sq.total_jobs(), 0, "the squatter received a job");
    // Named explicitly, it is used.
    let out = spindle_at(&sq.sock, &["--allow-foreign-socket", "put", "trusted"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(sq.total_jobs(), 1);
}

#[test]
fn a_socket_in_a_directory_anyone_may_write_is_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let dir = server.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = server.spindle(&["put", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may be written by any user") && err.contains("0777"), "{err}");
    assert!(err.contains("--allow-foreign-socket"), "{err}");
    let trusting = ConnectOptions::default().allow_foreign_socket(true);
    let mut c = Client::connect_unix_with(&server.sock, trusting).unwrap();
    assert_eq!(c.stats().unwrap().get_u64("total-jobs"), Some(0));
    server.ok(&["put", "--allow-foreign-socket", "x"]);
    // With the sticky bit (like /tmp) nobody can replace another's socket.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    server.ok(&["put", "y"]);
    assert_eq!(c.stats().unwrap().get_u64("total-jobs"), Some(2));
}

/// `put` reads stdin only up to the server's max-job-size: an endless
/// input is refused after about that many bytes, not read to its end.
#[test]
fn put_stops_reading_stdin_at_the_size_limit() {
    use std::io::Write;
    let s = Server::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("--socket")
        .arg(&s.sock)
        .args(["put", "-q", "big"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    // An endless producer: writes until the reader closes the pipe (a
    // bound keeps a broken CLI from hanging the test).
    let writer = std::thread::spawn(move || {
        let chunk = [b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < 1 << 30 && pipe.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    let out = child.wait_with_output().unwrap();
    let sent = writer.join().unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max-job-size (65535 bytes)"), "{err}");
    // The limit plus what the pipe buffered: far below the gigabyte.
    assert!(sent < 8 << 20, "spindle put read {sent} bytes of an endless stdin");
    assert!(s.client().stats_tube("big").is_err(), "nothing was put");
    // At the limit exactly, it is put.
    let body = vec![b'y'; 65_535];
    let out = s.spindle_with_stdin(&["put", "-q", "big"], Some(&body));
    assert!(out.status.success(), "{}", describe(&out));
}

/// `kick`'s usage line is the same in its help and in its errors.
#[test]
fn kick_usage_matches_its_help() {
    let s = Server::start();
    let usage = |text: &str| -> String {
        let from = text.find("Usage:").unwrap_or_else(|| panic!("no usage in {text}"));
        text[from..].split("\n\n").next().unwrap().to_string()
    };
    let help = s.ok(&["kick", "--help"]);
    let out = s.spindle(&["kick"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(usage(&help), usage(&err));
    assert!(usage(&help).contains("spindle kick --id ID"), "{help}");
}

/// Without --touch a command past its job's TTR is stopped, TERM then
/// KILL after --grace (here it ignores TERM, and so does the child it
/// started: its whole process group goes), and the attempt fails.
#[test]
fn work_stops_a_command_past_its_ttr_and_fails_the_attempt() {
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("stuck").unwrap();
    let id = c.put(0, Duration::ZERO, Duration::from_secs(2), b"x").unwrap();
    let out = s.spindle(&[
        "work",
        "-q",
        "stuck",
        "--max-jobs",
        "1",
        "--grace",
        "0.5",
        "--",
        "sh",
        "-c",
        "trap '' TERM; sleep 600",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0 jobs done, 1 failed"), "{}", describe(&out));
    let st = c.stats_job(id).unwrap();
    assert_ne!(st.get("state"), Some("reserved"), "{st:?}");
    assert_eq!(c.stats().unwrap().get_u64("job-timeouts"), Some(0), "failed by us, not timed out");
    if let Ok(Some(reason)) = c.stats_job_ext(id).map(|m| m.get("last-error").map(str::to_string)) {
        assert!(reason.contains("time-to-run") && reason.contains("KILL"), "{reason}");
    }
}

/// The first Ctrl-C says what the worker waits for; the second kills the
/// command and puts its job back to ready.
#[test]
fn work_ctrl_c_waits_then_kills_and_returns_the_job() {
    use std::io::{BufRead, BufReader};
    let s = Server::start();
    let mut c = s.client();
    c.use_tube("long").unwrap();
    let id = c.put(0, Duration::ZERO, Duration::from_secs(600), b"x").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spindle"))
        .arg("--socket")
        .arg(&s.sock)
        .args(["work", "-q", "long", "--", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let deadline = Instant::now() + START_LIMIT;
    while c.stats_job(id).unwrap().get("state") != Some("reserved") {
        assert!(Instant::now() < deadline, "the job was never reserved");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    let int = || {
        let st = Command::new("kill").args(["-s", "INT", &pid]).status();
        assert!(st.unwrap().success());
    };
    int();
    let said = rx.recv_timeout(START_LIMIT).expect("a line after the first Ctrl-C");
    assert!(said.contains(&format!("job {id}")) && said.contains("Ctrl-C again"), "{said}");
    assert!(child.try_wait().unwrap().is_none(), "the first Ctrl-C waits for the job");
    int();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(c.stats_job(id).unwrap().get("state"), Some("ready"));
}
