//! What the engine writes to a shard's log: one rkyv-archived [`Rec`] per
//! WAL record (WAL kind [`KIND_REC`]).
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

/// Largest encode buffer a thread keeps for reuse (a record with a 64 KiB
/// payload needs a little more than that).
const KEEP_BUFFER: usize = 1 << 20;

thread_local! {
    /// Each thread's reusable encode buffer: encoding a record allocates
    /// nothing once the buffer has grown to the thread's largest record.
    static BUFFER: std::cell::RefCell<rkyv::util::AlignedVec> =
        std::cell::RefCell::new(rkyv::util::AlignedVec::new());
}

/// Encodes a record into this thread's reusable buffer and passes the bytes
/// to `f` (used to append them to a log).
pub(crate) fn encode_with<R>(
    rec: &Rec,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, rkyv::rancor::Error> {
    BUFFER.with(|cell| {
        // A nested call (impossible today) would find the buffer borrowed
        // and simply use a fresh one.
        let mut buf = match cell.try_borrow_mut() {
            Ok(mut b) => std::mem::take(&mut *b),
            Err(_) => rkyv::util::AlignedVec::new(),
        };
        buf.clear();
        let buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(rec, buf)?;
        let out = f(&buf);
        if buf.capacity() <= KEEP_BUFFER {
            if let Ok(mut b) = cell.try_borrow_mut() {
                *b = buf;
            }
        }
        Ok(out)
    })
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
            // The reusable-buffer path encodes the same bytes.
            let again = encode_with(&r, |b| b.to_vec()).unwrap();
            assert_eq!(&again[..], &bytes[..]);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        assert!(decode(&[0xFF; 7]).is_err());
        assert!(decode(&[]).is_err());
    }
}
