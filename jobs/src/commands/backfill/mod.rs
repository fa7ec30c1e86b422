//! `pageflow backfill`: the graph over the raw archive, as `pageflow replay` runs it over a file.
//!
//! `pageflow backfill --from DIR_OR_S3_URL --out DIR [--portal P] [--from-date D --to-date D]`
//! reads the archive's raw layer (`raw/portal=<p>/date=<YYYY-MM-DD>/hour=<HH>/…`, a local
//! directory or `s3://bucket/prefix`; see [`location`]) and writes `OUT/features.jsonl`,
//! `OUT/dead-letter.jsonl` and `OUT/summary.json` as replay does. Use it to compute a new feature
//! over history, or to rebuild what is derived from the features after a change.
//!
//! ## The order, and what it guarantees
//!
//! The objects are read **in event-time order by hour**: date, then hour; within an hour by
//! portal name, then object (file) name; within an object, line by line ([`layout`]). They form
//! **one replay partition** ([`source`]): the graph, the semantics and the end of the run are
//! replay's ([`replay_lines`]), so the features are byte for byte those of `pageflow replay` over
//! the same records concatenated in that order, with the same `[semantics]`.
//!
//! And they are the original run's features. The raw layer holds the valid events the job took in
//! (late events are not in it: they went to the dead letters), each in the hour of its `ts`; so
//! the archive differs from the original input only in **order**, and only within an hour: the
//! portals of an hour follow each other, and within a portal the events keep the order they
//! arrived in. What the job computes does not depend on the order of the events it counts
//! (sessions take a user's events by `(ts, event_id)`, windows count by `ts`, and a result is
//! emitted only once final), *provided no event is judged late*: order decides only that. An
//! event of hour H comes after events of at most hour H, which are less than an hour later than
//! it; so with `max_out_of_orderness` of at least an hour, no event of the archive is late. A
//! backfill therefore runs with `max_out_of_orderness = max(configured, 1h)` and says so when it
//! raises it: a larger allowance changes when results become final, not what they are (both the
//! original run and the backfill end with the watermark at +∞).
//!
//! Where the order could still change results:
//!
//! - Duplicates (`event_id` seen again within `dedup_window`) that are not byte-identical: the
//!   first copy read is the one counted, and the archive may hold them in another order than the
//!   job read them (across hours, or across writers' files of one hour). Browser retries resend
//!   the same beacon, so this needs a tracker that changes a retried beacon.
//! - Events that were late in the original run are not in the archive (they are in its
//!   dead letters): a backfill counts exactly what the job counted, not what it was sent.
//! - With `--portal` or a date range, the subset is backfilled as if it were all there was:
//!   a session or window that straddles the range's edge is cut there.
//!
//! ## Memory
//!
//! Only the graph's state grows with the archive; its bytes stream through: local files are
//! opened one after the other, S3 objects are fetched an hour ahead (at most two hours in memory;
//! see [`reading`]).

pub mod layout;
pub mod location;
pub mod progress;
pub mod reading;
pub mod source;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use pageflow_dataflow::algorithms::graph::GraphOptions;
use pageflow_dataflow::algorithms::replay::replay_lines;
use pageflow_dataflow::config::{Millis, SemanticsConfig};
use pageflow_dataflow::source::{RecordSource, SourcesByWorker};
use pageflow_dataflow::stats::StatsSnapshot;
use serde::Serialize;

use crate::config::JobConfig;
use layout::{ArchiveObject, Filters};
use location::ArchiveLocation;
use progress::Progress;
use source::ArchiveSource;

/// The least `max_out_of_orderness` a backfill runs with: an hour, the span within which the
/// archive's order differs from the original (see the module docs).
pub const ARCHIVE_REORDERING: Millis = Millis(3_600_000);

