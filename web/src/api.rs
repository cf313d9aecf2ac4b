//! The JSON API (everything the page shows and does) and `/metrics`:
//! routes to handlers that ask the daemon through the Rust client.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /metrics` | the daemon's Prometheus text (`metrics`) |
//! | `GET /api/overview` | server totals and every tube's counts, rates, wait, workers |
//! | `GET /api/history` | the chart's samples (rates, backlog) |
//! | `GET /api/queues/NAME` | a tube's stats and its next ready, delayed and buried job |
//! | `GET /api/jobs/ID` | a job's stats and its payload, truncated |
//! | `GET /api/jobs/ID/payload` | the whole payload, as a download |
//! | `POST /api/queues/NAME/{pause,resume,clear,kick}` | actions on a tube |
//! | `POST /api/jobs/ID/{kick,delete}` | actions on a job |

use std::time::Duration;

use serde_json::{json, Map, Value};
use spindle_client::{Client, ClientError, Job, JobState, StatsMap};

use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::history::SharedHistory;

/// Payload bytes the job view shows; the rest is downloadable.
pub(crate) const PREVIEW_BYTES: usize = 4096;

/// The window over which rates are computed.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// What a handler answers.
#[derive(Debug)]
pub(crate) enum Reply {
    /// JSON, status 200.
    Json(Value),
    /// Text with a content type.
    Text(&'static str, String),
    /// A download: bytes and a file name.
    Download(Vec<u8>, String),
}

/// A request, reduced to what the handlers need.
#[derive(Debug)]
pub(crate) struct Req<'a> {
    pub post: bool,
    /// Percent-decoded path segments (`/api/queues/a%2Fb` → `api`, `queues`, `a/b`).
    pub path: Vec<String>,
    pub body: &'a [u8],
}

/// `%XX` decoding of one path segment (invalid escapes stay as they are).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn stats_json(m: &StatsMap) -> Value {
    let mut o = Map::new();
    for (k, v) in m.iter() {
        let val = v.parse::<u64>().map_or_else(|_| Value::String(v.to_string()), Value::from);
        o.insert(k.to_string(), val);
    }
    Value::Object(o)
}

fn body_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

fn job_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request(format!("{s:?} is not a job id")))
}

/// Routes one request; a `POST` has passed the guard (`guard.rs`).
pub(crate) fn route(
    req: &Req<'_>,
    d: &mut Daemon,
    h: &SharedHistory,
    read_only: bool,
) -> Result<Reply, ApiError> {
    let p: Vec<&str> = req.path.iter().map(String::as_str).collect();
    match (req.post, p.as_slice()) {
        (false, ["metrics"]) => {
            let text = d.with(Client::metrics).map_err(|e| match e {
                ClientError::Unsupported { .. } => {
                    ApiError::new(501, "the daemon has no metrics (beanstalkd?)")
                }
                e => e.into(),
            })?;
            Ok(Reply::Text("text/plain; version=0.0.4; charset=utf-8", text))
        }
        (false, ["api", "overview"]) => overview(d, h, read_only).map(Reply::Json),
        (false, ["api", "history"]) => {
            let series = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner).series();
            Ok(Reply::Json(json!({ "samples": series })))
        }
        (false, ["api", "queues", name]) => queue(d, h, name, read_only).map(Reply::Json),
        (false, ["api", "jobs", id]) => job(d, job_id(id)?, read_only).map(Reply::Json),
        (false, ["api", "jobs", id, "payload"]) => {
            let id = job_id(id)?;
            let j = d.with(|c| c.peek(id))?.ok_or_else(|| gone(id))?;
            Ok(Reply::Download(j.body, format!("job-{id}.bin")))
        }
        (true, ["api", "queues", name, action]) => {
            queue_action(d, name, action, &body_json(req.body)?).map(Reply::Json)
        }
        (true, ["api", "jobs", id, action]) => job_action(d, job_id(id)?, action).map(Reply::Json),
        _ => Err(ApiError::not_found(format!(
            "no such {} route: /{}",
            if req.post { "POST" } else { "GET" },
            req.path.join("/")
        ))),
    }
}

fn gone(id: u64) -> ApiError {
    ApiError::not_found(format!("job {id} does not exist (done, deleted, or never put)"))
}

