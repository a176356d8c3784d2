//! Which shard a point belongs to.
//!
//! Jump consistent hashing (Lamping and Veach, 2014) over the point id's stable hash: no table to
//! store, a uniform spread, and when the shard count grows from `n` to `n + 1` only the points
//! that land in the new last shard move (about `1 / (n + 1)` of them), which is what resharding
//! needs. The mapping is part of the storage format and must never change.

use crate::types::PointId;

/// The shard (in `0..shards`) that `id` belongs to.
pub fn shard_for(id: &PointId, shards: u32) -> u32 {
    jump_hash(id.stable_hash(), shards.max(1))
}

fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spreads_points_evenly() {
        let mut counts = [0usize; 6];
        for n in 0..60_000u64 {
            counts[shard_for(&PointId::Num(n), 6) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    proptest! {
        /// Growing from n to n + 1 shards moves points only into the new shard.
        #[test]
        fn growing_moves_points_only_to_the_new_shard(id in any::<u64>(), n in 1u32..64) {
            let before = shard_for(&PointId::Num(id), n);
            let after = shard_for(&PointId::Num(id), n + 1);
            prop_assert!(after == before || after == n);
            prop_assert!(before < n);
        }
    }
}
