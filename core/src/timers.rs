//! Time passing: due delayed jobs become ready, waits time out, leases
//! expire, pauses end, deadlines pass, rate gates reopen. Schedules tick
//! in [`Table::fire_schedules`], which needs job ids from the caller. The front-end calls [`Table::tick`] with the time
//! and sleeps until the time it returns (or until something else
//! happens).

use crate::job::State;
use crate::record::Records;
use crate::table::Table;
use crate::time::Time;

impl Table {
    /// Fires everything due at `now`, in beanstalkd's order (waits before
    /// leases: a late tick must not turn a wait's `DEADLINE_SOON` into a
    /// time-out), expires the jobs past their deadline, then serves
    /// waiters. Returns the next due time.
    pub fn tick(&mut self, now: Time, out: &mut Records) -> Option<Time> {
        self.open_gates(now);
        while let Some(&(at, id)) = self.delayed.first() {
            if at > now {
                break;
            }
            match self.slot(id) {
                Some(s) => {
                    self.unplace(s);
                    self.make_ready(s, now, false);
                }
                None => {
                    self.delayed.remove(&(at, id));
                }
            }
        }
        self.expire_waits(now);
        while let Some(&(at, id, token)) = self.leases.peek() {
            if at > now {
                break;
            }
            self.leases.pop();
            let Some(s) = self.slot(id) else { continue };
            let j = self.slab.get(s);
            if j.state != State::Reserved || j.at != at.0 || j.counts.reserves != token {
                continue;
            }
            self.interrupt(s, now, true, out);
        }
        while let Some(&(at, q)) = self.pauses.first() {
            if at > now {
                break;
            }
            self.pauses.remove(&(at, q));
            if let Some(x) = self.q_mut(q) {
                if x.paused_until == Some(at) {
                    x.paused_until = None;
                    x.pause_s = 0;
                }
            }
            self.waits.dirty = true;
            self.maybe_drop_queue(q);
        }
        // Deadlines last: a job that became ready above past its deadline
        // (its delay ended, its lease expired) goes in this tick too.
        self.expire_due(now, out);
        self.serve_waiters(now, out);
        self.next_due()
    }

    /// When [`Table::tick`] next has something to do.
    pub fn next_due(&self) -> Option<Time> {
        [
            self.delayed.first().map(|x| x.0),
            self.leases.peek().map(|x| x.0),
            self.next_wait_timer(),
            self.pauses.first().map(|x| x.0),
            self.gate_timers.first().map(|x| x.0),
            self.expiry.next(),
            self.next_tick(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
