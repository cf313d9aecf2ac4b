//! The daemon's front-end over the job table (`spindle-core`): beanstalkd
//! commands in, replies out. The table holds every lifecycle rule; this
//! file holds what is the protocol's own:
//!
//! 1. connections, as the table's holders: the tube each one uses, the
//!    tubes it watches (it holds them in the table, so a watched tube is
//!    never dropped), whether it produced or reserved;
//! 2. each command's reply, byte for byte as beanstalkd 1.12 writes it,
//!    and the command counters of `stats`;
//! 3. `list-tubes` order (creation order with beanstalkd's swap-remove);
//! 4. the log (`store_log.rs`): each command's records, room-checked as
//!    it runs, go to the WAL with the round's before its reply is written
//!    (with `-f0` the reactor also waits for the sync); compaction keeps
//!    the log bounded; recovery replays this version's records and the two
//!    older daemon formats (`persist.rs`) into the table.

use std::io::Write as _;
use std::time::{Duration, Instant};

use spindle_core::staffing::{self, Counted, Rates};
use spindle_core::{
    By, Clock, Config, Failed, JobError, JobView, Put, PutError, PutSpec, QueueId, Records,
    Reserved, RetryPolicy, State, Table, Time, WaitEnd,
};

pub(crate) use super::log::Log;
use super::log::Logged;
use super::proto::Cmd;

/// A connection, as the store knows it.
pub(crate) type ConnId = usize;

/// Limits and identity, fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    /// `-z`: the largest body.
    pub max_job_size: u32,
    /// Most live jobs; a put beyond gets `OUT_OF_MEMORY`.
    pub max_jobs: u64,
    /// Most live body bytes; a put beyond gets `OUT_OF_MEMORY`.
    pub max_bytes: u64,
    /// `-s` as reported in stats.
    pub segment_size: u64,
    /// `desired-workers` latency target.
    pub latency_target: Duration,
    /// Version string for `stats`.
    pub version: String,
}

/// A connection's protocol session: the tube it uses, the tubes it
/// watches, whether it produced or reserved (`conn.rs` has its bytes).
#[derive(Debug)]
pub(crate) struct Session {
    pub use_q: QueueId,
    pub watch: Vec<QueueId>,
    pub producer: bool,
    pub worker: bool,
    /// Tells this connection from a later one in the same slot (replies
    /// computed elsewhere carry it: `dist.rs`).
    pub serial: u64,
    /// Counts its waits for distributed tubes (`dist.rs`).
    pub dist_wait: u64,
}

/// What a tube has besides its jobs: connections using and watching it,
/// and the Little's-law inputs of `desired-workers`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Front {
    pub using: u64,
    pub watching: u64,
    /// `delete` commands that deleted a job (beanstalkd's `cmd-delete`).
    pub cmd_delete: u64,
    /// Its arrival rate and mean service time (reserve to outcome), for
    /// `desired-workers` (`spindle_core::staffing`, read once a second).
    pub rates: Rates,
    /// Every run that ended with an outcome, by how long it ran
    /// (buckets of [`crate::metrics::RUN_BUCKETS_S`]; the last slot counts
    /// the longer ones), and their total, for the `metrics` histogram.
    pub run_buckets: [u64; crate::metrics::RUN_BUCKETS_S.len() + 1],
    pub run_ns_total: u128,
}

/// Global command counters, in `stats` order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub put: u64,
    pub peek: u64,
    pub peek_ready: u64,
    pub peek_delayed: u64,
    pub peek_buried: u64,
    pub reserve: u64,
    pub reserve_timeout: u64,
    pub delete: u64,
    pub release: u64,
    pub use_: u64,
    pub watch: u64,
    pub ignore: u64,
    pub bury: u64,
    pub kick: u64,
    pub touch: u64,
    pub stats: u64,
    pub stats_job: u64,
    pub stats_tube: u64,
    pub list_tubes: u64,
    pub list_tube_used: u64,
    pub list_tubes_watched: u64,
    pub pause_tube: u64,
    pub total_jobs: u64,
    pub total_connections: u64,
    pub records_written: u64,
    pub records_migrated: u64,
    /// Compaction passes finished (`metrics`).
    pub compactions: u64,
}

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Reply written; read the next command.
    Go,
    /// Parked in `reserve`: read nothing more until served.
    Wait,
    /// The reply comes later, from elsewhere (a distributed tube's put,
    /// bury or fail: `dist.rs`): read nothing more until it has come, even
    /// if the peer half-closes.
    Later,
    /// Close after flushing (`quit`).
    Close,
}

