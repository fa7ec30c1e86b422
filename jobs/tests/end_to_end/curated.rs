//! The curated lake, end to end: `pageflow replay` and `pageflow run` write Parquet tables that
//! DuckDB (from PyPI, `scripts/duckdb/install.sh`) reads with the documented schemas, with the
//! job's counts, and from which SQL recomputes the job's `popular` windows; a `run` killed with
//! SIGKILL mid-way and restarted leaves the same rows as an uninterrupted replay, each once, with
//! the finished hours compacted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pageflow_dataflow::config::SemanticsConfig;
use pageflow_tests::job_process::JobProcess;
use serde_json::Value;

use super::support::{BIN, pageflow_ok};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The longest a run to the end of the input may take (a debug build on a busy 2-core machine).
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The repository's root (the DuckDB virtualenv and scripts are there).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs one of `scripts/duckdb/*.py` with DuckDB's virtualenv; its JSON report.
fn duckdb(script: &str, args: &[String]) -> Result<Value, String> {
    let root = repo_root();
    let python = root.join(".venv-duckdb/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} is missing: run scripts/duckdb/install.sh (scripts/test.sh does) to install DuckDB",
            python.display()
        ));
    }
    let output = Command::new(&python)
        .arg(root.join("scripts/duckdb").join(script))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{script} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{script} printed no JSON: {e}"))
}

/// The columns and DuckDB types of every table, as `docs/curated-schema.md` documents them.
fn documented_schemas() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    const TS: &str = "TIMESTAMP WITH TIME ZONE";
    let ranking = vec![
        ("feature_id", "VARCHAR"),
        ("portal", "VARCHAR"),
        ("window_start", TS),
        ("window_end", TS),
        ("rank", "INTEGER"),
        ("article_id", "VARCHAR"),
        ("views", "BIGINT"),
        ("engaged_views", "BIGINT"),
        ("score", "DOUBLE"),
    ];
    vec![
        (
            "pageviews",
            vec![
                ("event_id", "VARCHAR"),
                ("portal", "VARCHAR"),
                ("user_id", "VARCHAR"),
                ("article_id", "VARCHAR"),
                ("ts", TS),
                ("dwell_ms", "BIGINT"),
                ("scroll_pct", "INTEGER"),
                ("clicks", "BIGINT"),
                ("url", "VARCHAR"),
                ("referrer", "VARCHAR"),
                ("device", "VARCHAR"),
                ("engaged", "BOOLEAN"),
            ],
        ),
        (
            "sessions",
            vec![
                ("feature_id", "VARCHAR"),
                ("portal", "VARCHAR"),
                ("user_id", "VARCHAR"),
                ("session_id", "VARCHAR"),
                ("start_ts", TS),
                ("end_ts", TS),
                ("views", "BIGINT"),
                ("distinct_articles", "BIGINT"),
                ("dwell_ms_total", "BIGINT"),
                ("clicks_total", "BIGINT"),
                ("max_scroll_pct", "INTEGER"),
                ("articles", "VARCHAR[]"),
            ],
        ),
        ("popular", ranking.clone()),
        ("trending", ranking),
        (
            "related",
            vec![
                ("feature_id", "VARCHAR"),
                ("portal", "VARCHAR"),
                ("article_id", "VARCHAR"),
                ("window_start", TS),
                ("window_end", TS),
                ("rank", "INTEGER"),
                ("related_article_id", "VARCHAR"),
                ("score", "DOUBLE"),
                ("cooc", "BIGINT"),
            ],
        ),
    ]
}

