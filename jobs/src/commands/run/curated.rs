//! The curated lake in `pageflow run`: the sink thread's side of the two-phase commit.
//!
//! The sink thread hands every final feature and counted event to the [`CuratedSink`]. With
//! checkpoints on, when every worker's part of checkpoint N is in, the sink pre-commits the rows
//! buffered so far (pending files of N, fsync'd) before it hands N to the checkpoint writer; it
//! makes them visible once the job has committed N or a later checkpoint (in a cluster, a process
//! other than 0 learns that from the store: `CheckpointDriver::committed_by_the_job`). At start, the
//! pending files of checkpoints up to the one restored are committed and later ones deleted
//! (see `pageflow_connectors::curated::committer`): after a crash every row is in the lake
//! exactly once. In AWS mode the committed files are also uploaded to the archive bucket's
//! `curated/` prefix, each from its pending copy before the local rename (so a crash before the
//! upload leaves the pending file, uploaded again at the next start). Without checkpoints there is nothing to recover to: the rows are written every
//! [`PUBLISH_INTERVAL_WITHOUT_CHECKPOINTS`] and at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pageflow_connectors::checkpoint_store::CheckpointStore;
use pageflow_connectors::curated::{CURATED_DIR, Compaction, CuratedCommitter};
use pageflow_dataflow::event::DetailedEvent;
use pageflow_dataflow::features::Feature;

use crate::checkpoints::CheckpointDriver;

/// How often a job without checkpoints writes its buffered rows.
pub const PUBLISH_INTERVAL_WITHOUT_CHECKPOINTS: Duration = Duration::from_secs(60);

/// The curated lake's writer in the sink thread.
#[derive(Debug)]
pub struct CuratedSink {
    lake: CuratedCommitter,
    /// The newest checkpoint whose files were made visible.
    committed: Option<u64>,
    /// The newest checkpoint pre-committed.
    precommitted: Option<u64>,
    /// Without checkpoints: when the rows were last written, and the next id to write them under.
    last_publish: Instant,
    next_publish_id: u64,
    /// How long the end waits for the last checkpoints to be committed.
    stop_timeout: Duration,
}

impl CuratedSink {
    /// Opens the lake under `sinks_dir` for `writer` after a start from checkpoint `restored`
    /// (recovering the pending files of earlier runs). Finished hours are compacted once the
    /// watermark is `compact_after_ms` past their end. With a `mirror` (AWS mode: the archive
    /// bucket's `curated/` prefix), every committed file is uploaded there too.
    pub fn open(
        sinks_dir: &Path,
        writer: &str,
        restored: Option<u64>,
        compact_after_ms: u64,
        stop_timeout: Duration,
        mirror: Option<Arc<dyn CheckpointStore>>,
    ) -> Result<Self> {
        let root = sinks_dir.join(CURATED_DIR);
        let compaction = Compaction::after(compact_after_ms);
        let lake = match mirror {
            Some(mirror) => {
                CuratedCommitter::open_with_mirror(&root, writer, restored, compaction, mirror)
            }
            None => CuratedCommitter::open(&root, writer, restored, compaction),
        }
        .with_context(|| format!("cannot open the curated lake in {}", root.display()))?;
        Ok(CuratedSink {
            lake,
            committed: restored,
            precommitted: restored,
            last_publish: Instant::now(),
            // Ids of publishes without checkpoints only need to grow within the lake's life.
            next_publish_id: pageflow_dataflow::clock::unix_now_ms(),
            stop_timeout,
        })
    }

    /// Final features.
    pub fn features(&mut self, features: &[Feature]) {
        self.lake.add_features(features);
    }

    /// Counted events.
    pub fn pageviews(&mut self, events: &[DetailedEvent]) {
        self.lake.add_pageviews(events);
    }

    /// Phase one: before checkpoint `id` is handed to the writer.
    pub fn precommit(&mut self, id: u64, watermark_ms: u64) -> Result<()> {
        let done = self.lake.precommit(id, watermark_ms)?;
        self.precommitted = Some(id);
        if done.files > 0 {
            tracing::debug!(
                checkpoint = id,
                files = done.files,
                rows = done.rows,
                bytes = done.bytes,
                "curated: pre-committed"
            );
        }
        Ok(())
    }

    /// Called regularly: makes visible what committed checkpoints cover (or, without
    /// checkpoints, writes the rows every [`PUBLISH_INTERVAL_WITHOUT_CHECKPOINTS`]).
    pub fn tick(&mut self, driver: Option<&CheckpointDriver>, watermark_ms: u64) -> Result<()> {
        match driver {
            Some(driver) => self.commit_committed(driver),
            None if self.last_publish.elapsed() >= PUBLISH_INTERVAL_WITHOUT_CHECKPOINTS => {
                self.publish(watermark_ms)
            }
            None => Ok(()),
        }
    }

    /// At the end of the sink thread: waits (at most `[checkpoint] stop_timeout`) for the
    /// checkpoints handed over to be committed and makes their files visible; without
    /// checkpoints, writes what is left.
    pub fn finish(&mut self, driver: Option<&CheckpointDriver>, watermark_ms: u64) -> Result<()> {
        match driver {
            Some(driver) => {
                if self.precommitted > self.committed {
                    driver.finish(self.stop_timeout);
                    // In a cluster, a process other than 0 has written its parts; process 0
                    // commits them. Until the store shows it has, the files stay pending (a
                    // restart from that checkpoint commits them).
                    let deadline = Instant::now() + self.stop_timeout;
                    while driver.committed_by_the_job() < self.precommitted
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                self.commit_committed(driver)?;
                let left = self.lake.buffered_rows();
                if left > 0 {
                    tracing::warn!(
                        rows = left,
                        "curated: rows after the last checkpoint are not written; a restart from that checkpoint produces them again"
                    );
                }
                Ok(())
            }
            None => self.publish(watermark_ms),
        }
    }

    fn commit_committed(&mut self, driver: &CheckpointDriver) -> Result<()> {
        if let Some(id) = driver.committed_by_the_job()
            && Some(id) > self.committed
        {
            self.lake.commit_through(id)?;
            self.committed = Some(id);
        }
        Ok(())
    }

    fn publish(&mut self, watermark_ms: u64) -> Result<()> {
        self.last_publish = Instant::now();
        if self.lake.buffered_rows() == 0 {
            return Ok(());
        }
        let id = self.next_publish_id;
        self.next_publish_id += 1;
        self.lake.publish(id, watermark_ms)?;
        Ok(())
    }
}
