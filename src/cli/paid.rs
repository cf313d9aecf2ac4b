//! `spindle schedule`, `spindle limit`, `spindle cancel`: the CLI door to
//! schedules, limits and cancellation (`docs/protocol.md`, "Schedules,
//! limits, expiry, cancellation").

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use spindle::client::{CancelOutcome, Client, NewSchedule, ScheduleRule, TubeLimits};

use super::CliResult;

/// `spindle schedule ...`
#[derive(Subcommand, Debug)]
pub(crate) enum ScheduleCmd {
    /// Add a periodic job: its payload is DATA, or stdin when DATA is absent.
    Add(AddArgs),
    /// List every schedule: rule, next and last tick, jobs made.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Stop a schedule from ticking (kept, and logged).
    Pause(NameArgs),
    /// Let a paused schedule tick again, from now on.
    Resume(NameArgs),
    /// Remove a schedule.
    Rm(NameArgs),
}

#[derive(Args, Debug)]
pub(crate) struct NameArgs {
    /// The queue.
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// The schedule's name.
    name: String,
}

#[derive(Args, Debug)]
pub(crate) struct AddArgs {
    /// The queue the jobs go to.
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// The schedule's name (unique in its queue).
    name: String,
    /// Tick at a fixed interval: 500ms, 30s, 5m, 1h (a bare number is seconds).
    #[arg(long, value_parser = parse_duration, required_unless_present = "cron", conflicts_with = "cron")]
    every: Option<Duration>,
    /// Tick on a cron expression: 5 fields, or 6 with seconds first.
    #[arg(long)]
    cron: Option<String>,
    /// The cron expression's IANA time zone.
    #[arg(long, default_value = "UTC", requires = "cron")]
    tz: String,
    /// The jobs' priority.
    #[arg(long, default_value_t = 1024)]
    pri: u32,
    /// The jobs' time-to-run, seconds.
    #[arg(long, default_value_t = 60)]
    ttr: u32,
    /// Put nothing for ticks missed while the server was down (default: one job).
    #[arg(long)]
    skip_missed: bool,
    /// Skip a tick while the previous tick's job is still live.
    #[arg(long)]
    no_overlap: bool,
    /// The payload; read from stdin when absent.
    data: Option<String>,
}

/// `spindle limit`'s arguments.
#[derive(Args, Debug)]
pub(crate) struct LimitArgs {
    /// The queue.
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// Most jobs of the queue reserved at once, across all workers (0: no limit).
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Most starts per period, as N/PERIOD: 100/1s, 10/500ms, 5000/1m.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<(u32, Duration)>,
    /// Starts allowed back to back after an idle spell (default: 1% of N,
    /// at least 1, which lets late workers catch up).
    #[arg(long, requires = "rate")]
    burst: Option<u32>,
    /// Bury jobs whose deadline passes (default: delete them).
    #[arg(long)]
    bury_expired: bool,
}

/// A duration: `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let (n, per) = s.split_once('/').ok_or_else(|| format!("{s:?}: give N/PERIOD, e.g. 100/1s"))?;
    let n: u32 = n.parse().map_err(|_| format!("{s:?}: {n:?} is not a whole number"))?;
    if n == 0 {
        return Err("a rate must allow at least 1 start per period; pause the queue instead".into());
    }
    Ok((n, parse_duration(per)?))
}

pub(crate) fn schedule(c: &mut Client, cmd: ScheduleCmd) -> CliResult<ExitCode> {
    match cmd {
        ScheduleCmd::Add(a) => {
            let payload = super::read_payload(a.data)?;
            let rule = match (a.every, a.cron) {
                (Some(d), _) => ScheduleRule::Every(d),
                (None, Some(expr)) => ScheduleRule::Cron { tz: a.tz, expr },
                (None, None) => return Err("give --every or --cron".into()),
            };
            c.schedule_add(&NewSchedule {
                tube: a.queue.clone(),
                name: a.name.clone(),
                rule,
                pri: a.pri,
                ttr: Duration::from_secs(a.ttr.into()),
                skip_missed: a.skip_missed,
                no_overlap: a.no_overlap,
                payload,
            })?;
            println!("scheduled {} in {}", a.name, a.queue);
        }
        ScheduleCmd::List { json } => {
            let list = c.schedule_list()?;
            if json {
                let rows: Vec<Value> = list
                    .iter()
                    .map(|m| {
                        let o: Map<String, Value> =
                            m.iter().map(|(k, v)| (k.to_string(), super::json_value(v))).collect();
                        Value::Object(o)
                    })
                    .collect();
                println!("{}", Value::Array(rows));
            } else if list.is_empty() {
                println!("no schedules");
            } else {
                println!(
                    "{:<20} {:<20} {:<28} {:>6} {:>10} {:>8} {:>8}",
                    "QUEUE", "NAME", "RULE", "PAUSED", "NEXT IN", "FIRED", "SKIPPED"
                );
                for m in &list {
                    let next = match (m.get("paused"), m.get_u64("next-in-ms")) {
                        (Some("true"), _) => "-".to_string(),
                        (_, Some(ms)) => format!("{:.1}s", ms as f64 / 1000.0),
                        _ => "-".to_string(),
                    };
                    println!(
                        "{:<20} {:<20} {:<28} {:>6} {:>10} {:>8} {:>8}",
                        m.get("tube").unwrap_or(""),
                        m.get("name").unwrap_or(""),
                        m.get("rule").unwrap_or(""),
                        m.get("paused").unwrap_or(""),
                        next,
                        m.get("fired").unwrap_or("0"),
                        m.get("skipped").unwrap_or("0"),
                    );
                }
            }
        }
        ScheduleCmd::Pause(n) => {
            c.schedule_pause(&n.queue, &n.name, true)?;
            println!("paused schedule {} in {}", n.name, n.queue);
        }
        ScheduleCmd::Resume(n) => {
            c.schedule_pause(&n.queue, &n.name, false)?;
            println!("resumed schedule {} in {}", n.name, n.queue);
        }
        ScheduleCmd::Rm(n) => {
            c.schedule_rm(&n.queue, &n.name)?;
            println!("removed schedule {} from {}", n.name, n.queue);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn limit(c: &mut Client, a: LimitArgs) -> CliResult<ExitCode> {
    let limits = TubeLimits {
        concurrency: a.concurrency,
        rate: a.rate.map(|(n, per)| (n, per, a.burst.unwrap_or(0))),
        bury_expired: a.bury_expired,
    };
    c.tube_limit(&a.queue, limits)?;
    let rate = a.rate.map_or_else(
        || "no rate limit".to_string(),
        |(n, per)| match a.burst {
            Some(b) => format!("{n} starts per {} ms (burst {b})", per.as_millis()),
            None => format!("{n} starts per {} ms", per.as_millis()),
        },
    );
    let conc = if a.concurrency == 0 {
        "no concurrency limit".to_string()
    } else {
        format!("at most {} at once", a.concurrency)
    };
    println!("{}: {conc}, {rate}", a.queue);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cancel(c: &mut Client, id: u64, json_out: bool) -> CliResult<ExitCode> {
    let outcome = c.cancel(id)?;
    let running = outcome == CancelOutcome::Running;
    if json_out {
        println!("{}", json!({ "id": id, "running": running }));
    } else if running {
        println!("cancelling job {id}: its worker is told at its next command");
    } else {
        println!("cancelled job {id}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse_with_units_and_refuse_zero() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert_eq!(parse_rate("100/1s"), Ok((100, Duration::from_secs(1))));
        assert!(parse_rate("0/1s").unwrap_err().contains("at least 1"));
        assert!(parse_rate("100").is_err());
    }
}
