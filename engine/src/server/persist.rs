//! What `spindled` writes to its write-ahead log (`-b DIR`), and how a
//! restart reads it back.
//!
//! One rkyv-archived [`DRec`] per WAL record, kind [`KIND_DAEMON`], in one
//! log (shard 0) under the data directory. Replaying in LSN order rebuilds
//! every job:
//!
//! 1. `Put` creates or replaces a job with its complete state (compaction
//!    rewrites live jobs as fresh `Put`s so old segments can go).
//! 2. `Move` gives a job a new state, priority and counters (release, bury,
//!    kick, TTR timeout, fail).
//! 3. `Reserve` counts a reservation (so attempt counts survive a crash);
//!    a job that was reserved when the daemon died comes back `ready`, as in
//!    beanstalkd.
//! 4. `Delete` removes a job; `IdMark` keeps ids from being reused after the
//!    segments that held the highest ids are released; `TubeConfig` keeps a
//!    tube's retry policy.
//!
//! Times are wall-clock milliseconds since the Unix epoch, so a delayed job
//! keeps its due time across a restart.

use rkyv::{Archive, Deserialize, Serialize};

/// The WAL record kind for daemon records (format version 1). Different
/// from the engine's kind 1 so a data directory cannot be mixed up.
pub(crate) const KIND_DAEMON: u8 = 2;

/// A job's state as logged (`reserved` is never logged: it is `ready`).
pub(crate) const ST_READY: u8 = 0;
/// Delayed until `run_at_ms`.
pub(crate) const ST_DELAYED: u8 = 1;
/// Buried.
pub(crate) const ST_BURIED: u8 = 2;

/// Per-job counters, as `stats-job` shows them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub reserves: u32,
    pub timeouts: u32,
    pub releases: u32,
    pub buries: u32,
    pub kicks: u32,
}

/// A daemon log record.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum DRec {
    /// A job with its complete state.
    Put {
        id: u64,
        tube: String,
        pri: u32,
        delay_s: u32,
        ttr_s: u32,
        body: Vec<u8>,
        state: u8,
        run_at_ms: u64,
        /// Position in its tube's buried list (kick and peek-buried order).
        bury_seq: u64,
        created_ms: u64,
        counts: Counts,
        unique: Option<String>,
        last_error: Option<String>,
    },
    /// New state, priority and counters.
    Move {
        id: u64,
        pri: u32,
        delay_s: u32,
        state: u8,
        run_at_ms: u64,
        bury_seq: u64,
        counts: Counts,
        last_error: Option<String>,
    },
    /// One more reservation.
    Reserve { id: u64 },
    /// The job is gone.
    Delete { id: u64 },
    /// Ids below `next_id` were handed out.
    IdMark { next_id: u64 },
    /// A tube's retry policy.
    TubeConfig { tube: String, max_attempts: u32, backoff_ms: u64, backoff_max_ms: u64 },
}

/// Largest encode buffer kept between records.
const KEEP: usize = 1 << 20;

/// Encodes `rec` into a reused buffer and hands the bytes to `f`.
pub(crate) fn encode_with<T>(
    buf: &mut rkyv::util::AlignedVec,
    rec: &DRec,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T, rkyv::rancor::Error> {
    buf.clear();
    let mut taken = std::mem::take(buf);
    taken = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(rec, taken)?;
    let out = f(&taken);
    if taken.capacity() <= KEEP {
        *buf = taken;
    }
    Ok(out)
}

/// Decodes a record's payload (validated: the log may hold anything).
pub(crate) fn decode(payload: &[u8]) -> Result<DRec, rkyv::rancor::Error> {
    // rkyv needs 16-byte alignment; WAL payloads are aligned when mapped,
    // but copy into an aligned buffer to be safe for any source.
    let mut v = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    v.extend_from_slice(payload);
    rkyv::from_bytes::<DRec, rkyv::rancor::Error>(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = rkyv::util::AlignedVec::new();
        let recs = [
            DRec::Put {
                id: 7,
                tube: "emails".into(),
                pri: 3,
                delay_s: 5,
                ttr_s: 60,
                body: b"hello".to_vec(),
                state: ST_DELAYED,
                run_at_ms: 123,
                bury_seq: 0,
                created_ms: 100,
                counts: Counts { reserves: 1, ..Counts::default() },
                unique: Some("k".into()),
                last_error: None,
            },
            DRec::Move {
                id: 7,
                pri: 1,
                delay_s: 0,
                state: ST_BURIED,
                run_at_ms: 0,
                bury_seq: 9,
                counts: Counts::default(),
                last_error: Some("boom".into()),
            },
            DRec::Reserve { id: 7 },
            DRec::Delete { id: 7 },
            DRec::IdMark { next_id: 8 },
            DRec::TubeConfig {
                tube: "t".into(),
                max_attempts: 3,
                backoff_ms: 10,
                backoff_max_ms: 100,
            },
        ];
        for r in recs {
            let bytes = encode_with(&mut buf, &r, |b| b.to_vec()).unwrap();
            assert_eq!(decode(&bytes).unwrap(), r);
        }
        assert!(decode(b"garbage!").is_err());
    }
}
