//! The alternative to appending directly: producers hand records to one
//! owner thread (the shard thread) over a crossbeam channel; the owner
//! appends each and replies with its LSN over the producer's own channel,
//! and the producer waits for that reply before sending the next record.
//!
//! Compared with `append::append_run` on the same number of threads this
//! prices the design decision "producers append directly vs hand records to
//! the shard thread".

use crate::append::KIND;
use crate::latency::{Latency, Percentiles};
use crate::setup::WalSetup;
use crate::BoxResult;
use crossbeam_channel::{bounded, Receiver, Sender};
use spindle_wal::SyncPolicy;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Payload size of the handoff run.
pub const PAYLOAD: usize = 64;

/// One record on its way to the owner: the producer's index and the bytes.
type Msg = (usize, [u8; PAYLOAD]);

/// Results of a handoff run.
#[derive(Debug, Clone)]
pub struct HandoffRun {
    /// Producer threads.
    pub producers: usize,
    /// Records appended.
    pub records: u64,
    /// Wall time.
    pub secs: f64,
    /// Producer-side send → reply latency.
    pub roundtrip: Percentiles,
}

impl HandoffRun {
    /// Records appended per second.
    pub fn per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

/// Runs `producers` producers against one owner for `duration`.
pub fn handoff_run(
    dir: &Path,
    setup: &WalSetup,
    producers: usize,
    duration: Duration,
) -> BoxResult<HandoffRun> {
    let wal = setup.open(dir, SyncPolicy::Never)?;
    let (to_owner, inbox) = bounded::<Msg>(1024);
    let (reply_txs, reply_rxs): (Vec<Sender<u64>>, Vec<Receiver<u64>>) =
        (0..producers).map(|_| bounded::<u64>(1)).unzip();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (records, lat) = std::thread::scope(|s| -> BoxResult<(u64, Latency)> {
        let wal = &wal;
        let stop = &stop;
        let owner = s.spawn(move || -> BoxResult<u64> {
            let mut app = wal.appender();
            let mut n = 0u64;
            // Ends when every producer has dropped its sender.
            for (from, payload) in inbox.iter() {
                let lsn = app.append(KIND, &payload)?;
                n += 1;
                if reply_txs[from].send(lsn).is_err() {
                    return Err("producer vanished".into());
                }
            }
            Ok(n)
        });
        let handles: Vec<_> = reply_rxs
            .into_iter()
            .enumerate()
            .map(|(id, replies)| {
                let tx = to_owner.clone();
                s.spawn(move || producer(id, &tx, &replies, stop))
            })
            .collect();
        drop(to_owner);
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let mut all = Latency::new()?;
        for h in handles {
            all.merge(&h.join().map_err(|_| "producer panicked")??)?;
        }
        let n = owner.join().map_err(|_| "owner panicked")??;
        Ok((n, all))
    })?;
    let secs = start.elapsed().as_secs_f64();
    wal.close()?;
    Ok(HandoffRun { producers, records, secs, roundtrip: lat.percentiles() })
}

fn producer(
    id: usize,
    tx: &Sender<Msg>,
    replies: &Receiver<u64>,
    stop: &AtomicBool,
) -> BoxResult<Latency> {
    let mut lat = Latency::new()?;
    let payload = [id as u8 ^ 0x5A; PAYLOAD];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        tx.send((id, payload)).map_err(|_| "owner gone")?;
        let lsn = replies.recv().map_err(|_| "owner gone")?;
        lat.record(t.elapsed());
        std::hint::black_box(lsn);
    }
    Ok(lat)
}
