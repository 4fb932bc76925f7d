//! The dedupe set of an ingest: the 128-bit fingerprint of every distinct
//! address seen so far, with the line of its first row.
//!
//! It is the one structure of an ingest that grows with the list, so it is
//! kept compact (issue 11: a `HashMap<u128, u64>` took 33 bytes a slot, with
//! 2^21 slots for 1M addresses plus both tables while it doubled: about
//! 100 MB at its peak). Here a slot is 16 bytes (96 bits of the fingerprint
//! and a 32-bit line), the table is open-addressed with linear probing, kept
//! between 53% and 80% full (it grows by half, not double), and split in 64
//! shards so that growing copies 1/64 of it at a time: 20 to 30 bytes an
//! address, about 25 MB for 1M.

/// Shards: a growing shard holds two tables at once, so the peak stays
/// within 1/64 of the total.
const SHARDS: usize = 64;
/// The line stored for lines that do not fit 32 bits; the real line is in
/// [`Seen::big`].
const BIG_LINE: u32 = u32::MAX;

/// One slot: the fingerprint's upper 96 bits (never all zero: zero is an
/// empty slot) and the first line.
#[derive(Clone, Copy, Default)]
struct Slot {
    tag: [u32; 3],
    line: u32,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.tag == [0; 3]
    }
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    len: usize,
}

/// Addresses seen so far, by fingerprint, each with its first line.
///
/// 96 of the fingerprint's 128 bits are compared: two of 10M distinct
/// addresses share them with odds of about 1 in 10^15.
pub(crate) struct Seen {
    shards: Vec<Shard>,
    /// First lines past `u32::MAX - 1` (a CSV of over 4 billion lines):
    /// never lost, only kept the slow way.
    big: std::collections::HashMap<[u32; 3], u64>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen").field("len", &self.len()).finish()
    }
}

impl Seen {
    pub(crate) fn new() -> Seen {
        Seen {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            big: std::collections::HashMap::new(),
        }
    }

    /// How many distinct fingerprints are held.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len).sum()
    }

    /// The first line of `fingerprint` if it was seen; otherwise records it
    /// with `line` and returns `None`.
    pub(crate) fn first_or_insert(&mut self, fingerprint: u128, line: u64) -> Option<u64> {
        let hi = (fingerprint >> 64) as u64;
        let lo = fingerprint as u64;
        let mut tag = [(hi >> 32) as u32, hi as u32, (lo >> 32) as u32];
        if tag == [0; 3] {
            tag[2] = 1;
        }
        // The fingerprint is uniform: its top 6 bits pick the shard and
        // 64 other bits of the tag the home slot.
        let shard = &mut self.shards[(hi >> 58) as usize % SHARDS];
        if (shard.len + 1) * 5 > shard.slots.len() * 4 {
            shard.grow();
        }
        let n = shard.slots.len();
        let mut i = home(slot_hash(&tag), n);
        loop {
            let slot = &mut shard.slots[i];
            if slot.is_empty() {
                let stored = u32::try_from(line).ok().filter(|l| *l != BIG_LINE);
                *slot = Slot {
                    tag,
                    line: stored.unwrap_or(BIG_LINE),
                };
                if stored.is_none() {
                    self.big.insert(tag, line);
                }
                shard.len += 1;
                return None;
            }
            if slot.tag == tag {
                return Some(match slot.line {
                    BIG_LINE => self.big.get(&tag).copied().unwrap_or(u64::MAX),
                    l => u64::from(l),
                });
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }
}

/// The home slot of a hash in a table of `n` slots (any `n`, not only powers
/// of two: the high half of the 128-bit product).
fn home(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

/// The hash that places a slot: 64 bits of its tag, so a shard can re-place
/// its slots when it grows (none of them the shard's bits).
fn slot_hash(tag: &[u32; 3]) -> u64 {
    (u64::from(tag[2]) << 32) | u64::from(tag[1])
}

impl Shard {
    /// Grows by half (at least 64 slots), re-placing every slot.
    fn grow(&mut self) {
        let n = (self.slots.len() + self.slots.len() / 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); n]);
        for slot in old.into_iter().filter(|s| !s.is_empty()) {
            let mut i = home(slot_hash(&slot.tag), n);
            while !self.slots[i].is_empty() {
                i += 1;
                if i == n {
                    i = 0;
                }
            }
            self.slots[i] = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: u64) -> u128 {
        // A cheap, well-spread stand-in for the SipHash fingerprints.
        let a = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
        let b = a.rotate_left(29).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        (u128::from(a) << 64) | u128::from(b)
    }

    #[test]
    fn every_address_is_found_with_its_first_line_across_growth() {
        let mut seen = Seen::new();
        for i in 0..100_000u64 {
            assert_eq!(seen.first_or_insert(fp(i), i + 2), None, "{i}");
        }
        assert_eq!(seen.len(), 100_000);
        for i in 0..100_000u64 {
            assert_eq!(seen.first_or_insert(fp(i), 1_000_000), Some(i + 2), "{i}");
        }
        assert_eq!(seen.len(), 100_000);
        // Kept compact: at most 80% full, at least about half.
        let slots: usize = seen.shards.iter().map(|s| s.slots.len()).sum();
        assert!(slots * 4 >= 100_000 * 5, "{slots}");
        assert!(slots <= 100_000 * 2 + SHARDS * 64, "{slots}");
    }

    #[test]
    fn the_all_zero_tag_and_lines_past_32_bits_are_kept() {
        let mut seen = Seen::new();
        assert_eq!(seen.first_or_insert(0, 2), None);
        assert_eq!(seen.first_or_insert(0, 3), Some(2));
        let far = u64::from(u32::MAX) + 10;
        assert_eq!(seen.first_or_insert(fp(1), far), None);
        assert_eq!(seen.first_or_insert(fp(1), 5), Some(far));
        assert_eq!(seen.first_or_insert(fp(2), u64::from(u32::MAX)), None);
        assert_eq!(seen.first_or_insert(fp(2), 5), Some(u64::from(u32::MAX)));
    }
}
