//! The log formats that `spindled` wrote before the job table moved to
//! `spindle-core` (formats 1 and 2), kept so that those logs still open:
//! recovery decodes them here and applies them as the table's records
//! (`store.rs`, `apply_old`). Nothing writes them any more, except tests
//! that make old logs; compaction rewrites their jobs in the table's
//! format (`docs/record-format.md`), after which their segments go.
//!
//! One rkyv-archived record per WAL frame, in one log (shard 0) under the
//! data directory. The frame's kind byte says which record it is (format
//! 2, below). Replaying in LSN order rebuilds every job:
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
//!
//! ## Format 2: one archived struct per kind
//!
//! | kind | record | archived payload |
//! |---:|---|---|
//! | 2 | any (format 1) | the whole [`V1Rec`] enum; read, never written |
//! | 3 | `Put` | [`PutRec`]: every field |
//! | 4 | `Put` of a new job | [`NewRec`]: id, times, tube, body |
//! | 5 | `Move` | [`MoveRec`] |
//! | 6 | `Reserve` | [`IdRec`] |
//! | 7 | `Delete` | [`IdRec`] |
//! | 8 | `IdMark` | [`IdRec`] (the next id) |
//! | 9 | `TubeConfig` | [`TubeRec`] |
//! | 10 | `PutBatch`: new jobs alike but for their bodies | [`BatchRec`]: ids, times, tube, bodies |
//!
//! Format 1 archived every record as one rkyv enum, and an archived enum
//! is as large as its largest variant: a `Delete` took a 120-byte payload
//! (136 bytes framed) and a new job's `Put` 152. Format 2 archives only the
//! fields of the record at hand, so a `Delete` takes 32 bytes framed and a
//! new 16-byte job ~96. Log bytes are the daemon's largest cost per durable
//! job on the development VM (the WAL's preparer zeroes each fresh page and
//! the flusher writes it back; see `docs/benchmarks.md`). A log written by
//! format 1 is still read.
//!
//! `NewRec` is chosen when it decodes to exactly the `Put` it stands for: a
//! job with no counts, unique key, error or bury position, ready with no
//! delay or delayed until `created_ms + delay_s` seconds. A `PutBatch`
//! stands for one such `Put` per body, all with the same tube, priority,
//! delay, TTR and creation time: a `put-batch` logs its jobs in records of
//! up to 256 KiB of bodies (ids consecutive from `first_id`, `ids`
//! empty), so a job costs its body plus 8 bytes of log instead of a frame
//! of its own; compaction rewrites such jobs the same way, with their ids
//! listed (8 bytes more each, as deletes leave gaps).

use std::borrow::Cow;

use rkyv::with::{AsOwned, Map};
use rkyv::{Archive, Deserialize, Serialize};

/// Format 1: every record is a [`V1Rec`]. Also the lowest daemon kind: the
/// engine's records are kind 1, so a mixed-up data directory is caught.
pub(crate) const KIND_V1: u8 = 2;
const KIND_PUT: u8 = 3;
const KIND_NEW: u8 = 4;
const KIND_MOVE: u8 = 5;
const KIND_RESERVE: u8 = 6;
const KIND_DELETE: u8 = 7;
const KIND_ID_MARK: u8 = 8;
const KIND_TUBE_CONFIG: u8 = 9;
const KIND_BATCH: u8 = 10;
/// The highest kind this version reads.
pub(crate) const KIND_MAX: u8 = KIND_BATCH;

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

/// A daemon log record, as the store writes and replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// New jobs, one per body, all with the same tube, priority, delay,
    /// TTR and creation time; their ids are `ids`, or (`ids` empty)
    /// `first_id..first_id + bodies.len()`.
    PutBatch {
        first_id: u64,
        ids: Vec<u64>,
        tube: String,
        pri: u32,
        delay_s: u32,
        ttr_s: u32,
        created_ms: u64,
        bodies: Vec<Vec<u8>>,
    },
}

