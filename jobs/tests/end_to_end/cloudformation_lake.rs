//! The lake in the CloudFormation template (`deploy/cloudformation/pageflow.yaml`, issue 15): the
//! Glue database and the partition-projected tables over the curated Parquet layer and the raw
//! archive, the Athena workgroup, and the role Redshift Spectrum assumes.
//!
//! moto's CloudFormation does not model `AWS::Glue::*` or `AWS::Athena::WorkGroup`: it accepts
//! them and creates nothing (checked below, so that this test says when that changes). So, as the
//! stack test does for the Firehose delivery streams, this test reads their declarations out of
//! the template (a small reader for the template's own layout, not a YAML parser), resolves the few
//! intrinsic functions they use with the deployed stack's values, creates them through moto's Glue
//! and Athena APIs as CloudFormation would, and checks what those APIs answer against the curated
//! schema, version 1, written out here a second time from the issue (`CURATED_V1`), so that the
//! template cannot drift from the schema unnoticed: every column and its type, `portal` and `date`
//! (and the raw table's `hour`) as projected partitions, the location templates under the stack's
//! bucket; the workgroup's enforced, KMS-encrypted result location and its scan cutoff. moto does
//! model the Spectrum role (IAM): it is read back through IAM.
//! What no local API can check (that Athena and Spectrum read the files) is for the first
//! deployment to an AWS account (deploy/README.md, "The lake for analysts").

use aws_sdk_cloudformation::types::Parameter;
use pageflow_tests::aws::{MotoServer, dummy_sigv4_authorization, http_request};
use serde_json::{Value, json};

use crate::cloudformation::{PORTALS, TEMPLATE, cloudformation_client, deploy_with, json_call};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An environment with a '-': the database name must turn it into '_'.
const ENVIRONMENT: &str = "lake-it";
const DATABASE: &str = "pageflow_lake_it";
const LAKE_START_DATE: &str = "2026-11-01";
const SCAN_CUTOFF: &str = "50000000000";

/// The curated schema, version 1 (issue 15; `docs/curated-schema.md`), as Arrow types: each
/// table's columns in order.
const CURATED_V1: [(&str, &[(&str, &str)]); 5] = [
    (
        "pageviews",
        &[
            ("event_id", "Utf8"),
            ("portal", "Utf8"),
            ("user_id", "Utf8"),
            ("article_id", "Utf8"),
            ("ts", "Timestamp(ms, UTC)"),
            ("dwell_ms", "Int64"),
            ("scroll_pct", "Int32"),
            ("clicks", "Int64"),
            ("url", "Utf8"),
            ("referrer", "Utf8"),
            ("device", "Utf8"),
            ("engaged", "Boolean"),
        ],
    ),
    (
        "sessions",
        &[
            ("feature_id", "Utf8"),
            ("portal", "Utf8"),
            ("user_id", "Utf8"),
            ("session_id", "Utf8"),
            ("start_ts", "Timestamp(ms, UTC)"),
            ("end_ts", "Timestamp(ms, UTC)"),
            ("views", "Int64"),
            ("distinct_articles", "Int64"),
            ("dwell_ms_total", "Int64"),
            ("clicks_total", "Int64"),
            ("max_scroll_pct", "Int32"),
            ("articles", "List<Utf8>"),
        ],
    ),
    ("popular", RANKING_COLUMNS),
    ("trending", RANKING_COLUMNS),
    (
        "related",
        &[
            ("feature_id", "Utf8"),
            ("portal", "Utf8"),
            ("article_id", "Utf8"),
            ("window_start", "Timestamp(ms, UTC)"),
            ("window_end", "Timestamp(ms, UTC)"),
            ("rank", "Int32"),
            ("related_article_id", "Utf8"),
            ("score", "Float64"),
            ("cooc", "Int64"),
        ],
    ),
];

const RANKING_COLUMNS: &[(&str, &str)] = &[
    ("feature_id", "Utf8"),
    ("portal", "Utf8"),
    ("window_start", "Timestamp(ms, UTC)"),
    ("window_end", "Timestamp(ms, UTC)"),
    ("rank", "Int32"),
    ("article_id", "Utf8"),
    ("views", "Int64"),
    ("engaged_views", "Int64"),
    ("score", "Float64"),
];

