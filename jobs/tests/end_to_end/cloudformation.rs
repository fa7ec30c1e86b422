//! The CloudFormation template, `deploy/cloudformation/pageflow.yaml`, deployed into moto's
//! CloudFormation; then `pageflow run` in AWS mode on what the stack created, with the
//! environment of the stack's own task definition.
//!
//! moto creates the streams, the bucket (with its KMS encryption), the roles, the network, the ECS
//! cluster and task definitions, the load balancer and the dashboard; it accepts but does not
//! create the Firehose delivery streams, the alarms, Cloud Map, Cognito, WAF and the budget
//! (`../shared/LOCAL-AWS.md`). The test creates the delivery streams through the Firehose API, as
//! the template declares them (moto has no dynamic partitioning: each layer is one plain prefix),
//! and deploys with `RunJob=false`: the ECS services need Cloud Map, which moto lacks, and here the
//! job runs as a local process instead of a Fargate task. The checks that moto cannot make (the
//! lifecycle rules, the endpoints' policies, the alarms) are cfn-lint's and checkov's
//! (`deploy/cloudformation/validate.sh`).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
use aws_sdk_firehose::types::ExtendedS3DestinationConfiguration;
use aws_sdk_kinesis::config::retry::RetryConfig;
use pageflow_tests::aws::{MotoServer, aws_env, dummy_sigv4_authorization, http_request};
use pageflow_tests::clients::{
    credentials, firehose_client, kinesis_client, lines_of, read_objects, read_stream, s3_client,
};
use pageflow_tests::http_get;
use pageflow_tests::job_process::{JobProcess, poll_until};

use crate::support::{BIN, pageflow};
pub(crate) const TEMPLATE: &str = include_str!("../../../deploy/cloudformation/pageflow.yaml");

type TestResult = Result<(), Box<dyn std::error::Error>>;

const STACK: &str = "pageflow-it";
const ENVIRONMENT: &str = "it";
pub(crate) const PORTALS: &str = "g1,ge,gshow";
/// The pages allowed to send each portal's beacons, in the order of `PORTALS` (`|` between the
/// origins of one portal).
const PORTAL_ORIGINS: &str = "https://g1.example.com|https://m.g1.example.com,https://ge.example.com,https://gshow.example.com";

/// The archive's layers: the delivery stream's name suffix and its key prefix in the bucket.
const LAYERS: [(&str, &str); 3] = [
    ("raw", "raw/"),
    ("processed", "processed/"),
    ("dead-letter", "dead-letter/"),
];

pub(crate) fn cloudformation_client(endpoint: &str) -> aws_sdk_cloudformation::Client {
    let config = aws_sdk_cloudformation::Config::builder()
        .behavior_version(aws_sdk_cloudformation::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudformation::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .build();
    aws_sdk_cloudformation::Client::from_conf(config)
}

/// A JSON 1.1 call to moto (for the services the workspace has no SDK crate of: ACM, ECS).
pub(crate) fn json_call(
    moto: &MotoServer,
    service: &str,
    target: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let authorization = dummy_sigv4_authorization(service);
    let response = http_request(
        moto.port(),
        "POST",
        "/",
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", target),
            ("Authorization", &authorization),
        ],
        body.to_string().as_bytes(),
    )?;
    if response.status != 200 {
        return Err(format!("{target}: {} {}", response.status, response.text()).into());
    }
    Ok(serde_json::from_slice(&response.body)?)
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// Deploys the template as `stack` (environment `environment`, `processes` cluster processes,
/// without the ECS services) and returns its outputs once it is CREATE_COMPLETE.
async fn deploy(
    moto: &MotoServer,
    cloudformation: &aws_sdk_cloudformation::Client,
    stack: &str,
    environment: &str,
    processes: &str,
) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
    deploy_with(moto, cloudformation, stack, environment, processes, &[]).await
}

