//! The operations the model test runs, and their generators.

use proptest::prelude::*;

use super::tiers::{self, SchedOp};
use super::{HELD, HOLDERS, KEYS, PRIS, QUEUES};

/// Which job an operation names, resolved against the model when it runs
/// (an index into the matching ids, so shrinking keeps it meaningful).
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Any(u16),
    Reserved(u16),
    /// Buried or delayed.
    Parked(u16),
    /// A deleted id, or one never handed out.
    Gone(u16),
}

/// Who acts on a reserved job.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    /// The job's holder (holder 0 if it is not reserved).
    Owner,
    Holder(u32),
}

/// The fencing token given.
#[derive(Clone, Copy, Debug)]
pub enum Tok {
    None,
    Current,
    Stale,
}

#[derive(Clone, Debug)]
pub enum Op {
    Put {
        q: usize,
        pri: usize,
        delay_ms: u64,
        ttr_s: u32,
        max_attempts: u32,
        key: Option<usize>,
        payload: Vec<u8>,
        owned: bool,
        /// A deadline this long after now (0: now, refused).
        deadline_ms: Option<u64>,
    },
    Reserve {
        q: usize,
        holder: u32,
    },
    ReserveWait {
        queues: Vec<usize>,
        holder: u32,
        batch: u32,
        past: bool,
    },
    ReserveId {
        job: Target,
        holder: u32,
    },
    Complete {
        job: Target,
        who: Who,
        tok: Tok,
    },
    CompleteMany {
        holder: u32,
        extra: Option<Target>,
    },
    Delete {
        job: Target,
        by: Option<(Who, Tok)>,
    },
    Release {
        job: Target,
        who: Who,
        tok: Tok,
        pri: usize,
        delay_ms: u64,
    },
    Fail {
        job: Target,
        who: Who,
        tok: Tok,
        error: u8,
    },
    Bury {
        job: Target,
        who: Who,
        tok: Tok,
        pri: usize,
        reason: u8,
    },
    Touch {
        job: Target,
        who: Who,
        tok: Tok,
    },
    Kick {
        q: usize,
        bound: u64,
    },
    KickJob {
        job: Target,
    },
    Clear {
        q: usize,
        states: u8,
    },
    Pause {
        q: usize,
        secs: u64,
    },
    SetPolicy {
        q: usize,
        policy: usize,
    },
    Advance {
        ms: u64,
    },
    DropHolder {
        holder: u32,
    },
    /// Cancel a job (any state).
    Cancel {
        job: Target,
    },
    /// Set a queue's limits (`tiers::limits` turns these into `Limits`).
    SetLimits {
        q: usize,
        concurrency: u32,
        /// (starts, period in ms, burst); zero starts or burst are refused.
        rate: Option<(u32, u64, u32)>,
        bury: bool,
    },
    /// Add, pause, resume or remove a schedule.
    Schedule(SchedOp),
    /// Compaction: the log becomes the table's snapshot.
    Compact,
    /// A crash, and a restart this much later.
    Crash {
        later_ms: u64,
    },
}

/// A failure's error text: short, invalid UTF-8, or long enough to be cut
/// (inside a multi-byte character).
pub fn error_text(i: u8) -> Vec<u8> {
    match i % 3 {
        0 => b"boom".to_vec(),
        1 => vec![0xff, b'x', 0xc3],
        _ => "€".repeat(1700).into_bytes(),
    }
}

/// A burial's reason: none, short, or long enough to be cut (4,098 bytes
/// of 3-byte characters: the last 4,096 bytes start inside one).
pub fn reason_text(i: u8) -> Option<String> {
    match i % 3 {
        0 => None,
        1 => Some("why".to_string()),
        _ => Some("€".repeat(1366)),
    }
}

pub fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<u16>().prop_map(Target::Reserved),
        2 => any::<u16>().prop_map(Target::Any),
        1 => any::<u16>().prop_map(Target::Parked),
        1 => any::<u16>().prop_map(Target::Gone),
    ]
}

pub fn who() -> impl Strategy<Value = Who> {
    prop_oneof![6 => Just(Who::Owner), 1 => (0..HOLDERS).prop_map(Who::Holder)]
}

