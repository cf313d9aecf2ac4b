//! The protocol fuzz target's session function on seeded random input, so
//! `cargo test` exercises it on stable: sessions mix well-formed commands
//! (with real bodies) and random bytes, split into arbitrary reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORDS: &[&str] = &[
    "put 0 0 1 3\r\nabc\r\n",
    "put 4294967295 2 1 0\r\n\r\n",
    "put 1 0 1 2000\r\n",
    "put 1 0 1 2 x\r\nab\r\n",
    "reserve-with-timeout 0\r\n",
    "reserve-with-timeout 1\r\n",
    "reserve\r\n",
    "reserve-batch 5 0\r\n",
    "reserve-job 1\r\n",
    "delete 1\r\n",
    "delete 2\r\n",
    "release 1 5 1\r\n",
    "release 2 0 0\r\n",
    "bury 1 3\r\n",
    "bury 2 3\r\n",
    "kick 3\r\n",
    "kick-job 1\r\n",
    "touch 1\r\n",
    "use t1\r\n",
    "use default\r\n",
    "watch t1\r\n",
    "ignore default\r\n",
    "ignore t1\r\n",
    "peek 1\r\n",
    "peek-ready\r\n",
    "peek-delayed\r\n",
    "peek-buried\r\n",
    "stats\r\n",
    "stats-job 1\r\n",
    "stats-tube t1\r\n",
    "list-tubes\r\n",
    "pause-tube t1 1\r\n",
    "put-unique k 0 0 1 1\r\nu\r\n",
    "put-batch 0 0 1 2\r\n1\r\na\r\n1\r\nb\r\n",
    "put-batch 0 0 1 2\r\n1\r\na\r\n5000\r\n",
    "fail 1 3\r\nerr\r\n",
    "lease 1\r\n",
    "delete-lease 1 1\r\n",
    "touch-lease 1 1\r\n",
    "release-lease 1 1 0 0\r\n",
    "fail-lease 1 1 3\r\nerr\r\n",
    "tube-config t1 2 0 0\r\n",
    "clear-tube default all\r\n",
    "stats-tube-ext default\r\n",
    "metrics\r\n",
];

#[test]
fn random_sessions_keep_the_job_table_consistent() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = Vec::new();
        for _ in 0..rng.random_range(1..60) {
            match rng.random_range(0..10) {
                0 => {
                    let n = rng.random_range(0..300);
                    data.extend((0..n).map(|_| rng.random::<u8>()));
                }
                1 => data.push(0xFF),
                2 => data.push(0xFE),
                _ => data.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes()),
            }
        }
        spindle_server::fuzz_session(&data);
    }
}
