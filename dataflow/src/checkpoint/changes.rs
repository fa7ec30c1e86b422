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

/// Changes an operator copied out of its state while the dataflow stood still for a checkpoint,
/// to be encoded after it has resumed (by the checkpoint writer, off the workers' threads).
///
/// Copying a changed entry (interned ids are pointers, short user ids are inline) costs a
/// fraction of encoding it, so an operator with many changes per checkpoint (sessions, pair
/// counts) keeps the pause short by copying and deferring. An operator writes a given key either
/// always directly or always deferred: the two kinds of changes are merged in that order.
pub trait DeferredChanges: Send {
    /// Writes the changes (with [`ChangeWriter::put`] and [`ChangeWriter::delete`]).
    fn write(self: Box<Self>, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError>;
}

/// One entry to set, owned, encoded later: the simplest [`DeferredChanges`].
#[derive(Debug)]
pub struct DeferredPut<K, V> {
    /// Where it is restored.
    pub placement: Placement,
    /// The operator's key.
    pub key: K,
    /// The value.
    pub value: V,
}

impl<K, V> DeferredChanges for DeferredPut<K, V>
where
    K: Serialize + Send,
    V: Serialize + Send,
{
    fn write(self: Box<Self>, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        out.put(self.placement, &self.key, &self.value)
    }
}

/// One operator's deferred changes, with what its writer needs to encode them later.
pub struct DeferredPart {
    operator: String,
    worker: usize,
    run: u64,
    prefix: Option<u8>,
    changes: Box<dyn DeferredChanges>,
}

impl std::fmt::Debug for DeferredPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredPart")
            .field("operator", &self.operator)
            .field("worker", &self.worker)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl DeferredPart {
    /// Encodes the changes, appending them to `out`; returns the bytes written.
    pub fn encode_into(self, out: &mut Vec<Change>) -> Result<u64, CheckpointError> {
        let mut writer = ChangeWriter::new(&self.operator, self.worker, self.run, out);
        writer.prefix = self.prefix;
        self.changes.write(&mut writer)?;
        Ok(writer.bytes())
    }

    /// The operator whose changes these are.
    pub fn operator(&self) -> &str {
        &self.operator
    }
}

/// Collects one operator's changes for a checkpoint.
#[derive(Debug)]
pub struct ChangeWriter<'a> {
    operator: &'a str,
    worker: usize,
    run: u64,
    out: &'a mut Vec<Change>,
    /// Where deferred changes go; without it they are encoded at once.
    deferred: Option<&'a mut Vec<DeferredPart>>,
    /// A byte put before every key of the operator's own (see [`ChangeWriter::prefixed`]).
    prefix: Option<u8>,
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
            deferred: None,
            prefix: None,
            bytes: 0,
        }
    }

    /// A writer for a part of the operator's state kept apart from the rest: every key it
    /// writes starts with `prefix` (for an operator made of two states; its restore tells them
    /// apart by that first byte of the key).
    pub fn prefixed(&mut self, prefix: u8) -> ChangeWriter<'_> {
        ChangeWriter {
            operator: self.operator,
            worker: self.worker,
            run: self.run,
            out: &mut *self.out,
            deferred: self.deferred.as_deref_mut(),
            prefix: Some(prefix),
            bytes: 0,
        }
    }

    /// Like [`ChangeWriter::new`], handing what the operator defers ([`ChangeWriter::defer`]) to
    /// `deferred` unencoded.
    pub fn with_deferred(
        operator: &'a str,
        worker: usize,
        run: u64,
        out: &'a mut Vec<Change>,
        deferred: &'a mut Vec<DeferredPart>,
    ) -> Self {
        ChangeWriter {
            deferred: Some(deferred),
            ..ChangeWriter::new(operator, worker, run, out)
        }
    }

    /// Hands over changes copied out of the state, to be encoded after the dataflow resumes (see
    /// [`DeferredChanges`]); a writer without a place for them encodes them now.
    pub fn defer(
        &mut self,
        changes: impl DeferredChanges + 'static,
    ) -> Result<(), CheckpointError> {
        if let Some(deferred) = self.deferred.as_deref_mut() {
            deferred.push(DeferredPart {
                operator: self.operator.to_string(),
                worker: self.worker,
                run: self.run,
                prefix: self.prefix,
                changes: Box::new(changes),
            });
            return Ok(());
        }
        Box::new(changes).write(self)
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
        if let Some(prefix) = self.prefix {
            bytes.push(prefix);
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

    #[test]
    fn deferred_changes_encode_as_direct_ones_would() -> Result<(), Box<dyn std::error::Error>> {
        let put = || DeferredPut {
            placement: Placement::Keyed(3),
            key: ("g1".to_string(), 7u64),
            value: vec![1u32, 2, 3],
        };
        // Direct: a writer without a place for deferred changes encodes them at once.
        let mut direct = Vec::new();
        ChangeWriter::new("op", 1, 5, &mut direct)
            .prefixed(9)
            .defer(put())?;
        // Deferred: nothing encoded until the part is.
        let (mut now, mut later) = (Vec::new(), Vec::new());
        ChangeWriter::with_deferred("op", 1, 5, &mut now, &mut later)
            .prefixed(9)
            .defer(put())?;
        assert!(now.is_empty());
        assert_eq!(later.len(), 1);
        let mut encoded = Vec::new();
        for part in later {
            part.encode_into(&mut encoded)?;
        }
        assert_eq!(encoded, direct);
        let (operator, placement, key) = parse_key(&encoded[0].key).ok_or("parse")?;
        assert_eq!((operator, placement), ("op", Placement::Keyed(3)));
        assert_eq!(key[0], 9, "the prefix comes before the operator's key");
        assert_eq!(decode::<(String, u64)>(&key[1..])?, ("g1".to_string(), 7));
        Ok(())
    }
}
