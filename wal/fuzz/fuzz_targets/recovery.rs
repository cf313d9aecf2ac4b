//! Fuzzes the frame decoder, the segment scanner and log recovery of
//! `spindle-wal` with arbitrary segment files. The checks live in
//! `../fuzz_one.rs`, which `wal/tests/fuzz_regressions.rs` runs on stable for
//! every saved case in `wal/tests/fuzz_cases/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../fuzz_one.rs");

fuzz_target!(|data: &[u8]| fuzz_one::run(data));
