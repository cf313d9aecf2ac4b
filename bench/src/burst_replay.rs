//! Replaying a trace against one policy: the four policies, the job
//! handler, the generator thread and the sampler thread of the `burst`
//! scenario.
//!
//! 1. [`Policy::build`] starts a [`Target`]: the monolithic pool of
//!    `burst_mono.rs`, or an engine configured for the policy, with the
//!    [`Recorder`]'s handler on one queue.
//! 2. [`replay`] starts the trace a few milliseconds ahead. The generator
//!    thread submits job `i` at `t0 + at_ns(i)`: it sleeps (timer slack cut
//!    to 1 µs) until `--spin-us` before the due time and spins the rest. A
//!    late generator does not move the schedule: the payload carries the
//!    *scheduled* time, so lateness counts as queueing (no coordinated
//!    omission).
//! 3. The handler stamps its start, stores `start − scheduled` in the job's
//!    slot (one atomic per job, no lock, no shared histogram), counts the
//!    start, does the job's work (calibrated CPU loop, or a sleep with
//!    `--io`) and counts the completion.
//! 4. The sampler thread wakes every millisecond and records the backlog
//!    (submitted − started); every `--stats-ms` (default 10 ms) it also asks
//!    an engine for `Engine::workers()` (active core workers, blocking
//!    threads). It prints
//!    the progress line on stderr and ends the replay once every job of the
//!    trace has completed (or fails after [`DRAIN_LIMIT`]).
//! 5. CPU time is `getrusage(RUSAGE_SELF)` from just before the generator
//!    starts to the last completion; the generator's and sampler's own
//!    threads are measured with `RUSAGE_THREAD` so they can be told apart.

use crate::burst_mono::MonoPool;
use crate::burst_trace::{CpuWork, Trace};
use crate::latency::Latency;
use crate::BoxResult;
use spindle_engine::{Durability, Engine, Job, JobRef, Outcome, Workers};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The queue the scenario's jobs go to.
pub const QUEUE: &str = "burst";

/// How long the replay waits for stragglers after the last submit.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// Backlog sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);
/// Progress line period, in backlog samples.
const PROGRESS_EVERY: u32 = 250;

/// One of the four compared policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One locked queue, a fixed pool of blocking threads.
    StaticMonolithic,
    /// Engine, every worker active, no stealing.
    StaticSharded,
    /// Engine, every worker active and busy-polling.
    AlwaysMax,
    /// Engine with the lag controller.
    Lag,
}

impl Policy {
    /// All four, in report order.
    pub const ALL: [Policy; 4] =
        [Policy::StaticMonolithic, Policy::StaticSharded, Policy::AlwaysMax, Policy::Lag];

    /// The name used in options, tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Policy::StaticMonolithic => "static-monolithic",
            Policy::StaticSharded => "static-sharded",
            Policy::AlwaysMax => "always-max",
            Policy::Lag => "lag",
        }
    }

    /// Parses a [`Policy::name`].
    pub fn parse(s: &str) -> BoxResult<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy {s:?}; one of {}", names.join(", ")).into()
        })
    }

    /// Step 1: starts the policy with `rec`'s handler.
    pub fn build(self, cfg: &PolicyConfig, rec: &Arc<Recorder>) -> BoxResult<Target> {
        let w = cfg.workers;
        if self == Policy::StaticMonolithic {
            let rec = rec.clone();
            return Ok(Target::Mono(MonoPool::start(w, move |p: &[u8]| rec.handle(p))?));
        }
        let b = Engine::builder().durability(Durability::Memory).shards(w);
        let b = match self {
            Policy::StaticSharded => b.workers(Workers::Static(w)).work_stealing(false),
            Policy::AlwaysMax => b.workers(Workers::Static(w)).idle_spin(Duration::MAX),
            _ => b
                .workers(Workers::Lag)
                .max_workers(w)
                .min_workers(1)
                .latency_target(cfg.latency_target),
        };
        let engine = b.build()?;
        let r = rec.clone();
        let handler = move |job: &JobRef<'_>| {
            r.handle(job.payload());
            Outcome::Done
        };
        if cfg.io && self == Policy::Lag {
            engine.register_blocking(QUEUE, handler)?;
        } else {
            engine.register(QUEUE, handler)?;
        }
        Ok(Target::Engine(engine))
    }
}

