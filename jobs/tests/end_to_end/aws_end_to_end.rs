//! End to end in AWS mode, against a real AWS API server on loopback (moto, one per test):
//! `pageflow aws setup` creates the portals' streams, the features stream and the Firehose archive;
//! `pageflow aws put` publishes generated pageviews (some of them as one KPL aggregate, plus a
//! corrupt aggregate); `pageflow run` reads every shard until it is caught up and writes to
//! Kinesis and Firehose. What the features stream and S3 then hold must equal what
//! `pageflow replay` computes from the same pageviews.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::Blob;
use pageflow_connectors::kinesis::kpl::{KPL_MAGIC, aggregate};
use pageflow_tests::aws::{MotoServer, aws_env};
use pageflow_tests::clients::{kinesis_client, lines_of, read_objects, read_stream, s3_client};

use crate::support::{BIN, pageflow};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PORTALS: [&str; 3] = ["g1", "ge", "gshow"];

fn config_toml(endpoint: &str, out: &Path) -> String {
    let mut text = String::from("[source]\nkind = \"kinesis\"\n\n[source.kinesis]\n");
    text.push_str("stop_at_latest = true\ndiscovery_interval = \"2s\"\n\n");
    for portal in PORTALS {
        text.push_str(&format!(
            "[[source.kinesis.streams]]\nportal = \"{portal}\"\nstream = \"pageviews-{portal}\"\n\n"
        ));
    }
    text.push_str(&format!(
        "[sinks]\nkind = \"aws\"\ndir = \"{}\"\narchive = true\n\n[sinks.kinesis]\nstream = \"features\"\n\n\
         [sinks.firehose]\nraw = \"archive-raw\"\nprocessed = \"archive-processed\"\ndead_letter = \"archive-dead-letter\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\n[serve]\nenabled = false\n\n[runtime]\nworkers = 2\n",
        out.display()
    ));
    text
}

