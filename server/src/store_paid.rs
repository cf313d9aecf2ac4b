//! The daemon's side of schedules, limits, expiry and cancellation: the
//! protocol extensions of `docs/protocol.md` ("Schedules, limits, expiry,
//! cancellation") over the table's rules (`spindle_core`'s `schedule.rs`,
//! `limit.rs`, `expiry.rs`, `cancel.rs`). Nothing here decides a rule.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use spindle_core::{
    Cancelled, Limits, Missed, OnExpiry, Rate, ScheduleError, ScheduleSpec, Time, When,
};

use super::{reply_fmt, yaml_reply, ConnId, DistPut, Flow, Store};
use crate::proto::{Cmd, Deadline, RuleArg};

impl Store {
    /// Runs one of the extensions above ([`Cmd::is_paid`]).
    pub(super) fn dispatch_paid(
        &mut self,
        c: ConnId,
        cmd: Cmd,
        body: Vec<u8>,
        now: Instant,
        w: &mut Vec<u8>,
    ) -> Flow {
        let t = self.time(now);
        match cmd {
            Cmd::PutDeadline { deadline, pri, delay, ttr, .. } => {
                self.ct.put += 1;
                let at = match deadline {
                    Deadline::At(ms) => Time::from_millis(ms),
                    Deadline::In(ms) => t.plus_millis(ms),
                };
                let q = self.conn_use(c);
                if let Some(i) = self.dist_of(q) {
                    if at <= t {
                        w.extend_from_slice(b"DEADLINE_PASSED\r\n");
                        return Flow::Go;
                    }
                    let p = DistPut { pri, delay, unique: None, expires_in: Some(at.since(t)) };
                    return self.dist_put(c, i, body, p, w);
                }
                let reply = self.put(c, q, pri, delay, ttr, body, None, Some(at), now);
                w.extend_from_slice(&reply);
            }
            Cmd::Cancel(id) => match self.table.cancel(id, &mut self.recs) {
                Ok(Cancelled::Removed) => self.flushed(w, b"CANCELLED\r\n"),
                Ok(Cancelled::Running { .. }) => self.flushed(w, b"CANCELLING\r\n"),
                Err(_) => w.extend_from_slice(b"NOT_FOUND\r\n"),
            },
            Cmd::TubeLimit { tube, concurrency, rate, bury } => {
                let q = self.tube_ref(&tube);
                let limits = Limits {
                    concurrency,
                    rate: rate.map(|r| Rate {
                        starts: r.starts,
                        per: Duration::from_millis(r.period_ms),
                        burst: r.burst,
                    }),
                    on_expiry: if bury { OnExpiry::Bury } else { OnExpiry::Delete },
                };
                match self.table.set_limits(q, limits, &mut self.recs) {
                    Ok(()) => self.flushed(w, b"LIMITED\r\n"),
                    Err(e) => bad(w, "BAD_LIMIT", &e),
                }
            }
            Cmd::ScheduleAdd(a) => {
                let q = self.tube_ref(&a.tube);
                let when = match a.rule {
                    RuleArg::Every(ms) => When::Every(Duration::from_millis(ms)),
                    RuleArg::Cron { tz, expr } => When::Cron { expr, tz },
                };
                let spec = ScheduleSpec {
                    name: a.name,
                    when,
                    pri: a.pri,
                    ttr_s: a.ttr.max(1),
                    max_attempts: 0,
                    payload: body,
                    missed: if a.skip_missed { Missed::Skip } else { Missed::RunOnce },
                    no_overlap: a.no_overlap,
                };
                match self.table.add_schedule(t, q, spec, &mut self.recs) {
                    Ok(()) => self.flushed(w, b"SCHEDULED\r\n"),
                    Err(ScheduleError::Exists { .. }) => w.extend_from_slice(b"EXISTS\r\n"),
                    Err(e) => bad(w, "BAD_SCHEDULE", &e),
                }
            }
            Cmd::ScheduleList => yaml_reply(w, &self.schedule_yaml(t)),
            Cmd::SchedulePause { tube, name, paused } => {
                let r = match self.table.find_queue(&tube) {
                    Some(q) => self.table.pause_schedule(t, q, &name, paused, &mut self.recs),
                    None => Err(ScheduleError::NoQueue(0)),
                };
                match r {
                    Ok(()) if paused => self.flushed(w, b"PAUSED\r\n"),
                    Ok(()) => self.flushed(w, b"RESUMED\r\n"),
                    Err(_) => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            Cmd::ScheduleRm { tube, name } => {
                let r = match self.table.find_queue(&tube) {
                    Some(q) => self.table.remove_schedule(q, &name, &mut self.recs),
                    None => Err(ScheduleError::NoQueue(0)),
                };
                match r {
                    Ok(()) => self.flushed(w, b"REMOVED\r\n"),
                    Err(_) => w.extend_from_slice(b"NOT_FOUND\r\n"),
                }
            }
            // The caller sends only the commands above.
            _ => w.extend_from_slice(b"INTERNAL_ERROR\r\n"),
        }
        Flow::Go
    }

    /// Writes `reply` once the command's records are in the log, or
    /// `INTERNAL_ERROR` if they could not be written.
    fn flushed(&mut self, w: &mut Vec<u8>, reply: &[u8]) {
        if self.flush_log() {
            w.extend_from_slice(reply);
        } else {
            w.extend_from_slice(b"INTERNAL_ERROR\r\n");
        }
    }

    /// `schedule-list`'s YAML: one entry per schedule, by tube and name.
    fn schedule_yaml(&self, now: Time) -> String {
        let mut s = String::from("---\n");
        for v in self.table.schedules() {
            let rule = match &v.spec.when {
                When::Every(d) => format!("every {}", d.as_millis()),
                When::Cron { expr, tz } => format!("cron {tz} {expr}"),
            };
            let ms = |t: Option<Time>| t.map_or(0, Time::as_millis);
            let _ = write!(
                s,
                "- tube: {}\n  name: {}\n  rule: \"{}\"\n  pri: {}\n  ttr: {}\n  \
                 missed: {}\n  no-overlap: {}\n  paused: {}\n  next-ms: {}\n  \
                 next-in-ms: {}\n  last-tick-ms: {}\n  last-job: {}\n  fired: {}\n  \
                 skipped: {}\n",
                v.queue_name,
                v.spec.name,
                rule.replace('"', "'"),
                v.spec.pri,
                v.spec.ttr_s,
                if v.spec.missed == Missed::Skip { "skip" } else { "run-once" },
                v.spec.no_overlap,
                v.paused,
                ms(v.next),
                v.next.map_or(0, |n| n.since(now).as_millis()),
                ms(v.last_tick),
                v.last_job,
                v.fired,
                v.skipped,
            );
        }
        s
    }

    /// Fires the schedules due at `t` (the table numbers their jobs), and
    /// counts the jobs made.
    pub(super) fn fire_schedules(&mut self, t: Time) {
        let mut next = self.table.next_id();
        let made = self.table.fire_schedules(
            t,
            &mut || {
                next += 1;
                next - 1
            },
            &mut self.recs,
        );
        self.ct.total_jobs += made;
    }
}

/// `<WORD> <message>\r\n`: an extension's refusal, with the reason.
fn bad(w: &mut Vec<u8>, word: &str, e: &dyn std::fmt::Display) {
    let msg = e.to_string().replace(['\r', '\n'], " ");
    reply_fmt(w, format_args!("{word} {msg}\r\n"));
}

/// The limits a tube reports in `stats-tube-ext`.
pub(crate) fn limits_yaml(l: &Limits) -> String {
    let rate = l.rate.map_or_else(
        || "-".to_string(),
        |r| format!("{}/{}/{}", r.starts, r.per.as_millis(), r.burst),
    );
    let exp = if l.on_expiry == OnExpiry::Bury { "bury" } else { "delete" };
    format!("limit-concurrency: {}\nlimit-rate: {rate}\non-expiry: {exp}\n", l.concurrency)
}
