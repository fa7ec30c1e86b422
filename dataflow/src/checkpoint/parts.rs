//! Time buckets saved as append-only parts: each record is written once.
//!
//! Much operator state is a log cut into time buckets: the ids accepted in one tick, the events
//! waiting for their tick to become final. A checkpoint writes what a bucket gained since the
//! previous checkpoint as one more *part* of it, a broadcast entry keyed `(bucket, run, worker,
//! part)`; when the bucket is dropped, its parts are deleted. So every record is written once and
//! deleted once, however often checkpoints come, and a restore on any number of workers hands
//! every part to every worker, which keeps the records it owns ([`super::Entry::owns`]).
//!
//! `(run, worker, part)` makes a part's key unique across the workers of a run and across runs
//! (see [`super::ChangeWriter::run`]): a restored run never overwrites an earlier run's part.
//! Keys start with a one-byte *tag* of the operator's choosing, so that an operator can keep
//! other broadcast entries beside its parts ([`BucketParts::is_part`] tells them apart).
//!
//! ```
//! use pageflow_dataflow::checkpoint::parts::BucketParts;
//! use pageflow_dataflow::checkpoint::ChangeWriter;
//! let mut parts = BucketParts::new(0);
//! let mut changes = Vec::new();
//! let mut out = ChangeWriter::new("dedup", 0, 1, &mut changes);
//! parts.write(&mut out, 60_000, &vec![1u64, 2, 3]).unwrap();
//! parts.write(&mut out, 60_000, &vec![4u64]).unwrap(); // the bucket's second part
//! parts.drop_bucket(60_000);
//! parts.save_deletes(&mut out).unwrap(); // both parts deleted
//! assert_eq!(changes.len(), 4);
//! assert!(changes[2].value.is_none() && changes[3].value.is_none());
//! ```

use std::collections::BTreeMap;

use serde::Serialize;

use super::changes::DeferredPut;
use super::{ChangeWriter, CheckpointError, Entry, Placement};

/// The key of one part: `(tag, bucket, run, worker, part number)`.
pub type PartKey = (u8, u64, u64, u32, u32);

/// The parts every bucket has in the checkpoint, and those to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketParts {
    tag: u8,
    parts: BTreeMap<u64, Vec<PartKey>>,
    doomed: Vec<PartKey>,
    next_part: u32,
}

impl BucketParts {
    /// Parts whose keys start with `tag`.
    pub fn new(tag: u8) -> Self {
        BucketParts {
            tag,
            ..BucketParts::default()
        }
    }

    /// Whether a restored broadcast entry is one of these parts (its key starts with the tag).
    pub fn is_part(&self, entry: &Entry<'_>) -> bool {
        entry.placement == Placement::Broadcast && entry.key.first() == Some(&self.tag)
    }

    /// Writes `records` as a new part of `bucket`.
    pub fn write<T: Serialize + ?Sized>(
        &mut self,
        out: &mut ChangeWriter<'_>,
        bucket: u64,
        records: &T,
    ) -> Result<(), CheckpointError> {
        let key = self.next_key(out, bucket);
        out.put(Placement::Broadcast, &key, records)
    }

    /// Like [`BucketParts::write`], with records copied out of the state: encoded after the
    /// dataflow resumes (see [`super::changes::DeferredChanges`]).
    pub fn write_later<T: Serialize + Send + 'static>(
        &mut self,
        out: &mut ChangeWriter<'_>,
        bucket: u64,
        records: T,
    ) -> Result<(), CheckpointError> {
        let key = self.next_key(out, bucket);
        out.defer(DeferredPut {
            placement: Placement::Broadcast,
            key,
            value: records,
        })
    }

    /// The key of the next part of `bucket`, noted as held.
    fn next_key(&mut self, out: &ChangeWriter<'_>, bucket: u64) -> PartKey {
        let key: PartKey = (
            self.tag,
            bucket,
            out.run(),
            out.worker() as u32,
            self.next_part,
        );
        self.next_part = self.next_part.wrapping_add(1);
        self.parts.entry(bucket).or_default().push(key);
        key
    }

    /// Notes a restored part; returns its bucket.
    pub fn restored(&mut self, entry: &Entry<'_>) -> Result<u64, CheckpointError> {
        let key: PartKey = entry.key()?;
        self.parts.entry(key.1).or_default().push(key);
        Ok(key.1)
    }

    /// The bucket is gone: its parts are deleted at the next save.
    pub fn drop_bucket(&mut self, bucket: u64) {
        if let Some(parts) = self.parts.remove(&bucket) {
            self.doomed.extend(parts);
        }
    }

    /// Drops every bucket before `bucket`.
    pub fn drop_before(&mut self, bucket: u64) {
        let kept = self.parts.split_off(&bucket);
        let dropped = std::mem::replace(&mut self.parts, kept);
        self.doomed.extend(dropped.into_values().flatten());
    }

    /// Drops every bucket.
    pub fn drop_all(&mut self) {
        self.doomed
            .extend(std::mem::take(&mut self.parts).into_values().flatten());
    }

    /// Writes the deletions of dropped buckets' parts.
    pub fn save_deletes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        for key in std::mem::take(&mut self.doomed) {
            out.delete(Placement::Broadcast, &key)?;
        }
        Ok(())
    }

    /// Parts held.
    pub fn len(&self) -> usize {
        self.parts.values().map(Vec::len).sum()
    }

    /// Whether no part is held.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}
