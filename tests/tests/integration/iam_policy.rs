//! The IAM policies in `deploy/iam/` checked against themselves and against the connectors' code,
//! reading files only (no AWS, no network).
//!
//! - **Well formed.** Each policy is JSON with `Version` 2012-10-17; every statement of a permission
//!   policy has a unique alphanumeric `Sid`, `Effect: Allow`, `Action` and `Resource`. No action has
//!   a wildcard (`kinesis:*`, `kinesis:Get*`) and every action is one this file knows, spelled as
//!   IAM spells it. No `Resource` is `"*"` unless every action of its statement has no resource
//!   type (none of ours needs that). Every resource, rendered with sample names, is an ARN of a
//!   resource type its actions authorize on ([`ACTION_RESOURCES`]): a consumer ARN for
//!   `SubscribeToShard`, a stream ARN for `RegisterStreamConsumer`, and so on.
//! - **Renderable.** Every placeholder is one `deploy/iam/render-policy.sh` replaces, and the
//!   templates keep the line layout the script's statement filter relies on.
//! - **The collector's policy** (`pageflow-collector-policy.json`) is held to the same: the
//!   collector's code, its SQS buffer and the Kinesis sink it writes with must be allowed by it
//!   (the SQS buffer is left out of the task policy's check: only the collector runs it).
//! - **Enough for the code.** Every `.rs` file under `connectors/src/` (recursively, so files added
//!   later are covered) is scanned for AWS SDK fluent calls (`.get_records()`, `.put_record_batch()`
//!   …), outside comments, string literals and `#[cfg(test)]` items. Each call that
//!   [`SDK_OPERATIONS`] knows, for an SDK crate the file uses, must be allowed by some statement of
//!   the task policy. The scan must find the calls known to exist, so a broken scan fails too.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::path::{Path, PathBuf};

use serde_json::Value;

type TestResult = Result<(), Box<dyn Error>>;

/// The policy of the ECS task role.
const TASK_POLICY: &str = "deploy/iam/pageflow-task-policy.json";
/// The policy of the collector's ECS task role (`pageflow collect`).
const COLLECTOR_POLICY: &str = "deploy/iam/pageflow-collector-policy.json";
/// The policy of the role the Firehose delivery streams assume to write the archive bucket.
const FIREHOSE_DELIVERY_POLICY: &str = "deploy/iam/firehose-delivery-role-policy.json";
/// Who may assume that role.
const FIREHOSE_TRUST_POLICY: &str = "deploy/iam/firehose-trust-policy.json";
/// Renders the templates.
const RENDER_SCRIPT: &str = "deploy/iam/render-policy.sh";
/// Scanned for SDK calls.
const CONNECTOR_SOURCES: &str = "connectors/src";

/// Sources only the collector runs (its SQS buffer): held to the collector's policy, not the
/// job's task policy.
const COLLECTOR_ONLY_SOURCES: &[&str] = &["connectors/src/sqs_buffer.rs"];

/// Every source of the collector's AWS calls: its own code, its SQS buffer and the Kinesis sink
/// it writes the portal streams with.
const COLLECTOR_SOURCES: &[&str] = &[
    "jobs/src/commands/collect",
    "connectors/src/sqs_buffer.rs",
    "connectors/src/kinesis/sink.rs",
];

/// SDK calls the collector is known to make (a broken scan fails on them).
const KNOWN_COLLECTOR_CALLS: &[&str] = &[
    "put_records",             // kinesis/sink.rs
    "describe_stream_summary", // collect/mod.rs
    "send_message_batch",      // sqs_buffer.rs
    "receive_message",         // sqs_buffer.rs
    "delete_message_batch",    // sqs_buffer.rs
    "get_queue_url",           // sqs_buffer.rs
];

/// SDK calls the connectors are known to make; if the scan stops finding one of them, the scan is
/// broken (or the code moved away from the SDK, and this list should say so).
const KNOWN_CALLS: &[&str] = &[
    "get_records",        // kinesis/polling_reader.rs
    "get_shard_iterator", // kinesis/polling_reader.rs
    "put_records",        // kinesis/sink.rs
    "put_record_batch",   // firehose_sink.rs
];