impl DRec {
    /// The `Put` of a new job (what `NewRec` and each `PutBatch` body
    /// stand for).
    pub(crate) fn new_put(
        id: u64,
        tube: String,
        pri: u32,
        delay_s: u32,
        ttr_s: u32,
        body: Vec<u8>,
        created_ms: u64,
    ) -> DRec {
        DRec::Put {
            id,
            tube,
            pri,
            delay_s,
            ttr_s,
            body,
            state: if delay_s == 0 { ST_READY } else { ST_DELAYED },
            run_at_ms: new_run_at(created_ms, delay_s),
            bury_seq: 0,
            created_ms,
            counts: Counts::default(),
            unique: None,
            last_error: None,
        }
    }
}

/// Format 1's record (kind 2), kept only to read old logs: its archived
/// layout is fixed by what was written, so it never changes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) enum V1Rec {
    Put {
        id: u64,
        tube: String,
        pri: u32,
        delay_s: u32,
        ttr_s: u32,
        body: Vec<u8>,
        state: u8,
        run_at_ms: u64,
        bury_seq: u64,
        created_ms: u64,
        counts: Counts,
        unique: Option<String>,
        last_error: Option<String>,
    },
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
    Reserve {
        id: u64,
    },
    Delete {
        id: u64,
    },
    IdMark {
        next_id: u64,
    },
    TubeConfig {
        tube: String,
        max_attempts: u32,
        backoff_ms: u64,
        backoff_max_ms: u64,
    },
}

impl From<V1Rec> for DRec {
    fn from(r: V1Rec) -> DRec {
        match r {
            V1Rec::Put {
                id,
                tube,
                pri,
                delay_s,
                ttr_s,
                body,
                state,
                run_at_ms,
                bury_seq,
                created_ms,
                counts,
                unique,
                last_error,
            } => DRec::Put {
                id,
                tube,
                pri,
                delay_s,
                ttr_s,
                body,
                state,
                run_at_ms,
                bury_seq,
                created_ms,
                counts,
                unique,
                last_error,
            },
            V1Rec::Move { id, pri, delay_s, state, run_at_ms, bury_seq, counts, last_error } => {
                DRec::Move { id, pri, delay_s, state, run_at_ms, bury_seq, counts, last_error }
            }
            V1Rec::Reserve { id } => DRec::Reserve { id },
            V1Rec::Delete { id } => DRec::Delete { id },
            V1Rec::IdMark { next_id } => DRec::IdMark { next_id },
            V1Rec::TubeConfig { tube, max_attempts, backoff_ms, backoff_max_ms } => {
                DRec::TubeConfig { tube, max_attempts, backoff_ms, backoff_max_ms }
            }
        }
    }
}

// Format 2's payloads. Fields are ordered largest first (no padding inside);
// strings and bytes are `Cow`s so a record is archived straight from the
// store's borrowed data and decoded into owned data.

/// Kind 3: a `Put` with every field.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct PutRec<'a> {
    id: u64,
    run_at_ms: u64,
    bury_seq: u64,
    created_ms: u64,
    #[rkyv(with = AsOwned)]
    tube: Cow<'a, str>,
    #[rkyv(with = AsOwned)]
    body: Cow<'a, [u8]>,
    #[rkyv(with = Map<AsOwned>)]
    unique: Option<Cow<'a, str>>,
    #[rkyv(with = Map<AsOwned>)]
    last_error: Option<Cow<'a, str>>,
    counts: Counts,
    pri: u32,
    delay_s: u32,
    ttr_s: u32,
    state: u8,
}

/// Kind 4: a new job's `Put` (see the module docs for when).
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct NewRec<'a> {
    id: u64,
    created_ms: u64,
    #[rkyv(with = AsOwned)]
    tube: Cow<'a, str>,
    #[rkyv(with = AsOwned)]
    body: Cow<'a, [u8]>,
    pri: u32,
    delay_s: u32,
    ttr_s: u32,
}

/// Kind 5: a `Move`.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct MoveRec<'a> {
    id: u64,
    run_at_ms: u64,
    bury_seq: u64,
    #[rkyv(with = Map<AsOwned>)]
    last_error: Option<Cow<'a, str>>,
    counts: Counts,
    pri: u32,
    delay_s: u32,
    state: u8,
}

/// Kinds 6, 7 and 8: one number (a job id, or the next id).
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct IdRec {
    id: u64,
}

