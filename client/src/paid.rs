//! The extensions of schedules, limits, expiry and cancellation
//! (`docs/protocol.md`, "Schedules, limits, expiry, cancellation").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{check_tube, millis, secs, Client, ClientError, Result, StatsMap};

/// When a job expires: it is never handed out after this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// At this time.
    At(SystemTime),
    /// This long after the put reaches the server.
    In(Duration),
}

/// What `cancel` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was not running and is gone.
    Removed,
    /// The job is reserved: its holder's next command on it is answered
    /// `CANCELLED`, and the job goes then.
    Running,
}

/// A tube's limits (`tube-limit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TubeLimits {
    /// Most jobs of the tube reserved at once (0: no limit).
    pub concurrency: u32,
    /// Most starts per period: (starts, period, burst); a burst of 0
    /// leaves it to the server (1% of the starts, at least 1).
    pub rate: Option<(u32, Duration, u32)>,
    /// Bury expired jobs instead of deleting them.
    pub bury_expired: bool,
}

/// When a schedule ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleRule {
    /// Every this long (whole milliseconds), from when it was added.
    Every(Duration),
    /// A cron expression (5 fields, or 6 with seconds first) in an IANA
    /// time zone.
    Cron {
        /// The time zone, e.g. `UTC`.
        tz: String,
        /// The expression.
        expr: String,
    },
}

/// A schedule to add (`schedule-add`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSchedule {
    /// Its tube.
    pub tube: String,
    /// Its name, unique in the tube.
    pub name: String,
    /// When it ticks.
    pub rule: ScheduleRule,
    /// The job's priority.
    pub pri: u32,
    /// The job's TTR.
    pub ttr: Duration,
    /// Skip the ticks missed while the server was down (default: run once).
    pub skip_missed: bool,
    /// Skip a tick while the previous tick's job is live.
    pub no_overlap: bool,
    /// The job's payload.
    pub payload: Vec<u8>,
}

impl Client {
    /// `put-deadline` (extension): a put into the used tube of a job that
    /// is never handed out after `deadline` (it is deleted, or buried if
    /// the tube's limits say so). A deadline already past is refused with
    /// [`ClientError::Rejected`].
    pub fn put_deadline(
        &mut self,
        deadline: Deadline,
        pri: u32,
        delay: Duration,
        ttr: Duration,
        body: &[u8],
    ) -> Result<u64> {
        let d = match deadline {
            Deadline::At(t) => {
                let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                format!("@{ms}")
            }
            Deadline::In(d) => format!("+{}", millis(d)),
        };
        let line = format!(
            "put-deadline {d} {pri} {} {} {}",
            secs("delay", delay)?,
            secs("ttr", ttr)?,
            body.len()
        );
        self.require_extensions("put-deadline")?;
        let r = self.call(&line, |out| {
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        })?;
        match r.word() {
            "INSERTED" => self.num_arg(&line, &r, 0),
            "DEADLINE_PASSED" => Err(ClientError::Rejected {
                command: "put-deadline",
                reason: "the deadline has already passed; give a later one".into(),
            }),
            "BURIED" => Err(ClientError::Buried { id: self.num_arg(&line, &r, 0)? }),
            _ => Err(self.unexpected(&line, &r, true)),
        }
    }

    /// `cancel` (extension): cancels job `id` in any state.
    pub fn cancel(&mut self, id: u64) -> Result<CancelOutcome> {
        let line = format!("cancel {id}");
        let r = self.simple(&line)?;
        match r.word() {
            "CANCELLED" => Ok(CancelOutcome::Removed),
            "CANCELLING" => Ok(CancelOutcome::Running),
            "NOT_FOUND" => Err(ClientError::NotFound(format!("job {id} does not exist"))),
            _ => Err(self.unexpected_ext("cancel", &line, &r)),
        }
    }

    /// `tube-limit` (extension): sets a tube's concurrency and rate limits
    /// and what its expired jobs become. Logged; survives a restart.
    pub fn tube_limit(&mut self, tube: &str, limits: TubeLimits) -> Result<()> {
        check_tube(tube)?;
        let rate = match limits.rate {
            None => "-".to_string(),
            Some((starts, per, 0)) => format!("{starts}/{}", millis(per)),
            Some((starts, per, burst)) => format!("{starts}/{}/{burst}", millis(per)),
        };
        let exp = if limits.bury_expired { "bury" } else { "delete" };
        let line = format!("tube-limit {tube} {} {rate} {exp}", limits.concurrency);
        let r = self.simple(&line)?;
        match r.word() {
            "LIMITED" => Ok(()),
            "BAD_LIMIT" => Err(rejected("tube-limit", &r.line)),
            _ => Err(self.unexpected_ext("tube-limit", &line, &r)),
        }
    }

