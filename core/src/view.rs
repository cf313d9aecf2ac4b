//! Read-only views: a job, a queue, the whole table.

use crate::job::{Counts, State};
use crate::queue::{QueueCounters, QueueId};
use crate::table::Table;
use crate::time::Time;

/// A job as the table holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobView<'a> {
    /// Its id.
    pub id: u64,
    /// Its queue.
    pub queue: QueueId,
    /// Its queue's name.
    pub queue_name: &'a str,
    /// Priority.
    pub pri: u32,
    /// State.
    pub state: State,
    /// Payload.
    pub payload: &'a [u8],
    /// When it was put.
    pub created: Time,
    /// When it entered its state.
    pub since: Time,
    /// Delayed: due time; reserved: lease deadline (None without one).
    pub due: Option<Time>,
    /// Lease length, seconds.
    pub ttr_s: u32,
    /// Last delay, seconds.
    pub delay_s: u32,
    /// Per-job attempt limit (0: the queue's).
    pub max_attempts: u32,
    /// Counters.
    pub counts: Counts,
    /// Unique key.
    pub unique: Option<&'a str>,
    /// Last error.
    pub error: Option<&'a str>,
    /// Reserved: its holder and the lease's token.
    pub holder: Option<(u32, u32)>,
}

/// A queue's gauges and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueView {
    /// Ready jobs.
    pub ready: u64,
    /// Ready jobs with priority below 1024.
    pub urgent: u64,
    /// Reserved jobs.
    pub reserved: u64,
    /// Delayed jobs.
    pub delayed: u64,
    /// Buried jobs.
    pub buried: u64,
    /// Holders waiting.
    pub waiting: u64,
    /// Paused until (None: not paused).
    pub paused_until: Option<Time>,
    /// The pause asked for, seconds.
    pub pause_s: u64,
    /// Counters.
    pub counters: QueueCounters,
}

/// The whole table's gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Live jobs.
    pub jobs: u64,
    /// Live payload bytes.
    pub bytes: u64,
    /// Ready.
    pub ready: u64,
    /// Ready and urgent.
    pub urgent: u64,
    /// Reserved.
    pub reserved: u64,
    /// Delayed.
    pub delayed: u64,
    /// Buried.
    pub buried: u64,
    /// Leases that expired.
    pub timeouts: u64,
    /// Queues.
    pub queues: u64,
    /// The next id.
    pub next_id: u64,
}

