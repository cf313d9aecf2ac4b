//! The store's side of distributed tubes: routing puts, reserves and
//! commands by id to them (`dist.rs` has the protocol as numbered steps).

use std::time::Duration;

use spindle_core::{QueueId, Reserved, Time, WaitEnd};
use spindle_jetstream::{Failed, Lease, Put, Settle, Settled};

use super::super::dist::{self, Held, Waiter, ID_BASE};
use super::super::proto::Cmd;
use super::{holder, reply_fmt, wait_end_reply, ConnId, Flow, Store};

/// How long a reserve over a distributed tube waits at least: time for
/// a pull request's answer (a loopback round trip is under 1 ms).
const DIST_GRACE: Duration = Duration::from_millis(100);

/// A put to a distributed tube, as the protocol gave it.
pub(crate) struct DistPut<'a> {
    pub pri: u32,
    pub delay: u32,
    pub unique: Option<&'a str>,
    pub expires_in: Option<Duration>,
}

impl Store {
    /// The distributed tube behind table queue `q`, if it is one.
    pub(super) fn dist_of(&self, q: QueueId) -> Option<usize> {
        let d = self.dist.as_ref()?;
        d.tube(self.table.queue_name(q)?)
    }

    /// A distributed tube's last lag reading and its waiters, for
    /// `stats-tube`; `None` for a local tube.
    pub(crate) fn dist_stats(&self, q: QueueId) -> Option<(Option<spindle_jetstream::Lag>, usize)> {
        let i = self.dist_of(q)?;
        self.dist.as_ref()?.tube_stats(i)
    }

    /// Step 1: hands a put to the node; the connection waits for its reply.
    pub(super) fn dist_put(
        &mut self,
        c: ConnId,
        tube: usize,
        body: Vec<u8>,
        p: DistPut<'_>,
        w: &mut Vec<u8>,
    ) -> Flow {
        if self.draining {
            w.extend_from_slice(b"DRAINING\r\n");
            return Flow::Go;
        }
        let Some(conn) = self.conns.get_mut(&c) else { return Flow::Go };
        conn.producer = true;
        let serial = conn.serial;
        // A delayed job gets its stream sequence only when due: it is
        // announced with an id of the local sequence.
        let local = if p.delay > 0 {
            let id = self.table.next_id();
            self.table.skip_ids(1);
            id
        } else {
            0
        };
        let Some(d) = &self.dist else { return Flow::Go };
        let Some(t) = d.tubes.get(tube) else { return Flow::Go };
        let mut put = Put::new(&*t.name, body).priority(p.pri).delay(dist::secs(p.delay));
        if let Some(k) = p.unique {
            put = put.unique_key(k);
        }
        if let Some(e) = p.expires_in {
            put = put.expires_in(e);
        }
        let unique = p.unique.is_some();
        let reply = d.replier(c, serial);
        let wake = d.wake.clone();
        d.node.put_then(put, move |r| {
            reply(dist::put_reply(r, unique, local));
            wake();
        });
        Flow::Later
    }

    /// Step 2: a reserve by a connection that watches a distributed tube;
    /// `None` if it watches none (the table alone serves it).
    pub(super) fn dist_reserve(
        &mut self,
        c: ConnId,
        watch: &[QueueId],
        until: Option<Time>,
        batch: u32,
        now: Time,
        w: &mut Vec<u8>,
    ) -> Option<Flow> {
        let d = self.dist.as_ref()?;
        let mut local = Vec::with_capacity(watch.len());
        let mut remote = Vec::new();
        for &q in watch {
            match self.table.queue_name(q).and_then(|n| d.tube(n)) {
                Some(i) => remote.push(i),
                None => local.push(q),
            }
        }
        if remote.is_empty() {
            return None;
        }
        // A lease is a pull away: even `reserve-with-timeout 0` waits for
        // one pull's answer, at most DIST_GRACE.
        let until = until.map(|u| u.max(now.plus(DIST_GRACE)));
        let h = holder(c);
        // A lease on hand more urgent than every local ready job goes first.
        if let Some(lease_pri) = d.best_on_hand(&remote) {
            let local_pri = self.table.peek_from(now, &local).map(|j| j.pri);
            if local_pri.is_none_or(|p| lease_pri < p) && self.dist_hand(c, &remote, batch, w) {
                return Some(Flow::Go);
            }
        }
        let r = self.table.reserve_wait(now, h, &local, until, batch, &mut self.recs);
        let flow = match r {
            Reserved::Now(leases) => {
                let ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
                self.write_reserved(w, &ids, batch > 1);
                Flow::Go
            }
            Reserved::Ended(WaitEnd::DeadlineSoon) => {
                w.extend_from_slice(wait_end_reply(WaitEnd::DeadlineSoon));
                Flow::Go
            }
            Reserved::Ended(WaitEnd::TimedOut) => {
                if !self.dist_hand(c, &remote, batch, w) {
                    w.extend_from_slice(wait_end_reply(WaitEnd::TimedOut));
                }
                Flow::Go
            }
            Reserved::Waiting => {
                if self.dist_hand(c, &remote, batch, w) {
                    self.table.end_wait(h);
                    Flow::Go
                } else {
                    self.dist_wait(c, &remote, batch > 1);
                    Flow::Wait
                }
            }
        };
        Some(flow)
    }

