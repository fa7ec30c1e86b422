//! Checkpoints in S3 against a real S3 API on loopback (moto, started per test by
//! `pageflow_tests::aws::MotoServer`): the same incremental commits, compaction, load, retention,
//! fallback and create-only behaviour as on a local disk, through `S3Store`.
//!
//! `S3Store`'s methods block on a runtime, so the tests are plain `#[test]`s that own a
//! multi-thread runtime and call the store from the test thread, as the job does from its own
//! (and as the background compaction does from its thread).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pageflow_connectors::checkpoint_store::{
    CLUSTER_FORMAT_VERSION, CheckpointError, CheckpointStatus, CheckpointStore, Checkpoints,
    CompactionPolicy, FORMAT_VERSION, Manifest, RunKind, S3Store, StateEntry, StoreError,
};
use pageflow_connectors::retry::Backoff;
use pageflow_tests::aws::MotoServer;
use pageflow_tests::clients::{credentials, s3_client};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type State = BTreeMap<Vec<u8>, Vec<u8>>;

const BUCKET: &str = "pageflow-checkpoints";

/// A moto server with the bucket, and the runtime the store blocks on.
struct Fixture {
    moto: MotoServer,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let moto = MotoServer::start()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let s3 = s3_client(&moto.endpoint);
        runtime.block_on(s3.create_bucket().bucket(BUCKET).send())?;
        Ok(Fixture { moto, runtime })
    }

    fn store(&self, prefix: &str) -> Arc<S3Store> {
        Arc::new(S3Store::new(
            s3_client(&self.moto.endpoint),
            BUCKET,
            prefix,
            self.runtime.handle().clone(),
        ))
    }

    /// Every key in the bucket, through the raw API.
    fn bucket_keys(&self) -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
        let s3 = s3_client(&self.moto.endpoint);
        let mut keys = BTreeSet::new();
        let mut token = None;
        loop {
            let page = self.runtime.block_on(
                s3.list_objects_v2()
                    .bucket(BUCKET)
                    .set_continuation_token(token)
                    .send(),
            )?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            token = page.next_continuation_token;
            if token.is_none() {
                return Ok(keys);
            }
        }
    }
}

/// Checkpoints that compact only when asked, so that the objects present are predictable.
fn manual(store: Arc<S3Store>, keep: usize) -> Checkpoints {
    Checkpoints::new(store, keep).with_compaction(CompactionPolicy {
        min_base_parts: 4,
        ..CompactionPolicy::manual()
    })
}

/// What checkpoint `id` changes: `page:<id % 5>` gets a new count, `page:<(id + 2) % 5>` goes.
fn delta_of(id: u64) -> Vec<StateEntry> {
    vec![
        StateEntry::put(format!("page:{}", id % 5), format!("{} views", id * 10)),
        StateEntry::delete(format!("page:{}", (id + 2) % 5)),
    ]
}

fn apply(state: &mut State, delta: &[StateEntry]) {
    for entry in delta {
        match &entry.value {
            Some(value) => state.insert(entry.key.clone(), value.clone()),
            None => state.remove(&entry.key),
        };
    }
}

fn commit(
    checkpoints: &Checkpoints,
    id: u64,
    parent: Option<&Manifest>,
) -> Result<Manifest, CheckpointError> {
    let info = BTreeMap::from([("watermark".to_string(), (id * 1000).to_string())]);
    Ok(checkpoints
        .commit(id, parent, delta_of(id), 2, "fp", info)?
        .manifest)
}

fn state_at(checkpoints: &Checkpoints) -> Result<(u64, State), Box<dyn std::error::Error>> {
    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    let state = loaded.entries().collect::<Result<State, _>>()?;
    Ok((loaded.manifest.id, state))
}

fn manifest_key(id: u64) -> String {
    format!("chk-{id:020}/MANIFEST.json")
}

fn delta_key(id: u64) -> String {
    format!("runs/{id:020}-delta.run")
}