/// Rows each table should have, from the replay's `features.jsonl` and `summary.json`.
fn job_counts(out: &Path) -> Result<Vec<(&'static str, u64)>, Box<dyn std::error::Error>> {
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    let accepted = summary["accepted"]
        .as_u64()
        .ok_or("summary.json has no accepted count")?;
    let (mut sessions, mut popular, mut trending, mut related) = (0, 0, 0, 0);
    for line in std::fs::read_to_string(out.join("features.jsonl"))?.lines() {
        let feature: Value = serde_json::from_str(line)?;
        let items = feature["items"].as_array().map_or(0, Vec::len) as u64;
        match feature["type"].as_str() {
            Some("session") => sessions += 1,
            Some("popular") => popular += items,
            Some("trending") => trending += items,
            Some("related") => related += items,
            _ => {}
        }
    }
    Ok(vec![
        ("pageviews", accepted),
        ("sessions", sessions),
        ("popular", popular),
        ("trending", trending),
        ("related", related),
    ])
}

#[test]
fn the_replay_lake_has_the_documented_schemas_the_jobs_counts_and_recomputes_popular() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    super::support::generate_closing_sessions(&input);
    let out = dir.path().join("replay");
    let (input_arg, out_arg) = (input.to_string_lossy(), out.to_string_lossy());
    pageflow_ok(
        &[
            "replay",
            "--input",
            &input_arg,
            "--out",
            &out_arg,
            "--workers",
            "2",
        ],
        &[],
    );
    let semantics = SemanticsConfig::default();
    let report = duckdb(
        "check_curated.py",
        &[
            out.join("curated").to_string_lossy().into_owned(),
            semantics.top_n.to_string(),
            semantics.slide.ms().to_string(),
            semantics.trending_window.ms().to_string(),
        ],
    )?;

    for (table, columns) in documented_schemas() {
        let got: Vec<(String, String)> = report["schemas"][table]
            .as_array()
            .ok_or(format!("no schema for {table}: {report}"))?
            .iter()
            .map(|c| {
                (
                    c[0].as_str().unwrap_or("").into(),
                    c[1].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = columns
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert_eq!(got, want, "the columns of {table}");
        for (column, logical) in report["timestamps"][table]
            .as_object()
            .into_iter()
            .flatten()
        {
            let logical = logical.as_str().unwrap_or("");
            assert!(
                logical.contains("isAdjustedToUTC=1") && logical.contains("MILLIS=MilliSeconds"),
                "{table}.{column} is {logical}, not TIMESTAMP(MILLIS, UTC)"
            );
        }
    }
    assert_eq!(
        report["versions"],
        serde_json::json!(["1"]),
        "schema version metadata"
    );

    for (table, count) in job_counts(&out)? {
        assert!(
            count > 0,
            "the replay has no {table} rows: a weak comparison"
        );
        assert_eq!(
            report["rows"][table].as_u64(),
            Some(count),
            "rows of {table}"
        );
    }

    // SQL over the pageviews gives the job's popular windows, item for item.
    assert_eq!(
        report["popular_mismatches"],
        serde_json::json!([]),
        "popular recomputed from pageviews differs from the job's"
    );
    assert_eq!(report["popular_compared"], report["rows"]["popular"]);
    assert_eq!(
        report["popular_windows"], report["pageview_windows"],
        "a popular record for every window with pageviews"
    );
    Ok(())
}

/// Waits until `found` holds (polling every few milliseconds), at most `limit`.
fn wait_for(limit: Duration, mut found: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if found() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The checkpoint ids with pre-committed files under `pending` (`_pending/w0/c<id>/…`, a file
/// fully written: not a temporary).
fn pending_ids(pending: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(pending.join("w0"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            any_file(&entry.path(), &|n| {
                n.ends_with(".parquet") && !n.starts_with(".tmp-")
            })
        })
        .filter_map(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .strip_prefix('c')?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The newest checkpoint the job's log says it committed.
fn last_committed(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .filter(|line| line.contains("checkpoint committed"))
        .filter_map(|line| {
            line.split("checkpoint=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
}

/// Whether any file under `dir` has a name for which `pick` holds.
fn any_file(dir: &Path, pick: &dyn Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                any_file(&path, pick)
            } else {
                pick(&entry.file_name().to_string_lossy())
            }
        })
}

#[test]
fn a_run_killed_twice_and_restarted_has_every_row_of_the_replay_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("events.jsonl");
    let input_arg = input.to_string_lossy().into_owned();
    // 40,000 events over 2.2 hours of event time: the first hours finish (the watermark passes
    // their end plus the session gap) while the job runs, so they get compacted.
    pageflow_ok(
        &[
            "generate", "--events", "40000", "--seed", "29", "--rate", "5", "--out", &input_arg,
        ],
        &[],
    );
    let replay = dir.path().join("replay");
    pageflow_ok(
        &[
            "replay",
            "--input",
            &input_arg,
            "--out",
            &replay.to_string_lossy(),
        ],
        &[],
    );

    let data = dir.path().join("data");
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"files\"\npaths = ['{}']\n\n\
             [sinks]\nkind = \"local\"\ndir = '{}'\narchive = false\ncurated = true\n\n\
             [serve]\nenabled = false\n\n[runtime]\nworkers = 2\n\n\
             [checkpoint]\ninterval = \"100ms\"\n",
            input.display(),
            data.display()
        ),
    )?;
    let start = || {
        JobProcess::spawn(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
        )
    };
    let lake = data.join("curated");
    let pending = lake.join("_pending");

    // Killed, once a checkpoint is committed, while a later checkpoint's files are pre-committed
    // but it is not committed yet (its files must go: the restarted run writes their rows
    // again), until that happened twice; kills that land just after the commit test the other
    // side (the commit completed at restart).
    let mut uncommitted_kills = 0;
    for attempt in 0..12 {
        let mut job = start()?;
        // After this run committed a checkpoint (so that the restart restores one).
        let caught = wait_for(RUN_LIMIT, || {
            let committed = last_committed(&job.stderr());
            committed.is_some()
                && pending_ids(&pending)
                    .last()
                    .is_some_and(|&id| Some(id) > committed)
        });
        job.kill();
        let stderr = job.stderr();
        assert!(
            caught,
            "attempt {attempt}: no pending checkpoint files while running:\n{stderr}"
        );
        let committed = last_committed(&stderr);
        if pending_ids(&pending).iter().any(|&id| Some(id) > committed) {
            uncommitted_kills += 1;
            if uncommitted_kills == 2 {
                break;
            }
        }
    }
    assert!(
        uncommitted_kills > 0,
        "no kill landed between a pre-commit and its checkpoint's commit"
    );

    let mut job = start()?;
    let status = job.wait_timeout(RUN_LIMIT);
    let stderr = job.stderr();
    if status.is_none() {
        job.kill();
    }
    assert!(
        status.is_some_and(|s| s.success()) && stderr.contains("the input has ended"),
        "the last run did not end well ({status:?}):\n{stderr}"
    );
    assert!(
        stderr.contains("restored from checkpoint"),
        "the last run did not restore:\n{stderr}"
    );
    assert!(
        !any_file(&lake, &|n| n.starts_with(".tmp-")) && !any_file(&pending, &|_| true),
        "temporaries or pending files left in {}",
        lake.display()
    );

    assert!(
        any_file(&lake, &|n| n.contains("-compacted-")),
        "no finished hour was compacted in {}",
        lake.display()
    );

    let report = duckdb(
        "compare_lakes.py",
        &[
            replay.join("curated").to_string_lossy().into_owned(),
            lake.to_string_lossy().into_owned(),
        ],
    )?;
    for table in ["pageviews", "sessions", "popular", "trending", "related"] {
        let counts = &report[table];
        assert!(
            counts["expected"].as_u64() > Some(0),
            "no {table} rows: {report}"
        );
        assert_eq!(
            (counts["missing"].as_u64(), counts["extra"].as_u64()),
            (Some(0), Some(0)),
            "{table}: rows missing or twice after the crashes: {report}"
        );
    }
    Ok(())
}