/// Kind 9: a `TubeConfig`.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct TubeRec<'a> {
    backoff_ms: u64,
    backoff_max_ms: u64,
    #[rkyv(with = AsOwned)]
    tube: Cow<'a, str>,
    max_attempts: u32,
}

/// Kind 10: a `PutBatch`.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub(crate) struct BatchRec<'a> {
    first_id: u64,
    created_ms: u64,
    #[rkyv(with = AsOwned)]
    ids: Cow<'a, [u64]>,
    #[rkyv(with = AsOwned)]
    tube: Cow<'a, str>,
    #[rkyv(with = Map<AsOwned>)]
    bodies: Vec<Cow<'a, [u8]>>,
    pri: u32,
    delay_s: u32,
    ttr_s: u32,
}

/// Whether `rec` is the `Put` of a job as it was put: what `NewRec` and
/// each body of a `PutBatch` stand for.
pub(crate) fn is_new_put(rec: &DRec) -> bool {
    match *rec {
        DRec::Put {
            delay_s,
            state,
            run_at_ms,
            bury_seq,
            created_ms,
            counts,
            ref unique,
            ref last_error,
            ..
        } => {
            counts == Counts::default()
                && unique.is_none()
                && last_error.is_none()
                && bury_seq == 0
                && state == if delay_s == 0 { ST_READY } else { ST_DELAYED }
                && run_at_ms == new_run_at(created_ms, delay_s)
        }
        _ => false,
    }
}

/// `run_at_ms` of a new job put with `delay_s` at `created_ms`, as the
/// store logs it (0 when ready).
fn new_run_at(created_ms: u64, delay_s: u32) -> u64 {
    if delay_s == 0 {
        0
    } else {
        created_ms.saturating_add(u64::from(delay_s) * 1000)
    }
}

/// Largest encode buffer kept between records.
const KEEP: usize = 1 << 20;

type Encoded = Result<rkyv::util::AlignedVec, rkyv::rancor::Error>;

fn archive<T>(v: &T, buf: rkyv::util::AlignedVec) -> Encoded
where
    T: for<'b> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'b>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(v, buf)
}

/// Encodes `rec` into a reused buffer and hands its kind and bytes to `f`.
pub(crate) fn encode_with<T>(
    buf: &mut rkyv::util::AlignedVec,
    rec: &DRec,
    f: impl FnOnce(u8, &[u8]) -> T,
) -> Result<T, rkyv::rancor::Error> {
    buf.clear();
    let taken = std::mem::take(buf);
    let (kind, taken) = match *rec {
        DRec::Put {
            id,
            ref tube,
            pri,
            delay_s,
            ttr_s,
            ref body,
            state,
            run_at_ms,
            bury_seq,
            created_ms,
            counts,
            ref unique,
            ref last_error,
        } => {
            if is_new_put(rec) {
                let r = NewRec {
                    id,
                    created_ms,
                    tube: Cow::Borrowed(tube),
                    body: Cow::Borrowed(body),
                    pri,
                    delay_s,
                    ttr_s,
                };
                (KIND_NEW, archive(&r, taken)?)
            } else {
                let r = PutRec {
                    id,
                    run_at_ms,
                    bury_seq,
                    created_ms,
                    tube: Cow::Borrowed(tube),
                    body: Cow::Borrowed(body),
                    unique: unique.as_deref().map(Cow::Borrowed),
                    last_error: last_error.as_deref().map(Cow::Borrowed),
                    counts,
                    pri,
                    delay_s,
                    ttr_s,
                    state,
                };
                (KIND_PUT, archive(&r, taken)?)
            }
        }
        DRec::Move { id, pri, delay_s, state, run_at_ms, bury_seq, counts, ref last_error } => {
            let r = MoveRec {
                id,
                run_at_ms,
                bury_seq,
                last_error: last_error.as_deref().map(Cow::Borrowed),
                counts,
                pri,
                delay_s,
                state,
            };
            (KIND_MOVE, archive(&r, taken)?)
        }
        DRec::Reserve { id } => (KIND_RESERVE, archive(&IdRec { id }, taken)?),
        DRec::Delete { id } => (KIND_DELETE, archive(&IdRec { id }, taken)?),
        DRec::IdMark { next_id } => (KIND_ID_MARK, archive(&IdRec { id: next_id }, taken)?),
        DRec::TubeConfig { ref tube, max_attempts, backoff_ms, backoff_max_ms } => {
            let r = TubeRec { backoff_ms, backoff_max_ms, tube: Cow::Borrowed(tube), max_attempts };
            (KIND_TUBE_CONFIG, archive(&r, taken)?)
        }
        DRec::PutBatch {
            first_id,
            ref ids,
            ref tube,
            pri,
            delay_s,
            ttr_s,
            created_ms,
            ref bodies,
        } => {
            let r = BatchRec {
                first_id,
                created_ms,
                ids: Cow::Borrowed(ids),
                tube: Cow::Borrowed(tube),
                bodies: bodies.iter().map(|b| Cow::Borrowed(b.as_slice())).collect(),
                pri,
                delay_s,
                ttr_s,
            };
            (KIND_BATCH, archive(&r, taken)?)
        }
    };
    let out = f(kind, &taken);
    if taken.capacity() <= KEEP {
        *buf = taken;
    }
    Ok(out)
}

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Not a daemon record kind this version knows.
    Kind(u8),
    /// The bytes are not a valid archive of the kind's record.
    Bytes(rkyv::rancor::Error),
    /// A valid archive that says something impossible.
    Invalid(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Kind(1) => f.write_str(
                "kind 1 is the engine's record (not a spindled log; an engine data dir?)",
            ),
            DecodeError::Kind(k) if *k > KIND_MAX => {
                write!(f, "kind {k} is not known to this spindled (written by a newer version?)")
            }
            DecodeError::Kind(k) => write!(f, "kind {k} is not a spindled record"),
            DecodeError::Bytes(e) => write!(f, "cannot be decoded: {e}"),
            DecodeError::Invalid(why) => f.write_str(why),
        }
    }
}

