//! `spindle --jetstream nats://HOST:PORT put|work`: the CLI on a
//! distributed queue (NATS JetStream, `docs/jetstream.md`) instead of a
//! spindled socket. Other commands are refused with a clear error.

use super::{plural, CliResult, Cmd, PutArgs, WorkArgs};
use serde_json::json;
use spindle::jetstream::{Failed, Lease, Node, NodeOptions, Put, QueueConfig, Receipt};
use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs `cmd` against the JetStream server at `url`, namespace `ns`.
pub(crate) fn run(url: &str, ns: &str, cmd: Cmd) -> CliResult<ExitCode> {
    let connect = || Node::connect(NodeOptions::new(url).namespace(ns).name("spindle-cli"));
    match cmd {
        Cmd::Put(a) => put(connect()?, a),
        Cmd::Work(a) => work(connect()?, a),
        other => {
            let name = format!("{other:?}");
            let name = name.split([' ', '{', '(']).next().unwrap_or("this").to_lowercase();
            Err(format!(
                "`spindle {name}` does not work with --jetstream yet (put and work do); \
                 use the nats CLI's stream and consumer reports meanwhile"
            )
            .into())
        }
    }
}

fn put(node: Node, a: PutArgs) -> CliResult<ExitCode> {
    let body = match a.data {
        Some(d) => d.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
    };
    let mut job = Put::new(a.queue.as_str(), body).delay(Duration::from_secs(a.delay.into()));
    if let Some(k) = &a.unique {
        job = job.unique_key(k.as_str());
    }
    // The priority chooses the queue's band (docs/jetstream.md); the
    // default one is left out, so a queue no node declared yet takes it.
    if a.pri != spindle::jetstream::DEFAULT_PRIORITY {
        job = job.priority(a.pri);
    }
    let receipt = node.put(job)?;
    let (id, state) = match &receipt {
        Receipt::Queued { seq, .. } => (Some(*seq), "ready"),
        Receipt::Duplicate { seq, .. } => (Some(*seq), "duplicate"),
        Receipt::Scheduled { .. } => (None, "scheduled"),
        Receipt::Held { .. } => (None, "held"),
    };
    if a.json {
        println!(
            "{}",
            json!({
                "id": id,
                "msg_id": receipt.msg_id(),
                "queue": a.queue,
                "duplicate": state == "duplicate",
                "state": state,
            })
        );
    } else {
        match (state, id) {
            ("duplicate", Some(id)) => {
                println!("duplicate: job {id} already holds key {:?}", a.unique.unwrap_or_default())
            }
            (_, Some(id)) => println!("inserted job {id} into {}", a.queue),
            _ => println!("{state} job {} for {}", receipt.msg_id(), a.queue),
        }
    }
    // A node holding a delayed job (old server) must stay until it is due.
    while node.held() > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    node.shutdown();
    Ok(ExitCode::SUCCESS)
}

struct Counts {
    claimed: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

fn work(node: Node, a: WorkArgs) -> CliResult<ExitCode> {
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let cfg = QueueConfig::default()
        .ttr(Duration::from_secs(a.ttr.into()))
        .max_attempts(u32::try_from(a.max_attempts).unwrap_or(u32::MAX))
        .priority_bands(&a.bands);
    node.declare(&a.queue, cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))?;
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let counts = Arc::new(Counts {
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let a = Arc::new(a);
    let mut threads = Vec::new();
    for slot in 0..a.concurrency {
        let mut worker = node.worker(&a.queue, 1)?;
        let (node, a, stop, counts) = (node.clone(), a.clone(), stop.clone(), counts.clone());
        threads.push(std::thread::Builder::new().name(format!("slot-{slot}")).spawn(
            move || -> Result<(), String> {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(max) = a.max_jobs {
                        if counts.claimed.fetch_add(1, Ordering::Relaxed) >= max {
                            return Ok(());
                        }
                    }
                    let lease = loop {
                        let wait = if a.exit_when_empty { 200 } else { 1000 };
                        match worker
                            .reserve(Duration::from_millis(wait))
                            .map_err(|e| e.to_string())?
                        {
                            Some(l) => break l,
                            None if a.exit_when_empty => {
                                let lag = node.lag(&a.queue).map_err(|e| e.to_string())?;
                                if lag.pending == 0 {
                                    return Ok(());
                                }
                            }
                            None if stop.load(Ordering::Relaxed) => return Ok(()),
                            None => {}
                        }
                    };
                    run_job(&a, &counts, lease)?;
                }
                Ok(())
            },
        )?);
    }
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => first_error = first_error.or(Some("a worker thread panicked".to_owned())),
        }
    }
    let (done, failed) =
        (counts.done.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed));
    eprintln!("spindle work: {done} job{} done, {failed} failed", plural(done));
    node.shutdown();
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Runs the command with the payload on stdin; exit 0 completes the job,
/// anything else fails it (retried with the queue's backoff, buried after
/// its attempts).
fn run_job(a: &WorkArgs, counts: &Counts, lease: Lease) -> Result<(), String> {
    let Some((program, args)) = a.cmd.split_first() else {
        return Err("no command given".to_owned());
    };
    let id = lease.id();
    let child = Command::new(program)
        .args(args)
        .env("SPINDLE_JOB_ID", id.to_string())
        .env("SPINDLE_QUEUE", &a.queue)
        .env("SPINDLE_ATTEMPT", lease.attempt().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        // Not run: left to expire and be redelivered, like a crash.
        Err(e) => return Err(format!("cannot run `{}`: {e}", a.cmd.join(" "))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(lease.payload());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        lease.complete().map_err(|e| e.to_string())?;
        counts.done.fetch_add(1, Ordering::Relaxed);
        if a.verbose {
            eprintln!("spindle work: job {id} done");
        }
        return Ok(());
    }
    counts.failed.fetch_add(1, Ordering::Relaxed);
    let tail = String::from_utf8_lossy(&out.stderr);
    let tail = tail.trim();
    let error = if tail.is_empty() { out.status.to_string() } else { tail.to_owned() };
    let outcome = lease.fail(&error).map_err(|e| e.to_string())?;
    if a.verbose {
        match outcome {
            Failed::Retrying(d) => {
                eprintln!(
                    "spindle work: job {id} failed ({error}); retrying in {} ms",
                    d.as_millis()
                )
            }
            Failed::Buried => eprintln!("spindle work: job {id} failed ({error}); buried"),
        }
    }
    Ok(())
}
