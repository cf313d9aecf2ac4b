//! Job id → slot, as a dense, id-indexed map.
//!
//! Ids are handed out in increasing order, so the live ones cluster in a
//! window that slides up. The map is a deque of 1,024-id chunks starting
//! at the lowest chunk still holding a live id: a lookup is a subtraction
//! and two loads, with none of a hash map's probing (with 100,000 jobs
//! waiting, a hash lookup cost the table 2-3 cache misses per operation).
//! A chunk whose ids are all gone is freed (kept for reuse, up to a few),
//! so a long-lived job in an old chunk costs 8 bytes per later chunk, not
//! 4 KiB. An id that would stretch the window past [`MAX_CHUNKS`] chunks
//! (2^30 ids; 8 MiB of chunk pointers) goes to a plain hash map instead:
//! still correct, only slower, and a damaged or hostile id cannot make the
//! window allocate without bound.

use std::collections::{HashMap, VecDeque};

const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
const NONE: u32 = u32::MAX;
/// Empty chunks kept for reuse (a steady put/complete load moves through
/// one chunk every 1,024 jobs).
const SPARE: usize = 4;
/// The most chunks the dense window spans.
const MAX_CHUNKS: u64 = 1 << 20;

struct Chunk {
    slots: [u32; CHUNK],
    live: u32,
}

/// The map. Slot values are below `u32::MAX`.
pub(crate) struct IdMap {
    /// Chunk number of `chunks[0]`.
    base: u64,
    chunks: VecDeque<Option<Box<Chunk>>>,
    spare: Vec<Box<Chunk>>,
    /// Ids outside the window.
    far: HashMap<u64, u32>,
    len: usize,
}

impl IdMap {
    pub(crate) fn new() -> IdMap {
        IdMap { base: 0, chunks: VecDeque::new(), spare: Vec::new(), far: HashMap::new(), len: 0 }
    }

    /// Live ids.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn split(id: u64) -> (u64, usize) {
        (id >> CHUNK_BITS, (id & (CHUNK as u64 - 1)) as usize)
    }

    /// The slot of `id`.
    #[inline]
    pub(crate) fn get(&self, id: u64) -> Option<u32> {
        let (c, i) = Self::split(id);
        let dense = c
            .checked_sub(self.base)
            .and_then(|k| usize::try_from(k).ok())
            .and_then(|k| self.chunks.get(k))
            .and_then(|ch| ch.as_ref())
            .map(|ch| ch.slots[i])
            .filter(|&s| s != NONE);
        if dense.is_none() && !self.far.is_empty() {
            return self.far.get(&id).copied();
        }
        dense
    }

    /// Whether chunk `c` is inside the window, or can join it.
    fn fits(&self, c: u64) -> bool {
        if self.chunks.is_empty() {
            return true;
        }
        let lo = self.base.min(c);
        let hi = (self.base + self.chunks.len() as u64 - 1).max(c);
        hi - lo < MAX_CHUNKS
    }

    /// Maps `id` to `slot` (replacing any earlier slot of it).
    #[inline]
    pub(crate) fn insert(&mut self, id: u64, slot: u32) {
        let (c, i) = Self::split(id);
        // The common case: the id's chunk is in the window already.
        if self.far.is_empty() {
            let k = c.checked_sub(self.base).and_then(|k| usize::try_from(k).ok());
            if let Some(Some(chunk)) = k.and_then(|k| self.chunks.get_mut(k)) {
                if chunk.slots[i] == NONE {
                    chunk.live += 1;
                    self.len += 1;
                }
                chunk.slots[i] = slot;
                return;
            }
        }
        self.insert_slow(id, slot);
    }

    /// [`IdMap::insert`] when the id's chunk is missing or ids are far.
    fn insert_slow(&mut self, id: u64, slot: u32) {
        let (c, i) = Self::split(id);
        if !self.fits(c) || (!self.far.is_empty() && self.far.contains_key(&id)) {
            if self.far.insert(id, slot).is_none() {
                self.len += 1;
            }
            return;
        }
        // The newest chunk is kept while empty (see `remove`); it goes when
        // a newer one is needed.
        if !self.chunks.is_empty() && c >= self.base + self.chunks.len() as u64 {
            if let Some(last) = self.chunks.back_mut() {
                if last.as_ref().is_some_and(|ch| ch.live == 0) {
                    if let Some(done) = last.take() {
                        if self.spare.len() < SPARE {
                            self.spare.push(done);
                        }
                    }
                }
            }
            self.trim();
        }
        if self.chunks.is_empty() {
            self.base = c;
        }
        while c < self.base {
            self.chunks.push_front(None);
            self.base -= 1;
        }
        let Ok(k) = usize::try_from(c - self.base) else { return };
        while self.chunks.len() <= k {
            self.chunks.push_back(None);
        }
        let spare = &mut self.spare;
        let chunk = self.chunks[k].get_or_insert_with(|| {
            spare.pop().unwrap_or_else(|| Box::new(Chunk { slots: [NONE; CHUNK], live: 0 }))
        });
        if chunk.slots[i] == NONE {
            chunk.live += 1;
            self.len += 1;
        }
        chunk.slots[i] = slot;
    }

    /// Unmaps `id`, returning its slot.
    #[inline]
    pub(crate) fn remove(&mut self, id: u64) -> Option<u32> {
        // `HashMap::remove` hashes the key even when the map is empty.
        if !self.far.is_empty() {
            if let Some(s) = self.far.remove(&id) {
                self.len -= 1;
                return Some(s);
            }
        }
        let (c, i) = Self::split(id);
        let k = usize::try_from(c.checked_sub(self.base)?).ok()?;
        let entry = self.chunks.get_mut(k)?;
        let chunk = entry.as_mut()?;
        let s = std::mem::replace(&mut chunk.slots[i], NONE);
        if s == NONE {
            return None;
        }
        chunk.live -= 1;
        self.len -= 1;
        // The newest chunk stays even when empty: a steady load that puts
        // and completes one job at a time would otherwise free and take
        // back a chunk every cycle.
        if chunk.live == 0 && k + 1 < self.chunks.len() {
            if let Some(done) = self.chunks[k].take() {
                if self.spare.len() < SPARE {
                    self.spare.push(done);
                }
            }
            self.trim();
        }
        Some(s)
    }

    /// Drops the freed chunks at both ends of the window.
    fn trim(&mut self) {
        while matches!(self.chunks.front(), Some(None)) {
            self.chunks.pop_front();
            self.base += 1;
        }
        while matches!(self.chunks.back(), Some(None)) {
            self.chunks.pop_back();
        }
    }

    /// Every (id, slot) with id at least `start`, in id order.
    pub(crate) fn iter_from(&self, start: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let first = (start >> CHUNK_BITS).saturating_sub(self.base);
        let skip = usize::try_from(first).unwrap_or(usize::MAX);
        let base = self.base;
        let dense = self.chunks.iter().enumerate().skip(skip).flat_map(move |(k, ch)| {
            ch.iter().flat_map(move |ch| {
                ch.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| s != NONE)
                    .map(move |(i, &s)| (((base + k as u64) << CHUNK_BITS) + i as u64, s))
            })
        });
        let mut far: Vec<(u64, u32)> =
            self.far.iter().filter(|(&k, _)| k >= start).map(|(&k, &v)| (k, v)).collect();
        far.sort_unstable();
        Merge { a: dense.peekable(), b: far.into_iter().peekable() }.filter(move |x| x.0 >= start)
    }

    /// Every (id, slot), in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.iter_from(0)
    }
}

