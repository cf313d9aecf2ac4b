//! `spindle`: the command line for `spindled` (and any beanstalkd).
//!
//! ```text
//! spindle put --queue emails 'hello'          # or: echo hello | spindle put --queue emails
//! spindle stats --queue emails --json
//! spindle queues
//! spindle peek --ready --queue emails
//! spindle kick --queue emails 100
//! spindle work --queue emails --concurrency 4 -- ./send-email.sh
//! spindle top
//! ```
//!
//! With `--jetstream nats://HOST:PORT` (or `$SPINDLE_JETSTREAM`), `put` and
//! `work` use a distributed queue shared through NATS JetStream instead
//! (`docs/jetstream.md`).
//!
//! Every command talks to `--socket` (or `$SPINDLE_SOCKET`, else the default
//! socket spindled listens on). A Unix socket owned by another user (not
//! the caller, not root), or in a directory anyone may write to, is refused
//! unless `--allow-foreign-socket` is given. Errors go to stderr and exit
//! non-zero.

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use spindle::client::{
    default_socket, Client, ClientError, ConnectOptions, Deadline, FailOutcome, Job, JobState,
    PutUnique, StatsMap,
};

#[path = "../cli/paid.rs"]
mod paid;
use std::error::Error;
use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

type CliResult<T = ()> = Result<T, Box<dyn Error>>;

#[path = "spindle_cli/jetstream.rs"]
mod jetstream;