/// What every policy is built with.
#[derive(Debug, Clone, Copy)]
pub struct PolicyConfig {
    /// Worker threads (monolithic) or shards and most workers (engine).
    pub workers: usize,
    /// The lag controller's p99 queueing target.
    pub latency_target: Duration,
    /// Jobs sleep instead of computing; `lag` registers a blocking handler.
    pub io: bool,
}

/// A running policy.
#[derive(Debug)]
pub enum Target {
    /// The bench's own locked queue.
    Mono(MonoPool),
    /// A Spindle engine.
    Engine(Engine),
}

impl Target {
    fn submit(&self, payload: Vec<u8>) -> BoxResult<()> {
        match self {
            Target::Mono(p) => p.submit(payload),
            Target::Engine(e) => {
                e.submit(Job::new(QUEUE, payload))?;
                Ok(())
            }
        }
    }

    /// Threads able to run jobs now: the engine's active core workers plus
    /// its blocking-pool threads; `None` for the fixed monolithic pool.
    fn workers(&self) -> Option<WorkerSample> {
        match self {
            Target::Mono(_) => None,
            Target::Engine(e) => {
                let w = e.workers();
                Some(WorkerSample { active: w.active, blocking: w.blocking_threads })
            }
        }
    }

    /// Stops the policy (all queued jobs have run by then).
    pub fn shutdown(self) -> BoxResult<()> {
        match self {
            Target::Mono(p) => p.shutdown(),
            Target::Engine(e) => {
                e.shutdown()?;
                Ok(())
            }
        }
    }
}

/// How a job spends its work.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// The calibrated CPU loop.
    Cpu(CpuWork),
    /// `thread::sleep` (an I/O wait), with the thread's timer slack cut to
    /// 1 µs so a short sleep is not stretched by the default 50 µs slack.
    Sleep,
}

/// Step 3: the handler's shared state, for every job of one built policy
/// (one burst run, or all the steps of one max-rate search).
#[derive(Debug)]
pub struct Recorder {
    epoch: Instant,
    /// Per job index: handler start − scheduled time, ns, plus 1 (0: not
    /// started yet).
    lat: Vec<AtomicU64>,
    started: AtomicU64,
    completed: AtomicU64,
    work: Work,
}

