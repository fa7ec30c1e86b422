//! `pageflow bench --soak`: the job as it runs for days, compressed into minutes.
//!
//! The job is `pageflow run` on the synthetic traffic model, paced as live traffic is, but by a
//! clock the soak moves instead of the wall clock: two workers by default, the streaming local
//! sinks (features and dead letters; the raw archive with `--archive`), checkpoints on (to a local
//! store). The soak moves the clock a second of event time at a time (more at low rates, see
//! `clock_step`) and waits until the job has read up to it; every `checkpoint_every` (30 s of
//! event time by default) it asks for a checkpoint, as the live job's timer does every 30 s. So every
//! checkpoint covers what a live job's covers at `rate` events per second (its bytes and its pause
//! are the live job's), while a day of event time passes in minutes: `hours` of it cover every
//! window the job keeps (the 24-hour co-occurrence windows fill up after a day). A checkpoint still
//! being written holds the clock, as it would hold the live job's timer.
//!
//! Every event-hour (by the job watermark) it prints a row: the process's resident set and live
//! heap (see [`pageflow_metrics::heap`]), the state
//! every operator holds (bytes and keys, as the operators account for them), the checkpoints taken
//! during that hour (how many, bytes written, the longest pause of the dataflow) and the bytes the
//! newest checkpoint is made of. At the end: whether memory reached a plateau once the windows
//! were full. Then it stops the job as SIGTERM does (a final checkpoint, the windows still open)
//! and measures how long a restart from that checkpoint (with 30 h, a full day's state) takes to
//! be ready (restored, dataflow built).
//!

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use pageflow_dataflow::config::{Millis, SemanticsConfig};
use serde::Serialize;

use pageflow_dataflow::clock::ManualClock;

use super::run::{self, RunHooks};
use crate::config::{JobConfig, SourceKind};

/// What `--soak` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct SoakSettings {
    /// Events per second of event time.
    pub rate: f64,
    /// Hours of event time.
    pub hours: f64,
    /// Worker threads.
    pub workers: usize,
    /// Checkpoint interval in event time.
    pub checkpoint_every: Millis,
    /// Also write the layered raw/processed/dead-letter archive (a day at 2,000 events/s is about
    /// 35 GB of raw JSON).
    pub archive: bool,
    /// Where the job's outputs and checkpoints go (cleared first, removed after).
    pub dir: PathBuf,
    /// The semantics.
    pub semantics: SemanticsConfig,
}

/// One event-hour of the soak.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HourRow {
    /// The event-hour that ended (1 for the first).
    pub hour: u64,
    /// Events read by its end.
    pub events: u64,
    /// Processing seconds since the start.
    pub elapsed_s: f64,
    /// Events per second of processing during the hour.
    pub events_per_second: f64,
    /// Resident set of the process, MiB.
    pub rss_mib: f64,
    /// Live heap of the process (allocated, not freed), MiB.
    pub heap_mib: f64,
    /// State in memory by operator: `(bytes, keys)`.
    pub state: BTreeMap<String, (u64, u64)>,
    /// Checkpoints committed during the hour.
    pub checkpoints: u64,
    /// Bytes they wrote.
    pub checkpoint_bytes: u64,
    /// The longest the dataflow stood still for one of them (draining what was in flight, then
    /// saving), ms.
    pub max_pause_ms: f64,
    /// The median pause of the hour's checkpoints, ms (the longest is a tail: on a machine with
    /// fewer cores than busy threads, one descheduled worker holds the others at the meeting).
    pub median_pause_ms: f64,
    /// The longest a worker spent finishing records in flight (part of the pause), ms.
    pub max_drain_work_ms: f64,
    /// The longest a worker took to save its operators' changes (part of the pause), ms.
    pub max_save_ms: f64,
    /// Bytes of the newest checkpoint's state (base and deltas), MiB.
    pub stored_mib: f64,
}

