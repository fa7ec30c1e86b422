//! Kinesis positions and the assignment of shards to workers.
//!
//! **Sequence numbers** are decimal strings of up to 128 bits (56 digits in practice), larger than
//! `u64` and not safely `u128`; they are compared as decimals: shorter is smaller, equal lengths
//! compare as text. A [`Position`] adds the sub-sequence number of a user record inside a KPL
//! aggregate, so a reader can resume *after* the last processed user record, never re-emitting it.
//!
//! **Assignment**: every shard goes to the worker with the highest stable hash of
//! `(stream, shard, worker)` (rendezvous hashing). It is the same in every process and with every
//! Rust version (xxh3, not `DefaultHasher`), and when the number of workers changes only the
//! shards of the added or removed workers move.
//!
//! ```
//! use pageflow_connectors::kinesis::shards::{SequenceNumber, assign_shard};
//! let older = SequenceNumber::new("49590338271490256608559692538361571095921575989136588898").unwrap();
//! let newer = SequenceNumber::new("495903382714902566085596925383615710959215759891365888980").unwrap();
//! assert!(older < newer);
//! assert_eq!(assign_shard("g1", "shardId-000000000001", 4), assign_shard("g1", "shardId-000000000001", 4));
//! ```

use std::cmp::Ordering;
use std::fmt;

/// A Kinesis sequence number: a non-empty string of decimal digits without leading zeros.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// Checks and wraps a sequence number; `None` if it is not a decimal number.
    pub fn new(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text.len() == 1 || !text.starts_with('0'));
        valid.then(|| SequenceNumber(text.to_string()))
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in a shard: a record's sequence number and, inside a KPL aggregate, the user
/// record's index (0 for ordinary records).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The Kinesis record.
    pub sequence: SequenceNumber,
    /// The user record inside it.
    pub sub_sequence: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sequence, self.sub_sequence)
    }
}

/// The worker (of `workers`) that reads `shard` of `stream`: the job's one rendezvous hash
/// ([`pageflow_dataflow::placement`]), keyed by stream and shard.
pub fn assign_shard(stream: &str, shard: &str, workers: usize) -> usize {
    pageflow_dataflow::placement::assign(&[stream.as_bytes(), shard.as_bytes()], workers)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn order_is_numeric(a in 0u128..u128::MAX, b in 0u128..u128::MAX) {
            let (x, y) = (SequenceNumber::new(&a.to_string()), SequenceNumber::new(&b.to_string()));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }
    }

    #[test]
    fn only_decimal_numbers_are_sequence_numbers() {
        assert!(SequenceNumber::new("0").is_some());
        assert!(SequenceNumber::new("").is_none());
        assert!(SequenceNumber::new("012").is_none());
        assert!(SequenceNumber::new("12a").is_none());
        let position = |s: &str, sub| Position {
            sequence: SequenceNumber::new(s).unwrap_or_else(|| panic!("{s}")),
            sub_sequence: sub,
        };
        assert!(position("99", 5) < position("100", 0));
        assert!(position("100", 0) < position("100", 1));
    }

    #[test]
    fn assignment_is_balanced_and_moves_little_when_workers_change() {
        let shards: Vec<String> = (0..400).map(|i| format!("shardId-{i:012}")).collect();
        let four: Vec<usize> = shards.iter().map(|s| assign_shard("g1", s, 4)).collect();
        for worker in 0..4 {
            let count = four.iter().filter(|w| **w == worker).count();
            assert!(
                (60..=140).contains(&count),
                "worker {worker} has {count} of 400 shards"
            );
        }
        let five: Vec<usize> = shards.iter().map(|s| assign_shard("g1", s, 5)).collect();
        let moved = four.iter().zip(&five).filter(|(a, b)| a != b).count();
        assert!(
            five.iter()
                .zip(&four)
                .all(|(new, old)| new == old || *new == 4),
            "shards only move to the new worker"
        );
        assert!(
            moved < 140,
            "about a fifth of the shards move, not all: {moved}"
        );
    }
}
