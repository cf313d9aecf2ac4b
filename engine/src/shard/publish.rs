//! Publishing a shard's stats snapshot for `Engine::stats`.

use super::Shard;
use crate::stats::{QueueStats, Snapshot};
use std::time::Instant;

impl Shard {
    pub(super) fn publish(&mut self) {
        let mut queues = std::collections::BTreeMap::new();
        let mut counts = std::collections::BTreeMap::new();
        let mut limits = std::collections::BTreeMap::new();
        self.release_counts();
        let lane = self.sh.lane.count();
        for (name, &q) in &self.qids {
            let mut v = self.table.queue_view(q).unwrap_or_default();
            if let Some((_, n)) = lane.filter(|l| l.0 == q) {
                v.ready += n as u64;
            }
            let (completed, failed, mut c) = self
                .qs
                .get(q.0 as usize)
                .map(|x| (x.completed, x.failed, x.counts))
                .unwrap_or_default();
            // Arrivals: the lane's admissions that stayed in the lane, and
            // every job that became ready in the table.
            c.arrived += v.counters.readied;
            queues.insert(
                name.to_string(),
                QueueStats {
                    ready: v.ready,
                    delayed: v.delayed,
                    running: v.reserved,
                    buried: v.buried,
                    completed,
                    failed,
                    desired_workers: 0,
                },
            );
            counts.insert(name.to_string(), c);
            if self.table.is_limited(q) {
                if let Some(l) = self.table.limits(q) {
                    limits.insert(name.to_string(), l);
                }
            }
        }
        let snap = Snapshot {
            queues,
            counts,
            limits,
            shard: crate::stats::ShardStats {
                pinned_core: self.pinned_core,
                jobs_run: self.jobs_run,
                jobs_stolen: self.jobs_stolen,
                jobs_owned: self.table.totals().jobs,
            },
            dispatch: self.dispatch.clone(),
            run_time: self.run_time.clone(),
            end_to_end: self.end_to_end.clone(),
        };
        let mut g = self.sh.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = self.served;
        g.1 = snap;
        drop(g);
        self.sh.snapshot_cv.notify_all();
        self.published_at = Instant::now();
    }
}
