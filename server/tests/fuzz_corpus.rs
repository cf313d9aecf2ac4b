//! Replays the fuzz targets' seed corpora (`server/fuzz/seeds/`) through
//! the same checks as the cargo-fuzz targets, on stable, on every
//! `cargo test`: `protocol/` through a whole client session against a
//! fresh in-memory server (`fuzz_session`: the job table's invariants hold
//! after every read), `records/` through the older log formats' decoder
//! (`fuzz_record`: what decodes re-encodes to itself). The seeds are a
//! `cargo fuzz cmin` of fuzzing runs; a crasher lands here with its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn seeds(dir: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn the_protocol_seed_corpus_passes() {
    let all = seeds("protocol");
    assert!(all.len() >= 100, "{} protocol seeds", all.len());
    for data in all {
        spindle_server::fuzz_session(&data);
    }
}

#[test]
fn the_record_seed_corpus_passes() {
    let all = seeds("records");
    assert!(all.len() >= 20, "{} record seeds", all.len());
    for data in all {
        spindle_server::fuzz_record(&data);
    }
}