/// AWS SDK fluent client methods and the IAM actions a call needs: (SDK crate, method, actions).
///
/// Only operations pageflow uses or plausibly will, plus a few that must never appear without a
/// deliberate policy change (creating or deleting streams, account-wide listings). A method name
/// counts for a file only if the file names the SDK crate (`use aws_sdk_kinesis::…`); a file that
/// names no SDK crate at all is held to every crate's meaning of the name.
const SDK_OPERATIONS: &[(&str, &str, &[&str])] = &[
    // Kinesis Data Streams: polling.
    ("aws_sdk_kinesis", "get_records", &["kinesis:GetRecords"]),
    (
        "aws_sdk_kinesis",
        "get_shard_iterator",
        &["kinesis:GetShardIterator"],
    ),
    ("aws_sdk_kinesis", "list_shards", &["kinesis:ListShards"]),
    (
        "aws_sdk_kinesis",
        "describe_stream_summary",
        &["kinesis:DescribeStreamSummary"],
    ),
    (
        "aws_sdk_kinesis",
        "describe_stream",
        &["kinesis:DescribeStream"],
    ),
    // Kinesis Data Streams: enhanced fan-out.
    (
        "aws_sdk_kinesis",
        "register_stream_consumer",
        &["kinesis:RegisterStreamConsumer"],
    ),
    (
        "aws_sdk_kinesis",
        "describe_stream_consumer",
        &["kinesis:DescribeStreamConsumer"],
    ),
    (
        "aws_sdk_kinesis",
        "list_stream_consumers",
        &["kinesis:ListStreamConsumers"],
    ),
    (
        "aws_sdk_kinesis",
        "deregister_stream_consumer",
        &["kinesis:DeregisterStreamConsumer"],
    ),
    (
        "aws_sdk_kinesis",
        "subscribe_to_shard",
        &["kinesis:SubscribeToShard"],
    ),
    // Kinesis Data Streams: writing.
    ("aws_sdk_kinesis", "put_records", &["kinesis:PutRecords"]),
    // SQS: the collector's buffer queues.
    ("aws_sdk_sqs", "send_message_batch", &["sqs:SendMessage"]),
    ("aws_sdk_sqs", "send_message", &["sqs:SendMessage"]),
    ("aws_sdk_sqs", "receive_message", &["sqs:ReceiveMessage"]),
    (
        "aws_sdk_sqs",
        "delete_message_batch",
        &["sqs:DeleteMessage"],
    ),
    ("aws_sdk_sqs", "delete_message", &["sqs:DeleteMessage"]),
    ("aws_sdk_sqs", "get_queue_url", &["sqs:GetQueueUrl"]),
    (
        "aws_sdk_sqs",
        "get_queue_attributes",
        &["sqs:GetQueueAttributes"],
    ),
    (
        "aws_sdk_sqs",
        "change_message_visibility",
        &["sqs:ChangeMessageVisibility"],
    ),
    ("aws_sdk_kinesis", "put_record", &["kinesis:PutRecord"]),
    // Kinesis Data Streams: administration, never the job's business.
    (
        "aws_sdk_kinesis",
        "create_stream",
        &["kinesis:CreateStream"],
    ),
    (
        "aws_sdk_kinesis",
        "delete_stream",
        &["kinesis:DeleteStream"],
    ),
    (
        "aws_sdk_kinesis",
        "update_shard_count",
        &["kinesis:UpdateShardCount"],
    ),
    ("aws_sdk_kinesis", "list_streams", &["kinesis:ListStreams"]),
    (
        "aws_sdk_kinesis",
        "describe_limits",
        &["kinesis:DescribeLimits"],
    ),
    // Data Firehose.
    (
        "aws_sdk_firehose",
        "put_record_batch",
        &["firehose:PutRecordBatch"],
    ),
    ("aws_sdk_firehose", "put_record", &["firehose:PutRecord"]),
    (
        "aws_sdk_firehose",
        "describe_delivery_stream",
        &["firehose:DescribeDeliveryStream"],
    ),
    // S3 (checkpoints). HeadObject is authorized as GetObject, ListObjects(V2) and HeadBucket as
    // ListBucket, DeleteObjects per key as DeleteObject, the multipart steps as PutObject.
    ("aws_sdk_s3", "get_object", &["s3:GetObject"]),
    ("aws_sdk_s3", "head_object", &["s3:GetObject"]),
    ("aws_sdk_s3", "put_object", &["s3:PutObject"]),
    ("aws_sdk_s3", "create_multipart_upload", &["s3:PutObject"]),
    ("aws_sdk_s3", "upload_part", &["s3:PutObject"]),
    ("aws_sdk_s3", "complete_multipart_upload", &["s3:PutObject"]),
    (
        "aws_sdk_s3",
        "abort_multipart_upload",
        &["s3:AbortMultipartUpload"],
    ),
    (
        "aws_sdk_s3",
        "copy_object",
        &["s3:GetObject", "s3:PutObject"],
    ),
    ("aws_sdk_s3", "delete_object", &["s3:DeleteObject"]),
    ("aws_sdk_s3", "delete_objects", &["s3:DeleteObject"]),
    ("aws_sdk_s3", "list_objects_v2", &["s3:ListBucket"]),
    ("aws_sdk_s3", "list_objects", &["s3:ListBucket"]),
    ("aws_sdk_s3", "head_bucket", &["s3:ListBucket"]),
    // Personalize (runtime and events).
    (
        "aws_sdk_personalizeruntime",
        "get_recommendations",
        &["personalize:GetRecommendations"],
    ),
    (
        "aws_sdk_personalizeruntime",
        "get_personalized_ranking",
        &["personalize:GetPersonalizedRanking"],
    ),
    (
        "aws_sdk_personalizeevents",
        "put_events",
        &["personalize:PutEvents"],
    ),
    (
        "aws_sdk_personalizeevents",
        "put_items",
        &["personalize:PutItems"],
    ),
    (
        "aws_sdk_personalizeevents",
        "put_users",
        &["personalize:PutUsers"],
    ),
];

