//! Maps keyed by file descriptor.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::RawFd;

/// A `HashMap` keyed by fd, hashed by one multiplication instead of SipHash.
///
/// fds are small integers the kernel hands out, not keys an attacker picks, so SipHash's
/// flooding resistance buys nothing. The multiplication (Fibonacci hashing) spreads
/// consecutive fds over the high bits that hashbrown's control bytes use.
// NOTE: with SipHash, the loop's watcher maps cost about 1,000 more instructions per sock_*
// echo round trip (callgrind: 35.9k to 34.9k).
pub type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;

/// The hasher of [`FdMap`]; see there.
#[derive(Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than an fd is hashed; still a valid hash.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_i32(&mut self, fd: i32) {
        self.0 = u64::from(fd as u32);
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_fds_differ_in_the_high_bits() {
        let build = BuildHasherDefault::<FdHasher>::default();
        let tops: std::collections::HashSet<u64> =
            (0..128).map(|fd: RawFd| build.hash_one(fd) >> 57).collect();
        assert!(
            tops.len() > 64,
            "only {} distinct top-7-bit tags",
            tops.len()
        );
    }

    #[test]
    fn works_as_a_map() {
        let mut map = FdMap::default();
        for fd in 0..1000 {
            map.insert(fd, fd * 2);
        }
        assert!((0..1000).all(|fd| map[&fd] == fd * 2));
        assert_eq!(map.remove(&7), Some(14));
        assert!(!map.contains_key(&7));
    }
}
