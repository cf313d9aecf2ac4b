//! Distributed tubes: chosen tubes of this daemon live in NATS JetStream
//! (`spindle-jetstream`), so beanstalkd clients of several spindled
//! processes, on any machines, share one queue (`docs/jetstream.md`,
//! "spindled").
//!
//! A distributed tube is still a tube of the job table (it is used,
//! watched, listed and counted there), but it never holds a job: puts go to
//! the stream, and reserves are served with leases pulled from its durable
//! consumer. Nothing here waits on the network; the event loop hands work
//! to the node's runtime thread and hears back through a channel:
//!
//! 1. **put**: the put is handed over (`Node::put_then`); the connection
//!    waits, reading nothing more, until the receipt comes back as its
//!    reply (`INSERTED <id>`).
//! 2. **reserve**: the more urgent (by priority) of a ready job of the
//!    connection's local tubes and a lease on hand for one of its
//!    distributed tubes, the local job on a tie; else it waits
//!    in the table (which keeps its timeout and `DEADLINE_SOON`) *and* in
//!    each distributed tube's FIFO of waiters, and each tube's puller is
//!    told to keep as many leases on hand as it has waiters.
//! 3. When a lease arrives (the runtime thread wakes the loop), the tube's
//!    first waiter that still waits gets it, and its wait in the table
//!    ends. A waiter whose wait ended meanwhile (timed out, served by a
//!    local put, gone) is skipped. A lease nobody waits for any more is
//!    released at once, for any node.
//! 4. **delete, release, touch** settle the lease without waiting and
//!    reply at once; **bury** and **fail** need a round trip (the dead
//!    letter's publish), so their reply waits for it.
//! 5. A connection that closes releases the leases it holds, as beanstalkd
//!    returns its reserved jobs.
//!
//! A distributed job's id is its stream sequence plus [`ID_BASE`] (2^52),
//! so it never meets a local id and stays exact in a JSON number.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use spindle_jetstream::{Error, Lag, Lease, Node, NodeOptions, Puller, QueueConfig, Receipt};

use super::store::ConnId;
use super::JetStreamTubes;

/// Distributed job ids start here: stream sequence + `ID_BASE`.
pub(crate) const ID_BASE: u64 = 1 << 52;

/// A reply computed on the runtime thread, for a connection that waits.
pub(crate) struct Done {
    pub conn: ConnId,
    pub serial: u64,
    pub bytes: Vec<u8>,
}

/// A connection waiting for a lease of one distributed tube.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiter {
    pub conn: ConnId,
    pub serial: u64,
    /// Which of the connection's waits (a later `reserve` is a new one).
    pub wait: u64,
    /// It waits in `reserve-batch` (its reply is `RESERVED-BATCH`).
    pub batch: bool,
}

/// One distributed tube.
pub(crate) struct Tube {
    pub name: Box<str>,
    pub puller: Puller,
    pub waiters: VecDeque<Waiter>,
    /// The consumer's lag, read once a second (`stats-tube`).
    pub lag: Arc<Mutex<Option<Lag>>>,
}

/// A lease a connection holds.
pub(crate) struct Held {
    pub conn: ConnId,
    pub lease: Lease,
}

/// The daemon's distributed tubes and the node that serves them.
pub(crate) struct Dist {
    pub node: Node,
    pub url: String,
    pub tubes: Vec<Tube>,
    by_name: HashMap<Box<str>, usize>,
    pub held: HashMap<u64, Held>,
    pub done_tx: Sender<Done>,
    pub done_rx: Receiver<Done>,
    /// Wakes the event loop (from the runtime thread).
    pub wake: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dist").field("url", &self.url).field("held", &self.held.len()).finish()
    }
}