/// Resource types, as far as these policies need to tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResourceType {
    SqsQueue,
    KinesisStream,
    KinesisConsumer,
    FirehoseDeliveryStream,
    S3Bucket,
    S3Object,
    PersonalizeCampaign,
    PersonalizeRecommender,
    PersonalizeFilter,
    PersonalizeEventTracker,
    PersonalizeDataset,
    KmsKey,
    LogStream,
}

use ResourceType::*;

/// Every action the policies may name, with the resource types it authorizes on (from the Service
/// Authorization Reference). An empty list means the action has no resource type, so only
/// `"Resource": "*"` can grant it.
const ACTION_RESOURCES: &[(&str, &[ResourceType])] = &[
    ("kinesis:GetRecords", &[KinesisStream]),
    ("kinesis:GetShardIterator", &[KinesisStream]),
    ("kinesis:ListShards", &[KinesisStream]),
    ("kinesis:DescribeStreamSummary", &[KinesisStream]),
    ("kinesis:DescribeStream", &[KinesisStream]),
    ("kinesis:RegisterStreamConsumer", &[KinesisStream]),
    ("kinesis:ListStreamConsumers", &[KinesisStream]),
    ("kinesis:DescribeStreamConsumer", &[KinesisConsumer]),
    ("kinesis:DeregisterStreamConsumer", &[KinesisConsumer]),
    ("kinesis:SubscribeToShard", &[KinesisConsumer]),
    ("kinesis:PutRecords", &[KinesisStream]),
    ("kinesis:PutRecord", &[KinesisStream]),
    ("kinesis:CreateStream", &[KinesisStream]),
    ("kinesis:DeleteStream", &[KinesisStream]),
    ("kinesis:UpdateShardCount", &[KinesisStream]),
    ("kinesis:ListStreams", &[]),
    ("kinesis:DescribeLimits", &[]),
    ("firehose:PutRecordBatch", &[FirehoseDeliveryStream]),
    ("firehose:PutRecord", &[FirehoseDeliveryStream]),
    ("firehose:DescribeDeliveryStream", &[FirehoseDeliveryStream]),
    ("s3:GetObject", &[S3Object]),
    ("s3:PutObject", &[S3Object]),
    ("s3:DeleteObject", &[S3Object]),
    ("s3:AbortMultipartUpload", &[S3Object]),
    ("s3:ListBucket", &[S3Bucket]),
    ("s3:GetBucketLocation", &[S3Bucket]),
    ("s3:ListBucketMultipartUploads", &[S3Bucket]),
    (
        "personalize:GetRecommendations",
        &[
            PersonalizeCampaign,
            PersonalizeRecommender,
            PersonalizeFilter,
        ],
    ),
    (
        "personalize:GetPersonalizedRanking",
        &[PersonalizeCampaign, PersonalizeFilter],
    ),
    ("personalize:PutEvents", &[PersonalizeEventTracker]),
    ("personalize:PutItems", &[PersonalizeDataset]),
    ("personalize:PutUsers", &[PersonalizeDataset]),
    ("sqs:SendMessage", &[SqsQueue]),
    ("sqs:ReceiveMessage", &[SqsQueue]),
    ("sqs:DeleteMessage", &[SqsQueue]),
    ("sqs:GetQueueAttributes", &[SqsQueue]),
    ("sqs:GetQueueUrl", &[SqsQueue]),
    ("sqs:ChangeMessageVisibility", &[SqsQueue]),
    ("kms:Decrypt", &[KmsKey]),
    ("kms:GenerateDataKey", &[KmsKey]),
    ("logs:PutLogEvents", &[LogStream]),
];

/// The placeholders of the templates, in the order the render script replaces them, with sample
/// values to render them for the checks.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("REGION", "eu-west-1"),
    ("ACCOUNT_ID", "123456789012"),
    ("STREAM_PREFIX", "pageflow-"),
    ("FEATURES_STREAM", "pageflow-features"),
    ("CONSUMER_NAME", "pageflow"),
    ("FIREHOSE_RAW", "pageflow-raw"),
    ("FIREHOSE_PROCESSED", "pageflow-processed"),
    ("FIREHOSE_DEAD_LETTER", "pageflow-dead-letter"),
    ("CHECKPOINT_BUCKET", "pageflow-checkpoints"),
    ("CHECKPOINT_PREFIX", "pageflow/checkpoints"),
    ("PERSONALIZE_PREFIX", "pageflow-"),
    ("KMS_KEY_ID", "1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("ARCHIVE_BUCKET", "pageflow-archive"),
    ("QUEUE_PREFIX", "pageflow-prod-"),
];

/// Statements of the task policy the render script leaves out when their feature is not
/// configured; the script names them, so they must exist.
const OPTIONAL_TASK_STATEMENTS: &[&str] = &[
    "ListCheckpoints",
    "CheckpointsInS3",
    "PersonalizeRecommendations",
    "PersonalizeEvents",
    "KmsDecryptPortalStreams",
    "KmsEncryptFeaturesStream",
    "KmsCheckpointObjects",
];

