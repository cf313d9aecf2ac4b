//! [`Node`]: one process's handle on the shared queues.
//!
//! 1. [`Node::connect`] starts a dedicated thread running a single-threaded
//!    tokio runtime; the NATS connection, its reconnects, every queue's pull
//!    consumer and the local holds of delayed jobs run there.
//! 2. It reads the server's version from INFO and gates each feature on it
//!    ([`crate::Features`]).
//! 3. [`Node::declare`] creates (or finds) the namespace's streams and the
//!    queue's consumer, reads each back and verifies every setting
//!    (`setup.rs`).
//! 4. Callers (shards, worker threads, the CLI) never run the runtime: their
//!    calls hand futures to it and wait for the answer; leases reach them
//!    through a bounded channel per [`crate::Worker`].

use crate::error::Error;
use crate::names::{self, Names};
use crate::put::IdSource;
use crate::queue::QueueConfig;
use crate::version::{Features, ServerVersion};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How a node connects (see [`Node::connect`]).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) name: Option<String>,
    pub(crate) max_payload: usize,
    pub(crate) duplicate_window: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) prefetch: usize,
    pub(crate) hold_dir: Option<std::path::PathBuf>,
}

impl NodeOptions {
    /// Options for the server at `url` (`nats://HOST:PORT`), namespace
    /// `spindle`, payloads up to 64 KiB, a 2-minute duplicate window.
    pub fn new(url: impl Into<String>) -> Self {
        NodeOptions {
            url: url.into(),
            namespace: "spindle".to_owned(),
            name: None,
            max_payload: 64 << 10,
            duplicate_window: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            prefetch: 64,
            hold_dir: None,
        }
    }

    /// Where delayed jobs this node holds until due are logged (servers
    /// without `@at` schedules, before 2.12): a put returns `Held` once its
    /// job is synced there, and a node connecting with the same directory
    /// (after a crash) publishes every job held and not yet published.
    /// Without it, held jobs live only in memory. One node per directory.
    pub fn hold_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.hold_dir = Some(dir.into());
        self
    }

    /// Leases each [`Node::work`] thread keeps ready (default 64): larger
    /// pulls fewer times; each waiting lease's TTR runs meanwhile, so keep
    /// it well under TTR ÷ the jobs' run time.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// The namespace: one work-queue stream `SPINDLE_<ns>` (and its dead
    /// letters, `SPINDLE_<ns>_DEAD`) holds all its queues. 1-32 bytes of
    /// `A-Za-z0-9_-`.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// The client name the server shows for this node.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Largest payload accepted (default 64 KiB, DESIGN.md's default).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How long the server remembers a unique key (`Nats-Msg-Id`) to refuse
    /// a second job with it (default 2 minutes; the stream's duplicate
    /// window, set when the stream is created).
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }

    /// How long the first connection may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
}

/// A node: this process's connection to the shared queues. Cheap to clone;
/// the runtime thread stops when the last clone is dropped or on
/// [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("url", &self.inner.url)
            .field("server", &self.inner.version)
            .field("namespace", &self.inner.names.stream())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) rt: Handle,
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) names: Names,
    pub(crate) url: String,
    pub(crate) version: ServerVersion,
    pub(crate) features: Features,
    pub(crate) max_payload: usize,
    pub(crate) duplicate_window: Duration,
    pub(crate) prefetch: usize,
    pub(crate) queues: Mutex<HashMap<String, Arc<QueueConfig>>>,
    /// Priority bands of queues this node puts to without declaring them,
    /// as found on the server (`setup::find_bands`).
    pub(crate) found_bands: Mutex<HashMap<String, Arc<Vec<u32>>>>,
    pub(crate) streams_ready: Mutex<bool>,
    pub(crate) ids: IdSource,
    /// Delayed jobs this node holds until due (old servers only).
    pub(crate) held: Arc<AtomicUsize>,
    /// Where they are logged, if anywhere.
    pub(crate) hold_log: Option<Arc<crate::hold::HoldLog>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Set once the runtime is stopping: workers and leases then answer
    /// `Error::Closed` instead of waiting on it.
    pub(crate) stopped: Arc<std::sync::atomic::AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_runtime();
    }
}

