//! Daemon producer: puts N jobs into a running `spindled` (or beanstalkd)
//! with pipelined `put`s and prints the rate.
//!
//! ```text
//! spindled --socket /tmp/s.sock &
//! cargo run --release --example daemon_producer -- /tmp/s.sock 100000
//! cargo run --release --example daemon_worker -- /tmp/s.sock 100000
//! ```
//!
//! Arguments: the server address (a socket path, `unix:PATH` or
//! `HOST:PORT`; default: the socket `spindled` uses by default) and the
//! number of jobs (default 100,000). Jobs go to the tube `daemon-demo`.
//! Each chunk of 1,000 puts is one write; the replies are read afterwards
//! in order, so the producer pays one round trip per chunk, not per job.

use spindle::client::{default_socket, Client};
use std::error::Error;
use std::time::{Duration, Instant};

const TUBE: &str = "daemon-demo";
const CHUNK: u64 = 1_000;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| default_socket().display().to_string());
    let jobs: u64 = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("job count {n:?}: {e}"))?,
        None => 100_000,
    };
    let mut client = Client::connect(&addr)?;
    client.use_tube(TUBE)?;

    let started = Instant::now();
    let (mut inserted, mut failed) = (0u64, 0u64);
    let mut next = 0u64;
    while next < jobs {
        let n = CHUNK.min(jobs - next);
        let bodies: Vec<Vec<u8>> =
            (next..next + n).map(|i| format!("job {i}").into_bytes()).collect();
        for result in client.put_many(0, Duration::ZERO, Duration::from_secs(60), &bodies)? {
            match result {
                Ok(_) => inserted += 1,
                Err(e) => {
                    if failed == 0 {
                        eprintln!("first failed put: {e}");
                    }
                    failed += 1;
                }
            }
        }
        next += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "put {inserted} jobs into {TUBE:?} on {} in {:.1} ms: {:.0} jobs/s ({failed} failed)",
        client.addr(),
        secs * 1e3,
        inserted as f64 / secs
    );
    Ok(())
}
