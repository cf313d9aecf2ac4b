//! # spindle-web
//!
//! `spindle web`: a page, a JSON API and a Prometheus `/metrics` endpoint
//! for people who run spindled. It is a separate process that talks to the
//! daemon through [`spindle_client`] like any other client, so the HTTP
//! side never touches the job table; it binds loopback unless told
//! otherwise. See `docs/web.md`.
//!
//! * `http.rs`: tiny_http workers, response headers; `assets.rs`: the
//!   embedded page.
//! * `api.rs`: the routes and their JSON; `guard.rs`: the Host, token and
//!   cross-site checks; `daemon.rs`: one reconnecting client per thread.
//! * `history.rs`: the sampler behind the chart and the rates.

mod api;
mod assets;
mod daemon;
mod error;
mod guard;
mod history;
mod http;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use error::WebError;
use spindle_client::{Client, ConnectOptions};

/// How `spindle web` runs.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The daemon's address (a Unix socket path, or HOST:PORT).
    pub socket: String,
    /// How to connect to it.
    pub connect: ConnectOptions,
    /// Where to listen: `IP:PORT` (port 0 picks a free one).
    pub listen: String,
    /// The token actions need; None makes a random one (unless read-only).
    pub token: Option<String>,
    /// Refuse every action.
    pub read_only: bool,
    /// How often the sampler reads the daemon's counters.
    pub sample_every: Duration,
    /// Threads answering HTTP requests.
    pub threads: usize,
}

impl WebConfig {
    /// Defaults: loopback port 8425, a random token, a sample per second,
    /// four threads.
    pub fn new(socket: impl Into<String>) -> WebConfig {
        WebConfig {
            socket: socket.into(),
            connect: ConnectOptions::default(),
            listen: DEFAULT_LISTEN.to_string(),
            token: None,
            read_only: false,
            sample_every: Duration::from_secs(1),
            threads: 4,
        }
    }
}

/// The default `--listen`: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8425";

/// A running `spindle web`.
pub struct Web {
    addr: SocketAddr,
    token: Option<String>,
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    sampler: Option<(Sender<()>, JoinHandle<()>)>,
}

fn random_token() -> Result<String, WebError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(WebError::Token)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Web {
    /// Checks the daemon answers, binds `listen`, and starts the sampler
    /// and the HTTP threads.
    pub fn start(cfg: WebConfig) -> Result<Web, WebError> {
        let want: SocketAddr =
            cfg.listen.parse().map_err(|_| WebError::BadListen(cfg.listen.clone()))?;
        let daemon_err = |source| WebError::Daemon { addr: cfg.socket.clone(), source };
        Client::connect_with(&cfg.socket, cfg.connect).map_err(daemon_err)?;
        let token = match (&cfg.token, cfg.read_only) {
            (_, true) => None,
            (Some(t), false) => Some(t.clone()),
            (None, false) => Some(random_token()?),
        };
        let server = tiny_http::Server::http(want)
            .map_err(|e| WebError::Bind { addr: cfg.listen.clone(), reason: e.to_string() })?;
        let addr = server.server_addr().to_ip().unwrap_or(want);
        let server = Arc::new(server);
        let history: history::SharedHistory = Arc::new(Mutex::new(history::History::default()));

        // One sample now, so the first page load has rates' starting point.
        let mut sd = daemon::Daemon::new(&cfg.socket, cfg.connect);
        if let Ok(s) = history::take(&mut sd) {
            history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(s);
        }
        let (stop_tx, stop_rx) = mpsc::channel();
        let h = Arc::clone(&history);
        let every = cfg.sample_every;
        let sampler = std::thread::Builder::new()
            .name("web-sampler".into())
            .spawn(move || history::run(sd, h, every, stop_rx))
            .map_err(WebError::Thread)?;

        let shared = Arc::new(http::Shared {
            guard: guard::Guard::new(token.clone(), cfg.read_only, addr),
            history,
        });
        let mut workers = Vec::with_capacity(cfg.threads.max(1));
        for i in 0..cfg.threads.max(1) {
            let server = Arc::clone(&server);
            let shared = Arc::clone(&shared);
            let mut d = daemon::Daemon::new(&cfg.socket, cfg.connect);
            let w = std::thread::Builder::new().name(format!("web-{i}")).spawn(move || {
                // recv fails once the server is unblocked at stop.
                while let Ok(req) = server.recv() {
                    http::serve(req, &shared, &mut d);
                }
            });
            workers.push(w.map_err(WebError::Thread)?);
        }
        Ok(Web { addr, token, server, workers, sampler: Some((stop_tx, sampler)) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The action token (None when read-only).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The page's URL; with a token, in the fragment (`#token=`), which the
    /// page keeps for the tab and removes from the address bar; browsers
    /// never send a fragment to the server.
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/#token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    /// Blocks while it serves (until the process ends).
    pub fn wait(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// Stops serving and joins its threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some((tx, t)) = self.sampler.take() {
            let _ = tx.send(());
            let _ = t.join();
        }
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.shutdown();
    }
}
