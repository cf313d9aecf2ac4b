//! The `table` scenario: the job table (`spindle-core`) alone on one
//! thread, with no I/O: put → reserve → complete cycles.
//!
//! Every cycle puts a job with a 16-byte payload into queue `i % 8` (of 8
//! queues) with a 60 s TTR (so the reservation sets a lease deadline),
//! reserves from that queue with [`Table::reserve`] and completes the job
//! it got. A [`Records`] buffer takes the records, as a durable front-end
//! would, and is cleared every 256 cycles (standing in for one loop
//! iteration's WAL append); the `no_records` figures use
//! [`Records::disabled`] instead. `now` advances 25.6 µs per 256 cycles.
//!
//! Workloads:
//!
//! - **hot**: priority `(i / 8) % 4`; the queue is empty before the put, so
//!   the reservation gets the job just put.
//! - **backlog**: first `--backlog` ready jobs (default 100,000) are put,
//!   spread over the 8 queues and 4 priorities (`i % 8`, `(i / 8) % 4`);
//!   then each cycle puts one at priority 3, the least urgent of the four,
//!   and reserves the most urgent of its queue: after the warm-up has
//!   drained priorities 0-2, that is the job put `--backlog` cycles before
//!   (`backlog_fresh_share`, the share of cycles that reserve the job just
//!   put, is 0), so the backlog stays at `--backlog` and every cycle touches
//!   one job that is long out of cache.
//!   This is the figure of `cycles_per_sec`.
//! - **backlog-mixed**: the same backlog, with each cycle's put at priority
//!   `(i / 8) % 4`. With strict priorities only the least urgent level keeps
//!   a backlog, so three cycles in four reserve the job just put
//!   (`mixed_fresh_share`): reported for comparison only.
//!
//! Each measurement makes a fresh table, runs `--warmup` untimed cycles
//! (one-time growth: the record buffer, the lease heap, the wait
//! histograms, the id map's chunks), then the timed cycles, counting heap
//! allocations (the binary's counting allocator, see `alloc_count.rs`)
//! over the timed cycles only. `--repeat N` runs every measurement N times,
//! interleaved, and reports the median and each run.

use crate::alloc_count;
use crate::args::Args;
use crate::report::Report;
use crate::system::Busy;
use crate::BoxResult;
use serde_json::{json, Value};
use spindle_core::{By, Config, PutSpec, QueueId, Records, Table, Time};
use std::time::{Duration, Instant};

/// Usage text of the scenario.
pub const USAGE: &str = "\
spindle-bench table [options]
  --seconds S   timed seconds per measurement (default 1)
  --cycles N    instead: timed cycles per measurement (rounded up to 256)
  --repeat N    run every measurement N times, report the median (default 1)
  --backlog N   ready jobs waiting in the backlog workloads (default 100000)
  --warmup N    untimed cycles before each measurement (default 100000 hot,
                100000 + 2 x backlog with the backlog)
  --only W      run only workload W (hot, backlog or backlog-mixed), say
                under a profiler; the other figures are left out
  --json        print one JSON object instead of tables";

const QUEUES: u64 = 8;
const PRIORITIES: u64 = 4;
const PAYLOAD: usize = 16;
const TTR_S: u32 = 60;
/// Cycles between clears of the record buffer (one loop iteration).
const BATCH: u64 = 256;
/// Table time that passes per batch.
const BATCH_NS: u64 = 25_600;
/// Cycle goals of issue 19 (one core).
const HOT_GOAL: f64 = 20e6;
const BACKLOG_GOAL: f64 = 10e6;

/// Parsed options.
#[derive(Debug, Clone)]
pub struct TableOpts {
    seconds: f64,
    cycles: Option<u64>,
    repeat: usize,
    backlog: u64,
    warmup: Option<u64>,
    only: Option<Workload>,
    /// Print JSON.
    pub json: bool,
}

impl TableOpts {
    /// Reads the scenario's options.
    pub fn parse(mut a: Args) -> BoxResult<TableOpts> {
        let o = TableOpts {
            seconds: a.value_or("--seconds", 1.0)?,
            cycles: a.value("--cycles")?,
            repeat: a.value_or("--repeat", 1)?,
            backlog: a.value_or("--backlog", 100_000)?,
            warmup: a.value("--warmup")?,
            only: match a.value::<String>("--only")?.as_deref() {
                None => None,
                Some("hot") => Some(Workload::Hot),
                Some("backlog") => Some(Workload::Backlog),
                Some("backlog-mixed") => Some(Workload::BacklogMixed),
                Some(w) => {
                    return Err(format!("--only {w:?}: hot, backlog or backlog-mixed").into())
                }
            },
            json: a.flag("--json"),
        };
        a.finish()?;
        if o.repeat == 0 || o.cycles == Some(0) || o.seconds.is_nan() || o.seconds <= 0.0 {
            return Err("--repeat, --cycles and --seconds must be positive".into());
        }
        Ok(o)
    }
}