/// Runs the soak and prints a table as it goes; returns the rows and the restart time.
pub fn run(settings: &SoakSettings) -> Result<(Vec<HourRow>, Option<Duration>)> {
    let dir = &settings.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let config = job_config(settings, dir);
    let total = (settings.rate * settings.hours * 3600.0).round() as u64;
    println!(
        "soak: {} events/s of event time for {} h ({total} events), {} workers, checkpoints every {} of event time, archive {}",
        settings.rate,
        settings.hours,
        settings.workers,
        settings.checkpoint_every,
        if settings.archive { "on" } else { "off" }
    );
    let started = Instant::now();
    let clock = ManualClock::new(START_TS);
    let job = run::start_with(
        config.clone(),
        RunHooks {
            synthetic_clock: Some(clock.clone()),
        },
    )?;
    let metrics = std::sync::Arc::clone(&job.metrics);
    let mut rows: Vec<HourRow> = Vec::new();
    let mut hour_checkpoints = HourCheckpoints::default();
    let mut seen_checkpoint = None;
    let mut last_hour = (0u64, started, 0u64);
    let mut printed_header = false;
    let hours = settings.hours.ceil() as u64;
    let every = settings.checkpoint_every.ms();
    let step = clock_step(settings.rate, every);
    let out_of_orderness = config.semantics.max_out_of_orderness.ms();
    let mut next_checkpoint = START_TS + every;
    let mut now_ts = START_TS;
    let mut stalls = 0u64;
    loop {
        now_ts += step;
        clock.set(now_ts);
        if !caught_up(&job, now_ts, out_of_orderness, step) {
            stalls += 1;
        }
        if now_ts >= next_checkpoint {
            // The live job's checkpoint timer fires now; a checkpoint still being written holds
            // the clock, as it would hold the timer.
            wait_for(Duration::from_secs(600), || {
                job.has_ended() || job.request_checkpoint().is_some()
            });
            next_checkpoint += every;
        }
        if job.has_ended() {
            // The traffic never ends by itself: the job stopped on an error (logged).
            job.shutdown()?;
            return Err(anyhow!(
                "the job stopped after {} event-hours of the {hours} asked for; see the log above",
                last_hour.0
            ));
        }
        let figures = metrics.checkpoints();
        if figures.last_id.is_some() && figures.last_id != seen_checkpoint {
            seen_checkpoint = figures.last_id;
            hour_checkpoints.add(&figures);
        }
        let hour = (now_ts - START_TS) / 3_600_000;
        if hour > last_hour.0 {
            let events = metrics.events_in();
            let now = Instant::now();
            let row = HourRow {
                hour,
                events,
                elapsed_s: started.elapsed().as_secs_f64(),
                events_per_second: (events - last_hour.2) as f64
                    / now.duration_since(last_hour.1).as_secs_f64().max(1e-9),
                rss_mib: current_rss_mib(),
                heap_mib: pageflow_metrics::heap::live_bytes() as f64 / (1024.0 * 1024.0),
                state: metrics.state_sizes(),
                checkpoints: hour_checkpoints.pauses_ms.len() as u64,
                checkpoint_bytes: hour_checkpoints.bytes,
                max_pause_ms: hour_checkpoints
                    .pauses_ms
                    .iter()
                    .copied()
                    .fold(0.0, f64::max),
                median_pause_ms: hour_checkpoints.median_pause_ms(),
                max_drain_work_ms: hour_checkpoints.max_drain_work_ms,
                max_save_ms: hour_checkpoints.max_save_ms,
                stored_mib: figures.stored_bytes as f64 / (1024.0 * 1024.0),
            };
            if !printed_header {
                println!("{}", header(&row));
                printed_header = true;
            }
            println!("{}", line(&row));
            rows.push(row);
            hour_checkpoints = HourCheckpoints::default();
            last_hour = (hour, now, events);
        }
        if hour >= hours {
            break;
        }
    }
    if stalls > 0 {
        println!(
            "note: {stalls} times the job had not caught up with the clock after 30 s; the soak went on"
        );
    }
    // Stopped as `pageflow run` stops on SIGTERM: a final checkpoint of the whole state, windows
    // still open (the input has not ended), which the restart below starts from.
    let stopped = job.checkpoint_and_stop(Duration::from_secs(600))?;
    job.wait_for_compaction();
    job.shutdown()?;
    if let Some(plateau) = plateau(&rows) {
        println!("{plateau}");
    }

    let restart = match stopped {
        run::Stopped::Checkpointed(id) => {
            let begun = Instant::now();
            let job = run::start_with(
                config,
                RunHooks {
                    synthetic_clock: Some(ManualClock::new(now_ts)),
                },
            )?;
            if !wait_for(Duration::from_secs(600), || job.serving.is_loaded()) {
                return Err(anyhow!("the restarted job was not ready after 10 minutes"));
            }
            let ready = begun.elapsed();
            println!(
                "restart from checkpoint {id} ({:.0} MiB stored, {} h of state) to ready: {:.2} s",
                metrics.checkpoints().stored_bytes as f64 / (1024.0 * 1024.0),
                hours,
                ready.as_secs_f64()
            );
            job.checkpoint_and_stop(Duration::from_secs(60))?;
            job.wait_for_compaction();
            job.shutdown()?;
            Some(ready)
        }
        other => {
            println!("no final checkpoint ({other:?}): the restart is not measured");
            None
        }
    };
    if let Err(error) = std::fs::remove_dir_all(dir) {
        eprintln!("could not remove {}: {error}", dir.display());
    }
    Ok((rows, restart))
}