pub fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![4 => Just(Tok::None), 3 => Just(Tok::Current), 1 => Just(Tok::Stale)]
}

pub fn delay_ms() -> impl Strategy<Value = u64> {
    prop_oneof![3 => Just(0u64), 1 => 1u64..1000, 1 => 1000u64..6000]
}

pub fn queue() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..HELD, 2 => HELD..QUEUES.len()]
}

pub fn pri_index() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0..PRIS.len(), 1 => 0usize..30]
}

pub fn op() -> impl Strategy<Value = Op> {
    let put = (
        queue(),
        pri_index(),
        delay_ms(),
        prop_oneof![1 => Just(0u32), 6 => 1u32..=3],
        prop_oneof![3 => Just(0u32), 1 => 1u32..=3],
        proptest::option::weighted(0.3, 0..KEYS.len()),
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..=24),
            1 => proptest::collection::vec(any::<u8>(), 25..=44),
        ],
        any::<bool>(),
        proptest::option::weighted(0.3, prop_oneof![1 => Just(0u64), 8 => 1u64..6000]),
    )
        .prop_map(
            |(q, pri, delay_ms, ttr_s, max_attempts, key, payload, owned, deadline_ms)| Op::Put {
                q,
                pri,
                delay_ms,
                ttr_s,
                max_attempts,
                key,
                payload,
                owned,
                deadline_ms,
            },
        );
    let reserve_wait = (
        proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3),
        0..HOLDERS,
        1u32..=3,
        any::<bool>(),
    )
        .prop_map(|(queues, holder, batch, past)| Op::ReserveWait {
            queues,
            holder,
            batch,
            past,
        });
    prop_oneof![
        10 => put,
        10 => (queue(), 0..HOLDERS).prop_map(|(q, holder)| Op::Reserve { q, holder }),
        5 => reserve_wait,
        1 => (target(), 0..HOLDERS).prop_map(|(job, holder)| Op::ReserveId { job, holder }),
        4 => (target(), who(), tok()).prop_map(|(job, who, tok)| Op::Complete { job, who, tok }),
        1 => (0..HOLDERS, proptest::option::of(target()))
            .prop_map(|(holder, extra)| Op::CompleteMany { holder, extra }),
        2 => (target(), proptest::option::of((who(), tok())))
            .prop_map(|(job, by)| Op::Delete { job, by }),
        3 => (target(), who(), tok(), pri_index(), delay_ms()).prop_map(
            |(job, who, tok, pri, delay_ms)| Op::Release { job, who, tok, pri, delay_ms }
        ),
        4 => (target(), who(), tok(), any::<u8>())
            .prop_map(|(job, who, tok, error)| Op::Fail { job, who, tok, error }),
        2 => (target(), who(), tok(), pri_index(), any::<u8>()).prop_map(
            |(job, who, tok, pri, reason)| Op::Bury { job, who, tok, pri, reason }
        ),
        2 => (target(), who(), tok()).prop_map(|(job, who, tok)| Op::Touch { job, who, tok }),
        2 => (queue(), 0u64..=3).prop_map(|(q, bound)| Op::Kick { q, bound }),
        1 => target().prop_map(|job| Op::KickJob { job }),
        1 => (queue(), 1u8..16).prop_map(|(q, states)| Op::Clear { q, states }),
        1 => (queue(), 0u64..=5).prop_map(|(q, secs)| Op::Pause { q, secs }),
        1 => (queue(), 0usize..4).prop_map(|(q, policy)| Op::SetPolicy { q, policy }),
        6 => prop_oneof![3 => 0u64..1500, 1 => 1000u64..8000].prop_map(|ms| Op::Advance { ms }),
        1 => (0..HOLDERS).prop_map(|holder| Op::DropHolder { holder }),
        2 => prop_oneof![Just(0u64), 0u64..10_000].prop_map(|later_ms| Op::Crash { later_ms }),
        1 => Just(Op::Compact),
        2 => target().prop_map(|job| Op::Cancel { job }),
        2 => tiers::set_limits_op(),
        3 => tiers::sched_op().prop_map(Op::Schedule),
    ]
}
