//! The format the engine's shards wrote before they moved onto the job
//! table (`spindle-core`): one rkyv-archived [`Rec`] per WAL record (WAL
//! kind [`KIND_REC`]). Shards now write the table's records (kind 16,
//! `docs/record-format.md`); logs in this format are still read, and
//! applied as the table's records (`engine.rs`, `apply_old`).
//!
//! Replaying a shard's records in LSN order rebuilds its jobs:
//! `Put` creates or replaces a job with its full state (compaction rewrites
//! live jobs as fresh `Put`s), `Start` counts an attempt that may be
//! interrupted, `Retry` and `Bury` change it, `Done` (or a batch of them,
//! `Dones`) removes it, and
//! `IdMark` keeps the id counter from going backwards after old segments
//! are released.

use rkyv::{Archive, Deserialize, Serialize};

/// The WAL record kind for engine records (format version 1).
pub(crate) const KIND_REC: u8 = 1;

/// A log record.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rec {
    /// A job with its complete state.
    Put {
        id: u64,
        queue: String,
        priority: u32,
        payload: Vec<u8>,
        /// Wall-clock milliseconds since the Unix epoch; 0 = ready now.
        run_at_ms: u64,
        attempts: u32,
        max_attempts: u32,
        unique_key: Option<String>,
        buried: bool,
    },
    /// A run is starting: if no outcome follows before a crash, recovery
    /// counts the attempt and an interruption.
    Start { id: u64 },
    /// A failed attempt (or a run given back unstarted); the job runs again
    /// at `run_at_ms` (0: now). Clears the interruption count.
    Retry { id: u64, attempts: u32, run_at_ms: u64 },
    /// The job is buried (dead letter).
    Bury { id: u64, attempts: u32, reason: String },
    /// The job is finished or deleted.
    Done { id: u64 },
    /// Ids below `next_id` have been handed out.
    IdMark { next_id: u64 },
    /// Several jobs finished (a shard logs its `Done`s in batches; appended
    /// last so the older variants keep their tags).
    Dones { ids: Vec<u64> },
}

/// Encodes a record for the log.
#[cfg(test)]
pub(crate) fn encode(rec: &Rec) -> Result<rkyv::util::AlignedVec, rkyv::rancor::Error> {
    rkyv::to_bytes::<rkyv::rancor::Error>(rec)
}

/// Decodes a record read from the log (validated: a damaged or foreign
/// payload is an error, never undefined behaviour).
pub(crate) fn decode(bytes: &[u8]) -> Result<Rec, rkyv::rancor::Error> {
    rkyv::from_bytes::<Rec, rkyv::rancor::Error>(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let recs = [
            Rec::Put {
                id: 7,
                queue: "emails".into(),
                priority: 3,
                payload: b"hello".to_vec(),
                run_at_ms: 12,
                attempts: 1,
                max_attempts: 5,
                unique_key: Some("user-42".into()),
                buried: false,
            },
            Rec::Start { id: 7 },
            Rec::Retry { id: 7, attempts: 2, run_at_ms: 99 },
            Rec::Bury { id: 7, attempts: 5, reason: "boom".into() },
            Rec::Done { id: 7 },
            Rec::IdMark { next_id: 8 },
            Rec::Dones { ids: vec![7, 9, 11] },
        ];
        for r in recs {
            let bytes = encode(&r).unwrap();
            assert_eq!(decode(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        assert!(decode(&[0xFF; 7]).is_err());
        assert!(decode(&[]).is_err());
    }
}
