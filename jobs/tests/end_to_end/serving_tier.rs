//! `pageflow serve`, the read-only serving tier, against kinesis-local: the job (AWS mode,
//! bounded by `stop_at_latest`) writes its features to the features stream; one serving task
//! follows the stream from before it exists, another starts afterwards from `trim_horizon`. Both
//! must answer `/readyz` 200 only once caught up, and serve the final rankings and related lists
//! that `pageflow replay` computes from the same pageviews, and the recommendations the job's
//! serving layer gives with every read of the input recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::Request;
use pageflow_dataflow::features::Feature;
use pageflow_metrics::Metrics;
use pageflow_serve::{App, ServingState, app_router};
use pageflow_tests::http_get;
use pageflow_tests::job_process::{JobProcess, poll_until};
use serde_json::Value;
use tower::ServiceExt;

use crate::support::{BIN, generate_closing_sessions, pageflow_ok};
const PORTALS: [&str; 3] = ["g1", "ge", "gshow"];
const LIMIT: Duration = Duration::from_secs(120);

/// The job: the portals' streams to the features stream, until every shard is read.
fn job_config(dir: &Path, endpoint: &str) -> String {
    let mut text = "[source]\nkind = \"kinesis\"\n\n[source.kinesis]\nstop_at_latest = true\ndiscovery_interval = \"1s\"\n\n".to_string();
    for portal in PORTALS {
        text += &format!(
            "[[source.kinesis.streams]]\nportal = \"{portal}\"\nstream = \"pageviews-{portal}\"\n\n"
        );
    }
    text += &format!(
        "[sinks]\nkind = \"aws\"\ndir = '{}'\narchive = false\n\n[sinks.kinesis]\nstream = \"features\"\n\n\
         [aws]\nregion = \"us-east-1\"\nkinesis_endpoint_url = \"{endpoint}\"\n\n\
         [serve]\nenabled = false\n\n[runtime]\nworkers = 1\n",
        dir.join("data").display()
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A serving task on the features stream.
fn serve_config(dir: &Path, endpoint: &str) -> String {
    let text = format!(
        "[sinks.kinesis]\nstream = \"features\"\n\n\
         [aws]\nregion = \"us-east-1\"\nkinesis_endpoint_url = \"{endpoint}\"\n\n\
         [serve]\nlisten = \"127.0.0.1:0\"\n\n\
         [serving_tier]\ndiscovery_interval = \"1s\"\npoll_interval = \"200ms\"\n"
    );
    let path = dir.join("serve.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn start_serve(config: &str, env: &[(String, String)]) -> (JobProcess, String) {
    let mut server = JobProcess::spawn(
        Command::new(BIN)
            .args(["serve", "--config", config])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().cloned()),
    )
    .unwrap();
    let addr = server.http_address(LIMIT).unwrap();
    (server, addr)
}

/// What the replay's features say each route must answer at the end.
struct Expected {
    /// `(portal, kind)` → the last final window's ranking record.
    rankings: BTreeMap<(String, String), Value>,
    /// `(portal, article)` → the items of its last related list.
    related: BTreeMap<(String, String), Value>,
}

fn expected(features: &Path) -> Expected {
    let mut rankings: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut related: BTreeMap<(String, String), (u64, Value)> = BTreeMap::new();
    for line in std::fs::read_to_string(features).unwrap().lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let portal = record["portal"].as_str().unwrap().to_string();
        let end = record["window_end"].as_u64().unwrap_or(0);
        match record["type"].as_str().unwrap() {
            kind @ ("popular" | "trending") => {
                let key = (portal, kind.to_string());
                if rankings
                    .get(&key)
                    .is_none_or(|held| held["window_end"].as_u64().unwrap() < end)
                {
                    rankings.insert(key, record);
                }
            }
            "related" => {
                let key = (portal, record["article_id"].as_str().unwrap().to_string());
                if related.get(&key).is_none_or(|(held, _)| *held <= end) {
                    related.insert(key, (end, record["items"].clone()));
                }
            }
            _ => {}
        }
    }
    Expected {
        rankings,
        related: related
            .into_iter()
            .map(|(key, (_, items))| (key, items))
            .collect(),
    }
}

/// The body of a 200 answer.
fn answer(addr: &str, path: &str) -> Option<Value> {
    let (status, body) = http_get(addr, path)?;
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// What differs between the task's answers and `expected` (empty: none).
fn differences(addr: &str, expected: &Expected, articles: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for ((portal, kind), record) in &expected.rankings {
        let path = format!("/v1/portals/{portal}/{kind}?final=true&n=100");
        let Some(body) = answer(addr, &path) else {
            problems.push(format!("{path}: no answer"));
            continue;
        };
        let same = body["window_start"] == record["window_start"]
            && body["window_end"] == record["window_end"]
            && body["watermark"] == record["window_end"]
            && body["final"] == true
            && body["items"] == record["items"];
        if !same {
            problems.push(format!("{path}: {body} (expected {record})"));
        }
    }
    for (portal, article) in articles {
        let path = format!("/v1/articles/{article}/related?portal={portal}&n=100");
        let items = answer(addr, &path).map(|body| body["items"].clone());
        let wanted = &expected.related[&(portal.clone(), article.clone())];
        if items.as_ref() != Some(wanted) {
            problems.push(format!("{path}: {items:?} (expected {wanted})"));
        }
    }
    problems
}

/// The job's own recommendations for `user` in `portal`: its serving layer with the replay's
/// final rankings and related lists and every read of the input recorded, as the job records them.
async fn job_recommendations(state: &Arc<ServingState>, portal: &str, user: &str) -> Value {
    let router = app_router(App::new(Arc::clone(state), Arc::new(Metrics::new())));
    let request = Request::get(format!(
        "/v1/users/{user}/recommendations?portal={portal}&n=20"
    ))
    .body(Body::empty())
    .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap()
}

#[test]
fn the_serving_tier_serves_what_the_features_stream_holds() {
    let local = pageflow_tests::kinesis_local::KinesisLocal::start().unwrap();
    let env = local.env();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate_closing_sessions(&input);
    let replay = dir.path().join("replay");
    pageflow_ok(
        &[
            "replay",
            "--input",
            &input.to_string_lossy(),
            "--out",
            &replay.to_string_lossy(),
        ],
        &[],
    );
    let expected = expected(&replay.join("features.jsonl"));
    assert_eq!(expected.rankings.len(), 2 * PORTALS.len());
    // The articles of every final popular ranking that have a related list.
    let articles: Vec<(String, String)> = expected
        .rankings
        .iter()
        .filter(|((_, kind), _)| kind == "popular")
        .flat_map(|((portal, _), record)| {
            record["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| {
                    (
                        portal.clone(),
                        item["article_id"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .filter(|key| expected.related.contains_key(key))
        .collect();
    assert!(
        !articles.is_empty(),
        "no popular article has a related list"
    );

    // A task started before the stream exists is not ready; it follows the stream once created.
    let serve = serve_config(dir.path(), &local.endpoint);
    let (mut early, early_addr) = start_serve(&serve, &env);
    let (status, body) = http_get(&early_addr, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_ready"), "{body}");

    let job = job_config(dir.path(), &local.endpoint);
    pageflow_ok(&["aws", "setup", "--config", &job, "--shards", "2"], &env);
    pageflow_ok(
        &[
            "aws",
            "put",
            "--config",
            &job,
            "--input",
            &input.to_string_lossy(),
        ],
        &env,
    );
    pageflow_ok(&["run", "--config", &job], &env);

    // A task started afterwards reads the stream from its trim horizon.
    let (mut late, late_addr) = start_serve(&serve, &env);
    for (name, addr, server) in [
        ("the early task", &early_addr, &mut early),
        ("the late task", &late_addr, &mut late),
    ] {
        let caught_up = poll_until(LIMIT, Duration::from_millis(200), || {
            let ready = http_get(addr, "/readyz").is_some_and(|(status, _)| status == 200);
            (ready && differences(addr, &expected, &articles).is_empty()).then_some(())
        });
        assert!(
            caught_up.is_some(),
            "{name} never served the replay's results: {:?}\n/readyz: {:?}\n{}\n{}",
            differences(addr, &expected, &articles),
            http_get(addr, "/readyz"),
            server.stderr(),
            local.output()
        );
    }

    // Recommendations: what the job's serving layer answers with every read of the input recorded
    // (the job records each pageview; the tier learns reads from closed sessions). Readers who read
    // no article twice in a portal, so that first-read order is last-read order.
    let state = Arc::new(ServingState::new());
    for line in std::fs::read_to_string(replay.join("features.jsonl"))
        .unwrap()
        .lines()
    {
        let feature: Feature = serde_json::from_str(line).unwrap();
        if !matches!(feature, Feature::Session(_)) {
            state.apply(pageflow::commands::serve::live_update(feature));
        }
    }
    let mut reads: HashMap<(String, String), Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(&input).unwrap().lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let field = |name: &str| event[name].as_str().unwrap().to_string();
        state.recent_reads().record(
            &field("portal"),
            &field("user_id"),
            &field("article_id"),
            event["ts"].as_u64().unwrap(),
        );
        reads
            .entry((field("portal"), field("user_id")))
            .or_default()
            .push(field("article_id"));
    }
    let readers: BTreeSet<(String, String)> = reads
        .iter()
        .filter(|(_, articles)| {
            articles.len() > 1 && articles.iter().collect::<BTreeSet<_>>().len() == articles.len()
        })
        .map(|(reader, _)| reader.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(20)
        .collect();
    assert!(
        readers.len() >= 5,
        "too few readers to compare: {readers:?}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut from_related = 0;
    for (portal, user) in &readers {
        let wanted = runtime.block_on(job_recommendations(&state, portal, user));
        let path = format!("/v1/users/{user}/recommendations?portal={portal}&n=20");
        for addr in [&early_addr, &late_addr] {
            let served = answer(addr, &path).unwrap();
            assert_eq!(served["items"], wanted["items"], "{path}");
            for item in served["items"].as_array().unwrap() {
                let article = item["article_id"].as_str().unwrap().to_string();
                assert!(
                    !reads[&(portal.clone(), user.clone())].contains(&article),
                    "{path} recommends {article}, already read: {served}"
                );
                from_related += usize::from(item["source"] == "related");
            }
        }
    }
    assert!(
        from_related > 0,
        "no recommendation came from a reader's reads"
    );

    for (name, server) in [("early", &mut early), ("late", &mut late)] {
        server.terminate().unwrap();
        let status = server.wait_timeout(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "the {name} task did not stop on SIGTERM ({status:?}):\n{}",
            server.stderr()
        );
    }
}
