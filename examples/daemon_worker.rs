//! Daemon worker: reserves and deletes jobs from a running `spindled` (or
//! beanstalkd) and prints the rate. Run `daemon_producer` first.
//!
//! ```text
//! cargo run --release --example daemon_worker -- /tmp/s.sock 100000
//! ```
//!
//! Arguments: the server address (default: spindled's default socket) and
//! how many jobs to take (default: until the tube `daemon-demo` has been
//! empty for one second). On spindled it takes up to 1,000 jobs per
//! `reserve-batch` and deletes them in one pipelined write; on plain
//! beanstalkd it does one `reserve` and one `delete` per job.

use spindle::client::{default_socket, Client};
use std::error::Error;
use std::time::{Duration, Instant};

const TUBE: &str = "daemon-demo";
const IDLE: Duration = Duration::from_secs(1);

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| default_socket().display().to_string());
    let limit: u64 = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("job count {n:?}: {e}"))?,
        None => u64::MAX,
    };
    let mut client = Client::connect(&addr)?;
    client.watch(TUBE)?;
    client.ignore("default")?;
    let batches = client.supports_extensions()?;

    let mut done = 0u64;
    let mut started = None;
    while done < limit {
        let want = u32::try_from((limit - done).min(1000)).unwrap_or(1000);
        let jobs = if batches {
            client.reserve_batch(want, IDLE)?
        } else {
            client.reserve_with_timeout(IDLE)?.into_iter().collect()
        };
        if jobs.is_empty() {
            break;
        }
        // The clock starts at the first job, not while waiting for it.
        started.get_or_insert_with(Instant::now);
        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        for result in client.delete_many(&ids)? {
            result?;
            done += 1;
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    println!(
        "reserved and deleted {done} jobs from {TUBE:?} on {} in {:.1} ms: {rate:.0} jobs/s{}",
        client.addr(),
        secs * 1e3,
        if batches { " (reserve-batch)" } else { " (one reserve per job)" }
    );
    Ok(())
}