#[test]
fn s3_checkpoints_round_trip_and_keep_the_newest_k_with_shared_runs() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("jobs/portal-stats");
    assert_eq!(
        store.location(),
        format!("s3://{BUCKET}/jobs/portal-stats/")
    );
    let checkpoints = manual(store.clone(), 2);
    assert!(checkpoints.load_latest()?.is_none());
    assert_eq!(checkpoints.next_id()?, 1);

    let mut model = State::new();
    let mut parent: Option<Manifest> = None;
    for id in 1..=6 {
        assert_eq!(checkpoints.next_id()?, id);
        let manifest = commit(&checkpoints, id, parent.as_ref())?;
        apply(&mut model, &delta_of(id));
        if id == 3 {
            let report = checkpoints.compact(&manifest)?.ok_or("deltas to compact")?;
            assert_eq!(report.deltas_merged, 3);
            assert_eq!(report.bytes_read, manifest.state_bytes());
        }
        parent = Some(manifest);
    }
    let newest = parent.ok_or("committed")?;
    // 4 built on the base of 3's compaction; 5 and 6 added their deltas.
    assert!(!newest.base_parts().is_empty());
    let deltas: Vec<u64> = newest.deltas().iter().map(|run| run.checkpoint).collect();
    assert_eq!(deltas, vec![4, 5, 6]);
    assert!(newest.runs.iter().all(|run| run.key.starts_with("runs/")));

    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    assert_eq!(loaded.manifest, newest);
    assert_eq!(loaded.manifest.format_version, FORMAT_VERSION);
    assert_eq!(loaded.manifest.workers, 2);
    assert_eq!(loaded.manifest.info["watermark"], "6000");
    assert_eq!(loaded.entries().collect::<Result<State, _>>()?, model);

    let summaries = checkpoints.list()?;
    let ids: Vec<(u64, CheckpointStatus)> =
        summaries.iter().map(|s| (s.id, s.status.clone())).collect();
    assert_eq!(
        ids,
        vec![
            (6, CheckpointStatus::Committed),
            (5, CheckpointStatus::Committed)
        ]
    );
    assert_eq!(summaries[0].runs, newest.runs.len());
    assert_eq!(summaries[0].state_bytes, newest.state_bytes());
    assert_eq!(summaries[0].bytes_written, newest.bytes_written());

    // The bucket holds the two kept manifests and exactly the runs they list (4's delta is shared
    // although 4's manifest is gone; 1–3's deltas were merged into the base and are gone).
    let mut expected: BTreeSet<String> = [manifest_key(5), manifest_key(6)].into();
    for summary in &summaries {
        let manifest = summary.manifest.as_ref().ok_or("a manifest")?;
        expected.extend(manifest.runs.iter().map(|run| run.key.clone()));
    }
    let expected: BTreeSet<String> = expected
        .into_iter()
        .map(|key| format!("jobs/portal-stats/{key}"))
        .collect();
    assert_eq!(
        fixture.bucket_keys()?,
        expected,
        "objects live under the prefix"
    );
    Ok(())
}

#[test]
fn s3_compacts_in_the_background() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("background");
    let checkpoints = Checkpoints::new(store.clone(), 3).with_compaction(CompactionPolicy {
        max_deltas: 1,
        min_base_parts: 2,
        ..CompactionPolicy::default()
    });
    let mut model = State::new();
    let first = commit(&checkpoints, 1, None)?;
    let second = commit(&checkpoints, 2, Some(&first))?;
    apply(&mut model, &delta_of(1));
    apply(&mut model, &delta_of(2));
    // Two deltas are due: the commit of 2 started a compaction on a thread of its own.
    let report = checkpoints
        .wait_for_compaction()
        .ok_or("a background compaction")?;
    assert_eq!((report.checkpoint, report.deltas_merged), (2, 2));
    let third = checkpoints.commit(3, Some(&second), delta_of(3), 2, "fp", BTreeMap::new())?;
    apply(&mut model, &delta_of(3));
    assert_eq!(third.compaction, Some(report));
    assert_eq!(third.manifest.base_part_count(), Some(2));
    checkpoints.wait_for_compaction();
    assert_eq!(state_at(&checkpoints)?, (3, model));
    Ok(())
}