thread_local! {
    static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Recorder {
    /// Room for `jobs` jobs.
    pub fn new(jobs: usize, work: Work) -> Arc<Recorder> {
        Arc::new(Recorder {
            epoch: Instant::now(),
            lat: (0..jobs).map(|_| AtomicU64::new(0)).collect(),
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            work,
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The handler body for one payload (see [`encode`]).
    pub fn handle(&self, p: &[u8]) {
        let now = self.now_ns();
        let (Some(idx), Some(due), Some(work_ns)) = (word(p, 0), word(p, 1), word(p, 2)) else {
            return;
        };
        if let Some(slot) = self.lat.get(idx as usize) {
            slot.store(now.saturating_sub(due) + 1, Ordering::Relaxed);
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        match self.work {
            Work::Cpu(c) => c.run(work_ns),
            Work::Sleep => {
                if !SLACK_SET.with(|s| s.replace(true)) {
                    set_timer_slack_1us();
                }
                std::thread::sleep(Duration::from_nanos(work_ns));
            }
        }
        self.completed.fetch_add(1, Ordering::Release);
    }

    /// Queueing latency of job `idx` in ns, if it started.
    pub fn latency_ns(&self, idx: usize) -> Option<u64> {
        match self.lat.get(idx)?.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v - 1),
        }
    }
}

/// A job's payload: index, scheduled time (ns since the recorder's epoch),
/// work (ns), little-endian u64s.
fn encode(idx: u64, due_ns: u64, work_ns: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&idx.to_le_bytes());
    p.extend_from_slice(&due_ns.to_le_bytes());
    p.extend_from_slice(&work_ns.to_le_bytes());
    p
}

/// The `k`-th little-endian u64 of `p`.
fn word(p: &[u8], k: usize) -> Option<u64> {
    let b: [u8; 8] = p.get(k * 8..k * 8 + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The engine's worker counts at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerSample {
    /// Core workers in the active set.
    pub active: usize,
    /// Blocking-pool threads.
    pub blocking: usize,
}

/// What one replay measured. Times are ns relative to the trace's start.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// First job index of the trace in the recorder.
    pub first_idx: usize,
    /// Last completion.
    pub end_ns: u64,
    /// `(t, submitted − started)` every millisecond.
    pub backlog: Vec<(i64, u64)>,
    /// `(t, workers)` every 10 ms (engine policies only).
    pub workers: Vec<(i64, WorkerSample)>,
    /// Largest backlog seen by the generator right after a submit.
    pub max_backlog_at_submit: u64,
    /// Process CPU seconds over the replay.
    pub cpu_seconds: f64,
    /// Of those, the generator's and the sampler's threads.
    pub harness_cpu_seconds: f64,
    /// CPU seconds other processes used meanwhile (machine-wide busy time
    /// from `/proc/stat` minus ours): non-zero means the figures are noisy.
    pub foreign_cpu_seconds: f64,
    /// Due time → submit call, per job.
    pub generator_late: Latency,
}

/// What the caller tells a replay besides the trace.
#[derive(Debug, Clone)]
pub struct ReplayCtx<'a> {
    /// The running policy.
    pub target: &'a Target,
    /// Its handler's state.
    pub rec: &'a Arc<Recorder>,
    /// Index of the trace's first job in `rec`.
    pub first_idx: usize,
    /// The generator spins for the last this many ns before a due time.
    pub spin_ns: u64,
    /// Progress label (`None`: quiet).
    pub progress: Option<String>,
    /// Ask the engine for `Engine::workers()` every this many milliseconds.
    pub stats_every: u32,
}

/// Shared between the generator and the sampler.
#[derive(Debug, Default)]
struct Flow {
    submitted: AtomicU64,
    gen_done: AtomicBool,
    abort: AtomicBool,
}

/// Step 2-5: plays `trace` against the target and waits for every job.
pub fn replay(ctx: &ReplayCtx<'_>, trace: &Trace) -> BoxResult<Replayed> {
    let rec = ctx.rec;
    let n = trace.arrivals.len();
    if ctx.first_idx + n > rec.lat.len() {
        return Err("recorder too small for the trace".into());
    }
    let flow = Flow { submitted: AtomicU64::new(ctx.first_idx as u64), ..Flow::default() };
    let end_idx = (ctx.first_idx + n) as u64;
    let t0_ns = rec.now_ns() + 5_000_000;
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF)?;
    let machine0 = machine_busy_seconds();
    let (gen, samp) = std::thread::scope(|s| {
        let g = std::thread::Builder::new().name("burst-generator".into()).spawn_scoped(s, || {
            let r = generate(ctx, trace, t0_ns, &flow);
            if r.is_err() {
                flow.abort.store(true, Ordering::Release);
            }
            flow.gen_done.store(true, Ordering::Release);
            r
        });
        let sm = std::thread::Builder::new().name("burst-sampler".into()).spawn_scoped(s, || {
            let r = sample(ctx, trace, t0_ns, end_idx, &flow);
            if r.is_err() {
                flow.abort.store(true, Ordering::Release);
            }
            r
        });
        let g: BoxResult<BoxResult<(Latency, u64, f64)>> = match g {
            Ok(h) => h.join().map_err(|_| "generator panicked".into()),
            Err(e) => {
                flow.abort.store(true, Ordering::Release);
                flow.gen_done.store(true, Ordering::Release);
                Err(e.into())
            }
        };
        let sm: BoxResult<BoxResult<Sampled>> = match sm {
            Ok(h) => h.join().map_err(|_| "sampler panicked".into()),
            Err(e) => Err(e.into()),
        };
        (g, sm)
    });
    let cpu1 = cpu_seconds(libc::RUSAGE_SELF)?;
    let machine1 = machine_busy_seconds();
    if ctx.progress.is_some() {
        eprint!("\r{:<70}\r", "");
    }
    let (late, max_backlog_at_submit, gen_cpu) = gen??;
    let s = samp??;
    Ok(Replayed {
        first_idx: ctx.first_idx,
        end_ns: s.end_ns,
        backlog: s.backlog,
        workers: s.workers,
        max_backlog_at_submit,
        cpu_seconds: cpu1 - cpu0,
        harness_cpu_seconds: gen_cpu + s.cpu,
        foreign_cpu_seconds: match (machine0, machine1) {
            (Some(a), Some(b)) => (b - a - (cpu1 - cpu0)).max(0.0),
            _ => f64::NAN,
        },
        generator_late: late,
    })
}

