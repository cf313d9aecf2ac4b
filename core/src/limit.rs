//! Limits per queue: how many of its jobs may be reserved at once
//! (concurrency), how many may start per period (rate), and what happens to
//! a job whose deadline passes before it starts (expiry, `expiry.rs`).
//!
//! A queue's *gate* is open when it is not paused, fewer of its jobs are
//! reserved than its concurrency limit, and its rate allows a start now.
//! Every way a job is handed out (`reserve`, `reserve_from`, serving
//! waiters, batches) takes only from queues whose gate is open, so a
//! limited queue's ready jobs simply wait; a holder watching several queues
//! gets a job from another one meanwhile. Nothing spins:
//!
//! 1. a reservation that a queue's *rate* turned away records the time the
//!    gate reopens (`Table::gate_timers`), which [`Table::next_due`]
//!    reports, and [`Table::tick`] at that time marks waiters to be served;
//! 2. a job of a queue at its *concurrency* limit leaving the reserved
//!    state (complete, release, fail, bury, lease expiry, cancel) marks
//!    the queue's waiters to be served at once;
//! 3. waiters are served in beanstalkd's order (`reserve.rs`).
//!
//! The rate is GCRA (the generic cell rate algorithm, ITU-T I.371; as in
//! Brandur Leach's "Rate limiting, cells, and GCRA"): with emission
//! interval `T = period / starts` and burst `b`, a start at `now` is
//! allowed when `now >= tat - (b - 1) * T`, and moves the theoretical
//! arrival time `tat` to `max(tat, now) + T`. Over any window of length
//! `w` at most `b + w / T` jobs start. `tat` is not logged: after a
//! restart a queue may start up to `b` jobs at once.

use std::time::Duration;

use crate::queue::QueueId;
use crate::record::Records;
use crate::table::Table;
use crate::time::Time;

/// At most `starts` jobs start per `per`, with up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Starts per period (at least 1).
    pub starts: u32,
    /// The period (more than zero).
    pub per: Duration,
    /// Starts allowed back to back after an idle spell (at least 1; see
    /// [`Rate::default_burst`]).
    pub burst: u32,
}

impl Rate {
    /// `starts` per `per`, with the default burst ([`Rate::default_burst`]).
    pub fn new(starts: u32, per: Duration) -> Rate {
        Rate { starts, per, burst: Rate::default_burst(starts) }
    }

    /// The burst a rate gets when none is given: 1% of its starts per
    /// period, at least 1. A burst of 1 spaces starts exactly and loses
    /// every moment a reserver comes late (a woken loop always does); a
    /// small burst lets late reservers catch up, so a greedy queue lands on
    /// its rate, while the excess over any window stays at most the burst.
    pub fn default_burst(starts: u32) -> u32 {
        (starts / 100).max(1)
    }

    /// The emission interval `T`, in nanoseconds (at least 1).
    pub(crate) fn interval_ns(&self) -> u64 {
        let per = u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX);
        (per / u64::from(self.starts.max(1))).max(1)
    }

    /// Starts per second.
    pub fn per_sec(&self) -> f64 {
        f64::from(self.starts) / self.per.as_secs_f64().max(1e-9)
    }
}

/// What happens to a job whose deadline passes before it is handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnExpiry {
    /// It is deleted (the default).
    #[default]
    Delete,
    /// It is buried, with the error "expired".
    Bury,
}

/// A queue's limits. The default limits nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most jobs of the queue reserved at once (0: no limit).
    pub concurrency: u32,
    /// Most starts per period.
    pub rate: Option<Rate>,
    /// What an expired job becomes.
    pub on_expiry: OnExpiry,
}

impl Limits {
    /// Whether these limit nothing (and bury nothing on expiry).
    pub fn is_none(&self) -> bool {
        *self == Limits::default()
    }

