//! Checkpoints, when `[checkpoint] enabled`: the store is opened, the newest good checkpoint
//! restored (the serving state at once; the operators' state and source positions handed on to
//! the workers and sources), and the driver started that takes a checkpoint every `interval`.

use std::sync::Arc;

use anyhow::Result;
use pageflow_dataflow::checkpoint::{CheckpointCoordinator, WorkerRestore};

use crate::checkpoints::{ChainStart, CheckpointDriver, ClusterPart, Restored};
use crate::cluster::Agreement;
use crate::config::JobConfig;
use pageflow_metrics::Metrics;
use pageflow_serve::{JobView, ServingState};

/// The job's checkpointing, set up.
pub(super) struct Checkpointing {
    /// The checkpoint the job restored from, if any (its workers' part taken into `restores`).
    pub restored: Option<Restored>,
    /// Each worker's restored operator state (empty without a restore).
    pub restores: Vec<WorkerRestore>,
    /// Takes and writes checkpoints; `None` when checkpoints are off.
    pub driver: Option<Arc<CheckpointDriver>>,
    /// The first checkpoint id of this run (0 when checkpoints are off).
    pub run_id: u64,
    /// Where this process starts, which every process of a cluster must share (checked when
    /// they connect).
    pub agreement: Agreement,
}

/// Opens the checkpoint store, restores the newest good checkpoint into `serving`, and starts the
/// checkpoint driver; without checkpoints, every worker starts empty.
pub(super) fn start_checkpointing(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    coordinator: &Arc<CheckpointCoordinator>,
    serving: &ServingState,
    metrics: &Arc<Metrics>,
    job_view: &JobView,
) -> Result<Checkpointing> {
    let workers = config.runtime.workers;
    if !config.checkpoint.enabled {
        return Ok(Checkpointing {
            restored: None,
            restores: (0..workers).map(|_| WorkerRestore::default()).collect(),
            driver: None,
            run_id: 0,
            agreement: Agreement::default(),
        });
    }
    let process = config.cluster.process;
    // The serving state is the same in every process; process 0 saves it.
    if process == 0 {
        serving.recent_reads().track_changes();
    }
    let store = crate::checkpoints::open_store(config, runtime)?;
    // In a cluster, each process keeps its workers' share of the keyed state.
    let all_workers = workers * config.cluster.processes();
    let mut restored = crate::checkpoints::restore_share(
        &store,
        &config.semantics,
        all_workers,
        process * workers..(process + 1) * workers,
    )?;
    let first_id = store.next_id()?;
    coordinator.number_from(first_id);
    if let Some(restored) = &restored {
        for update in &restored.serving {
            serving.apply(update.clone());
        }
        serving.mark_saved();
        tracing::info!(
            checkpoint = restored.id,
            location = store.location(),
            partitions = restored.partitions.len(),
            entries = restored.restore.entries,
            bytes = restored.restore.bytes,
            load_ms = restored.loaded_in.as_millis() as u64,
            "restored from checkpoint {}; every source resumes after its saved position",
            restored.id
        );
    }
    let chain = ChainStart {
        parent: restored.as_ref().map(|r| r.manifest.clone()),
        sources: restored
            .as_ref()
            .map(|r| r.restore.sources.clone())
            .unwrap_or_default(),
        workers: all_workers,
        first_id,
        fingerprint: crate::checkpoints::fingerprint(&config.semantics),
        // Each process writes its part; process 0 commits them all, waiting for the others'
        // parts as long as a graceful stop may take.
        cluster: config.cluster.is_cluster().then(|| ClusterPart {
            process,
            processes: config.cluster.processes(),
            timeout: config.checkpoint.stop_timeout.into(),
        }),
    };
    let driver = CheckpointDriver::start(
        Arc::clone(coordinator),
        store,
        chain,
        config.checkpoint.interval.into(),
        Arc::clone(metrics),
        Arc::clone(job_view.checkpoints()),
    )?;
    let restores = match restored.as_mut() {
        Some(restored) => std::mem::take(&mut restored.restore.workers),
        None => (0..workers).map(|_| WorkerRestore::default()).collect(),
    };
    Ok(Checkpointing {
        agreement: Agreement {
            restored: restored.as_ref().map(|r| r.id),
            first_id,
        },
        restored,
        restores,
        driver: Some(Arc::new(driver)),
        run_id: first_id,
    })
}