    /// Hands `c` up to `batch` leases on hand from `tubes`; false if none.
    fn dist_hand(&mut self, c: ConnId, tubes: &[usize], batch: u32, w: &mut Vec<u8>) -> bool {
        let Some(d) = &mut self.dist else { return false };
        let mut leases = Vec::new();
        while leases.len() < batch.max(1) as usize {
            match d.take_best(tubes) {
                Some(l) => leases.push(l),
                None => break,
            }
        }
        if leases.is_empty() {
            return false;
        }
        write_leases(w, &leases, batch > 1);
        for lease in leases {
            d.held.insert(lease.id() + ID_BASE, Held { conn: c, lease });
        }
        true
    }

    /// Queues `c` as a waiter of each of `tubes` and asks their pullers
    /// for that many leases.
    fn dist_wait(&mut self, c: ConnId, tubes: &[usize], batch: bool) {
        let Some(conn) = self.conns.get_mut(&c) else { return };
        conn.dist_wait += 1;
        let waiter = Waiter { conn: c, serial: conn.serial, wait: conn.dist_wait, batch };
        let Some(d) = &mut self.dist else { return };
        for &i in tubes {
            if let Some(t) = d.tubes.get_mut(i) {
                t.waiters.push_back(waiter);
                t.puller.want(t.waiters.len());
            }
        }
    }

    /// Step 3, and the replies computed on the runtime thread: called by
    /// the event loop on every iteration (cheap when nothing came).
    pub(crate) fn poll_dist(&mut self) {
        let Some(d) = &mut self.dist else { return };
        while let Ok(done) = d.done_rx.try_recv() {
            if self.conns.get(&done.conn).is_some_and(|s| s.serial == done.serial) {
                self.out.push((done.conn, done.bytes));
            }
        }
        for t in &mut d.tubes {
            let (table, conns) = (&self.table, &self.conns);
            let live = |w: &Waiter| {
                conns.get(&w.conn).is_some_and(|s| s.serial == w.serial && s.dist_wait == w.wait)
                    && table.is_waiting(holder(w.conn))
            };
            t.waiters.retain(live);
            while !t.waiters.is_empty() {
                let Some(lease) = t.puller.take() else { break };
                let Some(wt) = t.waiters.pop_front() else { break };
                // Its wait ends here, in every tube (the others' entries
                // are stale from now on).
                self.table.end_wait(holder(wt.conn));
                let mut reply = Vec::new();
                write_leases(&mut reply, std::slice::from_ref(&lease), wt.batch);
                d.held.insert(lease.id() + ID_BASE, Held { conn: wt.conn, lease });
                self.out.push((wt.conn, reply));
                let (table, conns) = (&self.table, &self.conns);
                t.waiters.retain(|w| {
                    conns.get(&w.conn).is_some_and(|s| s.dist_wait == w.wait)
                        && table.is_waiting(holder(w.conn))
                });
            }
            if t.waiters.is_empty() {
                // Nobody waits any more: released at once, for any node.
                while let Some(l) = t.puller.take() {
                    drop(l);
                }
            }
            t.puller.want(t.waiters.len());
        }
    }

    /// Step 5: the connection is gone; its leases go back at once.
    pub(super) fn dist_disconnect(&mut self, c: ConnId) {
        if let Some(d) = &mut self.dist {
            d.drop_conn(c);
        }
    }