    /// Checks the values: a rate needs at least one start, a period above
    /// zero and a burst of at least one.
    pub fn check(&self) -> Result<(), LimitError> {
        if let Some(r) = self.rate {
            if r.starts == 0 {
                return Err(LimitError::ZeroRate);
            }
            if r.per.is_zero() {
                return Err(LimitError::ZeroPeriod);
            }
            if r.burst == 0 {
                return Err(LimitError::ZeroBurst);
            }
        }
        Ok(())
    }

    /// The most workers that can be busy on this queue: the concurrency
    /// limit, and by Little's law the rate times the mean service time
    /// (`service`), rounded up. `None` if nothing limits them.
    pub fn worker_cap(&self, service: Duration) -> Option<u64> {
        let by_rate = self
            .rate
            .map(|r| ((r.per_sec() * service.as_secs_f64()).ceil() as u64).max(u64::from(r.burst)));
        let by_conc = (self.concurrency > 0).then_some(u64::from(self.concurrency));
        match (by_rate, by_conc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Why limits were refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A rate of zero starts would never start a job.
    #[error("a rate must allow at least 1 start per period; pause the queue to stop it instead")]
    ZeroRate,
    /// A zero period.
    #[error("a rate's period must be longer than zero")]
    ZeroPeriod,
    /// A zero burst.
    #[error("a rate's burst must be at least 1")]
    ZeroBurst,
    /// No such queue.
    #[error("no queue with id {0}")]
    NoQueue(u32),
}

/// A queue's limits and the state they keep.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gate {
    pub limits: Limits,
    /// GCRA's theoretical arrival time.
    pub tat: Time,
    /// The reopen time recorded in `Table::gate_timers`, if any.
    pub timer: Option<Time>,
}

/// Why a gate is shut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shut {
    /// At its concurrency limit.
    Busy,
    /// The rate allows the next start at this time.
    Until(Time),
}

impl Gate {
    /// Whether a start is allowed now, given `reserved` jobs of the queue.
    #[inline]
    pub(crate) fn check(&self, now: Time, reserved: u64) -> Result<(), Shut> {
        let l = &self.limits;
        if l.concurrency > 0 && reserved >= u64::from(l.concurrency) {
            return Err(Shut::Busy);
        }
        if let Some(r) = l.rate {
            let t = r.interval_ns();
            let allow_at =
                self.tat.0.saturating_sub(t.saturating_mul(u64::from(r.burst).saturating_sub(1)));
            if now.0 < allow_at {
                return Err(Shut::Until(Time(allow_at)));
            }
        }
        Ok(())
    }

    /// Counts a start at `now`.
    #[inline]
    pub(crate) fn started(&mut self, now: Time) {
        if let Some(r) = self.limits.rate {
            self.tat = Time(self.tat.0.max(now.0).saturating_add(r.interval_ns()));
        }
    }

    /// Whether any limit is set.
    #[inline]
    pub(crate) fn limited(&self) -> bool {
        self.limits.concurrency > 0 || self.limits.rate.is_some()
    }
}

impl Table {
    /// Sets queue `q`'s limits (logged; they survive a restart).
    pub fn set_limits(
        &mut self,
        q: QueueId,
        limits: Limits,
        out: &mut Records,
    ) -> Result<(), LimitError> {
        limits.check()?;
        let x = self.q_mut(q.0).ok_or(LimitError::NoQueue(q.0))?;
        x.gate.limits = limits;
        if limits.rate.is_none() {
            x.gate.tat = Time::ZERO;
        }
        x.configured = true;
        let name = x.name.clone();
        out.limits(&name, &limits);
        self.waits.dirty = true;
        Ok(())
    }

    /// Queue `q`'s limits.
    pub fn limits(&self, q: QueueId) -> Option<Limits> {
        self.q(q.0).map(|x| x.gate.limits)
    }

    /// Whether queue `q` has a concurrency or rate limit (a runtime that
    /// runs jobs past the table, like the engine's lane, must not take this
    /// queue's jobs that way).
    pub fn is_limited(&self, q: QueueId) -> bool {
        self.q(q.0).is_some_and(|x| x.gate.limited())
    }