/// Where the soak's clock starts (2026-11-23T12:00:00Z): a fixed start, so runs compare.
const START_TS: u64 = 1_795_435_200_000;

/// The checkpoints committed during one event-hour.
#[derive(Debug, Default)]
struct HourCheckpoints {
    pauses_ms: Vec<f64>,
    bytes: u64,
    max_drain_work_ms: f64,
    max_save_ms: f64,
}

impl HourCheckpoints {
    fn add(&mut self, figures: &pageflow_metrics::CheckpointFigures) {
        self.pauses_ms.push(figures.last_pause_s * 1000.0);
        self.bytes += figures.last_size_bytes;
        self.max_drain_work_ms = self
            .max_drain_work_ms
            .max(figures.last_drain_work_s * 1000.0);
        self.max_save_ms = self.max_save_ms.max(figures.last_save_s * 1000.0);
    }

    fn median_pause_ms(&self) -> f64 {
        let mut sorted = self.pauses_ms.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }
}

/// How far the soak moves its clock at a time: a second of event time, or more at low rates (at
/// least a thousand events' worth, so that waiting on the job does not dominate), never more
/// than a checkpoint interval.
fn clock_step(rate: f64, checkpoint_every: u64) -> u64 {
    let thousand_events = (1000.0 * 1000.0 / rate.max(1e-3)) as u64;
    thousand_events.clamp(1000, checkpoint_every.max(1000))
}

/// Waits (at most 30 s) until the job has read every record due by `now_ts`: its watermark is
/// within the out-of-orderness bound of the clock, give or take half a step (each partition's
/// newest record is a little before the clock), or no record came for 20 ms and the watermark is
/// within a step (sparse traffic). Returns whether it caught up in time.
fn caught_up(job: &run::RunningJob, now_ts: u64, out_of_orderness: u64, step: u64) -> bool {
    let mut records = job.records_in();
    let mut quiet_since = Instant::now();
    wait_for(Duration::from_secs(30), || {
        if job.has_ended() {
            return true;
        }
        let Some(watermark) = job.watermark() else {
            return false;
        };
        let behind = now_ts.saturating_sub(watermark + out_of_orderness);
        if behind <= step / 2 {
            return true;
        }
        let now = job.records_in();
        if now != records {
            records = now;
            quiet_since = Instant::now();
            return false;
        }
        behind <= step && quiet_since.elapsed() >= Duration::from_millis(20)
    })
}

