//! cargo-fuzz target: any bytes, replayed as a frame of table records.
#![no_main]

include!("../fuzz_one.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_one::run(data);
});
