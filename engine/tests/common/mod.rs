//! Helpers shared by the engine's integration tests (`mod common;`).

use spindle_engine::{Engine, Stats};
use std::time::{Duration, Instant};

/// Polls `stats()` until `done` holds and returns those stats; fails the
/// test with `what` and the last stats after `limit`, a guard against hangs
/// (never a synchronisation device: the condition is what is waited for).
/// Each `stats()` call waits for the shards to publish; the 1 ms pause only
/// keeps an idle engine from being woken in a tight loop.
pub fn wait_stats(
    engine: &Engine,
    limit: Duration,
    what: &str,
    done: impl Fn(&Stats) -> bool,
) -> Stats {
    let deadline = Instant::now() + limit;
    loop {
        let s = engine.stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
