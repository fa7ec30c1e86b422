//! Where `pageflow run` writes its results: local files (the embedded default) or AWS (features to
//! Kinesis, the archive through Firehose). The sink thread of [`crate::commands::run`] drives one
//! [`JobOutputs`]; nothing else in the job knows which it is.
//!
//! **Local mode.** `features.jsonl` and the archive under `[sinks] dir`. Every
//! [`RETENTION_CHECK_INTERVAL`], `features.jsonl` is rolled if due and `[sinks.retention]` deletes
//! the oldest closed files beyond its size budget or age (never a file being written); each
//! deletion is logged and counted in `pageflow_sink_retention_deleted_files_total`.
//!
//! **AWS mode.** Records are buffered and sent when a full `PutRecords` batch (500) is ready or the
//! oldest has waited `max_batch_delay`. The features stream and the three delivery streams are
//! written concurrently; each call retries throttling and partial failures until written
//! ([`pageflow_connectors::batch::deliver`]), and while it does, the sink thread waits, its channel
//! fills, and the dataflow stops reading: backpressure, not loss. A record that no retry can write
//! (over the size limit, say) becomes a dead letter with reason `undeliverable`; a dead letter that
//! the dead-letter stream will not take goes to `<dir>/undeliverable.jsonl`. Nothing is dropped.
//! A failure no retry can fix (a missing stream, no permission) stops the job with what to do.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::FeatureFileSink;
use pageflow_connectors::batch::{Delivery, OutRecord, RetryPolicy};
use pageflow_connectors::files::retention::{self, ManagedFiles, RetentionPolicy};
use pageflow_connectors::files::sink::{ArchiveSink, RollPolicy};
use pageflow_connectors::firehose_sink::{DeliveryStream, FirehoseArchive};
use pageflow_connectors::kinesis::sink::{KinesisStream, feature_records};
use pageflow_dataflow::event::{DeadLetter, Reason, SourcePosition};
use pageflow_dataflow::features::Feature;
use pageflow_dataflow::operators::ingest::RawValid;

use pageflow_metrics::Metrics;

/// A destination for the job's results.
pub trait JobOutputs: Send {
    /// Final features, in order.
    fn features(&mut self, features: &[Feature]) -> Result<()>;
    /// Records that were not counted.
    fn dead_letters(&mut self, letters: &[DeadLetter]) -> Result<()>;
    /// Valid records as received (the raw archive).
    fn raw(&mut self, records: &[RawValid]) -> Result<()>;
    /// Called regularly: writes out what has waited long enough.
    fn tick(&mut self) -> Result<()>;
    /// Writes out everything buffered.
    fn flush(&mut self) -> Result<()>;
}

