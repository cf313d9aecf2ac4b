//! `spindled`: Spindle's daemon, a drop-in replacement for beanstalkd.
//!
//! It takes beanstalkd's flags with the same meaning, so a systemd unit or
//! test harness that starts `beanstalkd -l unix:/run/q.sock -b /var/lib/q`
//! can start `spindled` with the same arguments. `docs/protocol.md` lists
//! the flags, the long options and every deviation.

/// mimalloc instead of glibc's malloc: the job table allocates two small
/// blocks per job. Measured with `spindle-bench peer` (2 cores, two runs
/// each): `put-batch` 664-771 k jobs/s against 626-638 k, server CPU per
/// durable cycle 6.6 µs against 7.0-7.3 (`docs/benchmarks.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How spindled asks mimalloc to keep memory it does not use unmapped.
mod lean {
    /// mimalloc's option numbers (`mi_option_e` in `mimalloc.h`, v2).
    const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
    const MI_OPTION_PURGE_DELAY: i32 = 15;

    extern "C" {
        /// `mi_option_set` of the mimalloc linked in as the allocator.
        fn mi_option_set(option: i32, value: std::ffi::c_long);
        /// `mi_collect`: frees and purges what the calling thread freed.
        fn mi_collect(force: bool);
    }

    /// Commits arena memory on demand rather than eagerly, and returns
    /// freed pages to the OS at once rather than at a later allocation:
    /// with eager commit, idle connections and freed memory stayed
    /// resident (about 5 KB more per idle connection), and with the
    /// default 10 ms purge delay, buffers an I/O loop read and the table's
    /// loop freed stayed resident while the daemon was idle (the purge
    /// runs only when something allocates). `spindle-bench peer` showed no
    /// cost within its run-to-run noise (`docs/benchmarks.md`). A
    /// constructor, because the Rust runtime's first allocation, before
    /// `main`, reserves the first arena.
    extern "C" fn on_demand_commit() {
        // SAFETY: `mi_option_set` only stores the value; mimalloc reads it
        // when it reserves arena memory or purges. Constructors run on one
        // thread.
        unsafe {
            mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
            mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }

    #[used]
    #[link_section = ".init_array"]
    static ON_DEMAND_COMMIT: extern "C" fn() = on_demand_commit;

    /// Returns to the OS what recovery allocated and freed again
    /// (temporary maps, decode buffers): mimalloc otherwise keeps it
    /// resident until its next purge, which an idle daemon never reaches.
    pub(crate) fn release_freed() {
        // SAFETY: `mi_collect` takes no pointers; any thread may call it.
        unsafe { mi_collect(true) };
    }
}

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use spindle::server::{
    JetStreamTubes, Listen, Recovery, Server, ServerConfig, SyncMode, DEFAULT_MAX_JOB_SIZE,
    DEFAULT_SEGMENT_SIZE, MAX_JOB_SIZE_LIMIT,
};
use spindle::FileAccess;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Durability {
    /// No disk: a crash loses queued jobs.
    Memory,
    /// The mmap'd log (needs a data dir): survives kill -9; a power loss
    /// loses at most the -f interval.
    Process,
    /// fsync before every reply that changed state (same as -f0).
    Sync,
}

/// How the log's appends write (`spindle_wal::WriteMethod`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum LogWrite {
    /// Stores through a writable mapping: no system call, but every sync
    /// write-protects the pages stored into (a TLB shoot-down each).
    Mmap,
    /// One pwritev per loop iteration into a read-only mapped file: no page
    /// of the mapping for a sync to write-protect.
    Pwrite,
}

