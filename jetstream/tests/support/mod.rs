//! Finding a real nats-server for the JetStream tests.
//!
//! - `SPINDLE_TEST_NATS_URL=nats://127.0.0.1:PORT`: a running server (CI
//!   starts one per version). Tests use it with a namespace of their own
//!   and delete their streams when done.
//! - `SPINDLE_TEST_NATS_SERVER=/path/to/nats-server`: a binary. Tests that
//!   restart the server start their own from it (free port, temp store);
//!   without a URL, every test does.
//!
//! With either set, a test that cannot reach its server fails loudly. With
//! neither, each test prints why it skips and passes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A guard against hanging, never a synchronisation device.
pub const START_LIMIT: Duration = Duration::from_secs(20);

/// Where the test's server is.
pub struct Nats {
    pub url: String,
    /// The namespace this test owns on it.
    pub ns: String,
    own: Option<OwnServer>,
}

/// A server this test started (and stops when dropped).
pub struct OwnServer {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    mon: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn healthy(mon: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", mon)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}

impl OwnServer {
    fn start(bin: PathBuf) -> OwnServer {
        let dir = tempfile::Builder::new().prefix("spindle-nats").tempdir().unwrap();
        let mut s = OwnServer { bin, child: None, port: free_port(), mon: free_port(), dir };
        s.launch();
        s
    }

    /// Starts the server process (again, on the same ports and store).
    pub fn launch(&mut self) {
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1"])
            .arg("-sd")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-m", &self.mon.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e} (SPINDLE_TEST_NATS_SERVER)", self.bin.display())
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        while !healthy(self.mon) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {st} before /healthz answered", self.bin.display());
            }
            assert!(Instant::now() < deadline, "{} never answered /healthz", self.bin.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server (SIGKILL: what a crash looks like) and waits.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn namespace(test: &str) -> String {
    let mut ns: String =
        test.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(16).collect();
    ns.push_str(&format!(
        "_{}_{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    ns
}

fn skip(test: &str, why: &str) {
    // Straight to stderr: libtest captures print! of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// The server for `test`, or `None` (with a printed reason) when no server
/// is configured.
pub fn nats(test: &str) -> Option<Nats> {
    if let Ok(url) = std::env::var("SPINDLE_TEST_NATS_URL") {
        return Some(Nats { url, ns: namespace(test), own: None });
    }
    own_nats(test)
}

/// A server of the test's own (it can be killed and restarted), or `None`
/// with a printed reason when no binary is configured.
pub fn own_nats(test: &str) -> Option<Nats> {
    match std::env::var("SPINDLE_TEST_NATS_SERVER") {
        Ok(bin) => {
            let own = OwnServer::start(PathBuf::from(bin));
            let url = format!("nats://127.0.0.1:{}", own.port);
            Some(Nats { url, ns: namespace(test), own: Some(own) })
        }
        Err(_) => {
            skip(
                test,
                "no nats-server configured: set SPINDLE_TEST_NATS_SERVER=/path/to/nats-server \
                 (and/or SPINDLE_TEST_NATS_URL=nats://HOST:PORT) to run it",
            );
            None
        }
    }
}

impl Nats {
    pub fn server(&mut self) -> &mut OwnServer {
        self.own.as_mut().unwrap()
    }

    pub fn options(&self) -> spindle_jetstream::NodeOptions {
        spindle_jetstream::NodeOptions::new(&self.url).namespace(&self.ns)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if self.own.is_some() || std::thread::panicking() {
            return;
        }
        // Delete this test's streams from the shared server.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let url = self.url.clone();
        let ns = self.ns.clone();
        rt.block_on(async move {
            if let Ok(c) = async_nats::connect(url).await {
                let js = async_nats::jetstream::new(c);
                let _ = js.delete_stream(format!("SPINDLE_{ns}")).await;
                let _ = js.delete_stream(format!("SPINDLE_{ns}_DEAD")).await;
            }
        });
    }
}

/// Polls `cond` until it holds or `limit` passes (then panics with `what`).
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
