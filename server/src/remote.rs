//! The table owner's end of a connection whose socket another event loop
//! serves (`--io-loops` > 1), and the messages between the two loops.
//!
//! The owner thread runs the connection's state machine (`conn.rs`) and the
//! job table (`store.rs`) exactly as for its own sockets; only the bytes
//! travel differently. A [`Remote`] is the connection's stream on the owner:
//!
//! 1. The I/O loop reads the socket and sends the bytes ([`FromIo::Data`]).
//!    The owner queues them in the `Remote`; the connection's `read` takes
//!    them from there and tells the I/O loop how much it took
//!    ([`ToIo::Consumed`]). The I/O loop stops reading a socket while
//!    [`IN_WINDOW`] bytes are unconsumed, so a connection parked in
//!    `reserve` or held back by unread output buffers a bounded amount, as
//!    a local socket's kernel buffer would.
//! 2. The connection's `write` sends its reply bytes ([`ToIo::Data`]) while
//!    fewer than [`OUT_WINDOW`] are unwritten, and reports `WouldBlock`
//!    beyond; the I/O loop acknowledges what it wrote to the socket
//!    ([`FromIo::Written`]), which opens the window again.
//! 3. A half-close is reported at once ([`FromIo::Hup`]: a waiting `reserve`
//!    ends with `TIMED_OUT`), the end of input once every byte before it
//!    was sent ([`FromIo::Eof`]), a dead peer as [`FromIo::Gone`].
//! 4. The owner ends a connection with [`ToIo::Close`]; it sends it once
//!    nothing is left in transit, as it closes a local socket once its
//!    output is written.
//!
//! Both directions are unbounded crossbeam channels (lock-free lists), and
//! their sizes are bounded by the two windows per connection. A sender
//! wakes the receiving loop through its [`Parker`] over a `mio::Waker`,
//! once per loop iteration, and only if that loop is parked in
//! `epoll_wait` (`park.rs` has the protocol and its loom test).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::conn::Stream;
use spindle_park::{Parker, Unpark};

/// Bytes the I/O loop reads ahead of what the owner has consumed.
pub(crate) const IN_WINDOW: usize = 256 << 10;
/// Reply bytes in transit to, or unwritten at, the I/O loop.
pub(crate) const OUT_WINDOW: usize = 256 << 10;
/// What one input message costs [`IN_WINDOW`] on top of its bytes: a
/// client that sends one byte per write cannot park more than about
/// `IN_WINDOW / MSG_COST` messages (each a small allocation) on the owner.
pub(crate) const MSG_COST: usize = 64;

/// Owner → I/O loop.
pub(crate) enum ToIo {
    /// Serve this accepted socket under `key`.
    Attach { key: u64, stream: Stream },
    /// Reply bytes to write.
    Data { key: u64, bytes: Vec<u8> },
    /// The owner took this many input bytes (plus [`MSG_COST`] for each
    /// message it finished).
    Consumed { key: u64, n: usize },
    /// Write what is pending if the socket takes it now, then close.
    Close { key: u64 },
    /// Close everything and end the thread.
    Stop,
}

/// I/O loop → owner.
pub(crate) enum FromIo {
    /// Input bytes, in order.
    Data { key: u64, bytes: Vec<u8> },
    /// The peer half-closed or the socket reported an error.
    Hup { key: u64 },
    /// No more input: every byte was sent before this.
    Eof { key: u64 },
    /// This many reply bytes reached the socket.
    Written { key: u64, n: usize },
    /// The peer is gone (write or read error): replies cannot be sent.
    Gone { key: u64 },
}

impl FromIo {
    /// The connection the message is about.
    pub(crate) fn key(&self) -> u64 {
        match self {
            FromIo::Data { key, .. }
            | FromIo::Hup { key }
            | FromIo::Eof { key }
            | FromIo::Written { key, .. }
            | FromIo::Gone { key } => *key,
        }
    }
}