/// Command line for the spindled job server (speaks the beanstalkd protocol).
#[derive(Parser, Debug)]
#[command(name = "spindle", version, propagate_version = true)]
struct Cli {
    /// Server address: a Unix socket path (or unix:PATH), or HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "SPINDLE_SOCKET",
        value_name = "PATH",
        default_value_t = default_socket().display().to_string()
    )]
    socket: String,
    /// Connect even when the Unix socket belongs to another user (not you,
    /// not root) or lies in a directory anyone may write to. Without it
    /// such a socket is refused: another user may have bound it first.
    #[arg(long, global = true)]
    allow_foreign_socket: bool,
    /// Use distributed queues on this NATS JetStream server instead of a
    /// spindled socket (`put` and `work` only).
    #[arg(long, global = true, env = "SPINDLE_JETSTREAM", value_name = "URL")]
    jetstream: Option<String>,
    /// With --jetstream: the namespace (one stream, SPINDLE_<NS>, per namespace).
    #[arg(long, global = true, env = "SPINDLE_JETSTREAM_NAMESPACE", default_value = "spindle")]
    namespace: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Add a job; its payload is DATA, or stdin when DATA is absent.
    Put(PutArgs),
    /// Server counters, or one queue's (--queue) or job's (--job).
    Stats {
        /// Show this queue's counters.
        #[arg(long, short, conflicts_with = "job")]
        queue: Option<String>,
        /// Show this job's counters.
        #[arg(long)]
        job: Option<u64>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List queues with their job counts.
    Queues {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show a job: by id, or the next ready, delayed or buried one of a queue.
    Peek(PeekArgs),
    /// Move buried jobs (or, when there are none, delayed ones) to ready.
    #[command(override_usage = "spindle kick [--queue QUEUE] COUNT\n       spindle kick --id ID")]
    Kick {
        /// The queue to kick (with a count).
        #[arg(long, short, default_value = "default")]
        queue: String,
        /// Kick this one job instead (buried or delayed, any queue).
        #[arg(long, conflicts_with = "count")]
        id: Option<u64>,
        /// The most jobs to kick.
        #[arg(required_unless_present = "id")]
        count: Option<u64>,
    },
    /// Hold back reserves from a queue for SECS seconds (0 resumes).
    Pause {
        /// The queue.
        #[arg(long, short)]
        queue: String,
        /// How long, in seconds.
        secs: u32,
    },
    /// Delete a queue's jobs in the given states (never reserved ones).
    Clear {
        /// The queue.
        #[arg(long, short)]
        queue: String,
        /// Comma-separated states: ready, delayed, buried, or all.
        #[arg(long, value_name = "STATES")]
        state: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run CMD once per job, with the payload on stdin: exit 0 completes
    /// the job, anything else fails it (retried with backoff).
    Work(WorkArgs),
    /// Periodic jobs: add, list, pause, resume, rm.
    #[command(subcommand)]
    Schedule(paid::ScheduleCmd),
    /// Set a queue's concurrency and rate limits (spindled only).
    Limit(paid::LimitArgs),
    /// Cancel a job in any state; a running job's worker is told (spindled only).
    Cancel {
        /// The job's id.
        id: u64,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Live view of the queues: depth, put rate, wait p99, workers.
    Top {
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// Print JSON (one array per frame).
        #[arg(long)]
        json: bool,
        /// Seconds between frames.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Serve a web page, a JSON API and Prometheus `/metrics` for the
    /// server (a separate process that talks to it like any client).
    Web {
        /// Where to listen, IP:PORT (loopback by default; port 0 picks a
        /// free one).
        #[arg(long, default_value = spindle_web::DEFAULT_LISTEN, value_name = "ADDR")]
        listen: String,
        /// The token actions (pause, clear, kick, delete) need; without it
        /// a random one is made and printed in the page's URL.
        #[arg(long, env = "SPINDLE_WEB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Show only: every action is refused and its button disabled.
        #[arg(long)]
        read_only: bool,
    },
}

#[derive(Args, Debug)]
struct PutArgs {
    /// The queue (tube).
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// Priority: 0 is most urgent; below 1024 counts as urgent.
    #[arg(long, default_value_t = 1024)]
    pri: u32,
    /// Seconds the job waits (delayed) before it can be reserved.
    #[arg(long, default_value_t = 0)]
    delay: u32,
    /// Seconds a worker may hold the job before it is handed out again.
    #[arg(long, default_value_t = 60)]
    ttr: u32,
    /// Do nothing if a live job of the queue holds this key (spindled only).
    #[arg(long, value_name = "KEY", conflicts_with = "expires_in")]
    unique: Option<String>,
    /// Never hand the job out after this long: 500ms, 30s, 5m, 1h (spindled only).
    #[arg(long, value_name = "DURATION", value_parser = paid::parse_duration)]
    expires_in: Option<Duration>,
    /// Print a JSON object.
    #[arg(long)]
    json: bool,
    /// The payload; read from stdin when absent.
    data: Option<String>,
}

#[derive(Args, Debug)]
struct PeekArgs {
    /// The job's id.
    #[arg(required_unless_present_any = ["ready", "delayed", "buried"])]
    id: Option<u64>,
    /// The next job to be reserved from --queue.
    #[arg(long, group = "which", conflicts_with = "id")]
    ready: bool,
    /// The delayed job of --queue with the least delay left.
    #[arg(long, group = "which", conflicts_with = "id")]
    delayed: bool,
    /// The next buried job of --queue.
    #[arg(long, group = "which", conflicts_with = "id")]
    buried: bool,
    /// The queue for --ready, --delayed and --buried.
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// Print a JSON object (the payload as a UTF-8 string, lossily).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct WorkArgs {
    /// The queue to take jobs from.
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// Jobs run at once; each slot has its own connection.
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// Stop after this many jobs in total.
    #[arg(long, value_name = "N")]
    max_jobs: Option<u64>,
    /// Stop once no job is ready (delayed ones are not waited for).
    #[arg(long)]
    exit_when_empty: bool,
    /// On servers without the `fail` extension (plain beanstalkd): attempts
    /// before a failing job is buried; between attempts it is released
    /// with a delay doubling from 1 s up to 1 hour.
    #[arg(long, default_value_t = 25)]
    max_attempts: u64,
    /// Keep extending each job's lease (a touch every half time-to-run)
    /// for as long as its command runs. Without it a command still running
    /// near its job's TTR is stopped (TERM, then KILL after --grace) and
    /// the attempt fails.
    #[arg(long)]
    touch: bool,
    /// With --jetstream: the queue's lease in seconds (its consumer's
    /// AckWait); every node working the queue must give the same.
    #[arg(long, default_value_t = 60)]
    ttr: u32,
    /// With --jetstream: the queue's priority bands, as ascending upper
    /// bounds (exclusive) of the job priority: `1024,65536` makes three
    /// bands, 0-1023, 1024-65535 and the rest, pulled strictly by band
    /// with aging (docs/jetstream.md). Every node working the queue must
    /// give the same.
    #[arg(long, value_name = "BOUNDS", value_delimiter = ',')]
    bands: Vec<u32>,
    /// Report every job on stderr.
    #[arg(long, short)]
    verbose: bool,
    /// When a command is stopped (its job cancelled with `spindle cancel`,
    /// or past its TTR) it gets SIGTERM, then SIGKILL after this many
    /// seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    grace: f64,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spindle: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server to talk to and how (`--socket`, `--allow-foreign-socket`).
#[derive(Clone, Copy)]
struct Server<'a> {
    addr: &'a str,
    opts: ConnectOptions,
}

impl std::fmt::Display for Server<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.addr)
    }
}

fn connect(server: Server<'_>) -> CliResult<Client> {
    Ok(Client::connect_with(server.addr, server.opts)?)
}

/// `spindle web`: serves until the process is stopped.
fn web(
    server: Server<'_>,
    listen: String,
    token: Option<String>,
    read_only: bool,
) -> CliResult<ExitCode> {
    let mut cfg = spindle_web::WebConfig::new(server.addr);
    cfg.connect = server.opts;
    cfg.listen = listen;
    cfg.token = token;
    cfg.read_only = read_only;
    let w = spindle_web::Web::start(cfg)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "spindle web: listening on http://{}/ (daemon at {server})", w.addr())?;
    if read_only {
        writeln!(out, "spindle web: read-only: actions are refused")?;
    } else {
        writeln!(out, "spindle web: open {} (the token in it enables actions)", w.url())?;
    }
    if !w.addr().ip().is_loopback() {
        writeln!(out, "spindle web: warning: listening beyond this machine ({})", w.addr())?;
    }
    out.flush()?;
    drop(out);
    w.wait();
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> CliResult<ExitCode> {
    if let Some(url) = &cli.jetstream {
        return jetstream::run(url, &cli.namespace, cli.command);
    }
    let opts = ConnectOptions::default().allow_foreign_socket(cli.allow_foreign_socket);
    let addr = Server { addr: cli.socket.as_str(), opts };
    match cli.command {
        Cmd::Put(args) => put(addr, args),
        Cmd::Stats { queue, job, json } => stats(addr, queue, job, json),
        Cmd::Queues { json } => queues(addr, json),
        Cmd::Peek(args) => peek(addr, args),
        Cmd::Kick { queue, id, count } => {
            let mut c = connect(addr)?;
            match id {
                Some(id) => {
                    c.kick_job(id)?;
                    println!("kicked job {id}");
                }
                None => {
                    c.use_tube(&queue)?;
                    let n = c.kick(count.unwrap_or(0))?;
                    println!("kicked {n} job{} in {queue}", plural(n));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Schedule(cmd) => paid::schedule(&mut connect(addr)?, cmd),
        Cmd::Limit(args) => paid::limit(&mut connect(addr)?, args),
        Cmd::Cancel { id, json } => paid::cancel(&mut connect(addr)?, id, json),
        Cmd::Pause { queue, secs } => {
            let mut c = connect(addr)?;
            c.pause_tube(&queue, Duration::from_secs(secs.into()))?;
            if secs == 0 {
                println!("resumed {queue}");
            } else {
                println!("paused {queue} for {secs} s");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Clear { queue, state, json } => {
            let states = parse_states(&state)?;
            let mut c = connect(addr)?;
            let n = if c.supports_extensions()? {
                c.clear_tube(&queue, &states)?
            } else {
                clear_by_peeking(&mut c, &queue, &states)?
            };
            if json {
                println!("{}", json!({ "queue": queue, "cleared": n }));
            } else {
                println!("cleared {n} job{} from {queue}", plural(n));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Work(args) => work(addr, args),
        Cmd::Top { once, json, interval } => top(addr, once, json, interval),
        Cmd::Web { listen, token, read_only } => web(addr, listen, token, read_only),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn parse_states(s: &str) -> CliResult<Vec<JobState>> {
    if s == "all" {
        return Ok(vec![JobState::Ready, JobState::Delayed, JobState::Buried]);
    }
    let mut states = Vec::new();
    for part in s.split(',') {
        let state: JobState = part.trim().parse()?;
        if state == JobState::Reserved {
            return Err("reserved jobs cannot be cleared; use ready, delayed, buried or all".into());
        }
        if !states.contains(&state) {
            states.push(state);
        }
    }
    Ok(states)
}

/// `clear` on a server without `clear-tube`: peek and delete, at most as
/// many jobs per state as the queue held when we started (so producers
/// adding jobs meanwhile cannot keep us going).
fn clear_by_peeking(c: &mut Client, queue: &str, states: &[JobState]) -> CliResult<u64> {
    c.use_tube(queue)?;
    let before = c.stats_tube(queue)?;
    let mut cleared = 0;
    for &state in states {
        let count = before.get_u64(&format!("current-jobs-{state}")).unwrap_or(0);
        for _ in 0..count {
            let job = match state {
                JobState::Ready => c.peek_ready()?,
                JobState::Delayed => c.peek_delayed()?,
                _ => c.peek_buried()?,
            };
            let Some(job) = job else { break };
            match c.delete(job.id) {
                Ok(()) => cleared += 1,
                // Reserved or deleted by someone else meanwhile.
                Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(cleared)
}

// ----- put -----

/// DATA, or stdin when it is absent.
fn read_payload(data: Option<String>) -> CliResult<Vec<u8>> {
    Ok(match data {
        Some(d) => d.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
    })
}

fn put(addr: Server<'_>, a: PutArgs) -> CliResult<ExitCode> {
    let mut c = connect(addr)?;
    let body = match a.data {
        Some(d) => d.into_bytes(),
        None => read_stdin_limited(&mut c, std::io::stdin().lock())?,
    };
    c.use_tube(&a.queue)?;
    let delay = Duration::from_secs(a.delay.into());
    let ttr = Duration::from_secs(a.ttr.into());
    let (id, duplicate) = match &a.unique {
        Some(key) => match c.put_unique(key, a.pri, delay, ttr, &body)? {
            PutUnique::Inserted(id) => (id, false),
            PutUnique::Duplicate(id) => (id, true),
        },
        None => match a.expires_in {
            Some(d) => (c.put_deadline(Deadline::In(d), a.pri, delay, ttr, &body)?, false),
            None => (c.put(a.pri, delay, ttr, &body)?, false),
        },
    };
    if a.json {
        println!("{}", json!({ "id": id, "queue": a.queue, "duplicate": duplicate }));
    } else if duplicate {
        println!("duplicate: job {id} already holds key {:?}", a.unique.unwrap_or_default());
    } else {
        println!("inserted job {id} into {}", a.queue);
    }
    Ok(ExitCode::SUCCESS)
}

/// beanstalkd's default `max-job-size`, for a server whose `stats` lacks it.
const DEFAULT_MAX_JOB_SIZE: u64 = 65_535;

/// Reads a payload from `input` as it arrives, stopping at the server's
/// `max-job-size`: a larger input is refused without being read to its
/// end (it may never end: `yes | spindle put`).
fn read_stdin_limited(c: &mut Client, input: impl Read) -> CliResult<Vec<u8>> {
    let limit = c.stats()?.get_u64("max-job-size").unwrap_or(DEFAULT_MAX_JOB_SIZE);
    let mut buf = Vec::new();
    input.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(format!(
            "stdin holds more than the server's max-job-size ({limit} bytes): stopped reading \
             there and put nothing (start spindled with -z BYTES for larger jobs)"
        )
        .into());
    }
    Ok(buf)
}

// ----- stats, queues, peek -----

/// A stats value as JSON: integers and booleans typed, the rest strings.
fn json_value(v: &str) -> Value {
    if let Ok(n) = v.parse::<u64>() {
        return Value::from(n);
    }
    if let Ok(n) = v.parse::<i64>() {
        return Value::from(n);
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(v.to_owned()),
    }
}

/// Keys whose values are strings even when they look like numbers.
const STRING_KEYS: &[&str] =
    &["version", "spindle-version", "hostname", "os", "platform", "name", "tube", "state"];

fn stats_json(s: &StatsMap, server: bool) -> Value {
    let mut m = Map::new();
    for (k, v) in s.iter() {
        let string = STRING_KEYS.contains(&k) || (server && k == "id") || k == "last-error";
        let value = if string { Value::String(v.to_owned()) } else { json_value(v) };
        m.insert(k.to_owned(), value);
    }
    Value::Object(m)
}

fn print_stats(s: &StatsMap) {
    let width = s.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in s.iter() {
        println!("{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
}

fn stats(
    addr: Server<'_>,
    queue: Option<String>,
    job: Option<u64>,
    json: bool,
) -> CliResult<ExitCode> {
    let mut c = connect(addr)?;
    let ext = c.supports_extensions()?;
    let s = match (queue, job) {
        (Some(q), _) if ext => c.stats_tube_ext(&q)?,
        (Some(q), _) => c.stats_tube(&q)?,
        (None, Some(id)) if ext => c.stats_job_ext(id)?,
        (None, Some(id)) => c.stats_job(id)?,
        (None, None) => c.stats()?,
    };
    let server = s.get("pid").is_some();
    if json {
        println!("{}", stats_json(&s, server));
    } else {
        print_stats(&s);
    }
    Ok(ExitCode::SUCCESS)
}

struct QueueRow {
    name: String,
    stats: StatsMap,
}

impl QueueRow {
    fn n(&self, key: &str) -> u64 {
        self.stats.get_u64(key).unwrap_or(0)
    }
}

fn queue_rows(c: &mut Client, ext: bool) -> CliResult<Vec<QueueRow>> {
    let mut names = c.list_tubes()?;
    names.sort();
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let stats = if ext { c.stats_tube_ext(&name) } else { c.stats_tube(&name) };
        match stats {
            Ok(stats) => rows.push(QueueRow { name, stats }),
            // The tube went away between the two commands.
            Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rows)
}

fn queues(addr: Server<'_>, json: bool) -> CliResult<ExitCode> {
    let mut c = connect(addr)?;
    let rows = queue_rows(&mut c, false)?;
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "ready": r.n("current-jobs-ready"),
                    "reserved": r.n("current-jobs-reserved"),
                    "delayed": r.n("current-jobs-delayed"),
                    "buried": r.n("current-jobs-buried"),
                    "total_jobs": r.n("total-jobs"),
                    "paused_s": r.n("pause-time-left"),
                })
            })
            .collect();
        println!("{}", Value::Array(list));
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
    println!(
        "{:width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  PAUSED",
        "QUEUE", "READY", "RESERVED", "DELAYED", "BURIED", "TOTAL"
    );
    for r in &rows {
        let paused = r.n("pause-time-left");
        println!(
            "{:width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {}",
            r.name,
            r.n("current-jobs-ready"),
            r.n("current-jobs-reserved"),
            r.n("current-jobs-delayed"),
            r.n("current-jobs-buried"),
            r.n("total-jobs"),
            if paused > 0 { format!("{paused} s") } else { "-".to_owned() },
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn peek(addr: Server<'_>, a: PeekArgs) -> CliResult<ExitCode> {
    let mut c = connect(addr)?;
    let (job, what) = match a.id {
        Some(id) => (c.peek(id)?, format!("no job {id}")),
        None => {
            c.use_tube(&a.queue)?;
            let (job, state) = if a.ready {
                (c.peek_ready()?, "ready")
            } else if a.delayed {
                (c.peek_delayed()?, "delayed")
            } else {
                (c.peek_buried()?, "buried")
            };
            (job, format!("no {state} job in {}", a.queue))
        }
    };
    let Some(Job { id, body }) = job else {
        if a.json {
            println!("null");
        }
        eprintln!("spindle: {what}");
        return Ok(ExitCode::from(1));
    };
    if a.json {
        let mut v =
            json!({ "id": id, "bytes": body.len(), "body": String::from_utf8_lossy(&body) });
        if let (Ok(s), Some(m)) = (c.stats_job(id), v.as_object_mut()) {
            for key in ["tube", "state", "pri", "age", "delay", "ttr", "reserves"] {
                if let Some(val) = s.get(key) {
                    let string = matches!(key, "tube" | "state");
                    let val = if string { Value::String(val.to_owned()) } else { json_value(val) };
                    m.insert(key.to_owned(), val);
                }
            }
        }
        println!("{v}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "job {id}, {} byte{}:", body.len(), plural(body.len() as u64))?;
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ----- work -----

struct Shared {
    queue: String,
    cmd: Vec<String>,
    max_jobs: Option<u64>,
    exit_when_empty: bool,
    max_attempts: u64,
    verbose: bool,
    touch: bool,
    grace: Duration,
    /// Set by the first Ctrl-C (or TERM): take no new job.
    stop: Arc<AtomicBool>,
    /// Set by the second: kill the running commands, jobs back to ready.
    kill: AtomicBool,
    /// The commands running now: job id → (process group, start).
    running: std::sync::Mutex<std::collections::BTreeMap<u64, (u32, Instant)>>,
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// How long an idle slot waits in one reserve before checking for a stop.
const IDLE_RESERVE: Duration = Duration::from_secs(1);
/// The most stderr kept as a failed job's error.
const ERROR_TAIL: usize = 2048;

fn work(addr: Server<'_>, a: WorkArgs) -> CliResult<ExitCode> {
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let grace =
        Duration::try_from_secs_f64(a.grace).map_err(|_| "--grace must be 0 or more seconds")?;
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        queue: a.queue,
        cmd: a.cmd,
        max_jobs: a.max_jobs,
        exit_when_empty: a.exit_when_empty,
        max_attempts: a.max_attempts.max(1),
        verbose: a.verbose,
        touch: a.touch,
        grace,
        stop,
        kill: AtomicBool::new(false),
        running: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let sh = Arc::clone(&shared);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for (n, _) in signals.forever().enumerate() {
            on_signal(&sh, n == 0);
        }
    })?;
    // Connect every slot first, so a wrong socket fails before any job runs.
    let mut clients = Vec::with_capacity(a.concurrency);
    for _ in 0..a.concurrency {
        let mut c = connect(addr)?;
        c.watch(&shared.queue)?;
        if shared.queue != "default" {
            c.ignore("default")?;
        }
        clients.push(c);
    }
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(slot, client)| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || work_slot(client, &shared).map_err(|e| e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a worker thread panicked".to_owned()),
        }
    }
    let (done, failed) =
        (shared.done.load(Ordering::Relaxed), shared.failed.load(Ordering::Relaxed));
    eprintln!("spindle work: {done} job{} done, {failed} failed", plural(done));
    if let Some(first) = errors.into_iter().next() {
        return Err(first.into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `sig` to the process group `pgid` (each command runs in its own,
/// so whatever it started goes too).
fn kill_group(pgid: u32, sig: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill(2) with a negative pid signals a process group; it
        // touches no memory of ours.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// The first Ctrl-C: say what we wait for. The second: kill the running
/// commands (their jobs go back to ready, `run_job`).
fn on_signal(s: &Shared, first: bool) {
    let running: Vec<(u64, u32, Instant)> = match s.running.lock() {
        Ok(r) => r.iter().map(|(&id, &(pg, t))| (id, pg, t)).collect(),
        Err(_) => Vec::new(),
    };
    let list = running
        .iter()
        .map(|(id, _, t)| format!("job {id} (running {} s)", t.elapsed().as_secs()))
        .collect::<Vec<_>>()
        .join(", ");
    if first {
        s.stop.store(true, Ordering::SeqCst);
        if running.is_empty() {
            eprintln!("spindle work: stopping: no job is running");
        } else {
            eprintln!(
                "spindle work: stopping once the running command{} finish{}: {list}; \
                 Ctrl-C again kills {} and puts {} job{} back to ready",
                if running.len() == 1 { "" } else { "s" },
                if running.len() == 1 { "es" } else { "" },
                if running.len() == 1 { "it" } else { "them" },
                if running.len() == 1 { "its" } else { "their" },
                if running.len() == 1 { "" } else { "s" },
            );
        }
    } else {
        s.kill.store(true, Ordering::SeqCst);
        if !running.is_empty() {
            eprintln!(
                "spindle work: killing {list}; the job{} go back to ready",
                plural(running.len() as u64)
            );
        }
        for (_, pg, _) in running {
            kill_group(pg, libc::SIGKILL);
        }
    }
}

fn work_slot(mut c: Client, s: &Shared) -> CliResult {
    let ext = c.supports_extensions()?;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(max) = s.max_jobs {
            if s.claimed.fetch_add(1, Ordering::Relaxed) >= max {
                return Ok(());
            }
        }
        let job = loop {
            let timeout = if s.exit_when_empty { Duration::ZERO } else { IDLE_RESERVE };
            match c.reserve_with_timeout(timeout) {
                Ok(Some(job)) => break job,
                Ok(None) if s.exit_when_empty => return Ok(()),
                Ok(None) | Err(ClientError::DeadlineSoon) => {
                    if s.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        run_job(&mut c, s, ext, job)?;
    }
}

/// What running the command gave.
enum Ran {
    Ok,
    Failed(String),
    /// Killed by a second Ctrl-C: the job goes back to ready.
    Interrupted,
    /// The job was cancelled and the command stopped.
    Cancelled,
}

/// How often a running job's lease is touched at most, so that a
/// cancellation reaches its command within about this long.
const CANCEL_POLL: Duration = Duration::from_secs(1);

fn run_job(c: &mut Client, s: &Shared, ext: bool, job: Job) -> CliResult {
    let id = job.id;
    let started = Instant::now();
    let (ran, lease_lost) = match spawn_and_wait(c, s, job) {
        Ok(r) => r,
        Err(e) => {
            // The command could not start: hand the job back untouched.
            let pri = c.stats_job(id).ok().and_then(|st| st.get_u64("pri")).unwrap_or(1024);
            let _ = c.release(id, u32::try_from(pri).unwrap_or(u32::MAX), Duration::ZERO);
            return Err(format!("cannot run `{}`: {e}", s.cmd.join(" ")).into());
        }
    };
    let took = started.elapsed();
    if lease_lost {
        eprintln!(
            "spindle work: job {id} outlived its lease (time-to-run); the server hands it out again"
        );
        return Ok(());
    }
    match ran {
        Ran::Ok => {
            match c.delete(id) {
                Ok(()) => {}
                Err(ClientError::NotFound(_)) => {
                    eprintln!(
                        "spindle work: job {id} finished after its lease ran out; not deleted"
                    );
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            s.done.fetch_add(1, Ordering::Relaxed);
            if s.verbose {
                eprintln!("spindle work: job {id} done in {} ms", took.as_millis());
            }
        }
        Ran::Interrupted => {
            let pri = c.stats_job(id).ok().and_then(|st| st.get_u64("pri")).unwrap_or(1024);
            c.release(id, u32::try_from(pri).unwrap_or(u32::MAX), Duration::ZERO)?;
            eprintln!("spindle work: job {id} killed; released to ready");
        }
        Ran::Cancelled => {
            // Tell the server the run is over: the job goes (its reply is
            // `CANCELLED`, or `NOT_FOUND` if the lease ended first).
            match c.delete(id) {
                Ok(()) | Err(ClientError::Cancelled(_)) | Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            eprintln!("spindle work: job {id} was cancelled; its command was stopped");
        }
        Ran::Failed(error) => {
            s.failed.fetch_add(1, Ordering::Relaxed);
            let outcome = if ext { fail_ext(c, id, &error)? } else { fail_plain(c, s, id)? };
            if s.verbose {
                eprintln!("spindle work: job {id} failed ({error}); {outcome}");
            }
        }
    }
    Ok(())
}

fn fail_ext(c: &mut Client, id: u64, error: &str) -> CliResult<String> {
    Ok(match c.fail(id, error.as_bytes())? {
        FailOutcome::Retrying { attempts, delay } => {
            format!("attempt {attempts}, retrying in {} ms", delay.as_millis())
        }
        FailOutcome::Buried { attempts } => format!("buried after {attempts} attempts"),
    })
}

/// Without the `fail` extension: release with a doubling delay, or bury
/// once `--max-attempts` reserves were made.
fn fail_plain(c: &mut Client, s: &Shared, id: u64) -> CliResult<String> {
    let st = c.stats_job(id)?;
    let pri = u32::try_from(st.get_u64("pri").unwrap_or(1024)).unwrap_or(u32::MAX);
    let reserves = st.get_u64("reserves").unwrap_or(1).max(1);
    if reserves >= s.max_attempts {
        c.bury(id, pri)?;
        return Ok(format!("buried after {reserves} attempts"));
    }
    let delay = Duration::from_secs((1u64 << (reserves - 1).min(12)).min(3600));
    c.release(id, pri, delay)?;
    Ok(format!("attempt {reserves}, retrying in {} s", delay.as_secs()))
}

/// Runs the command (in its own process group) with the payload on stdin,
/// touching the job every half time-to-run (at most every
/// [`CANCEL_POLL`]) while it runs, so a cancellation is seen: a touch
/// answered `CANCELLED` stops the command (TERM, then KILL after
/// `--grace`). Without `--touch`, a command still running at TTR - 1 s
/// (at least half the TTR) after it started is stopped the same way and
/// the attempt fails: the touches only hold the lease for the failure to
/// be reported. Returns what it gave and whether the lease was lost
/// meanwhile.
fn spawn_and_wait(c: &mut Client, s: &Shared, job: Job) -> std::io::Result<(Ran, bool)> {
    let Some((program, args)) = s.cmd.split_first() else {
        return Err(std::io::Error::other("no command given"));
    };
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(program)
        .process_group(0)
        .args(args)
        .env("SPINDLE_JOB_ID", job.id.to_string())
        .env("SPINDLE_QUEUE", &s.queue)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()?;
    let id = job.id;
    let pgid = child.id();
    let started = Instant::now();
    if let Ok(mut r) = s.running.lock() {
        r.insert(id, (pgid, started));
    }
    if s.kill.load(Ordering::SeqCst) {
        kill_group(pgid, libc::SIGKILL);
    }
    let stdin = child.stdin.take();
    let body = job.body;
    let feeder = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(&body);
        }
    });
    let stderr = child.stderr.take();
    let collector = std::thread::spawn(move || {
        let mut tail = Vec::new();
        if let Some(mut stderr) = stderr {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = std::io::stderr().write_all(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * ERROR_TAIL {
                    tail.drain(..tail.len() - ERROR_TAIL);
                }
            }
        }
        tail
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });

    // The TTR is asked for only when the command is still running after
    // half the shortest possible TTR (1 s), so short jobs cost no extra
    // round trip.
    let mut ttr: Option<Duration> = None;
    let mut last_touch = Instant::now();
    let mut lease_lost = false;
    // Why and when TERM was sent (cancelled, or past the TTR), and
    // whether KILL followed.
    let mut termed: Option<Instant> = None;
    let mut cancelled = false;
    let mut killed = false;
    let mut touch_now = false;
    let status = loop {
        // Short waits: a second Ctrl-C is acted on within a fifth of a second.
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(status) => break status,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(std::io::Error::other("lost track of the command"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if s.kill.load(Ordering::SeqCst) {
            kill_group(pgid, libc::SIGKILL);
        }
        if let Some(t) = termed {
            if !killed && t.elapsed() >= s.grace {
                kill_group(pgid, libc::SIGKILL);
                killed = true;
            }
        }
        if lease_lost || cancelled || started.elapsed() < Duration::from_millis(500) {
            continue;
        }
        let ttr = match ttr {
            Some(t) => t,
            None => {
                let secs = c.stats_job(id).ok().and_then(|st| st.get_u64("ttr")).unwrap_or(1);
                let t = Duration::from_secs(secs.max(1));
                ttr = Some(t);
                t
            }
        };
        let half = (ttr / 2).min(CANCEL_POLL);
        if !s.touch && termed.is_none() {
            let limit = ttr.saturating_sub(Duration::from_secs(1)).max(ttr / 2);
            if started.elapsed() >= limit {
                kill_group(pgid, libc::SIGTERM);
                termed = Some(Instant::now());
                // Hold the lease through the grace period to report the failure.
                touch_now = true;
            }
        }
        if touch_now || last_touch.elapsed() + Duration::from_millis(5) >= half {
            touch_now = false;
            match c.touch(id) {
                Ok(()) => last_touch = Instant::now(),
                Err(ClientError::NotFound(_)) => lease_lost = true,
                Err(ClientError::Cancelled(_)) => {
                    cancelled = true;
                    if termed.is_none() {
                        kill_group(pgid, libc::SIGTERM);
                        termed = Some(Instant::now());
                    }
                }
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
    };
    if let Ok(mut r) = s.running.lock() {
        r.remove(&id);
    }
    let _ = waiter.join();
    let _ = feeder.join();
    let tail = collector.join().unwrap_or_default();
    let status = status?;
    if s.kill.load(Ordering::SeqCst) && !status.success() {
        return Ok((Ran::Interrupted, lease_lost));
    }
    if cancelled {
        return Ok((Ran::Cancelled, lease_lost));
    }
    if let (Some(ttr), Some(_)) = (ttr, termed) {
        let how = if killed { "TERM, then KILL after the grace period" } else { "TERM" };
        let error = format!(
            "`{}` ran past the job's time-to-run ({} s) and was stopped ({how}); \
             pass --touch to let long commands keep their lease",
            s.cmd.join(" "),
            ttr.as_secs()
        );
        return Ok((Ran::Failed(error), lease_lost));
    }
    if status.success() {
        return Ok((Ran::Ok, lease_lost));
    }
    let text = String::from_utf8_lossy(&tail);
    let text = text.trim();
    let start = text.len().saturating_sub(ERROR_TAIL);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    let mut error = format!("`{}` {status}", s.cmd.join(" "));
    if !text.is_empty() {
        error.push_str(": ");
        error.push_str(&text[start..]);
    }
    Ok((Ran::Failed(error), lease_lost))
}

// ----- top -----

fn top(addr: Server<'_>, once: bool, json: bool, interval: f64) -> CliResult<ExitCode> {
    let interval = Duration::try_from_secs_f64(interval)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100))
        .ok_or("--interval must be at least 0.1 seconds")?;
    let mut c = connect(addr)?;
    let ext = c.supports_extensions()?;
    let mut prev: std::collections::HashMap<String, (u64, Instant)> = Default::default();
    loop {
        let server = c.stats()?;
        let rows = queue_rows(&mut c, ext)?;
        let now = Instant::now();
        let rates: Vec<Option<f64>> = rows
            .iter()
            .map(|r| {
                let total = r.n("total-jobs");
                let rate = prev.get(&r.name).map(|&(before, at)| {
                    total.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()
                });
                prev.insert(r.name.clone(), (total, now));
                rate
            })
            .collect();
        let waiting = |r: &QueueRow| {
            r.stats.get_u64("workers-waiting").or_else(|| r.stats.get_u64("current-waiting"))
        };
        if json {
            let list: Vec<Value> = rows
                .iter()
                .zip(&rates)
                .map(|(r, rate)| {
                    json!({
                        "name": r.name,
                        "ready": r.n("current-jobs-ready"),
                        "reserved": r.n("current-jobs-reserved"),
                        "delayed": r.n("current-jobs-delayed"),
                        "buried": r.n("current-jobs-buried"),
                        "put_rate": rate,
                        "wait_p99_us": r.stats.get_u64("wait-p99-us"),
                        "workers_waiting": waiting(r),
                        "desired_workers": r.stats.get_u64("desired-workers"),
                        "paused_s": r.n("pause-time-left"),
                    })
                })
                .collect();
            println!("{}", Value::Array(list));
        } else {
            let mut out = String::new();
            if !once {
                // Clear the screen and home the cursor.
                out.push_str("\x1b[2J\x1b[H");
            }
            out.push_str(&format!(
                "spindle top - {addr} - version {} - up {} s - {} connections, {} workers{}\n\n",
                server.get("spindle-version").or(server.get("version")).unwrap_or("?"),
                server.get("uptime").unwrap_or("?"),
                server.get("current-connections").unwrap_or("?"),
                server.get("current-workers").unwrap_or("?"),
                if ext { "" } else { " (plain beanstalkd: no wait p99 or desired workers)" },
            ));
            let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
            out.push_str(&format!(
                "{:width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>9}  {:>10}  {:>7}  {:>7}\n",
                "QUEUE",
                "READY",
                "RESERVED",
                "DELAYED",
                "BURIED",
                "PUT/s",
                "WAIT p99",
                "WAITING",
                "DESIRED"
            ));
            for (r, rate) in rows.iter().zip(&rates) {
                let dash = || "-".to_owned();
                let mut name = r.name.clone();
                if r.n("pause-time-left") > 0 {
                    name.push_str(" (paused)");
                }
                out.push_str(&format!(
                    "{:width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>9}  {:>10}  {:>7}  {:>7}\n",
                    name,
                    r.n("current-jobs-ready"),
                    r.n("current-jobs-reserved"),
                    r.n("current-jobs-delayed"),
                    r.n("current-jobs-buried"),
                    rate.map_or_else(dash, |v| format!("{v:.1}")),
                    r.stats.get_u64("wait-p99-us").map_or_else(dash, format_us),
                    waiting(r).map_or_else(dash, |v| v.to_string()),
                    r.stats.get_u64("desired-workers").map_or_else(dash, |v| v.to_string()),
                ));
            }
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes())?;
            stdout.flush()?;
        }
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(interval);
    }
}

fn format_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.1} s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}
