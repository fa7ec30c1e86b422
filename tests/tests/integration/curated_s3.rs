//! The curated lake's AWS mode against a real S3 API on loopback (moto): committed files are
//! uploaded under the archive bucket's `curated/` prefix, files of checkpoints that never commit
//! are never uploaded, a restart uploads what a crash left pending, and a compaction replaces its
//! parts in the bucket as on disk.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use pageflow_connectors::checkpoint_store::{CheckpointStore, S3Store};
use pageflow_connectors::curated::{Compaction, CuratedCommitter};
use pageflow_dataflow::event::{CompactEvent, DetailedEvent, Event, PageviewDetails};
use pageflow_tests::aws::MotoServer;
use pageflow_tests::clients::s3_client;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BUCKET: &str = "pageflow-archive";
const HOUR: u64 = 3_600_000;

fn event(id: &str, hour: u64) -> DetailedEvent {
    let event = Event {
        event_id: Arc::from(id),
        portal: Arc::from("g1"),
        user_id: Arc::from("u1"),
        article_id: Arc::from("g1/a"),
        ts: 1_795_435_200_000 + hour * HOUR + 1_000,
        dwell_ms: 1_000,
        scroll_pct: 60,
        clicks: 0,
    };
    DetailedEvent {
        event: CompactEvent::from(&event),
        details: PageviewDetails::default(),
    }
}

/// The lake's visible files, as keys under `curated/`.
fn visible(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.insert(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn committed_files_are_uploaded_and_uncommitted_ones_never() -> TestResult {
    let moto = MotoServer::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(
        s3_client(&moto.endpoint)
            .create_bucket()
            .bucket(BUCKET)
            .send(),
    )?;
    let mirror: Arc<S3Store> = Arc::new(S3Store::new(
        s3_client(&moto.endpoint),
        BUCKET,
        "lake/curated",
        runtime.handle().clone(),
    ));
    let uploaded = || -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
        Ok(mirror.list("")?.into_iter().collect())
    };
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("curated");
    let compaction = Compaction::after(0);
    let open = |restored| {
        CuratedCommitter::open_with_mirror(
            &root,
            "w0",
            restored,
            compaction,
            Arc::clone(&mirror) as Arc<dyn CheckpointStore>,
        )
    };
    let base = 1_795_435_200_000;

    let mut lake = open(None)?;
    lake.add_pageviews(&[event("a", 0)]);
    lake.precommit(1, base)?;
    assert!(
        uploaded()?.is_empty(),
        "nothing is uploaded before the commit"
    );
    lake.commit_through(1)?;
    assert_eq!(uploaded()?, visible(&root));
    assert_eq!(uploaded()?.len(), 1);

    // Checkpoint 2 is pre-committed and committed in the store, but the process dies before its
    // files are published; checkpoint 3 is pre-committed only.
    lake.add_pageviews(&[event("b", 0)]);
    lake.precommit(2, base)?;
    lake.add_pageviews(&[event("c", 1)]);
    lake.precommit(3, base)?;
    drop(lake);
    let mut lake = open(Some(2))?;
    assert_eq!(
        uploaded()?,
        visible(&root),
        "the restart published checkpoint 2"
    );
    assert_eq!(uploaded()?.len(), 2, "and not checkpoint 3");

    // Hour 0 is finished: its two files become one, in the bucket too.
    lake.add_pageviews(&[event("c", 1)]);
    lake.precommit(3, base + HOUR)?;
    lake.commit_through(3)?;
    let keys = uploaded()?;
    assert_eq!(keys, visible(&root));
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("-compacted-")), "{keys:?}");
    let raw = s3_client(&moto.endpoint);
    let listed = runtime.block_on(raw.list_objects_v2().bucket(BUCKET).send())?;
    assert!(
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .all(|k| k.starts_with("lake/curated/pageviews/portal=g1/date=")),
        "objects under the prefix and layout: {listed:?}"
    );
    Ok(())
}
