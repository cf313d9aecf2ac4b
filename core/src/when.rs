//! When a schedule ticks: a cron expression in a time zone, or a fixed
//! interval. Cron is parsed and evaluated by the `croner` crate (5 fields,
//! or 6 with seconds first; `L`, `#`, `W`, names of months and days), in
//! any IANA time zone of `chrono-tz` (UTC by default).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::time::Time;

/// A schedule's rule, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// A cron expression (5 fields, or 6 with seconds first) in an IANA
    /// time zone such as `UTC` or `Europe/Stockholm`.
    Cron {
        /// The expression.
        expr: String,
        /// The time zone.
        tz: String,
    },
    /// Every this long, counted from when the schedule was added.
    Every(Duration),
}

impl When {
    /// A cron rule in UTC.
    pub fn cron(expr: &str) -> When {
        When::Cron { expr: expr.to_string(), tz: "UTC".to_string() }
    }

    /// Checks the rule as [`crate::Table::add_schedule`] does (for a
    /// front-end that hands it to someone else, say a server-side
    /// schedule): a cron expression that parses and fires, a known time
    /// zone, an interval of at least 1 ms.
    pub fn check(&self, now: Time) -> Result<(), WhenError> {
        Rule::new(self, now).map(drop)
    }
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            When::Cron { expr, tz } => write!(f, "cron {expr:?} {tz}"),
            When::Every(d) => write!(f, "every {} ms", d.as_millis()),
        }
    }
}

/// Why a rule was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WhenError {
    /// The cron expression does not parse.
    #[error("bad cron expression {expr:?}: {reason} (5 fields, or 6 with seconds first, e.g. \"*/5 * * * * *\")")]
    BadCron {
        /// The expression.
        expr: String,
        /// The parser's reason.
        reason: String,
    },
    /// Not an IANA time zone name.
    #[error("unknown time zone {0:?}: use an IANA name such as \"UTC\" or \"Europe/Stockholm\"")]
    BadTimeZone(String),
    /// An interval under a millisecond.
    #[error("an interval must be at least 1 ms")]
    ZeroInterval,
    /// The expression never matches (say, 30 February).
    #[error("cron expression {0:?} never fires")]
    Never(String),
}

/// A checked rule, ready to compute ticks.
#[derive(Clone, Debug)]
pub(crate) enum Rule {
    Cron(Box<Cron>, Tz),
    Every { anchor: Time, every_ns: u64 },
}

impl Rule {
    /// Checks `when`; an interval counts from `anchor`.
    pub(crate) fn new(when: &When, anchor: Time) -> Result<Rule, WhenError> {
        match when {
            When::Cron { expr, tz } => {
                let tz: Tz = Tz::from_str(tz).map_err(|_| WhenError::BadTimeZone(tz.clone()))?;
                let cron = Cron::from_str(expr).map_err(|e| WhenError::BadCron {
                    expr: expr.clone(),
                    reason: e.to_string(),
                })?;
                let rule = Rule::Cron(Box::new(cron), tz);
                if rule.next_after(anchor).is_none() {
                    return Err(WhenError::Never(expr.clone()));
                }
                Ok(rule)
            }
            When::Every(d) => {
                if *d < Duration::from_millis(1) {
                    return Err(WhenError::ZeroInterval);
                }
                let every_ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                Ok(Rule::Every { anchor, every_ns })
            }
        }
    }

    /// The first tick strictly after `t`.
    pub(crate) fn next_after(&self, t: Time) -> Option<Time> {
        match self {
            Rule::Cron(cron, tz) => {
                let dt = to_dt(t, tz)?;
                cron.find_next_occurrence(&dt, false).ok().and_then(|d| from_dt(&d))
            }
            Rule::Every { anchor, every_ns } => {
                if t < *anchor {
                    return Some(*anchor);
                }
                let k = (t.0 - anchor.0) / every_ns + 1;
                Some(Time(anchor.0.saturating_add(k.saturating_mul(*every_ns))))
            }
        }
    }

    /// The last tick at or before `t`, if any at or after `from`.
    pub(crate) fn last_at_or_before(&self, t: Time, from: Time) -> Option<Time> {
        let last = match self {
            Rule::Cron(cron, tz) => {
                let dt = to_dt(t, tz)?;
                cron.find_previous_occurrence(&dt, true).ok().and_then(|d| from_dt(&d))?
            }
            Rule::Every { anchor, every_ns } => {
                if t < *anchor {
                    return None;
                }
                Time(anchor.0 + (t.0 - anchor.0) / every_ns * every_ns)
            }
        };
        (last >= from).then_some(last)
    }
}

/// `t` rounded down to its second (cron ticks fall on whole seconds, and
/// `croner` keeps a start time's fraction in what it returns).
fn to_dt(t: Time, tz: &Tz) -> Option<DateTime<Tz>> {
    let secs = i64::try_from(t.0 / 1_000_000_000).ok()?;
    Some(Utc.timestamp_opt(secs, 0).single()?.with_timezone(tz))
}

fn from_dt<Z: TimeZone>(d: &DateTime<Z>) -> Option<Time> {
    let ns = d.timestamp_nanos_opt()?;
    u64::try_from(ns).ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-07 00:00:00 UTC.
    const DAY: Time = Time::from_secs(1_796_601_600);

    #[test]
    fn cron_with_seconds_ticks_every_matching_second() {
        let r = Rule::new(&When::cron("*/15 * * * * *"), DAY).unwrap();
        assert_eq!(r.next_after(DAY), Some(DAY.plus_secs(15)));
        assert_eq!(r.next_after(DAY.plus_millis(14_999)), Some(DAY.plus_secs(15)));
        assert_eq!(r.last_at_or_before(DAY.plus_secs(44), DAY), Some(DAY.plus_secs(30)));
    }

    #[test]
    fn cron_in_a_time_zone_ticks_at_local_time() {
        // 09:00 in Stockholm (UTC+1 in December) is 08:00 UTC.
        let when = When::Cron { expr: "0 0 9 * * *".into(), tz: "Europe/Stockholm".into() };
        let r = Rule::new(&when, DAY).unwrap();
        assert_eq!(r.next_after(DAY), Some(DAY.plus_secs(8 * 3600)));
    }

    #[test]
    fn an_interval_counts_from_its_anchor() {
        let r = Rule::new(&When::Every(Duration::from_millis(1500)), DAY).unwrap();
        assert_eq!(r.next_after(DAY), Some(DAY.plus_millis(1500)));
        assert_eq!(r.next_after(DAY.plus_millis(1500)), Some(DAY.plus_millis(3000)));
        assert_eq!(r.last_at_or_before(DAY.plus_millis(4000), DAY), Some(DAY.plus_millis(3000)));
        assert_eq!(r.last_at_or_before(DAY.plus_millis(4000), DAY.plus_millis(3001)), None);
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let e = Rule::new(&When::cron("61 * * * *"), DAY).unwrap_err();
        assert!(matches!(e, WhenError::BadCron { .. }), "{e}");
        let e = Rule::new(&When::Cron { expr: "* * * * *".into(), tz: "Mars/Base".into() }, DAY)
            .unwrap_err();
        assert_eq!(e, WhenError::BadTimeZone("Mars/Base".into()));
        assert_eq!(
            Rule::new(&When::Every(Duration::ZERO), DAY).unwrap_err(),
            WhenError::ZeroInterval
        );
        assert!(e.to_string().contains("IANA"));
    }
}
