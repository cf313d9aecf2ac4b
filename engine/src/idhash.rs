//! A fast hasher for the engine-generated `u64` job ids that key a shard's
//! job table. SipHash (std's default) costs ~20 ns per lookup and guards
//! against attacker-chosen keys; ids are assigned by the engine, so a
//! multiplicative hash (the Fibonacci constant 2^64/φ, as in Knuth, TAOCP
//! vol. 3, §6.4) spreads them well at ~1 ns.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one `u64` by multiplying with 2^64/φ.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u64 keys; a correct fallback for anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `HashMap<u64, V, IdBuild>`: a map keyed by job id.
pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;

/// A hasher for ids handed out one after another (the daemon's job ids:
/// 1, 2, 3, ...). The low 57 bits are the id itself, so consecutive ids
/// land in consecutive buckets of a hashbrown table (which takes the
/// bucket from the low bits): inserting in id order touches memory in
/// order, where a multiplicative hash sends every insert to a random cache
/// line of a table of millions (measured: `put-batch` spent ~30% of the
/// daemon's CPU in `HashMap::insert` with [`IdHasher`]). The top 7 bits,
/// which hashbrown compares in its SIMD tag match, come from the
/// multiplicative hash, so tags still differ between neighbours. Not for
/// ids with a stride (the engine's per-shard ids would use a fraction of
/// the buckets).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = IdHasher(self.0);
        h.write(bytes);
        self.0 = h.finish();
    }

    fn write_u64(&mut self, n: u64) {
        const LOW: u64 = (1 << 57) - 1;
        let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = (n & LOW) | (mixed & !LOW);
    }
}

/// `HashMap<u64, V, SeqBuild>`: a map keyed by sequential ids.
pub(crate) type SeqBuild = BuildHasherDefault<SeqHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    #[test]
    fn seq_hash_keeps_the_id_in_the_low_bits_and_mixes_the_tag() {
        let b = SeqBuild::default();
        let tags: std::collections::HashSet<u64> =
            (1..=128u64).map(|id| b.hash_one(id) >> 57).collect();
        for id in [1u64, 2, 1000, (1 << 57) - 1] {
            assert_eq!(b.hash_one(id) & ((1 << 57) - 1), id);
        }
        // Neighbours get different 7-bit tags (not all equal, as an
        // identity hash would give).
        assert!(tags.len() > 64, "{} distinct tags", tags.len());
    }

    #[test]
    fn a_seq_map_finds_what_it_holds() {
        let mut m: HashMap<u64, u64, SeqBuild> = HashMap::default();
        for id in 1..=100_000u64 {
            m.insert(id, id * 2);
        }
        for id in (1..=100_000u64).step_by(3) {
            m.remove(&id);
        }
        for id in 1..=100_000u64 {
            let want = if (id - 1) % 3 == 0 { None } else { Some(id * 2) };
            assert_eq!(m.get(&id).copied(), want, "{id}");
        }
    }
}
