//! `spindle-bench`: scenario benchmarks (see `docs/benchmarks.md`).
fn main() {}