/// What each cycle puts and reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Hot,
    Backlog,
    BacklogMixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot",
            Workload::Backlog => "backlog",
            Workload::BacklogMixed => "backlog-mixed",
        }
    }

    /// The priority of cycle `i`'s put.
    #[inline]
    fn pri(self, i: u64) -> u32 {
        match self {
            Workload::Backlog => (PRIORITIES - 1) as u32,
            Workload::Hot | Workload::BacklogMixed => ((i / QUEUES) % PRIORITIES) as u32,
        }
    }
}

/// One table and its driver's state.
struct Driver {
    t: Table,
    qs: [QueueId; QUEUES as usize],
    log: Records,
    now: Time,
    /// Cycles run (also the payload's contents).
    i: u64,
    /// Cycles that reserved the job they had just put.
    fresh: u64,
    /// Record bytes written.
    record_bytes: u64,
}

impl Driver {
    fn new(records: bool) -> BoxResult<Driver> {
        let mut t = Table::new(Config::default());
        let mut qs = [QueueId(0); QUEUES as usize];
        for (k, q) in qs.iter_mut().enumerate() {
            *q = t.queue(&format!("q{k}"))?;
        }
        let log = if records { Records::new() } else { Records::disabled() };
        Ok(Driver {
            t,
            qs,
            log,
            now: Time::from_secs(1_700_000_000),
            i: 0,
            fresh: 0,
            record_bytes: 0,
        })
    }

    /// The loop iteration's end: the records "go to the log".
    #[inline]
    fn flush(&mut self) {
        self.record_bytes += self.log.bytes().len() as u64;
        self.log.clear();
        self.now = Time(self.now.0 + BATCH_NS);
    }

    /// Puts `n` ready jobs over the queues and priorities.
    fn prefill(&mut self, n: u64) -> BoxResult<()> {
        let mut payload = [0u8; PAYLOAD];
        for k in 0..n {
            payload[..8].copy_from_slice(&k.to_le_bytes());
            let spec = PutSpec {
                pri: ((k / QUEUES) % PRIORITIES) as u32,
                ttr_s: TTR_S,
                ..PutSpec::default()
            };
            let id = self.t.next_id();
            let q = self.qs[(k % QUEUES) as usize];
            self.t.put(self.now, id, q, &spec, &payload, &mut self.log)?;
            if (k + 1) % BATCH == 0 {
                self.flush();
            }
        }
        self.flush();
        Ok(())
    }

    /// Runs one batch of cycles, then flushes.
    #[inline]
    fn batch(&mut self, w: Workload) -> BoxResult<()> {
        let mut payload = [0u8; PAYLOAD];
        for _ in 0..BATCH {
            let i = self.i;
            self.i += 1;
            payload[..8].copy_from_slice(&i.to_le_bytes());
            let spec = PutSpec { pri: w.pri(i), ttr_s: TTR_S, ..PutSpec::default() };
            let q = self.qs[(i % QUEUES) as usize];
            let id = self.t.next_id();
            self.t.put(self.now, id, q, &spec, &payload, &mut self.log)?;
            let lease =
                self.t.reserve(self.now, q, 0, &mut self.log).ok_or("nothing to reserve")?;
            if w == Workload::Hot && lease.id != id {
                return Err(format!("hot cycle reserved job {} instead of {id}", lease.id).into());
            }
            self.fresh += u64::from(lease.id == id);
            self.t.complete(lease.id, By::holder(0), &mut self.log)?;
        }
        self.flush();
        Ok(())
    }
}

/// One timed measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    cycles: u64,
    secs: f64,
    allocs: u64,
    /// Share of cycles that reserved the job they had just put.
    fresh: f64,
    record_bytes: f64,
}

impl Sample {
    fn per_sec(&self) -> f64 {
        self.cycles as f64 / self.secs
    }
    fn allocs_per_cycle(&self) -> f64 {
        self.allocs as f64 / self.cycles as f64
    }
}