#[test]
fn policy_documents_are_well_formed() -> TestResult {
    for path in [TASK_POLICY, COLLECTOR_POLICY, FIREHOSE_DELIVERY_POLICY] {
        let template = read(path)?;
        let policy: Value = serde_json::from_str(&template)
            .map_err(|e| format!("{path} is not valid JSON: {e}"))?;
        let rendered: Value = serde_json::from_str(&render(&template))
            .map_err(|e| format!("{path} rendered with sample names is not valid JSON: {e}"))?;
        check_permission_policy(path, &policy, &rendered)?;
    }
    let trust: Value = serde_json::from_str(&read(FIREHOSE_TRUST_POLICY)?)
        .map_err(|e| format!("{FIREHOSE_TRUST_POLICY} is not valid JSON: {e}"))?;
    check_firehose_trust_policy(&trust)?;
    Ok(())
}

#[test]
fn templates_are_what_the_render_script_expects() -> TestResult {
    let script = read(RENDER_SCRIPT)?;
    for path in [
        TASK_POLICY,
        COLLECTOR_POLICY,
        FIREHOSE_DELIVERY_POLICY,
        FIREHOSE_TRUST_POLICY,
    ] {
        let template = read(path)?;
        let policy: Value = serde_json::from_str(&template)?;

        let mut tokens = BTreeSet::new();
        placeholder_like_tokens(&policy, &mut tokens);
        for token in &tokens {
            assert!(
                PLACEHOLDERS.iter().any(|(name, _)| name == token),
                "{path}: `{token}` looks like a placeholder but is none the render script \
                 replaces; add it to the script and to PLACEHOLDERS here, or fix its spelling"
            );
        }
        let rendered = render(&template);
        let mut left = BTreeSet::new();
        placeholder_like_tokens(&serde_json::from_str(&rendered)?, &mut left);
        assert!(left.is_empty(), "{path}: left after rendering: {left:?}");

        let layout_sids = statement_layout(path, &template)?;
        let json_sids: Vec<String> = statements(path, &policy)?
            .iter()
            .map(|s| {
                s.get("Sid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            layout_sids, json_sids,
            "{path}: the statements found by layout are not the JSON's statements"
        );
    }
    for (name, _) in PLACEHOLDERS {
        assert!(
            script.contains(name),
            "{RENDER_SCRIPT} does not replace the placeholder {name}"
        );
    }
    let task: Value = serde_json::from_str(&read(TASK_POLICY)?)?;
    let task_sids: BTreeSet<&str> = statements(TASK_POLICY, &task)?
        .iter()
        .filter_map(|s| s.get("Sid").and_then(Value::as_str))
        .collect();
    for sid in OPTIONAL_TASK_STATEMENTS {
        assert!(
            task_sids.contains(sid),
            "{TASK_POLICY} has no statement {sid}"
        );
        assert!(
            script.contains(sid),
            "{RENDER_SCRIPT} never leaves out {sid}"
        );
    }
    Ok(())
}

#[test]
fn every_aws_operation_the_connectors_call_is_allowed_by_the_task_policy() -> TestResult {
    let root = workspace_root()?;
    let mut files = Vec::new();
    rust_files(&root.join(CONNECTOR_SOURCES), &mut files)?;
    assert!(!files.is_empty(), "no Rust files under {CONNECTOR_SOURCES}");
    files.retain(|file| {
        !COLLECTOR_ONLY_SOURCES
            .iter()
            .any(|only| file.ends_with(only))
    });
    let calls = scan(&root, &files, KNOWN_CALLS, CONNECTOR_SOURCES)?;
    assert_allowed(TASK_POLICY, &calls, "the connectors")
}

#[test]
fn every_aws_operation_the_collector_calls_is_allowed_by_the_collector_policy() -> TestResult {
    let root = workspace_root()?;
    let mut files = Vec::new();
    for source in COLLECTOR_SOURCES {
        let path = root.join(source);
        if path.is_dir() {
            rust_files(&path, &mut files)?;
        } else {
            files.push(path);
        }
    }
    let calls = scan(
        &root,
        &files,
        KNOWN_COLLECTOR_CALLS,
        "the collector's sources",
    )?;
    assert_allowed(COLLECTOR_POLICY, &calls, "the collector")
}

/// The SDK calls of `files`, checking that the scan finds each of `known`.
fn scan(
    root: &Path,
    files: &[PathBuf],
    known: &[&str],
    what: &str,
) -> Result<Vec<SdkCall>, Box<dyn Error>> {
    let mut calls = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(file)?;
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        calls.extend(sdk_calls(&shown, &source));
    }
    let found: BTreeSet<&str> = calls.iter().map(|c| c.method.as_str()).collect();
    for call in known {
        assert!(
            found.contains(call),
            "the scan of {what} no longer finds `.{call}()`: either the scan broke or the call is \
             gone (then update the list of known calls); found: {found:?}"
        );
    }
    Ok(calls)
}

/// Every action `calls` need is granted by the policy at `path`.
fn assert_allowed(path: &str, calls: &[SdkCall], who: &str) -> TestResult {
    let policy: Value = serde_json::from_str(&read(path)?)?;
    let granted = allowed_actions(path, &policy)?;
    let mut missing = Vec::new();
    for call in calls {
        for action in &call.actions {
            match granted.get(&action.to_ascii_lowercase()) {
                Some(sid) => println!(
                    "{}:{} `.{}()` needs {action}: granted by {sid}",
                    call.file, call.line, call.method
                ),
                None => missing.push(format!(
                    "{}:{} calls `.{}()`, which needs {action}",
                    call.file, call.line, call.method
                )),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{path} does not allow what {who} calls (add each action to the statement of its \
         feature, scoped to its resources, and say why in deploy/iam/README.md):\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

#[test]
fn the_scan_sees_calls_across_lines_and_ignores_comments_strings_and_test_code() {
    let source = r##"
use aws_sdk_kinesis::Client;
// A comment calling client.delete_stream() is no call.
/* Nor is /* a nested */ client.create_stream() in a block comment. */
/// Nor in a doc comment: `client.update_shard_count()`.
async fn read(client: &Client, it: &str) {
    let quote = '"';
    let text = "a string with .list_streams() in it";
    let raw = r#"a raw string with "quotes" and .describe_limits()"#;
    let escaped = "an \" escaped quote, then .delete_stream()";
    let _ = (quote, text, raw, escaped, '\'', '\u{2014}');
    let output = client
        .get_records()
        .shard_iterator(it)
        .send()
        .await;
    client . list_shards ( ) ;
    for _ in 0..3 {}
}
fn lifetimes<'a>(x: &'a str) -> &'a str { x }
#[cfg(test)]
mod tests {
    fn setup(client: &Client) {
        let _ = client.create_stream().stream_name("s");
    }
}
#[cfg(test)]
use aws_sdk_kinesis::Client as TestClient;
async fn after(client: &Client) {
    client.put_records();
}
"##;
    let calls = sdk_calls("snippet.rs", source);
    let seen: Vec<(&str, usize)> = calls.iter().map(|c| (c.method.as_str(), c.line)).collect();
    assert_eq!(
        seen,
        vec![
            ("get_records", 13),
            ("list_shards", 17),
            ("put_records", 30)
        ]
    );

    // A name two SDKs share counts for the SDK the file uses, or for every SDK if it names none.
    let firehose = sdk_calls(
        "f.rs",
        "use aws_sdk_firehose::Client;\nfn f(c: &Client) { c.put_record(); }",
    );
    assert_eq!(firehose.len(), 1);
    assert_eq!(firehose[0].actions, vec!["firehose:PutRecord"]);
    let unnamed = sdk_calls("u.rs", "fn f(c: &crate::Client) { c.put_record(); }");
    let actions: Vec<&str> = unnamed
        .iter()
        .flat_map(|c| c.actions.iter().copied())
        .collect();
    assert_eq!(actions, vec!["kinesis:PutRecord", "firehose:PutRecord"]);
    let other = sdk_calls(
        "e.rs",
        "use aws_sdk_eventbridge::Client;\nfn f(c: &Client) { c.put_events(); }",
    );
    assert!(
        other.is_empty(),
        "EventBridge's put_events is not Personalize's: {other:?}"
    );
}

#[test]
fn every_action_of_the_operation_table_has_its_resource_types() {
    for (krate, method, actions) in SDK_OPERATIONS {
        assert!(!actions.is_empty(), "{krate} {method} maps to no action");
        for action in *actions {
            assert!(
                resource_types(action).is_some(),
                "{action} (for {krate} `.{method}()`) is missing from ACTION_RESOURCES"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policies

/// Checks a permission policy; `rendered` is the same policy with the sample names.
fn check_permission_policy(path: &str, policy: &Value, rendered: &Value) -> TestResult {
    assert_eq!(
        policy.get("Version").and_then(Value::as_str),
        Some("2012-10-17"),
        "{path}: Version must be 2012-10-17 (the older version does not support policy variables)"
    );
    let templates = statements(path, policy)?;
    let renders = statements(path, rendered)?;
    assert!(!templates.is_empty(), "{path}: no statements");
    let mut sids = BTreeSet::new();
    for (statement, rendered) in templates.iter().zip(renders) {
        let sid = statement
            .get("Sid")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{path}: a statement has no Sid: {statement}"))?;
        assert!(
            !sid.is_empty() && sid.chars().all(|c| c.is_ascii_alphanumeric()),
            "{path}: Sid `{sid}` must be non-empty and alphanumeric"
        );
        assert!(sids.insert(sid), "{path}: Sid {sid} is used twice");
        assert_eq!(
            statement.get("Effect").and_then(Value::as_str),
            Some("Allow"),
            "{path} {sid}: Effect must be Allow"
        );
        for forbidden in ["NotAction", "NotResource", "Principal", "NotPrincipal"] {
            assert!(
                statement.get(forbidden).is_none(),
                "{path} {sid}: {forbidden} does not belong in this identity policy"
            );
        }
        let actions = strings(statement.get("Action"))
            .ok_or_else(|| format!("{path} {sid}: Action must be a string or a list of them"))?;
        assert!(!actions.is_empty(), "{path} {sid}: no actions");
        let mut types = Vec::new();
        for action in &actions {
            assert!(
                !action.contains('*') && !action.contains('?'),
                "{path} {sid}: the action {action} has a wildcard; list the actions instead"
            );
            let allowed = resource_types(action).ok_or_else(|| {
                format!(
                    "{path} {sid}: {action} is no action this test knows (misspelt? or add it \
                     to ACTION_RESOURCES with its resource types)"
                )
            })?;
            types.push((*action, allowed));
        }

        let resources = strings(statement.get("Resource"))
            .ok_or_else(|| format!("{path} {sid}: Resource must be a string or a list of them"))?;
        let rendered_resources = strings(rendered.get("Resource")).unwrap_or_default();
        assert!(!resources.is_empty(), "{path} {sid}: no resources");
        for (template, resource) in resources.iter().zip(&rendered_resources) {
            if *template == "*" {
                let scoped: Vec<&str> = types
                    .iter()
                    .filter(|(_, t)| !t.is_empty())
                    .map(|(a, _)| *a)
                    .collect();
                assert!(
                    scoped.is_empty(),
                    "{path} {sid}: Resource \"*\" although {scoped:?} can be scoped to ARNs"
                );
                continue;
            }
            let arn = Arn::parse(resource)
                .ok_or_else(|| format!("{path} {sid}: `{resource}` is not an ARN"))?;
            for (action, allowed) in &types {
                assert!(
                    allowed.iter().any(|t| arn.is(*t)),
                    "{path} {sid}: `{template}` is not a resource {action} authorizes on \
                     (it takes {allowed:?})"
                );
            }
        }
    }
    Ok(())
}

fn check_firehose_trust_policy(policy: &Value) -> TestResult {
    let path = FIREHOSE_TRUST_POLICY;
    assert_eq!(
        policy.get("Version").and_then(Value::as_str),
        Some("2012-10-17"),
        "{path}: Version"
    );
    let statements = statements(path, policy)?;
    assert_eq!(statements.len(), 1, "{path}: one statement");
    let statement = &statements[0];
    assert!(
        statement.get("Sid").and_then(Value::as_str).is_some(),
        "{path}: Sid"
    );
    assert_eq!(
        statement.get("Effect").and_then(Value::as_str),
        Some("Allow")
    );
    assert_eq!(
        statement
            .pointer("/Principal/Service")
            .and_then(Value::as_str),
        Some("firehose.amazonaws.com"),
        "{path}: only Firehose may assume the delivery role"
    );
    assert_eq!(
        strings(statement.get("Action")),
        Some(vec!["sts:AssumeRole"]),
        "{path}: Action"
    );
    assert_eq!(
        statement
            .pointer("/Condition/StringEquals/sts:ExternalId")
            .and_then(Value::as_str),
        Some("ACCOUNT_ID"),
        "{path}: Firehose passes the account id as external id; requiring it keeps other \
         accounts' delivery streams out"
    );
    assert!(
        statement.get("Resource").is_none(),
        "{path}: a trust policy has no Resource"
    );
    Ok(())
}

/// Lower-cased action → Sid of the first statement that allows it.
fn allowed_actions(path: &str, policy: &Value) -> Result<BTreeMap<String, String>, Box<dyn Error>> {
    let mut granted = BTreeMap::new();
    for statement in statements(path, policy)? {
        if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        let sid = statement
            .get("Sid")
            .and_then(Value::as_str)
            .unwrap_or("(no Sid)");
        for action in strings(statement.get("Action")).unwrap_or_default() {
            granted
                .entry(action.to_ascii_lowercase())
                .or_insert_with(|| sid.to_string());
        }
    }
    Ok(granted)
}

fn statements<'a>(path: &str, policy: &'a Value) -> Result<&'a Vec<Value>, Box<dyn Error>> {
    Ok(policy
        .get("Statement")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{path}: Statement must be a list"))?)
}

/// A string or a list of strings.
fn strings(value: Option<&Value>) -> Option<Vec<&str>> {
    match value? {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

fn resource_types(action: &str) -> Option<&'static [ResourceType]> {
    ACTION_RESOURCES
        .iter()
        .find(|(known, _)| *known == action)
        .map(|(_, types)| *types)
}

/// An ARN split into its parts: `arn:partition:service:region:account:resource`.
#[derive(Debug)]
struct Arn<'a> {
    partition: &'a str,
    service: &'a str,
    region: &'a str,
    account: &'a str,
    resource: &'a str,
}

impl<'a> Arn<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        let arn = Arn {
            partition: parts.next()?,
            service: parts.next()?,
            region: parts.next()?,
            account: parts.next()?,
            resource: parts.next()?,
        };
        (!arn.partition.is_empty() && !arn.service.is_empty() && !arn.resource.is_empty())
            .then_some(arn)
    }

    /// Whether this is an ARN of that resource type that names something: in the policy's own
    /// region and account (S3 ARNs have neither), and not a bare wildcard after the type.
    fn is(&self, kind: ResourceType) -> bool {
        let regional = |service: &str| {
            self.partition == "aws"
                && self.service == service
                && self.region == sample("REGION")
                && self.account == sample("ACCOUNT_ID")
        };
        let s3 = self.partition == "aws"
            && self.service == "s3"
            && self.region.is_empty()
            && self.account.is_empty()
            && named(self.resource, "");
        let r = self.resource;
        match kind {
            KinesisStream => {
                regional("kinesis") && named(r, "stream/") && !r.contains("/consumer/")
            }
            KinesisConsumer => {
                regional("kinesis") && named(r, "stream/") && r.contains("/consumer/")
            }
            FirehoseDeliveryStream => regional("firehose") && named(r, "deliverystream/"),
            S3Bucket => s3 && !r.contains('/'),
            S3Object => s3 && r.contains('/'),
            PersonalizeCampaign => regional("personalize") && named(r, "campaign/"),
            PersonalizeRecommender => regional("personalize") && named(r, "recommender/"),
            PersonalizeFilter => regional("personalize") && named(r, "filter/"),
            PersonalizeEventTracker => regional("personalize") && named(r, "event-tracker/"),
            PersonalizeDataset => regional("personalize") && named(r, "dataset/"),
            KmsKey => regional("kms") && named(r, "key/"),
            SqsQueue => regional("sqs") && named(r, "") && !r.contains('/'),
            LogStream => regional("logs") && named(r, "log-group:") && r.contains(":log-stream:"),
        }
    }
}

/// `resource` starts with `prefix` and names something after it (not nothing, not `*…`).
fn named(resource: &str, prefix: &str) -> bool {
    resource
        .strip_prefix(prefix)
        .is_some_and(|name| !name.is_empty() && !name.starts_with('*'))
}

fn sample(placeholder: &str) -> &'static str {
    PLACEHOLDERS
        .iter()
        .find(|(name, _)| *name == placeholder)
        .map_or("", |(_, value)| *value)
}

/// The template with the sample names, replaced in the render script's order.
fn render(template: &str) -> String {
    PLACEHOLDERS
        .iter()
        .fold(template.to_string(), |text, (name, value)| {
            text.replace(name, value)
        })
}

/// Words of the string values (not keys) that look like placeholders: three or more characters of
/// capitals, digits and underscores, with at least one capital.
fn placeholder_like_tokens(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let shouting = token
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if token.len() >= 3 && shouting && token.chars().any(|c| c.is_ascii_uppercase()) {
                    out.insert(token.to_string());
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| placeholder_like_tokens(v, out)),
        Value::Object(members) => members
            .values()
            .for_each(|v| placeholder_like_tokens(v, out)),
        _ => {}
    }
}

/// The Sids of the statements, found the way the render script finds them: after the line
/// `  "Statement": [`, each statement opens with `    {`, has `      "Sid": "…",` as its first
/// line and closes with `    },` (`    }` for the last), and the list closes with `  ]`.
fn statement_layout(path: &str, text: &str) -> Result<Vec<String>, Box<dyn Error>> {
    let lines: Vec<&str> = text.lines().collect();
    let at = |i: usize| {
        lines
            .get(i)
            .copied()
            .ok_or_else(|| format!("{path}: the statement list does not end"))
    };
    let start = lines
        .iter()
        .position(|line| *line == r#"  "Statement": ["#)
        .ok_or_else(|| format!("{path}: no line `  \"Statement\": [`"))?;
    let mut sids = Vec::new();
    let mut i = start + 1;
    while at(i)? != "  ]" {
        if at(i)? != "    {" {
            return Err(format!("{path}:{}: expected `    {{` or `  ]`", i + 1).into());
        }
        let sid = at(i + 1)?
            .strip_prefix(r#"      "Sid": ""#)
            .and_then(|rest| rest.strip_suffix(r#"","#))
            .ok_or_else(|| {
                format!(
                    "{path}:{}: the Sid must be the statement's first line",
                    i + 2
                )
            })?;
        sids.push(sid.to_string());
        let mut end = i + 2;
        while !matches!(at(end)?, "    }" | "    },") {
            end += 1;
        }
        let last = at(end + 1)? == "  ]";
        let expected = if last { "    }" } else { "    }," };
        if at(end)? != expected {
            return Err(format!("{path}:{}: expected `{expected}`", end + 1).into());
        }
        i = end + 1;
    }
    Ok(sids)
}

// ---------------------------------------------------------------------------------------------
// Files

fn workspace_root() -> Result<PathBuf, Box<dyn Error>> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the tests crate has no parent directory")?
        .to_path_buf())
}

fn read(relative: &str) -> Result<String, Box<dyn Error>> {
    let path = workspace_root()?.join(relative);
    std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> TestResult {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|entry| entry.path());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scanning Rust source for SDK calls

/// One call of a known SDK operation.
#[derive(Debug)]
struct SdkCall {
    file: String,
    line: usize,
    method: String,
    actions: Vec<&'static str>,
}

/// The known SDK operations `source` calls, outside comments, literals and `#[cfg(test)]` items.
fn sdk_calls(file: &str, source: &str) -> Vec<SdkCall> {
    let code = blank_test_items(&code_only(source));
    let named_crates: BTreeSet<&str> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("aws_sdk_"))
        .collect();
    let mut calls = Vec::new();
    for (line, method) in method_calls(&code) {
        let mut actions = Vec::new();
        for (krate, _, needs) in SDK_OPERATIONS.iter().filter(|(_, m, _)| *m == method) {
            if named_crates.is_empty() || named_crates.contains(krate) {
                for action in *needs {
                    if !actions.contains(action) {
                        actions.push(*action);
                    }
                }
            }
        }
        if !actions.is_empty() {
            calls.push(SdkCall {
                file: file.to_string(),
                line,
                method,
                actions,
            });
        }
    }
    calls
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `source` with comments and the insides of string and character literals replaced by spaces
/// (line breaks kept, so line numbers stay right).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < chars.len() {
                let pair = (chars[i], chars.get(i + 1).copied());
                if pair == ('/', Some('*')) {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if pair == ('*', Some('/')) {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_opening(&chars, i) {
            // r"…", r#"…"#, br"…": ends at a quote followed by as many hashes.
            let open = 1 + hashes + 1;
            out.extend(std::iter::repeat_n(' ', open));
            i += open;
            while i < chars.len() {
                let closes =
                    chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k).copied() == Some('#'));
                if closes {
                    out.extend(std::iter::repeat_n(' ', 1 + hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() {
                match chars[i] {
                    '\\' => {
                        out.push(' ');
                        if let Some(&escaped) = chars.get(i + 1) {
                            out.push(blank(escaped));
                        }
                        i += 2;
                    }
                    '"' => {
                        out.push(' ');
                        i += 1;
                        break;
                    }
                    other => {
                        out.push(blank(other));
                        i += 1;
                    }
                }
            }
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{2014}'.
            out.push_str("   ");
            i += 3;
            while i < chars.len() && chars[i] != '\'' {
                out.push(blank(chars[i]));
                i += 1;
            }
            if i < chars.len() {
                out.push(' ');
                i += 1;
            }
        } else if c == '\'' && chars.get(i + 2).copied() == Some('\'') {
            // A plain character literal, such as '"'; anything else after a quote is a lifetime.
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// If a raw string literal (`r"`, `r#"`, `br##"`…) starts at `i` (at its `r`), its number of `#`.
fn raw_string_opening(chars: &[char], i: usize) -> Option<usize> {
    if chars[i] != 'r' {
        return None;
    }
    let before = |k: usize| i.checked_sub(k).map(|j| chars[j]);
    let starts_token = match before(1) {
        None => true,
        Some('b') => before(2).is_none_or(|c| !is_ident(c)),
        Some(c) => !is_ident(c),
    };
    if !starts_token {
        return None;
    }
    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
    (chars.get(i + 1 + hashes).copied() == Some('"')).then_some(hashes)
}

/// `code` (already without comments and literals) with each item marked `#[cfg(test)]` blanked:
/// up to its `;`, or through its braces.
fn blank_test_items(code: &str) -> String {
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i + marker.len() <= chars.len() {
        if chars[i..i + marker.len()] != marker[..] {
            i += 1;
            continue;
        }
        let mut end = i + marker.len();
        let mut depth = 0usize;
        while end < chars.len() {
            match chars[end] {
                ';' if depth == 0 => break,
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            end += 1;
        }
        let end = end.min(chars.len() - 1);
        for c in &mut chars[i..=end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end + 1;
    }
    chars.into_iter().collect()
}

/// Method calls `.name(` (spaces and line breaks allowed around the name), with the line of the
/// name.
fn method_calls(code: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = code.chars().collect();
    let mut calls = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
        }
        let is_dot = c == '.'
            && i.checked_sub(1).map(|j| chars[j]) != Some('.')
            && chars.get(i + 1).copied() != Some('.');
        if !is_dot {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut name_line = line;
        while j < chars.len() && chars[j].is_whitespace() {
            if chars[j] == '\n' {
                name_line += 1;
            }
            j += 1;
        }
        let start = j;
        if chars
            .get(j)
            .is_some_and(|&c| c.is_ascii_lowercase() || c == '_')
        {
            while j < chars.len() && is_ident(chars[j]) {
                j += 1;
            }
        }
        let name: String = chars[start..j].iter().collect();
        let mut k = j;
        while k < chars.len() && chars[k].is_whitespace() {
            k += 1;
        }
        if !name.is_empty() && chars.get(k).copied() == Some('(') {
            calls.push((name_line, name));
        }
        i += 1;
    }
    calls
}
