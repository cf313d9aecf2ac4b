// The one fuzz check of the table's records, shared by the cargo-fuzz
// target (`fuzz_targets/replay.rs`, nightly) and the stable test that
// replays the seed corpus on every `cargo test` (`core/tests/fuzz_corpus.rs`).
//
// Any bytes, read as a frame of records: decoding stops at the first
// error and never panics; whatever decoded replays into a table that
// keeps every invariant (`Table::check`); and that table's snapshot
// replays into an equal table.
#[allow(dead_code)]
mod fuzz_one {
    use spindle_core::record::decode;
    use spindle_core::{Config, Records, Table, Time};

    /// Runs the check; panics on a broken invariant.
    pub fn run(data: &[u8]) {
        let now = Time::from_secs(1_700_000_000);
        let mut t = Table::new(Config::default());
        for rec in decode(data) {
            match rec {
                Ok(r) => t.apply(r),
                Err(_) => break,
            }
        }
        let mut out = Records::new();
        t.finish_replay(now, &mut out);
        if let Err(e) = t.check() {
            panic!("after replay: {e}");
        }
        // Time passes: every timer fires without breaking anything.
        t.tick(now.plus_secs(1 << 20), &mut out);
        if let Err(e) = t.check() {
            panic!("after tick: {e}");
        }
        let mut snap = Records::new();
        t.snapshot(&mut snap);
        let mut u = Table::new(Config::default());
        if let Err(e) = u.replay(snap.bytes()) {
            panic!("a snapshot does not decode: {e}");
        }
        u.finish_replay(now, &mut Records::disabled());
        if let Err(e) = u.check() {
            panic!("after replaying the snapshot: {e}");
        }
        // Queues without jobs or a policy carry no state, so a snapshot
        // does not keep them; everything else must match.
        let (mut a, mut b) = (t.totals(), u.totals());
        a.queues = 0;
        b.queues = 0;
        assert_eq!(a, b, "a snapshot rebuilds the same totals");
        assert!(t.job_ids().eq(u.job_ids()), "a snapshot rebuilds the same jobs");
    }
}