/// The generator: returns its lateness histogram, the largest backlog it
/// saw and its own CPU seconds.
fn generate(
    ctx: &ReplayCtx<'_>,
    trace: &Trace,
    t0_ns: u64,
    flow: &Flow,
) -> BoxResult<(Latency, u64, f64)> {
    set_timer_slack_1us();
    let rec = ctx.rec;
    let mut late = Latency::new()?;
    let mut max_backlog = 0u64;
    for (i, a) in trace.arrivals.iter().enumerate() {
        let due = t0_ns + a.at_ns;
        loop {
            let now = rec.now_ns();
            if now >= due {
                break;
            }
            let left = due - now;
            if left > ctx.spin_ns {
                std::thread::sleep(Duration::from_nanos(left - ctx.spin_ns));
            } else {
                std::hint::spin_loop();
            }
        }
        if flow.abort.load(Ordering::Relaxed) {
            return Err("replay aborted".into());
        }
        let idx = (ctx.first_idx + i) as u64;
        let before = rec.now_ns();
        ctx.target.submit(encode(idx, due, a.work_ns))?;
        flow.submitted.store(idx + 1, Ordering::Release);
        late.record(Duration::from_nanos(before - due));
        let backlog = (idx + 1).saturating_sub(rec.started.load(Ordering::Relaxed));
        max_backlog = max_backlog.max(backlog);
    }
    Ok((late, max_backlog, cpu_seconds(libc::RUSAGE_THREAD)?))
}

/// What the sampler collected.
struct Sampled {
    end_ns: u64,
    backlog: Vec<(i64, u64)>,
    workers: Vec<(i64, WorkerSample)>,
    cpu: f64,
}

