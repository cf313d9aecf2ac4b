//! A nats-server for `spindle-bench cluster`: started on loopback with a
//! temporary store, ready once `GET /healthz` answers 200, killed when
//! dropped; or an existing server given by `--url`.

use crate::BoxResult;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server this run started.
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> BoxResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn healthy(mon: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", mon)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}

impl NatsServer {
    /// Starts `bin -js` on free loopback ports with a temporary store.
    pub fn start(bin: &str) -> BoxResult<NatsServer> {
        let dir = tempfile::Builder::new().prefix("spindle-bench-nats").tempdir()?;
        let (port, mon) = (free_port()?, free_port()?);
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-m", &mon.to_string()])
            .arg("-sd")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e} (give --server PATH)"))?;
        let mut server = NatsServer { url: format!("nats://127.0.0.1:{port}"), child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !healthy(mon) {
            if let Some(st) = server.child.try_wait()? {
                return Err(format!("{bin} exited with {st} before /healthz answered").into());
            }
            if Instant::now() > deadline {
                return Err(format!("{bin} never answered /healthz").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME: the same on every
/// process of this machine).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Open-loop schedule: calls `send(intended_ns_list)` with the jobs due by
/// now, `rate` per second for `seconds`, sleeping until the next is due.
/// Latency is then measured from each job's intended time, so a slow send
/// cannot hide its own delay (no coordinated omission).
pub fn open_loop(
    rate: u64,
    seconds: f64,
    mut send: impl FnMut(&[u64]) -> BoxResult<()>,
) -> BoxResult<u64> {
    let total = (rate as f64 * seconds) as u64;
    let interval = 1e9 / rate as f64;
    let start = now_ns() + 1_000_000;
    let mut next = 0u64;
    let mut due = Vec::new();
    while next < total {
        let now = now_ns();
        due.clear();
        while next < total && start + (next as f64 * interval) as u64 <= now {
            due.push(start + (next as f64 * interval) as u64);
            next += 1;
        }
        if due.is_empty() {
            let wait = (start + (next as f64 * interval) as u64).saturating_sub(now);
            std::thread::sleep(Duration::from_nanos(wait));
            continue;
        }
        send(&due)?;
    }
    Ok(total)
}
