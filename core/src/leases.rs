//! Lease deadlines: a min-heap of (deadline, id, token), removed lazily.
//!
//! A `BinaryHeap` cannot take out an entry whose lease ended early, so
//! ended leases used to stay until a clean-up pass (`Table`'s
//! `compact_leases`) or the tick that reached their deadline. Most leases
//! end soon after they are taken, before any later lease: then the ended
//! one is the heap's last array element (deadlines only grow, so a new
//! entry stays where it was pushed), and dropping a heap's last element
//! always leaves a heap. [`Leases::forget`] does that in O(1); entries it
//! cannot drop stay stale, as before.

use crate::time::Time;

/// One lease: its deadline, the job's id and the lease's token.
pub(crate) type Entry = (Time, u64, u32);

/// The heap, smallest deadline first (ties by id, then token).
#[derive(Debug, Default)]
pub(crate) struct Leases {
    heap: Vec<Entry>,
}

impl Leases {
    /// Entries, stale ones included.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest entry.
    #[inline]
    pub(crate) fn peek(&self) -> Option<&Entry> {
        self.heap.first()
    }

    /// Adds an entry.
    #[inline]
    pub(crate) fn push(&mut self, e: Entry) {
        self.heap.push(e);
        let mut i = self.heap.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent] <= self.heap[i] {
                break;
            }
            self.heap.swap(parent, i);
            i = parent;
        }
    }

    /// Takes out the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<Entry> {
        let last = self.heap.pop()?;
        let Some(first) = self.heap.first_mut() else { return Some(last) };
        let top = std::mem::replace(first, last);
        self.sift_down(0);
        Some(top)
    }

    /// The lease `e` ended: drops its entry if that is the last one pushed
    /// and still in place (the common case), else leaves it stale.
    #[inline]
    pub(crate) fn forget(&mut self, e: Entry) {
        if self.heap.last() == Some(&e) {
            self.heap.pop();
        }
    }

    /// Keeps the entries `keep` accepts.
    pub(crate) fn retain(&mut self, keep: impl FnMut(&Entry) -> bool) {
        self.heap.retain(keep);
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r] < self.heap[l] { r } else { l };
            if self.heap[i] <= self.heap[c] {
                break;
            }
            self.heap.swap(i, c);
            i = c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn pops_in_the_order_of_a_binary_heap() {
        let mut a = Leases::default();
        let mut b = BinaryHeap::new();
        let mut x = 88172645463325252u64;
        for step in 0..5_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 5 {
                0 | 1 => {
                    let e = (Time(x % 97), x % 13, (x % 3) as u32);
                    a.push(e);
                    b.push(Reverse(e));
                }
                2 => assert_eq!(a.pop(), b.pop().map(|r| r.0)),
                3 => {
                    // An ended lease: only the last one pushed goes.
                    let e = (Time(1_000 + step), step, 1);
                    a.push(e);
                    a.forget(e);
                    a.forget((Time(0), 0, 0));
                }
                _ => {
                    let keep = |e: &Entry| e.1 % 2 == 0;
                    a.retain(keep);
                    b.retain(|r| keep(&r.0));
                }
            }
            assert_eq!(a.len(), b.len());
            assert_eq!(a.peek(), b.peek().map(|r| &r.0));
        }
        while let Some(e) = b.pop() {
            assert_eq!(a.pop(), Some(e.0));
        }
        assert_eq!(a.pop(), None);
    }
}