    /// Step 4: a command naming a distributed job (id ≥ 2^52); `None` for
    /// any other command.
    pub(super) fn dist_job_cmd(
        &mut self,
        c: ConnId,
        cmd: &Cmd,
        body: &[u8],
        w: &mut Vec<u8>,
    ) -> Option<Flow> {
        let d = self.dist.as_mut()?;
        let id = match cmd {
            Cmd::Delete(id)
            | Cmd::Touch(id)
            | Cmd::Release { id, .. }
            | Cmd::Bury { id, .. }
            | Cmd::Fail { id, .. }
            | Cmd::Peek(id)
            | Cmd::StatsJob(id)
            | Cmd::StatsJobExt(id)
            | Cmd::KickJob(id)
            | Cmd::ReserveJob(id)
            | Cmd::Lease(id)
            | Cmd::Cancel(id) => *id,
            Cmd::Fenced { inner, .. } => match **inner {
                Cmd::Delete(id)
                | Cmd::Touch(id)
                | Cmd::Release { id, .. }
                | Cmd::Bury { id, .. }
                | Cmd::Fail { id, .. } => id,
                _ => return None,
            },
            _ => return None,
        };
        if id < ID_BASE {
            return None;
        }
        let serial = self.conns.get(&c).map_or(0, |s| s.serial);
        let wake = d.wake.clone();
        let reply = d.replier(c, serial);
        let answer = move |bytes: Vec<u8>| {
            reply(bytes);
            wake();
        };
        let not_found = |w: &mut Vec<u8>| w.extend_from_slice(b"NOT_FOUND\r\n");
        match cmd {
            Cmd::Delete(_) => {
                self.ct.delete += 1;
                match d.take_held(c, id) {
                    Some(l) => {
                        l.settle_then(Settle::Complete, log_failure("ack"));
                        w.extend_from_slice(b"DELETED\r\n");
                    }
                    None => not_found(w),
                }
            }
            Cmd::Release { delay, .. } => {
                self.ct.release += 1;
                match d.take_held(c, id) {
                    Some(l) => {
                        l.settle_then(Settle::Release(dist::secs(*delay)), log_failure("nak"));
                        w.extend_from_slice(b"RELEASED\r\n");
                    }
                    None => not_found(w),
                }
            }
            Cmd::Touch(_) => {
                self.ct.touch += 1;
                match d.held.get(&id) {
                    Some(h) if h.conn == c && h.lease.touch_nowait().is_ok() => {
                        w.extend_from_slice(b"TOUCHED\r\n");
                    }
                    _ => not_found(w),
                }
            }
            Cmd::Bury { .. } => {
                self.ct.bury += 1;
                let Some(l) = d.take_held(c, id) else {
                    not_found(w);
                    return Some(Flow::Go);
                };
                l.settle_then(Settle::Bury("buried by a client".into()), move |r| {
                    answer(match r {
                        Ok(_) => b"BURIED\r\n".to_vec(),
                        Err(e) => {
                            tracing::warn!(error = %e, "burying a distributed job failed");
                            b"INTERNAL_ERROR\r\n".to_vec()
                        }
                    })
                });
                return Some(Flow::Later);
            }
            Cmd::Fail { .. } => {
                let Some(l) = d.take_held(c, id) else {
                    not_found(w);
                    return Some(Flow::Go);
                };
                let attempts = l.attempt();
                let why = String::from_utf8_lossy(body).into_owned();
                l.settle_then(Settle::Fail(why), move |r| {
                    answer(match r {
                        Ok(Settled::Failed(Failed::Retrying(delay))) => {
                            let ms = delay.as_nanos().div_ceil(1_000_000);
                            format!("FAILED {attempts} {ms}\r\n").into_bytes()
                        }
                        Ok(_) => format!("FAILED-BURIED {attempts}\r\n").into_bytes(),
                        Err(e) => {
                            tracing::warn!(error = %e, "failing a distributed job failed");
                            b"INTERNAL_ERROR\r\n".to_vec()
                        }
                    })
                });
                return Some(Flow::Later);
            }
            // Peeking, kicking, fencing and cancelling a distributed job are
            // not mapped (`docs/jetstream.md`).
            _ => {
                if matches!(cmd, Cmd::Peek(_)) {
                    self.ct.peek += 1;
                } else if matches!(cmd, Cmd::StatsJob(_)) {
                    self.ct.stats_job += 1;
                }
                not_found(w);
            }
        }
        Some(Flow::Go)
    }
}

/// `RESERVED` for one lease, `RESERVED-BATCH` for a batch.
fn write_leases(w: &mut Vec<u8>, leases: &[Lease], batch: bool) {
    if !batch {
        if let Some(l) = leases.first() {
            dist::write_lease(w, l);
        }
        return;
    }
    reply_fmt(w, format_args!("RESERVED-BATCH {}\r\n", leases.len()));
    for l in leases {
        let p = l.payload();
        reply_fmt(w, format_args!("{} {}\r\n", l.id() + ID_BASE, p.len()));
        w.extend_from_slice(p);
        w.extend_from_slice(b"\r\n");
    }
}

/// A settlement whose reply went out already: a failure is logged (the
/// job comes back after its TTR, at least once).
fn log_failure(what: &'static str) -> impl FnOnce(Result<Settled, spindle_jetstream::Error>) {
    move |r| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "{what} of a distributed job failed; it is redelivered");
        }
    }
}