/// [`deploy`] with `more` parameters than those every deployment needs.
pub(crate) async fn deploy_with(
    moto: &MotoServer,
    cloudformation: &aws_sdk_cloudformation::Client,
    stack: &str,
    environment: &str,
    processes: &str,
    more: &[Parameter],
) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
    // The HTTPS listener needs a certificate that exists (moto checks ACM).
    let certificate = json_call(
        moto,
        "acm",
        "CertificateManager.RequestCertificate",
        &serde_json::json!({ "DomainName": "api.pageflow.example" }),
    )?;
    let certificate_arn = certificate["CertificateArn"]
        .as_str()
        .ok_or("RequestCertificate gave no CertificateArn")?
        .to_string();
    let parameters = [
        ("Environment", environment),
        ("Portals", PORTALS),
        ("PortalOrigins", PORTAL_ORIGINS),
        ("ClusterProcesses", processes),
        ("RunJob", "false"),
        (
            "ContainerImage",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/pageflow:it",
        ),
        ("CertificateArn", certificate_arn.as_str()),
    ]
    .into_iter()
    .map(|(key, value)| {
        Parameter::builder()
            .parameter_key(key)
            .parameter_value(value)
            .build()
    })
    .chain(more.iter().cloned())
    .collect();
    cloudformation
        .create_stack()
        .stack_name(stack)
        .template_body(TEMPLATE)
        .set_parameters(Some(parameters))
        .capabilities(Capability::CapabilityNamedIam)
        .send()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let described = loop {
        let described = cloudformation
            .describe_stacks()
            .stack_name(stack)
            .send()
            .await?;
        let found = described.stacks().first().cloned().ok_or("no such stack")?;
        let status = found.stack_status().cloned();
        if !status
            .as_ref()
            .is_some_and(|s| s.as_str().ends_with("_IN_PROGRESS"))
        {
            break found;
        }
        if Instant::now() > deadline {
            return Err(format!("the stack is still {status:?} after 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        described.stack_status(),
        Some(&StackStatus::CreateComplete),
        "{:?}",
        described.stack_status_reason()
    );
    Ok(described
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect())
}

/// The container environment of the task definition `task_definition` (name or ARN), as ECS
/// would give it to the job; checks the container's stop timeout on the way.
fn task_environment(
    moto: &MotoServer,
    task_definition: &str,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let (container, environment) = container_environment(moto, task_definition)?;
    assert_eq!(
        container["stopTimeout"], 60,
        "ECS waits longer than checkpoint.stop_timeout (50 s) before SIGKILL"
    );
    Ok(environment)
}

/// A container definition (as ECS describes it) and its environment, `(name, value)` in order.
type Container = (serde_json::Value, Vec<(String, String)>);

/// The container definition of `task_definition` and its environment, as ECS would give it.
fn container_environment(
    moto: &MotoServer,
    task_definition: &str,
) -> Result<Container, Box<dyn std::error::Error>> {
    let described = json_call(
        moto,
        "ecs",
        "AmazonEC2ContainerServiceV20141113.DescribeTaskDefinition",
        &serde_json::json!({ "taskDefinition": task_definition }),
    )?;
    let container = described["taskDefinition"]["containerDefinitions"][0].clone();
    let environment = container["environment"]
        .as_array()
        .ok_or("the task definition has no environment")?
        .iter()
        // moto keeps an `AWS::NoValue` list item as null, where CloudFormation drops it.
        .filter(|entry| !entry.is_null())
        .map(|entry| {
            (
                entry["name"].as_str().unwrap_or_default().to_string(),
                entry["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Ok((container, environment))
}

/// Runs `pageflow serve` with the environment of the stack's serving-tier task definition
/// (locally: the endpoint, a loopback port, and open rankings: there is no Cognito here) and
/// checks that it becomes ready and serves each portal's last final popular ranking of `expected`
/// (the replay's feature lines).
async fn serving_tier_serves_the_features_stream(
    moto: &MotoServer,
    task_definition: &str,
    features_stream: &str,
    expected: &[String],
) -> TestResult {
    let (container, mut env) = container_environment(moto, task_definition)?;
    assert_eq!(container["command"], serde_json::json!(["serve"]));
    let setting = |env: &[(String, String)], name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        setting(&env, "PAGEFLOW__SINKS__KINESIS__STREAM"),
        features_stream
    );
    env.extend(aws_env(&moto.endpoint));
    for (name, value) in [
        ("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0"),
        ("PAGEFLOW__SERVE__AUTH__RANKINGS", "open"),
        ("PAGEFLOW__SERVING_TIER__DISCOVERY_INTERVAL", "\"1s\""),
    ] {
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value.to_string()));
    }
    let mut last_popular: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for line in expected {
        let record: serde_json::Value = serde_json::from_str(line)?;
        if record["type"] == "popular" {
            let portal = record["portal"].as_str().unwrap_or_default().to_string();
            if last_popular
                .get(&portal)
                .is_none_or(|held| held["window_end"].as_u64() < record["window_end"].as_u64())
            {
                last_popular.insert(portal, record);
            }
        }
    }
    assert!(!last_popular.is_empty(), "the replay has popular rankings");
    let mut server = JobProcess::spawn(Command::new(BIN).arg("serve").envs(env))?;
    let addr = server.http_address(Duration::from_secs(60))?;
    let served = poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let ready = http_get(&addr, "/readyz").is_some_and(|(status, _)| status == 200);
        let all = last_popular.iter().all(|(portal, record)| {
            http_get(
                &addr,
                &format!("/v1/portals/{portal}/popular?final=true&n=100"),
            )
            .and_then(|(status, body)| {
                (status == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
            })
            .flatten()
            .is_some_and(|body| {
                body["window_end"] == record["window_end"] && body["items"] == record["items"]
            })
        });
        (ready && all).then_some(())
    });
    let stderr = server.stderr();
    server.terminate()?;
    let stopped = server.wait_timeout(Duration::from_secs(30));
    assert!(
        served.is_some(),
        "pageflow serve with the stack's environment never served the replay's rankings:\n{stderr}"
    );
    assert!(
        stopped.is_some_and(|status| status.success()),
        "pageflow serve did not stop on SIGTERM: {stopped:?}\n{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_deployed_into_moto_runs_the_job_in_aws_mode() -> TestResult {
    let moto = MotoServer::start()?;

    let cloudformation = cloudformation_client(&moto.endpoint);
    let outputs = deploy(&moto, &cloudformation, STACK, ENVIRONMENT, "1").await?;
    let output = |key: &str| {
        outputs
            .get(key)
            .cloned()
            .ok_or_else(|| format!("the stack has no output {key}: {outputs:?}"))
    };
    let bucket = output("ArchiveBucket")?;
    let features_stream = output("FeaturesStream")?;
    assert_eq!(features_stream, format!("pageflow-{ENVIRONMENT}-features"));

    // What the stack created answers its own API: every portal's stream and the features stream,
    // the bucket with the stack's KMS key.
    let kinesis = kinesis_client(&moto.endpoint, RetryConfig::standard());
    let portal_streams: Vec<String> = PORTALS
        .split(',')
        .map(|portal| format!("pageflow-{ENVIRONMENT}-pageviews-{portal}"))
        .collect();
    for stream in portal_streams.iter().chain([&features_stream]) {
        kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| format!("the stack did not create the stream {stream}: {e:?}"))?;
    }
    let s3 = s3_client(&moto.endpoint);
    let encryption = s3.get_bucket_encryption().bucket(&bucket).send().await?;
    let rule = encryption
        .server_side_encryption_configuration()
        .and_then(|c| c.rules().first())
        .and_then(|r| r.apply_server_side_encryption_by_default())
        .ok_or("the archive bucket has no default encryption")?;
    assert_eq!(rule.sse_algorithm().as_str(), "aws:kms");
    assert_eq!(
        rule.kms_master_key_id(),
        Some(output("DataKeyArn")?.as_str())
    );

    // The delivery streams: declared by the stack, not created by moto; created here as the
    // template declares them, into the stack's bucket with the stack's delivery role.
    let declared = TEMPLATE
        .matches("Type: AWS::KinesisFirehose::DeliveryStream")
        .count();
    assert_eq!(declared, 3, "raw, processed and dead-letter");
    let firehose = firehose_client(&moto.endpoint, RetryConfig::standard());
    let existing = firehose.list_delivery_streams().send().await?;
    assert!(
        existing.delivery_stream_names().is_empty(),
        "moto does not create delivery streams from a template; if it does now, drop this part"
    );
    let role = output("FirehoseDeliveryRoleArn")?;
    for (layer, prefix) in LAYERS {
        let partitioned = format!(
            "Prefix: \"{prefix}portal=!{{partitionKeyFromQuery:portal}}/date=!{{partitionKeyFromQuery:date}}/hour=!{{partitionKeyFromQuery:hour}}/\""
        );
        assert!(
            TEMPLATE.contains(&partitioned),
            "the template partitions {layer} under {prefix}: {partitioned}"
        );
        let name = output(&format!(
            "{}DeliveryStream",
            match layer {
                "raw" => "Raw",
                "processed" => "Processed",
                _ => "DeadLetter",
            }
        ))?;
        assert_eq!(name, format!("pageflow-{ENVIRONMENT}-{layer}"));
        firehose
            .create_delivery_stream()
            .delivery_stream_name(&name)
            .extended_s3_destination_configuration(
                ExtendedS3DestinationConfiguration::builder()
                    .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                    .role_arn(&role)
                    .prefix(prefix)
                    .error_output_prefix(format!("errors/{prefix}"))
                    .build()?,
            )
            .send()
            .await?;
    }

    // The job's environment, as the stack's task definition sets it for ECS.
    let task_env = task_environment(&moto, &output("TaskDefinitionP0")?)?;
    let setting = |name: &str| {
        task_env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        setting("PAGEFLOW__SOURCE__KINESIS__STREAMS"),
        output("PortalStreams")?
    );
    assert_eq!(setting("PAGEFLOW__CHECKPOINT__BUCKET"), bucket);
    assert_eq!(setting("PAGEFLOW__METRICS__EMF__ENABLED"), "true");
    assert_eq!(setting("PAGEFLOW__LOG__FORMAT"), "json");
    assert_eq!(setting("PAGEFLOW__CLUSTER__PROCESS"), "0");
    assert!(
        !task_env
            .iter()
            .any(|(n, _)| n == "PAGEFLOW__CLUSTER__ADDRESSES"),
        "one process: no cluster addresses"
    );

    // Locally, only what must differ from ECS: the endpoint (AWS_ENDPOINT_URL), a data directory
    // that exists here, an end once every shard is read, and HTTP on a free loopback port.
    let dir = tempfile::tempdir()?;
    let mut env: Vec<(String, String)> = task_env.clone();
    env.extend(aws_env(&moto.endpoint));
    for (name, value) in [
        (
            "PAGEFLOW__SINKS__DIR",
            dir.path().join("data").to_string_lossy().to_string(),
        ),
        (
            "PAGEFLOW__SOURCE__KINESIS__STOP_AT_LATEST",
            "true".to_string(),
        ),
        (
            "PAGEFLOW__SOURCE__KINESIS__DISCOVERY_INTERVAL",
            "\"2s\"".to_string(),
        ),
        ("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0".to_string()),
    ] {
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value));
    }

    // A few hundred pageviews, some malformed, into the portals' streams of the stack.
    let events = dir.path().join("events.jsonl");
    let events_str = events.to_string_lossy().to_string();
    pageflow(
        &[
            "generate",
            "--events",
            "600",
            "--seed",
            "13",
            "--invalid-share",
            "0.02",
            "--out",
            &events_str,
        ],
        &[],
    )?;
    let event_count = std::fs::read(&events)?
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .count();
    let put = pageflow(&["aws", "put", "--input", &events_str], &env)?;
    assert!(
        put.contains(&format!("wrote {event_count} records")),
        "{put}"
    );

    // To files, not pipes: the JSON logs of a whole run would fill a pipe nobody reads yet.
    let stdout_path = dir.path().join("run.stdout");
    let stderr_path = dir.path().join("run.stderr");
    let mut child = Command::new(BIN)
        .arg("run")
        .envs(env.iter().cloned())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "pageflow run did not end within 3 minutes:\n{}",
                std::fs::read_to_string(&stderr_path)?
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(&stderr_path)?;
    assert!(status.success(), "pageflow run failed: {stderr}");
    // The task definition's environment turns on JSON logs and EMF metrics for CloudWatch.
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with('{') && line.contains("\"level\"")),
        "JSON log lines on stderr: {stderr}"
    );
    let stdout = std::fs::read_to_string(&stdout_path)?;
    let emf: serde_json::Value = stdout
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| format!("no EMF line on stdout: {stdout}"))?;
    assert_eq!(
        emf["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Pageflow",
        "{emf}"
    );
    assert!(emf["Environment"].is_string(), "{emf}");

    // The features on the stack's features stream are what a replay of the pageviews computes.
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
    let expected: Vec<String> = std::fs::read_to_string(replay_dir.join("features.jsonl"))?
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!expected.is_empty(), "the pageviews give features");
    let streamed: Vec<String> = read_stream(&kinesis, &features_stream)
        .await?
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.data).to_string())
        .collect();
    assert_eq!(sorted(streamed), sorted(expected.clone()));
    serving_tier_serves_the_features_stream(
        &moto,
        &output("ApiTaskDefinition")?,
        &features_stream,
        &expected,
    )
    .await?;

    // The archive in the stack's bucket, under the layers' prefixes.
    let archived = |prefix: &'static str| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let objects = read_objects(&s3, &bucket, prefix).await?;
            Ok::<Vec<String>, Box<dyn std::error::Error>>(
                lines_of(&objects)
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).to_string())
                    .collect(),
            )
        }
    };
    assert_eq!(sorted(archived("processed/").await?), sorted(expected));
    let dead_letters = archived("dead-letter/").await?;
    let replayed_letters = std::fs::read_to_string(replay_dir.join("dead-letter.jsonl"))?
        .lines()
        .count();
    assert!(replayed_letters > 0, "--invalid-share 0.02 of 600");
    assert_eq!(dead_letters.len(), replayed_letters);
    let raw = archived("raw/").await?;
    let invalid = dead_letters
        .iter()
        .filter(|line| !line.contains("\"reason\":\"late\""))
        .count();
    assert_eq!(
        raw.len(),
        event_count - invalid,
        "every valid pageview once"
    );

    // The checkpoints: in the stack's bucket under the stack's prefix, the final one committed.
    let checkpoint_prefix = setting("PAGEFLOW__CHECKPOINT__PREFIX");
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("{checkpoint_prefix}/"))
        .send()
        .await?;
    assert!(
        listed
            .contents()
            .iter()
            .any(|o| o.key().is_some_and(|k| k.ends_with("/MANIFEST.json"))),
        "a committed checkpoint under s3://{bucket}/{checkpoint_prefix}/: {:?}",
        listed.contents()
    );
    // The curated lake ([sinks.curated] bucket from the task definition): the committed Parquet
    // files under curated/<table>/portal=<p>/date=<d>/, where the Glue tables look.
    let curated = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("curated/")
        .send()
        .await?;
    let curated_keys: Vec<&str> = curated.contents().iter().filter_map(|o| o.key()).collect();
    for table in ["pageviews", "sessions", "popular"] {
        assert!(
            curated_keys
                .iter()
                .any(|key| key.starts_with(&format!("curated/{table}/portal="))
                    && key.contains("/date=")
                    && key.ends_with(".parquet")),
            "curated {table} files in s3://{bucket}/curated/: {curated_keys:?}"
        );
    }
    assert!(
        !curated_keys
            .iter()
            .any(|key| key.contains("_pending") || key.contains(".tmp")),
        "only committed files are uploaded: {curated_keys:?}"
    );
    collector_takes_beacons_into_the_portal_streams(
        &moto,
        &kinesis,
        &output("CollectorTaskDefinition")?,
    )
    .await?;
    Ok(())
}

