//! The per-worker register of operator state: what a checkpoint saves, and what a restore hands
//! back to each operator when the graph is built.
//!
//! An operator declares its state by name with [`OperatorStates::attach`]: it gets the state back
//! (restored from the checkpoint if there is one), shared with the register so that a checkpoint
//! can save it between two activations. Names are stable: they are the keys of the saved state.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::CheckpointError;
use super::entries::{Entry, EntryWriter, read_entries};

/// State that a checkpoint can save and restore, re-partitioned by key.
pub trait Checkpointed {
    /// Writes the state: one keyed entry per key (routed like the operator's input), shared
    /// entries for what every worker holds.
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError>;

    /// Adds one saved entry. Keyed entries arrive on the worker that owns their route; shared ones
    /// arrive on every worker, once from each worker of the run that saved them.
    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError>;
}

trait SaveState {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError>;
}

impl<S: Checkpointed> SaveState for RefCell<S> {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError> {
        self.borrow().save(out)
    }
}

#[derive(Default)]
struct Register {
    operators: Vec<(String, Rc<dyn SaveState>)>,
    restore: BTreeMap<String, Vec<u8>>,
    restore_errors: Vec<String>,
}

/// One worker's operator state for checkpoints, and the flag that pauses its sources.
///
/// `OperatorStates::default()` is a worker without checkpoints: nothing is restored, nothing is
/// ever paused (tests, replays, benchmarks).
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
            .field("restoring", &register.restore.keys().collect::<Vec<_>>())
            .field("paused", &self.paused.load(Ordering::Relaxed))
            .finish()
    }
}

impl OperatorStates {
    /// A worker's states, restored from `restore` (operator name → this worker's entries), paused
    /// through `paused` (shared by every worker of the process).
    pub fn new(restore: BTreeMap<String, Vec<u8>>, paused: Arc<AtomicBool>) -> Self {
        OperatorStates {
            register: Rc::new(RefCell::new(Register {
                restore,
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
        if let Some(bytes) = register.restore.remove(name) {
            let mut restored = state.borrow_mut();
            let result = read_entries(&bytes).try_for_each(|entry| restored.restore(entry?));
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

    /// Whether the sources are paused for a checkpoint (ingest reads nothing while they are).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Problems found while restoring, and restored state no operator claimed.
    pub fn restore_errors(&self) -> Vec<String> {
        let register = self.register.borrow();
        let mut errors = register.restore_errors.clone();
        for name in register.restore.keys() {
            errors.push(format!(
                "the checkpoint holds state of operator `{name}`, which this build does not have"
            ));
        }
        errors
    }

    /// Saves every declared state: operator name → entries.
    pub fn save(&self) -> Result<BTreeMap<String, Vec<u8>>, CheckpointError> {
        let register = self.register.borrow();
        let mut saved = BTreeMap::new();
        for (name, state) in &register.operators {
            let mut out = EntryWriter::default();
            state.save(&mut out)?;
            saved.insert(name.clone(), out.into_bytes());
        }
        Ok(saved)
    }
}