#[test]
fn s3_load_falls_back_past_torn_and_corrupt_checkpoints() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("checkpoints/");
    let checkpoints = manual(store.clone(), 5);
    let first = commit(&checkpoints, 1, None)?;
    // 2 and 3 both build on 1, so that each is damaged by its own delta only.
    commit(&checkpoints, 2, Some(&first))?;
    commit(&checkpoints, 3, Some(&first))?;

    // 3: one flipped byte in its delta; 2: its delta truncated; 4: torn (a delta, no manifest).
    let mut bytes = store.get(&delta_key(3))?.ok_or("run missing")?;
    bytes[7] ^= 0x20;
    store.put(&delta_key(3), &bytes, false)?;
    let bytes = store.get(&delta_key(2))?.ok_or("run missing")?;
    store.put(&delta_key(2), &bytes[..bytes.len() - 2], false)?;
    let torn = store.get(&delta_key(1))?.ok_or("run missing")?;
    store.put(&delta_key(4), &torn, true)?;

    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    assert_eq!(loaded.manifest.id, 1);
    let mut model = State::new();
    apply(&mut model, &delta_of(1));
    assert_eq!(loaded.entries().collect::<Result<State, _>>()?, model);
    let location = store.location();
    assert_eq!(loaded.skipped.len(), 3, "{:?}", loaded.skipped);
    assert!(loaded.skipped[0].starts_with(&format!("checkpoint 4 at {location} has no manifest")));
    assert!(loaded.skipped[1].starts_with(&format!(
        "checkpoint 3 at {location} is damaged: run {} has SHA-256 ",
        delta_key(3)
    )));
    assert!(loaded.skipped[1].contains(" but the manifest says "));
    assert!(loaded.skipped[2].starts_with(&format!(
        "checkpoint 2 at {location} is damaged: run {} has ",
        delta_key(2)
    )));
    assert!(loaded.skipped[2].ends_with("; skipping it and trying the previous one, 1"));
    assert_eq!(checkpoints.next_id()?, 5, "ids never repeat");

    // A missing run and a manifest that is not JSON are listed as corrupt.
    store.delete(&[delta_key(3)])?;
    store.put(&manifest_key(2), b"not json", false)?;
    let statuses: Vec<(u64, CheckpointStatus)> = checkpoints
        .list()?
        .into_iter()
        .map(|s| (s.id, s.status))
        .collect();
    assert_eq!(statuses.len(), 4);
    assert_eq!(statuses[0], (4, CheckpointStatus::Torn));
    assert_eq!(
        statuses[1],
        (
            3,
            CheckpointStatus::Corrupt(format!("run {} is missing", delta_key(3)))
        )
    );
    assert!(
        matches!(&statuses[2], (2, CheckpointStatus::Corrupt(reason))
            if reason.contains("not valid JSON")),
        "{:?}",
        statuses[2]
    );
    assert_eq!(statuses[3], (1, CheckpointStatus::Committed));
    assert_eq!(
        checkpoints.load_latest()?.map(|loaded| loaded.manifest.id),
        Some(1)
    );

    // The next commit deletes torn 4's run (older than 5); 2 and 3 have manifests, so they count
    // among the `keep` = 5 committed ones and stay.
    commit(&checkpoints, 5, Some(&first))?;
    let ids: Vec<u64> = checkpoints.list()?.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![5, 3, 2, 1]);
    assert!(store.get(&delta_key(4))?.is_none());
    Ok(())
}

#[test]
fn s3_a_damaged_base_part_falls_back_to_a_checkpoint_before_its_compaction() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("base");
    let checkpoints = manual(store.clone(), 4);
    let first = commit(&checkpoints, 1, None)?;
    let second = commit(&checkpoints, 2, Some(&first))?;
    checkpoints.compact(&second)?;
    let third = commit(&checkpoints, 3, Some(&second))?;
    commit(&checkpoints, 4, Some(&third))?;
    let part = third.base_parts().first().ok_or("a base")?;
    assert!(matches!(part.kind, RunKind::Base { parts: 4, .. }));
    let mut bytes = store.get(&part.key)?.ok_or("part missing")?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    store.put(&part.key, &bytes, false)?;

    let loaded = checkpoints
        .load_latest()?
        .ok_or("2 does not list the base")?;
    assert_eq!(loaded.manifest.id, 2);
    for (warning, id) in loaded.skipped.iter().zip([4, 3]) {
        assert!(
            warning.starts_with(&format!("checkpoint {id} at ")) && warning.contains(&part.key),
            "{warning}"
        );
    }
    let mut model = State::new();
    apply(&mut model, &delta_of(1));
    apply(&mut model, &delta_of(2));
    assert_eq!(loaded.entries().collect::<Result<State, _>>()?, model);
    Ok(())
}