impl Table {
    /// Job `id`.
    pub fn job(&self, id: u64) -> Option<JobView<'_>> {
        let s = self.slot(id)?;
        Some(self.view(s))
    }

    /// Live job `id`'s payload (what a reply that carries only the body
    /// needs, without building a [`JobView`]).
    pub fn payload(&self, id: u64) -> Option<&[u8]> {
        let s = self.slot(id)?;
        Some(self.slab.get(s).payload.bytes())
    }

    fn view(&self, s: u32) -> JobView<'_> {
        let j = self.slab.get(s);
        let due = match j.state {
            State::Delayed | State::Reserved if j.at != 0 => Some(Time(j.at)),
            _ => None,
        };
        JobView {
            id: j.id,
            queue: QueueId(j.queue),
            queue_name: self.q(j.queue).map_or("", |x| &x.name),
            pri: j.pri,
            state: j.state,
            payload: j.payload.bytes(),
            created: j.created,
            since: j.since,
            due,
            ttr_s: j.ttr_s,
            delay_s: j.delay_s,
            max_attempts: j.max_attempts,
            counts: j.all_counts(),
            unique: j.unique(),
            error: j.error(),
            holder: (j.state == State::Reserved).then_some((j.holder, j.counts.reserves)),
        }
    }

    /// The job a reserve from `q` would take now (paused or not).
    pub fn peek_ready(&mut self, q: QueueId) -> Option<JobView<'_>> {
        let x = self.queues.get_mut(q.0 as usize)?.as_mut()?;
        let (_, _, s) = x.ready.best(&self.slab)?;
        Some(self.view(s))
    }

    /// The live job of queue `q` that holds unique key `key`.
    pub fn unique(&self, q: QueueId, key: &str) -> Option<u64> {
        self.q(q.0)?.uniques.get(key).copied()
    }

    /// The delayed job of `q` due soonest.
    pub fn peek_delayed(&self, q: QueueId) -> Option<JobView<'_>> {
        let &(_, id) = self.q(q.0)?.delayed.first()?;
        self.job(id)
    }

    /// The buried job of `q` that a kick would take first.
    pub fn peek_buried(&self, q: QueueId) -> Option<JobView<'_>> {
        let head = self.q(q.0)?.buried.head;
        (head != crate::job::NIL).then(|| self.view(head))
    }

    /// Queue `q`'s gauges and counters (cheap: no histogram is read; see
    /// [`Table::wait_quantiles`]).
    pub fn queue_view(&self, q: QueueId) -> Option<QueueView> {
        let x = self.q(q.0)?;
        Some(QueueView {
            ready: x.ready.n,
            urgent: x.ready.urgent,
            reserved: x.reserved,
            delayed: x.delayed.len() as u64,
            buried: u64::from(x.buried.len),
            waiting: x.waiting.len() as u64,
            paused_until: x.paused_until,
            pause_s: x.pause_s,
            counters: x.counters,
        })
    }

    /// Ready jobs of queue `q` (0 for an unknown queue): the cheap part of
    /// [`Table::queue_view`].
    pub fn ready_in(&self, q: QueueId) -> u64 {
        self.q(q.0).map_or(0, |x| x.ready.n)
    }

    /// Queue `q`'s ready→reserved wait at p50, p99 and p99.9, in
    /// microseconds (None before its first reservation).
    pub fn wait_quantiles(&self, q: QueueId) -> Option<(u64, u64, u64)> {
        let h = self.q(q.0)?.wait_us.as_ref().filter(|h| !h.is_empty())?;
        Some((h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999)))
    }

    /// Queue `q`'s waits (ready to reserved, microseconds) as a cumulative
    /// histogram: for each of `bounds_us`, the reservations whose wait's
    /// bucket ends at or below it; then the count of all and an estimate
    /// of their sum. None before the queue's first reservation.
    pub fn wait_histogram(&self, q: QueueId, bounds_us: &[u64]) -> Option<(Vec<u64>, u64, f64)> {
        let h = self.q(q.0)?.wait_us.as_ref()?;
        let le = bounds_us.iter().map(|&b| h.count_at_most(b)).collect();
        Some((le, h.len(), h.approx_sum()))
    }

    /// Reservations recorded in queue `q`'s wait histogram.
    pub fn wait_count(&self, q: QueueId) -> Option<u64> {
        Some(self.q(q.0)?.wait_us.as_ref()?.len())
    }

    /// Every queue, in id order.
    pub fn queues(&self) -> impl Iterator<Item = (QueueId, &str)> + '_ {
        self.queues
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_ref().map(|x| (QueueId(i as u32), &*x.name)))
    }

    /// The whole table's gauges.
    pub fn totals(&self) -> Totals {
        Totals {
            jobs: self.ids.len() as u64,
            bytes: self.bytes,
            ready: self.ready_n,
            urgent: self.urgent_n,
            reserved: self.reserved_n,
            delayed: self.delayed_n,
            buried: self.buried_n,
            timeouts: self.timeouts,
            queues: self.names.len() as u64,
            next_id: self.next_id,
        }
    }

    /// Live job ids from `start` on, in id order (compaction walks the
    /// table with this, a batch at a time).
    pub fn job_ids_from(&self, start: u64) -> impl Iterator<Item = u64> + '_ {
        self.ids.iter_from(start).map(|(id, _)| id)
    }

    /// Every live job id, in id order.
    pub fn job_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids.iter().map(|(id, _)| id)
    }
}