/// Polls `done` until it holds or `timeout` passes; returns whether it held.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The job the soak runs.
fn job_config(settings: &SoakSettings, dir: &Path) -> JobConfig {
    let mut config = JobConfig {
        semantics: settings.semantics.clone(),
        ..JobConfig::default()
    };
    config.source.kind = SourceKind::Synthetic;
    // Paced by the soak's clock (see `RunHooks`), as live traffic is by the wall clock.
    config.source.simulated = false;
    config.source.events_per_second = settings.rate;
    // (`start_ts` stays unset: paced traffic starts at its clock's time, `START_TS`.)
    // Unbounded: the soak stops the job (as SIGTERM does) once `hours` of event time are in.
    config.source.limit = None;
    config.sinks.dir = dir.to_path_buf();
    config.sinks.archive = settings.archive;
    // The curated lake is measured apart (README, "The lake"); numbers stay comparable.
    config.sinks.curated = Some(crate::config::CuratedSetting::Switch(false));
    config.serve.enabled = false;
    config.runtime.workers = settings.workers;
    config.checkpoint.enabled = true;
    // The soak asks for checkpoints by event time; the timer stays out of the way.
    config.checkpoint.interval = Millis::hours(24 * 365);
    config
}

fn header(row: &HourRow) -> String {
    let mut text = format!(
        "{:>4} {:>11} {:>8} {:>9} {:>8} {:>8}",
        "hour", "events", "wall s", "events/s", "RSS MiB", "heap MiB"
    );
    for operator in row.state.keys() {
        let _ = write!(text, " {:>13}", short(operator));
    }
    let _ = write!(
        text,
        " {:>4} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10}",
        "ckpt", "ckpt MiB", "pause p50", "pause max", "work ms", "save ms", "stored MiB"
    );
    text.push_str(
        "\n     (pause: the dataflow standing still per checkpoint, ms; work and save: the longest spent finishing records in flight and copying state out)",
    );
    text.push_str("\n     (state columns: MiB in memory / thousands of keys)");
    text
}

fn short(operator: &str) -> String {
    operator.chars().take(13).collect()
}

fn line(row: &HourRow) -> String {
    let mut text = format!(
        "{:>4} {:>11} {:>8.1} {:>9.0} {:>8.0} {:>8.0}",
        row.hour, row.events, row.elapsed_s, row.events_per_second, row.rss_mib, row.heap_mib
    );
    for (bytes, keys) in row.state.values() {
        let cell = format!(
            "{:.1}/{:.0}",
            *bytes as f64 / (1024.0 * 1024.0),
            *keys as f64 / 1000.0
        );
        let _ = write!(text, " {cell:>13}");
    }
    let _ = write!(
        text,
        " {:>4} {:>9.1} {:>9.0} {:>9.0} {:>8.0} {:>8.0} {:>10.1}",
        row.checkpoints,
        row.checkpoint_bytes as f64 / (1024.0 * 1024.0),
        row.median_pause_ms,
        row.max_pause_ms,
        row.max_drain_work_ms,
        row.max_save_ms,
        row.stored_mib
    );
    text
}

/// Whether memory stopped growing once the 24-hour windows were full: RSS and state at hour 24
/// against the last hour.
fn plateau(rows: &[HourRow]) -> Option<String> {
    let full = rows.iter().find(|r| r.hour == 24)?;
    let last = rows.last()?;
    if last.hour <= full.hour {
        return None;
    }
    let state = |row: &HourRow| row.state.values().map(|(b, _)| *b).sum::<u64>() as f64 / 1048576.0;
    Some(format!(
        "plateau: from hour 24 to hour {}: RSS {:.0} -> {:.0} MiB ({:+.1} %), state {:.0} -> {:.0} MiB ({:+.1} %)",
        last.hour,
        full.rss_mib,
        last.rss_mib,
        (last.rss_mib / full.rss_mib - 1.0) * 100.0,
        state(full),
        state(last),
        (state(last) / state(full) - 1.0) * 100.0
    ))
}

fn current_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
