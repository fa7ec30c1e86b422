//! Operator state as keyed entries, and the changes a checkpoint writes.
//!
//! Every operator's state is a set of *entries*: a key and a value, both `bincode`, owned by one
//! operator. A checkpoint writes only what changed since the previous one: new or changed entries
//! and *tombstones* for deleted ones. The store keeps them as an LSM of sorted runs (newest value
//! of a key wins), so the state of checkpoint `n` is every change up to `n` merged.
//!
//! # Placement: which worker an entry is restored on
//!
//! - [`Placement::Keyed`]: state of one key (a user's session, an article's rankings entry), in the
//!   key's *key group*. Records are exchanged by key group ([`key_group`]) and worker `w` of `W`
//!   owns the groups `g` with `g % W == w`, so a restore onto any number of workers gives each
//!   entry to the worker the exchange sends its key's records to. `KEY_GROUPS` bounds the number
//!   of workers (Flink's maximum parallelism).
//! - [`Placement::Broadcast`]: restored on every worker, which keeps what it owns or needs (a window
//!   bucket holding many keys, a partition position, a monotone high-water mark).
//!
//! # Stored key layout
//!
//! `operator name`, `0x00`, placement tag (`0` keyed, `1` broadcast), for keyed entries the key group
//! (2 bytes, big endian), then the key's own bytes. Keys of one operator sort together, and a
//! restore routes an entry without decoding it.
//!
//! ```
//! use pageflow_dataflow::checkpoint::changes::{ChangeWriter, Placement, parse_key};
//! let mut changes = Vec::new();
//! let mut out = ChangeWriter::new("sessions", 0, 1, &mut changes);
//! out.put(Placement::Keyed(7), &("g1", "u1"), &42u64).unwrap();
//! out.delete(Placement::Broadcast, &"old").unwrap();
//! let (operator, placement, _key) = parse_key(&changes[0].key).unwrap();
//! assert_eq!((operator, placement), ("sessions", Placement::Keyed(7)));
//! assert!(changes[1].value.is_none());
//! ```

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::CheckpointError;

/// How many key groups keys are hashed into: the most workers a job can have.
pub const KEY_GROUPS: u64 = 4096;

/// The key group of a route hash. Exchanges route by it, so worker `key_group(route) % W` owns
/// the key, and so does a restored worker.
pub fn key_group(route: u64) -> u16 {
    (route % KEY_GROUPS) as u16
}

/// Which workers an entry is restored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placement {
    /// The worker owning this key group.
    Keyed(u16),
    /// Every worker.
    Broadcast,
}

impl Placement {
    /// The placement of a key routed by `route`.
    pub fn of_route(route: u64) -> Placement {
        Placement::Keyed(key_group(route))
    }

    /// Whether worker `worker` of `workers` restores entries placed so.
    pub fn restores_on(self, worker: usize, workers: usize) -> bool {
        match self {
            Placement::Keyed(group) => usize::from(group) % workers.max(1) == worker,
            Placement::Broadcast => true,
        }
    }
}

const KEYED: u8 = 0;
const BROADCAST: u8 = 1;

/// The encoding of keys and values: bincode, little endian, variable-length integers.
fn encoding() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Encodes a value as checkpoints store it.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CheckpointError> {
    encoding()
        .serialize(value)
        .map_err(|error| CheckpointError::Encode(error.to_string()))
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CheckpointError> {
    encoding()
        .deserialize(bytes)
        .map_err(|error| CheckpointError::Decode(error.to_string()))
}

/// One change: the stored key (see the module docs) and the new value, or `None` for a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Operator, placement and the operator's key.
    pub key: Vec<u8>,
    /// The new value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// Splits a stored key into operator name, placement and the operator's own key bytes.
pub fn parse_key(key: &[u8]) -> Option<(&str, Placement, &[u8])> {
    let end = key.iter().position(|b| *b == 0)?;
    let operator = std::str::from_utf8(&key[..end]).ok()?;
    let rest = &key[end + 1..];
    match *rest.first()? {
        KEYED => {
            let group = u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?]);
            Some((operator, Placement::Keyed(group), &rest[3..]))
        }
        BROADCAST => Some((operator, Placement::Broadcast, &rest[1..])),
        _ => None,
    }
}

/// Collects one operator's changes for a checkpoint.
#[derive(Debug)]
pub struct ChangeWriter<'a> {
    operator: &'a str,
    worker: usize,
    run: u64,
    out: &'a mut Vec<Change>,
    bytes: u64,
}

impl<'a> ChangeWriter<'a> {
    /// A writer for `operator` on `worker`, in the job run `run` (see [`ChangeWriter::run`]),
    /// appending to `out`.
    pub fn new(operator: &'a str, worker: usize, run: u64, out: &'a mut Vec<Change>) -> Self {
        ChangeWriter {
            operator,
            worker,
            run,
            out,
            bytes: 0,
        }
    }

