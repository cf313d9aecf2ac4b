//! The Prometheus text exposition (format 0.0.4) of the `metrics`
//! extension command: counters per command and per tube, gauges per
//! state, the wait summary and histogram and the run-time histogram per
//! tube, workers
//! (waiting, holding, desired), and the log (bytes, segments, syncs and
//! their latency, compaction). `spindle web` serves it as `GET /metrics`;
//! `docs/protocol.md` lists every family.

use std::fmt::Write as _;
use std::time::Instant;

use spindle_core::QueueId;
use spindle_wal::SYNC_BUCKETS_US;

use super::report::{desired_workers, secs};
use super::store::{Front, Store};

/// Upper bounds (seconds) of the run-time histogram's buckets: how long a
/// worker held a job before its outcome (delete, release, bury, fail).
pub(crate) const RUN_BUCKETS_S: [f64; 10] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

/// Upper bounds (microseconds) of the wait histogram's buckets.
const WAIT_BUCKETS_US: [u64; 8] =
    [100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 60_000_000, 600_000_000];

/// Counts one run of `ns` nanoseconds in `f`'s run-time histogram.
pub(crate) fn count_run(f: &mut Front, ns: u128) {
    let s = ns as f64 / 1e9;
    let i = RUN_BUCKETS_S.iter().position(|&b| s <= b).unwrap_or(RUN_BUCKETS_S.len());
    if let Some(b) = f.run_buckets.get_mut(i) {
        *b += 1;
    }
    f.run_ns_total = f.run_ns_total.saturating_add(ns);
}

/// `# HELP` and `# TYPE` of the family `spindle_NAME`.
fn family(s: &mut String, name: &str, help: &str, kind: &str) {
    let _ = write!(s, "# HELP spindle_{name} {help}\n# TYPE spindle_{name} {kind}\n");
}

/// A label value as the exposition format escapes it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Connections holding at least one reserved job of tube `qid`.
fn holding(st: &Store, qid: QueueId) -> usize {
    st.conns
        .keys()
        .filter(|&&c| {
            st.table
                .held(u32::try_from(c).unwrap_or(u32::MAX))
                .iter()
                .any(|&id| st.table.job(id).is_some_and(|j| j.queue == qid))
        })
        .count()
}

/// Writes the `_bucket`, `_sum` and `_count` lines of one histogram
/// series from per-bucket (not cumulative) counts, the last one +Inf.
fn histogram(s: &mut String, name: &str, labels: &str, bounds: &[f64], counts: &[u64], sum: f64) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut acc = 0u64;
    for (i, n) in counts.iter().enumerate() {
        acc += n;
        let le = bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| format!("{b}"));
        let _ = writeln!(s, "spindle_{name}_bucket{{{labels}{sep}le=\"{le}\"}} {acc}");
    }
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(s, "spindle_{name}_sum{braces} {sum:.6}");
    let _ = writeln!(s, "spindle_{name}_count{braces} {acc}");
}

