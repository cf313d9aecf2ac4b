//! An I/O event loop (`--io-loops` > 1): it owns some of the daemon's
//! sockets and moves their bytes to and from the table owner
//! (`remote.rs` has the protocol). It parses nothing and touches no job:
//! the system calls of a connection, which cost more than its commands,
//! run here, on another core than the job table.
//!
//! One iteration:
//!
//! 1. Park in `epoll_wait` unless a message or a socket is pending (the
//!    owner wakes it through the loop's `Parker`).
//! 2. Take the owner's messages: new sockets, reply bytes, consumed input,
//!    closes.
//! 3. For every socket with something to do: read while less than
//!    `IN_WINDOW` is unconsumed and send the bytes on; write pending
//!    replies and acknowledge what was written.
//! 4. Wake the owner if anything was sent to it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token};

use super::conn::{Stream, READ_CHUNK};
use super::remote::{FromIo, Link, PollWaker, ToIo, IN_WINDOW, MSG_COST, OUT_WINDOW};
use spindle_park::Parker;

/// The waker's token; connections use their key (keys start at 1).
const WAKER: Token = Token(0);

struct IoConn {
    stream: Stream,
    out: Vec<u8>,
    out_pos: usize,
    /// Sent to the owner, not yet consumed by it.
    in_flight: usize,
    may_read: bool,
    read_done: bool,
    hup_sent: bool,
    /// The owner was told the peer is gone.
    gone: bool,
    write_failed: bool,
}

pub(crate) struct IoLoop {
    poll: Poll,
    me: Arc<Parker<PollWaker>>,
    rx: Receiver<ToIo>,
    owner: Arc<Link<FromIo>>,
    conns: HashMap<u64, IoConn>,
    /// Reused for every read; each message carries only the bytes read.
    scratch: Vec<u8>,
}

impl IoLoop {
    /// A loop and the parker that wakes it (the owner's link to it).
    pub(crate) fn new(
        rx: Receiver<ToIo>,
        owner: Arc<Link<FromIo>>,
    ) -> io::Result<(IoLoop, Arc<Parker<PollWaker>>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let me = Arc::new(Parker::new(PollWaker(waker)));
        let io = IoLoop {
            poll,
            me: me.clone(),
            rx,
            owner,
            conns: HashMap::new(),
            scratch: vec![0; READ_CHUNK],
        };
        Ok((io, me))
    }

    /// Serves until [`ToIo::Stop`] or until the owner is gone.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut touched: Vec<u64> = Vec::new();
        loop {
            // Step 1.
            let parks = touched.is_empty();
            if parks {
                self.me.prepare();
            }
            let timeout = if parks && self.rx.is_empty() { None } else { Some(Duration::ZERO) };
            let polled = self.poll.poll(&mut events, timeout);
            if parks {
                self.me.awake();
            }
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("I/O loop: {e}; closing its connections");
                    for &key in self.conns.keys() {
                        self.owner.send(FromIo::Gone { key });
                    }
                    self.owner.flush();
                    return;
                }
            }
            // Step 2.
            loop {
                let m = match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                };
                match m {
                    ToIo::Attach { key, mut stream } => {
                        let Ok(tok) = usize::try_from(key) else { continue };
                        if let Some(src) = stream.source() {
                            if let Err(e) = self.poll.registry().register(
                                src,
                                Token(tok),
                                Interest::READABLE | Interest::WRITABLE,
                            ) {
                                tracing::warn!("register: {e}");
                                self.owner.send(FromIo::Gone { key });
                                continue;
                            }
                        }
                        self.conns.insert(key, IoConn::new(stream));
                        touched.push(key);
                    }
                    ToIo::Data { key, bytes } => {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.out.extend_from_slice(&bytes);
                            touched.push(key);
                        }
                    }
                    ToIo::Consumed { key, n } => {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.in_flight = c.in_flight.saturating_sub(n);
                            touched.push(key);
                        }
                    }
                    ToIo::Close { key } => {
                        if let Some(mut c) = self.conns.remove(&key) {
                            let _ = c.write();
                            if let Some(src) = c.stream.source() {
                                let _ = self.poll.registry().deregister(src);
                            }
                        }
                    }
                    ToIo::Stop => {
                        for c in self.conns.values_mut() {
                            let _ = c.write();
                        }
                        return;
                    }
                }
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let key = ev.token().0 as u64;
                let Some(c) = self.conns.get_mut(&key) else { continue };
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    c.may_read = true;
                }
                if (ev.is_read_closed() || ev.is_error()) && !c.hup_sent {
                    c.hup_sent = true;
                    self.owner.send(FromIo::Hup { key });
                }
                touched.push(key);
            }
            // Step 3.
            touched.sort_unstable();
            touched.dedup();
            for key in std::mem::take(&mut touched) {
                let Some(c) = self.conns.get_mut(&key) else { continue };
                c.read(key, &self.owner, &mut self.scratch);
                let n = c.write();
                if n > 0 {
                    self.owner.send(FromIo::Written { key, n });
                }
                if c.write_failed && !c.gone {
                    c.gone = true;
                    self.owner.send(FromIo::Gone { key });
                }
            }
            // Step 4.
            self.owner.flush();
        }
    }
}

