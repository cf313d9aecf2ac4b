//! One client connection: its socket, its bounded input and output
//! buffers, and the input state machine that turns bytes into commands.
//!
//! Input is processed in this order, one command at a time, as beanstalkd
//! does:
//!
//! 1. `Line`: look for `\r\n` within the first [`LINE_MAX`] bytes. None
//!    there and the buffer holds `LINE_MAX` bytes: reply `BAD_FORMAT` and
//!    drop those bytes (beanstalkd's rule).
//! 2. `Body`: a put's `<bytes>+2` (read into one buffer of that size, which
//!    the max job size bounds), then `EXPECTED_CRLF` unless it ends in
//!    `\r\n`.
//! 3. `Skip`: an oversized body is read and thrown away as it arrives,
//!    then `JOB_TOO_BIG`: memory stays bounded whatever the client claims.
//! 4. `Batch`: `put-batch` frames (header line, then body), bounded in
//!    count and total bytes.
//!
//! A connection parked in `reserve` reads nothing more until it is served,
//! and one whose unsent output passes [`OUT_HIGH`] stops processing input
//! (and so stops reading its socket) until the client reads: a client that
//! never reads costs at most about `OUT_HIGH` plus one read chunk.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::{TcpStream, UnixStream};

use super::budget::{IDLE_IN, IDLE_OUT};
use super::proto::{self, Cmd, ParseError, LINE_MAX};
use super::remote::Remote;
use super::store::{ConnId, Flow, Store};

/// Unsent output above which a connection's input is not processed.
pub(crate) const OUT_HIGH: usize = 1 << 20;
/// Bytes read from a socket at a time.
pub(crate) const READ_CHUNK: usize = 64 << 10;
/// Most bytes the frames of one `put-batch` may carry in total.
pub(crate) const BATCH_BYTES_MAX: u64 = 16 << 20;

/// beanstalkd's `scan_line_end`: the line ends at the *first* `\r` if a
/// `\n` follows it; a stray `\r` anywhere earlier means no line yet (until
/// the window fills).
fn scan_line_end(window: &[u8]) -> Option<usize> {
    let n = window.len().checked_sub(1)?;
    let i = window[..n].iter().position(|&b| b == b'\r')?;
    (window[i + 1] == b'\n').then_some(i)
}

pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    /// A socket served by another event loop (`remote.rs`).
    Remote(Remote),
}

