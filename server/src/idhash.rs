//! The hash of the keys the daemon hands out itself: connection ids.
//!
//! The standard map's SipHash resists keys an attacker picks, at ~100
//! instructions a lookup, and every command looks its connection up once.
//! Connection ids are the reactor's own small integers, so a multiply by
//! an odd constant (Fibonacci hashing) spreads them: it is a bijection on
//! the low bits the map indexes by, and mixes the high bits it tags
//! entries with.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// 2^64 / φ, odd.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hasher ([`IdHashMap`]'s).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by ids the daemon assigns.
pub(crate) type IdHashMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_hash_apart_in_the_low_and_the_high_bits() {
        let b = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (0..4096usize).map(|i| b.hash_one(i)).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        assert_eq!(low.len(), 4096, "a bijection on the low 12 bits");
        let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(high.len(), 128, "every 7-bit tag is used");
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut m: IdHashMap<usize, usize> = IdHashMap::default();
        for i in (0..10_000).step_by(7) {
            m.insert(i, i * 2);
        }
        assert_eq!(m.get(&700), Some(&1400));
        assert_eq!(m.get(&701), None);
        assert_eq!(m.len(), 1429);
    }
}
