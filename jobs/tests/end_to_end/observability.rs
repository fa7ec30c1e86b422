//! End-to-end tests of what the job tells operators by itself: the CloudWatch embedded-metric-
//! format lines on standard output (`[metrics.emf]`) and the JSON log on standard error
//! (`[log] format = "json"`).

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

#[test]
fn run_prints_emf_lines_on_stdout_and_json_logs_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let generated = Command::new(BIN)
        .args(["generate", "--events", "3000", "--seed", "5", "--out"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");

    let out = Command::new(BIN)
        .arg("run")
        .env_remove("RUST_LOG")
        .env("PAGEFLOW__SOURCE__KIND", "files")
        .env(
            "PAGEFLOW__SOURCE__PATHS",
            format!("[{:?}]", input.to_string_lossy()),
        )
        .env("PAGEFLOW__SINKS__DIR", dir.path().join("out"))
        .env("PAGEFLOW__SERVE__LISTEN", "127.0.0.1:0")
        .env("PAGEFLOW__CHECKPOINT__ENABLED", "false")
        .env("PAGEFLOW__METRICS__EMF__ENABLED", "true")
        .env("PAGEFLOW__METRICS__EMF__INTERVAL", "1s")
        .env("PAGEFLOW__METRICS__EMF__ENVIRONMENT", "e2e")
        .env("PAGEFLOW__LOG__FORMAT", "json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // Standard output: nothing but EMF lines, at least the last one at shutdown.
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(!lines.is_empty(), "no EMF line; stderr:\n{stderr}");
    let mut events_in = 0;
    let mut features = 0;
    for line in &lines {
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Pageflow", "{line}");
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([["Environment"], ["Environment", "Process"]])
        );
        assert_eq!(line["Environment"], "e2e");
        assert_eq!(line["Process"], "0");
        assert!(line["_aws"]["Timestamp"].is_u64(), "{line}");
        for definition in directive["Metrics"].as_array().unwrap() {
            let name = definition["Name"].as_str().unwrap();
            assert!(
                line[name].is_number(),
                "{name} declared without a value: {line}"
            );
        }
        events_in += line["EventsIn"].as_u64().unwrap();
        let emitted = line["FeaturesEmitted"].as_u64().unwrap();
        if emitted > 0 {
            assert!(line["EventToFeatureP99"].is_number(), "{line}");
        }
        features += emitted;
    }
    // The counts are the intervals' shares: together, every record read.
    assert_eq!(events_in, 3000, "{stdout}");
    assert!(features > 0, "{stdout}");

    // Standard error: the log as JSON objects (the messages for a person stay plain text).
    let logged: Vec<Value> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(!logged.is_empty(), "no JSON log line:\n{stderr}");
    for event in &logged {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event[field].is_string(), "no {field}: {event}");
        }
    }
    assert!(
        logged
            .iter()
            .any(|e| e["level"] == "INFO" && e["message"].as_str().unwrap().contains("serving")),
        "{stderr}"
    );
    assert!(
        stderr.contains("pageflow: the input has ended"),
        "say! lines unchanged: {stderr}"
    );
}
