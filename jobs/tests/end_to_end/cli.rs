//! End-to-end tests of the `pageflow` binary: generate → replay against the batch oracle, the
//! long-running job serving rankings over HTTP, and start-up configuration errors.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pageflow_connectors::files::source::is_blank_line;
use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::event::{RawRecord, SourcePosition};
use pageflow_dataflow::oracle;
use pageflow_tests::http_get;
use pageflow_tests::job_process::{FAST_WINDOWS, JobProcess, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

fn pageflow(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

/// The file's records as the file source reads them: blank lines skipped, positions by line number.
fn file_records(path: &Path) -> Vec<RawRecord> {
    let bytes = std::fs::read(path).unwrap();
    let partition = format!("file:{}", path.display());
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !is_blank_line(line))
        .map(|(index, line)| RawRecord {
            position: SourcePosition {
                partition: partition.clone(),
                position: (index + 1).to_string(),
            },
            bytes: line.strip_suffix(b"\r").unwrap_or(line).to_vec(),
            corrupt: None,
        })
        .collect()
}

#[test]
fn generate_then_replay_matches_the_oracle_with_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let input_str = input.to_string_lossy().to_string();
    let out = pageflow(&[
        "generate",
        "--events",
        "6000",
        "--seed",
        "11",
        "--invalid-share",
        "0.02",
        "--out",
        &input_str,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expected = oracle::run(&file_records(&input), &SemanticsConfig::default());
    assert!(
        expected.features.iter().any(|f| f.kind() == "related"),
        "the input exercises related lists"
    );
    assert!(
        !expected.dead_letters.is_empty(),
        "the input exercises dead letters"
    );
    let expected_features: String = expected
        .features
        .iter()
        .map(|f| f.to_json() + "\n")
        .collect();

    let mut outputs = Vec::new();
    for workers in ["1", "2"] {
        let out_dir = dir.path().join(format!("out-{workers}"));
        let out_str = out_dir.to_string_lossy().to_string();
        let out = pageflow(&[
            "replay",
            "--input",
            &input_str,
            "--out",
            &out_str,
            "--workers",
            workers,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let features = std::fs::read_to_string(out_dir.join("features.jsonl")).unwrap();
        assert!(
            features == expected_features,
            "features with {workers} workers differ from the oracle"
        );
        let letters = std::fs::read_to_string(out_dir.join("dead-letter.jsonl")).unwrap();
        assert_eq!(letters.lines().count(), expected.dead_letters.len());
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["accepted"], expected.summary.accepted);
        assert_eq!(summary["duplicates"], expected.summary.duplicates);
        assert!(summary["events_per_second"].as_f64().unwrap_or(0.0) > 0.0);
        outputs.push((features, letters, summary));
    }
    let [
        (features_1, letters_1, summary_1),
        (features_2, letters_2, summary_2),
    ] = <[_; 2]>::try_from(outputs).unwrap();
    assert_eq!(features_1, features_2, "byte-identical for 1 and 2 workers");
    assert_eq!(letters_1, letters_2, "byte-identical for 1 and 2 workers");
    // As the README says: summary.json differs only in the settings and the timing.
    let without_run_fields = |mut summary: serde_json::Value| {
        let fields = summary.as_object_mut().unwrap();
        for key in ["workers", "elapsed_ms", "events_per_second"] {
            assert!(fields.remove(key).is_some(), "summary.json has `{key}`");
        }
        summary
    };
    assert_eq!(summary_1["workers"], 1);
    assert_eq!(summary_2["workers"], 2);
    assert_eq!(without_run_fields(summary_1), without_run_fields(summary_2));
}

#[test]
fn replay_dead_letters_malformed_lines_and_counts_blank_ones() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    let good =
        r#"{"event_id":"e1","portal":"g1","user_id":"u","article_id":"a","ts":1795435200000}"#;
    std::fs::write(
        &input,
        format!("{good}\n\n   \nnot json\n{{\"event_id\":\"e2\"}}\r\n[1]\n"),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = pageflow(&[
        "replay",
        "--input",
        &input.to_string_lossy(),
        "--out",
        &out_dir.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let letters = std::fs::read_to_string(out_dir.join("dead-letter.jsonl")).unwrap();
    let reasons: Vec<String> = letters
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| format!("{}@{}", v["reason"], v["position"]))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            r#""invalid_json"@"4""#,
            r#""missing_field"@"5""#,
            r#""not_object"@"6""#
        ]
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["blank_lines"], 2);
    assert_eq!(summary["accepted"], 1);
}

/// Runs `command` and returns its exit code, killing it after two minutes (a hang is one of the
/// failures these tests look for).
fn exit_code(command: &mut Command) -> Option<i32> {
    let limit = Duration::from_secs(120);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pageflow was still running after {limit:?}");
            }
        }
    }
}

/// The writing end of a pipe whose reader has gone (`… | head` once head has exited).
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