    /// The worker writing.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// An id of this run of the job, different in every run of the same checkpoint lineage (the
    /// first checkpoint id it writes). Entries that each worker writes for itself (a bucket's
    /// part) put `(run, worker)` in their key, so that a later run's worker never overwrites an
    /// entry of an earlier run's worker with the same index.
    pub fn run(&self) -> u64 {
        self.run
    }

    fn stored_key<K: Serialize + ?Sized>(
        &self,
        placement: Placement,
        key: &K,
    ) -> Result<Vec<u8>, CheckpointError> {
        let mut bytes = Vec::with_capacity(self.operator.len() + 24);
        bytes.extend_from_slice(self.operator.as_bytes());
        bytes.push(0);
        match placement {
            Placement::Keyed(group) => {
                bytes.push(KEYED);
                bytes.extend_from_slice(&group.to_be_bytes());
            }
            Placement::Broadcast => bytes.push(BROADCAST),
        }
        encoding()
            .serialize_into(&mut bytes, key)
            .map_err(|error| CheckpointError::Encode(error.to_string()))?;
        Ok(bytes)
    }

    /// Sets `key` to `value`.
    pub fn put<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        placement: Placement,
        key: &K,
        value: &V,
    ) -> Result<(), CheckpointError> {
        let key = self.stored_key(placement, key)?;
        let value = encode(value)?;
        self.bytes += (key.len() + value.len()) as u64;
        self.out.push(Change {
            key,
            value: Some(value),
        });
        Ok(())
    }

    /// Deletes `key`.
    pub fn delete<K: Serialize + ?Sized>(
        &mut self,
        placement: Placement,
        key: &K,
    ) -> Result<(), CheckpointError> {
        let key = self.stored_key(placement, key)?;
        self.bytes += key.len() as u64;
        self.out.push(Change { key, value: None });
        Ok(())
    }

    /// Writes a change whose key is already encoded (the operator's own key bytes, after the
    /// scope): for an operator made of two states that re-keys one of them.
    pub fn put_raw(&mut self, placement: Placement, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut stored = Vec::with_capacity(self.operator.len() + 4 + key.len());
        stored.extend_from_slice(self.operator.as_bytes());
        stored.push(0);
        match placement {
            Placement::Keyed(group) => {
                stored.push(KEYED);
                stored.extend_from_slice(&group.to_be_bytes());
            }
            Placement::Broadcast => stored.push(BROADCAST),
        }
        stored.extend_from_slice(&key);
        self.bytes += (stored.len() + value.as_ref().map_or(0, Vec::len)) as u64;
        self.out.push(Change { key: stored, value });
    }

    /// Bytes written so far (keys and values).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// One restored entry of an operator: the latest value of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Where it was restored.
    pub placement: Placement,
    /// The operator's key bytes.
    pub key: &'a [u8],
    /// The value bytes.
    pub value: &'a [u8],
    /// The worker restoring it.
    pub worker: usize,
    /// How many workers the restored run has.
    pub workers: usize,
}

impl Entry<'_> {
    /// Whether the restoring worker owns keys routed by `route` (for broadcast entries that hold
    /// many keys: each worker keeps its own).
    pub fn owns(&self, route: u64) -> bool {
        Placement::of_route(route).restores_on(self.worker, self.workers)
    }

    /// Decodes the key.
    pub fn key<K: DeserializeOwned>(&self) -> Result<K, CheckpointError> {
        decode(self.key)
    }

    /// Decodes the value.
    pub fn value<V: DeserializeOwned>(&self) -> Result<V, CheckpointError> {
        decode(self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_operator() -> Result<(), Box<dyn std::error::Error>> {
        let mut changes = Vec::new();
        let mut out = ChangeWriter::new("b", 1, 9, &mut changes);
        out.put(Placement::Keyed(4095), &"k", &1u8)?;
        let mut out = ChangeWriter::new("a", 0, 9, &mut changes);
        out.put(Placement::Broadcast, &(1u64, 2u32), &"v")?;
        let (operator, placement, key) = parse_key(&changes[0].key).ok_or("parse")?;
        assert_eq!((operator, placement), ("b", Placement::Keyed(4095)));
        assert_eq!(decode::<String>(key)?, "k");
        let (operator, placement, key) = parse_key(&changes[1].key).ok_or("parse")?;
        assert_eq!((operator, placement), ("a", Placement::Broadcast));
        assert_eq!(decode::<(u64, u32)>(key)?, (1, 2));
        assert!(changes[1].key < changes[0].key, "operators sort together");
        assert!(Placement::Keyed(5).restores_on(1, 2) && !Placement::Keyed(5).restores_on(0, 2));
        assert_eq!(key_group(KEY_GROUPS + 3), 3);
        Ok(())
    }
}