/// The Hive type (Glue, Athena, Spectrum) that reads an Arrow type of the curated files.
fn hive_type(arrow: &str) -> &'static str {
    match arrow {
        "Utf8" => "string",
        "Timestamp(ms, UTC)" => "timestamp",
        "Int64" => "bigint",
        "Int32" => "int",
        "Boolean" => "boolean",
        "Float64" => "double",
        "List<Utf8>" => "array<string>",
        other => panic!("no Hive type for the Arrow type {other}: add it here"),
    }
}

// ------------------------------------------------------------ reading the template's layout

/// The body of the resource `logical_id`: the lines after its `  Name:` line that are indented
/// deeper than it.
fn resource(logical_id: &str) -> Vec<&'static str> {
    let header = format!("  {logical_id}:");
    let mut lines = TEMPLATE.lines().skip_while(|line| *line != header);
    assert!(
        lines.next().is_some(),
        "the template declares no resource {logical_id}"
    );
    lines
        .take_while(|line| line.is_empty() || line.starts_with("   "))
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines of the block under the first `key:` of `lines` (deeper than that key).
fn block(lines: &[&'static str], key: &str) -> Vec<&'static str> {
    let wanted = format!("{key}:");
    let at = lines
        .iter()
        .position(|line| line.trim() == wanted)
        .unwrap_or_else(|| panic!("no block {key}: in {lines:#?}"));
    let depth = indent(lines[at]);
    lines[at + 1..]
        .iter()
        .take_while(|line| indent(line) > depth)
        .copied()
        .collect()
}

/// The `key: value` entries of a block's first level (values as written).
fn entries(lines: &[&'static str]) -> Vec<(String, String)> {
    let depth = lines.first().map_or(0, |line| indent(line));
    lines
        .iter()
        .filter(|line| indent(line) == depth && !line.trim_start().starts_with('-'))
        .filter_map(|line| {
            let (key, value) = line.trim().split_once(": ")?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

/// The value of `key` on a block's first level.
fn scalar(lines: &[&'static str], key: &str) -> String {
    entries(lines)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key}: in {lines:#?}"))
}

/// `{ A: x, B: y }` as pairs.
fn flow_map(text: &str) -> Vec<(String, String)> {
    let inner = text
        .trim()
        .trim_start_matches('-')
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not a flow mapping: {text}"));
    inner
        .split(", ")
        .map(|pair| {
            let (key, value) = pair
                .trim()
                .split_once(": ")
                .unwrap_or_else(|| panic!("not key: value: {pair}"));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// `- { Name: x, Type: y }` items of a block, as (x, y).
fn name_type_items(lines: &[&'static str]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|line| {
            let pairs = flow_map(line);
            let get = |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("no {k} in {line}"))
            };
            (get("Name"), get("Type"))
        })
        .collect()
}

/// The deployed stack's values of what the lake's declarations refer to.
struct Stack {
    bucket: String,
    key_arn: String,
}

/// A value as CloudFormation would resolve it in this stack: the intrinsic functions the lake's
/// declarations use, nothing more (another one fails the test: add it here).
fn resolve(value: &str, stack: &Stack) -> String {
    let unquoted = |text: &str| text.trim().trim_matches('"').to_string();
    let database_name = r#"!Join ["_", ["pageflow", !Join ["_", !Split ["-", !Ref Environment]]]]"#;
    match value.trim() {
        r#"!Join [",", !Ref Portals]"# => PORTALS.to_string(),
        "!Ref AthenaBytesScannedCutoffPerQuery" => SCAN_CUTOFF.to_string(),
        "!GetAtt DataKey.Arn" => stack.key_arn.clone(),
        "!Ref AWS::AccountId" => "123456789012".to_string(),
        name if name == database_name => DATABASE.to_string(),
        sub if sub.starts_with("!Sub ") => unquoted(&sub["!Sub ".len()..])
            .replace("${LakeStartDate}", LAKE_START_DATE)
            .replace("${ArchiveBucket}", &stack.bucket)
            .replace("${Environment}", ENVIRONMENT)
            .replace("${!", "${"),
        other if other.starts_with('!') => {
            panic!("the test cannot resolve {other}: add it to resolve()")
        }
        other => unquoted(other),
    }
}

/// A `Parameters` block (or flow mapping) as a JSON object of resolved strings.
fn parameters(pairs: Vec<(String, String)>, stack: &Stack) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(key, value)| (key, Value::String(resolve(&value, stack))))
            .collect(),
    )
}

/// The `TableInput` of a Glue table resource, resolved, as Glue's `CreateTable` takes it.
fn table_input(logical_id: &str, stack: &Stack) -> (String, Value) {
    let body = resource(logical_id);
    assert_eq!(
        scalar(&body, "Type"),
        "AWS::Glue::Table",
        "{logical_id} is a Glue table"
    );
    let properties = block(&body, "Properties");
    let database = resolve(&scalar(&properties, "DatabaseName"), stack);
    let input = block(&properties, "TableInput");
    let storage = block(&input, "StorageDescriptor");
    let serde = block(&storage, "SerdeInfo");
    let columns = |items: Vec<(String, String)>| {
        items
            .into_iter()
            .map(|(name, ty)| json!({ "Name": name, "Type": ty }))
            .collect::<Vec<_>>()
    };
    let table = json!({
        "Name": scalar(&input, "Name"),
        "TableType": scalar(&input, "TableType"),
        "Parameters": parameters(entries(&block(&input, "Parameters")), stack),
        "PartitionKeys": columns(name_type_items(&block(&input, "PartitionKeys"))),
        "StorageDescriptor": {
            "Location": resolve(&scalar(&storage, "Location"), stack),
            "InputFormat": scalar(&storage, "InputFormat"),
            "OutputFormat": scalar(&storage, "OutputFormat"),
            "Columns": columns(name_type_items(&block(&storage, "Columns"))),
            "SerdeInfo": {
                "SerializationLibrary": scalar(&serde, "SerializationLibrary"),
                "Parameters": parameters(flow_map(&scalar(&serde, "Parameters")), stack),
            },
        },
    });
    (database, table)
}

/// The `Configuration` of the Athena workgroup resource, resolved, as `CreateWorkGroup` takes it.
fn work_group(stack: &Stack) -> (String, Value) {
    let body = resource("AthenaWorkGroup");
    assert_eq!(scalar(&body, "Type"), "AWS::Athena::WorkGroup");
    let properties = block(&body, "Properties");
    let configuration = block(&properties, "WorkGroupConfiguration");
    let results = block(&configuration, "ResultConfiguration");
    let boolean = |key: &str| scalar(&configuration, key) == "true";
    let encryption = parameters(
        flow_map(&scalar(&results, "EncryptionConfiguration")),
        stack,
    );
    let cutoff: i64 = resolve(&scalar(&configuration, "BytesScannedCutoffPerQuery"), stack)
        .parse()
        .expect("a number of bytes");
    (
        resolve(&scalar(&properties, "Name"), stack),
        json!({
            "EnforceWorkGroupConfiguration": boolean("EnforceWorkGroupConfiguration"),
            "PublishCloudWatchMetricsEnabled": boolean("PublishCloudWatchMetricsEnabled"),
            "BytesScannedCutoffPerQuery": cutoff,
            "ResultConfiguration": {
                "OutputLocation": resolve(&scalar(&results, "OutputLocation"), stack),
                "EncryptionConfiguration": encryption,
            },
        }),
    )
}

// ------------------------------------------------------------ the test

/// The Glue tables the template declares: the five curated ones and the raw archive's.
const GLUE_TABLES: [&str; 6] = [
    "PageviewsTable",
    "SessionsTable",
    "PopularTable",
    "TrendingTable",
    "RelatedTable",
    "RawPageviewsTable",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_is_catalogued_with_projected_partitions_and_an_enforced_workgroup() -> TestResult
{
    let moto = MotoServer::start()?;
    let cloudformation = cloudformation_client(&moto.endpoint);
    let lake_parameters = [
        ("LakeStartDate", LAKE_START_DATE),
        ("AthenaBytesScannedCutoffPerQuery", SCAN_CUTOFF),
    ]
    .map(|(key, value)| {
        Parameter::builder()
            .parameter_key(key)
            .parameter_value(value)
            .build()
    });
    let outputs = deploy_with(
        &moto,
        &cloudformation,
        "pageflow-lake",
        ENVIRONMENT,
        "1",
        &lake_parameters,
    )
    .await?;
    let output = |key: &str| {
        outputs
            .get(key)
            .cloned()
            .ok_or_else(|| format!("the stack has no output {key}: {outputs:?}"))
    };
    let bucket = output("ArchiveBucket")?;
    assert_eq!(output("LakeDatabase")?, DATABASE);
    assert_eq!(
        output("AthenaWorkGroup")?,
        format!("pageflow-{ENVIRONMENT}")
    );
    assert_eq!(
        output("CuratedLocation")?,
        format!("s3://{bucket}/curated/")
    );
    let results_location = format!("s3://{bucket}/athena-results/");
    assert_eq!(output("AthenaResultsLocation")?, results_location);
    let stack = Stack {
        bucket: bucket.clone(),
        key_arn: output("DataKeyArn")?,
    };

    // moto creates the IAM resources of the lake; the Glue and Athena ones it lists without a
    // name and does not create (Glue has no database): they are created below.
    let resources = cloudformation
        .list_stack_resources()
        .stack_name("pageflow-lake")
        .send()
        .await?;
    let listed: Vec<&str> = resources
        .stack_resource_summaries()
        .iter()
        .filter_map(|r| r.logical_resource_id())
        .collect();
    for logical_id in ["SpectrumRole", "LakeAnalystPolicy"] {
        assert!(
            listed.contains(&logical_id),
            "the stack lists {logical_id}: {listed:?}"
        );
    }
    let databases = json_call(&moto, "glue", "AWSGlue.GetDatabases", &json!({}))?;
    assert_eq!(
        databases["DatabaseList"],
        json!([]),
        "moto does not create Glue databases from a template; if it does now, drop the creation below"
    );

    // Created as the template declares them.
    json_call(
        &moto,
        "glue",
        "AWSGlue.CreateDatabase",
        &json!({ "DatabaseInput": { "Name": DATABASE } }),
    )?;
    for logical_id in GLUE_TABLES {
        let (database, input) = table_input(logical_id, &stack);
        assert_eq!(database, DATABASE, "{logical_id}'s database");
        json_call(
            &moto,
            "glue",
            "AWSGlue.CreateTable",
            &json!({ "DatabaseName": database, "TableInput": input }),
        )?;
    }
    let (name, configuration) = work_group(&stack);
    json_call(
        &moto,
        "athena",
        "AmazonAthena.CreateWorkGroup",
        &json!({ "Name": name, "Configuration": configuration }),
    )?;

    // The curated tables: schema v1 column for column (`portal` is the partition key, not a data
    // column), projected `portal` (the stack's portals) and `date` (from LakeStartDate to NOW),
    // Parquet, under curated/<table>/ of the stack's bucket.
    let table = |name: &str| -> Result<Value, Box<dyn std::error::Error>> {
        let answer = json_call(
            &moto,
            "glue",
            "AWSGlue.GetTable",
            &json!({ "DatabaseName": DATABASE, "Name": name }),
        )?;
        Ok(answer["Table"].clone())
    };
    let pairs = |columns: &Value| -> Vec<(String, String)> {
        columns
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["Name"].as_str().unwrap_or_default().to_string(),
                    c["Type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let owned = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    for (name, schema) in CURATED_V1 {
        let found = table(name)?;
        let expected_columns: Vec<(&str, &str)> = schema
            .iter()
            .filter(|(column, _)| *column != "portal")
            .map(|(column, arrow)| (*column, hive_type(arrow)))
            .collect();
        assert_eq!(
            pairs(&found["StorageDescriptor"]["Columns"]),
            owned(&expected_columns),
            "{name}: the columns of curated schema v1"
        );
        assert_eq!(
            pairs(&found["PartitionKeys"]),
            owned(&[("portal", "string"), ("date", "string")]),
            "{name}: partitioned by portal and date"
        );
        let parameters = &found["Parameters"];
        for (key, value) in [
            ("projection.enabled", "true".to_string()),
            ("projection.portal.type", "enum".to_string()),
            ("projection.portal.values", PORTALS.to_string()),
            ("projection.date.type", "date".to_string()),
            ("projection.date.format", "yyyy-MM-dd".to_string()),
            ("projection.date.range", format!("{LAKE_START_DATE},NOW")),
            (
                "storage.location.template",
                format!("s3://{bucket}/curated/{name}/portal=${{portal}}/date=${{date}}/"),
            ),
            ("pageflow.schema_version", "1".to_string()),
        ] {
            assert_eq!(parameters[key], json!(value), "{name}: {key}");
        }
        assert_eq!(
            found["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"],
            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
            "{name} is Parquet"
        );
        assert_eq!(
            found["StorageDescriptor"]["Location"],
            json!(format!("s3://{bucket}/curated/{name}/"))
        );
    }

    // The raw archive: JSON lines (GZIP) under raw/portal=/date=/hour=, hours projected too.
    let raw = table("raw_pageviews")?;
    assert_eq!(
        pairs(&raw["PartitionKeys"]),
        owned(&[("portal", "string"), ("date", "string"), ("hour", "string")])
    );
    let raw_columns: Vec<String> = pairs(&raw["StorageDescriptor"]["Columns"])
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for column in [
        "event_id",
        "user_id",
        "article_id",
        "ts",
        "dwell_ms",
        "scroll_pct",
    ] {
        assert!(raw_columns.iter().any(|c| c == column), "raw has {column}");
    }
    for (key, value) in [
        ("projection.enabled", "true".to_string()),
        ("projection.portal.values", PORTALS.to_string()),
        ("projection.date.range", format!("{LAKE_START_DATE},NOW")),
        ("projection.hour.type", "integer".to_string()),
        ("projection.hour.range", "0,23".to_string()),
        ("projection.hour.digits", "2".to_string()),
        (
            "storage.location.template",
            format!("s3://{bucket}/raw/portal=${{portal}}/date=${{date}}/hour=${{hour}}/"),
        ),
    ] {
        assert_eq!(raw["Parameters"][key], json!(value), "raw_pageviews: {key}");
    }
    assert_eq!(
        raw["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"],
        "org.openx.data.jsonserde.JsonSerDe"
    );

    // The workgroup: enforced, results under athena-results/ with the stack's key, the cutoff.
    let described = json_call(
        &moto,
        "athena",
        "AmazonAthena.GetWorkGroup",
        &json!({ "WorkGroup": format!("pageflow-{ENVIRONMENT}") }),
    )?;
    let configuration = &described["WorkGroup"]["Configuration"];
    assert_eq!(configuration["EnforceWorkGroupConfiguration"], true);
    assert_eq!(configuration["PublishCloudWatchMetricsEnabled"], true);
    assert_eq!(
        configuration["BytesScannedCutoffPerQuery"].to_string(),
        SCAN_CUTOFF
    );
    let results = &configuration["ResultConfiguration"];
    assert_eq!(results["OutputLocation"], json!(results_location));
    assert_eq!(
        results["EncryptionConfiguration"]["EncryptionOption"],
        "SSE_KMS"
    );
    assert_eq!(
        results["EncryptionConfiguration"]["KmsKey"],
        json!(stack.key_arn)
    );

    // The Spectrum role (moto models IAM): its policy reads curated/ and the lake's catalog only.
    let spectrum_role = output("SpectrumRoleArn")?;
    let role_name = spectrum_role
        .rsplit('/')
        .next()
        .ok_or("a role ARN ends with its name")?;
    let authorization = dummy_sigv4_authorization("iam");
    let answer = http_request(
        moto.port(),
        "POST",
        "/",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &authorization),
        ],
        format!(
            "Action=GetRolePolicy&Version=2010-05-08&RoleName={role_name}&PolicyName=pageflow-lake-read"
        )
        .as_bytes(),
    )?;
    let policy = answer.text().replace("%2F", "/").replace("%2A", "*");
    assert_eq!(answer.status, 200, "GetRolePolicy {role_name}: {policy}");
    for needle in [
        format!("table/{DATABASE}/*"),
        "/curated/*".to_string(),
        "s3:GetObject".to_string(),
    ] {
        assert!(
            policy.contains(&needle),
            "{needle} in the Spectrum role's policy: {policy}"
        );
    }
    assert!(
        !policy.contains("/raw/") && !policy.contains("s3:PutObject"),
        "the Spectrum role reads curated/ only: {policy}"
    );
    Ok(())
}