/// Runs `pageflow collect` with the environment of the stack's collector task definition
/// (locally: the endpoint, a loopback port and a spool directory that exists here), checks that
/// each portal's SQS buffer is a KMS-encrypted FIFO queue with a dead-letter queue, and that a
/// beacon from a second origin of g1 lands in the stack's g1 stream.
async fn collector_takes_beacons_into_the_portal_streams(
    moto: &MotoServer,
    kinesis: &aws_sdk_kinesis::Client,
    task_definition: &str,
) -> TestResult {
    let (container, mut env) = container_environment(moto, task_definition)?;
    assert_eq!(
        container["command"],
        serde_json::json!(["collect", "--config", "/dev/null"])
    );
    assert_eq!(
        container["stopTimeout"], 30,
        "ECS waits longer than collect.stop_timeout before SIGKILL"
    );
    assert!(
        env.contains(&(
            "PAGEFLOW__COLLECT__STOP_TIMEOUT".to_string(),
            "20s".to_string()
        )),
        "{env:?}"
    );
    let portals = env
        .iter()
        .find(|(name, _)| name == "PAGEFLOW__COLLECT__PORTALS")
        .map(|(_, value)| value.clone())
        .ok_or("the collector's task definition sets no PAGEFLOW__COLLECT__PORTALS")?;
    for portal in PORTALS.split(',') {
        for needle in [
            format!("portal=\"{portal}\",stream=\"pageflow-{ENVIRONMENT}-pageviews-{portal}\""),
            format!("pageflow-{ENVIRONMENT}-{portal}-buffer.fifo\"}}"),
        ] {
            assert!(portals.contains(&needle), "{needle} in {portals}");
        }
    }
    assert!(
        portals.contains(r#"origins=["https://g1.example.com","https://m.g1.example.com"]"#),
        "g1's two origins: {portals}"
    );

    // Each buffer: FIFO, encrypted with the stack's key, dead letters after 10 receives.
    let queue_url = |portal: &str| {
        let start = portals
            .find(&format!("portal=\"{portal}\""))
            .and_then(|at| portals[at..].find("sqs_queue=\"").map(|q| at + q + 11))?;
        let end = portals[start..].find('"')?;
        Some(portals[start..start + end].to_string())
    };
    for portal in PORTALS.split(',') {
        let url =
            queue_url(portal).ok_or_else(|| format!("no sqs_queue for {portal}: {portals}"))?;
        let authorization = dummy_sigv4_authorization("sqs");
        let body = format!(
            "Action=GetQueueAttributes&Version=2012-11-05&AttributeName.1=All&QueueUrl={}",
            url.replace(':', "%3A").replace('/', "%2F")
        );
        let answer = http_request(
            moto.port(),
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &authorization),
            ],
            body.as_bytes(),
        )?;
        let text = answer.text();
        assert_eq!(answer.status, 200, "GetQueueAttributes {url}: {text}");
        for needle in [
            "FifoQueue",
            "KmsMasterKeyId",
            &format!("pageflow-{ENVIRONMENT}-{portal}-buffer-dlq.fifo"),
        ] {
            assert!(
                text.contains(needle),
                "{needle} in the attributes of {url}: {text}"
            );
        }
        assert!(
            !text.contains("<Name>ContentBasedDeduplication</Name><Value>true"),
            "the collector sets the deduplication id: {text}"
        );
    }

    let dir = tempfile::tempdir()?;
    env.extend(aws_env(&moto.endpoint));
    for (name, value) in [
        ("PAGEFLOW__COLLECT__LISTEN", "127.0.0.1:0".to_string()),
        (
            "PAGEFLOW__COLLECT__SPOOL_DIR",
            dir.path().join("spool").to_string_lossy().to_string(),
        ),
    ] {
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value));
    }
    let mut collector = JobProcess::spawn(
        Command::new(BIN)
            .args(["collect", "--config", "/dev/null"])
            .envs(env),
    )?;
    let addr = collector.http_address(Duration::from_secs(60))?;
    let ready = poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        http_get(&addr, "/readyz").and_then(|(status, _)| (status == 200).then_some(()))
    });
    assert!(
        ready.is_some(),
        "the collector never found the stack's streams:\n{}",
        collector.stderr()
    );
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {addr}"))?;
    let beacon = r#"[{"event_id":"stack-beacon-1","portal":"g1","user_id":"u-stack","article_id":"g1/politica/stack","ts":1795435200000}]"#;
    let answer = http_request(
        port,
        "POST",
        "/v1/collect",
        &[
            ("Content-Type", "text/plain"),
            ("Origin", "https://m.g1.example.com"),
        ],
        beacon.as_bytes(),
    )?;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let accepted: serde_json::Value = serde_json::from_slice(&answer.body)?;
    assert_eq!(accepted["accepted"], 1, "{accepted}");
    let stream = format!("pageflow-{ENVIRONMENT}-pageviews-g1");
    let written = read_stream(kinesis, &stream).await?;
    assert!(
        written
            .iter()
            .any(|r| String::from_utf8_lossy(&r.data).contains("stack-beacon-1")),
        "the beacon in {stream}"
    );
    collector.terminate()?;
    let stopped = collector.wait_timeout(Duration::from_secs(30));
    assert!(
        stopped.is_some_and(|status| status.success()),
        "pageflow collect did not stop on SIGTERM: {stopped:?}\n{}",
        collector.stderr()
    );
    Ok(())
}