/// Wakes an event loop parked in `epoll_wait`.
pub(crate) struct PollWaker(pub(crate) Arc<mio::Waker>);

impl Unpark for PollWaker {
    fn unpark(&self) {
        // A failed eventfd write leaves the loop to its next timeout; there
        // is nobody to report it to here.
        let _ = self.0.wake();
    }
}

/// One sender's way to one loop: the loop's channel and parker, and
/// whether this sender sent it anything since its last [`flush`] (the loop
/// is woken once per iteration of the sender). Each sending thread has its
/// own `Link` (several I/O loops share the owner's channel and parker, not
/// a `Link`): a flag shared by two senders let one clear the other's mark
/// before the other's message was in the channel, and the owner slept
/// until its next timer (found in review).
///
/// [`flush`]: Link::flush
pub(crate) struct Link<M> {
    pub(crate) tx: Sender<M>,
    pub(crate) parker: Arc<Parker<PollWaker>>,
    dirty: AtomicBool,
}

impl<M> Link<M> {
    pub(crate) fn new(tx: Sender<M>, parker: Arc<Parker<PollWaker>>) -> Link<M> {
        Link { tx, parker, dirty: AtomicBool::new(false) }
    }

    /// Queues `m`; the loop is woken by the next [`flush`](Link::flush).
    /// Returns false if the loop has ended.
    pub(crate) fn send(&self, m: M) -> bool {
        let sent = self.tx.send(m).is_ok();
        self.dirty.store(true, Ordering::Relaxed);
        sent
    }

    /// Wakes the loop if something was sent since the last call.
    pub(crate) fn flush(&self) {
        if self.dirty.swap(false, Ordering::Relaxed) {
            self.parker.notify();
        }
    }
}

/// The owner's end of a connection served by an I/O loop.
pub(crate) struct Remote {
    pub(crate) key: u64,
    pub(crate) link: Arc<Link<ToIo>>,
    inbox: VecDeque<Vec<u8>>,
    /// Bytes of `inbox`'s front already read.
    head: usize,
    pub(crate) eof: bool,
    pub(crate) gone: bool,
    /// Sent to the I/O loop and not yet written by it.
    pub(crate) in_transit: usize,
}

impl Remote {
    pub(crate) fn new(key: u64, link: Arc<Link<ToIo>>) -> Remote {
        Remote {
            key,
            link,
            inbox: VecDeque::new(),
            head: 0,
            eof: false,
            gone: false,
            in_transit: 0,
        }
    }

    /// Input from the I/O loop.
    pub(crate) fn push(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.inbox.push_back(bytes);
        }
    }

    /// The I/O loop wrote `n` bytes.
    pub(crate) fn written(&mut self, n: usize) {
        self.in_transit = self.in_transit.saturating_sub(n);
    }

    /// The peer is gone: what is in transit will never be written.
    pub(crate) fn lost(&mut self) {
        self.gone = true;
        self.eof = true;
        self.in_transit = 0;
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        let mut msgs = 0;
        while n < buf.len() {
            let Some(front) = self.inbox.front() else { break };
            let take = (front.len() - self.head).min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[self.head..self.head + take]);
            n += take;
            self.head += take;
            if self.head == front.len() {
                self.inbox.pop_front();
                self.head = 0;
                msgs += 1;
            }
        }
        if n > 0 {
            let n_charged = n + msgs * MSG_COST;
            self.link.send(ToIo::Consumed { key: self.key, n: n_charged });
            return Ok(n);
        }
        if self.gone {
            Err(io::ErrorKind::ConnectionReset.into())
        } else if self.eof {
            Ok(0)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.gone {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(OUT_WINDOW.saturating_sub(self.in_transit));
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !self.link.send(ToIo::Data { key: self.key, bytes: buf[..n].to_vec() }) {
            self.lost();
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.in_transit += n;
        Ok(n)
    }
}
