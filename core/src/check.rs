//! The table's invariants, checked on demand (tests, fuzzing, debug
//! builds of front-ends): every live job is in exactly the structure its
//! state says, and every counter matches a count.

use crate::job::{Place, State, NIL};
use crate::table::Table;
use crate::time::Time;

impl Table {
    /// Checks every invariant; the error names the first one broken.
    pub fn check(&self) -> Result<(), String> {
        let (mut ready, mut reserved, mut delayed, mut buried, mut bytes) = (0u64, 0, 0, 0, 0);
        let mut per_queue = vec![(0u64, 0u64, 0u64, 0u64, 0u64); self.queues.len()];
        for (id, s) in self.ids.iter() {
            let j = self.slab.get(s);
            if !j.live || j.id != id {
                return Err(format!("id {id} maps to slot {s} holding {} (live {})", j.id, j.live));
            }
            let Some(x) = self.q(j.queue) else {
                return Err(format!("job {id} is on missing queue {}", j.queue));
            };
            bytes += j.payload.bytes().len() as u64;
            let pq = &mut per_queue[j.queue as usize];
            pq.4 += 1;
            match j.state {
                State::Ready => {
                    ready += 1;
                    pq.0 += 1;
                    if j.place == Place::None {
                        return Err(format!("ready job {id} is in no ready structure"));
                    }
                }
                State::Reserved => {
                    reserved += 1;
                    pq.1 += 1;
                }
                State::Delayed => {
                    delayed += 1;
                    pq.2 += 1;
                    if !self.delayed.contains(&(Time(j.at), id))
                        || !x.delayed.contains(&(Time(j.at), id))
                    {
                        return Err(format!("delayed job {id} is not on the timer sets"));
                    }
                }
                State::Buried => {
                    buried += 1;
                    pq.3 += 1;
                }
            }
            if j.state != State::Ready && j.place != Place::None {
                return Err(format!("{:?} job {id} is still in a ready structure", j.state));
            }
            if let Some(k) = j.unique() {
                if x.uniques.get(k) != Some(&id) {
                    return Err(format!("job {id}'s unique key {k:?} is not indexed to it"));
                }
            }
        }
        let want = (ready, reserved, delayed, buried, bytes);
        let have = (self.ready_n, self.reserved_n, self.delayed_n, self.buried_n, self.bytes);
        if want != have {
            return Err(format!(
                "totals (ready, reserved, delayed, buried, bytes) {have:?}, counted {want:?}"
            ));
        }
        if self.delayed.len() as u64 != delayed {
            return Err(format!("{} timer entries for {delayed} delayed jobs", self.delayed.len()));
        }
        let mut held = 0u64;
        for (h, hs) in self.holders.iter().enumerate() {
            let mut s = hs.reserved.head;
            let mut n = 0;
            while s != NIL {
                let j = self.slab.get(s);
                if j.state != State::Reserved || j.holder as usize != h {
                    return Err(format!("holder {h} lists job {} that it does not hold", j.id));
                }
                n += 1;
                s = j.next;
            }
            if n != hs.reserved.len {
                return Err(format!("holder {h} lists {n} jobs but counts {}", hs.reserved.len));
            }
            held += u64::from(n);
        }
        if held != reserved {
            return Err(format!("holders list {held} jobs, {reserved} are reserved"));
        }
        for (i, x) in self.queues.iter().enumerate() {
            let Some(x) = x else { continue };
            let (r, v, d, b, jobs) = per_queue[i];
            let mut n = 0;
            let mut s = x.buried.head;
            while s != NIL {
                n += 1;
                s = self.slab.get(s).next;
            }
            let have =
                (x.ready.n, x.reserved, x.delayed.len() as u64, u64::from(x.buried.len), x.jobs);
            if have != (r, v, d, b, jobs) || n != b {
                return Err(format!(
                    "queue {}: (ready, reserved, delayed, buried, jobs) {have:?}, counted {:?}",
                    x.name,
                    (r, v, d, b, jobs)
                ));
            }
            if x.uniques.len() as u64 > jobs {
                return Err(format!("queue {}: {} keys for {jobs} jobs", x.name, x.uniques.len()));
            }
        }
        Ok(())
    }
}