    /// Records that queue `q`'s rate gate reopens at `at` (a reservation
    /// was turned away), so [`Table::next_due`] reports it.
    pub(crate) fn gate_shut_until(&mut self, q: u32, at: Time) {
        let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) else { return };
        if x.gate.timer.is_some_and(|t| t <= at) {
            return;
        }
        x.gate.timer = Some(at);
        self.gate_timers.insert((at, q));
    }

    /// Reopens the rate gates due at `now`: their waiters are served.
    pub(crate) fn open_gates(&mut self, now: Time) {
        while let Some(&(at, q)) = self.gate_timers.first() {
            if at > now {
                break;
            }
            self.gate_timers.remove(&(at, q));
            if let Some(x) = self.queues.get_mut(q as usize).and_then(|x| x.as_mut()) {
                if x.gate.timer == Some(at) {
                    x.gate.timer = None;
                }
            }
            self.waits.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(starts: u32, per_ms: u64, burst: u32) -> Gate {
        Gate {
            limits: Limits {
                rate: Some(Rate { starts, per: Duration::from_millis(per_ms), burst }),
                ..Limits::default()
            },
            ..Gate::default()
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let mut g = gate(10, 1000, 3); // T = 100 ms
        let t0 = Time::from_secs(100);
        for _ in 0..3 {
            assert_eq!(g.check(t0, 0), Ok(()));
            g.started(t0);
        }
        assert_eq!(g.check(t0, 0), Err(Shut::Until(t0.plus_millis(100))));
        assert_eq!(g.check(t0.plus_millis(100), 0), Ok(()));
        g.started(t0.plus_millis(100));
        assert!(g.check(t0.plus_millis(150), 0).is_err());
    }

    #[test]
    fn gcra_starts_over_a_long_window_are_the_rate() {
        let mut g = gate(1000, 1000, 1);
        let mut now = Time::from_secs(5);
        let end = now.plus_secs(10);
        let mut starts = 0;
        while now < end {
            match g.check(now, 0) {
                Ok(()) => {
                    g.started(now);
                    starts += 1;
                }
                Err(Shut::Until(t)) => now = t,
                Err(Shut::Busy) => unreachable!(),
            }
        }
        assert_eq!(starts, 10_000);
    }

    #[test]
    fn concurrency_shuts_the_gate_at_the_limit() {
        let g = Gate { limits: Limits { concurrency: 2, ..Limits::default() }, ..Gate::default() };
        assert_eq!(g.check(Time::ZERO, 1), Ok(()));
        assert_eq!(g.check(Time::ZERO, 2), Err(Shut::Busy));
    }

    #[test]
    fn bad_limits_are_refused_with_a_reason() {
        let zero = Limits { rate: Some(Rate::new(0, Duration::from_secs(1))), ..Limits::default() };
        assert_eq!(zero.check(), Err(LimitError::ZeroRate));
        let no_period = Limits { rate: Some(Rate::new(5, Duration::ZERO)), ..Limits::default() };
        assert_eq!(no_period.check(), Err(LimitError::ZeroPeriod));
        assert!(LimitError::ZeroRate.to_string().contains("at least 1"));
    }

    #[test]
    fn the_worker_cap_is_littles_law_under_the_concurrency_limit() {
        let l = Limits {
            concurrency: 8,
            rate: Some(Rate::new(100, Duration::from_secs(1))),
            ..Limits::default()
        };
        // 100/s × 20 ms = 2 workers.
        assert_eq!(l.worker_cap(Duration::from_millis(20)), Some(2));
        // 100/s × 1 s = 100, capped at 8.
        assert_eq!(l.worker_cap(Duration::from_secs(1)), Some(8));
        assert_eq!(Limits::default().worker_cap(Duration::from_secs(1)), None);
    }
}
