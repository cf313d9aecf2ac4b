//! `spindle web` for the web tests (`#[path = "common/web.rs"] mod web;`):
//! starts the real CLI against a daemon's socket on a free loopback port
//! (`--listen 127.0.0.1:0`; it prints the address it bound), and an HTTP
//! agent that returns every status instead of failing on 4xx/5xx.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SPINDLE: &str = env!("CARGO_BIN_EXE_spindle");

/// A guard against hanging, never a synchronisation device.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A running `spindle web`, killed on drop.
pub struct WebProc {
    child: Child,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    /// The action token it printed (None with `--read-only`).
    pub token: Option<String>,
    /// The page URL it printed (with `#token=` unless read-only).
    pub page: String,
}

impl WebProc {
    /// `spindle --socket SOCK web --listen 127.0.0.1:0 EXTRA...`.
    pub fn start(sock: &Path, extra: &[&str]) -> WebProc {
        let mut child = Command::new(SPINDLE)
            .arg("--socket")
            .arg(sock)
            .args(["web", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("SPINDLE_WEB_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run spindle web");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let first = lines.next().expect("spindle web printed nothing").expect("read stdout");
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .trim_end_matches('/')
            .to_string();
        let second = lines.next().expect("a second line").expect("read stdout");
        let page = second
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map_or_else(|| format!("{base}/"), str::to_string);
        let token = page.split_once("#token=").map(|(_, t)| t.to_string());
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        WebProc { child, base, token, page }
    }

    /// GET `path`: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut r = agent().get(format!("{}{path}", self.base)).call().expect("GET");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().expect("body"))
    }

    /// GET `path` as JSON, which must answer 200.
    pub fn json(&self, path: &str) -> Value {
        let (s, b) = self.get(path);
        assert_eq!(s, 200, "GET {path}: {b}");
        serde_json::from_str(&b).expect("JSON")
    }

    /// POST `body` to `path` with the token and the page's own Origin.
    pub fn act(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut req = agent()
            .post(format!("{}{path}", self.base))
            .header("Origin", &self.base)
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("X-Spindle-Token", t);
        }
        let mut r = req.send(body.to_string()).expect("POST");
        let status = r.status().as_u16();
        (status, r.body_mut().read_json().unwrap_or(Value::Null))
    }
}

impl Drop for WebProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent that hands back 4xx/5xx responses instead of erring.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Polls `f` until it returns Some, failing with `what` after [`LIMIT`].
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