/// Decodes a record's payload (validated: the log may hold anything).
pub(crate) fn decode(kind: u8, payload: &[u8]) -> Result<DRec, DecodeError> {
    use rkyv::rancor::Error;
    // rkyv needs 16-byte alignment; WAL payloads are aligned when mapped,
    // but copy into an aligned buffer to be safe for any source.
    let mut v = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    v.extend_from_slice(payload);
    let rec = match kind {
        KIND_V1 => rkyv::from_bytes::<V1Rec, Error>(&v).map(DRec::from),
        KIND_PUT => rkyv::from_bytes::<PutRec<'static>, Error>(&v).map(|r| DRec::Put {
            id: r.id,
            tube: r.tube.into_owned(),
            pri: r.pri,
            delay_s: r.delay_s,
            ttr_s: r.ttr_s,
            body: r.body.into_owned(),
            state: r.state,
            run_at_ms: r.run_at_ms,
            bury_seq: r.bury_seq,
            created_ms: r.created_ms,
            counts: r.counts,
            unique: r.unique.map(Cow::into_owned),
            last_error: r.last_error.map(Cow::into_owned),
        }),
        KIND_NEW => rkyv::from_bytes::<NewRec<'static>, Error>(&v).map(|r| {
            DRec::new_put(
                r.id,
                r.tube.into_owned(),
                r.pri,
                r.delay_s,
                r.ttr_s,
                r.body.into_owned(),
                r.created_ms,
            )
        }),
        KIND_BATCH => match rkyv::from_bytes::<BatchRec<'static>, Error>(&v) {
            Ok(r) if !r.ids.is_empty() && r.ids.len() != r.bodies.len() => {
                return Err(DecodeError::Invalid(
                    "a PutBatch lists a different number of ids and bodies",
                ));
            }
            other => other,
        }
        .map(|r| DRec::PutBatch {
            first_id: r.first_id,
            ids: r.ids.into_owned(),
            tube: r.tube.into_owned(),
            pri: r.pri,
            delay_s: r.delay_s,
            ttr_s: r.ttr_s,
            created_ms: r.created_ms,
            bodies: r.bodies.into_iter().map(Cow::into_owned).collect(),
        }),
        KIND_MOVE => rkyv::from_bytes::<MoveRec<'static>, Error>(&v).map(|r| DRec::Move {
            id: r.id,
            pri: r.pri,
            delay_s: r.delay_s,
            state: r.state,
            run_at_ms: r.run_at_ms,
            bury_seq: r.bury_seq,
            counts: r.counts,
            last_error: r.last_error.map(Cow::into_owned),
        }),
        KIND_RESERVE => rkyv::from_bytes::<IdRec, Error>(&v).map(|r| DRec::Reserve { id: r.id }),
        KIND_DELETE => rkyv::from_bytes::<IdRec, Error>(&v).map(|r| DRec::Delete { id: r.id }),
        KIND_ID_MARK => {
            rkyv::from_bytes::<IdRec, Error>(&v).map(|r| DRec::IdMark { next_id: r.id })
        }
        KIND_TUBE_CONFIG => {
            rkyv::from_bytes::<TubeRec<'static>, Error>(&v).map(|r| DRec::TubeConfig {
                tube: r.tube.into_owned(),
                max_attempts: r.max_attempts,
                backoff_ms: r.backoff_ms,
                backoff_max_ms: r.backoff_max_ms,
            })
        }
        k => return Err(DecodeError::Kind(k)),
    };
    rec.map_err(DecodeError::Bytes)
}

