//! One queue's FIFOs of fresh jobs, one per priority, in priority order.
//!
//! Most queues use one to a few priorities: then the FIFOs sit in a small
//! sorted `Vec`, found by a linear scan of a cache line or two. A client
//! that uses many distinct priorities (timestamps, say) gets a `BTreeMap`
//! once the `Vec` would pass [`FEW`] entries, so no operation is ever
//! linear in the number of priorities beyond that.

use std::collections::BTreeMap;

use crate::job::List;

/// Most priorities kept in the `Vec` form.
const FEW: usize = 16;

/// The FIFOs.
#[derive(Debug)]
pub(crate) enum Fifos {
    Few(Vec<(u32, List)>),
    Many(BTreeMap<u32, List>),
}

impl Default for Fifos {
    fn default() -> Self {
        Fifos::Few(Vec::new())
    }
}

impl Fifos {
    /// The FIFO of priority `pri`, made if missing.
    #[inline]
    pub(crate) fn entry(&mut self, pri: u32) -> &mut List {
        // One scan finds the FIFO or where it goes.
        let (i, hit, full) = match self {
            Fifos::Few(v) => {
                let i = v.iter().position(|e| e.0 >= pri).unwrap_or(v.len());
                (i, v.get(i).is_some_and(|e| e.0 == pri), v.len() >= FEW)
            }
            Fifos::Many(_) => (0, false, false),
        };
        if !hit && full {
            self.make_room();
            return self.find_or_make(pri);
        }
        match self {
            Fifos::Few(v) => {
                if !hit {
                    v.insert(i, (pri, List::EMPTY));
                }
                &mut v[i].1
            }
            Fifos::Many(m) => m.entry(pri).or_insert(List::EMPTY),
        }
    }

    /// A full `Vec` drops its empty FIFOs, or becomes a map.
    fn make_room(&mut self) {
        if let Fifos::Few(v) = self {
            v.retain(|e| e.1.len > 0);
            if v.len() >= FEW {
                let map: BTreeMap<u32, List> = v.drain(..).collect();
                *self = Fifos::Many(map);
            }
        }
    }

    fn find_or_make(&mut self, pri: u32) -> &mut List {
        match self {
            Fifos::Few(v) => {
                let i = v.iter().position(|e| e.0 >= pri).unwrap_or(v.len());
                if v.get(i).is_none_or(|e| e.0 != pri) {
                    v.insert(i, (pri, List::EMPTY));
                }
                &mut v[i].1
            }
            Fifos::Many(m) => m.entry(pri).or_insert(List::EMPTY),
        }
    }

    /// The FIFO of priority `pri`, if any.
    #[inline]
    pub(crate) fn get_mut(&mut self, pri: u32) -> Option<&mut List> {
        match self {
            Fifos::Few(v) => v.iter_mut().find(|e| e.0 == pri).map(|e| &mut e.1),
            Fifos::Many(m) => m.get_mut(&pri),
        }
    }

    /// Drops the FIFO of `pri` if it is empty and the map form holds it
    /// (the `Vec` form keeps empty FIFOs until it needs the room).
    pub(crate) fn drop_empty(&mut self, pri: u32) {
        if let Fifos::Many(m) = self {
            if m.get(&pri).is_some_and(|l| l.len == 0) {
                m.remove(&pri);
            }
        }
    }

    /// The most urgent non-empty FIFO.
    #[inline]
    pub(crate) fn first(&self) -> Option<(u32, &List)> {
        match self {
            Fifos::Few(v) => v.iter().find(|e| e.1.len > 0).map(|e| (e.0, &e.1)),
            Fifos::Many(m) => m.iter().find(|e| e.1.len > 0).map(|(&p, l)| (p, l)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_priorities_stay_sorted_and_many_switch_to_a_map() {
        let mut f = Fifos::default();
        for pri in [5u32, 1, 9, 1, 3] {
            f.entry(pri).len += 1;
        }
        assert_eq!(f.first().map(|e| e.0), Some(1));
        if let Fifos::Few(v) = &f {
            assert_eq!(v.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 3, 5, 9]);
        } else {
            panic!("four priorities are few");
        }
        if let Some(l) = f.get_mut(1) {
            l.len = 0;
        }
        assert_eq!(f.first().map(|e| e.0), Some(3));
        for pri in 100..140 {
            f.entry(pri).len += 1;
        }
        assert!(matches!(f, Fifos::Many(_)));
        assert_eq!(f.first().map(|e| e.0), Some(3));
        if let Some(l) = f.get_mut(3) {
            l.len = 0;
        }
        f.drop_empty(3);
        assert_eq!(f.first().map(|e| e.0), Some(5));
    }
}
