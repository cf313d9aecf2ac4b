//! `spindle-bench`: scenario benchmarks. Each scenario prints a human table,
//! or with `--json` exactly one JSON object on stdout.
//!
//! ```text
//! spindle-bench wal [--json] [--dir PATH] [--records N] ...
//! spindle-bench floor [--json]
//! spindle-bench throughput --durability memory|process|sync [--shards N] [--jobs N] [--producers N] [--json]
//! spindle-bench latency --rate R --seconds S [--durability MODE] [--json]
//! spindle-bench burst [--seconds S] [--seeds K] [--plot FILE.svg] [--json]
//! spindle-bench peer beanstalkd [--seconds S] [--spindled PATH] [--json]
//! spindle-bench table [--seconds S | --cycles N] [--repeat N] [--json]
//! spindle-bench crash [--trials N] [--seed S] [--target T] [--mode M] [--json]
//! spindle-bench cluster [--nodes 1,2,3] [--server PATH | --url URL] [--json]
//! ```

#![deny(unsafe_code)]

mod alloc_count;
mod append;
mod args;
mod burst;
mod burst_mono;
mod burst_plot;
mod burst_replay;
mod burst_trace;
mod cluster;
mod cluster_raw;
mod cluster_server;
mod commit;
mod crash;
mod crash_daemon;
mod crash_engine;
mod dir;
mod engine_env;
mod floor;
mod handoff;
mod handoff_floor;
mod io_counters;
mod latency;
mod latency_floors;
mod limits;
mod memory;
mod open_loop;
mod peer;
mod peers;
mod probe_storage;
mod report;
mod setup;
mod strategy;
mod system;
mod table;
mod throughput;
mod wal;

use args::Args;
use report::Report;

/// The system allocator, counting allocations for the scenarios that ask
/// (`table`).
#[global_allocator]
static GLOBAL: alloc_count::Counting = alloc_count::Counting;

/// Errors of the harness: anything, with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`BoxError`].
pub type BoxResult<T> = Result<T, BoxError>;

const USAGE: &str = "\
usage: spindle-bench <scenario> [options]

scenarios:
  wal         WAL append throughput, commit latency, group commit, fdatasync
              floor, direct vs handoff append, storage strategy study
  floor       crossbeam channel handoff between two threads: throughput and
              one-way latency, the reference for the engine's figures
  throughput  no-op jobs/s through the engine per durability mode, with the
              same run's handoff floor
  latency     open-loop fixed-rate load: submit→start latency beside three
              same-run floors (crossbeam consumer parked, spinning, on the
              producer's core), dispatch latency, cores used
  burst       one bursty trace of CPU-bound jobs replayed against four worker
              policies (static monolithic queue, static sharded, always-max,
              lag controller): queue latency, CPU, workers, drain, max rate
  peer        `peer beanstalkd`: spindled vs Debian's beanstalkd over Unix
              sockets, durable and in memory: cycles/s, open-loop cycle
              latency, put-batch
  peers       what a Rust user would link instead (tokio spawn, a crossbeam
              channel feeding workers, rayon spawn) next to Spindle's
              Memory and Process modes: no-op jobs/s, interleaved rounds
  memory      resident bytes per idle connection, per half-written put and
              per queued 100-byte job (before and after a restart), spindled
              next to beanstalkd, and per queued job for the library
  limits      schedules, a rate limit and unused features, on the table
  table       the job table (spindle-core) alone on one thread, no I/O:
              put → reserve → complete cycles/s, hot and with a backlog, and
              allocations per cycle
  cluster     Spindle node processes sharing a queue through one nats-server
              (JetStream) beside the raw async-nats client in the same run:
              jobs/s, put→start latency at 5 k/s, jobs lost, per node count
  crash       kill -9 campaign: spindled and the library engine under mixed
              load in every durability mode, killed at random moments
              (rollover and compaction included), restarted, books checked

`spindle-bench <scenario> --help` lists a scenario's options.";

fn main() {
    if let Err(e) = run() {
        eprintln!("spindle-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> BoxResult<()> {
    let mut argv = std::env::args().skip(1);
    let Some(scenario) = argv.next() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let mut args = Args::new(argv.collect());
    let help = args.flag("--help") || args.flag("-h");
    match scenario.as_str() {
        "wal" if help => println!("{}", wal::USAGE),
        "wal" => {
            let opts = wal::WalOpts::parse(args)?;
            print(&wal::run(&opts)?, opts.json)?;
        }
        "floor" if help => println!("{}", handoff_floor::USAGE),
        "floor" => {
            let opts = handoff_floor::FloorOpts::parse(args)?;
            print(&handoff_floor::run(&opts)?, opts.json)?;
        }
        "throughput" if help => println!("{}", throughput::USAGE),
        "throughput" => {
            let opts = throughput::ThroughputOpts::parse(args)?;
            print(&throughput::run(&opts)?, opts.json)?;
        }
        "latency" if help => println!("{}", open_loop::USAGE),
        "latency" => {
            let opts = open_loop::LatencyOpts::parse(args)?;
            print(&open_loop::run(&opts)?, opts.json)?;
        }
        "burst" if help => println!("{}", burst::USAGE),
        "burst" => {
            let opts = burst::BurstOpts::parse(args)?;
            print(&burst::run(&opts)?, opts.json)?;
        }
        "peer" if help => println!("{}", peer::USAGE),
        "peer" => {
            let opts = peer::PeerOpts::parse(args)?;
            print(&peer::run(&opts)?, opts.json)?;
        }
        "peers" if help => println!("{}", peers::USAGE),
        "peers" => {
            let o = peers::PeersOpts::parse(args)?;
            print(&peers::run(&o)?, o.json)?;
        }
        "table" if help => println!("{}", table::USAGE),
        "table" => {
            let opts = table::TableOpts::parse(args)?;
            print(&table::run(&opts)?, opts.json)?;
        }
        "limits" if help => println!("{}", limits::USAGE),
        "limits" => {
            let o = limits::LimitsOpts::parse(args)?;
            print(&limits::run(&o)?, o.json)?;
        }
        "crash" if help => println!("{}", crash::USAGE),
        "crash" => {
            let opts = crash::CrashOpts::parse(args)?;
            print(&crash::run(&opts)?, opts.json)?;
        }
        "cluster" if help => println!("{}", cluster::USAGE),
        "cluster" => {
            let o = cluster::ClusterOpts::parse(args)?;
            print(&cluster::run(&o)?, o.json)?;
        }
        // A cluster run's node process (not for direct use).
        "cluster-node" => cluster::node_child(args)?,
        // The library trials' child process (not for direct use).
        "crash-child" => crash_engine::child(args)?,
        "memory" if help => println!("{}", memory::USAGE),
        "memory" => {
            let o = memory::MemoryOpts::parse(args)?;
            print(&memory::run(&o)?, o.json)?;
        }
        "help" | "--help" | "-h" => println!("{USAGE}"),
        other => return Err(format!("unknown scenario {other:?}\n{USAGE}").into()),
    }
    Ok(())
}

fn print(report: &Report, json: bool) -> BoxResult<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