impl Inner {
    fn stop_runtime(&self) {
        self.stopped.store(true, Ordering::Release);
        let stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// Runs `fut` to completion from a caller's thread (never the runtime's
    /// own): the runtime thread drives the connection meanwhile.
    pub(crate) fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// The subject a job of `queue` with priority `pri` is published to:
    /// its band's. The bands come from this node's declaration, else from
    /// the server (once per queue). A queue no node has declared yet is
    /// taken as one band, except for a job given a priority, which is
    /// refused ([`Error::NoBands`]) rather than put in a band by guess.
    pub(crate) async fn target(&self, queue: &str, pri: Option<u32>) -> Result<String, Error> {
        let at = pri.unwrap_or(crate::queue::DEFAULT_PRIORITY);
        let declared = {
            let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            queues.get(queue).map(|cfg| crate::queue::band_of(&cfg.bands, at))
        };
        let band = match declared {
            Some(b) => b,
            None => {
                let cached = {
                    let found = self.found_bands.lock().unwrap_or_else(PoisonError::into_inner);
                    found.get(queue).cloned()
                };
                let bands = match cached {
                    Some(b) => b,
                    None => match crate::setup::find_bands(self, queue).await? {
                        Some(b) => {
                            let b = Arc::new(b);
                            self.found_bands
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(queue.to_owned(), b.clone());
                            b
                        }
                        None if pri.is_some() => return Err(Error::NoBands(queue.to_owned())),
                        None => Arc::new(Vec::new()),
                    },
                };
                crate::queue::band_of(&bands, at)
            }
        };
        Ok(self.names.band_subject(queue, band))
    }

    pub(crate) fn queue(&self, queue: &str) -> Result<Arc<QueueConfig>, Error> {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues.get(queue).cloned().ok_or_else(|| Error::Undeclared(queue.to_owned()))
    }
}

impl Node {
    /// Connects to the server, reads its version and starts the runtime
    /// thread. Fails with [`Error::Connect`] if the server does not answer
    /// within the connect timeout, and [`Error::NoJetStream`] without `-js`.
    pub fn connect(opts: NodeOptions) -> Result<Node, Error> {
        names::check_namespace(&opts.namespace)?;
        let (hold_log, pending) = match &opts.hold_dir {
            Some(dir) => {
                let (log, pending) = crate::hold::HoldLog::open(dir)?;
                (Some(Arc::new(log)), pending)
            }
            None => (None, Vec::new()),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let handle = rt.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("spindle-jetstream".to_owned())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                // Pull consumers and holds still pending are dropped here.
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .map_err(Error::Runtime)?;
        let mut copts = async_nats::ConnectOptions::new()
            .connection_timeout(opts.connect_timeout)
            // Reconnect forever: a restarted server is waited for, and
            // publishes and acks made meanwhile are buffered or fail.
            .max_reconnects(None::<usize>);
        if let Some(name) = &opts.name {
            copts = copts.name(name);
        }
        let url = opts.url.clone();
        let connected = handle.block_on(async {
            tokio::time::timeout(opts.connect_timeout, copts.connect(url.as_str())).await
        });
        let client = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                drop(stop_tx);
                let _ = thread.join();
                return Err(Error::Connect { url, reason: e.to_string() });
            }
            Err(_) => {
                drop(stop_tx);
                let _ = thread.join();
                return Err(Error::Connect {
                    url,
                    reason: format!("no answer within {:?}", opts.connect_timeout),
                });
            }
        };
        let info = client.server_info();
        let version = match ServerVersion::parse(&info.version) {
            Some(v) => v,
            None => {
                drop(stop_tx);
                let _ = thread.join();
                return Err(Error::Version(info.version));
            }
        };
        // The context spawns its PubAck task: on the runtime thread.
        let js = {
            let _on_runtime = handle.enter();
            async_nats::jetstream::new(client.clone())
        };
        let inner = Inner {
            rt: handle,
            client,
            js,
            names: Names::new(&opts.namespace),
            url: opts.url,
            version,
            features: version.features(),
            max_payload: opts.max_payload,
            duplicate_window: opts.duplicate_window,
            prefetch: opts.prefetch,
            queues: Mutex::new(HashMap::new()),
            found_bands: Mutex::new(HashMap::new()),
            streams_ready: Mutex::new(false),
            ids: IdSource::new(),
            held: Arc::new(AtomicUsize::new(0)),
            hold_log,
            stop: Mutex::new(Some(stop_tx)),
            stopped: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            thread: Mutex::new(Some(thread)),
        };
        if !info.jetstream {
            let url = inner.url.clone();
            drop(inner);
            return Err(Error::NoJetStream { url, version });
        }
        tracing::info!(url = %inner.url, server = %version, "connected to NATS JetStream");
        if !pending.is_empty() {
            tracing::info!(jobs = pending.len(), "publishing delayed jobs held before a restart");
        }
        for h in pending {
            crate::put::hold_again(&inner, h);
        }
        Ok(Node { inner: Arc::new(inner) })
    }

    /// The server's version, from its INFO.
    pub fn server_version(&self) -> ServerVersion {
        self.inner.version
    }

    /// The features used on this server.
    pub fn features(&self) -> Features {
        self.inner.features
    }

    /// Delayed jobs this node holds until they are due (only on servers
    /// without `@at` schedules; if this process dies they are lost, unless
    /// [`NodeOptions::hold_dir`] logs them for a node restarted on it).
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// Declares a distributed queue on this node: creates the namespace's
    /// streams and the queue's durable consumer if missing, reads them back
    /// and checks every setting. Every node using the queue must declare it
    /// with the same [`QueueConfig`] (else [`Error::SettingMismatch`]).
    pub fn declare(&self, queue: &str, cfg: QueueConfig) -> Result<(), Error> {
        names::check_queue(queue)?;
        cfg.check()?;
        self.inner.block_on(crate::setup::declare(&self.inner, queue, &cfg))?;
        let mut queues = self.inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues.insert(queue.to_owned(), Arc::new(cfg));
        Ok(())
    }

    /// Flushes what this node has published and, if this is the last clone
    /// of the node, stops its runtime thread (else the last clone's drop
    /// does). Leases not yet settled are redelivered to other nodes after
    /// their TTR; delayed jobs still held here are published by the next node on
    /// the same [`NodeOptions::hold_dir`], or else lost (counted in the log).
    pub fn shutdown(self) {
        let held = self.held();
        if held > 0 {
            tracing::warn!(held, "JetStream node shut down holding delayed jobs (old server)");
        }
        let _ = self.inner.block_on(self.inner.client.flush());
        if Arc::strong_count(&self.inner) == 1 {
            self.inner.stop_runtime();
        }
    }
}
