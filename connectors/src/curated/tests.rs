//! The lake's guarantees, tested on the files: schemas and metadata, atomic files, recovery
//! from any checkpoint (its pending files committed, later ones deleted), idempotent commits, and
//! compaction that keeps every row once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use pageflow_dataflow::event::{CompactEvent, DetailedEvent, Event, PageviewDetails};
use pageflow_dataflow::features::{Feature, RankedItem, RankingKind};
use parquet::file::reader::{FileReader, SerializedFileReader};
use proptest::prelude::*;

use super::committer::PENDING_DIR;
use super::parquet_file::{read_batches, write_atomically};
use super::rows::MILLIS_PER_HOUR;
use super::*;
use crate::checkpoint_store::{CheckpointStore, LocalDirStore};

const WRITER: &str = "w0";

fn event(id: &str, hour: u64) -> DetailedEvent {
    let event = Event {
        event_id: Arc::from(id),
        portal: Arc::from("g1"),
        user_id: Arc::from("u1"),
        article_id: Arc::from("g1/a"),
        ts: 1_795_435_200_000 + hour * MILLIS_PER_HOUR + 1_000,
        dwell_ms: 12_000,
        scroll_pct: 10,
        clicks: 1,
    };
    DetailedEvent {
        event: CompactEvent::from(&event),
        details: PageviewDetails {
            url: Some(format!("https://g1/{id}")),
            referrer: None,
            device: Some("mobile".into()),
        },
    }
}

/// Every visible Parquet file under the lake (not `_pending`, not temporaries).
fn visible_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".parquet") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

/// The event ids of the visible `pageviews` rows, with how often each is seen.
fn visible_event_ids(root: &Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for file in visible_files(root) {
        for batch in read_batches(&file).unwrap() {
            let column = batch
                .column_by_name("event_id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            for i in 0..column.len() {
                *ids.entry(column.value(i).to_string()).or_default() += 1;
            }
        }
    }
    ids
}

fn all_files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

#[test]
fn a_file_has_the_table_schema_the_version_and_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows::TableRows::Pageviews(vec![event("e1", 0), event("e2", 0)]);
    let batch: RecordBatch = rows.to_batch(CuratedTable::Pageviews).unwrap();
    let path = dir.path().join("p.parquet");
    write_atomically(&path, CuratedTable::Pageviews, &[batch]).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary is left"
    );
    let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
    let metadata = reader.metadata().file_metadata();
    assert_eq!(metadata.num_rows(), 2);
    let version = metadata
        .key_value_metadata()
        .unwrap()
        .iter()
        .find(|kv| kv.key == SCHEMA_VERSION_KEY)
        .and_then(|kv| kv.value.clone());
    assert_eq!(version.as_deref(), Some(SCHEMA_VERSION));
    let batches = read_batches(&path).unwrap();
    assert_eq!(batches[0].schema(), CuratedTable::Pageviews.schema());
}

#[test]
fn ranking_items_become_ranked_rows() {
    let feature = Feature::ranking(
        RankingKind::Popular,
        "g1",
        0,
        3_600_000,
        vec![
            RankedItem {
                article_id: "a".into(),
                views: 3,
                engaged_views: 1,
                score: 3.0,
            },
            RankedItem {
                article_id: "b".into(),
                views: 2,
                engaged_views: 2,
                score: 2.0,
            },
        ],
    );
    let mut rows = rows::PartitionedRows::default();
    rows.add_features(&[feature]);
    let groups = rows.take();
    assert_eq!(groups.len(), 1);
    let (partition, rows) = &groups[0];
    assert_eq!(partition.dir(), "popular/portal=g1/date=1970-01-01");
    assert_eq!(partition.hour_of_day(), 1, "partitioned by window_end");
    let batch = rows.to_batch(CuratedTable::Popular).unwrap();
    assert_eq!(batch.num_rows(), 2);
    let ranks = batch
        .column_by_name("rank")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Int32Array>()
        .unwrap()
        .values()
        .to_vec();
    assert_eq!(ranks, vec![1, 2]);
}

#[test]
fn a_restart_commits_the_restored_checkpoints_files_and_deletes_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("curated");
    let mut lake = CuratedCommitter::open(&root, WRITER, None, Compaction::OFF).unwrap();
    lake.add_pageviews(&[event("a", 0)]);
    lake.precommit(1, 0).unwrap();
    lake.add_pageviews(&[event("b", 0)]);
    lake.precommit(2, 0).unwrap();
    lake.add_pageviews(&[event("c", 1)]);
    lake.precommit(3, 0).unwrap();
    assert!(
        visible_files(&root).is_empty(),
        "nothing visible before a commit"
    );
    // A crash in the middle of a write leaves a temporary.
    std::fs::write(root.join("pageviews").join(".tmp-half.parquet"), b"PAR1").ok();
    std::fs::create_dir_all(root.join("pageviews")).unwrap();
    std::fs::write(root.join("pageviews").join(".tmp-half.parquet"), b"PAR1").unwrap();
    drop(lake);

    // Checkpoint 2 was the last committed: 1 and 2 become visible, 3 is gone.
    let lake = CuratedCommitter::open(&root, WRITER, Some(2), Compaction::OFF).unwrap();
    let ids: Vec<String> = visible_event_ids(&root).into_keys().collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(
        !all_files(&root)
            .iter()
            .any(|f| f.contains(".tmp-") || f.contains(PENDING_DIR)),
        "{:?}",
        all_files(&root)
    );
    drop(lake);
    // Opening again changes nothing.
    CuratedCommitter::open(&root, WRITER, Some(2), Compaction::OFF).unwrap();
    assert_eq!(visible_event_ids(&root).len(), 2);
}