/// Decodes `payload` as a record of `kind`; one that decodes must encode
/// and decode again to the same record (panics otherwise). The fuzz
/// target's and the mutation test's check.
pub(crate) fn round_trip(kind: u8, payload: &[u8]) {
    let Ok(rec) = decode(kind, payload) else { return };
    let mut buf = rkyv::util::AlignedVec::new();
    let again = encode_with(&mut buf, &rec, decode);
    match again {
        Ok(Ok(back)) => assert_eq!(back, rec, "kind {kind} re-encoded differently"),
        Ok(Err(e)) => panic!("kind {kind}: a decoded record does not decode again: {e}"),
        Err(e) => panic!("kind {kind}: a decoded record does not encode: {e}"),
    }
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
            DRec::PutBatch {
                first_id: 12,
                ids: Vec::new(),
                tube: "put-batch".into(),
                pri: 1,
                delay_s: 2,
                ttr_s: 3,
                created_ms: 4,
                bodies: vec![b"a".to_vec(), Vec::new(), vec![7; 300]],
            },
        ];
        for r in recs {
            let (kind, bytes) = encode_with(&mut buf, &r, |k, b| (k, b.to_vec())).unwrap();
            assert_eq!(decode(kind, &bytes).unwrap(), r);
        }
        // Too short for its kind, or pointing outside the payload.
        assert!(decode(KIND_DELETE, b"abc").is_err());
        assert!(decode(KIND_PUT, &[0xff; 96]).is_err());
        assert!(decode(KIND_V1, b"garbage!").is_err());
    }

    fn new_put(delay_s: u32) -> DRec {
        DRec::Put {
            id: 41,
            tube: "put-batch".into(),
            pri: 1024,
            delay_s,
            ttr_s: 60,
            body: b"spindle-bench-16".to_vec(),
            state: if delay_s == 0 { ST_READY } else { ST_DELAYED },
            run_at_ms: new_run_at(1_700_000_000_000, delay_s),
            bury_seq: 0,
            created_ms: 1_700_000_000_000,
            counts: Counts::default(),
            unique: None,
            last_error: None,
        }
    }

    /// (kind, payload length) of `r`, after checking it decodes to itself.
    fn encoded(r: &DRec) -> (u8, usize) {
        let mut buf = rkyv::util::AlignedVec::new();
        let (kind, bytes) = encode_with(&mut buf, r, |k, b| (k, b.to_vec())).unwrap();
        assert_eq!(&decode(kind, &bytes).unwrap(), r);
        (kind, bytes.len())
    }

    #[test]
    fn a_new_job_takes_the_short_put_and_anything_else_the_full_one() {
        assert_eq!(encoded(&new_put(0)).0, KIND_NEW);
        assert_eq!(encoded(&new_put(30)).0, KIND_NEW);
        // Each way a job can differ from a new one needs the full record.
        let differ: [fn(&mut DRec); 7] = [
            // Its delay has passed: ready, with a delay.
            |r| {
                if let DRec::Put { state, .. } = r {
                    *state = ST_READY
                }
            },
            |r| {
                if let DRec::Put { state, .. } = r {
                    *state = ST_BURIED
                }
            },
            |r| {
                if let DRec::Put { run_at_ms, .. } = r {
                    *run_at_ms += 1
                }
            },
            |r| {
                if let DRec::Put { bury_seq, .. } = r {
                    *bury_seq = 3
                }
            },
            |r| {
                if let DRec::Put { counts, .. } = r {
                    counts.kicks = 1
                }
            },
            |r| {
                if let DRec::Put { unique, .. } = r {
                    *unique = Some("k".into())
                }
            },
            |r| {
                if let DRec::Put { last_error, .. } = r {
                    *last_error = Some("e".into())
                }
            },
        ];
        for (i, change) in differ.iter().enumerate() {
            let mut r = new_put(30);
            change(&mut r);
            assert_eq!(encoded(&r).0, KIND_PUT, "change {i}");
        }
    }

    #[test]
    fn format_2_records_are_small() {
        // Framed size = 16-byte header + payload rounded up to 16.
        let framed = |r: &DRec| 16 + encoded(r).1.div_ceil(16) * 16;
        assert_eq!(framed(&DRec::Delete { id: u64::MAX }), 32);
        assert_eq!(framed(&DRec::Reserve { id: 1 }), 32);
        // Format 1 took 168 bytes for this put and 136 for any delete.
        assert!(framed(&new_put(0)) <= 96, "{}", framed(&new_put(0)));
        // In a batch, a 16-byte job takes its body and 8 bytes.
        let batch = DRec::PutBatch {
            first_id: 1,
            ids: Vec::new(),
            tube: "put-batch".into(),
            pri: 1024,
            delay_s: 0,
            ttr_s: 60,
            created_ms: 1_700_000_000_000,
            bodies: vec![b"spindle-bench-16".to_vec(); 1000],
        };
        assert!(framed(&batch) <= 1000 * 24 + 96, "{}", framed(&batch));
    }

    #[test]
    fn format_1_logs_are_still_read() {
        let old = V1Rec::Move {
            id: 9,
            pri: 5,
            delay_s: 1,
            state: ST_DELAYED,
            run_at_ms: 77,
            bury_seq: 0,
            counts: Counts { releases: 2, ..Counts::default() },
            last_error: Some("e".into()),
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        assert_eq!(decode(KIND_V1, &bytes).unwrap(), DRec::from(old));
        let put = V1Rec::Delete { id: 4 };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&put).unwrap();
        assert_eq!(decode(KIND_V1, &bytes).unwrap(), DRec::Delete { id: 4 });
    }

    #[test]
    fn mutated_records_decode_or_fail_but_never_panic() {
        let mut buf = rkyv::util::AlignedVec::new();
        let recs = [
            new_put(0),
            new_put(30),
            DRec::Delete { id: 5 },
            DRec::PutBatch {
                first_id: 1,
                ids: vec![1, 4],
                tube: "tube".into(),
                pri: 1,
                delay_s: 0,
                ttr_s: 60,
                created_ms: 9,
                bodies: vec![b"ab".to_vec(), b"cde".to_vec()],
            },
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for r in &recs {
            let (kind, bytes) = encode_with(&mut buf, r, |k, b| (k, b.to_vec())).unwrap();
            for _ in 0..2000 {
                let mut m = bytes.clone();
                for _ in 0..1 + next() % 3 {
                    let i = (next() % m.len() as u64) as usize;
                    m[i] ^= 1 << (next() % 8);
                }
                m.truncate(m.len() - (next() % 4 == 0) as usize * (next() as usize % m.len()));
                let k = if next() % 8 == 0 { (next() % 12) as u8 } else { kind };
                round_trip(k, &m);
            }
        }
    }

    #[test]
    fn unknown_kinds_say_what_they_are() {
        let e = |k| decode(k, &[0; 16]).unwrap_err().to_string();
        assert!(e(1).contains("engine"), "{}", e(1));
        assert!(e(KIND_MAX + 1).contains("newer"), "{}", e(KIND_MAX + 1));
    }
}