/// Prometheus text exposition format 0.0.4.
pub(crate) fn prometheus(st: &Store, now: Instant) -> String {
    let mut s = String::with_capacity(8192);
    let tubes: Vec<(QueueId, String)> = st
        .tube_order
        .iter()
        .filter_map(|n| st.table.find_queue(n).map(|q| (q, label(n))))
        .collect();
    let views: Vec<_> =
        tubes.iter().map(|(q, _)| st.table.queue_view(*q).unwrap_or_default()).collect();

    let c = &st.ct;
    family(&mut s, "commands_total", "Protocol commands received, by command.", "counter");
    for (cmd, n) in [
        ("put", c.put),
        ("peek", c.peek),
        ("peek-ready", c.peek_ready),
        ("peek-delayed", c.peek_delayed),
        ("peek-buried", c.peek_buried),
        ("reserve", c.reserve),
        ("reserve-with-timeout", c.reserve_timeout),
        ("delete", c.delete),
        ("release", c.release),
        ("use", c.use_),
        ("watch", c.watch),
        ("ignore", c.ignore),
        ("bury", c.bury),
        ("kick", c.kick),
        ("touch", c.touch),
        ("stats", c.stats),
        ("stats-job", c.stats_job),
        ("stats-tube", c.stats_tube),
        ("list-tubes", c.list_tubes),
        ("list-tube-used", c.list_tube_used),
        ("list-tubes-watched", c.list_tubes_watched),
        ("pause-tube", c.pause_tube),
    ] {
        let _ = writeln!(s, "spindle_commands_total{{cmd=\"{cmd}\"}} {n}");
    }

    family(&mut s, "jobs", "Jobs by tube and state.", "gauge");
    for ((_, name), v) in tubes.iter().zip(&views) {
        for (state, n) in [
            ("ready", v.ready),
            ("reserved", v.reserved),
            ("delayed", v.delayed),
            ("buried", v.buried),
        ] {
            let _ = writeln!(s, "spindle_jobs{{tube=\"{name}\",state=\"{state}\"}} {n}");
        }
    }
    family(&mut s, "tube_jobs_total", "Jobs created per tube.", "counter");
    for ((_, name), v) in tubes.iter().zip(&views) {
        let _ = writeln!(s, "spindle_tube_jobs_total{{tube=\"{name}\"}} {}", v.counters.puts);
    }
    family(
        &mut s,
        "tube_events_total",
        "Job events per tube: put, reserve, delete, retry, bury, timeout, pause.",
        "counter",
    );
    for ((_, name), v) in tubes.iter().zip(&views) {
        let k = &v.counters;
        for (ev, n) in [
            ("put", k.puts),
            ("reserve", k.reserves),
            ("delete", k.deletes),
            ("retry", k.retries),
            ("bury", k.buries),
            ("timeout", k.timeouts),
            ("pause", k.pauses),
        ] {
            let _ = writeln!(s, "spindle_tube_events_total{{tube=\"{name}\",event=\"{ev}\"}} {n}");
        }
    }
    family(&mut s, "tube_paused", "1 while the tube is paused.", "gauge");
    for ((_, name), v) in tubes.iter().zip(&views) {
        let _ = writeln!(
            s,
            "spindle_tube_paused{{tube=\"{name}\"}} {}",
            u8::from(v.paused_until.is_some())
        );
    }

    family(&mut s, "wait_seconds", "Time from ready to reserved (quantiles).", "summary");
    for (qid, name) in &tubes {
        if let (Some((p50, p99, p999)), Some(n)) =
            (st.table.wait_quantiles(*qid), st.table.wait_count(*qid))
        {
            for (qn, v) in [(0.5, p50), (0.99, p99), (0.999, p999)] {
                let _ = writeln!(
                    s,
                    "spindle_wait_seconds{{tube=\"{name}\",quantile=\"{qn}\"}} {:.6}",
                    v as f64 / 1e6
                );
            }
            let _ = writeln!(s, "spindle_wait_seconds_count{{tube=\"{name}\"}} {n}");
        }
    }
    family(
        &mut s,
        "job_wait_seconds",
        "Time from ready to reserved, as a histogram (bucket edges within 6.25%; the sum is estimated).",
        "histogram",
    );
    for (qid, name) in &tubes {
        if let Some((le, total, sum_us)) = st.table.wait_histogram(*qid, &WAIT_BUCKETS_US) {
            let mut per = Vec::with_capacity(le.len() + 1);
            let mut prev = 0;
            for c in le.iter().copied().chain([total]) {
                per.push(c.saturating_sub(prev));
                prev = prev.max(c);
            }
            let bounds: Vec<f64> = WAIT_BUCKETS_US.iter().map(|&u| u as f64 / 1e6).collect();
            let labels = format!("tube=\"{name}\"");
            histogram(&mut s, "job_wait_seconds", &labels, &bounds, &per, sum_us / 1e6);
        }
    }
    family(
        &mut s,
        "run_seconds",
        "Time a worker held a job before its outcome (delete, release, bury, fail).",
        "histogram",
    );
    for (qid, name) in &tubes {
        let f = st.front(*qid).cloned().unwrap_or_default();
        let sum = f.run_ns_total as f64 / 1e9;
        let labels = format!("tube=\"{name}\"");
        histogram(&mut s, "run_seconds", &labels, &RUN_BUCKETS_S, &f.run_buckets, sum);
    }

    family(&mut s, "workers_waiting", "Connections waiting in reserve, per tube.", "gauge");
    for ((_, name), v) in tubes.iter().zip(&views) {
        let _ = writeln!(s, "spindle_workers_waiting{{tube=\"{name}\"}} {}", v.waiting);
    }
    family(&mut s, "workers_active", "Connections holding a job of the tube.", "gauge");
    for (qid, name) in &tubes {
        let _ = writeln!(s, "spindle_workers_active{{tube=\"{name}\"}} {}", holding(st, *qid));
    }
    family(&mut s, "desired_workers", "Workers each tube needs (Little's law).", "gauge");
    for (qid, name) in &tubes {
        let _ =
            writeln!(s, "spindle_desired_workers{{tube=\"{name}\"}} {}", desired_workers(st, *qid));
    }

    let tot = st.table.totals();
    family(&mut s, "job_timeouts_total", "Reservations that passed their TTR.", "counter");
    let _ = writeln!(s, "spindle_job_timeouts_total {}", tot.timeouts);
    family(&mut s, "connections", "Open connections.", "gauge");
    let _ = writeln!(s, "spindle_connections {}", st.conns.len());
    family(&mut s, "connections_total", "Connections accepted.", "counter");
    let _ = writeln!(s, "spindle_connections_total {}", c.total_connections);
    family(&mut s, "bytes", "Bytes of job bodies held.", "gauge");
    let _ = writeln!(s, "spindle_bytes {}", tot.bytes);
    family(&mut s, "uptime_seconds", "Seconds since start.", "gauge");
    let _ =
        writeln!(s, "spindle_uptime_seconds {}", secs(now.saturating_duration_since(st.started)));
    log_metrics(&mut s, st);
    s
}

