//! The event loop: listeners, connections, timers, group commit. The steps
//! are listed in the module docs of `server`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token, Waker};
use spindle_wal::{FsStorage, RecoveryMode, SyncPolicy, Wal, WalOptions};

use crossbeam_channel::Receiver;

use super::conn::{Conn, Stream};
use super::ioloop::IoLoop;
use super::remote::{FromIo, Link, PollWaker, Remote, ToIo};
use super::store::{Log, Store, StoreConfig};
use super::{
    Listen, Recovery, ServerConfig, ServerError, ServerHandle, SyncMode, DRAIN, MAX_JOB_SIZE_LIMIT,
    RUN, STOP,
};
use spindle_park::Parker;

const WAKER: Token = Token(0);

/// The largest job body `-b` accepts: the WAL's largest record (16 MiB - 1,
/// `spindle_wal::MAX_PAYLOAD`) less room for the rest of a `Put` record and
/// a `fail` error text (`store.rs` keeps at most 4 KiB of it).
pub(crate) const MAX_LOGGED_JOB: u64 = spindle_wal::MAX_PAYLOAD - 64 * 1024;
/// Listener tokens are 1..FIRST_CONN; connection `i` is `FIRST_CONN + i`.
const FIRST_CONN: usize = 64;
/// Most event loops (`--io-loops`): one per core of a large machine.
pub(crate) const MAX_IO_LOOPS: usize = 256;

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// The I/O loops (`--io-loops` > 1) as the owner sees them.
struct Loops {
    links: Vec<Arc<Link<ToIo>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    rx: Receiver<FromIo>,
    /// Remote connection key -> connection slot.
    slots: std::collections::HashMap<u64, usize>,
    next_key: u64,
    /// Round-robin over the owner (0) and the I/O loops (1..).
    next: usize,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    store: Store,
    cfg: ServerConfig,
    flag: Arc<AtomicU8>,
    waker: Arc<Waker>,
    accept_retry: bool,
    /// This round's log write, or its `-f0` sync, failed: replies queued
    /// in it may acknowledge what is not in the log, and are not sent
    /// (their connections are closed). Cleared after the round.
    round_failed: bool,
    /// Wakes this loop when an I/O loop sends it something.
    parker: Arc<Parker<PollWaker>>,
    loops: Option<Loops>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("open", &self.open).finish_non_exhaustive()
    }
}