/// How often local outputs roll `features.jsonl` and apply retention (a scan of the archive).
pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How much local output is kept, and when `features.jsonl` rolls (`[sinks.retention]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRetention {
    /// What is deleted.
    pub policy: RetentionPolicy,
    /// When `features.jsonl` rolls; `None`: never.
    pub roll: Option<RollPolicy>,
}

impl LocalRetention {
    /// Keeps everything in one `features.jsonl`.
    pub const KEEP_ALL: LocalRetention = LocalRetention {
        policy: RetentionPolicy::UNLIMITED,
        roll: None,
    };
}

/// Files under a directory: `features.jsonl` and, optionally, the layered archive.
#[derive(Debug)]
pub struct LocalOutputs {
    dir: PathBuf,
    features: FeatureFileSink,
    archive: Option<ArchiveSink>,
    last_flush: Instant,
    retention: LocalRetention,
    last_retention: Instant,
    /// The archive's writes at the last retention pass: files not written since are closed.
    archive_mark: u64,
    metrics: Option<Arc<Metrics>>,
}

impl LocalOutputs {
    /// Opens the files under `dir`, keeping everything.
    pub fn open(dir: &Path, archive: bool) -> Result<Self> {
        Self::with_retention(dir, archive, LocalRetention::KEEP_ALL, None)
    }

    /// Opens the files under `dir` and applies `retention` once (a restart frees space first),
    /// then every [`RETENTION_CHECK_INTERVAL`]; deletions are counted in `metrics`.
    pub fn with_retention(
        dir: &Path,
        archive: bool,
        retention: LocalRetention,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let mut features = FeatureFileSink::open(dir)?;
        if let Some(roll) = retention.roll {
            features = features.with_rolling(roll, SystemTime::now());
        }
        let mut outputs = LocalOutputs {
            dir: dir.to_path_buf(),
            features,
            archive: if archive {
                Some(ArchiveSink::new(dir, "local-0")?)
            } else {
                None
            },
            last_flush: Instant::now(),
            retention,
            last_retention: Instant::now(),
            archive_mark: 0,
            metrics,
        };
        outputs.apply_retention(SystemTime::now())?;
        Ok(outputs)
    }

    /// Rolls `features.jsonl` if due at `now`, closes the archive files not written since the
    /// last pass (hours the data has moved past), and deletes what retention says; returns the
    /// files deleted.
    pub fn apply_retention(&mut self, now: SystemTime) -> Result<retention::Deleted> {
        if let Some(archive) = self.archive.as_mut() {
            archive.close_parts_unused_since(self.archive_mark)?;
            self.archive_mark = archive.use_mark();
        }
        if let Some(rolled) = self.features.roll_if_due(now)? {
            tracing::info!(file = %rolled.display(), "rolled the features file");
        }
        let managed = ManagedFiles {
            trees: self
                .archive
                .as_ref()
                .map(|a| vec![a.archive_root().to_path_buf()])
                .unwrap_or_default(),
            named: vec![(self.dir.clone(), "features".to_string())],
        };
        let mut open: Vec<&Path> = vec![self.features.path()];
        if let Some(archive) = &self.archive {
            open.extend(archive.open_paths());
        }
        let deleted = retention::enforce(&managed, &open, &self.retention.policy, now);
        if let Some(metrics) = &self.metrics
            && !deleted.files.is_empty()
        {
            metrics.add_retention_deleted(deleted.files.len() as u64, deleted.bytes());
        }
        Ok(deleted)
    }
}

impl JobOutputs for LocalOutputs {
    fn features(&mut self, features: &[Feature]) -> Result<()> {
        for feature in features {
            self.features.write(feature)?;
            if let Some(archive) = self.archive.as_mut() {
                archive.write_feature(feature)?;
            }
        }
        Ok(())
    }

    fn dead_letters(&mut self, letters: &[DeadLetter]) -> Result<()> {
        if let Some(archive) = self.archive.as_mut() {
            for letter in letters {
                archive.write_dead_letter(letter)?;
            }
        }
        Ok(())
    }

    fn raw(&mut self, records: &[RawValid]) -> Result<()> {
        if let Some(archive) = self.archive.as_mut() {
            for record in records {
                archive.write_raw(&record.portal, record.ts, &record.bytes)?;
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        if self.last_flush.elapsed() >= Duration::from_millis(500) {
            self.flush()?;
        }
        if self.last_retention.elapsed() >= RETENTION_CHECK_INTERVAL {
            // Flushed first, so that sizes and times on disk are up to date.
            self.flush()?;
            self.apply_retention(SystemTime::now())?;
            self.last_retention = Instant::now();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.features.flush()?;
        if let Some(archive) = self.archive.as_mut() {
            archive.flush()?;
        }
        self.last_flush = Instant::now();
        Ok(())
    }
}

/// Records per `PutRecords`/`PutRecordBatch` call: a full batch is sent at once.
const FULL_BATCH: usize = 500;

/// Features to Kinesis, the archive through Firehose.
#[derive(Debug)]
pub struct AwsOutputs {
    runtime: tokio::runtime::Handle,
    features_stream: KinesisStream,
    archive: Option<FirehoseArchive>,
    policy: RetryPolicy,
    max_batch_delay: Duration,
    metrics: Arc<Metrics>,
    fallback_path: PathBuf,
    fallback: Option<BufWriter<File>>,
    pending_features: Vec<Feature>,
    pending_raw: Vec<Vec<u8>>,
    pending_dead_letters: Vec<DeadLetter>,
    oldest: Option<Instant>,
}

impl AwsOutputs {
    /// Outputs to `features_stream` and, if given, `archive`; `dir` takes what no service would.
    pub fn new(
        runtime: tokio::runtime::Handle,
        features_stream: KinesisStream,
        archive: Option<FirehoseArchive>,
        max_batch_delay: Duration,
        dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Self {
        AwsOutputs {
            runtime,
            features_stream,
            archive,
            policy: RetryPolicy::default(),
            max_batch_delay,
            metrics,
            fallback_path: dir.join("undeliverable.jsonl"),
            fallback: None,
            pending_features: Vec::new(),
            pending_raw: Vec::new(),
            pending_dead_letters: Vec::new(),
            oldest: None,
        }
    }

    fn buffered(&self) -> usize {
        self.pending_features
            .len()
            .max(self.pending_raw.len())
            .max(self.pending_dead_letters.len())
    }

    fn note_buffered(&mut self) -> Result<()> {
        if self.oldest.is_none() && self.buffered() > 0 {
            self.oldest = Some(Instant::now());
        }
        if self.buffered() >= FULL_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Turns what a delivery could not write into dead letters; returns its fatal error, if any.
    fn account(
        &mut self,
        sink: &str,
        destination: &str,
        delivery: Delivery,
        letters: &mut Vec<DeadLetter>,
    ) -> Option<String> {
        self.metrics.add_sink_delivery(
            sink,
            delivery.written as u64,
            delivery.retried_entries as u64,
        );
        for (index, (record, reason)) in delivery.undeliverable.into_iter().enumerate() {
            letters.push(undeliverable(destination, index, &record, &reason));
        }
        delivery
            .fatal
            .map(|fatal| format!("{destination}: {fatal}"))
    }

    fn write_fallback(&mut self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        if self.fallback.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.fallback_path)
                .with_context(|| {
                    format!(
                        "cannot open {} for records no AWS service would take; check the [sinks] dir",
                        self.fallback_path.display()
                    )
                })?;
            self.fallback = Some(BufWriter::new(file));
        }
        if let Some(writer) = self.fallback.as_mut() {
            for letter in letters {
                writer.write_all(letter.to_json().as_bytes())?;
                writer.write_all(b"\n")?;
            }
            writer
                .flush()
                .with_context(|| format!("cannot write {}", self.fallback_path.display()))?;
        }
        Ok(())
    }
}

/// A dead letter for an output record that could not be written.
fn undeliverable(destination: &str, index: usize, record: &OutRecord, reason: &str) -> DeadLetter {
    DeadLetter::new(
        Reason::Undeliverable,
        format!(
            "{destination} did not take this record: {reason}; it is kept here so it can be re-sent once the cause is fixed"
        ),
        SourcePosition {
            partition: format!("sink:{destination}"),
            position: if record.partition_key.is_empty() {
                index.to_string()
            } else {
                record.partition_key.clone()
            },
        },
        record.data.strip_suffix(b"\n").unwrap_or(&record.data),
    )
}

impl JobOutputs for AwsOutputs {
    fn features(&mut self, features: &[Feature]) -> Result<()> {
        self.pending_features.extend_from_slice(features);
        self.note_buffered()
    }

    fn dead_letters(&mut self, letters: &[DeadLetter]) -> Result<()> {
        if self.archive.is_some() {
            self.pending_dead_letters.extend_from_slice(letters);
        }
        self.note_buffered()
    }

    fn raw(&mut self, records: &[RawValid]) -> Result<()> {
        if self.archive.is_some() {
            self.pending_raw
                .extend(records.iter().map(|record| record.bytes.clone()));
        }
        self.note_buffered()
    }

    fn tick(&mut self) -> Result<()> {
        if self
            .oldest
            .is_some_and(|oldest| oldest.elapsed() >= self.max_batch_delay)
        {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.oldest = None;
        let features = std::mem::take(&mut self.pending_features);
        let raw = std::mem::take(&mut self.pending_raw);
        let mut letters = std::mem::take(&mut self.pending_dead_letters);
        // Serialised once: the features stream and the processed layer carry the same JSON.
        let records = feature_records(&features);
        let processed: Vec<Vec<u8>> = if self.archive.is_some() {
            records.iter().map(|r| r.data.clone()).collect()
        } else {
            Vec::new()
        };
        let policy = self.policy;
        let stream = self.features_stream.clone();
        let archive = self.archive.clone();
        let (to_kinesis, to_raw, to_processed) = self.runtime.block_on(async move {
            let features = async {
                if records.is_empty() {
                    Delivery::default()
                } else {
                    stream.write(records, policy).await
                }
            };
            let layer = |layer: Option<DeliveryStream>, lines: Vec<Vec<u8>>| async move {
                match layer {
                    Some(layer) if !lines.is_empty() => layer.write_lines(lines, policy).await,
                    _ => Delivery::default(),
                }
            };
            tokio::join!(
                features,
                layer(archive.as_ref().map(|a| a.raw.clone()), raw),
                layer(archive.as_ref().map(|a| a.processed.clone()), processed)
            )
        });
        let mut fatal = Vec::new();
        let mut new_letters = Vec::new();
        fatal.extend(self.account("kinesis", "features stream", to_kinesis, &mut new_letters));
        fatal.extend(self.account("firehose_raw", "raw archive", to_raw, &mut new_letters));
        fatal.extend(self.account(
            "firehose_processed",
            "processed archive",
            to_processed,
            &mut new_letters,
        ));
        for _ in &new_letters {
            self.metrics.record_dead_letter(Reason::Undeliverable);
        }
        letters.extend(new_letters);

        let mut unsent = Vec::new();
        match self.archive.as_ref().map(|a| a.dead_letter.clone()) {
            Some(dead_letter_stream) if !letters.is_empty() => {
                let lines = letters.iter().map(|l| l.to_json().into_bytes()).collect();
                let delivery = self
                    .runtime
                    .block_on(dead_letter_stream.write_lines(lines, policy));
                let mut rejected = Vec::new();
                fatal.extend(self.account(
                    "firehose_dead_letter",
                    "dead-letter archive",
                    delivery,
                    &mut rejected,
                ));
                unsent.extend(rejected);
            }
            // Without an archive, the undeliverable features still must land somewhere.
            _ => unsent.extend(
                letters
                    .into_iter()
                    .filter(|l| l.reason == Reason::Undeliverable),
            ),
        }
        self.write_fallback(&unsent)?;
        if fatal.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "the AWS sinks cannot write: {}; records not written are in {}. Check that the streams in [sinks.kinesis] and [sinks.firehose] exist and that the task role may write to them (deploy/iam)",
                fatal.join("; "),
                self.fallback_path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn raws(portal: &str, hour: u64, count: usize) -> Vec<RawValid> {
        (0..count)
            .map(|i| RawValid {
                portal: portal.to_string(),
                ts: hour * HOUR_MS + i as u64,
                bytes: format!("{{\"portal\":\"{portal}\",\"n\":{i:080}}}").into_bytes(),
            })
            .collect()
    }

    fn raw_file(dir: &Path, hour: &str) -> PathBuf {
        dir.join(format!(
            "archive/raw/portal=g1/date=1970-01-01/hour={hour}/part-local-0.jsonl"
        ))
    }

    /// Every file under `dir` with its contents, sorted by path.
    fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(current) = stack.pop() {
            for entry in std::fs::read_dir(&current).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let contents = std::fs::read_to_string(&path).unwrap();
                    out.push((path.strip_prefix(dir).unwrap().to_path_buf(), contents));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn retention_deletes_the_oldest_closed_archive_file_and_never_an_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let retention = LocalRetention {
            policy: RetentionPolicy {
                max_bytes: Some(1_500),
                max_age: None,
            },
            roll: None,
        };
        let mut outputs =
            LocalOutputs::with_retention(dir.path(), true, retention, Some(Arc::clone(&metrics)))
                .unwrap();
        let now = SystemTime::now();
        outputs.raw(&raws("g1", 0, 10)).unwrap();
        outputs.flush().unwrap();
        // ~1 KB: within the budget; the hour-0 file stays open (written since the last pass).
        assert!(outputs.apply_retention(now).unwrap().files.is_empty());
        outputs.raw(&raws("g1", 1, 10)).unwrap();
        outputs.flush().unwrap();
        // ~2 KB: over. Hour 0 was not written since the last pass, so it is closed and deleted;
        // hour 1 is being written and stays, although the total is still over the budget.
        let deleted = outputs.apply_retention(now).unwrap();
        assert_eq!(deleted.files.len(), 1);
        assert_eq!(deleted.files[0].0, raw_file(dir.path(), "00"));
        assert!(!raw_file(dir.path(), "00").exists());
        assert!(raw_file(dir.path(), "01").exists());
        assert_eq!(metrics.retention_deleted_files(), 1);
        // Nothing more can go: the rest is open.
        assert!(outputs.apply_retention(now).unwrap().files.is_empty());
        assert!(raw_file(dir.path(), "01").exists());
        assert!(dir.path().join("features.jsonl").exists());
    }

    #[test]
    fn retention_by_age_follows_the_clock_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let retention = LocalRetention {
            policy: RetentionPolicy {
                max_bytes: None,
                max_age: Some(Duration::from_secs(3600)),
            },
            roll: None,
        };
        let mut outputs = LocalOutputs::with_retention(dir.path(), true, retention, None).unwrap();
        outputs.raw(&raws("g1", 0, 3)).unwrap();
        outputs.flush().unwrap();
        let now = SystemTime::now();
        assert!(outputs.apply_retention(now).unwrap().files.is_empty());
        outputs.raw(&raws("g1", 1, 3)).unwrap();
        outputs.flush().unwrap();
        // Hour 0 is closed now, but young.
        assert!(outputs.apply_retention(now).unwrap().files.is_empty());
        assert!(raw_file(dir.path(), "00").exists());
        // Two hours later (no sleep: the clock is passed in) it is too old; hour 1 is still open.
        outputs.raw(&raws("g1", 1, 1)).unwrap();
        let later = now + Duration::from_secs(2 * 3600);
        let deleted = outputs.apply_retention(later).unwrap();
        assert_eq!(deleted.files.len(), 1);
        assert!(!raw_file(dir.path(), "00").exists());
        assert!(raw_file(dir.path(), "01").exists());
    }

    #[test]
    fn within_the_default_budget_the_outputs_are_the_same_as_without_retention() {
        let kept = tempfile::tempdir().unwrap();
        let managed = tempfile::tempdir().unwrap();
        let defaults = crate::config::RetentionSection::default();
        let retention = LocalRetention {
            policy: defaults.policy(),
            roll: defaults.roll(),
        };
        let mut plain = LocalOutputs::open(kept.path(), true).unwrap();
        let mut with = LocalOutputs::with_retention(managed.path(), true, retention, None).unwrap();
        let feature = Feature::ranking(
            pageflow_dataflow::features::RankingKind::Trending,
            "g1",
            0,
            60_000,
            Vec::new(),
        );
        for outputs in [&mut plain, &mut with] {
            for hour in 0..3 {
                outputs.raw(&raws("g1", hour, 5)).unwrap();
                outputs.features(std::slice::from_ref(&feature)).unwrap();
                outputs.apply_retention(SystemTime::now()).unwrap();
            }
            outputs.flush().unwrap();
        }
        assert_eq!(tree(kept.path()), tree(managed.path()));
        assert!(
            tree(kept.path()).len() >= 5,
            "features, 3 raw hours, processed"
        );
    }
}