/// Every line of every object under `prefix` in `bucket`, as text.
async fn archived_lines(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let objects = read_objects(s3, bucket, prefix).await?;
    Ok(lines_of(&objects)
        .iter()
        .map(|line| String::from_utf8_lossy(line).to_string())
        .collect())
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// `(reason, raw)` of dead letters, as a multiset.
fn letters(lines: &[String]) -> Result<BTreeMap<(String, String), usize>, serde_json::Error> {
    let mut counts = BTreeMap::new();
    for line in lines {
        let json: serde_json::Value = serde_json::from_str(line)?;
        let raw = json["raw"]
            .as_str()
            .or(json["raw_base64"].as_str())
            .unwrap_or_default()
            .to_string();
        *counts
            .entry((json["reason"].as_str().unwrap_or_default().to_string(), raw))
            .or_insert(0) += 1;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_mode_run_equals_replay_on_the_same_pageviews() -> TestResult {
    let moto = MotoServer::start()?;
    let env = aws_env(&moto.endpoint);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("pageflow.toml");
    std::fs::write(
        &config,
        config_toml(&moto.endpoint, &dir.path().join("out")),
    )?;
    let config = config.to_string_lossy().to_string();

    // Pageviews: generated, some malformed.
    let events = dir.path().join("events.jsonl");
    let events_str = events.to_string_lossy().to_string();
    pageflow(
        &[
            "generate",
            "--events",
            "2500",
            "--seed",
            "7",
            "--invalid-share",
            "0.02",
            "--out",
            &events_str,
        ],
        &[],
    )?;
    let text = std::fs::read(&events)?;
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();

    // The last 12 valid g1 pageviews travel as one KPL aggregate; the rest through `aws put`.
    let mut aggregated: Vec<usize> = Vec::new();
    for (index, line) in lines.iter().enumerate().rev() {
        if aggregated.len() == 12 {
            break;
        }
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(line)
            && json["portal"] == "g1"
            && json["user_id"].is_string()
        {
            aggregated.push(index);
        }
    }
    aggregated.reverse();
    let put_file = dir.path().join("put.jsonl");
    let mut put_lines = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if !aggregated.contains(&index) {
            put_lines.extend_from_slice(line);
            put_lines.push(b'\n');
        }
    }
    std::fs::write(&put_file, &put_lines)?;

    let setup = pageflow(
        &[
            "aws", "setup", "--config", &config, "--shards", "2", "--bucket", "archive",
        ],
        &env,
    )?;
    assert!(
        setup.contains("created kinesis stream pageviews-g1"),
        "{setup}"
    );
    let again = pageflow(
        &[
            "aws", "setup", "--config", &config, "--shards", "2", "--bucket", "archive",
        ],
        &env,
    )?;
    assert!(!again.contains("created"), "setup is idempotent: {again}");
    let put = pageflow(
        &[
            "aws",
            "put",
            "--config",
            &config,
            "--input",
            &put_file.to_string_lossy(),
        ],
        &env,
    )?;
    assert!(
        put.contains(&format!("wrote {} records", lines.len() - aggregated.len())),
        "{put}"
    );

    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    let users: Vec<(String, &[u8])> = aggregated
        .iter()
        .map(|index| {
            let json: serde_json::Value = serde_json::from_slice(lines[*index]).unwrap_or_default();
            (
                json["user_id"].as_str().unwrap_or_default().to_string(),
                lines[*index],
            )
        })
        .collect();
    let user_records: Vec<(&str, &[u8])> = users.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    kinesis
        .put_record()
        .stream_name("pageviews-g1")
        .partition_key(&users[0].0)
        .data(Blob::new(aggregate(&user_records)))
        .send()
        .await?;
    let mut corrupt = KPL_MAGIC.to_vec();
    corrupt.extend_from_slice(b"not a protobuf body at all, and no valid md5 trailer either");
    kinesis
        .put_record()
        .stream_name("pageviews-ge")
        .partition_key("corrupt")
        .data(Blob::new(corrupt))
        .send()
        .await?;

    // The job: reads every shard until caught up, then ends by itself.
    let mut child = Command::new(BIN)
        .args(["run", "--config", &config])
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            return Err(format!(
                "pageflow run did not end within 3 minutes:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = child.wait_with_output()?.stderr;
    assert!(
        status.success(),
        "pageflow run failed: {}",
        String::from_utf8_lossy(&stderr)
    );

    let replay_dir = dir.path().join("replay");
    pageflow(
        &[
            "replay",
            "--input",
            &events_str,
            "--out",
            &replay_dir.to_string_lossy(),
        ],
        &[],
    )?;
    let expected_features: Vec<String> =
        std::fs::read_to_string(replay_dir.join("features.jsonl"))?
            .lines()
            .map(str::to_string)
            .collect();
    assert!(expected_features.len() > 500, "a meaningful comparison");

    // The features stream holds exactly the replay's features.
    let streamed: Vec<String> = read_stream(&kinesis, "features")
        .await?
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.data).to_string())
        .collect();
    assert_eq!(sorted(streamed), sorted(expected_features.clone()));

    // The archive: processed = features, raw = every valid pageview, dead letters = the replay's
    // plus the corrupt aggregate.
    let s3 = s3_client(&moto.endpoint);
    let processed = archived_lines(&s3, "archive", "processed/").await?;
    assert_eq!(sorted(processed), sorted(expected_features));

    let expected_letters_lines: Vec<String> =
        std::fs::read_to_string(replay_dir.join("dead-letter.jsonl"))?
            .lines()
            .map(str::to_string)
            .collect();
    let mut expected_letters = letters(&expected_letters_lines)?;
    let archived_letters = archived_lines(&s3, "archive", "dead-letter/").await?;
    let mut got_letters = letters(&archived_letters)?;
    let corrupt_letters: Vec<_> = got_letters
        .keys()
        .filter(|(reason, _)| reason == "corrupt_aggregate")
        .cloned()
        .collect();
    assert_eq!(
        corrupt_letters.len(),
        1,
        "the corrupt aggregate is a dead letter"
    );
    got_letters.retain(|(reason, _), _| reason != "corrupt_aggregate");
    expected_letters.retain(|_, n| *n > 0);
    assert_eq!(got_letters, expected_letters);

    let invalid: usize = expected_letters
        .iter()
        .filter(|((reason, _), _)| reason != "late")
        .map(|(_, n)| n)
        .sum();
    let raw = archived_lines(&s3, "archive", "raw/").await?;
    assert_eq!(
        raw.len(),
        lines.len() - invalid,
        "every valid pageview once"
    );
    Ok(())
}

/// A features stream that does not exist: the job's outputs stop with what to do, and every
/// feature they could not write is kept as an `undeliverable` dead letter, none lost.
#[test]
fn features_no_stream_would_take_are_kept_as_undeliverable_dead_letters() -> TestResult {
    use std::sync::Arc;

    use pageflow::outputs::{AwsOutputs, JobOutputs};
    use pageflow_connectors::kinesis::sink::KinesisStream;
    use pageflow_dataflow::event::Reason;
    use pageflow_metrics::Metrics;

    let moto = MotoServer::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let metrics = Arc::new(Metrics::new());
    let client = kinesis_client(&moto.endpoint, RetryConfig::standard());
    let mut outputs = AwsOutputs::new(
        runtime.handle().clone(),
        KinesisStream::with_client(client, "no-such-stream"),
        None,
        Duration::from_millis(500),
        dir.path(),
        Arc::clone(&metrics),
    );
    let features = pageflow_tests::synthetic_features(300, 3);
    assert!(!features.is_empty());
    outputs.features(&features)?;
    let error = match outputs.flush() {
        Ok(()) => return Err("writing to a missing stream must fail".into()),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("features stream") && error.contains("deploy/iam"),
        "{error}"
    );
    let kept = std::fs::read_to_string(dir.path().join("undeliverable.jsonl"))?;
    let letters: Vec<serde_json::Value> = kept
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(letters.len(), features.len(), "every feature kept");
    assert!(letters.iter().all(|l| l["reason"] == "undeliverable"));
    let mut kept_ids: Vec<String> = letters
        .iter()
        .map(|l| {
            pageflow_tests::clients::feature_id_of(l["raw"].as_str().unwrap_or_default().as_bytes())
                .unwrap_or_default()
        })
        .collect();
    let mut ids: Vec<String> = features
        .iter()
        .map(|f| f.feature_id().to_string())
        .collect();
    kept_ids.sort();
    ids.sort();
    assert_eq!(kept_ids, ids);
    assert_eq!(
        metrics.dead_letters(Reason::Undeliverable),
        features.len() as u64
    );
    Ok(())
}

/// Two jobs checkpointing under one S3 prefix would overwrite each other's checkpoints: the second
/// is refused, naming the first, and the first releases the prefix's lease when it stops.
#[test]
fn a_second_run_on_the_same_s3_checkpoint_prefix_is_refused_naming_the_first() -> TestResult {
    use pageflow_tests::job_process::JobProcess;

    let moto = MotoServer::start()?;
    let bucket = "pageflow-checkpoints";
    let runtime = tokio::runtime::Runtime::new()?;
    let s3 = s3_client(&moto.endpoint);
    runtime.block_on(s3.create_bucket().bucket(bucket).send())?;
    let dir = tempfile::tempdir()?;
    let run_with_sinks_in = |sinks: &Path| {
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .envs(aws_env(&moto.endpoint))
            .env("PAGEFLOW__AWS__ENDPOINT_URL", &moto.endpoint)
            .env("PAGEFLOW__CHECKPOINT__ENABLED", "true")
            .env("PAGEFLOW__CHECKPOINT__STORE", "s3")
            .env("PAGEFLOW__CHECKPOINT__BUCKET", bucket)
            .env("PAGEFLOW__CHECKPOINT__PREFIX", "jobs/one")
            .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
            .env("PAGEFLOW__SINKS__DIR", sinks)
            .env("RUST_LOG", "warn");
        command
    };
    let mut first = JobProcess::spawn(&mut run_with_sinks_in(&dir.path().join("first")))?;
    // Listening means it is past start-up, so it holds the lease.
    first.http_address(Duration::from_secs(60))?;

    // Another data directory, the same prefix.
    let second = run_with_sinks_in(&dir.path().join("second"))
        .stdout(Stdio::null())
        .output()?;
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    let holder = format!("pageflow run (process {} on ", first.id());
    assert!(stderr.contains(&holder), "names the first job: {stderr}");
    assert!(
        stderr.contains("checkpoint.prefix"),
        "says what to do: {stderr}"
    );
    assert!(
        first.try_status().is_none(),
        "the first job runs on: {}",
        first.stderr()
    );

    first.terminate()?;
    let status = first.wait_timeout(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", first.stderr());
    let lease = runtime.block_on(
        s3.get_object()
            .bucket(bucket)
            .key("jobs/one/.pageflow.lock")
            .send(),
    );
    assert!(
        lease.is_err_and(|e| e.as_service_error().is_some_and(|e| e.is_no_such_key())),
        "a clean stop releases the lease"
    );
    Ok(())
}
