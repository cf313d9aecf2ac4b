//! The YAML of `stats`, `stats-tube` and `stats-job` (keys, order and
//! number formats as beanstalkd 1.12 prints them) and our extended stats;
//! `metrics.rs` has the Prometheus text exposition of `metrics`.
//!
//! String values are quoted the way beanstalkd 1.13 quotes them (see
//! [`q`]); 1.12 quoted only `version`.

use std::fmt::Write as _;
use std::time::Instant;

use spindle_core::{JobView, QueueId, State, Time};

use super::store::{state_name, Store};

/// A quoted YAML string, as beanstalkd 1.13 prints `version`, `hostname`,
/// `os`, `platform`, tube `name` and job `tube`.
fn q(s: &str) -> String {
    format!("\"{s}\"")
}

pub(crate) fn secs(d: std::time::Duration) -> u64 {
    d.as_secs()
}

pub(crate) fn job_yaml(j: &JobView<'_>, now: Time, ext: bool) -> String {
    let left = match j.state {
        State::Delayed | State::Reserved => j.due.map_or(0, |d| secs(d.since(now))),
        _ => 0,
    };
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "---\nid: {}\ntube: {}\nstate: {}\npri: {}\nage: {}\ndelay: {}\nttr: {}\ntime-left: {}\n\
         file: 0\nreserves: {}\ntimeouts: {}\nreleases: {}\nburies: {}\nkicks: {}\n",
        j.id,
        q(j.queue_name),
        state_name(j),
        j.pri,
        secs(now.since(j.created)),
        j.delay_s,
        j.ttr_s,
        left,
        j.counts.reserves,
        j.counts.timeouts,
        j.counts.releases,
        j.counts.buries,
        j.counts.kicks,
    );
    if ext {
        let _ = write!(
            s,
            "attempts: {}\nunique-key: {}\nlast-error: {}\n",
            j.counts.reserves,
            q(&yaml_escape(j.unique.unwrap_or(""))),
            q(&yaml_escape(j.error.unwrap_or(""))),
        );
    }
    s
}

fn yaml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(o, "\\x{:02x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

pub(crate) fn tube_yaml(st: &Store, qid: QueueId, now: Time, ext: bool) -> String {
    let name = st.table.queue_name(qid).unwrap_or("");
    let mut v = st.table.queue_view(qid).unwrap_or_default();
    if let Some((lag, waiting)) = st.dist_stats(qid) {
        // A distributed tube: its jobs are the stream's, across every node
        // (as of the last reading, once a second).
        if let Some(l) = lag {
            v.ready = l.pending;
            v.reserved = l.leased;
        }
        v.waiting = waiting as u64;
    }
    let f = st.front(qid).cloned().unwrap_or_default();
    let pause_left = v.paused_until.map_or(0, |u| secs(u.since(now)));
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "---\nname: {}\ncurrent-jobs-urgent: {}\ncurrent-jobs-ready: {}\n\
         current-jobs-reserved: {}\ncurrent-jobs-delayed: {}\ncurrent-jobs-buried: {}\n\
         total-jobs: {}\ncurrent-using: {}\ncurrent-watching: {}\ncurrent-waiting: {}\n\
         cmd-delete: {}\ncmd-pause-tube: {}\npause: {}\npause-time-left: {}\n",
        q(name),
        v.urgent,
        v.ready,
        v.reserved,
        v.delayed,
        v.buried,
        v.counters.puts,
        f.using,
        f.watching,
        v.waiting,
        f.cmd_delete,
        v.counters.pauses,
        v.pause_s,
        pause_left,
    );
    if ext {
        let (p50, p99, p999) = st.table.wait_quantiles(qid).unwrap_or((0, 0, 0));
        let holding = st
            .conns
            .keys()
            .filter(|&&c| {
                st.table
                    .held(u32::try_from(c).unwrap_or(u32::MAX))
                    .iter()
                    .any(|&id| st.table.job(id).is_some_and(|j| j.queue == qid))
            })
            .count();
        let p = st.table.policy(qid).unwrap_or_default();
        let _ = write!(
            s,
            "max-attempts: {}\nbackoff-ms: {}\nbackoff-max-ms: {}\nwait-p50-us: {}\n\
             wait-p99-us: {}\nwait-p999-us: {}\nworkers-waiting: {}\nworkers-holding: {}\n\
             desired-workers: {}\nexpired: {}\ncancelled: {}\nfired: {}\n{}",
            p.max_attempts,
            p.backoff_base.as_millis(),
            p.backoff_cap.as_millis(),
            p50,
            p99,
            p999,
            v.waiting,
            holding,
            desired_workers(st, qid),
            v.counters.expired,
            v.counters.cancelled,
            v.counters.fired,
            super::store::limits_yaml(&st.table.limits(qid).unwrap_or_default()),
        );
    }
    s
}