#[test]
fn a_missing_input_is_reported_once_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let out = dir.path().join("out");
    let output = pageflow(&[
        "replay",
        "--input",
        missing.to_str().unwrap_or_default(),
        "--out",
        out.to_str().unwrap_or_default(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.jsonl"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the reason is said once: {stderr}"
    );
}

#[test]
fn replaying_a_directory_fails_at_once_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("inputs");
    std::fs::create_dir(&input).unwrap();
    let out = dir.path().join("out");
    let args = [
        "replay",
        "--input",
        input.to_str().unwrap_or_default(),
        "--out",
    ];
    let log = dir.path().join("stderr.txt");
    let log_file = std::fs::File::create(&log).unwrap();
    let refused = exit_code(Command::new(BIN).args(args).arg(&out).stderr(log_file));
    assert_eq!(refused, Some(1));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("is a directory"), "{stderr}");
    assert!(stderr.contains("source.paths"), "{stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one message, no warnings: {stderr}"
    );

    // The same with standard error closed (`… 2>&1 | head` after head has gone): the message is
    // lost, but the process exits with its error code instead of panicking (101).
    let refused = exit_code(Command::new(BIN).args(args).arg(&out).stderr(closed_pipe()));
    assert_eq!(refused, Some(1));

    // Commands that succeed succeed with their messages (stderr) or summary (stdout) unread.
    let events = dir.path().join("events.jsonl");
    let generated = exit_code(
        Command::new(BIN)
            .args(["generate", "--events", "200", "--out"])
            .arg(&events)
            .stderr(closed_pipe()),
    );
    assert_eq!(generated, Some(0));
    let replayed = exit_code(
        Command::new(BIN)
            .arg("replay")
            .arg("--input")
            .arg(&events)
            .arg("--out")
            .arg(&out)
            .stdout(closed_pipe()),
    );
    assert_eq!(replayed, Some(0));
    assert!(out.join("features.jsonl").exists());
}

#[test]
fn a_second_run_on_the_same_directory_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let run_on_dir = || {
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
            .env("PAGEFLOW__SINKS__DIR", dir.path())
            .env("RUST_LOG", "warn");
        command
    };
    let mut first = JobProcess::spawn(&mut run_on_dir()).unwrap();
    // Listening means it is past start-up, so it holds the directory.
    first.http_address(Duration::from_secs(30)).unwrap();

    let log = dir.path().join("second.txt");
    let log_file = std::fs::File::create(&log).unwrap();
    assert_eq!(exit_code(run_on_dir().stderr(log_file)), Some(1));
    let stderr = std::fs::read_to_string(&log).unwrap();
    let holder = format!("pageflow run (process {} on ", first.id());
    assert!(stderr.contains(&holder), "names the first job: {stderr}");
    assert!(stderr.contains("sinks.dir"), "says what to do: {stderr}");
    assert!(
        first.try_status().is_none(),
        "the first job runs on: {}",
        first.stderr()
    );
    first.terminate().unwrap();
    assert_eq!(
        first
            .wait_timeout(Duration::from_secs(60))
            .and_then(|s| s.code()),
        Some(0),
        "{}",
        first.stderr()
    );
}

#[test]
fn run_reports_every_configuration_problem_at_once() {
    let out = Command::new(BIN)
        .arg("run")
        .env("PAGEFLOW__SEMANTICS__TOP_N", "0")
        .env("PAGEFLOW__RUNTIME__WORKERS", "0")
        .env("PAGEFLOW__SERVE__LISTEN", "nowhere")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["top_n", "workers", "listen"] {
        assert!(stderr.contains(key), "the error names `{key}`: {stderr}");
    }
}

/// How often the test asks the job again.
const EVERY: Duration = Duration::from_millis(100);

#[test]
fn run_serves_changing_rankings_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = JobProcess::spawn(
        Command::new(BIN)
            .arg("run")
            .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
            .env(
                "PAGEFLOW__SINKS__DIR",
                dir.path().to_string_lossy().to_string(),
            )
            .env("PAGEFLOW__SOURCE__EVENTS_PER_SECOND", "3000")
            .envs(FAST_WINDOWS.iter().copied())
            .env("RUST_LOG", "warn"),
    )
    .unwrap();
    let addr = job.http_address(Duration::from_secs(30)).unwrap();

    let window_end = |body: &str| -> Option<(u64, usize)> {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        Some((
            value["window_end"].as_u64()?,
            value["items"].as_array()?.len(),
        ))
    };
    let (first, items) = poll_until(Duration::from_secs(30), EVERY, || {
        let (status, body) = http_get(&addr, "/v1/portals/g1/popular?n=5")?;
        (status == 200)
            .then(|| window_end(&body))
            .flatten()
            .filter(|(_, items)| *items > 0)
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for a non-empty popular ranking:\n{}",
            job.stderr()
        )
    });
    assert!(items <= 5, "n limits the ranking");
    // Serving rankings means the state is loaded: the job says it is ready.
    poll_until(Duration::from_secs(30), EVERY, || {
        let (status, body) = http_get(&addr, "/readyz")?;
        (status == 200 && body.contains("ready")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for /readyz to answer 200:\n{}",
            job.stderr()
        )
    });
    let later = poll_until(Duration::from_secs(30), EVERY, || {
        let (_, body) = http_get(&addr, "/v1/portals/g1/popular?n=5")?;
        window_end(&body)
            .map(|(end, _)| end)
            .filter(|end| *end > first)
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for the ranking to move to a later window:\n{}",
            job.stderr()
        )
    });
    assert!(later > first);
    // The live view previews the window still filling before it is final.
    poll_until(Duration::from_secs(30), EVERY, || {
        let (_, body) = http_get(&addr, "/v1/portals/g1/trending?n=5")?;
        let value: serde_json::Value = serde_json::from_str(&body).ok()?;
        (value["final"] == false && value["watermark"].as_u64()? < value["window_end"].as_u64()?)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for a provisional ranking:\n{}",
            job.stderr()
        )
    });
    let (status, metrics) = http_get(&addr, "/metrics").unwrap_or_else(|| panic!("metrics answer"));
    assert_eq!(status, 200);
    assert!(metrics.contains("pageflow_events_in_total"), "{metrics}");
    drop(job);
}
