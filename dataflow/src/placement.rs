//! Which worker reads which source partition.
//!
//! Every partition (a file, a synthetic partition, a Kinesis shard) is read by exactly one
//! worker, chosen by *rendezvous hashing*: each worker scores the partition with a stable hash of
//! the partition's key and the worker's index, and the highest score wins. The answer depends on
//! the key and the number of workers only, so
//!
//! - every worker of every process computes the same owner, with no coordination (what a job of
//!   several processes needs: each opens only its own partitions);
//! - when the number of workers changes (a restore onto another shape), a partition moves only if
//!   its new owner is one of the added workers (or its old owner was removed): positions saved in
//!   a checkpoint follow their partitions by name wherever they land;
//! - partitions spread evenly, whatever their names look like.
//!
//! The hash is [`stable_hash`](crate::ids::stable_hash()) (xxh3 over length-prefixed parts), so owners
//! are the same on every machine and across releases.
//!
//! ```
//! use pageflow_dataflow::placement::{assign, assign_partition};
//!
//! let owner = assign_partition("synthetic:3", 4);
//! assert!(owner < 4);
//! assert_eq!(owner, assign_partition("synthetic:3", 4));
//! // A key of several parts (a Kinesis stream and shard) is hashed part by part.
//! assert_eq!(assign(&[b"g1", b"shardId-000000000001"], 1), 0);
//! ```

use crate::ids::stable_hash;

/// The worker (of `workers`) that owns the partition keyed by `parts`.
pub fn assign(parts: &[&[u8]], workers: usize) -> usize {
    (0..workers.max(1))
        .max_by_key(|worker| {
            let index = (*worker as u64).to_le_bytes();
            let key = parts.iter().copied().chain([index.as_slice()]);
            // Ties (astronomically rare) go to the lowest index.
            (stable_hash(key), std::cmp::Reverse(*worker))
        })
        .unwrap_or(0)
}

/// The worker (of `workers`) that reads the partition named `name` (its name in checkpoints,
/// e.g. `synthetic:3` or a file's name).
pub fn assign_partition(name: &str, workers: usize) -> usize {
    assign(&[name.as_bytes()], workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_and_move_only_to_added_workers() {
        let names: Vec<String> = (0..400).map(|i| format!("file-{i}.jsonl")).collect();
        let four: Vec<usize> = names.iter().map(|n| assign_partition(n, 4)).collect();
        for worker in 0..4 {
            let count = four.iter().filter(|w| **w == worker).count();
            assert!(
                (60..=140).contains(&count),
                "worker {worker} has {count} of 400"
            );
        }
        let five: Vec<usize> = names.iter().map(|n| assign_partition(n, 5)).collect();
        assert!(
            four.iter()
                .zip(&five)
                .all(|(old, new)| new == old || *new == 4)
        );
        let moved = four.iter().zip(&five).filter(|(a, b)| a != b).count();
        assert!(
            (40..=130).contains(&moved),
            "{moved} of 400 moved to the fifth worker"
        );
    }

    #[test]
    fn one_worker_owns_everything_and_zero_workers_count_as_one() {
        assert_eq!(assign_partition("a", 1), 0);
        assert_eq!(assign_partition("a", 0), 0);
    }

    #[test]
    fn parts_are_not_concatenated() {
        // "ab" + "c" and "a" + "bc" are different keys (the parts are length-prefixed).
        let owners = |parts: &[&[u8]]| (0..64).map(|w| assign(parts, w + 1)).collect::<Vec<_>>();
        assert_ne!(owners(&[b"ab", b"c"]), owners(&[b"a", b"bc"]));
    }
}