/// `desired-workers`: `spindle_core::staffing::desired_workers`, the law
/// and estimate the library's controller publishes for its queues, with
/// the target wait half the latency target (`--latency-target-ms`), as
/// the library's. A tube's limits cap it.
pub(crate) fn desired_workers(st: &Store, qid: QueueId) -> u64 {
    let v = st.table.queue_view(qid).unwrap_or_default();
    let rates = st.front(qid).map(|f| f.rates).unwrap_or_default();
    let cap = st.table.limits(qid).and_then(|l| l.worker_cap(rates.run_time()));
    let wait = st.cfg.latency_target / 2;
    spindle_core::staffing::desired_workers(&rates, v.ready, v.reserved > 0, wait, cap)
}

fn proc_text(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim_end().to_string()).unwrap_or_default()
}

/// CPU time used by this process: (user, system) as `seconds.micros`.
fn rusage() -> (String, String) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: getrusage writes a complete `rusage` into the pointer we pass,
    // which points to a zeroed value of exactly that type.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return ("0.000000".into(), "0.000000".into());
    }
    #[allow(unsafe_code)]
    // SAFETY: zero-initialised (a valid `rusage`) and, on success, filled in.
    let ru = unsafe { ru.assume_init() };
    let f = |t: libc::timeval| format!("{}.{:06}", t.tv_sec, t.tv_usec);
    (f(ru.ru_utime), f(ru.ru_stime))
}

pub(crate) fn stats_yaml(st: &Store, now: Instant) -> String {
    let c = &st.ct;
    let tot = st.table.totals();
    let producers = st.conns.values().filter(|x| x.producer).count();
    let workers = st.conns.values().filter(|x| x.worker).count();
    let waiting =
        st.conns.keys().filter(|&&x| st.table.is_waiting(u32::try_from(x).unwrap_or(0))).count();
    let (ut, stime) = rusage();
    let (oldest, current, max_size) = match &st.log {
        Some(l) => {
            let segs = l.wal.segments();
            let size = st.cfg.segment_size.max(1);
            (
                segs.first().map_or(0, |s| s.0 / size + 1),
                segs.last().map_or(0, |s| s.0 / size + 1),
                st.cfg.segment_size,
            )
        }
        None => (0, 0, st.cfg.segment_size),
    };
    let mut s = String::with_capacity(1100);
    let _ = write!(
        s,
        "---\ncurrent-jobs-urgent: {}\ncurrent-jobs-ready: {}\ncurrent-jobs-reserved: {}\n\
         current-jobs-delayed: {}\ncurrent-jobs-buried: {}\ncmd-put: {}\ncmd-peek: {}\n\
         cmd-peek-ready: {}\ncmd-peek-delayed: {}\ncmd-peek-buried: {}\ncmd-reserve: {}\n\
         cmd-reserve-with-timeout: {}\ncmd-delete: {}\ncmd-release: {}\ncmd-use: {}\n\
         cmd-watch: {}\ncmd-ignore: {}\ncmd-bury: {}\ncmd-kick: {}\ncmd-touch: {}\n\
         cmd-stats: {}\ncmd-stats-job: {}\ncmd-stats-tube: {}\ncmd-list-tubes: {}\n\
         cmd-list-tube-used: {}\ncmd-list-tubes-watched: {}\ncmd-pause-tube: {}\n\
         job-timeouts: {}\ntotal-jobs: {}\nmax-job-size: {}\ncurrent-tubes: {}\n\
         current-connections: {}\ncurrent-producers: {}\ncurrent-workers: {}\n\
         current-waiting: {}\ntotal-connections: {}\npid: {}\nversion: {}\n\
         rusage-utime: {}\nrusage-stime: {}\nuptime: {}\nbinlog-oldest-index: {}\n\
         binlog-current-index: {}\nbinlog-records-migrated: {}\nbinlog-records-written: {}\n\
         binlog-max-size: {}\ndraining: {}\nid: {}\nhostname: {}\nos: {}\nplatform: {}\n\
         spindle-version: {}\n",
        tot.urgent,
        tot.ready,
        tot.reserved,
        tot.delayed,
        tot.buried,
        c.put,
        c.peek,
        c.peek_ready,
        c.peek_delayed,
        c.peek_buried,
        c.reserve,
        c.reserve_timeout,
        c.delete,
        c.release,
        c.use_,
        c.watch,
        c.ignore,
        c.bury,
        c.kick,
        c.touch,
        c.stats,
        c.stats_job,
        c.stats_tube,
        c.list_tubes,
        c.list_tube_used,
        c.list_tubes_watched,
        c.pause_tube,
        tot.timeouts,
        c.total_jobs,
        st.cfg.max_job_size,
        tot.queues,
        st.conns.len(),
        producers,
        workers,
        waiting,
        c.total_connections,
        std::process::id(),
        q(crate::BEANSTALKD_VERSION),
        ut,
        stime,
        secs(now.saturating_duration_since(st.started)),
        oldest,
        current,
        c.records_migrated,
        c.records_written,
        max_size,
        st.draining,
        st.instance_id,
        q(&proc_text("/proc/sys/kernel/hostname")),
        q(&proc_text("/proc/sys/kernel/version")),
        q(std::env::consts::ARCH),
        q(&st.cfg.version),
    );
    s
}