/// What `pageflow backfill` was asked to do.
#[derive(Clone, Debug)]
pub struct BackfillOptions {
    /// `--from`: a local directory or `s3://bucket/prefix`.
    pub from: String,
    /// `--out`: where the results go.
    pub out: PathBuf,
    /// `--portal`, `--from-date`, `--to-date`.
    pub filters: Filters,
    /// Worker threads.
    pub workers: usize,
}

/// What `summary.json` holds.
#[derive(Debug, Serialize)]
pub struct BackfillSummary {
    /// The raw layer read.
    pub from: String,
    /// The filters, in words (empty: none).
    pub filters: String,
    /// Distinct hours read.
    pub hours: usize,
    /// Files or objects read.
    pub objects: usize,
    /// Their size as stored (compressed, when they are).
    pub stored_bytes: u64,
    /// Files or objects under `raw/` outside its `portal=*/date=*/hour=*/` layout, left out.
    pub left_out: usize,
    /// The `max_out_of_orderness` the graph ran with, in ms.
    pub max_out_of_orderness_ms: u64,
    /// Worker threads used.
    pub workers: usize,
    /// Counts of records by outcome.
    #[serde(flatten)]
    pub counts: StatsSnapshot,
    /// Wall-clock time of the run, listing and reading included.
    pub elapsed_ms: u64,
    /// Records read per second of wall-clock time.
    pub events_per_second: f64,
}

/// The semantics a backfill runs with: `configured`, with `max_out_of_orderness` at least
/// [`ARCHIVE_REORDERING`].
pub fn backfill_semantics(configured: &SemanticsConfig) -> SemanticsConfig {
    let mut semantics = configured.clone();
    semantics.max_out_of_orderness =
        Millis(configured.max_out_of_orderness.0.max(ARCHIVE_REORDERING.0));
    semantics
}

/// The listing: the objects to read in order, and how many were left out.
fn list(
    location: &ArchiveLocation,
    config: &JobConfig,
    filters: &Filters,
) -> Result<(Vec<ArchiveObject>, usize, Option<S3Reader>)> {
    match location {
        ArchiveLocation::Local { root, .. } => {
            let (objects, left_out) = location::list_local(root, filters)?;
            Ok((objects, left_out, None))
        }
        ArchiveLocation::S3 { bucket, prefix } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime for the S3 calls")?;
            let sdk = runtime.block_on(config.aws.load());
            // Emulators (an [aws] endpoint_url) serve buckets by path, not by host name.
            let s3 = aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(config.aws.endpoint_url.is_some())
                    .build(),
            );
            let (objects, left_out) =
                runtime.block_on(location::list_s3(&s3, bucket, prefix, filters))?;
            let reader = S3Reader {
                runtime,
                s3,
                bucket: bucket.clone(),
            };
            Ok((objects, left_out, Some(reader)))
        }
    }
}

