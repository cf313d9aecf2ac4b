//! Fuzzes spindled's log record decoder: the first byte is the frame's
//! kind, the rest its payload. A record that decodes must encode and decode
//! again to itself; anything else must be an error, never a panic.
//!
//! `cargo +nightly fuzz run records` from `server/fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spindle_server::fuzz_record(data);
});
