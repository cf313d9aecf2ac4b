//! Memory that connections hold between reads: one read buffer shared by
//! every connection of the loop, and a global cap on the bytes of
//! half-received job bodies.
//!
//! - **Read buffer.** A connection reads into [`InputBudget::spare`]
//!   (64 KiB) when its own input buffer is empty, and gives it back when
//!   what is left unprocessed fits in [`IDLE_IN`] bytes: an idle
//!   connection keeps at most that much input capacity, not a read chunk.
//!   Only a connection whose processing is held back (a `reserve` that
//!   waits, or output above `OUT_HIGH`) keeps a full buffer while it waits.
//! - **Where a read lands.** A read goes into [`InputBudget::scratch`],
//!   zeroed once, and only the bytes that came are appended to the
//!   connection's input: a read straight into the input would first have
//!   to extend it by a whole chunk of zeros (safe Rust reads only into
//!   initialised bytes), and that 64 KiB `memset` per read was a third of
//!   the daemon's instructions under a pipelined load.
//! - **Half-written bodies.** The body of a `put` (or an extension command
//!   with a body, or a `put-batch` frame) that did not arrive with its
//!   command line is buffered as it arrives, and every byte of capacity it
//!   takes is charged to [`InputBudget`]. A body that would take the total
//!   past the cap is dropped: the rest of it is read and thrown away, and
//!   the command gets `OUT_OF_MEMORY` (beanstalkd's reply when it cannot
//!   make a job), so other connections' bodies still fit.

/// Input capacity an idle connection may keep.
pub(crate) const IDLE_IN: usize = 1024;
/// Output capacity an idle connection may keep.
pub(crate) const IDLE_OUT: usize = 4096;
/// Default cap on the bytes of half-received bodies, all connections
/// together (`--max-partial-bytes`).
pub const DEFAULT_MAX_PARTIAL_BYTES: u64 = 32 << 20;

/// The loop's shared read buffer and the half-received body budget.
#[derive(Debug)]
pub(crate) struct InputBudget {
    /// A read buffer for a connection that has none (empty when lent).
    pub(crate) spare: Vec<u8>,
    /// Where every read lands first ([`crate::conn::READ_CHUNK`] bytes,
    /// zeroed once, made at the first read).
    pub(crate) scratch: Vec<u8>,
    held: usize,
    cap: usize,
}

impl InputBudget {
    pub(crate) fn new(cap: u64) -> InputBudget {
        InputBudget {
            spare: Vec::new(),
            scratch: Vec::new(),
            held: 0,
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
        }
    }

    /// Charges `n` bytes if they fit under the cap.
    pub(crate) fn try_take(&mut self, n: usize) -> bool {
        match self.held.checked_add(n) {
            Some(t) if t <= self.cap => {
                self.held = t;
                true
            }
            _ => false,
        }
    }

    /// Returns `n` charged bytes.
    pub(crate) fn give(&mut self, n: usize) {
        self.held = self.held.saturating_sub(n);
    }

    /// Bytes charged now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Takes back a connection's read buffer, keeping one of at most a
    /// couple of read chunks for the next connection.
    pub(crate) fn put_back(&mut self, mut buf: Vec<u8>, max: usize) {
        if buf.capacity() > self.spare.capacity() && buf.capacity() <= max {
            buf.clear();
            self.spare = buf;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_shared_and_given_back() {
        let mut b = InputBudget::new(100);
        assert!(b.try_take(60));
        assert!(!b.try_take(41));
        assert!(b.try_take(40));
        b.give(60);
        assert_eq!(b.held(), 40);
        assert!(b.try_take(60));
        assert!(!b.try_take(usize::MAX));
    }
}