/// The sampler (step 4).
fn sample(
    ctx: &ReplayCtx<'_>,
    trace: &Trace,
    t0_ns: u64,
    end_idx: u64,
    flow: &Flow,
) -> BoxResult<Sampled> {
    let rec = ctx.rec;
    let rel = |t: u64| t as i64 - t0_ns as i64;
    let mut backlog = Vec::with_capacity((trace.len_ns / 1_000_000) as usize + 1024);
    let mut workers = Vec::with_capacity(backlog.capacity() / 10 + 16);
    let mut tick = 0u32;
    let mut next = rec.now_ns();
    let mut gen_done_at: Option<Instant> = None;
    loop {
        let now = rec.now_ns();
        let done = rec.completed.load(Ordering::Acquire) >= end_idx;
        let submitted = flow.submitted.load(Ordering::Acquire);
        let started = rec.started.load(Ordering::Relaxed);
        backlog.push((rel(now), submitted.saturating_sub(started)));
        if done {
            if let Some(w) = ctx.target.workers() {
                workers.push((rel(rec.now_ns()), w));
            }
            return Ok(Sampled {
                end_ns: rel(now).max(0) as u64,
                backlog,
                workers,
                cpu: cpu_seconds(libc::RUSAGE_THREAD)?,
            });
        }
        if flow.abort.load(Ordering::Acquire) {
            return Err("replay aborted".into());
        }
        if tick % ctx.stats_every.max(1) == 0 {
            if let Some(w) = ctx.target.workers() {
                workers.push((rel(now), w));
            }
        }
        if tick % PROGRESS_EVERY == 0 {
            if let Some(label) = &ctx.progress {
                let t = rel(now).max(0) as f64 / 1e9;
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r[{label}] {t:.1}/{:.1} s ", trace.len_ns as f64 / 1e9);
                let _ = err.flush();
            }
        }
        if flow.gen_done.load(Ordering::Acquire) {
            let at = *gen_done_at.get_or_insert_with(Instant::now);
            if at.elapsed() > DRAIN_LIMIT {
                let ran = rec.completed.load(Ordering::Acquire) - ctx.first_idx as u64;
                return Err(format!(
                    "only {ran} of {} jobs ran within {} s of the last submit",
                    end_idx - ctx.first_idx as u64,
                    DRAIN_LIMIT.as_secs()
                )
                .into());
            }
        }
        tick = tick.wrapping_add(1);
        next += SAMPLE_EVERY.as_nanos() as u64;
        let now = rec.now_ns();
        if next > now {
            std::thread::sleep(Duration::from_nanos(next - now));
        } else {
            // Fell behind (a slow stats() call): resume from now.
            next = now;
        }
    }
}

/// User + system CPU seconds of the process (`RUSAGE_SELF`) or the calling
/// thread (`RUSAGE_THREAD`).
#[allow(unsafe_code)]
pub(crate) fn cpu_seconds(who: libc::c_int) -> BoxResult<f64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable, properly aligned `rusage`;
    // getrusage only writes through the pointer.
    let rc = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: zero-initialised (a valid `rusage`: plain integers) and then
    // filled in by getrusage.
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(secs(ru.ru_utime) + secs(ru.ru_stime))
}

/// Busy CPU seconds of the whole machine since boot: user, nice, system,
/// irq and softirq of `/proc/stat`'s `cpu` line, in USER_HZ (100 per second
/// on Linux).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    Some(busy as f64 / 100.0)
}

/// Cuts the calling thread's timer slack to 1 µs so short sleeps end on
/// time (the default slack of 50 µs would make every wake-up ~60 µs late).
/// Best effort: failure leaves the default.
#[allow(unsafe_code)]
fn set_timer_slack_1us() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no
    // memory of ours; it only changes this thread's timer slack.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burst_trace::{steady, WorkDist};

    #[test]
    fn payload_round_trip() {
        let p = encode(7, 123_456_789, 50_000);
        assert_eq!(
            (word(&p, 0), word(&p, 1), word(&p, 2)),
            (Some(7), Some(123_456_789), Some(50_000))
        );
        assert_eq!(word(&p, 3), None);
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.name()).unwrap(), p);
        }
        assert!(Policy::parse("nope").is_err());
    }

    #[test]
    fn monolithic_replay_records_every_job() {
        let work = WorkDist::new(Duration::from_micros(20), false);
        let trace = steady(2000.0, 0.3, &work, 5);
        let rec = Recorder::new(trace.arrivals.len(), Work::Cpu(CpuWork::calibrate()));
        let cfg = PolicyConfig { workers: 2, latency_target: Duration::from_millis(10), io: false };
        let target = Policy::StaticMonolithic.build(&cfg, &rec).unwrap();
        let ctx = ReplayCtx {
            target: &target,
            rec: &rec,
            first_idx: 0,
            spin_ns: 10_000,
            progress: None,
            stats_every: 10,
        };
        let r = replay(&ctx, &trace).unwrap();
        target.shutdown().unwrap();
        assert!((0..trace.arrivals.len()).all(|i| rec.latency_ns(i).is_some()));
        assert!(r.end_ns >= trace.arrivals.last().unwrap().at_ns);
        assert!(r.cpu_seconds > 0.0);
        assert!(r.backlog.len() > 100);
        assert!(r.foreign_cpu_seconds >= 0.0);
    }
}
