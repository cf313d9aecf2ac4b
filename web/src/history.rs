//! The sampler: every interval it reads the daemon's counters and keeps
//! the last [`KEEP`] samples, from which the page draws its throughput and
//! backlog chart and the overview computes put and completion rates (the
//! daemon's counters are totals; rates are differences over time).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use spindle_client::{ClientError, StatsMap};

use crate::daemon::Daemon;

/// Samples kept: ten minutes at the default one-second interval.
pub(crate) const KEEP: usize = 600;

/// One tube's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct TubeSample {
    pub name: String,
    /// Jobs ever put (`total-jobs`).
    pub puts: u64,
    /// Jobs completed or deleted (`cmd-delete`).
    pub deletes: u64,
}

/// The daemon's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t_ms: u64,
    pub puts: u64,
    pub deletes: u64,
    pub ready: u64,
    pub delayed: u64,
    pub reserved: u64,
    pub buried: u64,
    pub tubes: Vec<TubeSample>,
}

/// The samples, shared by the sampler and the HTTP threads.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
}

/// The shared handle.
pub(crate) type SharedHistory = Arc<Mutex<History>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn num(m: &StatsMap, k: &str) -> u64 {
    m.get_u64(k).unwrap_or(0)
}

/// Reads one sample from the daemon.
pub(crate) fn take(d: &mut Daemon) -> Result<Sample, ClientError> {
    let stats = d.with(|c| c.stats())?;
    let names = d.with(|c| c.list_tubes())?;
    let mut tubes = Vec::with_capacity(names.len());
    for name in names {
        // A tube can vanish between list-tubes and stats-tube.
        match d.with(|c| c.stats_tube(&name)) {
            Ok(m) => tubes.push(TubeSample {
                puts: num(&m, "total-jobs"),
                deletes: num(&m, "cmd-delete"),
                name,
            }),
            Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Sample {
        t_ms: now_ms(),
        puts: num(&stats, "total-jobs"),
        deletes: tubes.iter().map(|t| t.deletes).sum(),
        ready: num(&stats, "current-jobs-ready"),
        delayed: num(&stats, "current-jobs-delayed"),
        reserved: num(&stats, "current-jobs-reserved"),
        buried: num(&stats, "current-jobs-buried"),
        tubes,
    })
}

impl History {
    pub(crate) fn push(&mut self, s: Sample) {
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The newest sample and the newest one at least `window` older
    /// (else the oldest), for rates.
    fn span(&self, window: Duration) -> Option<(&Sample, &Sample)> {
        let last = self.samples.back()?;
        let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let first = self
            .samples
            .iter()
            .rev()
            .find(|s| last.t_ms.saturating_sub(s.t_ms) >= w)
            .or_else(|| self.samples.front())?;
        Some((first, last))
    }

    /// (put rate, completion rate) per second over the last `window`, for
    /// the whole server (`tube` None) or one tube; None before two samples.
    pub(crate) fn rates(&self, tube: Option<&str>, window: Duration) -> Option<(f64, f64)> {
        let (a, b) = self.span(window)?;
        let dt = b.t_ms.saturating_sub(a.t_ms) as f64 / 1000.0;
        if dt <= 0.0 {
            return None;
        }
        let pick = |s: &Sample| match tube {
            None => Some((s.puts, s.deletes)),
            Some(n) => s.tubes.iter().find(|t| t.name == n).map(|t| (t.puts, t.deletes)),
        };
        let (p0, d0) = pick(a).unwrap_or((0, 0));
        let (p1, d1) = pick(b)?;
        Some((p1.saturating_sub(p0) as f64 / dt, d1.saturating_sub(d0) as f64 / dt))
    }

    /// The chart's series: per sample its time, put and completion rates
    /// since the sample before, and the backlog by state.
    pub(crate) fn series(&self) -> Value {
        let mut out = Vec::with_capacity(self.samples.len());
        let mut prev: Option<&Sample> = None;
        for s in &self.samples {
            let (put, done) = match prev {
                Some(p) if s.t_ms > p.t_ms => {
                    let dt = (s.t_ms - p.t_ms) as f64 / 1000.0;
                    (
                        s.puts.saturating_sub(p.puts) as f64 / dt,
                        s.deletes.saturating_sub(p.deletes) as f64 / dt,
                    )
                }
                _ => (0.0, 0.0),
            };
            out.push(json!({
                "t": s.t_ms, "put_rate": put, "done_rate": done,
                "ready": s.ready, "delayed": s.delayed,
                "reserved": s.reserved, "buried": s.buried,
            }));
            prev = Some(s);
        }
        Value::Array(out)
    }
}

/// Samples every `every` until `stop` receives (or its sender is
/// dropped); a failed sample is logged and skipped.
pub(crate) fn run(mut d: Daemon, h: SharedHistory, every: Duration, stop: Receiver<()>) {
    loop {
        match take(&mut d) {
            Ok(s) => h.lock().unwrap_or_else(PoisonError::into_inner).push(s),
            Err(e) => tracing::warn!("spindle web: sampling {} failed: {e}", d.addr()),
        }
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