/// What reading S3 objects needs after the listing.
struct S3Reader {
    runtime: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

/// `pageflow backfill`: lists, reads and runs the graph; writes the results under `--out`.
pub fn run(options: &BackfillOptions, config: &JobConfig) -> Result<BackfillSummary> {
    let started = Instant::now();
    options
        .filters
        .validate()
        .map_err(|problem| anyhow::anyhow!(problem))?;
    let location = ArchiveLocation::parse(&options.from)?;
    if let Some(note) = location.resolution_note() {
        crate::say!("{note}");
    }
    let (objects, left_out, s3) = list(&location, config, &options.filters)?;
    if objects.is_empty() {
        return Err(location.nothing_found(&options.filters));
    }
    if left_out > 0 {
        crate::say!(
            "left out {left_out} file(s) under {} outside its portal=*/date=*/hour=*/ layout",
            location.raw_display()
        );
    }
    let semantics = backfill_semantics(&config.semantics);
    if semantics.max_out_of_orderness != config.semantics.max_out_of_orderness {
        crate::say!(
            "max_out_of_orderness {}ms raised to {}ms for the backfill: the archive holds each \
             hour's events portal by portal, up to an hour out of their original order (the \
             results are the same; see `pageflow backfill --help`)",
            config.semantics.max_out_of_orderness.0,
            semantics.max_out_of_orderness.0
        );
    }
    let mut hours: Vec<layout::Hour> = objects.iter().map(|o| o.hour).collect();
    hours.dedup();
    let object_count = objects.len();
    let stored_bytes = objects.iter().map(|o| o.size).sum();
    crate::say!(
        "backfill: {} hour(s), {object_count} file(s), {stored_bytes} bytes from {}",
        hours.len(),
        location.raw_display()
    );
    let stream = match s3 {
        None => reading::local_objects(objects),
        Some(S3Reader {
            runtime,
            s3,
            bucket,
        }) => reading::s3_objects(runtime, s3, bucket, objects),
    };
    let source = ArchiveSource::new(
        format!("backfill:{}", options.from),
        stream,
        Progress::new(hours.len() as u64),
    );
    let workers = options.workers.max(1);
    let mut sources_by_worker: SourcesByWorker = (0..workers).map(|_| Vec::new()).collect();
    // The worker the job's placement gives it, as replay does (the results do not depend on it).
    let owner = pageflow_dataflow::placement::assign_partition(source.name(), workers);
    sources_by_worker[owner].push(Box::new(source));
    // With `[sinks] curated` (the default), the curated lake is rebuilt from the archive too.
    let curated = config.sinks.curated_enabled();
    let graph = GraphOptions {
        keep_pageviews: curated,
        ..GraphOptions::default()
    };
    let mut output = replay_lines(&semantics, sources_by_worker, &graph)
        .with_context(|| format!("the backfill from {} failed", location.raw_display()))?;
    let elapsed = started.elapsed();
    let summary = BackfillSummary {
        from: location.raw_display(),
        filters: options.filters.describe(),
        hours: hours.len(),
        objects: object_count,
        stored_bytes,
        left_out,
        max_out_of_orderness_ms: semantics.max_out_of_orderness.0,
        workers,
        counts: output.stats.clone(),
        elapsed_ms: elapsed.as_millis() as u64,
        events_per_second: output.stats.records as f64 / elapsed.as_secs_f64().max(1e-9),
    };
    if curated {
        std::fs::create_dir_all(&options.out).with_context(|| {
            format!(
                "cannot create the output directory {}",
                options.out.display()
            )
        })?;
        super::replay::write_curated(
            &options.out.join(pageflow_connectors::curated::CURATED_DIR),
            "w0",
            &mut output,
        )?;
    }
    write_outputs(&options.out, output, &summary)?;
    Ok(summary)
}

/// Writes `features.jsonl`, `dead-letter.jsonl` and `summary.json` under `out`, as replay does
/// (the curated lake, when on, is written before: it takes the features out of `output`).
fn write_outputs(
    out: &Path,
    output: pageflow_dataflow::algorithms::replay::ReplayOutput,
    summary: &BackfillSummary,
) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    super::replay::write_lines(
        &out.join("features.jsonl"),
        output.feature_lines.into_iter(),
    )?;
    super::replay::write_lines(
        &out.join("dead-letter.jsonl"),
        output.dead_letters.iter().map(|d| d.to_json()),
    )?;
    let summary_path = out.join("summary.json");
    let text = serde_json::to_string_pretty(summary)?;
    std::fs::write(&summary_path, text + "\n")
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_is_raised_to_an_hour_and_never_lowered() {
        let configured = SemanticsConfig::default();
        assert_eq!(
            backfill_semantics(&configured).max_out_of_orderness,
            ARCHIVE_REORDERING
        );
        let generous = SemanticsConfig {
            max_out_of_orderness: Millis(2 * ARCHIVE_REORDERING.0),
            ..SemanticsConfig::default()
        };
        assert_eq!(backfill_semantics(&generous), generous);
        // Nothing else changes.
        let raised = backfill_semantics(&configured);
        assert_eq!(
            SemanticsConfig {
                max_out_of_orderness: configured.max_out_of_orderness,
                ..raised
            },
            configured
        );
    }
}
