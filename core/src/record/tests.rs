//! Golden bytes pin the record layout (`docs/record-format.md`); round
//! trips and damaged input check the decoder.

use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

fn put(id: u64, payload: &'static [u8]) -> PutRec<'static> {
    PutRec {
        id,
        queue: "q",
        pri: 3,
        ttr_s: 60,
        delay_s: 0,
        max_attempts: 0,
        state: State::Ready,
        at: 0,
        created: Time(1000),
        counts: Counts::default(),
        unique: None,
        error: None,
        deadline: None,
        payload,
    }
}

#[test]
fn a_new_job_put_has_these_bytes() {
    let mut r = Records::new();
    r.put(&put(7, b"hi"));
    assert_eq!(
        hex(r.bytes()),
        "01 2e 00 00 00 \
         07 00 00 00 00 00 00 00 \
         e8 03 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 \
         03 00 00 00 3c 00 00 00 00 00 00 00 00 00 00 00 \
         00 00 01 71 68 69"
    );
}

#[test]
fn a_full_put_carries_counts_key_and_error_in_that_order() {
    let mut r = Records::new();
    let counts =
        Counts { reserves: 1, timeouts: 2, releases: 3, buries: 4, kicks: 5, interrupted: 6 };
    r.put(&PutRec {
        state: State::Buried,
        at: 9,
        counts,
        unique: Some("k"),
        error: Some("e"),
        ..put(1, b"")
    });
    assert_eq!(
        hex(r.bytes()),
        "01 4a 00 00 00 \
         01 00 00 00 00 00 00 00 \
         e8 03 00 00 00 00 00 00 \
         09 00 00 00 00 00 00 00 \
         03 00 00 00 3c 00 00 00 00 00 00 00 00 00 00 00 \
         02 07 01 71 \
         01 00 00 00 02 00 00 00 03 00 00 00 04 00 00 00 05 00 00 00 06 00 00 00 \
         01 00 6b 01 00 65"
    );
}

#[test]
fn small_records_have_these_bytes() {
    let mut r = Records::new();
    r.id_only(kind::RESERVE, 0x0102);
    r.id_only(kind::DELETE, 5);
    r.id_only(kind::ID_MARK, 6);
    r.deletes(&[1, 2]);
    assert_eq!(
        hex(r.bytes()),
        "02 08 00 00 00 02 01 00 00 00 00 00 00 \
         04 08 00 00 00 05 00 00 00 00 00 00 00 \
         05 08 00 00 00 06 00 00 00 00 00 00 00 \
         07 10 00 00 00 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00"
    );
    assert_eq!(r.len(), 4);
}

#[test]
fn a_move_and_a_queue_policy_have_these_bytes() {
    let mut r = Records::new();
    r.moved(&MoveRec {
        id: 2,
        at: 3,
        pri: 4,
        delay_s: 5,
        state: State::Delayed,
        counts: Counts { reserves: 1, ..Counts::default() },
        error: Some("x"),
    });
    r.queue(
        "ab",
        &RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(20),
            poison_after: 2,
            interruptions_use_attempts: true,
        },
    );
    assert_eq!(
        hex(r.bytes()),
        "03 35 00 00 00 \
         02 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 04 00 00 00 05 00 00 00 01 04 \
         01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         01 00 78 \
         06 1c 00 00 00 \
         03 00 00 00 0a 00 00 00 00 00 00 00 14 00 00 00 00 00 00 00 02 00 00 00 01 02 61 62"
    );
}

#[test]
fn every_record_round_trips() {
    let mut r = Records::new();
    let p = PutRec { unique: Some("u"), max_attempts: 4, ..put(9, &[1; 100]) };
    r.put(&p);
    let m = MoveRec {
        id: 9,
        at: 0,
        pri: 1,
        delay_s: 0,
        state: State::Buried,
        counts: Counts::default(),
        error: None,
    };
    r.moved(&m);
    let pol = RetryPolicy::default();
    r.queue("q", &pol);
    r.id_only(kind::RESERVE, 9);
    r.deletes(&[9, 10]);
    let got: Vec<Record<'_>> = decode(r.bytes()).collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0], Record::Put(p));
    assert_eq!(got[1], Record::Move(m));
    assert_eq!(got[2], Record::Queue(QueueRec { name: "q", policy: pol }));
    assert_eq!(got[3], Record::Reserve { id: 9 });
    assert_eq!(got[4].deleted_ids().collect::<Vec<_>>(), vec![9, 10]);
}

#[test]
fn damaged_input_is_an_error_never_a_panic() {
    let mut r = Records::new();
    r.put(&PutRec { unique: Some("key"), error: Some("err"), ..put(1, b"payload") });
    r.id_only(kind::DELETE, 1);
    let good = r.bytes().to_vec();
    // Every truncation and every single-byte change decodes or errors.
    for cut in 0..good.len() {
        let _ = decode(&good[..cut]).count();
    }
    for i in 0..good.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut b = good.clone();
            b[i] = v;
            for rec in decode(&b) {
                if rec.is_err() {
                    break;
                }
            }
        }
    }
    assert!(matches!(decode(&[99, 0, 0, 0, 0]).next(), Some(Err(DecodeError::Kind { .. }))));
    assert!(matches!(decode(&[1, 9, 0, 0, 0]).next(), Some(Err(DecodeError::Short { .. }))));
    assert!(matches!(
        decode(&[4, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).nth(1),
        Some(Err(DecodeError::Short { .. }))
    ));
}

