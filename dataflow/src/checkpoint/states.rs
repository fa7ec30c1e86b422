//! The per-worker register of operator state: what a checkpoint saves, what a restore hands back
//! to each operator when the graph is built, and how big each state is.
//!
//! An operator declares its state by name with [`OperatorStates::attach`]: it gets the state back
//! (restored from the checkpoint if there is one), shared with the register so that a checkpoint
//! can save it between two activations. Names are stable: they are the first part of every stored
//! key of that state.
//!
//! Saving is incremental: [`Checkpointed::save_changes`] writes what changed since the previous
//! call, so a checkpoint costs what changed, not what is held. Restored state counts as saved.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::CheckpointError;
use super::changes::{Change, ChangeWriter, DeferredPart, Entry};
use super::image::WorkerRestore;
pub use super::state_size::StateSize;

/// State that a checkpoint can save incrementally and restore onto any number of workers.
pub trait Checkpointed {
    /// Writes every entry changed since the previous call (new, changed or deleted), and forgets
    /// that they changed. Restored entries count as unchanged.
    fn save_changes(&mut self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError>;

    /// Takes one restored entry of this operator: the latest value of its key. Keyed entries
    /// arrive on the worker that owns their key group, broadcast ones on every worker.
    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError>;

    /// Called once after the last [`Checkpointed::restore`], to rebuild what is derived from the
    /// restored entries (indexes, running sums, schedules).
    fn finish_restore(&mut self) -> Result<(), CheckpointError> {
        Ok(())
    }

    /// The memory the state holds.
    fn size(&self) -> StateSize;

    /// Whether the state must keep track of what changed (it does by default). A job without
    /// checkpoints turns it off, so that logs of changes no checkpoint takes do not grow.
    fn track_changes(&mut self, _on: bool) {}
}

trait SaveState {
    fn save_changes(&self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError>;
    fn size(&self) -> StateSize;
}

impl<S: Checkpointed> SaveState for RefCell<S> {
    fn save_changes(&self, out: &mut ChangeWriter<'_>) -> Result<(), CheckpointError> {
        self.borrow_mut().save_changes(out)
    }

    fn size(&self) -> StateSize {
        self.borrow().size()
    }
}

#[derive(Default)]
struct Register {
    operators: Vec<(String, Rc<dyn SaveState>)>,
    restore: WorkerRestore,
    restore_errors: Vec<String>,
    worker: usize,
    run: u64,
    /// Checkpoints are taken: states keep track of their changes.
    checkpointing: bool,
}

/// One worker's operator state for checkpoints, and the flag that pauses its sources.
///
/// `OperatorStates::default()` is a worker without checkpoints: nothing is restored, nothing is
/// ever paused (tests, replays, benchmarks); its states still report their sizes.
#[derive(Clone, Default)]
pub struct OperatorStates {
    register: Rc<RefCell<Register>>,
    paused: Arc<AtomicBool>,
}

impl std::fmt::Debug for OperatorStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let register = self.register.borrow();
        f.debug_struct("OperatorStates")
            .field(
                "operators",
                &register
                    .operators
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("restoring", &register.restore.operators())
            .field("paused", &self.paused.load(Ordering::Relaxed))
            .finish()
    }
}

impl OperatorStates {
    /// Worker `worker`'s states in job run `run` (see [`ChangeWriter::run`]), restored from
    /// `restore`, paused through `paused` (shared by every worker of the process).
    pub fn new(worker: usize, run: u64, restore: WorkerRestore, paused: Arc<AtomicBool>) -> Self {
        OperatorStates {
            register: Rc::new(RefCell::new(Register {
                restore,
                worker,
                run,
                checkpointing: true,
                ..Register::default()
            })),
            paused,
        }
    }

    /// Declares an operator's state under `name`: restores `initial` from the checkpoint if it
    /// holds state of that name, and registers it for the next checkpoints.
    ///
    /// A restore that fails (a bug, since checkpoints are verified by checksum first) leaves the
    /// state as restored so far and is reported by [`OperatorStates::restore_errors`]; the job
    /// must stop rather than run on partial state.
    pub fn attach<S: Checkpointed + 'static>(&self, name: &str, initial: S) -> Rc<RefCell<S>> {
        let state = Rc::new(RefCell::new(initial));
        let mut register = self.register.borrow_mut();
        state.borrow_mut().track_changes(register.checkpointing);
        if let Some(entries) = register.restore.take(name) {
            let mut restored = state.borrow_mut();
            let result = entries
                .for_each(|entry| restored.restore(entry))
                .and_then(|()| restored.finish_restore());
            if let Err(error) = result {
                register
                    .restore_errors
                    .push(format!("operator `{name}`: {error}"));
            }
        }
        if register.operators.iter().any(|(known, _)| known == name) {
            register.restore_errors.push(format!(
                "two operators declared state named `{name}`: state names must be unique"
            ));
        }
        let saver: Rc<dyn SaveState> = state.clone();
        register.operators.push((name.to_string(), saver));
        state
    }

    /// Whether the sources are paused for a checkpoint (ingest reads nothing while they are, and
    /// no operator acts on processing time alone).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Problems found while restoring, and restored state no operator claimed.
    pub fn restore_errors(&self) -> Vec<String> {
        let register = self.register.borrow();
        let mut errors = register.restore_errors.clone();
        for name in register.restore.operators() {
            errors.push(format!(
                "the checkpoint holds state of operator `{name}`, which this build does not have"
            ));
        }
        errors
    }

    /// Every declared state's changes since the previous call: those encoded now, and those
    /// copied out to be encoded later (see [`super::changes::DeferredChanges`]).
    pub fn save_changes(&self) -> Result<(Vec<Change>, Vec<DeferredPart>), CheckpointError> {
        let register = self.register.borrow();
        let mut changes = Vec::new();
        let mut deferred = Vec::new();
        for (name, state) in &register.operators {
            let started = std::time::Instant::now();
            let mut out = ChangeWriter::with_deferred(
                name,
                register.worker,
                register.run,
                &mut changes,
                &mut deferred,
            );
            state.save_changes(&mut out)?;
            let bytes = out.bytes();
            tracing::debug!(
                operator = name.as_str(),
                worker = register.worker,
                bytes,
                micros = started.elapsed().as_micros() as u64,
                "saved the operator's changes"
            );
        }
        Ok((changes, deferred))
    }

    /// The size of every declared state, by name (in declaration order).
    pub fn sizes(&self) -> BTreeMap<String, StateSize> {
        let register = self.register.borrow();
        let mut sizes = BTreeMap::new();
        for (name, state) in &register.operators {
            *sizes.entry(name.clone()).or_default() += state.size();
        }
        sizes
    }
}