/// The log's families; without a data directory only the compaction
/// counters (zero) and `spindle_log_enabled 0`.
fn log_metrics(s: &mut String, st: &Store) {
    family(s, "log_enabled", "1 when jobs are logged to a data directory.", "gauge");
    let _ = writeln!(s, "spindle_log_enabled {}", u8::from(st.log.is_some()));
    family(s, "compactions_total", "Compaction passes finished.", "counter");
    let _ = writeln!(s, "spindle_compactions_total {}", st.ct.compactions);
    family(s, "compaction_records_migrated_total", "Live jobs rewritten by compaction.", "counter");
    let _ = writeln!(s, "spindle_compaction_records_migrated_total {}", st.ct.records_migrated);
    family(s, "compaction_records_written_total", "Records written by compaction.", "counter");
    let _ = writeln!(s, "spindle_compaction_records_written_total {}", st.ct.records_written);
    let Some(log) = &st.log else { return };
    let segs = log.wal.segments();
    let w = log.wal.stats();
    family(s, "compaction_running", "1 while a compaction pass is in progress.", "gauge");
    let _ = writeln!(s, "spindle_compaction_running {}", u8::from(log.pass.is_some()));
    family(s, "log_bytes", "Bytes of records in the log's segments.", "gauge");
    let bytes: u64 = segs.iter().map(|&(base, end)| end.saturating_sub(base)).sum();
    let _ = writeln!(s, "spindle_log_bytes {bytes}");
    family(s, "log_segments", "Segment files held (prepared ones included).", "gauge");
    let _ = writeln!(s, "spindle_log_segments {}", w.live_segments);
    family(s, "log_segment_size_bytes", "The size of one segment file.", "gauge");
    let _ = writeln!(s, "spindle_log_segment_size_bytes {}", log.wal.segment_size());
    family(s, "log_segments_created_total", "Segments created in this run.", "counter");
    let _ = writeln!(s, "spindle_log_segments_created_total {}", w.segments_created);
    family(s, "log_segments_released_total", "Segments deleted after compaction.", "counter");
    let _ = writeln!(s, "spindle_log_segments_released_total {}", w.segments_released);
    family(s, "log_published_bytes", "Log position (LSN) complete in memory.", "gauge");
    let _ = writeln!(s, "spindle_log_published_bytes {}", w.published_lsn);
    family(s, "log_durable_bytes", "Log position (LSN) on stable storage.", "gauge");
    let _ = writeln!(s, "spindle_log_durable_bytes {}", w.durable_lsn);
    family(s, "log_fsync_seconds", "Latency of the log's syncs (fdatasync/msync).", "histogram");
    let bounds: Vec<f64> = SYNC_BUCKETS_US.iter().map(|&u| u as f64 / 1e6).collect();
    histogram(s, "log_fsync_seconds", "", &bounds, &w.sync_buckets, w.sync_ns_total as f64 / 1e9);
}