impl Dist {
    /// Connects, declares every tube (reading its stream and consumer
    /// back) and starts one puller per tube; `wake` wakes the event loop.
    /// With a data directory, delayed jobs that an old server (no `@at`)
    /// leaves to this node are logged in `DIR/jetstream/` until due.
    pub(crate) fn connect(
        cfg: &JetStreamTubes,
        max_payload: usize,
        data_dir: Option<&std::path::Path>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Dist, Error> {
        let mut opts = NodeOptions::new(cfg.url.clone())
            .namespace(cfg.namespace.clone())
            .name("spindled")
            .max_payload(max_payload);
        if let Some(dir) = data_dir {
            opts = opts.hold_dir(dir.join("jetstream"));
        }
        let node = Node::connect(opts)?;
        let qcfg = QueueConfig::default().ttr(cfg.ttr).max_attempts(cfg.max_attempts);
        let mut tubes = Vec::new();
        let mut by_name = HashMap::new();
        for name in &cfg.tubes {
            if by_name.contains_key(name.as_str()) {
                continue;
            }
            node.declare(name, qcfg.clone())?;
            let w = wake.clone();
            let puller = node.puller(name, move || w())?;
            by_name.insert(name.as_str().into(), tubes.len());
            tubes.push(Tube {
                name: name.as_str().into(),
                puller,
                waiters: VecDeque::new(),
                lag: Arc::new(Mutex::new(None)),
            });
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Ok(Dist {
            node,
            url: cfg.url.clone(),
            tubes,
            by_name,
            held: HashMap::new(),
            done_tx,
            done_rx,
            wake,
        })
    }

    /// The distributed tube called `name`, if it is one.
    pub(crate) fn tube(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Asks for every tube's lag (the answers land in `Tube::lag`).
    pub(crate) fn refresh_lag(&self) {
        for t in &self.tubes {
            let slot = t.lag.clone();
            self.node.lag_then(&t.name, move |r| {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = r.ok();
            });
        }
    }

    /// Tube `i`'s last lag reading and how many connections wait for it.
    pub(crate) fn tube_stats(&self, i: usize) -> Option<(Option<Lag>, usize)> {
        let t = self.tubes.get(i)?;
        let lag = *t.lag.lock().unwrap_or_else(PoisonError::into_inner);
        Some((lag, t.waiters.len()))
    }

    /// The most urgent priority on hand among `tubes` (the front of each
    /// tube's leases).
    pub(crate) fn best_on_hand(&self, tubes: &[usize]) -> Option<u32> {
        tubes.iter().filter_map(|&i| self.tubes.get(i)?.puller.front_priority()).min()
    }

    /// Takes the most urgent lease on hand among `tubes` (the first tube
    /// of a tie).
    pub(crate) fn take_best(&self, tubes: &[usize]) -> Option<Lease> {
        let mut best: Option<(usize, u32)> = None;
        for &i in tubes {
            let Some(p) = self.tubes.get(i).and_then(|t| t.puller.front_priority()) else {
                continue;
            };
            if best.is_none_or(|(_, b)| p < b) {
                best = Some((i, p));
            }
        }
        self.tubes.get(best?.0)?.puller.take()
    }

    /// Releases (at once, for any node) every lease `conn` holds.
    pub(crate) fn drop_conn(&mut self, conn: ConnId) {
        self.held.retain(|_, h| h.conn != conn);
    }

    /// The lease of distributed job `id` if `conn` holds it.
    pub(crate) fn take_held(&mut self, conn: ConnId, id: u64) -> Option<Lease> {
        match self.held.get(&id) {
            Some(h) if h.conn == conn => self.held.remove(&id).map(|h| h.lease),
            _ => None,
        }
    }

    /// Sends `bytes` as `conn`'s reply once the loop wakes.
    pub(crate) fn replier(&self, conn: ConnId, serial: u64) -> impl Fn(Vec<u8>) + Send + 'static {
        let tx = self.done_tx.clone();
        move |bytes| {
            let _ = tx.send(Done { conn, serial, bytes });
        }
    }
}

/// The reply to a put on a distributed tube. `local` is the id a delayed
/// job is announced with (it gets its stream sequence when due).
pub(crate) fn put_reply(r: Result<Receipt, Error>, unique: bool, local: u64) -> Vec<u8> {
    match r {
        Ok(Receipt::Queued { seq, .. }) => format!("INSERTED {}\r\n", seq + ID_BASE).into_bytes(),
        Ok(Receipt::Duplicate { seq, .. }) if unique => {
            format!("DUPLICATE {}\r\n", seq + ID_BASE).into_bytes()
        }
        Ok(Receipt::Duplicate { seq, .. }) => {
            format!("INSERTED {}\r\n", seq + ID_BASE).into_bytes()
        }
        Ok(Receipt::Scheduled { .. } | Receipt::Held { .. }) => {
            format!("INSERTED {local}\r\n").into_bytes()
        }
        Err(Error::TooLarge { .. }) => b"JOB_TOO_BIG\r\n".to_vec(),
        Err(e) => {
            tracing::warn!(error = %e, "a put to a distributed tube failed");
            b"INTERNAL_ERROR\r\n".to_vec()
        }
    }
}

/// `RESERVED <id> <bytes>` for a lease.
pub(crate) fn write_lease(w: &mut Vec<u8>, lease: &Lease) {
    use std::io::Write as _;
    let p = lease.payload();
    let _ = write!(w, "RESERVED {} {}\r\n", lease.id() + ID_BASE, p.len());
    w.extend_from_slice(p);
    w.extend_from_slice(b"\r\n");
}

/// A delay as the protocol gives it.
pub(crate) fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}