/// Two id-ordered iterators merged in id order.
struct Merge<A: Iterator<Item = (u64, u32)>, B: Iterator<Item = (u64, u32)>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = (u64, u32)>, B: Iterator<Item = (u64, u32)>> Iterator for Merge<A, B> {
    type Item = (u64, u32);
    fn next(&mut self) -> Option<(u64, u32)> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if y.0 < x.0 => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn behaves_like_a_map_over_sparse_and_dense_ids() {
        let mut m = IdMap::new();
        let mut model = BTreeMap::new();
        let mut x = 12345u64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = match step % 3 {
                0 => u64::from(step),
                1 => x % 50_000,
                _ => 1_000_000 + x % 3,
            };
            if x % 3 == 0 {
                assert_eq!(m.remove(id), model.remove(&id));
            } else {
                m.insert(id, step);
                model.insert(id, step);
            }
            assert_eq!(m.get(id), model.get(&id).copied());
            assert_eq!(m.len(), model.len());
        }
        let all: Vec<_> = m.iter().collect();
        let want: Vec<_> = model.iter().map(|(&k, &v)| (k, v)).collect();
        assert_eq!(all, want);
        for id in want.iter().map(|x| x.0) {
            m.remove(id);
        }
        assert_eq!(m.len(), 0);
        assert!(m.chunks.iter().flatten().count() <= 1, "every chunk but the newest freed");
        assert_eq!(m.get(5), None);
    }

    #[test]
    fn ids_far_apart_do_not_stretch_the_window() {
        let mut m = IdMap::new();
        m.insert(1, 1);
        m.insert(u64::MAX, 2);
        m.insert(1 << 40, 3);
        m.insert(2, 4);
        assert!(m.chunks.len() <= 1);
        assert_eq!(m.get(u64::MAX), Some(2));
        assert_eq!(m.get(1 << 40), Some(3));
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(1, 1), (2, 4), (1 << 40, 3), (u64::MAX, 2)]);
        assert_eq!(m.remove(u64::MAX), Some(2));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn a_long_lived_low_id_costs_a_pointer_per_later_chunk() {
        let mut m = IdMap::new();
        m.insert(1, 1);
        for id in 2..100_000u64 {
            m.insert(id, 7);
            m.remove(id);
        }
        assert_eq!(m.get(1), Some(1));
        assert!(m.chunks.iter().filter(|c| c.is_some()).count() <= 2);
    }
}
