//! Checkpoint figures for `pageflow bench`: what checkpoints cost a running job, how large and how
//! slow to write they are, and how fast a job with a million live users is back.
//!
//! - Throughput of the whole job (`pageflow run` on a file, two workers) with checkpoints every
//!   5 seconds (6 times more often than the default; `PAGEFLOW_BENCH_CHECKPOINT_INTERVAL=30s`
//!   measures the default, given an input long enough to see several) and with checkpoints off.
//! - A checkpoint of 1,000,000 live users (each with an open session, a remembered event id and
//!   recent articles): its size, the time the dataflow stood still, and the time to write it.
//! - The restart: load and verify the checkpoint, restore the state on two workers and read the
//!   next 10,000 events: the time from start to caught up.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::checkpoint_store::{Checkpoints, LocalDirStore, StateEntry};
use pageflow_dataflow::algorithms::restart::run_half;
use pageflow_dataflow::checkpoint::{Change, StateImage};
use pageflow_dataflow::config::{Millis, SemanticsConfig};
use pageflow_dataflow::event::{RawRecord, SourcePosition};

use super::run;
use crate::config::{JobConfig, SourceKind};

/// Live users in the large-state figures.
const LIVE_USERS: u64 = 1_000_000;
/// Events read after the restore.
const TAIL: u64 = 10_000;