/// spindled: a beanstalkd-compatible job server (Spindle).
#[derive(Parser, Debug)]
#[command(name = "spindled", disable_version_flag = true, about, long_about = None)]
struct Args {
    /// Listen address: `unix:PATH` for a Unix socket, or a host/IP for TCP
    /// (with -p).
    #[arg(short = 'l', value_name = "ADDR")]
    listen_addr: Option<String>,
    /// TCP port (beanstalkd's default 11300 when TCP is used).
    #[arg(short = 'p', value_name = "PORT")]
    port: Option<u16>,
    /// Data directory for the write-ahead log (beanstalkd's binlog dir);
    /// without it, jobs live in memory only.
    #[arg(short = 'b', long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Let this group (a name or a gid) read the data directory: it is
    /// made 0750 and its log files 0640, all given to the group. Without
    /// it they are private to spindled's user (0700 and 0600).
    #[arg(long, value_name = "GROUP", requires = "data_dir")]
    data_group: Option<String>,
    /// fsync at most every MS milliseconds (default 50); -f0 syncs before
    /// every reply that changed state.
    #[arg(short = 'f', value_name = "MS")]
    fsync_ms: Option<u64>,
    /// Never fsync (records still survive kill -9: the log is mmap'd).
    #[arg(short = 'F', action = ArgAction::SetTrue)]
    never_fsync: bool,
    /// Maximum job size in bytes (default 65535, at most 1073741824).
    #[arg(short = 'z', value_name = "BYTES")]
    max_job_size: Option<u64>,
    /// Log segment size in bytes (rounded up to 4096).
    #[arg(short = 's', value_name = "BYTES")]
    segment_size: Option<u64>,
    /// Become this user (accepted for compatibility; only works as root).
    #[arg(short = 'u', value_name = "USER")]
    user: Option<String>,
    /// More verbose logging (repeatable).
    #[arg(short = 'V', action = ArgAction::Count)]
    verbose: u8,
    /// Print the version and exit.
    #[arg(short = 'v', action = ArgAction::SetTrue)]
    version: bool,

    /// Unix socket path (same as -l unix:PATH). Default: $SPINDLE_SOCKET,
    /// else $XDG_RUNTIME_DIR/spindled.sock, else /tmp/spindled-$UID.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// TCP address HOST:PORT (TCP is off unless asked for).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Mode of the created Unix socket, octal.
    #[arg(long, default_value = "600", value_name = "OCTAL")]
    socket_mode: String,
    /// Only these peer uids may connect over the Unix socket (repeatable).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// memory | process | sync (default: process with -b, memory without).
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// Most open connections; more are closed at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most bytes of half-received job bodies, all connections together;
    /// a body beyond is read and dropped, and its put gets OUT_OF_MEMORY.
    #[arg(long, default_value_t = spindle_server::DEFAULT_MAX_PARTIAL_BYTES)]
    max_partial_bytes: u64,
    /// Most live jobs; puts beyond get OUT_OF_MEMORY.
    #[arg(long, default_value_t = 10_000_000)]
    max_jobs: u64,
    /// Most live job bytes; puts beyond get OUT_OF_MEMORY.
    #[arg(long, default_value_t = 4 << 30)]
    max_bytes: u64,
    /// Latency target for `desired-workers`, in milliseconds.
    #[arg(long, default_value_t = 100)]
    latency_target_ms: u64,
    /// Refuse to start if the log's tail is damaged (default: cut it off
    /// with a warning).
    #[arg(long)]
    strict_recovery: bool,
    /// After activity, poll without blocking for this many microseconds
    /// before sleeping (lower wake-up latency, more CPU). 0 = never spin.
    #[arg(long, default_value_t = 0, value_name = "US")]
    idle_spin_us: u64,
    /// Event loops: one owns the job table and serves its share of the
    /// connections; the other N-1 only move their connections' bytes.
    /// New connections are dealt round-robin. 1 = one thread, like
    /// beanstalkd.
    #[arg(long, default_value_t = 1, value_name = "N")]
    io_loops: usize,
    /// Owners of the job table, as the engine's shards (docs/architecture.md, "Names").
    /// spindled has one owner today: only 1 is accepted (the plan for more
    /// is docs/daemon-owners.md). To spread sockets over threads, use
    /// --io-loops.
    #[arg(long, default_value_t = 1, value_name = "N")]
    shards: usize,
    /// With --log-write mmap: do not fault new log segments in ahead of use
    /// (saves writing each segment's zeroed pages back once; appends then
    /// take the page faults).
    #[arg(long)]
    no_log_prefault: bool,
    /// How records are written into the log (docs/wal-format.md §6).
    #[arg(long, value_enum, default_value = "pwrite")]
    log_write: LogWrite,
    /// Put the tubes named by --jetstream-tube in NATS JetStream at this
    /// server (nats://HOST:PORT), shared with every spindled and Spindle
    /// node on it (docs/jetstream.md, "spindled").
    #[arg(long, value_name = "URL")]
    jetstream: Option<String>,
    /// A tube to keep in JetStream (repeat, or separate with commas); the
    /// others stay local.
    #[arg(long = "jetstream-tube", value_name = "TUBE", value_delimiter = ',')]
    jetstream_tubes: Vec<String>,
    /// The JetStream namespace (one stream per namespace).
    #[arg(long, default_value = "default", value_name = "NAME")]
    jetstream_namespace: String,
    /// Lease time of every job of the distributed tubes, in seconds (the
    /// TTR a put gives is not used: JetStream's lease is per queue).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    jetstream_ttr: u64,
    /// Runs per job of the distributed tubes before it is buried (each
    /// release counts as a run).
    #[arg(long, default_value_t = 25, value_name = "N")]
    jetstream_attempts: u32,
}

