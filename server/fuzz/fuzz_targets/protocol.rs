//! Fuzzes spindled's protocol input: arbitrary bytes as one client's stream
//! (split into reads at 0xFF, clock advanced at 0xFE) through the line
//! parser, the body/skip/batch state machine and the job table, whose
//! counters are checked after every read.
//!
//! `cargo +nightly fuzz run protocol` from `server/fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spindle_server::fuzz_session(data);
});