#[test]
fn s3_unknown_format_version_is_a_hard_error() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("checkpoints");
    let checkpoints = manual(store.clone(), 3);
    let first = commit(&checkpoints, 1, None)?;
    commit(&checkpoints, 2, Some(&first))?;
    let key = manifest_key(2);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&store.get(&key)?.ok_or("manifest missing")?)?;
    manifest["format_version"] = serde_json::json!(7);
    store.put(&key, &serde_json::to_vec(&manifest)?, false)?;

    match checkpoints.load_latest() {
        Err(
            error @ CheckpointError::UnknownFormat {
                id: 2,
                found: 7,
                supported: FORMAT_VERSION,
                ..
            },
        ) => {
            let message = error.to_string();
            assert!(
                message.contains("s3://pageflow-checkpoints/checkpoints/"),
                "{message}"
            );
            assert!(message.contains("release"), "{message}");
            assert!(!error.is_retryable());
        }
        other => panic!("expected UnknownFormat, got {other:?}"),
    }
    Ok(())
}

#[test]
fn s3_create_only_put_of_an_existing_key_fails_with_412() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("");
    assert_eq!(store.location(), format!("s3://{BUCKET}/"));
    store.put("a/b", b"first", true)?;
    let second = store.put("a/b", b"second", true);
    assert!(
        matches!(&second, Err(StoreError::AlreadyExists { key }) if key == "a/b"),
        "{second:?}"
    );
    assert!(second.as_ref().is_err_and(|e| !e.is_retryable()));
    assert_eq!(store.get("a/b")?, Some(b"first".to_vec()));
    store.put("a/b", b"replaced", false)?;
    assert_eq!(store.get("a/b")?, Some(b"replaced".to_vec()));
    assert_eq!(store.get("a/missing")?, None);

    // A second writer of the same checkpoint id cannot replace the first one's objects.
    let checkpoints = manual(store.clone(), 3);
    commit(&checkpoints, 1, None)?;
    let other = vec![StateEntry::put("page:1", "another writer's state")];
    let error = checkpoints
        .commit(1, None, other, 2, "fp", BTreeMap::new())
        .map_err(|failed| failed.error);
    assert!(
        matches!(&error, Err(CheckpointError::Conflict { id: 1, key, .. })
            if *key == delta_key(1)),
        "{error:?}"
    );
    assert!(error.is_err_and(|error| !error.is_retryable()));
    let mut model = State::new();
    apply(&mut model, &delta_of(1));
    assert_eq!(state_at(&checkpoints)?, (1, model));
    Ok(())
}

#[test]
fn s3_list_and_delete_go_past_a_thousand_keys() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("many");
    let keys: Vec<String> = (0..1_005).map(|n| format!("k/{n:05}")).collect();
    for key in &keys {
        store.put(key, b"x", false)?;
    }
    store.put("other", b"y", false)?;
    assert_eq!(store.list("k/")?, keys, "every page of the listing");
    store.delete(&keys)?;
    assert_eq!(store.list("")?, vec!["other"]);
    Ok(())
}