#[test]
fn committing_again_is_harmless_and_an_interrupted_commit_completes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("curated");
    let mut lake = CuratedCommitter::open(&root, WRITER, None, Compaction::OFF).unwrap();
    lake.add_pageviews(&[event("a", 0), event("b", 1), event("c", 2)]);
    lake.precommit(7, 0).unwrap();
    // A commit interrupted after moving one of the three files.
    let pending = root
        .join(PENDING_DIR)
        .join(WRITER)
        .join(format!("c{:020}", 7));
    let mut moved = all_files(&pending);
    moved.sort();
    let first = PathBuf::from(&moved[0]);
    let relative = first.strip_prefix(&pending).unwrap();
    std::fs::create_dir_all(root.join(relative).parent().unwrap()).unwrap();
    std::fs::rename(&first, root.join(relative)).unwrap();
    drop(lake);
    let mut lake = CuratedCommitter::open(&root, WRITER, Some(7), Compaction::OFF).unwrap();
    lake.commit_through(7).unwrap();
    lake.commit_through(7).unwrap();
    let ids = visible_event_ids(&root);
    assert_eq!(ids.len(), 3);
    assert!(ids.values().all(|n| *n == 1));
}

#[test]
fn compaction_makes_one_file_per_finished_hour_with_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("curated");
    let compaction = Compaction::after(0);
    let mut lake = CuratedCommitter::open(&root, WRITER, None, compaction).unwrap();
    let base = 1_795_435_200_000;
    for (checkpoint, id) in [(1, "a"), (2, "b"), (3, "c")] {
        lake.add_pageviews(&[event(id, 0)]);
        lake.precommit(checkpoint, base).unwrap();
        lake.commit_through(checkpoint).unwrap();
    }
    assert_eq!(visible_files(&root).len(), 3);
    // The hour ends at base + 1 h: the next checkpoint compacts it, but it is not committed yet.
    lake.add_pageviews(&[event("d", 1)]);
    lake.precommit(4, base + MILLIS_PER_HOUR).unwrap();
    assert_eq!(
        visible_files(&root).len(),
        3,
        "nothing changes before the commit"
    );
    drop(lake);
    // Restart from checkpoint 3: the compaction is dropped, the small files stay.
    let mut lake = CuratedCommitter::open(&root, WRITER, Some(3), compaction).unwrap();
    assert_eq!(visible_files(&root).len(), 3);
    lake.add_pageviews(&[event("d", 1)]);
    lake.precommit(4, base + MILLIS_PER_HOUR).unwrap();
    lake.commit_through(4).unwrap();
    let files = visible_files(&root);
    assert_eq!(
        files.len(),
        2,
        "hour 0 compacted into one file, hour 1: {files:?}"
    );
    assert!(files[0].to_string_lossy().contains("-compacted-"));
    let ids = visible_event_ids(&root);
    assert_eq!(
        ids.keys().cloned().collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    assert!(ids.values().all(|n| *n == 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any run of checkpoints (rows in a few hours, compaction as the watermark passes them),
    /// interrupted after any pre-commit and restarted from any checkpoint the store could hold
    /// (at or after the last one whose commit ran, at most the last pre-committed): the visible
    /// rows are exactly those of the checkpoints up to the restored one, each once.
    #[test]
    fn a_crash_anywhere_leaves_each_row_of_the_restored_checkpoint_once(
        batches in prop::collection::vec(prop::collection::vec(0u64..4, 0..4), 1..7),
        committed_upto in 0usize..7,
        restored_extra in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("curated");
        let compaction = Compaction::after(0);
        let base = 1_795_435_200_000u64;
        // Committed files are also published to a mirror (an S3 prefix in AWS mode; a local
        // store here), which must end up holding exactly the visible files.
        let mirror: Arc<dyn CheckpointStore> =
            Arc::new(LocalDirStore::new(dir.path().join("mirror")).unwrap());
        let open = |restored| {
            CuratedCommitter::open_with_mirror(&root, WRITER, restored, compaction, Arc::clone(&mirror))
                .unwrap()
        };
        let mut lake = open(None);
        let committed_upto = committed_upto.min(batches.len());
        let mut expected = Vec::new();
        for (index, hours) in batches.iter().enumerate() {
            let checkpoint = index as u64 + 1;
            let events: Vec<DetailedEvent> = hours
                .iter()
                .enumerate()
                .map(|(n, hour)| event(&format!("e{checkpoint}-{n}"), *hour))
                .collect();
            lake.add_pageviews(&events);
            // The watermark moves an hour per checkpoint: earlier hours get compacted.
            lake.precommit(checkpoint, base + index as u64 * MILLIS_PER_HOUR).unwrap();
            if index < committed_upto {
                lake.commit_through(checkpoint).unwrap();
            }
            expected.push(events.iter().map(|e| e.event.event_id.to_string()).collect::<Vec<_>>());
        }
        drop(lake);
        let restored = (committed_upto + restored_extra).min(batches.len());
        let restored_id = (restored > 0).then_some(restored as u64);
        let lake = open(restored_id);
        drop(lake);
        let mut published = mirror.list("").unwrap();
        published.sort();
        let visible: Vec<String> = visible_files(&root)
            .iter()
            .map(|f| f.strip_prefix(&root).unwrap().to_string_lossy().into_owned())
            .collect();
        prop_assert_eq!(published, visible);
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for ids in &expected[..restored] {
            for id in ids {
                *want.entry(id.clone()).or_default() += 1;
            }
        }
        prop_assert_eq!(visible_event_ids(&root), want);
        prop_assert!(!all_files(&root).iter().any(|f| f.contains(PENDING_DIR)));
    }
}