fn config(a: &Args) -> Result<ServerConfig, String> {
    let mut cfg = ServerConfig::default();
    let mut listen = Vec::new();
    if let Some(l) = &a.listen_addr {
        if let Some(path) = l.strip_prefix("unix:") {
            if a.port.is_some() {
                return Err("-p makes no sense with -l unix:PATH".into());
            }
            listen.push(Listen::Unix(PathBuf::from(path)));
        } else {
            let port = a.port.unwrap_or(11300);
            let addr = match l.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port),
                Err(_) => (l.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| format!("-l {l}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("-l {l}: no address"))?,
            };
            listen.push(Listen::Tcp(addr));
        }
    } else if let Some(port) = a.port {
        listen.push(Listen::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    if let Some(s) = &a.socket {
        listen.push(Listen::Unix(s.clone()));
    }
    if let Some(l) = &a.listen {
        let addr = l
            .to_socket_addrs()
            .map_err(|e| format!("--listen {l}: {e}"))?
            .next()
            .ok_or_else(|| format!("--listen {l}: no address"))?;
        listen.push(Listen::Tcp(addr));
    }
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    let durability = a.durability.unwrap_or(if a.data_dir.is_some() {
        Durability::Process
    } else {
        Durability::Memory
    });
    match durability {
        Durability::Memory => {
            if a.data_dir.is_some() {
                return Err("--durability memory and -b/--data-dir contradict each other".into());
            }
        }
        Durability::Process | Durability::Sync => {
            if a.data_dir.is_none() {
                return Err(format!(
                    "--durability {:?} needs a data directory: add -b DIR",
                    durability
                )
                .to_lowercase());
            }
        }
    }
    cfg.data_dir = a.data_dir.clone();
    if let Some(g) = &a.data_group {
        cfg.data_access = FileAccess::group_named(g).map_err(|e| format!("--data-group: {e}"))?;
    }
    cfg.sync = if durability == Durability::Sync || a.fsync_ms == Some(0) {
        SyncMode::Always
    } else if a.never_fsync {
        SyncMode::Never
    } else {
        SyncMode::Interval(Duration::from_millis(a.fsync_ms.unwrap_or(50)))
    };
    let z = a.max_job_size.unwrap_or(u64::from(DEFAULT_MAX_JOB_SIZE));
    if z > u64::from(MAX_JOB_SIZE_LIMIT) {
        return Err(format!("-z {z}: the maximum is {MAX_JOB_SIZE_LIMIT} bytes"));
    }
    cfg.max_job_size = u32::try_from(z).map_err(|_| format!("-z {z} is too large"))?;
    cfg.segment_size = a.segment_size.unwrap_or(DEFAULT_SEGMENT_SIZE);
    cfg.socket_mode = u32::from_str_radix(&a.socket_mode, 8)
        .map_err(|_| format!("--socket-mode {}: not an octal mode like 600", a.socket_mode))?;
    cfg.allow_uids = a.allow_uid.clone();
    cfg.max_connections = a.max_connections;
    cfg.max_partial_bytes = a.max_partial_bytes;
    cfg.max_jobs = a.max_jobs;
    cfg.max_bytes = a.max_bytes;
    cfg.latency_target = Duration::from_millis(a.latency_target_ms.max(1));
    cfg.idle_spin = Duration::from_micros(a.idle_spin_us);
    cfg.recovery = if a.strict_recovery { Recovery::Strict } else { Recovery::Truncate };
    if a.shards != 1 {
        return Err(format!(
            "--shards {}: spindled has one owner of the job table today, so only --shards 1 \
             is accepted (docs/daemon-owners.md); to spread connections' socket I/O over {} \
             threads, use --io-loops {}",
            a.shards, a.shards, a.shards
        ));
    }
    cfg.io_loops = a.io_loops;
    cfg.log_prefault = !a.no_log_prefault;
    cfg.log_write = match a.log_write {
        LogWrite::Mmap => spindle::wal::WriteMethod::Mmap,
        LogWrite::Pwrite => spindle::wal::WriteMethod::Pwrite,
    };
    match (&a.jetstream, a.jetstream_tubes.is_empty()) {
        (Some(url), false) => {
            cfg.jetstream = Some(JetStreamTubes {
                url: url.clone(),
                namespace: a.jetstream_namespace.clone(),
                tubes: a.jetstream_tubes.clone(),
                ttr: Duration::from_secs(a.jetstream_ttr.max(1)),
                max_attempts: a.jetstream_attempts.max(1),
            });
        }
        (Some(_), true) => {
            return Err("--jetstream needs at least one --jetstream-tube NAME".into());
        }
        (None, false) => return Err("--jetstream-tube needs --jetstream URL".into()),
        (None, true) => {}
    }
    if let Some(u) = &a.user {
        return Err(format!(
            "-u {u}: spindled does not switch users; start it as that user (systemd User=)"
        ));
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.version {
        println!("spindled {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let level = match args.verbose {
        0 => tracing::Level::INFO,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    // Colour codes only for a person at a terminal, never into a log file
    // or journald.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spindled: {e}");
            return ExitCode::from(2);
        }
    };
    let where_ = cfg
        .listen
        .iter()
        .map(|l| match l {
            Listen::Unix(p) => format!("unix:{}", p.display()),
            Listen::Tcp(a) => a.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let data = match &cfg.data_dir {
        Some(d) => format!("data dir {}", d.display()),
        None => "no data dir (jobs in memory only: -b DIR keeps them)".to_string(),
    };
    let durability = match (&cfg.data_dir, cfg.sync) {
        (None, _) => "none".to_string(),
        (Some(_), SyncMode::Never) => "no fsync (-F: survives kill -9, not power loss)".to_string(),
        (Some(_), SyncMode::Interval(d)) => format!("fsync every {} ms (-f)", d.as_millis()),
        (Some(_), SyncMode::Always) => "fsync before every reply (-f 0)".to_string(),
    };
    let server = match Server::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spindled: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("listening on {where_}; {data}; durability: {durability}");
    lean::release_freed();
    let handle = server.handle();
    // SIGTERM/SIGINT stop cleanly; SIGUSR1 enters drain mode (beanstalkd).
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ]);
    match signals {
        Ok(mut sigs) => {
            std::thread::spawn(move || {
                for s in sigs.forever() {
                    if s == signal_hook::consts::SIGUSR1 {
                        handle.drain();
                    } else {
                        handle.stop();
                    }
                }
            });
        }
        Err(e) => {
            eprintln!("spindled: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spindled: {e}");
            ExitCode::FAILURE
        }
    }
}