fn measure(w: Workload, records: bool, o: &TableOpts) -> BoxResult<Sample> {
    let mut d = Driver::new(records)?;
    let backlog = if w == Workload::Hot { 0 } else { o.backlog };
    d.prefill(backlog)?;
    let warmup = o.warmup.unwrap_or(100_000 + 2 * backlog);
    for _ in 0..warmup.div_ceil(BATCH) {
        d.batch(w)?;
    }
    let (fresh0, bytes0) = (d.fresh, d.record_bytes);
    let limit = Duration::from_secs_f64(o.seconds);
    let mut cycles = 0u64;
    let a0 = alloc_count::allocations();
    let t0 = Instant::now();
    loop {
        d.batch(w)?;
        cycles += BATCH;
        let done = match o.cycles {
            Some(n) => cycles >= n,
            None => t0.elapsed() >= limit,
        };
        if done {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let allocs = alloc_count::allocations() - a0;
    let totals = d.t.totals();
    if totals.ready != backlog || totals.reserved != 0 {
        return Err(format!(
            "{} left {} ready and {} reserved jobs, expected {backlog} and 0",
            w.name(),
            totals.ready,
            totals.reserved
        )
        .into());
    }
    Ok(Sample {
        cycles,
        secs,
        allocs,
        fresh: (d.fresh - fresh0) as f64 / cycles as f64,
        record_bytes: (d.record_bytes - bytes0) as f64 / cycles as f64,
    })
}

/// One measured variant and its samples (one per repeat).
struct Variant {
    key: &'static str,
    label: &'static str,
    workload: Workload,
    records: bool,
    samples: Vec<Sample>,
}

impl Variant {
    fn rates(&self) -> Vec<f64> {
        self.samples.iter().map(Sample::per_sec).collect()
    }
    fn median_rate(&self) -> f64 {
        median(&self.rates())
    }
    /// Allocations are deterministic; the worst run anyway.
    fn allocs_per_cycle(&self) -> f64 {
        self.samples.iter().map(Sample::allocs_per_cycle).fold(0.0, f64::max)
    }
    fn median_of(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(&self.samples.iter().map(f).collect::<Vec<_>>())
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the scenario.
pub fn run(o: &TableOpts) -> BoxResult<Report> {
    alloc_count::enable();
    let busy_start = Busy::now();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut variants = [
        ("hot_cycles_per_sec", "hot", Workload::Hot, true),
        ("cycles_per_sec", "backlog", Workload::Backlog, true),
        ("hot_cycles_per_sec_no_records", "hot, records off", Workload::Hot, false),
        ("cycles_per_sec_no_records", "backlog, records off", Workload::Backlog, false),
        ("mixed_cycles_per_sec", "backlog-mixed", Workload::BacklogMixed, true),
    ]
    .map(|(key, label, workload, records)| Variant {
        key,
        label,
        workload,
        records,
        samples: Vec::new(),
    })
    .into_iter()
    .filter(|v| o.only.is_none_or(|w| w == v.workload))
    .collect::<Vec<_>>();
    for run in 0..o.repeat {
        for v in variants.iter_mut() {
            if !o.json {
                eprintln!("… run {}/{}: {}", run + 1, o.repeat, v.label);
            }
            v.samples.push(measure(v.workload, v.records, o)?);
        }
    }
    let busy_end = Busy::now();

    let find = |w: Workload| variants.iter().filter(move |v| v.workload == w);
    // Allocations of a workload (records on or off, every run): the worst.
    let allocs_of = |w: Workload| find(w).map(Variant::allocs_per_cycle).reduce(f64::max);
    let hot_allocs = allocs_of(Workload::Hot);
    let backlog_allocs = allocs_of(Workload::Backlog);
    let allocs = [hot_allocs, backlog_allocs].into_iter().flatten().fold(0.0, f64::max);

    let how = match o.cycles {
        Some(n) => format!("{} cycles", n.div_ceil(BATCH) * BATCH),
        None => format!("{} s", o.seconds),
    };
    let mut r = Report::new(format!(
        "spindle-bench table — put → reserve → complete on one thread, no I/O: {PAYLOAD}-byte \
         payloads, {QUEUES} queues, {PRIORITIES} priorities, ttr {TTR_S} s, records cleared \
         every {BATCH} cycles; backlog {}; {how} per run, median of {} (on {cores} cores)\n\
         machine at start: {}; at end: {}",
        o.backlog,
        o.repeat,
        busy_start.describe(),
        busy_end.describe(),
    ));
    r.section("cycles per second (median)");
    for v in &variants {
        r.metric(v.key, v.label, v.median_rate().round(), "cycles/s");
    }
    r.section("allocations per cycle (timed cycles, worst run)");
    r.metric("allocs_per_cycle", "max of hot and backlog", allocs, "");
    for (key, label, w) in [
        ("hot_allocs_per_cycle", "hot", Workload::Hot),
        ("backlog_allocs_per_cycle", "backlog", Workload::Backlog),
        ("mixed_allocs_per_cycle", "backlog-mixed", Workload::BacklogMixed),
    ] {
        if let Some(a) = allocs_of(w) {
            r.metric(key, label, a, "");
        }
    }
    let counted: u64 = variants.iter().flat_map(|v| &v.samples).map(|s| s.allocs).sum();
    let timed: u64 = variants.iter().flat_map(|v| &v.samples).map(|s| s.cycles).sum();
    r.metric("allocs", "allocations in all timed cycles", counted as f64, "");
    r.metric("timed_cycles", "timed cycles, all runs", timed as f64, "");
    r.section("workload shape (median)");
    let get = |key: &str| variants.iter().find(|v| v.key == key);
    if let Some(v) = get("cycles_per_sec") {
        r.metric(
            "backlog_fresh_share",
            "backlog: share of cycles reserving the job just put",
            v.median_of(|s| s.fresh),
            "",
        );
    }
    if let Some(v) = get("mixed_cycles_per_sec") {
        r.metric("mixed_fresh_share", "backlog-mixed: the same", v.median_of(|s| s.fresh), "");
    }
    if let Some(v) = get("hot_cycles_per_sec") {
        r.metric(
            "hot_record_bytes_per_cycle",
            "hot: record bytes per cycle",
            v.median_of(|s| s.record_bytes),
            "B",
        );
    }
    if let Some(v) = get("cycles_per_sec") {
        r.metric(
            "record_bytes_per_cycle",
            "backlog: record bytes per cycle",
            v.median_of(|s| s.record_bytes),
            "B",
        );
    }

    let mut rows = Vec::new();
    let mut runs = serde_json::Map::new();
    for v in &variants {
        let rates = v.rates();
        let mut row = vec![v.label.to_string()];
        row.extend(rates.iter().map(|x| crate::report::format_number(*x)));
        rows.push(row);
        runs.insert(
            v.key.into(),
            Value::from(
                rates.iter().map(|x| crate::report::json_number(x.round())).collect::<Vec<_>>(),
            ),
        );
    }
    let mut header = vec!["cycles/s".to_string()];
    header.extend((1..=o.repeat).map(|k| format!("run {k}")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    r.table("each run", &header, rows);

    let hot = get("hot_cycles_per_sec").map_or(f64::NAN, Variant::median_rate);
    let backlog = get("cycles_per_sec").map_or(f64::NAN, Variant::median_rate);
    let goals = json!({
        "hot_cycles_per_sec": hot >= HOT_GOAL,
        "cycles_per_sec": backlog >= BACKLOG_GOAL,
        "allocs_per_cycle": allocs <= 1.0,
        "no_allocs_inline_payload": allocs == 0.0,
    });
    r.note(format!(
        "goals (issue 19, one core): hot ≥ {} M cycles/s, backlog ≥ {} M, ≤ 1 allocation per \
         cycle and none for payloads ≤ 24 bytes: {goals}",
        HOT_GOAL / 1e6,
        BACKLOG_GOAL / 1e6
    ));
    r.set("runs", Value::Object(runs));
    r.set("goals_met", goals);
    r.set("cores", cores as u64);
    r.set("repeat", o.repeat as u64);
    r.set("seconds", o.cycles.map_or(json!(o.seconds), |_| Value::Null));
    r.set("cycles", o.cycles.map_or(Value::Null, |n| json!(n.div_ceil(BATCH) * BATCH)));
    r.set("backlog", o.backlog);
    r.set("payload_bytes", PAYLOAD as u64);
    r.set("queues", QUEUES);
    r.set("priorities", PRIORITIES);
    r.set("ttr_s", TTR_S);
    r.set("records_clear_every", BATCH);
    r.set("machine_at_start", busy_start.to_json());
    r.set("machine_at_end", busy_end.to_json());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn workloads_spread_puts_as_documented() {
        let pris: Vec<u32> = (0..40).map(|i| Workload::Hot.pri(i)).collect();
        assert_eq!(&pris[..9], &[0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(pris[39], 0);
        assert!((0..40).all(|i| Workload::Backlog.pri(i) == 3));
        assert_eq!(Workload::BacklogMixed.pri(17), Workload::Hot.pri(17));
    }

    #[test]
    fn a_few_cycles_of_each_workload() {
        let o = TableOpts {
            seconds: 1.0,
            cycles: Some(512),
            repeat: 1,
            backlog: 300,
            warmup: Some(512),
            only: None,
            json: true,
        };
        for w in [Workload::Hot, Workload::Backlog, Workload::BacklogMixed] {
            for records in [true, false] {
                let s = measure(w, records, &o).unwrap();
                assert_eq!(s.cycles, 512);
                assert_eq!(s.record_bytes > 0.0, records);
            }
        }
        let s = measure(Workload::Hot, true, &o).unwrap();
        assert_eq!(s.fresh, 1.0);
        let s = measure(Workload::Backlog, true, &o).unwrap();
        assert_eq!(s.fresh, 0.0);
    }
}
