//! Records for the log's tests: payloads of varying lengths, and what a
//! log replays (included with `#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

use spindle_wal::Wal;

/// Record `i`'s payload: 0-299 bytes, so frames of several sizes and
/// segment changes.
pub fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

/// Every record the log replays: (LSN, payload).
pub fn collect(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    wal.replay(|r| out.push((r.lsn, r.payload.to_vec()))).unwrap();
    out
}