fn overview(d: &mut Daemon, h: &SharedHistory, read_only: bool) -> Result<Value, ApiError> {
    let ext = d.extensions()?;
    let stats = d.with(|c| c.stats())?;
    let names = d.with(|c| c.list_tubes())?;
    let hist = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut queues = Vec::with_capacity(names.len());
    for name in &names {
        let m = match d.with(|c| if ext { c.stats_tube_ext(name) } else { c.stats_tube(name) }) {
            Ok(m) => m,
            Err(ClientError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let (put_rate, done_rate) = hist.rates(Some(name), RATE_WINDOW).unwrap_or((0.0, 0.0));
        let n = |k: &str| m.get_u64(k).unwrap_or(0);
        queues.push(json!({
            "name": name,
            "ready": n("current-jobs-ready"),
            "urgent": n("current-jobs-urgent"),
            "delayed": n("current-jobs-delayed"),
            "reserved": n("current-jobs-reserved"),
            "buried": n("current-jobs-buried"),
            "total_jobs": n("total-jobs"),
            "paused": n("pause") > 0 && n("pause-time-left") > 0,
            "pause_time_left": n("pause-time-left"),
            "put_rate": put_rate,
            "done_rate": done_rate,
            "wait_p50_us": m.get_u64("wait-p50-us"),
            "wait_p99_us": m.get_u64("wait-p99-us"),
            "workers_waiting": n("current-waiting"),
            "workers_holding": m.get_u64("workers-holding"),
            "desired_workers": m.get_u64("desired-workers"),
        }));
    }
    let (put_rate, done_rate) = hist.rates(None, RATE_WINDOW).unwrap_or((0.0, 0.0));
    Ok(json!({
        "server": stats_json(&stats),
        "put_rate": put_rate,
        "done_rate": done_rate,
        "queues": queues,
        "read_only": read_only,
        "extensions": ext,
    }))
}

fn summary(j: Option<Job>) -> Value {
    match j {
        None => Value::Null,
        Some(j) => {
            let n = j.body.len().min(120);
            json!({
                "id": j.id,
                "size": j.body.len(),
                "preview": String::from_utf8_lossy(j.body.get(..n).unwrap_or_default()),
            })
        }
    }
}

fn queue(
    d: &mut Daemon,
    h: &SharedHistory,
    name: &str,
    read_only: bool,
) -> Result<Value, ApiError> {
    spindle_client::check_tube(name)?;
    let ext = d.extensions()?;
    let m = d.with(|c| if ext { c.stats_tube_ext(name) } else { c.stats_tube(name) })?;
    let mut next = Map::new();
    for state in [JobState::Ready, JobState::Delayed, JobState::Buried] {
        let j = d.with(|c| {
            c.use_tube(name)?;
            match state {
                JobState::Ready => c.peek_ready(),
                JobState::Delayed => c.peek_delayed(),
                _ => c.peek_buried(),
            }
        })?;
        next.insert(state.as_str().to_string(), summary(j));
    }
    let rates =
        h.lock().unwrap_or_else(std::sync::PoisonError::into_inner).rates(Some(name), RATE_WINDOW);
    let (put_rate, done_rate) = rates.unwrap_or((0.0, 0.0));
    // The tube's schedules (`docs/schedules-and-limits.md`); its limits and
    // its expired, cancelled and fired counts are `stats-tube-ext` keys.
    let schedules: Vec<Value> = if ext {
        d.with(Client::schedule_list)?
            .iter()
            .filter(|s| s.get("tube") == Some(name))
            .map(stats_json)
            .collect()
    } else {
        Vec::new()
    };
    Ok(json!({
        "name": name,
        "stats": stats_json(&m),
        "schedules": schedules,
        "next": next,
        "put_rate": put_rate,
        "done_rate": done_rate,
        "read_only": read_only,
    }))
}

fn job(d: &mut Daemon, id: u64, read_only: bool) -> Result<Value, ApiError> {
    let ext = d.extensions()?;
    let m = d.with(|c| if ext { c.stats_job_ext(id) } else { c.stats_job(id) })?;
    let j = d.with(|c| c.peek(id))?.ok_or_else(|| gone(id))?;
    let shown = j.body.get(..PREVIEW_BYTES.min(j.body.len())).unwrap_or_default();
    Ok(json!({
        "id": id,
        "stats": stats_json(&m),
        "size": j.body.len(),
        "truncated": j.body.len() > shown.len(),
        "utf8": std::str::from_utf8(&j.body).is_ok(),
        "payload": String::from_utf8_lossy(shown),
        "read_only": read_only,
    }))
}

fn states(v: &Value) -> Result<Vec<JobState>, ApiError> {
    let list = v
        .get("states")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("clear needs {\"states\": [\"ready\", ...]}"))?;
    let mut out = Vec::with_capacity(list.len());
    for s in list {
        let s = s.as_str().ok_or_else(|| ApiError::bad_request("states are strings"))?;
        match s.parse::<JobState>()? {
            JobState::Reserved => {
                return Err(ApiError::bad_request(
                    "reserved jobs cannot be cleared (their workers hold them)",
                ))
            }
            st => out.push(st),
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("pick at least one state to clear"));
    }
    Ok(out)
}

fn queue_action(d: &mut Daemon, name: &str, action: &str, body: &Value) -> Result<Value, ApiError> {
    spindle_client::check_tube(name)?;
    match action {
        "pause" => {
            let secs = body.get("seconds").and_then(Value::as_u64).unwrap_or(0);
            if secs == 0 || secs > u64::from(u32::MAX) {
                return Err(ApiError::bad_request("pause needs {\"seconds\": N} with N > 0"));
            }
            d.with(|c| c.pause_tube(name, Duration::from_secs(secs)))?;
            Ok(json!({ "paused": name, "seconds": secs }))
        }
        "resume" => {
            d.with(|c| c.pause_tube(name, Duration::ZERO))?;
            Ok(json!({ "resumed": name }))
        }
        "clear" => {
            let st = states(body)?;
            if !d.extensions()? {
                return Err(ApiError::new(501, "the daemon has no clear-tube (beanstalkd?)"));
            }
            let n = d.with(|c| c.clear_tube(name, &st))?;
            Ok(json!({ "cleared": n }))
        }
        "kick" => {
            let count = body.get("count").and_then(Value::as_u64).unwrap_or(1);
            let n = d.with(|c| {
                c.use_tube(name)?;
                c.kick(count)
            })?;
            Ok(json!({ "kicked": n }))
        }
        a => {
            Err(ApiError::not_found(format!("no queue action {a:?} (pause, resume, clear, kick)")))
        }
    }
}

fn job_action(d: &mut Daemon, id: u64, action: &str) -> Result<Value, ApiError> {
    match action {
        "kick" => {
            d.with(|c| c.kick_job(id)).map_err(|e| match e {
                ClientError::NotFound(_) => {
                    ApiError::not_found(format!("job {id} is not buried or delayed (or is gone)"))
                }
                e => e.into(),
            })?;
            Ok(json!({ "kicked": id }))
        }
        "delete" => {
            d.with(|c| c.delete(id)).map_err(|e| match e {
                ClientError::NotFound(_) => {
                    ApiError::not_found(format!("job {id} is gone or reserved by a worker"))
                }
                e => e.into(),
            })?;
            Ok(json!({ "deleted": id }))
        }
        "cancel" => {
            let running = d.with(|c| c.cancel(id)).map_err(|e| match e {
                ClientError::NotFound(_) => gone(id),
                e => e.into(),
            })?;
            Ok(
                json!({ "cancelled": id, "running": running == spindle_client::CancelOutcome::Running }),
            )
        }
        a => Err(ApiError::not_found(format!("no job action {a:?} (kick, delete, cancel)"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb%28x%29"), "a/b(x)");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn clear_states_refuse_reserved_and_empty() {
        assert_eq!(
            states(&json!({"states": ["ready", "buried"]})).unwrap(),
            vec![JobState::Ready, JobState::Buried]
        );
        assert_eq!(states(&json!({"states": ["reserved"]})).unwrap_err().status, 400);
        assert_eq!(states(&json!({"states": []})).unwrap_err().status, 400);
        assert_eq!(states(&json!({})).unwrap_err().status, 400);
    }
}