/// The job table and its protocol front-end.
#[derive(Debug)]
pub(crate) struct Store {
    pub cfg: StoreConfig,
    pub table: Table,
    pub clock: Clock,
    pub conns: crate::idhash::IdHashMap<ConnId, Session>,
    /// Per tube, indexed by queue id (reset when a tube is made).
    pub fronts: Vec<Front>,
    /// `list-tubes` order: creation order with beanstalkd's swap-remove.
    pub tube_order: Vec<Box<str>>,
    pub ct: Counters,
    pub draining: bool,
    pub log: Option<Log>,
    /// This command's records (disabled without a log).
    recs: Records,
    /// Replies for connections other than the one whose command is being
    /// handled (served waiters, timeouts), and replies that came later
    /// (`Flow::Later`).
    pub out: Vec<(ConnId, Vec<u8>)>,
    /// Tubes that live in NATS JetStream (`dist.rs`), if any.
    pub dist: Option<super::dist::Dist>,
    next_serial: u64,
    /// The connections' shared read buffer and half-received body budget
    /// (`budget.rs`).
    pub input: super::budget::InputBudget,
    pub started: Instant,
    pub instance_id: String,
    last_window: Instant,
    /// The last [`Store::time`] asked and its answer.
    last_time: std::cell::Cell<(Instant, Time)>,
    default_q: QueueId,
}

/// A connection id as the table's holder id.
fn holder(c: ConnId) -> u32 {
    u32::try_from(c).unwrap_or(u32::MAX)
}

