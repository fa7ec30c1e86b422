//! `pageflow replay`: the graph over one JSON-lines file, as fast as possible, deterministically.
//!
//! The file is one partition (read by the worker [`placement`](pageflow_dataflow::placement)
//! gives it, processed by all), only event time moves the watermark, and the run ends as
//! `SEMANTICS.md` "End of a replay" says. Writes `features.jsonl` (canonical order),
//! `dead-letter.jsonl` (input order) and `summary.json`, and with `[sinks] curated` (the default)
//! the curated lake under `curated/` (replaced as a whole: the tables of this input only; see
//! [`write_curated`]).
//!
//! With `[cluster]` (`--addresses`, `--process`), each process runs `workers` threads of one
//! dataflow and writes what its own workers emitted under `OUT/process-<i>/`: the union of the
//! processes' `features.jsonl`, in canonical order, is the one-process `features.jsonl`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use pageflow_connectors::JsonLinesFile;
use pageflow_connectors::curated::{CURATED_DIR, Compaction, CuratedCommitter};
use pageflow_dataflow::algorithms::graph::GraphOptions;
use pageflow_dataflow::algorithms::replay::{ReplayOutput, replay_lines, replay_lines_in};
use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::source::{RecordSource, SourcesByWorker};
use pageflow_dataflow::stats::StatsSnapshot;
use serde::Serialize;

use crate::cluster::ClusterConfig;

/// What `summary.json` holds.
#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    /// The input file.
    pub input: PathBuf,
    /// Worker threads used (in this process).
    pub workers: usize,
    /// This process's index and the number of processes, when run as a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<(usize, usize)>,
    /// Counts of records by outcome.
    #[serde(flatten)]
    pub counts: StatsSnapshot,
    /// Wall-clock time of the run, parsing included.
    pub elapsed_ms: u64,
    /// Records read per second of wall-clock time.
    pub events_per_second: f64,
}

/// Runs the graph over `input` with `workers` threads and returns the outputs and the summary.
pub fn replay_file(
    input: &Path,
    workers: usize,
    config: &SemanticsConfig,
) -> Result<(ReplayOutput, ReplaySummary)> {
    replay_file_with(input, workers, config, &GraphOptions::default())
}

/// [`replay_file`] with graph options (`keep_pageviews` for the curated lake).
pub fn replay_file_with(
    input: &Path,
    workers: usize,
    config: &SemanticsConfig,
    options: &GraphOptions,
) -> Result<(ReplayOutput, ReplaySummary)> {
    let workers = workers.max(1);
    let file =
        JsonLinesFile::open(input).with_context(|| format!("cannot replay {}", input.display()))?;
    let mut sources_by_worker: SourcesByWorker = (0..workers).map(|_| Vec::new()).collect();
    // The worker the job's placement gives it (the results do not depend on which).
    let owner = pageflow_dataflow::placement::assign_partition(RecordSource::name(&file), workers);
    sources_by_worker[owner].push(Box::new(file));
    let started = Instant::now();
    let output = replay_lines(config, sources_by_worker, options)?;
    let elapsed = started.elapsed();
    let summary = ReplaySummary {
        input: input.to_path_buf(),
        workers,
        process: None,
        counts: output.stats.clone(),
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: output.stats.records as f64 / elapsed.as_secs_f64().max(1e-9),
    };
    Ok((output, summary))
}

/// This process's share of a replay of `input` by the processes of `cluster`, `threads` workers
/// each: the outputs of this process's workers.
pub fn replay_file_in_cluster(
    input: &Path,
    threads: usize,
    config: &SemanticsConfig,
    cluster: &ClusterConfig,
    options: &GraphOptions,
) -> Result<(ReplayOutput, ReplaySummary)> {
    let threads = threads.max(1);
    let workers = threads * cluster.processes();
    let name = pageflow_connectors::files::source::partition_name(input);
    let owner = pageflow_dataflow::placement::assign_partition(&name, workers);
    let mut sources_by_worker: SourcesByWorker = (0..workers).map(|_| Vec::new()).collect();
    // Only the owner's process opens the file (the others need not see it).
    if owner / threads == cluster.process {
        let file = JsonLinesFile::open(input)
            .with_context(|| format!("cannot replay {}", input.display()))?;
        sources_by_worker[owner].push(Box::new(file));
    }
    let reading: Vec<bool> = (0..workers).map(|w| w == owner).collect();
    // Replay writes no checkpoints: every process starts from empty state.
    let communication = cluster.connect(threads, crate::cluster::Agreement::default())?;
    let started = Instant::now();
    let output = replay_lines_in(config, sources_by_worker, &reading, options, communication)?;
    let elapsed = started.elapsed();
    let summary = ReplaySummary {
        input: input.to_path_buf(),
        workers: threads,
        process: Some((cluster.process, cluster.processes())),
        counts: output.stats.clone(),
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: output.stats.records as f64 / elapsed.as_secs_f64().max(1e-9),
    };
    Ok((output, summary))
}

/// `pageflow replay --input FILE --out DIR [--addresses A,B --process I]`; `curated` also writes
/// the curated lake under `OUT/curated/`.
pub fn run(
    input: &Path,
    out: &Path,
    workers: usize,
    config: &SemanticsConfig,
    cluster: &ClusterConfig,
    curated: bool,
) -> Result<ReplaySummary> {
    let options = GraphOptions {
        keep_pageviews: curated,
        ..GraphOptions::default()
    };
    let (mut output, summary) = if cluster.is_cluster() {
        replay_file_in_cluster(input, workers, config, cluster, &options)?
    } else {
        replay_file_with(input, workers, config, &options)?
    };
    let out = if cluster.is_cluster() {
        out.join(format!("process-{}", cluster.process))
    } else {
        out.to_path_buf()
    };
    let out = out.as_path();
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    write_lines(
        &out.join("features.jsonl"),
        std::mem::take(&mut output.feature_lines).into_iter(),
    )?;
    write_lines(
        &out.join("dead-letter.jsonl"),
        output.dead_letters.iter().map(|d| d.to_json()),
    )?;
    if curated {
        let writer = if cluster.is_cluster() {
            format!("p{}", cluster.process)
        } else {
            "w0".to_string()
        };
        write_curated(&out.join(CURATED_DIR), &writer, &mut output)?;
    }
    let summary_path = out.join("summary.json");
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&summary_path, text + "\n")
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    Ok(summary)
}

/// Writes the replay's curated lake at `root`: whatever an earlier replay left there is removed
/// first (the tables hold this input's rows only, each once), then every hour of every table is
/// written as one file, atomically.
pub fn write_curated(root: &Path, writer: &str, output: &mut ReplayOutput) -> Result<()> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| {
                format!(
                    "cannot remove the previous replay's curated tables in {}",
                    root.display()
                )
            });
        }
    }
    let mut lake = CuratedCommitter::open(root, writer, None, Compaction::OFF)?;
    lake.add_features(&std::mem::take(&mut output.features));
    lake.add_pageviews(&std::mem::take(&mut output.pageviews));
    // One commit at the end, under id 0: the replay has no checkpoints to tie it to.
    lake.publish(0, u64::MAX)?;
    Ok(())
}

/// Writes `lines` to `path`, each followed by a line break (also `pageflow backfill`'s outputs).
pub(crate) fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = BufWriter::new(file);
    for line in lines {
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    writer
        .flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
