//! `pageflow replay`: the graph over one JSON-lines file, as fast as possible, deterministically.
//!
//! The file is one partition (read by worker 0, processed by all), only event time moves the
//! watermark, and the run ends as `SEMANTICS.md` "End of a replay" says. Writes
//! `features.jsonl` (canonical order), `dead-letter.jsonl` (input order) and `summary.json`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use pageflow_connectors::JsonLinesFile;
use pageflow_dataflow::algorithms::graph::GraphOptions;
use pageflow_dataflow::algorithms::replay::{ReplayOutput, replay_lines};
use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::source::{RecordSource, SourcesByWorker};
use pageflow_dataflow::stats::StatsSnapshot;
use serde::Serialize;

/// What `summary.json` holds.
#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    /// The input file.
    pub input: PathBuf,
    /// Worker threads used.
    pub workers: usize,
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
    let workers = workers.max(1);
    let file =
        JsonLinesFile::open(input).with_context(|| format!("cannot replay {}", input.display()))?;
    let mut sources_by_worker: SourcesByWorker = (0..workers).map(|_| Vec::new()).collect();
    // The worker the job's placement gives it (the results do not depend on which).
    let owner = pageflow_dataflow::placement::assign_partition(RecordSource::name(&file), workers);
    sources_by_worker[owner].push(Box::new(file));
    let started = Instant::now();
    let output = replay_lines(config, sources_by_worker, &GraphOptions::default())?;
    let elapsed = started.elapsed();
    let summary = ReplaySummary {
        input: input.to_path_buf(),
        workers,
        counts: output.stats.clone(),
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: output.stats.records as f64 / elapsed.as_secs_f64().max(1e-9),
    };
    Ok((output, summary))
}

/// `pageflow replay --input FILE --out DIR`.
pub fn run(
    input: &Path,
    out: &Path,
    workers: usize,
    config: &SemanticsConfig,
) -> Result<ReplaySummary> {
    let (output, summary) = replay_file(input, workers, config)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    write_lines(
        &out.join("features.jsonl"),
        output.feature_lines.into_iter(),
    )?;
    write_lines(
        &out.join("dead-letter.jsonl"),
        output.dead_letters.iter().map(|d| d.to_json()),
    )?;
    let summary_path = out.join("summary.json");
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&summary_path, text + "\n")
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    Ok(summary)
}

fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
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
