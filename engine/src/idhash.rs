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