impl Stream {
    /// The socket to register with a poll; `None` for a remote one.
    pub(crate) fn source(&mut self) -> Option<&mut dyn mio::event::Source> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(s) => Some(s),
            Stream::Remote(_) => None,
        }
    }

    /// Reply bytes written to this stream but not yet to the socket.
    fn in_transit(&self) -> usize {
        match self {
            Stream::Remote(r) => r.in_transit,
            _ => 0,
        }
    }

    fn gone(&self) -> bool {
        matches!(self, Stream::Remote(r) if r.gone)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Remote(r) => r.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Remote(r) => r.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum In {
    Line,
    /// A line passed `LINE_MAX`: discard up to its end, then `BAD_FORMAT`
    /// (beanstalkd's `STATE_WANT_ENDLINE`, which scans 224-byte windows).
    EndLine,
    Body {
        cmd: Cmd,
        need: usize,
        buf: Vec<u8>,
    },
    Skip {
        left: u64,
        reply: &'static [u8],
    },
    Batch(Batch),
}

struct Batch {
    pri: u32,
    delay: u32,
    ttr: u32,
    left: u32,
    bodies: Vec<Vec<u8>>,
    total: u64,
    too_big: bool,
    over: bool,
    /// A frame did not fit the half-received body budget.
    oom: bool,
    /// The current frame: `None` = reading its header line.
    frame: Option<(usize, Vec<u8>, bool)>,
}

pub(crate) struct Conn {
    pub id: ConnId,
    pub stream: Stream,
    inbuf: Vec<u8>,
    pos: usize,
    pub out: Vec<u8>,
    out_pos: usize,
    state: In,
    pub waiting: bool,
    /// It waits for a reply that comes later (`Flow::Later`): even a peer
    /// that half-closed gets it before the connection closes.
    pub later: bool,
    pub closing: bool,
    pub eof: bool,
    /// Edge-triggered: the socket may have unread bytes.
    pub may_read: bool,
    /// Buffered input may be processable again (served after waiting, or
    /// output drained below the limit).
    pub resume: bool,
    /// The peer half-closed (EPOLLRDHUP): a `reserve` that waits now gets
    /// `TIMED_OUT` at once, as in beanstalkd.
    pub hup: bool,
    /// Commands take the current time (the reactor); `false` uses the
    /// time passed in (fuzzing with a simulated clock).
    real_time: bool,
    /// Bytes this connection's half-received body (or `put-batch`) has
    /// charged to the shared budget (`budget.rs`).
    held: usize,
}

impl Conn {
    pub(crate) fn new(id: ConnId, stream: Stream) -> Conn {
        Conn {
            id,
            stream,
            inbuf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            out_pos: 0,
            state: In::Line,
            waiting: false,
            later: false,
            closing: false,
            eof: false,
            may_read: true,
            resume: false,
            hup: false,
            real_time: true,
            held: 0,
        }
    }

    /// Reply bytes not yet handed to the socket (for a remote
    /// connection, including those its I/O loop has not written yet).
    pub(crate) fn unsent(&self) -> usize {
        self.out.len() - self.out_pos + self.stream.in_transit()
    }

    /// Whether input may be processed now.
    fn can_process(&self) -> bool {
        !self.waiting && !self.closing && self.unsent() <= OUT_HIGH
    }

    /// Reads and processes until the socket is drained, the connection
    /// waits, or its output is full. Writes nothing.
    pub(crate) fn drive(&mut self, store: &mut Store, now: Instant) {
        self.resume = false;
        self.end_wait_if_hung_up(store, now);
        self.read_loop(store, now);
        self.settle(store);
    }

    /// Gives the read buffer back to the loop when what is left
    /// unprocessed is small: an idle connection keeps at most [`IDLE_IN`]
    /// bytes of input capacity.
    fn settle(&mut self, store: &mut Store) {
        if self.inbuf.capacity() <= IDLE_IN {
            return;
        }
        let rest = &self.inbuf[self.pos..];
        if rest.len() > IDLE_IN {
            return;
        }
        let small = rest.to_vec();
        let big = std::mem::replace(&mut self.inbuf, small);
        self.pos = 0;
        store.input.put_back(big, 2 * READ_CHUNK);
    }

    fn read_loop(&mut self, store: &mut Store, now: Instant) {
        loop {
            self.process(store, now);
            if !self.can_process() {
                // Held back by a full output buffer: resume after a write.
                self.resume = self.unsent() > OUT_HIGH;
                return;
            }
            if self.eof || !self.may_read {
                return;
            }
            // Keep what is unprocessed at the front, then read a chunk.
            if self.pos > 0 {
                self.inbuf.drain(..self.pos);
                self.pos = 0;
            }
            if self.inbuf.is_empty() && self.inbuf.capacity() < READ_CHUNK {
                // Borrow the loop's read buffer (`settle` gives it back).
                std::mem::swap(&mut self.inbuf, &mut store.input.spare);
            }
            // Into the loop's scratch buffer, then only what came into
            // the input (`budget.rs`, "Where a read lands").
            let scratch = &mut store.input.scratch;
            if scratch.len() < READ_CHUNK {
                scratch.resize(READ_CHUNK, 0);
            }
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.eof = true;
                    self.hup = true;
                }
                Ok(n) => self.inbuf.extend_from_slice(&scratch[..n.min(scratch.len())]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.may_read = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.eof = true;
                    self.closing = true;
                    return;
                }
            }
        }
    }

    /// Writes pending output. Returns false if the peer is gone.
    pub(crate) fn flush(&mut self) -> bool {
        if self.stream.gone() {
            return false;
        }
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return false,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > IDLE_OUT {
                // Idle: keep no more than a small buffer.
                self.out = Vec::new();
            }
        } else if self.out_pos > OUT_HIGH {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        true
    }

    fn end_wait_if_hung_up(&mut self, store: &mut Store, now: Instant) {
        if !(self.waiting && self.hup) || self.later {
            return;
        }
        let now = if self.real_time { Instant::now() } else { now };
        if let Some(reply) = store.hangup_wait(self.id, now) {
            self.waiting = false;
            self.out.extend_from_slice(reply);
        }
    }

    /// A put whose body never fully arrived still used a job id in
    /// beanstalkd (it made the job first); call when closing.
    pub(crate) fn abandon(&self, store: &mut Store) {
        if let In::Body { cmd: Cmd::Put { .. }, .. } = self.state {
            store.skip_ids(1);
        }
    }

    /// Returns what this connection charged to the body budget; call when
    /// closing.
    pub(crate) fn release(&mut self, store: &mut Store) {
        store.input.give(std::mem::take(&mut self.held));
    }

    /// Processes `bytes` as if read from the socket (fuzzing and tests).
    pub(crate) fn feed(&mut self, bytes: &[u8], store: &mut Store, now: Instant) {
        self.real_time = false;
        self.inbuf.extend_from_slice(bytes);
        self.process(store, now);
        // Pretend the client read everything.
        self.out.clear();
        self.out_pos = 0;
    }

    /// Whether another [`drive`](Conn::drive) could do something: input
    /// is allowed and there is (or may be) some to process.
    pub(crate) fn can_progress(&self) -> bool {
        self.can_process()
            && ((self.may_read && !self.eof) || (self.resume && self.pos < self.inbuf.len()))
    }

    fn process(&mut self, store: &mut Store, now: Instant) {
        while self.can_process() && self.pos < self.inbuf.len() {
            let avail = &self.inbuf[self.pos..];
            match &mut self.state {
                In::Line => {
                    let window = &avail[..avail.len().min(LINE_MAX)];
                    match scan_line_end(window) {
                        Some(i) => {
                            let line = self.inbuf[self.pos..self.pos + i].to_vec();
                            self.pos += i + 2;
                            self.command(&line, store, now);
                        }
                        None if window.len() >= LINE_MAX => {
                            self.pos += LINE_MAX;
                            self.state = In::EndLine;
                        }
                        None => return,
                    }
                }
                In::EndLine => {
                    let window = &avail[..avail.len().min(LINE_MAX)];
                    match scan_line_end(window) {
                        Some(i) => {
                            self.pos += i + 2;
                            self.state = In::Line;
                            self.out.extend_from_slice(b"BAD_FORMAT\r\n");
                        }
                        None if window.len() >= LINE_MAX => self.pos += LINE_MAX,
                        None => return,
                    }
                }
                In::Body { need, buf, .. } => {
                    let take = (*need - buf.len()).min(avail.len());
                    // Grow as bytes arrive (doubling, up to the claimed
                    // size), charging the budget for every byte of it.
                    let want = buf.len() + take;
                    if want > buf.capacity() {
                        let grown = want.max(buf.capacity() * 2).min(*need);
                        let more = grown - buf.capacity();
                        if !store.input.try_take(more) {
                            // Over the cap: drop the body, read the rest
                            // and reply as beanstalkd does when it cannot
                            // make a job.
                            let left = (*need - buf.len()) as u64;
                            self.state = In::Skip { left, reply: b"OUT_OF_MEMORY\r\n" };
                            store.input.give(std::mem::take(&mut self.held));
                            continue;
                        }
                        self.held += more;
                        buf.reserve_exact(grown - buf.len());
                    }
                    buf.extend_from_slice(&avail[..take]);
                    self.pos += take;
                    if buf.len() == *need {
                        let In::Body { cmd, mut buf, .. } =
                            std::mem::replace(&mut self.state, In::Line)
                        else {
                            return;
                        };
                        store.input.give(std::mem::take(&mut self.held));
                        self.finish_body(cmd, &mut buf, store, now);
                    }
                }
                In::Skip { left, reply } => {
                    let take = (*left).min(avail.len() as u64);
                    *left -= take;
                    self.pos += take as usize;
                    if *left == 0 {
                        let r = *reply;
                        self.state = In::Line;
                        self.out.extend_from_slice(r);
                    }
                }
                In::Batch(b) => {
                    let max = u64::from(store.cfg.max_job_size);
                    match &mut b.frame {
                        None => {
                            let window = &avail[..avail.len().min(32)];
                            let Some(i) = window.windows(2).position(|w| w == b"\r\n") else {
                                if window.len() >= 32 {
                                    self.state = In::Line;
                                    store.input.give(std::mem::take(&mut self.held));
                                    self.out.extend_from_slice(b"BAD_FORMAT\r\n");
                                    continue;
                                }
                                return;
                            };
                            let size = std::str::from_utf8(&avail[..i])
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok());
                            self.pos += i + 2;
                            match size {
                                None => {
                                    self.state = In::Line;
                                    store.input.give(std::mem::take(&mut self.held));
                                    self.out.extend_from_slice(b"BAD_FORMAT\r\n");
                                }
                                Some(n) => {
                                    let total = b.total.saturating_add(n);
                                    let mut keep = n <= max
                                        && !b.over
                                        && !b.too_big
                                        && !b.oom
                                        && total <= BATCH_BYTES_MAX;
                                    if n > max {
                                        b.too_big = true;
                                    } else if total > BATCH_BYTES_MAX {
                                        b.over = true;
                                    }
                                    // Skipped frames are counted down in
                                    // place; usize is 64-bit here, and a
                                    // claimed size is saturated, not trusted.
                                    let need =
                                        usize::try_from(n.saturating_add(2)).unwrap_or(usize::MAX);
                                    if keep && !store.input.try_take(need) {
                                        // Over the body budget (`budget.rs`).
                                        b.oom = true;
                                        keep = false;
                                    } else if keep {
                                        self.held += need;
                                    }
                                    let cap = if keep { need } else { 0 };
                                    b.total = total;
                                    b.frame = Some((need, Vec::with_capacity(cap), keep));
                                }
                            }
                        }
                        Some((need, buf, keep)) => {
                            let take = (*need - buf.len().min(*need)).min(avail.len());
                            if *keep {
                                buf.extend_from_slice(&avail[..take]);
                            } else {
                                *need -= take;
                            }
                            self.pos += take;
                            let done = if *keep { buf.len() == *need } else { *need == 0 };
                            if done {
                                let (_, mut body, keep) =
                                    b.frame.take().unwrap_or((0, Vec::new(), false));
                                if keep {
                                    if body.ends_with(b"\r\n") {
                                        body.truncate(body.len() - 2);
                                        b.bodies.push(body);
                                    } else {
                                        b.over = true;
                                    }
                                }
                                b.left -= 1;
                                if b.left == 0 {
                                    let In::Batch(b) = std::mem::replace(&mut self.state, In::Line)
                                    else {
                                        return;
                                    };
                                    store.input.give(std::mem::take(&mut self.held));
                                    if b.too_big {
                                        self.out.extend_from_slice(b"JOB_TOO_BIG\r\n");
                                    } else if b.over {
                                        self.out.extend_from_slice(b"BAD_FORMAT\r\n");
                                    } else if b.oom {
                                        self.out.extend_from_slice(b"OUT_OF_MEMORY\r\n");
                                    } else {
                                        store.put_batch(
                                            self.id,
                                            b.pri,
                                            b.delay,
                                            b.ttr,
                                            b.bodies,
                                            now,
                                            &mut self.out,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn command(&mut self, line: &[u8], store: &mut Store, now: Instant) {
        let cmd = match proto::parse(line) {
            Ok(c) => c,
            Err(ParseError::BadFormat) => {
                self.out.extend_from_slice(b"BAD_FORMAT\r\n");
                return;
            }
            Err(ParseError::Unknown) => {
                self.out.extend_from_slice(b"UNKNOWN_COMMAND\r\n");
                return;
            }
        };
        let max = store.cfg.max_job_size;
        match cmd {
            Cmd::Put { bytes, garbage, .. } => {
                // beanstalkd counts a put once its numbers parse, whatever
                // happens to the body.
                store.ct.put += 1;
                if bytes > max {
                    self.state = In::Skip { left: u64::from(bytes) + 2, reply: b"JOB_TOO_BIG\r\n" };
                } else if garbage {
                    self.out.extend_from_slice(b"BAD_FORMAT\r\n");
                } else {
                    self.start_body(cmd, bytes as usize + 2, store, now);
                }
            }

            Cmd::PutBatch { pri, delay, ttr, count } => {
                self.state = In::Batch(Batch {
                    pri,
                    delay,
                    ttr,
                    left: count,
                    bodies: Vec::with_capacity(count.min(4096) as usize),
                    total: 0,
                    too_big: false,
                    over: false,
                    oom: false,
                    frame: None,
                });
            }
            other => match other.ext_body() {
                Some(bytes) if bytes > max => {
                    self.state = In::Skip { left: u64::from(bytes) + 2, reply: b"JOB_TOO_BIG\r\n" };
                }
                Some(bytes) => self.start_body(other, bytes as usize + 2, store, now),
                None => self.run(other, Vec::new(), store, now),
            },
        }
    }

    fn start_body(&mut self, cmd: Cmd, need: usize, store: &mut Store, now: Instant) {
        let avail = self.inbuf.len() - self.pos;
        if avail >= need {
            // Common case: the whole body arrived with its line.
            let mut body = self.inbuf[self.pos..self.pos + need].to_vec();
            self.pos += need;
            self.finish_body(cmd, &mut body, store, now);
        } else {
            self.state = In::Body { cmd, need, buf: Vec::new() };
        }
    }

    fn finish_body(&mut self, cmd: Cmd, body: &mut Vec<u8>, store: &mut Store, now: Instant) {
        if !body.ends_with(b"\r\n") {
            if let Cmd::Put { .. } = cmd {
                // beanstalkd made the job (using an id) before it read the
                // body.
                store.skip_ids(1);
            }
            self.out.extend_from_slice(b"EXPECTED_CRLF\r\n");
            return;
        }
        body.truncate(body.len() - 2);
        self.run(cmd, std::mem::take(body), store, now);
    }

    fn run(&mut self, cmd: Cmd, body: Vec<u8>, store: &mut Store, now: Instant) {
        // beanstalkd reads the clock per command (time-left, deadlines).
        let now = if self.real_time { Instant::now() } else { now };
        match store.handle(self.id, cmd, body, now, &mut self.out) {
            Flow::Go => {}
            Flow::Wait => {
                self.waiting = true;
                self.end_wait_if_hung_up(store, now);
            }
            Flow::Later => {
                self.waiting = true;
                self.later = true;
            }
            Flow::Close => self.closing = true,
        }
    }
}