impl Store {
    pub(crate) fn new(cfg: StoreConfig, log: Option<Log>, now: Instant) -> Store {
        let clock = Clock::starting_at(now);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0) as u64
            ^ u64::from(std::process::id()).rotate_left(32);
        let mut table = Table::new(Config {
            max_jobs: cfg.max_jobs,
            max_bytes: cfg.max_bytes,
            max_payload: cfg.max_job_size,
            // beanstalkd's rules until `tube-config`: `fail` gives up after
            // 25 attempts, interrupted runs never bury.
            policy: RetryPolicy::default(),
            seed,
            batch_bytes: 4 << 20,
            drop_unused_queues: true,
        });
        // beanstalkd holds `default` for the life of the server.
        let default_q = match table.queue("default") {
            Ok(q) => q,
            Err(_) => QueueId(0),
        };
        table.hold_queue(default_q);
        let recs = if log.is_some() { Records::new() } else { Records::disabled() };
        let mut s = Store {
            cfg,
            table,
            clock,
            conns: crate::idhash::IdHashMap::default(),
            fronts: Vec::new(),
            tube_order: vec!["default".into()],
            ct: Counters::default(),
            draining: false,
            log,
            recs,
            out: Vec::new(),
            dist: None,
            next_serial: 0,
            input: super::budget::InputBudget::new(super::budget::DEFAULT_MAX_PARTIAL_BYTES),
            started: now,
            instance_id: String::new(),
            last_window: now,
            last_time: std::cell::Cell::new((now, clock.at(now))),
            default_q,
        };
        s.front_mut(default_q);
        let mut rng = spindle_core::Rng::new(seed);
        s.instance_id = format!("{:016x}", rng.next_u64());
        s
    }

    /// The table's time for `now`. A loop iteration hands every command
    /// the same `now`, and a command asks two or three times, so the last
    /// answer is kept (the conversion is ~55 instructions).
    pub(crate) fn time(&self, now: Instant) -> Time {
        let (at, t) = self.last_time.get();
        if at == now {
            return t;
        }
        let t = self.clock.at(now);
        self.last_time.set((now, t));
        t
    }

    /// The id of the next job (beanstalkd numbers jobs from one counter).
    pub(crate) fn next_id(&self) -> u64 {
        self.table.next_id()
    }

    /// Uses up `n` ids: a put refused after beanstalkd numbered it, or ids
    /// a cut log tail may have held.
    pub(crate) fn skip_ids(&mut self, n: u64) {
        self.table.skip_ids(n);
    }

    // ---------------------------------------------------------------- tubes

    pub(crate) fn front(&self, q: QueueId) -> Option<&Front> {
        self.fronts.get(q.0 as usize)
    }

    fn front_mut(&mut self, q: QueueId) -> &mut Front {
        let i = q.0 as usize;
        if self.fronts.len() <= i {
            self.fronts.resize_with(i + 1, Front::default);
        }
        &mut self.fronts[i]
    }

    /// The tube `name`, made (and listed) if new.
    fn tube_ref(&mut self, name: &str) -> QueueId {
        self.sync_dropped();
        if let Some(q) = self.table.find_queue(name) {
            return q;
        }
        match self.table.queue(name) {
            Ok(q) => {
                *self.front_mut(q) = Front::default();
                self.tube_order.push(name.into());
                q
            }
            // The parser accepts only valid names.
            Err(_) => self.default_q,
        }
    }

    /// Takes tubes the table dropped off the list (swap-remove, as
    /// beanstalkd's `ms_remove`).
    fn sync_dropped(&mut self) {
        for name in self.table.take_dropped_queues() {
            if let Some(i) = self.tube_order.iter().position(|t| *t == name) {
                self.tube_order.swap_remove(i);
            }
        }
    }

    fn tube_name(&self, q: QueueId) -> &str {
        self.table.queue_name(q).unwrap_or("default")
    }

    // ---------------------------------------------------------- connections

    pub(crate) fn connect(&mut self, c: ConnId) {
        let d = self.default_q;
        self.table.hold_queue(d);
        self.table.hold_queue(d);
        let f = self.front_mut(d);
        f.using += 1;
        f.watching += 1;
        self.ct.total_connections += 1;
        self.next_serial += 1;
        let serial = self.next_serial;
        self.conns.insert(
            c,
            Session {
                use_q: d,
                watch: vec![d],
                producer: false,
                worker: false,
                serial,
                dist_wait: 0,
            },
        );
    }

    /// The connection is gone: its wait ends and its reservations return
    /// to ready (or, with `tube-config`, a poison pill is buried).
    pub(crate) fn disconnect(&mut self, c: ConnId, now: Instant) {
        let t = self.time(now);
        self.table.drop_holder(t, holder(c), &mut self.recs);
        self.flush_log();
        self.dist_disconnect(c);
        let Some(conn) = self.conns.remove(&c) else { return };
        if let Some(f) = self.fronts.get_mut(conn.use_q.0 as usize) {
            f.using -= 1;
        }
        self.table.unhold_queue(conn.use_q);
        for q in conn.watch {
            if let Some(f) = self.fronts.get_mut(q.0 as usize) {
                f.watching -= 1;
            }
            self.table.unhold_queue(q);
        }
        self.after(now);
    }

    /// After a command or a tick: serve waiters, queue their replies, log.
    fn after(&mut self, now: Instant) {
        let t = self.time(now);
        self.table.serve_waiters(t, &mut self.recs);
        for g in self.table.take_grants() {
            let mut reply = Vec::new();
            let ids: Vec<u64> = g.leases.iter().map(|l| l.id).collect();
            self.write_reserved(&mut reply, &ids, g.batch > 1);
            self.out.push((g.holder as ConnId, reply));
        }
        for (h, end) in self.table.take_wait_ends() {
            self.out.push((h as ConnId, wait_end_reply(end).to_vec()));
        }
        self.flush_log();
        self.sync_dropped();
    }

    // ------------------------------------------------------------ commands

    /// Runs one command for connection `c`, writing its reply to `w`.
    /// `body` is the data for put-like commands (without its `\r\n`).
    pub(crate) fn handle(
        &mut self,
        c: ConnId,
        cmd: Cmd,
        body: Vec<u8>,
        now: Instant,
        w: &mut Vec<u8>,
    ) -> Flow {
        let flow = self.dispatch(c, cmd, body, now, w);
        self.after(now);
        flow
    }

    /// Counts a run that ended with an outcome (release, bury, delete,
    /// fail by the holder): the Little's-law inputs.
    fn service_done(&mut self, v: Option<(QueueId, Time)>, t: Time) {
        if let Some((q, since)) = v {
            let ns = t.since(since).as_nanos();
            crate::metrics::count_run(self.front_mut(q), ns);
        }
    }

    /// Job `id`'s queue and lease start, if `c` holds it.
    fn held(&self, c: ConnId, id: u64) -> Option<(QueueId, Time)> {
        let j = self.table.job(id)?;
        (j.holder.map(|h| h.0) == Some(holder(c))).then_some((j.queue, j.since))
    }

    fn dispatch(
        &mut self,
        c: ConnId,
        cmd: Cmd,
        body: Vec<u8>,
        now: Instant,
        w: &mut Vec<u8>,
    ) -> Flow {
        if self.log_failed() && writes_log(&cmd) {
            // Nothing more can be made durable: refuse every change rather
            // than acknowledge one a restart would not see.
            w.extend_from_slice(b"INTERNAL_ERROR\r\n");
            return Flow::Go;
        }
        if let Some(flow) = self.dist_job_cmd(c, &cmd, &body, w) {
            return flow;
        }
        let t = self.time(now);
        match cmd {
            Cmd::Put { pri, delay, ttr, .. } => {
                // (`cmd-put` was counted when the line parsed: conn.rs.)
                let q = self.conn_use(c);
                if let Some(i) = self.dist_of(q) {
                    let p = DistPut { pri, delay, unique: None, expires_in: None };
                    return self.dist_put(c, i, body, p, w);
                }
                w.extend_from_slice(&self.put(c, q, pri, delay, ttr, body, None, None, now));
            }
            Cmd::PutUnique { key, pri, delay, ttr, .. } => {
                self.ct.put += 1;
                let q = self.conn_use(c);
                if let Some(i) = self.dist_of(q) {
                    let p = DistPut { pri, delay, unique: Some(&key), expires_in: None };
                    return self.dist_put(c, i, body, p, w);
                }
                let reply = self.put(c, q, pri, delay, ttr, body, Some(&key), None, now);
                w.extend_from_slice(&reply);
            }
            Cmd::PutBatch { .. } => {
                // The connection assembles batches and calls `put_batch`.
                w.extend_from_slice(b"INTERNAL_ERROR\r\n");
            }
            Cmd::Use(name) => {
                self.ct.use_ += 1;
                let q = self.tube_ref(&name);
                self.table.hold_queue(q);
                self.front_mut(q).using += 1;
                let old = match self.conns.get_mut(&c) {
                    Some(conn) => std::mem::replace(&mut conn.use_q, q),
                    None => q,
                };
                if let Some(f) = self.fronts.get_mut(old.0 as usize) {
                    f.using -= 1;
                }
                self.table.unhold_queue(old);
                reply_fmt(w, format_args!("USING {name}\r\n"));
            }
            Cmd::Reserve => {
                self.ct.reserve += 1;
                return self.reserve(c, None, 1, now, w);
            }
            Cmd::ReserveTimeout(s) => {
                self.ct.reserve_timeout += 1;
                // Negative waits forever (beanstalkd passes it on as the
                // "no timeout" value); huge values are capped at a century.
                let at = u64::try_from(s)
                    .ok()
                    .map(|s| now + Duration::from_secs(s.min(100 * 365 * 86_400)));
                return self.reserve(c, at, 1, now, w);
            }
            Cmd::ReserveBatch { max, timeout } => {
                self.ct.reserve_timeout += 1;
                let at = Some(now + Duration::from_secs(u64::from(timeout)));
                return self.reserve(c, at, max, now, w);
            }
            Cmd::ReserveJob(id) => {
                if let Some(conn) = self.conns.get_mut(&c) {
                    conn.worker = true;
                }
                match self.table.reserve_id(t, id, holder(c), &mut self.recs) {
                    Some(l) => self.write_job(w, b"RESERVED", l.id),
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::Delete(id) => {
                self.ct.delete += 1;
                let held = self.held(c, id);
                let q = self.table.job(id).map(|j| j.queue);
                match self.table.delete(id, Some(By::holder(holder(c))), &mut self.recs) {
                    Ok(()) => {
                        self.service_done(held, t);
                        if let Some(q) = q {
                            self.front_mut(q).cmd_delete += 1;
                        }
                        if self.flush_log() {
                            w.extend_from_slice(b"DELETED\r\n");
                        } else {
                            w.extend_from_slice(b"INTERNAL_ERROR\r\n");
                        }
                    }
                    Err(e) => w.extend_from_slice(job_error_reply(&e)),
                }
            }
            Cmd::Release { id, pri, delay } => {
                self.ct.release += 1;
                let held = self.held(c, id);
                let d = Duration::from_secs(u64::from(delay));
                match self.table.release(t, id, By::holder(holder(c)), pri, d, &mut self.recs) {
                    Ok(()) => {
                        self.service_done(held, t);
                        w.extend_from_slice(b"RELEASED\r\n");
                    }
                    Err(e) => w.extend_from_slice(job_error_reply(&e)),
                }
            }
            Cmd::Bury { id, pri } => {
                self.ct.bury += 1;
                let held = self.held(c, id);
                match self.table.bury(id, By::holder(holder(c)), pri, None, &mut self.recs) {
                    Ok(()) => {
                        self.service_done(held, t);
                        w.extend_from_slice(b"BURIED\r\n");
                    }
                    Err(e) => w.extend_from_slice(job_error_reply(&e)),
                }
            }
            Cmd::Touch(id) => {
                self.ct.touch += 1;
                match self.table.touch(t, id, By::holder(holder(c))) {
                    Ok(()) => w.extend_from_slice(b"TOUCHED\r\n"),
                    Err(e) => w.extend_from_slice(job_error_reply(&e)),
                }
            }
            Cmd::Watch(name) => {
                self.ct.watch += 1;
                let q = self.tube_ref(&name);
                let add = self.conns.get(&c).is_some_and(|conn| !conn.watch.contains(&q));
                if add {
                    if let Some(conn) = self.conns.get_mut(&c) {
                        conn.watch.push(q);
                    }
                    self.table.hold_queue(q);
                    self.front_mut(q).watching += 1;
                }
                let n = self.conns.get(&c).map_or(0, |conn| conn.watch.len());
                reply_fmt(w, format_args!("WATCHING {n}\r\n"));
            }
            Cmd::Ignore(name) => {
                self.ct.ignore += 1;
                let q = self.table.find_queue(&name);
                let Some(conn) = self.conns.get_mut(&c) else { return Flow::Go };
                let pos = q.and_then(|q| conn.watch.iter().position(|&x| x == q));
                match pos {
                    Some(_) if conn.watch.len() < 2 => {
                        w.extend_from_slice(b"NOT_IGNORED\r\n");
                    }
                    Some(i) => {
                        let q = conn.watch.swap_remove(i);
                        let n = conn.watch.len();
                        if let Some(f) = self.fronts.get_mut(q.0 as usize) {
                            f.watching -= 1;
                        }
                        self.table.unhold_queue(q);
                        reply_fmt(w, format_args!("WATCHING {n}\r\n"));
                    }
                    None => {
                        let n = conn.watch.len();
                        reply_fmt(w, format_args!("WATCHING {n}\r\n"));
                    }
                }
            }
            Cmd::Peek(id) => {
                self.ct.peek += 1;
                self.write_job(w, b"FOUND", id);
            }
            Cmd::PeekReady => {
                self.ct.peek_ready += 1;
                let q = self.conn_use(c);
                let id = self.table.peek_ready(q).map(|j| j.id);
                self.peek_reply(w, id);
            }
            Cmd::PeekDelayed => {
                self.ct.peek_delayed += 1;
                let q = self.conn_use(c);
                let id = self.table.peek_delayed(q).map(|j| j.id);
                self.peek_reply(w, id);
            }
            Cmd::PeekBuried => {
                self.ct.peek_buried += 1;
                let q = self.conn_use(c);
                let id = self.table.peek_buried(q).map(|j| j.id);
                self.peek_reply(w, id);
            }
            Cmd::Kick(bound) => {
                self.ct.kick += 1;
                let q = self.conn_use(c);
                let n = self.table.kick(t, q, bound, &mut self.recs);
                reply_fmt(w, format_args!("KICKED {n}\r\n"));
            }
            Cmd::KickJob(id) => match self.table.kick_job(t, id, &mut self.recs) {
                Ok(()) => w.extend_from_slice(b"KICKED\r\n"),
                Err(_) => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::StatsJob(id) => {
                self.ct.stats_job += 1;
                match self.table.job(id) {
                    Some(j) => yaml_reply(w, &super::report::job_yaml(&j, t, false)),
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::StatsJobExt(id) => match self.table.job(id) {
                Some(j) => yaml_reply(w, &super::report::job_yaml(&j, t, true)),
                None => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::StatsTube(name) => {
                self.ct.stats_tube += 1;
                match self.table.find_queue(&name) {
                    Some(q) => yaml_reply(w, &super::report::tube_yaml(self, q, t, false)),
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::StatsTubeExt(name) => match self.table.find_queue(&name) {
                Some(q) => yaml_reply(w, &super::report::tube_yaml(self, q, t, true)),
                None => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::Stats => {
                self.ct.stats += 1;
                yaml_reply(w, &super::report::stats_yaml(self, now));
            }
            Cmd::Metrics => yaml_reply(w, &super::metrics::prometheus(self, now)),
            Cmd::ListTubes => {
                self.ct.list_tubes += 1;
                let mut s = String::from("---\n");
                for name in &self.tube_order {
                    s.push_str("- ");
                    s.push_str(name);
                    s.push('\n');
                }
                yaml_reply(w, &s);
            }
            Cmd::ListTubeUsed => {
                self.ct.list_tube_used += 1;
                let q = self.conn_use(c);
                reply_fmt(w, format_args!("USING {}\r\n", self.tube_name(q)));
            }
            Cmd::ListTubesWatched => {
                self.ct.list_tubes_watched += 1;
                let mut s = String::from("---\n");
                if let Some(conn) = self.conns.get(&c) {
                    for &q in &conn.watch {
                        s.push_str("- ");
                        s.push_str(self.tube_name(q));
                        s.push('\n');
                    }
                }
                yaml_reply(w, &s);
            }
            Cmd::PauseTube { tube, delay } => {
                self.ct.pause_tube += 1;
                if !super::proto::valid_tube(tube.as_bytes()) {
                    // Counted, then rejected, as in beanstalkd.
                    w.extend_from_slice(b"BAD_FORMAT\r\n");
                    return Flow::Go;
                }
                match self.table.find_queue(&tube) {
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                    Some(q) => {
                        // beanstalkd pauses for at least 1 ns so waiters
                        // wake when the pause ends.
                        let d = if delay == 0 {
                            Duration::from_nanos(1)
                        } else {
                            Duration::from_secs(u64::from(delay))
                        };
                        self.table.pause(t, q, d);
                        w.extend_from_slice(b"PAUSED\r\n");
                    }
                }
            }
            Cmd::Quit => return Flow::Close,
            Cmd::Lease(id) => match self.table.job(id).and_then(|j| j.holder) {
                Some((h, token)) if h == holder(c) => {
                    reply_fmt(w, format_args!("LEASED {id} {token}\r\n"))
                }
                _ => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::Fenced { token, inner } => {
                let id = match *inner {
                    Cmd::Delete(id)
                    | Cmd::Touch(id)
                    | Cmd::Release { id, .. }
                    | Cmd::Bury { id, .. }
                    | Cmd::Fail { id, .. } => id,
                    _ => 0,
                };
                let by = self.table.job(id).map(|j| match j.holder {
                    Some((h, tok)) if u64::from(tok) == token => Some(h as ConnId),
                    _ => None,
                });
                match by {
                    None => w.extend_from_slice(b"NOT_FOUND\r\n"),
                    Some(None) => w.extend_from_slice(b"STALE_LEASE\r\n"),
                    // The holder's own command, whoever sends it; the
                    // lease stays the holder's.
                    Some(Some(by)) => return self.dispatch(by, *inner, body, now, w),
                }
            }
            Cmd::Fail { id, .. } => {
                let held = self.held(c, id);
                match self.table.fail(t, id, By::holder(holder(c)), &body, &mut self.recs) {
                    Ok(Failed::Retry { attempts, delay }) => {
                        self.service_done(held, t);
                        // Rounded up: a worker that waits this long finds
                        // the job ready again.
                        let ms = delay.as_nanos().div_ceil(1_000_000);
                        reply_fmt(w, format_args!("FAILED {attempts} {ms}\r\n"));
                    }
                    Ok(Failed::Buried { attempts }) => {
                        self.service_done(held, t);
                        reply_fmt(w, format_args!("FAILED-BURIED {attempts}\r\n"));
                    }
                    Err(e) => w.extend_from_slice(job_error_reply(&e)),
                }
            }
            Cmd::TubeConfig { tube, max_attempts, backoff_ms, backoff_max_ms } => {
                let q = self.tube_ref(&tube);
                let policy =
                    daemon_policy(max_attempts, backoff_ms, backoff_max_ms.max(backoff_ms));
                self.table.set_policy(q, policy, &mut self.recs);
                w.extend_from_slice(b"CONFIGURED\r\n");
            }
            Cmd::ClearTube { tube, ready, delayed, buried } => {
                let mut states = Vec::new();
                if ready {
                    states.push(State::Ready);
                }
                if delayed {
                    states.push(State::Delayed);
                }
                if buried {
                    states.push(State::Buried);
                }
                let n = match self.table.find_queue(&tube) {
                    Some(q) => self.table.clear(q, &states, &mut self.recs),
                    None => 0,
                };
                reply_fmt(w, format_args!("CLEARED {n}\r\n"));
            }
            Cmd::PutDeadline { .. }
            | Cmd::Cancel(_)
            | Cmd::TubeLimit { .. }
            | Cmd::ScheduleAdd(_)
            | Cmd::ScheduleList
            | Cmd::SchedulePause { .. }
            | Cmd::ScheduleRm { .. } => return self.dispatch_paid(c, cmd, body, now, w),
        }
        Flow::Go
    }

    fn conn_use(&self, c: ConnId) -> QueueId {
        self.conns.get(&c).map_or(self.default_q, |conn| conn.use_q)
    }

    fn peek_reply(&self, w: &mut Vec<u8>, id: Option<u64>) {
        match id {
            Some(id) => self.write_job(w, b"FOUND", id),
            None => w.extend_from_slice(b"NOT_FOUND\r\n"),
        }
    }

    fn write_job(&self, w: &mut Vec<u8>, word: &[u8], id: u64) {
        let Some(payload) = self.table.payload(id) else {
            w.extend_from_slice(b"NOT_FOUND\r\n");
            return;
        };
        w.extend_from_slice(word);
        w.push(b' ');
        reply_u64(w, id);
        w.push(b' ');
        reply_u64(w, payload.len() as u64);
        w.extend_from_slice(b"\r\n");
        w.extend_from_slice(payload);
        w.extend_from_slice(b"\r\n");
    }

    /// `RESERVED <id> <bytes>` for one job, `RESERVED-BATCH <n>` and the
    /// jobs for a batch.
    fn write_reserved(&self, w: &mut Vec<u8>, ids: &[u64], batch: bool) {
        if !batch {
            if let Some(&id) = ids.first() {
                self.write_job(w, b"RESERVED", id);
            }
            return;
        }
        reply_fmt(w, format_args!("RESERVED-BATCH {}\r\n", ids.len()));
        for &id in ids {
            if let Some(j) = self.table.job(id) {
                reply_fmt(w, format_args!("{} {}\r\n", id, j.payload.len()));
                w.extend_from_slice(j.payload);
                w.extend_from_slice(b"\r\n");
            }
        }
    }

    /// A put (plain or unique): the reply line.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        c: ConnId,
        q: QueueId,
        pri: u32,
        delay: u32,
        ttr: u32,
        body: Vec<u8>,
        unique: Option<&str>,
        deadline: Option<Time>,
        now: Instant,
    ) -> Vec<u8> {
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.producer = true;
        }
        let t = self.time(now);
        let spec = PutSpec { deadline, ..put_spec(pri, delay, ttr, unique) };
        if let Some(k) = unique {
            // A duplicate is answered before anything else, and uses no id.
            if let Some(existing) = self.table.unique(q, k) {
                return format!("DUPLICATE {existing}\r\n").into_bytes();
            }
        }
        // beanstalkd gives the job its id before these checks, so a
        // refused put still uses one.
        let id = self.table.next_id();
        if self.draining {
            self.table.skip_ids(1);
            return b"DRAINING\r\n".to_vec();
        }
        match self.table.put_owned(t, id, q, &spec, body, &mut self.recs) {
            Ok(Put::Created(id)) => {
                let keep = self.put_headroom();
                if let Err(why) = self.flush_log_keeping(keep) {
                    // Not durable: undo quietly, tell the client. A full
                    // disk is `OUT_OF_MEMORY`, as for a full table.
                    self.table.unput(id);
                    return match why {
                        Logged::NoSpace => b"OUT_OF_MEMORY\r\n".to_vec(),
                        Logged::Failed => b"INTERNAL_ERROR\r\n".to_vec(),
                    };
                }
                self.ct.total_jobs += 1;
                let mut w = Vec::with_capacity(32);
                w.extend_from_slice(b"INSERTED ");
                reply_u64(&mut w, id);
                w.extend_from_slice(b"\r\n");
                w
            }
            Ok(Put::Duplicate(existing)) => format!("DUPLICATE {existing}\r\n").into_bytes(),
            Err(PutError::DeadlinePassed { .. }) => {
                self.table.skip_ids(1);
                b"DEADLINE_PASSED\r\n".to_vec()
            }
            Err(_) => {
                self.table.skip_ids(1);
                b"OUT_OF_MEMORY\r\n".to_vec()
            }
        }
    }

    /// `put-batch`: all or nothing. Replies `INSERTED-BATCH <first> <n>`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_batch(
        &mut self,
        c: ConnId,
        pri: u32,
        delay: u32,
        ttr: u32,
        bodies: Vec<Vec<u8>>,
        now: Instant,
        w: &mut Vec<u8>,
    ) {
        self.ct.put += bodies.len() as u64;
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.producer = true;
        }
        if self.draining {
            w.extend_from_slice(b"DRAINING\r\n");
            return;
        }
        let total: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        let tot = self.table.totals();
        if tot.jobs + bodies.len() as u64 > self.cfg.max_jobs
            || tot.bytes + total > self.cfg.max_bytes
            || self.log_failed()
        {
            w.extend_from_slice(b"OUT_OF_MEMORY\r\n");
            return;
        }
        let q = self.conn_use(c);
        if self.dist_of(q).is_some() {
            // Its jobs' ids (stream sequences) need not be consecutive.
            w.extend_from_slice(b"NOT_SUPPORTED\r\n");
            return;
        }
        let t = self.time(now);
        let spec = put_spec(pri, delay, ttr, None);
        let first = self.table.next_id();
        let n = bodies.len() as u64;
        for body in bodies {
            let id = self.table.next_id();
            if self.table.put_owned(t, id, q, &spec, body, &mut self.recs).is_err() {
                // Checked above; the backstop undoes the batch.
                self.undo_batch(first, id);
                w.extend_from_slice(b"INTERNAL_ERROR\r\n");
                return;
            }
        }
        let keep = self.put_headroom();
        if let Err(why) = self.flush_log_keeping(keep) {
            if !self.log.as_ref().is_some_and(|l| l.partial) {
                // Nothing of it reached the log (a full disk refuses the
                // whole batch up front): take it back without records.
                for id in first..first + n {
                    self.table.unput(id);
                }
            } else {
                self.undo_batch(first, first + n);
            }
            w.extend_from_slice(match why {
                Logged::NoSpace => b"OUT_OF_MEMORY\r\n",
                Logged::Failed => b"INTERNAL_ERROR\r\n",
            });
            return;
        }
        self.ct.total_jobs += n;
        reply_fmt(w, format_args!("INSERTED-BATCH {first} {n}\r\n"));
    }

    /// Removes the jobs `first..end` of a batch that failed. Frames of it
    /// may be in the log already (a later one was refused): their jobs are
    /// deleted there too, unless the log itself failed (then nothing more
    /// can be written, and at-least-once may bring them back).
    fn undo_batch(&mut self, first: u64, end: u64) {
        self.recs.clear();
        for id in first..end {
            let _ = self.table.delete(id, None, &mut self.recs);
        }
        self.flush_log_now();
    }

    fn reserve(
        &mut self,
        c: ConnId,
        timeout_at: Option<Instant>,
        batch: u32,
        now: Instant,
        w: &mut Vec<u8>,
    ) -> Flow {
        let Some(conn) = self.conns.get_mut(&c) else { return Flow::Go };
        conn.worker = true;
        let watch = conn.watch.clone();
        let t = self.time(now);
        let until = timeout_at.map(|a| self.time(a));
        if let Some(flow) = self.dist_reserve(c, &watch, until, batch, t, w) {
            return flow;
        }
        match self.table.reserve_wait(t, holder(c), &watch, until, batch, &mut self.recs) {
            Reserved::Now(leases) => {
                let ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
                self.write_reserved(w, &ids, batch > 1);
                Flow::Go
            }
            Reserved::Ended(end) => {
                w.extend_from_slice(wait_end_reply(end));
                Flow::Go
            }
            Reserved::Waiting => Flow::Wait,
        }
    }

    /// A waiting connection's peer half-closed: beanstalkd ends the wait at
    /// once, with `TIMED_OUT`, unless its timer tick (which runs first)
    /// finds a reservation in the safety margin: then `DEADLINE_SOON`.
    /// Returns the reply, or `None` if it was not waiting.
    pub(crate) fn hangup_wait(&mut self, c: ConnId, now: Instant) -> Option<&'static [u8]> {
        let t = self.time(now);
        self.table.cancel_wait(t, holder(c)).map(wait_end_reply)
    }

    // -------------------------------------------------------------- timers

    /// Fires everything due at `now`: delayed jobs become ready, leases
    /// expire, waits time out, pauses end. Returns the next due time.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Instant> {
        let t = self.time(now);
        self.fire_schedules(t);
        self.table.tick(t, &mut self.recs);
        self.after(now);
        // The staffing estimate, once a second.
        if now.saturating_duration_since(self.last_window) >= Duration::from_secs(1) {
            self.last_window = now;
            if let Some(d) = &self.dist {
                d.refresh_lag();
            }
            self.observe_rates(t);
        }
        self.compact();
        self.next_due()
    }

    /// Gives every tube's staffing estimate its counters: jobs that became
    /// ready (the table's), runs that ended with an outcome and their time.
    fn observe_rates(&mut self, t: Time) {
        let ids: Vec<QueueId> = self.table.queues().map(|(q, _)| q).collect();
        for q in ids {
            let arrived = self.table.queue_view(q).map_or(0, |v| v.counters.readied);
            let f = self.front_mut(q);
            let counted = Counted {
                arrived,
                runs: f.run_buckets.iter().sum(),
                run_ns: u64::try_from(f.run_ns_total).unwrap_or(u64::MAX),
            };
            f.rates.observe(t.0, counted, staffing::TAU);
        }
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        let table = self.table.next_due().map(|t| self.clock.instant(t));
        let window = Some(self.last_window + Duration::from_secs(1));
        let mut due = [table, window].into_iter().flatten().min();
        if self
            .log
            .as_ref()
            .is_some_and(|l| l.pending_release.is_some() || (l.pass.is_some() && !l.pass_stalled))
        {
            // Compaction in progress: a batch every 10 ms.
            let soon = Instant::now() + Duration::from_millis(10);
            due = Some(due.map_or(soon, |d| d.min(soon)));
        }
        due
    }

    /// Panics if the table's invariants are broken (fuzzing).
    #[doc(hidden)]
    #[allow(clippy::panic)]
    pub(crate) fn check(&self) {
        if let Err(e) = self.table.check() {
            panic!("job table: {e}");
        }
        for c in self.conns.values() {
            assert!(self.table.queue_name(c.use_q).is_some(), "used tube dropped");
            for &q in &c.watch {
                assert!(self.table.queue_name(q).is_some(), "watched tube dropped");
            }
        }
        let listed = self.tube_order.len() as u64;
        assert_eq!(listed, self.table.totals().queues, "list-tubes and the table's tubes");
    }
}

/// A tube's policy as `tube-config` sets it: runs that end without an
/// outcome count against its attempts, so a job whose holders keep dying
/// is buried as a poison pill once they are used up.
fn daemon_policy(max_attempts: u32, backoff_ms: u64, backoff_max_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_base: Duration::from_millis(backoff_ms),
        backoff_cap: Duration::from_millis(backoff_max_ms),
        poison_after: 0,
        interruptions_use_attempts: true,
    }
}

/// A put's settings from the protocol's numbers (beanstalkd makes a TTR of
/// 0 one second).
fn put_spec(pri: u32, delay: u32, ttr: u32, unique: Option<&str>) -> PutSpec<'_> {
    PutSpec {
        pri,
        delay: Duration::from_secs(u64::from(delay)),
        ttr_s: ttr.max(1),
        max_attempts: 0,
        unique,
        deadline: None,
    }
}

/// The reply to a holder's command the table refused: `CANCELLED` for a
/// job cancelled while reserved (`cancel`), else beanstalkd's `NOT_FOUND`.
fn job_error_reply(e: &JobError) -> &'static [u8] {
    match e {
        JobError::Cancelled(_) => b"CANCELLED\r\n",
        _ => b"NOT_FOUND\r\n",
    }
}