    /// `schedule-add` (extension): adds a periodic job.
    pub fn schedule_add(&mut self, s: &NewSchedule) -> Result<()> {
        check_tube(&s.tube)?;
        check_tube(&s.name).map_err(|_| {
            ClientError::InvalidArgument(format!(
                "schedule name {:?}: 1-200 bytes of A-Z a-z 0-9 - + / ; . $ _ ( )",
                s.name
            ))
        })?;
        let mut opts = Vec::new();
        if s.skip_missed {
            opts.push("skip-missed");
        }
        if s.no_overlap {
            opts.push("no-overlap");
        }
        let opts = if opts.is_empty() { "-".to_string() } else { opts.join(",") };
        let rule = match &s.rule {
            ScheduleRule::Every(d) => format!("every {}", millis(*d)),
            ScheduleRule::Cron { tz, expr } => format!("cron {tz} {expr}"),
        };
        let line = format!(
            "schedule-add {} {} {} {} {opts} {} {rule}",
            s.tube,
            s.name,
            s.pri,
            secs("ttr", s.ttr)?,
            s.payload.len()
        );
        self.require_extensions("schedule-add")?;
        let r = self.call(&line, |out| {
            out.extend_from_slice(&s.payload);
            out.extend_from_slice(b"\r\n");
        })?;
        match r.word() {
            "SCHEDULED" => Ok(()),
            "EXISTS" => Err(ClientError::Rejected {
                command: "schedule-add",
                reason: format!("tube {:?} already has a schedule named {:?}", s.tube, s.name),
            }),
            "BAD_SCHEDULE" => Err(rejected("schedule-add", &r.line)),
            _ => Err(self.unexpected(&line, &r, true)),
        }
    }

    /// `schedule-list` (extension): every schedule, each as its keys
    /// (`tube`, `name`, `rule`, `paused`, `next-ms`, `last-tick-ms`,
    /// `last-job`, `fired`, `skipped`, ...).
    pub fn schedule_list(&mut self) -> Result<Vec<StatsMap>> {
        let r = self.simple("schedule-list")?;
        match r.word() {
            "OK" => {
                let yaml = self.ok_body("schedule-list", r)?;
                let mut items = Vec::new();
                let mut cur = String::new();
                for l in yaml.lines().filter(|l| *l != "---") {
                    if let Some(first) = l.strip_prefix("- ") {
                        if !cur.is_empty() {
                            items.push(StatsMap::parse(&cur));
                        }
                        cur = format!("{first}\n");
                    } else {
                        cur.push_str(l.trim_start());
                        cur.push('\n');
                    }
                }
                if !cur.is_empty() {
                    items.push(StatsMap::parse(&cur));
                }
                Ok(items)
            }
            _ => Err(self.unexpected_ext("schedule-list", "schedule-list", &r)),
        }
    }

    /// `schedule-pause` / `schedule-resume` (extension).
    pub fn schedule_pause(&mut self, tube: &str, name: &str, paused: bool) -> Result<()> {
        check_tube(tube)?;
        let verb = if paused { "schedule-pause" } else { "schedule-resume" };
        let line = format!("{verb} {tube} {name}");
        let r = self.simple(&line)?;
        match r.word() {
            "PAUSED" | "RESUMED" => Ok(()),
            "NOT_FOUND" => {
                Err(ClientError::NotFound(format!("tube {tube:?} has no schedule named {name:?}")))
            }
            _ => Err(self.unexpected_ext(verb, &line, &r)),
        }
    }

    /// `schedule-rm` (extension).
    pub fn schedule_rm(&mut self, tube: &str, name: &str) -> Result<()> {
        check_tube(tube)?;
        let line = format!("schedule-rm {tube} {name}");
        let r = self.simple(&line)?;
        match r.word() {
            "REMOVED" => Ok(()),
            "NOT_FOUND" => {
                Err(ClientError::NotFound(format!("tube {tube:?} has no schedule named {name:?}")))
            }
            _ => Err(self.unexpected_ext("schedule-rm", &line, &r)),
        }
    }
}

/// A `BAD_*` reply: the server's reason follows the word.
fn rejected(command: &'static str, line: &str) -> ClientError {
    let reason = line.split_once(' ').map_or(line, |(_, r)| r).to_string();
    ClientError::Rejected { command, reason }
}
