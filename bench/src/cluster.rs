//! `spindle-bench cluster`: Spindle nodes sharing one queue through a real
//! nats-server, beside the raw async-nats client against the same server
//! in the same run (`docs/jetstream.md`, `docs/benchmarks.md`).
//!
//! For each node count N:
//! 1. N node processes (`spindle-bench cluster-node`) connect, declare the
//!    queue and wait.
//! 2. Throughput: this process puts `--jobs` jobs through its own node
//!    (pipelined batches of 1,000), then tells the nodes to go and waits
//!    until the consumer's backlog is 0: jobs/s = jobs / (put + drain)
//!    time, the way the raw client's publish-then-pull is measured.
//! 3. Latency: puts at `--rate` for `--seconds` (open loop: each job
//!    carries its intended put time), the nodes record put → handler start.
//! 4. The nodes stop and report every job id they ran: an acknowledged put
//!    that no node ran is lost.

use crate::args::Args;
use crate::cluster_raw;
use crate::cluster_server::{now_ns, open_loop, NatsServer};
use crate::latency::Latency;
use crate::report::{format_number, Report};
use crate::system::Busy;
use crate::BoxResult;
use serde_json::{json, Value};
use spindle_jetstream::{Node, NodeOptions, Put, QueueConfig, Receipt};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// `--help` text.
pub const USAGE: &str = "\
usage: spindle-bench cluster [--nodes 1,2,3] [--jobs N] [--rate R] [--seconds S]
                             [--threads T] [--prefetch P] [--server PATH | --url nats://HOST:PORT] [--json]

Node processes on this machine share one queue through one nats-server
(started here from --server, default `nats-server` on PATH, with a temporary
store; or an existing one at --url). In the same run, the raw async-nats
client (pipelined publish, then pull + ack in batches of 1,000) gives the
backend's limit. Per node count: jobs/s (put, then drain), put → start
latency at --rate (p50/p99/p999), and jobs lost.
  --nodes     node counts to run (default 1,2,3)
  --jobs      jobs per throughput run (default 50000)
  --rate      jobs/s for the latency run (default 5000)
  --seconds   length of the latency run (default 2)
  --threads   handler threads per node (default 1)
  --prefetch  leases each handler thread keeps ready (default 256)";

const QUEUE: &str = "bench";

/// Options.
pub struct ClusterOpts {
    nodes: Vec<usize>,
    jobs: u64,
    rate: u64,
    seconds: f64,
    threads: usize,
    prefetch: usize,
    server: String,
    url: Option<String>,
    /// Print JSON.
    pub json: bool,
}

impl ClusterOpts {
    /// Parses the options.
    pub fn parse(mut a: Args) -> BoxResult<Self> {
        let nodes: String = a.value("--nodes")?.unwrap_or_else(|| "1,2,3".into());
        let nodes = nodes
            .split(',')
            .map(|s| s.trim().parse::<usize>().map_err(|e| format!("--nodes {s:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.contains(&0) {
            return Err("--nodes: counts start at 1".into());
        }
        let o = ClusterOpts {
            nodes,
            jobs: a.value("--jobs")?.unwrap_or(50_000),
            rate: a.value("--rate")?.unwrap_or(5_000),
            seconds: a.value("--seconds")?.unwrap_or(2.0),
            threads: a.value("--threads")?.unwrap_or(1),
            prefetch: a.value("--prefetch")?.unwrap_or(256),
            server: a.value("--server")?.unwrap_or_else(|| "nats-server".into()),
            url: a.value("--url")?,
            json: a.flag("--json"),
        };
        a.finish()?;
        Ok(o)
    }
}

fn queue_cfg() -> QueueConfig {
    QueueConfig::default().ttr(Duration::from_secs(30)).max_in_flight(20_000)
}

/// One node process.
struct NodeProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl NodeProc {
    fn spawn(url: &str, ns: &str, threads: usize, prefetch: usize) -> BoxResult<NodeProc> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["cluster-node", "--url", url, "--ns", ns, "--threads", &threads.to_string()])
            .args(["--prefetch", &prefetch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut p = NodeProc { child, stdin, stdout };
        let line = p.line()?;
        if line.trim() != "READY" {
            return Err(format!("node said {line:?} instead of READY").into());
        }
        Ok(p)
    }

    fn line(&mut self) -> BoxResult<String> {
        let mut s = String::new();
        self.stdout.read_line(&mut s)?;
        Ok(s)
    }

    fn say(&mut self, what: &str) -> BoxResult<()> {
        let stdin = self.stdin.as_mut().ok_or("node stdin closed")?;
        writeln!(stdin, "{what}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes stdin (stop) and reads the node's report.
    fn finish(mut self) -> BoxResult<Value> {
        drop(self.stdin.take());
        let line = self.line()?;
        self.child.wait()?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `spindle-bench cluster-node`: a node process (not for direct use).
pub fn node_child(mut a: Args) -> BoxResult<()> {
    let url: String = a.value("--url")?.ok_or("--url")?;
    let ns: String = a.value("--ns")?.ok_or("--ns")?;
    let threads: usize = a.value("--threads")?.unwrap_or(2);
    let prefetch: usize = a.value("--prefetch")?.unwrap_or(256);
    a.finish()?;
    let opts = NodeOptions::new(url).namespace(ns).name("bench-node").prefetch(prefetch);
    let node = Node::connect(opts)?;
    node.declare(QUEUE, queue_cfg())?;
    let ran = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), Vec::new())));
    println!("READY");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let pool = if line.trim() == "go" {
        let ran = ran.clone();
        Some(node.work(QUEUE, threads, move |job| {
            let start = now_ns();
            let intended =
                job.payload().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            let mut r = ran.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            r.0.push(job.id());
            if let Some(t) = intended.filter(|&t| t > 0) {
                r.1.push(start.saturating_sub(t));
            }
            spindle_engine::Outcome::Done
        })?)
    } else {
        None
    };
    // Stdin closed: stop.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
    if let Some(p) = pool {
        p.stop();
    }
    node.shutdown();
    let r = ran.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    println!("{}", json!({ "seqs": r.0, "lat_ns": r.1 }));
    Ok(())
}

struct NodeRun {
    n: usize,
    jobs_per_sec: f64,
    put_per_sec: f64,
    drain_per_sec: f64,
    lat: crate::latency::Percentiles,
    lost: u64,
    ran_twice: u64,
    put_errors: u64,
}

fn wait_drained(node: &Node) -> BoxResult<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while node.lag(QUEUE)?.backlog() > 0 {
        if Instant::now() > deadline {
            return Err("the nodes did not drain the queue in 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn run_nodes(o: &ClusterOpts, url: &str, n: usize) -> BoxResult<NodeRun> {
    let ns = format!("bench{n}_{}", std::process::id());
    let producer = Node::connect(NodeOptions::new(url).namespace(&ns).name("bench-producer"))?;
    producer.declare(QUEUE, queue_cfg())?;
    let mut procs = (0..n)
        .map(|_| NodeProc::spawn(url, &ns, o.threads, o.prefetch))
        .collect::<BoxResult<Vec<_>>>()?;
    let mut acked = HashSet::new();
    let mut put_errors = 0u64;
    let mut tally = |rs: Vec<Result<Receipt, spindle_jetstream::Error>>| {
        for r in rs {
            match r {
                Ok(Receipt::Queued { seq, .. }) => {
                    acked.insert(seq);
                }
                _ => put_errors += 1,
            }
        }
    };
    let started = Instant::now();
    let mut left = o.jobs;
    while left > 0 {
        let k = left.min(1000);
        let batch = (0..k).map(|_| Put::new(QUEUE, vec![0u8; 16])).collect();
        tally(producer.put_batch(batch)?);
        left -= k;
    }
    let t_put = started.elapsed();
    let started = Instant::now();
    for p in &mut procs {
        p.say("go")?;
    }
    wait_drained(&producer)?;
    let t_drain = started.elapsed();
    open_loop(o.rate, o.seconds, |due| {
        let batch = due
            .iter()
            .map(|t| {
                let mut p = t.to_le_bytes().to_vec();
                p.resize(16, 0);
                Put::new(QUEUE, p)
            })
            .collect();
        tally(producer.put_batch(batch)?);
        Ok(())
    })?;
    wait_drained(&producer)?;
    let mut ran = HashSet::new();
    let mut ran_twice = 0u64;
    let mut lat = Latency::new()?;
    for p in procs {
        let v = p.finish()?;
        for s in v["seqs"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
            if !ran.insert(s) {
                ran_twice += 1;
            }
        }
        for ns in v["lat_ns"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
            lat.record(Duration::from_nanos(ns));
        }
    }
    let lost = acked.iter().filter(|s| !ran.contains(s)).count() as u64;
    delete_namespace(url, &ns);
    producer.shutdown();
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    Ok(NodeRun {
        n,
        jobs_per_sec: o.jobs as f64 / secs(t_put + t_drain),
        put_per_sec: o.jobs as f64 / secs(t_put),
        drain_per_sec: o.jobs as f64 / secs(t_drain),
        lat: lat.percentiles(),
        lost,
        ran_twice,
        put_errors,
    })
}

fn delete_namespace(url: &str, ns: &str) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    rt.block_on(async {
        if let Ok(c) = async_nats::connect(url).await {
            let js = async_nats::jetstream::new(c);
            let _ = js.delete_stream(format!("SPINDLE_{ns}")).await;
            let _ = js.delete_stream(format!("SPINDLE_{ns}_DEAD")).await;
        }
    });
}

/// Runs the scenario.
pub fn run(o: &ClusterOpts) -> BoxResult<Report> {
    let busy_before = Busy::now();
    let server = match &o.url {
        Some(_) => None,
        None => Some(NatsServer::start(&o.server)?),
    };
    let url = match (&o.url, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url.clone(),
        (None, None) => return Err("no server".into()),
    };
    let version = Node::connect(NodeOptions::new(&url))?.server_version();
    let raw = cluster_raw::run(&url, o.jobs, o.rate, o.seconds)?;
    let mut runs = Vec::new();
    for &n in &o.nodes {
        runs.push(run_nodes(o, &url, n)?);
    }
    let busy_after = Busy::now();

    let mut r = Report::new(format!(
        "spindle-bench cluster: nodes sharing a queue through nats-server {version} \
         (measured on 2 cores here: nodes, server and load share them)"
    ));
    r.section("raw async-nats, same server, same run");
    r.metric(
        "raw_publish_per_sec",
        "pipelined publish (1,000 PubAcks in flight)",
        raw.publish_per_sec,
        "msg/s",
    );
    r.metric("raw_consume_per_sec", "pull + ack, batches of 1,000", raw.consume_per_sec, "msg/s");
    r.metric("raw_jobs_per_sec", "jobs / (publish + consume time)", raw.jobs_per_sec, "jobs/s");
    r.metric(
        "raw_p50_us",
        &format!("publish → receive p50 at {}/s", o.rate),
        raw.latency.p50_us,
        "µs",
    );
    r.metric("raw_p99_us", "publish → receive p99", raw.latency.p99_us, "µs");
    r.metric("raw_p999_us", "publish → receive p99.9", raw.latency.p999_us, "µs");
    let rows = runs
        .iter()
        .map(|x| {
            vec![
                x.n.to_string(),
                format_number(x.jobs_per_sec),
                format!("{:.2}", x.jobs_per_sec / raw.jobs_per_sec),
                format_number(x.put_per_sec),
                format_number(x.drain_per_sec),
                format!("{:.0} / {:.0} / {:.0}", x.lat.p50_us, x.lat.p99_us, x.lat.p999_us),
                format!("{:.2}", x.lat.p99_us / raw.latency.p99_us.max(1e-9)),
                x.lost.to_string(),
                x.ran_twice.to_string(),
            ]
        })
        .collect();
    r.table(
        "Spindle nodes (put, then drain; latency at the same rate)",
        &[
            "nodes",
            "jobs/s",
            "÷ raw",
            "put/s",
            "drain/s",
            "put→start p50/p99/p999 µs",
            "p99 ÷ raw",
            "lost",
            "ran twice",
        ],
        rows,
    );
    r.set(
        "nodes",
        runs.iter()
            .map(|x| {
                json!({
                    "n": x.n,
                    "jobs_per_sec": x.jobs_per_sec,
                    "put_per_sec": x.put_per_sec,
                    "drain_per_sec": x.drain_per_sec,
                    "p50_us": x.lat.p50_us,
                    "p99_us": x.lat.p99_us,
                    "p999_us": x.lat.p999_us,
                    "lost": x.lost,
                    "ran_twice": x.ran_twice,
                    "put_errors": x.put_errors,
                })
            })
            .collect::<Vec<_>>(),
    );
    r.set("server_version", version.to_string());
    r.set("jobs", o.jobs);
    r.set("rate", o.rate);
    r.set("threads_per_node", o.threads as u64);
    r.set("prefetch", o.prefetch as u64);
    r.set("busy_before", busy_before.to_json());
    r.set("busy_after", busy_after.to_json());
    r.note(format!("before: {}; after: {}", busy_before.describe(), busy_after.describe()));
    r.note("measured on 2 cores: the nodes, nats-server and the load generator share them");
    Ok(r)
}