#[test]
fn chunks_split_between_records() {
    let mut r = Records::new();
    for id in 0..10 {
        r.id_only(kind::DELETE, id);
    }
    r.put(&put(11, &[0; 100]));
    let pieces: Vec<&[u8]> = r.chunks(40).collect();
    // Three 13-byte records per 40-byte piece, then the large put alone.
    assert_eq!(pieces.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![39, 39, 39, 13, 149]);
    let mut n = 0;
    for p in &pieces {
        n += decode(p).map(|x| x.map(|_| 1)).sum::<Result<usize, _>>().unwrap();
    }
    assert_eq!(n, 11);
    assert_eq!(pieces.concat(), r.bytes());
}

#[test]
fn a_disabled_buffer_records_nothing() {
    let mut r = Records::disabled();
    r.put(&put(1, b"x"));
    r.id_only(kind::DELETE, 1);
    assert!(r.is_empty());
    assert!(r.bytes().is_empty());
}

#[test]
fn a_put_with_a_deadline_has_it_after_the_error_and_before_the_payload() {
    let mut r = Records::new();
    r.put(&PutRec { deadline: Some(Time(0x0102)), ..put(7, b"hi") });
    assert_eq!(
        hex(r.bytes()),
        "01 36 00 00 00 \
         07 00 00 00 00 00 00 00 \
         e8 03 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 \
         03 00 00 00 3c 00 00 00 00 00 00 00 00 00 00 00 \
         00 08 01 \
         71 02 01 00 00 00 00 00 \
         00 68 69"
    );
    let got: Vec<_> = decode(r.bytes()).collect::<Result<_, _>>().unwrap();
    assert_eq!(got, vec![Record::Put(PutRec { deadline: Some(Time(0x0102)), ..put(7, b"hi") })]);
}

#[test]
fn limits_cancel_and_schedule_records_have_these_bytes() {
    let mut r = Records::new();
    let limits = Limits {
        concurrency: 2,
        rate: Some(Rate { starts: 5, per: Duration::from_nanos(1000), burst: 3 }),
        on_expiry: OnExpiry::Bury,
    };
    r.limits("q", &limits);
    r.cancel(9);
    let sched = ScheduleRec {
        queue: "q",
        name: "s",
        when: WhenRec::Cron { expr: "* * * * *", tz: "UTC" },
        anchor: Time(1),
        pri: 2,
        ttr_s: 3,
        max_attempts: 4,
        missed: Missed::Skip,
        no_overlap: true,
        paused: false,
        last_tick: Some(Time(5)),
        last_job: 6,
        payload: b"p",
    };
    r.schedule(&sched);
    r.unschedule("q", "s");
    let mut inner = Records::new();
    inner.put(&put(8, b"x"));
    r.fire("q", "s", Time(7), 8, inner.bytes());
    r.fire("q", "s", Time(9), 0, &[]);
    assert_eq!(
        hex(r.bytes()),
        "08 17 00 00 00 \
         03 \
         02 00 00 00 \
         05 00 00 00 \
         e8 03 00 00 00 00 00 00 \
         03 00 00 00 \
         01 71 \
         09 08 00 00 00 \
         09 00 00 00 00 00 00 00 \
         0a 3a 00 00 00 \
         01 71 \
         01 73 \
         00 \
         09 00 2a 20 2a 20 2a 20 2a 20 2a \
         03 55 54 43 \
         01 \
         00 00 00 00 00 00 00 02 \
         00 00 00 03 \
         00 00 00 04 \
         00 00 00 0e \
         05 \
         00 00 00 00 00 00 00 06 \
         00 00 00 00 00 00 00 70 \
         0b \
         04 00 00 00 01 \
         71 01 \
         73 0c \
         46 00 00 00 01 \
         71 01 \
         73 07 \
         00 00 00 00 00 00 00 08 \
         00 00 00 00 00 00 00 01 \
         2d 00 00 00 08 00 00 00 00 00 00 00 e8 03 00 00 00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00 3c 00 00 00 00 00 00 00 00 00 00 00 00 00 01 71 78 0c \
         14 00 00 00 01 \
         71 01 \
         73 09 \
         00 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00"
    );
    let got: Vec<_> = decode(r.bytes()).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        got,
        vec![
            Record::Limits { queue: "q", limits },
            Record::Cancel { id: 9 },
            Record::Schedule(sched),
            Record::Unschedule { queue: "q", name: "s" },
            Record::Fire { queue: "q", name: "s", tick: Time(7), job: 8, put: Some(put(8, b"x")) },
            Record::Fire { queue: "q", name: "s", tick: Time(9), job: 0, put: None },
        ]
    );
}

#[test]
fn a_fire_whose_job_id_disagrees_with_its_put_is_malformed() {
    let mut inner = Records::new();
    inner.put(&put(8, b"x"));
    let mut r = Records::new();
    r.fire("q", "s", Time(7), 9, inner.bytes());
    assert!(matches!(
        decode(r.bytes()).next(),
        Some(Err(DecodeError::Malformed { what: "fired job", .. }))
    ));
}

#[test]
fn limits_with_a_zero_rate_are_malformed() {
    let mut r = Records::new();
    let bad = Limits {
        rate: Some(Rate { starts: 0, per: Duration::from_secs(1), burst: 1 }),
        ..Limits::default()
    };
    r.limits("q", &bad);
    assert!(matches!(decode(r.bytes()).next(), Some(Err(DecodeError::Malformed { .. }))));
}