impl Server {
    /// Opens and recovers the data directory, then binds every listener.
    /// When this returns, clients can connect (they are served once
    /// [`run`](Server::run) starts).
    pub fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        if cfg.listen.is_empty() {
            return Err(ServerError::Config("nothing to listen on".into()));
        }
        if cfg.io_loops == 0 || cfg.io_loops > MAX_IO_LOOPS {
            return Err(ServerError::Config(format!(
                "{} event loops: choose 1 to {MAX_IO_LOOPS}",
                cfg.io_loops
            )));
        }
        if cfg.max_job_size > MAX_JOB_SIZE_LIMIT {
            return Err(ServerError::Config(format!(
                "max job size {} is over the limit of {MAX_JOB_SIZE_LIMIT} bytes",
                cfg.max_job_size
            )));
        }
        if cfg.data_dir.is_some() && u64::from(cfg.max_job_size) > MAX_LOGGED_JOB {
            return Err(ServerError::Config(format!(
                "max job size {} is over {MAX_LOGGED_JOB} bytes, the largest job the log \
                 (-b) can hold in one record; lower -z or run without -b",
                cfg.max_job_size
            )));
        }
        let now = Instant::now();
        let segment_size = cfg.segment_size.max(8192).div_ceil(4096) * 4096;
        let scfg = StoreConfig {
            max_job_size: cfg.max_job_size,
            max_jobs: cfg.max_jobs,
            max_bytes: cfg.max_bytes,
            segment_size,
            latency_target: cfg.latency_target,
            version: cfg.version.clone(),
        };
        // Refuse an occupied socket path before touching the data directory.
        for l in &cfg.listen {
            if let Listen::Unix(path) = l {
                check_socket_path(path)?;
            }
        }
        let mut dropped = None;
        let log = match &cfg.data_dir {
            None => None,
            Some(dir) => {
                // A record holds a whole job: make segments big enough.
                let need = (u64::from(cfg.max_job_size) + 4096).next_power_of_two() * 2;
                let opts = WalOptions {
                    shard: 0,
                    segment_size: segment_size.max(need),
                    sync: match cfg.sync {
                        SyncMode::Never => SyncPolicy::Never,
                        SyncMode::Interval(d) => SyncPolicy::Interval(d),
                        SyncMode::Always => SyncPolicy::Always,
                    },
                    recovery: match cfg.recovery {
                        Recovery::Truncate => RecoveryMode::Truncate,
                        Recovery::Strict => RecoveryMode::Strict,
                    },
                    prepare_ahead: 1,
                    access: cfg.data_access,
                };
                let wal_err = |source| ServerError::Wal { dir: dir.clone(), source };
                let storage = FsStorage::with_access(dir, cfg.data_access)
                    .map_err(wal_err)?
                    .with_prefault(cfg.log_prefault)
                    .with_write_method(cfg.log_write);
                let (wal, report) = Wal::open_with(Arc::new(storage), opts).map_err(wal_err)?;
                // The log opens on a full disk (its records can still be
                // read), but a daemon that cannot write its first segment
                // could log nothing: refuse to start.
                wal.ensure_room(0).map_err(wal_err)?;
                if let Some(t) = &report.truncated {
                    tracing::warn!(
                        dir = %dir.display(),
                        segment = t.segment,
                        offset = t.offset,
                        "damaged log tail cut off: {}",
                        t.reason
                    );
                }
                dropped = report.truncated.as_ref().map(|t| t.bytes_dropped);
                Some(Log::new(wal))
            }
        };
        let mut store = Store::new(scfg, log, now);
        store.input = super::budget::InputBudget::new(cfg.max_partial_bytes);
        let began = Instant::now();
        let rep = store.recover(now).map_err(|reason| ServerError::Recover {
            dir: cfg.data_dir.clone().unwrap_or_default(),
            reason,
        })?;
        if let Some(bytes) = dropped {
            // Ids in the cut may have been acknowledged: never reuse them.
            // A job takes at least 8 bytes of log (in a `PutBatch`, an empty
            // body's offset and length), so this skips at least as many ids
            // as the cut could hold.
            store.skip_ids(bytes / 8 + 1);
            if !store.mark_ids() {
                return Err(ServerError::Recover {
                    dir: cfg.data_dir.clone().unwrap_or_default(),
                    reason: "the log failed while recording the ids a cut tail held".into(),
                });
            }
        }
        if cfg.data_dir.is_some() {
            tracing::info!(
                "recovery done: {} jobs restored in {} ms (next id {})",
                rep.jobs,
                began.elapsed().as_millis(),
                store.next_id()
            );
        }
        if let Err(e) = store.check_headroom() {
            tracing::warn!(
                "{e}; puts get OUT_OF_MEMORY until space is freed (delete jobs or other files)"
            );
        }

        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        if let Some(js) = &cfg.jetstream {
            let w = waker.clone();
            let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                let _ = w.wake();
            });
            let dir = cfg.data_dir.as_deref();
            let dist = super::dist::Dist::connect(js, cfg.max_job_size as usize, dir, wake)
                .map_err(|e| ServerError::JetStream { url: js.url.clone(), source: Box::new(e) })?;
            tracing::info!(
                url = %js.url,
                tubes = ?js.tubes,
                "distributed tubes on NATS JetStream {}",
                dist.node.server_version()
            );
            store.dist = Some(dist);
        }
        // TCP listeners first: a Unix socket appearing in the file system
        // (what scripts and tests wait for) then means every listener is
        // bound.
        let mut bound: Vec<Option<Listener>> = cfg.listen.iter().map(|_| None).collect();
        for unix_pass in [false, true] {
            for (i, l) in cfg.listen.iter().enumerate() {
                let tok = Token(1 + i);
                if 1 + i >= FIRST_CONN {
                    return Err(ServerError::Config("too many listeners".into()));
                }
                match l {
                    Listen::Unix(path) if unix_pass => {
                        let mut ul = bind_unix(path, cfg.socket_mode)?;
                        poll.registry().register(&mut ul, tok, Interest::READABLE)?;
                        bound[i] = Some(Listener::Unix(ul, path.clone()));
                    }
                    Listen::Tcp(addr) if !unix_pass => {
                        let mut tl = TcpListener::bind(*addr).map_err(|source| {
                            ServerError::Listen { addr: addr.to_string(), source }
                        })?;
                        poll.registry().register(&mut tl, tok, Interest::READABLE)?;
                        bound[i] = Some(Listener::Tcp(tl));
                    }
                    _ => {}
                }
            }
        }
        let listeners: Vec<Listener> = bound.into_iter().flatten().collect();
        Ok(Server {
            poll,
            listeners,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            store,
            cfg,
            flag: Arc::new(AtomicU8::new(RUN)),
            parker: Arc::new(Parker::new(PollWaker(waker.clone()))),
            waker,
            accept_retry: false,
            round_failed: false,
            loops: None,
        })
    }

    /// A handle to stop or drain the server from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { flag: self.flag.clone(), waker: self.waker.clone() }
    }

    /// The TCP addresses actually bound (useful with port 0).
    pub fn tcp_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Tcp(t) => t.local_addr().ok(),
                Listener::Unix(..) => None,
            })
            .collect()
    }

    /// Starts the I/O loops (threads `spindled-io-N`) when there are more
    /// loops than this one.
    fn start_loops(&mut self) -> Result<(), ServerError> {
        if self.cfg.io_loops <= 1 {
            return Ok(());
        }
        let (to_owner, rx) = crossbeam_channel::unbounded();
        let mut links = Vec::new();
        let mut threads = Vec::new();
        for n in 1..self.cfg.io_loops {
            let (tx, io_rx) = crossbeam_channel::unbounded();
            // Each I/O loop gets its own link to the owner (see `Link`).
            let owner = Arc::new(Link::new(to_owner.clone(), self.parker.clone()));
            let (io, parker) = IoLoop::new(io_rx, owner)?;
            let t = std::thread::Builder::new()
                .name(format!("spindled-io-{n}"))
                .spawn(move || io.run())?;
            links.push(Arc::new(Link::new(tx, parker)));
            threads.push(t);
        }
        self.loops = Some(Loops {
            links,
            threads,
            rx,
            slots: std::collections::HashMap::new(),
            next_key: 1,
            next: 0,
        });
        Ok(())
    }

    /// Takes what the I/O loops sent: input, acknowledgements, closes.
    fn take_from_loops(&mut self, touched: &mut Vec<usize>) {
        let Some(loops) = &mut self.loops else { return };
        while let Ok(m) = loops.rx.try_recv() {
            let Some(&i) = loops.slots.get(&m.key()) else { continue };
            let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { continue };
            let Stream::Remote(r) = &mut c.stream else { continue };
            match m {
                FromIo::Data { bytes, .. } => {
                    r.push(bytes);
                    c.may_read = true;
                }
                FromIo::Hup { .. } => {
                    c.may_read = true;
                    c.hup = true;
                }
                FromIo::Eof { .. } => {
                    r.eof = true;
                    c.may_read = true;
                    c.hup = true;
                }
                FromIo::Written { n, .. } => r.written(n),
                FromIo::Gone { .. } => {
                    r.lost();
                    c.may_read = true;
                    c.hup = true;
                }
            }
            touched.push(i);
        }
    }

    /// Wakes the I/O loops this iteration sent something to.
    fn flush_loops(&self) {
        if let Some(loops) = &self.loops {
            for l in &loops.links {
                l.flush();
            }
        }
    }

    /// Serves until [`ServerHandle::stop`].
    pub fn run(mut self) -> Result<(), ServerError> {
        self.start_loops()?;
        let mut events = Events::with_capacity(1024);
        let mut touched: Vec<usize> = Vec::new();
        let mut next_due = self.store.tick(Instant::now());
        let mut last_busy = Instant::now();
        loop {
            // Step 1. After activity, poll without blocking for a while
            // (`idle_spin`): a request arriving then is seen without the
            // wake-up of a parked thread (tens of µs on a VM).
            let now = Instant::now();
            let timeout = if !touched.is_empty()
                || now.saturating_duration_since(last_busy) < self.cfg.idle_spin
            {
                // Connections left over from the round cap, or spinning.
                Some(std::time::Duration::ZERO)
            } else if self.accept_retry {
                // accept() failed (EMFILE...): the edge-triggered listener
                // will not fire again for the queued connections; retry.
                Some(std::time::Duration::from_millis(10))
            } else {
                next_due.map(|d| d.saturating_duration_since(now))
            };
            // Parking (a non-zero timeout) follows `park.rs`: announce it,
            // then re-check the I/O loops' channel.
            let parks = timeout != Some(std::time::Duration::ZERO);
            let mut timeout = timeout;
            if parks {
                self.parker.prepare();
                if self.loops.as_ref().is_some_and(|l| !l.rx.is_empty()) {
                    timeout = Some(std::time::Duration::ZERO);
                }
            }
            let polled = self.poll.poll(&mut events, timeout);
            if parks {
                self.parker.awake();
            }
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            match self.flag.load(Ordering::Acquire) {
                STOP => break,
                DRAIN if !self.store.draining => {
                    tracing::info!("drain mode: new puts are refused with DRAINING");
                    self.store.draining = true;
                }
                _ => {}
            }
            let before = touched.len();
            self.take_from_loops(&mut touched);
            // Replies and leases from distributed tubes (`dist.rs`).
            self.store.poll_dist();
            self.deliver(&mut touched);
            if !events.is_empty() || touched.len() > before {
                last_busy = Instant::now();
            }
            if std::mem::take(&mut self.accept_retry) {
                for li in 0..self.listeners.len() {
                    self.accept(li, &mut touched);
                }
            }
            for ev in events.iter() {
                let t = ev.token().0;
                if t == WAKER.0 {
                    continue;
                }
                if t < FIRST_CONN {
                    self.accept(t - 1, &mut touched);
                    continue;
                }
                let i = t - FIRST_CONN;
                if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        c.may_read = true;
                    }
                    if ev.is_read_closed() || ev.is_error() {
                        c.hup = true;
                    }
                    touched.push(i);
                }
            }
            // Step 3 (timers) first: a job due now is ready for step 2.
            let now = Instant::now();
            if next_due.is_some_and(|d| d <= now) {
                self.store.tick(now);
                self.deliver(&mut touched);
            }
            // Steps 2-5, repeated while connections can make progress.
            let mut rounds = 0;
            while !touched.is_empty() && rounds < 64 {
                rounds += 1;
                let now = Instant::now();
                touched.sort_unstable();
                touched.dedup();
                for &i in &touched {
                    if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
                        c.drive(&mut self.store, now);
                    }
                }
                self.deliver(&mut touched);
                self.write_log();
                self.group_commit();
                touched.sort_unstable();
                touched.dedup();
                let mut again = Vec::new();
                for &i in &touched {
                    self.finish(i, now, &mut again);
                }
                // Replies composed after this round's write may go: they
                // refuse changes (`INTERNAL_ERROR`) or only read.
                self.round_failed = false;
                touched = again;
                // Replies of this round go out now; input that arrived
                // meanwhile joins the next round.
                self.flush_loops();
                self.take_from_loops(&mut touched);
            }
            self.flush_loops();
            // Records with no reply waiting on them (a lease that expired,
            // a connection that closed) are written too.
            self.write_log();
            next_due = self.store.next_due();
        }
        self.shutdown()
    }

    /// Moves replies the store queued for other connections into their
    /// buffers and marks them for writing.
    fn deliver(&mut self, touched: &mut Vec<usize>) {
        for (c, bytes) in std::mem::take(&mut self.store.out) {
            if let Some(conn) = self.conns.get_mut(c).and_then(Option::as_mut) {
                conn.out.extend_from_slice(&bytes);
                conn.waiting = false;
                conn.later = false;
                conn.resume = true;
                touched.push(c);
            }
        }
    }

    /// Step 4: the records of this round's commands (their room checked as
    /// each ran) go to the log in one write (`log.rs`). If that fails, no
    /// reply of theirs may be sent: as after a failed `-f0` sync, the
    /// connections with replies waiting are closed.
    fn write_log(&mut self) {
        if !self.store.write_log() {
            self.round_failed = true;
        }
    }

    /// Step 4, then: with `-f0`, one sync for everything this iteration logged.
    fn group_commit(&mut self) {
        if self.cfg.sync != SyncMode::Always {
            return;
        }
        if let Some(log) = &mut self.store.log {
            if let Some(lsn) = log.last_lsn.take() {
                if let Err(e) = log.wal.wait_durable(lsn) {
                    tracing::error!(
                        "log sync failed: {e}; refusing further changes and closing the \
                         connections whose replies were not durable"
                    );
                    log.failed = Some(e.to_string());
                    self.round_failed = true;
                }
            }
        }
    }

    /// Step 5 for one connection: write, close, or schedule more work.
    fn finish(&mut self, i: usize, now: Instant, again: &mut Vec<usize>) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        if self.round_failed && c.unsent() > 0 {
            // Its replies may acknowledge changes that are not durable.
            self.close(i, now, again);
            return;
        }
        let alive = c.flush();
        // Closed by `quit` or an error, or the peer half-closed and
        // everything it sent has been answered (a peer that half-closes
        // while parked in `reserve` can send nothing more either).
        let done = !alive
            || (c.closing && c.unsent() == 0)
            || (c.eof && c.unsent() == 0 && !c.later && (c.waiting || !c.can_progress()));
        if done {
            self.close(i, now, again);
            return;
        }
        if c.can_progress() {
            again.push(i);
        }
    }

    fn accept(&mut self, li: usize, touched: &mut Vec<usize>) {
        loop {
            let accepted = match self.listeners.get(li) {
                Some(Listener::Unix(l, _)) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Some(Listener::Tcp(l)) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
                None => return,
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accept: {e}; retrying in 10 ms");
                    self.accept_retry = true;
                    return;
                }
            };
            if let Stream::Unix(s) = &stream {
                if !self.cfg.allow_uids.is_empty() {
                    match peer_uid(s) {
                        Some(uid) if self.cfg.allow_uids.contains(&uid) => {}
                        other => {
                            tracing::warn!(uid = ?other, "peer uid not allowed; closing");
                            continue;
                        }
                    }
                }
            }
            if self.open >= self.cfg.max_connections {
                tracing::warn!(
                    max = self.cfg.max_connections,
                    "connection limit reached; closing a new connection"
                );
                drop(stream);
                continue;
            }
            let i = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            let conn = match self.place(i, stream) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("register: {e}");
                    self.free.push(i);
                    continue;
                }
            };
            self.store.connect(i);
            self.conns[i] = Some(conn);
            self.open += 1;
            touched.push(i);
        }
    }

    /// Gives a new connection (slot `i`) to the next loop in turn: this
    /// one registers the socket itself, an I/O loop is sent it.
    fn place(&mut self, i: usize, mut stream: Stream) -> io::Result<Conn> {
        if let Some(loops) = &mut self.loops {
            let n = loops.next;
            loops.next = (n + 1) % (loops.links.len() + 1);
            if let Some(link) = n.checked_sub(1).and_then(|k| loops.links.get(k)).cloned() {
                let key = loops.next_key;
                loops.next_key += 1;
                if !link.send(ToIo::Attach { key, stream }) {
                    return Err(io::Error::other("I/O loop ended"));
                }
                loops.slots.insert(key, i);
                return Ok(Conn::new(i, Stream::Remote(Remote::new(key, link))));
            }
        }
        if let Some(src) = stream.source() {
            self.poll.registry().register(
                src,
                Token(FIRST_CONN + i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        Ok(Conn::new(i, stream))
    }

    /// Closes connection `i`; connections whose waits its closing served
    /// go to `again` (they must write, then process their pending input).
    fn close(&mut self, i: usize, now: Instant, again: &mut Vec<usize>) {
        if let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) {
            match &mut c.stream {
                Stream::Remote(r) => {
                    r.link.send(ToIo::Close { key: r.key });
                    if let Some(l) = &mut self.loops {
                        l.slots.remove(&r.key);
                    }
                }
                s => {
                    if let Some(src) = s.source() {
                        let _ = self.poll.registry().deregister(src);
                    }
                }
            }
            c.abandon(&mut self.store);
            c.release(&mut self.store);
            self.store.disconnect(i, now);
            self.free.push(i);
            self.open -= 1;
            // Waiters the disconnect served (its jobs returned): their
            // replies may go out in this round, so the records first.
            self.write_log();
            self.deliver(again);
        }
    }

    fn shutdown(mut self) -> Result<(), ServerError> {
        let now = Instant::now();
        let mut ignored = Vec::new();
        self.write_log();
        for i in 0..self.conns.len() {
            if let Some(c) = self.conns.get_mut(i).and_then(Option::as_mut) {
                if !self.round_failed {
                    let _ = c.flush();
                }
            }
            self.close(i, now, &mut ignored);
        }
        if let Some(loops) = self.loops.take() {
            for l in &loops.links {
                l.send(ToIo::Stop);
                l.flush();
            }
            for t in loops.threads {
                if t.join().is_err() {
                    tracing::error!("an I/O loop panicked");
                }
            }
        }
        for l in &self.listeners {
            if let Listener::Unix(_, path) = l {
                let _ = std::fs::remove_file(path);
            }
        }
        self.store.finish_compaction();
        if let Some(log) = self.store.log.take() {
            log.wal.shutdown().map_err(|source| ServerError::Wal {
                dir: self.cfg.data_dir.clone().unwrap_or_default(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Binds a Unix socket: a stale socket file is replaced, a live one is an
/// error, and so is anything else at the path (a regular file, a directory,
/// a symbolic link...: it is never removed). The socket is bound at its
/// final path (a client reading its peer's name sees that path) and has
/// at most `mode` from the moment it exists ([`bind_unix_at`]).
fn bind_unix(path: &PathBuf, mode: u32) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Listen { addr: format!("unix:{}", path.display()), source };
    if check_socket_path(path)? {
        std::fs::remove_file(path).map_err(err)?;
    }
    let l = bind_unix_at(path, mode).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(UnixListener::from_std(l))
}

/// `socket`, `fchmod(mode)`, `bind(path)`, `chmod(mode)`, `listen`. On
/// Linux `bind` creates the file with the unbound socket's mode less the
/// umask, and `fchmod` on the unbound socket sets that mode: the file
/// never has a bit `mode` lacks. The `chmod` after restores bits the umask
/// took (it never widens beyond `mode`).
#[allow(unsafe_code)]
fn bind_unix_at(path: &std::path::Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: `sockaddr_un` is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path is longer than {} bytes", addr.sun_path.len() - 1),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a plain system call with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `fd` is an open descriptor for the duration of the call.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid, NUL-terminated `sockaddr_un` that lives
    // across the call, and `len` does not exceed its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    // SAFETY: `fd` is an open, bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// What is at a socket path we are to listen on: `Ok(false)` nothing,
/// `Ok(true)` a stale socket (connecting is refused: nobody listens).
/// A live socket, anything that is not a socket, and a socket whose state
/// cannot be told are errors.
pub(super) fn check_socket_path(path: &std::path::Path) -> Result<bool, ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |source| ServerError::Listen { addr: format!("unix:{}", path.display()), source };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let what = if ft.is_file() {
            "a regular file"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_symlink() {
            "a symbolic link"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device file"
        } else {
            "not a socket"
        };
        return Err(ServerError::SocketPathTaken { path: path.to_path_buf(), what });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::SocketInUse { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(err(e)),
    }
}

/// The peer's uid (SO_PEERCRED).
fn peer_uid(s: &mio::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    #[allow(unsafe_code)]
    // SAFETY: the fd is an open Unix socket owned by `s`; `cred` and `len`
    // are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}