fn wait_end_reply(end: WaitEnd) -> &'static [u8] {
    match end {
        WaitEnd::DeadlineSoon => b"DEADLINE_SOON\r\n",
        WaitEnd::TimedOut => b"TIMED_OUT\r\n",
    }
}

/// Whether a command changes something the log must record.
fn writes_log(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Put { .. }
            | Cmd::PutUnique { .. }
            | Cmd::PutBatch { .. }
            | Cmd::Reserve
            | Cmd::ReserveTimeout(_)
            | Cmd::ReserveBatch { .. }
            | Cmd::ReserveJob(_)
            | Cmd::Delete(_)
            | Cmd::Release { .. }
            | Cmd::Bury { .. }
            | Cmd::Kick(_)
            | Cmd::KickJob(_)
            | Cmd::Fail { .. }
            | Cmd::TubeConfig { .. }
            | Cmd::ClearTube { .. }
    ) || (cmd.is_paid() && !matches!(cmd, Cmd::ScheduleList))
        || matches!(cmd, Cmd::Fenced { inner, .. } if writes_log(inner))
}

/// `n` in decimal, as `write!` would put it, without the formatter (a
/// put's and a reserve's reply carry ids: `write!` cost ~600 instructions
/// a reply).
pub(crate) fn reply_u64(w: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[i..]);
}

fn reply_fmt(w: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let _ = w.write_fmt(args);
}

fn yaml_reply(w: &mut Vec<u8>, s: &str) {
    reply_fmt(w, format_args!("OK {}\r\n", s.len()));
    w.extend_from_slice(s.as_bytes());
    w.extend_from_slice(b"\r\n");
}

/// A job's state as `stats-job` names it.
pub(crate) fn state_name(j: &JobView<'_>) -> &'static str {
    match j.state {
        State::Ready => "ready",
        State::Delayed => "delayed",
        State::Reserved => "reserved",
        State::Buried => "buried",
    }
}

#[path = "store_dist.rs"]
mod dist;
use dist::DistPut;

#[path = "store_paid.rs"]
mod paid;

#[path = "store_log.rs"]
mod log_io;

pub(crate) use paid::limits_yaml;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "store_full_disk_tests.rs"]
mod full_disk_tests;