/// Measures and reports each figure through `record(name, value, unit)`.
pub fn run(
    input: &Path,
    events: u64,
    dir: &Path,
    config: &SemanticsConfig,
    record: &mut dyn FnMut(String, f64, &'static str),
) -> Result<()> {
    let interval = match std::env::var("PAGEFLOW_BENCH_CHECKPOINT_INTERVAL") {
        Ok(text) => toml::Value::String(text.clone())
            .try_into::<Millis>()
            .map_err(|e| anyhow!("PAGEFLOW_BENCH_CHECKPOINT_INTERVAL={text}: {e}"))?,
        Err(_) => Millis::seconds(5),
    };
    let mut rates = Vec::new();
    for checkpoints in [false, true] {
        let (seconds, figures) = whole_job(input, dir, config, checkpoints.then_some(interval))?;
        let rate = events as f64 / seconds;
        rates.push(rate);
        let label = if checkpoints {
            format!("on (every {} ms)", interval.ms())
        } else {
            "off".to_string()
        };
        record(
            format!("whole job, 2 workers, checkpoints {label}"),
            rate,
            "events/s",
        );
        if let Some(figures) = figures {
            record(
                "  checkpoints committed during that run".into(),
                figures.completed as f64,
                "",
            );
            record(
                "  last checkpoint: dataflow paused".into(),
                figures.last_pause_s * 1000.0,
                "ms",
            );
            record(
                "  last checkpoint: of which saving operator state".into(),
                figures.last_save_s * 1000.0,
                "ms",
            );
            record(
                "  last checkpoint: size".into(),
                figures.last_size_bytes as f64 / (1024.0 * 1024.0),
                "MiB",
            );
            for (operator, bytes) in &figures.state_bytes {
                record(
                    format!("    state of {operator}"),
                    *bytes as f64 / (1024.0 * 1024.0),
                    "MiB",
                );
            }
        }
    }
    if let [off, on] = rates[..] {
        record(
            "checkpoint overhead on throughput".into(),
            (1.0 - on / off) * 100.0,
            "%",
        );
    }

    large_state(dir, config, record)
}

/// Runs the job over `input` to its end; returns the seconds taken and the checkpoint figures.
fn whole_job(
    input: &Path,
    dir: &Path,
    semantics: &SemanticsConfig,
    checkpoints: Option<Millis>,
) -> Result<(f64, Option<pageflow_metrics::CheckpointFigures>)> {
    let out = dir.join(if checkpoints.is_some() {
        "job-ck-on"
    } else {
        "job-ck-off"
    });
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let mut config = JobConfig {
        semantics: semantics.clone(),
        ..JobConfig::default()
    };
    config.source.kind = SourceKind::Files;
    config.source.paths = vec![input.to_path_buf()];
    config.sinks.dir = out;
    config.sinks.archive = false;
    // The curated lake is measured apart (README, "The lake"); numbers stay comparable.
    config.sinks.curated = Some(crate::config::CuratedSetting::Switch(false));
    config.serve.enabled = false;
    config.runtime.workers = 2;
    config.checkpoint.enabled = checkpoints.is_some();
    config.checkpoint.interval = checkpoints.unwrap_or(Millis::seconds(30));
    let started = Instant::now();
    let job = run::start(config)?;
    while !job.has_ended() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    // Read once the writer has committed the end-of-input checkpoint too (an input shorter than
    // the interval has no other).
    let metrics = Arc::clone(&job.metrics);
    job.shutdown()?;
    let figures = checkpoints.map(|_| metrics.checkpoints());
    Ok((seconds, figures))
}

/// One pageview of user `user`, in the first minutes after `start_ts`.
fn pageview(index: u64, user: u64, start_ts: u64) -> RawRecord {
    let ts = start_ts + index * 600_000 / LIVE_USERS;
    let bytes = format!(
        r#"{{"event_id":"b{index}","portal":"g{}","user_id":"user-{user}","article_id":"a{}","ts":{ts},"dwell_ms":12000,"scroll_pct":40}}"#,
        user % 3,
        index % 5_000
    );
    RawRecord {
        position: SourcePosition {
            partition: "bench:live-users".into(),
            position: (index + 1).to_string(),
        },
        bytes: bytes.into_bytes(),
        corrupt: None,
    }
}

fn large_state(
    dir: &Path,
    config: &SemanticsConfig,
    record: &mut dyn FnMut(String, f64, &'static str),
) -> Result<()> {
    let start_ts = 1_700_000_000_000;
    let users: Vec<RawRecord> = (0..LIVE_USERS)
        .map(|index| pageview(index, index, start_ts))
        .collect();
    let first = run_half(config, "bench:live-users", users, 2, None, true)
        .map_err(|e| anyhow!("building {LIVE_USERS} live users: {e}"))?;
    let saved = first
        .checkpoint
        .ok_or_else(|| anyhow!("no checkpoint was taken"))?;
    record(
        format!("checkpoint of {LIVE_USERS} live users: dataflow paused"),
        first.paused_for.unwrap_or_default().as_secs_f64() * 1000.0,
        "ms",
    );
    record(
        "  of which saving operator state".into(),
        first.saved_in.unwrap_or_default().as_secs_f64() * 1000.0,
        "ms",
    );

    let store_dir = dir.join("checkpoint-bench");
    if store_dir.exists() {
        std::fs::remove_dir_all(&store_dir)
            .with_context(|| format!("cannot clear {}", store_dir.display()))?;
    }
    let checkpoints = Checkpoints::new(Arc::new(LocalDirStore::new(&store_dir)?), 1);
    let written = Instant::now();
    let size = saved.bytes();
    let entries: Vec<StateEntry> = saved
        .entries()
        .map(|(key, value)| StateEntry::put(key.to_vec(), value.to_vec()))
        .collect();
    checkpoints.commit(1, None, entries, 2, "bench", Default::default())?;
    record(
        format!("checkpoint of {LIVE_USERS} live users: size"),
        size as f64 / (1024.0 * 1024.0),
        "MiB",
    );
    record(
        format!("checkpoint of {LIVE_USERS} live users: sort, encode + write (writer thread)"),
        written.elapsed().as_secs_f64() * 1000.0,
        "ms",
    );
    drop(saved);

    let restart = Instant::now();
    let loaded = checkpoints
        .load_latest()?
        .ok_or_else(|| anyhow!("the checkpoint just written is not there"))?;
    let mut state = StateImage::default();
    for entry in loaded.entries() {
        let (key, value) = entry?;
        state.apply([Change {
            key,
            value: Some(value),
        }]);
    }
    let loaded_after = restart.elapsed();
    let tail: Vec<RawRecord> = (LIVE_USERS..LIVE_USERS + TAIL)
        .map(|index| pageview(index, index % LIVE_USERS, start_ts))
        .collect();
    let second = run_half(config, "bench:live-users", tail, 2, Some(&state), true)
        .map_err(|e| anyhow!("restoring {LIVE_USERS} live users: {e}"))?;
    let caught_up = loaded_after + second.caught_up_after.unwrap_or_default();
    record(
        format!("restart with {LIVE_USERS} live users: load + verify"),
        loaded_after.as_secs_f64() * 1000.0,
        "ms",
    );
    record(
        format!("restart with {LIVE_USERS} live users: start to caught up"),
        caught_up.as_secs_f64() * 1000.0,
        "ms",
    );
    Ok(())
}
