//! `spindle-null`: the smallest server the `peer` scenario can drive, for
//! measuring the floor under its latency figures on a given machine.
//!
//! One mio loop, like `spindled`'s, that keeps jobs in a `VecDeque` per
//! tube and logs nothing: `use`, `watch`, `ignore`, `put`, `reserve`
//! (waiting if the tube is empty) and `delete`; anything else gets
//! `UNKNOWN_COMMAND`. It accepts (and ignores) `spindled`'s flags, so
//!
//! ```text
//! cargo build --release -p spindle-bench
//! target/release/spindle-bench peer beanstalkd --mode memory \
//!     --spindled target/release/spindle-null
//! ```
//!
//! reports, in the `spindled_*` fields, what the same generator measures
//! against a server that does no work: the cost of the sockets, the
//! thread wake-ups and the generator itself on this machine. Not a job
//! queue: no TTR, priorities, persistence or error handling beyond closing
//! a connection that sends something it cannot parse.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    s: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    use_tube: String,
    watch: String,
    waiting: bool,
    dead: bool,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    tubes: HashMap<String, VecDeque<(u64, Vec<u8>)>>,
    waiters: HashMap<String, VecDeque<usize>>,
}

fn job_reply(out: &mut Vec<u8>, id: u64, body: &[u8]) {
    let _ = write!(out, "RESERVED {id} {}\r\n", body.len());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Processes complete commands of connection `i`; returns connections
/// whose waiting `reserve` a put served.
fn process(i: usize, conns: &mut [Option<Conn>], t: &mut Table) -> Vec<usize> {
    let mut served = Vec::new();
    let Some(c) = conns[i].as_mut() else { return served };
    let mut pos = 0;
    while !c.waiting {
        let rest = &c.inbuf[pos..];
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else { break };
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut w = line.split(' ');
        match (w.next(), w.next()) {
            (Some("put"), Some(_)) => {
                let n: usize = match w.nth(2).and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => {
                        c.dead = true;
                        break;
                    }
                };
                if rest.len() < end + 2 + n + 2 {
                    break;
                }
                let body = rest[end + 2..end + 2 + n].to_vec();
                pos += end + 2 + n + 2;
                t.next_id += 1;
                let id = t.next_id;
                let _ = write!(c.out, "INSERTED {id}\r\n");
                t.tubes.entry(c.use_tube.clone()).or_default().push_back((id, body));
                if let Some(q) = t.waiters.get_mut(&c.use_tube) {
                    if let Some(wi) = q.pop_front() {
                        served.push(wi);
                    }
                }
                continue;
            }
            (Some("use"), Some(tube)) => {
                c.use_tube = tube.to_string();
                let _ = write!(c.out, "USING {tube}\r\n");
            }
            (Some("watch"), Some(tube)) => {
                c.watch = tube.to_string();
                c.out.extend_from_slice(b"WATCHING 2\r\n");
            }
            (Some("ignore"), Some(_)) => c.out.extend_from_slice(b"WATCHING 1\r\n"),
            (Some("delete"), Some(_)) => c.out.extend_from_slice(b"DELETED\r\n"),
            (Some("reserve"), None) => {
                match t.tubes.get_mut(&c.watch).and_then(VecDeque::pop_front) {
                    Some((id, body)) => job_reply(&mut c.out, id, &body),
                    None => {
                        c.waiting = true;
                        t.waiters.entry(c.watch.clone()).or_default().push_back(i);
                    }
                }
            }
            _ => c.out.extend_from_slice(b"UNKNOWN_COMMAND\r\n"),
        }
        pos += end + 2;
    }
    c.inbuf.drain(..pos);
    served
}

fn main() {
    let mut path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-v" => {
                println!("spindle-null {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            "-l" => path = args.next().and_then(|l| l.strip_prefix("unix:").map(String::from)),
            "-b" | "-f" | "--io-loops" => {
                args.next();
            }
            _ => {}
        }
    }
    let Some(path) = path else {
        eprintln!("usage: spindle-null -l unix:PATH (other spindled flags are ignored)");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&path);
    if let Err(e) = serve(&path) {
        eprintln!("spindle-null: {e}");
        std::process::exit(1);
    }
}

fn serve(path: &str) -> std::io::Result<()> {
    let mut l = UnixListener::bind(path)?;
    let mut poll = Poll::new()?;
    poll.registry().register(&mut l, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut t = Table::default();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        poll.poll(&mut events, None)?;
        let mut touched = Vec::new();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut s, _)) = l.accept() {
                    let i = conns.len();
                    poll.registry().register(
                        &mut s,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.push(Some(Conn {
                        s,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        use_tube: "default".into(),
                        watch: "default".into(),
                        waiting: false,
                        dead: false,
                    }));
                }
            } else {
                touched.push(ev.token().0);
            }
        }
        for &i in &touched {
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        c.dead = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.dead = true;
                        break;
                    }
                }
            }
        }
        let mut work = touched.clone();
        while let Some(i) = work.pop() {
            for w in process(i, &mut conns, &mut t) {
                let Some(c) = conns.get_mut(w).and_then(Option::as_mut) else { continue };
                match t.tubes.get_mut(&c.watch).and_then(VecDeque::pop_front) {
                    Some((id, body)) => {
                        job_reply(&mut c.out, id, &body);
                        c.waiting = false;
                        touched.push(w);
                        work.push(w);
                    }
                    None => t.waiters.entry(c.watch.clone()).or_default().push_front(w),
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for i in touched {
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
            let mut sent = 0;
            while sent < c.out.len() {
                match c.s.write(&c.out[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            c.out.drain(..sent);
            if c.dead && c.out.is_empty() {
                conns[i] = None;
            }
        }
    }
}
