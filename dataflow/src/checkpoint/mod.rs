//! Checkpoints: the dataflow's state and its source positions, saved together, incrementally.
//!
//! A checkpoint lets a job that was stopped or killed continue exactly where it was: every
//! operator's state (open sessions, window buckets, co-occurrence counts, remembered event ids,
//! the last `related` lists) together with the position of every source partition and the
//! watermark, all taken at one consistent cut. Restoring loads the state into the operators and
//! resumes each source after its saved position, so no event is counted twice and none is lost;
//! features emitted after the checkpoint are emitted again with the same `feature_id`s.
//!
//! A checkpoint writes only what changed since the previous one (Flink's incremental checkpoints):
//! each operator keeps track of the keys it changed and writes those, with tombstones for keys it
//! dropped. The store merges the changes of every checkpoint into the state (an LSM of sorted
//! runs, compacted in the background), so the bytes a checkpoint writes and the time the
//! dataflow stands still grow with what changed, not with what is held.
//!
//! - [`coordinator`]: how the cut is taken in a running timely dataflow (pause, drain, save).
//! - [`states`]: how operators declare their state ([`Checkpointed`], [`OperatorStates::attach`])
//!   and report its size.
//! - [`changes`]: entries, scopes and key groups, so that a checkpoint of `W` workers restores on
//!   any number of workers.
//! - [`image`]: changes merged, and dealt out to the workers of a restored run.
//! - [`parts`]: time buckets saved as append-only parts (each record written once).
//! - [`snapshot`]: a worker's part of a checkpoint, and source positions.
//!
//! Writing checkpoints to storage (local directory, S3), manifests, runs, compaction and
//! checksums live in `pageflow-connectors::checkpoint_store`; scheduling them, in the `pageflow`
//! binary.

pub mod changes;
pub mod control;
pub mod coordinator;
pub mod image;
pub mod parts;
pub mod snapshot;
pub mod state_size;
pub mod states;

pub use changes::{
    Change, ChangeWriter, DeferredChanges, DeferredPart, Entry, KEY_GROUPS, Placement, key_group,
};
pub use coordinator::{CheckpointCoordinator, WorkerCheckpoint};
pub use image::{Restore, RestorePlan, RestoredSources, StateImage, WorkerRestore};
pub use snapshot::{PartitionCheckpoint, WorkerSnapshot};
pub use states::{Checkpointed, OperatorStates, StateSize};

/// A checkpoint's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// State could not be encoded (a bug: every state type is plain data).
    #[error("cannot encode operator state: {0}; this is a bug in pageflow, please report it")]
    Encode(String),
    /// Saved state could not be decoded although its checksum was right: it was written by an
    /// incompatible build.
    #[error(
        "cannot decode the checkpoint's operator state: {0}; it was written by an incompatible pageflow build: run the release that wrote it, or move the checkpoint away to start without it"
    )]
    Decode(String),
    /// Checkpoints cannot be taken in this process.
    #[error("checkpoints are unavailable: {0}")]
    Unavailable(String),
}

impl CheckpointError {
    /// Whether trying again may help: never, these are bugs or incompatible data.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