#[test]
fn s3_errors_say_whether_a_retry_can_help() -> TestResult {
    let fixture = Fixture::start()?;
    let quick = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(5),
    };
    let missing_bucket = S3Store::new(
        s3_client(&fixture.moto.endpoint),
        "no-such-bucket",
        "",
        fixture.runtime.handle().clone(),
    )
    .with_retries(2, quick);
    match missing_bucket.get("chk-1/MANIFEST.json") {
        Err(error @ StoreError::Aws { .. }) => {
            assert!(!error.is_retryable(), "{error}");
            assert!(error.to_string().contains("NoSuchBucket"), "{error}");
        }
        other => panic!("expected an AWS error, got {other:?}"),
    }
    // Through `Checkpoints`, a failing store is an error, never a reason to fall back.
    let checkpoints = Checkpoints::new(Arc::new(missing_bucket), 3);
    match checkpoints.load_latest() {
        Err(error @ CheckpointError::Store(_)) => assert!(!error.is_retryable(), "{error}"),
        other => panic!("expected a store error, got {other:?}"),
    }

    // Nothing listens on a port just released.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    // Without the SDK's own retries, so that only the store's two attempts are made.
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(credentials())
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    let unreachable = S3Store::new(
        aws_sdk_s3::Client::from_conf(config),
        BUCKET,
        "",
        fixture.runtime.handle().clone(),
    )
    .with_retries(2, quick);
    match unreachable.list("") {
        Err(error @ StoreError::Aws { .. }) => {
            assert!(error.is_retryable(), "{error}");
            assert!(
                error.to_string().contains("gave up after 2 attempts"),
                "{error}"
            );
        }
        other => panic!("expected an AWS error, got {other:?}"),
    }
    let checkpoints = Checkpoints::new(Arc::new(unreachable), 3);
    match checkpoints
        .commit(1, None, delta_of(1), 1, "fp", BTreeMap::new())
        .map_err(|failed| failed.error)
    {
        Err(error @ CheckpointError::Store(_)) => assert!(error.is_retryable(), "{error}"),
        other => panic!("expected a store error, got {other:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The lease of the prefix (moto honours `If-None-Match: *` and `If-Match` on PutObject and
// `If-Match` on DeleteObject, answering 412 as S3 does).

mod lease {
    use pageflow_connectors::ConnectorError;
    use pageflow_connectors::checkpoint_store::{LeaseRecord, LeaseSettings, S3Lease, lease_key};
    use pageflow_dataflow::clock::{Clock, ManualClock};

    use super::*;

    const PREFIX: &str = "checkpoints/job-1";
    const START_MS: u64 = 1_700_000_000_000;

    fn acquire(
        fixture: &Fixture,
        holder: &str,
        settings: LeaseSettings,
        clock: &ManualClock,
    ) -> Result<S3Lease, ConnectorError> {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        S3Lease::acquire(
            s3_client(&fixture.moto.endpoint),
            BUCKET,
            PREFIX,
            holder,
            settings,
            clock,
            fixture.runtime.handle().clone(),
        )
    }

    /// What the lease object says now, if there is one.
    fn lease_record(fixture: &Fixture) -> Result<Option<LeaseRecord>, Box<dyn std::error::Error>> {
        let s3 = s3_client(&fixture.moto.endpoint);
        let got = fixture
            .runtime
            .block_on(s3.get_object().bucket(BUCKET).key(lease_key(PREFIX)).send());
        match got {
            Ok(output) => {
                let bytes = fixture
                    .runtime
                    .block_on(output.body.collect())?
                    .into_bytes();
                Ok(Some(serde_json::from_slice(&bytes)?))
            }
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Never renews within a test: expiry is driven by the manual clock alone.
    fn no_renewal(ttl: Duration) -> LeaseSettings {
        LeaseSettings {
            ttl,
            renew_every: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_second_job_is_refused_naming_the_first_until_it_releases() -> TestResult {
        let fixture = Fixture::start()?;
        let clock = ManualClock::new(START_MS);
        let settings = no_renewal(Duration::from_secs(60));
        let first = acquire(&fixture, "job A (process 1 on host-a)", settings, &clock)?;
        assert_eq!(
            first.location(),
            format!("s3://{BUCKET}/{PREFIX}/.pageflow.lock")
        );

        let refused = acquire(&fixture, "job B", settings, &clock);
        let Err(error) = refused else {
            return Err("a second lease on a held prefix was granted".into());
        };
        assert!(
            matches!(error, ConnectorError::PrefixInUse { .. }),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        let message = error.to_string();
        assert!(message.contains("job A (process 1 on host-a)"), "{message}");
        assert!(message.contains(PREFIX), "{message}");
        assert!(message.contains("runs out in 60 s"), "{message}");

        first.release()?;
        assert_eq!(lease_record(&fixture)?, None, "release deletes the lease");
        let second = acquire(&fixture, "job B", settings, &clock)?;
        assert_eq!(
            lease_record(&fixture)?.map(|record| record.holder),
            Some("job B".to_string())
        );
        second.release()?;
        Ok(())
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_its_old_holder_does_not_delete_the_new_one() -> TestResult
    {
        let fixture = Fixture::start()?;
        let clock = ManualClock::new(START_MS);
        let settings = no_renewal(Duration::from_secs(10));
        let stale = acquire(&fixture, "job A", settings, &clock)?;

        clock.advance(Duration::from_secs(9));
        assert!(
            acquire(&fixture, "job B", settings, &clock).is_err(),
            "a lease is held until it expires"
        );
        clock.advance(Duration::from_secs(2));
        let taker = acquire(&fixture, "job B", settings, &clock)?;
        let record = lease_record(&fixture)?.ok_or("the lease taken over is there")?;
        assert_eq!(record.holder, "job B");
        assert_eq!(record.expires_ms, START_MS + 11_000 + 10_000);

        // The old holder's release finds another job's lease (its If-Match fails) and leaves it.
        stale.release()?;
        assert_eq!(
            lease_record(&fixture)?.map(|record| record.holder),
            Some("job B".to_string())
        );
        taker.release()?;
        assert_eq!(lease_record(&fixture)?, None);
        Ok(())
    }

    #[test]
    fn the_holder_renews_its_lease_so_it_never_expires_while_the_job_runs() -> TestResult {
        let fixture = Fixture::start()?;
        let clock = ManualClock::new(START_MS);
        let settings = LeaseSettings {
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_millis(20),
        };
        let held = acquire(&fixture, "job A", settings, &clock)?;
        clock.advance(Duration::from_secs(8));
        // Wait for a renewal to move the expiry past the clock's time plus the TTL.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while lease_record(&fixture)?.is_none_or(|r| r.expires_ms < START_MS + 18_000) {
            if std::time::Instant::now() > deadline {
                return Err("the lease was not renewed within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        clock.advance(Duration::from_secs(7)); // past the first expiry, within the renewed one
        let refused = acquire(&fixture, "job B", no_renewal(settings.ttl), &clock);
        assert!(
            matches!(refused, Err(ConnectorError::PrefixInUse { ref holder, .. }) if holder == "job A"),
            "{refused:?}"
        );
        assert_eq!(held.lost(), None);
        held.release()?;
        Ok(())
    }
}

#[test]
fn s3_a_cluster_checkpoint_is_committed_once_every_process_wrote_its_part() -> TestResult {
    let fixture = Fixture::start()?;
    // Each process has its own client and store on the same prefix, as separate tasks would.
    let processes: Vec<Checkpoints> = (0..3)
        .map(|_| manual(fixture.store("cluster"), 3))
        .collect();
    let first = commit(&processes[0], 1, None)?;
    let mut expected = State::new();
    apply(&mut expected, &delta_of(1));

    let parts = [
        vec![StateEntry::put("page:p1", "1 view")],
        vec![StateEntry::put("page:p2", "2 views")],
        vec![StateEntry::delete("page:1")],
    ];
    // Processes 2 and 1 write first; process 0 commits only once the last part is in.
    for process in [2, 1] {
        processes[process]
            .write_part(2, process, parts[process].clone())
            .map_err(|failed| failed.error)?;
    }
    let early = processes[0].commit_parts(
        2,
        Some(&first),
        3,
        Duration::from_millis(300),
        6,
        "fp",
        BTreeMap::new(),
    );
    match early {
        Err(CheckpointError::PartsMissing { missing, .. }) => assert_eq!(missing, [0]),
        other => panic!("expected process 0's part missing, got {other:?}"),
    }
    processes[0]
        .write_part(2, 0, parts[0].clone())
        .map_err(|failed| failed.error)?;
    let second = processes[0]
        .commit_parts(
            2,
            Some(&first),
            3,
            Duration::from_secs(10),
            6,
            "fp",
            BTreeMap::new(),
        )?
        .manifest;
    assert_eq!(second.format_version, CLUSTER_FORMAT_VERSION);
    assert_eq!((second.processes, second.workers), (3, 6));
    assert_eq!(second.own_runs().count(), 3);
    for part in &parts {
        apply(&mut expected, part);
    }
    // Any process loads the same state.
    for checkpoints in &processes {
        assert_eq!(state_at(checkpoints)?, (2, expected.clone()));
    }
    let keys = fixture.bucket_keys()?;
    for process in 0..3 {
        assert!(
            keys.contains(&format!("cluster/runs/{:020}-delta-p{process:04}.run", 2)),
            "{keys:?}"
        );
    }
    Ok(())
}