/// Three cluster processes: three task definitions, indices 0, 1, 2, one list of Cloud Map
/// addresses in index order, and otherwise the same environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_get_their_own_index_and_the_same_addresses() -> TestResult {
    let moto = MotoServer::start()?;
    let cloudformation = cloudformation_client(&moto.endpoint);
    deploy(&moto, &cloudformation, "pageflow-three", "three", "3").await?;
    let addresses = "[\"pageflow-p0.pageflow.local:7100\",\"pageflow-p1.pageflow.local:7100\",\"pageflow-p2.pageflow.local:7100\"]";
    let mut others = Vec::new();
    for process in 0..3 {
        let mut env = task_environment(&moto, &format!("pageflow-three-p{process}"))?;
        let take = |env: &mut Vec<(String, String)>, name: &str| {
            let position = env.iter().position(|(n, _)| n == name);
            position.map(|p| env.remove(p).1)
        };
        assert_eq!(
            take(&mut env, "PAGEFLOW__CLUSTER__PROCESS"),
            Some(process.to_string())
        );
        assert_eq!(
            take(&mut env, "PAGEFLOW__CLUSTER__ADDRESSES").as_deref(),
            Some(addresses)
        );
        others.push(env);
    }
    assert!(!others[0].is_empty());
    assert_eq!(others[0], others[1]);
    assert_eq!(others[0], others[2]);
    Ok(())
}