impl IoConn {
    fn new(stream: Stream) -> IoConn {
        IoConn {
            stream,
            out: Vec::new(),
            out_pos: 0,
            in_flight: 0,
            may_read: true,
            read_done: false,
            hup_sent: false,
            gone: false,
            write_failed: false,
        }
    }

    /// Reads while the window allows and sends the bytes to the owner.
    fn read(&mut self, key: u64, owner: &Link<FromIo>, scratch: &mut [u8]) {
        while self.may_read && !self.read_done && self.in_flight < IN_WINDOW {
            let room = (IN_WINDOW - self.in_flight).min(scratch.len());
            match self.stream.read(&mut scratch[..room]) {
                Ok(0) => {
                    self.read_done = true;
                    owner.send(FromIo::Eof { key });
                }
                Ok(n) => {
                    self.in_flight += n + MSG_COST;
                    owner.send(FromIo::Data { key, bytes: scratch[..n].to_vec() });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.may_read = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.read_done = true;
                    if !self.gone {
                        self.gone = true;
                        owner.send(FromIo::Gone { key });
                    }
                }
            }
        }
    }

    /// Writes pending replies; returns the bytes written.
    fn write(&mut self) -> usize {
        let mut wrote = 0;
        while !self.gone && !self.write_failed && self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => self.out_pos = self.out.len(),
                Ok(n) => {
                    self.out_pos += n;
                    wrote += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The peer is gone: drop the replies (the caller tells
                    // the owner).
                    self.write_failed = true;
                    self.out_pos = self.out.len();
                }
            }
        }
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > super::budget::IDLE_OUT {
                // Idle: keep no more than a small buffer.
                self.out = Vec::new();
            }
        } else if self.out_pos >= OUT_WINDOW {
            // A client reading slower than replies arrive never empties
            // the buffer: drop the written prefix. The owner keeps at most
            // OUT_WINDOW unwritten here, so `out` stays under twice that.
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        wrote
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pair() -> (IoConn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (IoConn::new(Stream::Unix(mio::net::UnixStream::from_std(a))), b)
    }

    fn link() -> (Link<FromIo>, Receiver<FromIo>, Poll) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        (Link::new(tx, Arc::new(Parker::new(PollWaker(waker)))), rx, poll)
    }

    #[test]
    fn a_dripping_client_parks_a_bounded_number_of_small_messages() {
        let (mut c, mut peer) = pair();
        let (owner, rx, _poll) = link();
        let mut scratch = vec![0; READ_CHUNK];
        // One byte per write, each read on its own (the owner consumes
        // nothing, as for a connection waiting in `reserve`).
        let mut msgs = 0;
        for _ in 0..IN_WINDOW {
            peer.write_all(b" ").unwrap();
            c.may_read = true;
            c.read(1, &owner, &mut scratch);
            match rx.try_recv() {
                Ok(FromIo::Data { bytes, .. }) => {
                    assert_eq!(bytes.len(), 1);
                    assert!(bytes.capacity() < 64, "a {}-byte buffer per byte", bytes.capacity());
                    msgs += 1;
                }
                Ok(_) => panic!("unexpected message"),
                Err(_) => break,
            }
        }
        assert_eq!(msgs, IN_WINDOW.div_ceil(1 + MSG_COST));
    }

    #[test]
    fn output_to_a_slow_reader_does_not_grow_without_bound() {
        let (mut c, mut peer) = pair();
        peer.set_nonblocking(true).unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut sink = vec![0u8; 32 << 10];
        let (mut given, mut written) = (0usize, 0usize);
        for _ in 0..500 {
            // The owner tops up to its window of unwritten bytes.
            while given - written + chunk.len() <= OUT_WINDOW {
                c.out.extend_from_slice(&chunk);
                given += chunk.len();
            }
            written += c.write();
            // The client reads half a chunk per round.
            let _ = std::io::Read::read(&mut peer, &mut sink);
            assert!(c.out.len() <= 2 * OUT_WINDOW, "out grew to {}", c.out.len());
        }
        assert!(written > 8 * OUT_WINDOW, "the test moved only {written} bytes");
    }
}
