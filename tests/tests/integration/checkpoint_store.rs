//! Checkpoints in S3 against a real S3 API on loopback (moto, started per test by
//! `pageflow_tests::aws::MotoServer`): the same write, load, retention, fallback and create-only
//! behaviour as on a local disk, through `S3Store`.
//!
//! `S3Store`'s methods block on a runtime, so the tests are plain `#[test]`s that own a
//! multi-thread runtime and call the store from the test thread, as the job does from its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pageflow_connectors::checkpoint_store::{
    CheckpointError, CheckpointStatus, CheckpointStore, Checkpoints, FORMAT_VERSION, S3Store,
    StoreError,
};
use pageflow_connectors::retry::Backoff;
use pageflow_tests::aws::MotoServer;
use pageflow_tests::clients::{credentials, s3_client};

type TestResult = Result<(), Box<dyn std::error::Error>>;

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
    fn bucket_keys(&self) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let s3 = s3_client(&self.moto.endpoint);
        let mut keys = Vec::new();
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

fn parts_of(id: u64) -> Vec<(String, Vec<u8>)> {
    (0..2)
        .map(|worker| {
            (
                format!("worker-{worker}.bin"),
                format!("state of worker {worker} at checkpoint {id}").into_bytes(),
            )
        })
        .collect()
}

fn write(checkpoints: &Checkpoints, id: u64) -> Result<(), CheckpointError> {
    let info = BTreeMap::from([("watermark".to_string(), (id * 1000).to_string())]);
    checkpoints.write(id, 2, "fp", info, parts_of(id)).map(drop)
}

fn key_of(id: u64, name: &str) -> String {
    format!("chk-{id:020}/{name}")
}

#[test]
fn s3_checkpoints_round_trip_and_keep_the_newest_k() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("jobs/portal-stats");
    assert_eq!(
        store.location(),
        format!("s3://{BUCKET}/jobs/portal-stats/")
    );
    let checkpoints = Checkpoints::new(store.clone(), 2);
    assert!(checkpoints.load_latest()?.is_none());
    assert_eq!(checkpoints.next_id()?, 1);

    for id in 1..=4 {
        write(&checkpoints, checkpoints.next_id()?)?;
        assert_eq!(checkpoints.next_id()?, id + 1);
    }
    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    assert_eq!(loaded.manifest.id, 4);
    assert_eq!(loaded.manifest.format_version, FORMAT_VERSION);
    assert_eq!(loaded.manifest.workers, 2);
    assert_eq!(loaded.manifest.info["watermark"], "4000");
    assert_eq!(loaded.parts, parts_of(4).into_iter().collect());

    let summaries = checkpoints.list()?;
    let ids: Vec<(u64, CheckpointStatus)> =
        summaries.into_iter().map(|s| (s.id, s.status)).collect();
    assert_eq!(
        ids,
        vec![
            (4, CheckpointStatus::Committed),
            (3, CheckpointStatus::Committed)
        ]
    );
    let mut expected: Vec<String> = [3, 4]
        .iter()
        .flat_map(|id| {
            ["MANIFEST.json", "worker-0.bin", "worker-1.bin"]
                .map(|name| format!("jobs/portal-stats/{}", key_of(*id, name)))
        })
        .collect();
    expected.sort();
    assert_eq!(
        fixture.bucket_keys()?,
        expected,
        "objects live under the prefix"
    );
    Ok(())
}

#[test]
fn s3_load_falls_back_past_torn_and_corrupt_checkpoints() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("checkpoints/");
    let checkpoints = Checkpoints::new(store.clone(), 5);
    write(&checkpoints, 1)?;
    write(&checkpoints, 2)?;
    write(&checkpoints, 3)?;

    // 3: one flipped byte in a part; 2: a truncated part; 4: torn (a part, no manifest).
    let key = key_of(3, "worker-1.bin");
    let mut bytes = store.get(&key)?.ok_or("part missing")?;
    bytes[0] ^= 0x20;
    store.put(&key, &bytes, false)?;
    let key = key_of(2, "worker-0.bin");
    let bytes = store.get(&key)?.ok_or("part missing")?;
    store.put(&key, &bytes[..bytes.len() - 2], false)?;
    store.put(&key_of(4, "worker-0.bin"), b"half", true)?;

    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    assert_eq!(loaded.manifest.id, 1);
    assert_eq!(loaded.parts, parts_of(1).into_iter().collect());
    assert_eq!(checkpoints.next_id()?, 5, "ids never repeat");

    // A missing part and a manifest that is not JSON are listed as corrupt.
    store.delete(&[key_of(3, "worker-0.bin")])?;
    store.put(&key_of(2, "MANIFEST.json"), b"not json", false)?;
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
            CheckpointStatus::Corrupt("part worker-0.bin is missing".to_string())
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

    // The next write deletes torn 4 (older than 5); 2 and 3 have manifests, so they count among
    // the `keep` = 5 committed ones and stay.
    write(&checkpoints, 5)?;
    let ids: Vec<u64> = checkpoints.list()?.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![5, 3, 2, 1]);
    Ok(())
}

#[test]
fn s3_unknown_format_version_is_a_hard_error() -> TestResult {
    let fixture = Fixture::start()?;
    let store = fixture.store("checkpoints");
    let checkpoints = Checkpoints::new(store.clone(), 3);
    write(&checkpoints, 1)?;
    write(&checkpoints, 2)?;
    let key = key_of(2, "MANIFEST.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&store.get(&key)?.ok_or("manifest missing")?)?;
    manifest["format_version"] = serde_json::json!(7);
    store.put(&key, &serde_json::to_vec(&manifest)?, false)?;

    match checkpoints.load_latest() {
        Err(
            error @ CheckpointError::UnknownFormat {
                id: 2,
                found: 7,
                supported: 1,
                ..
            },
        ) => {
            let message = error.to_string();
            assert!(
                message.contains("s3://pageflow-checkpoints/checkpoints/"),
                "{message}"
            );
            assert!(message.contains("release"), "{message}");
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
    let checkpoints = Checkpoints::new(store.clone(), 3);
    write(&checkpoints, 1)?;
    let mut other = parts_of(1);
    other[1].1 = b"another writer's state".to_vec();
    let error = checkpoints.write(1, 2, "fp", BTreeMap::new(), other);
    assert!(
        matches!(&error, Err(CheckpointError::Conflict { id: 1, key, .. })
            if key.ends_with("worker-1.bin")),
        "{error:?}"
    );
    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    assert_eq!(loaded.parts, parts_of(1).into_iter().collect());
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
    Ok(())
}
