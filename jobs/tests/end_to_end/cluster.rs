//! Several `pageflow` processes as one timely dataflow, on loopback (issue 12).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pageflow::commands::bench_cluster::records_read;
use pageflow_tests::job_process::{JobProcess, poll_until};

use crate::support::{BIN, generate_closing_sessions, pageflow_ok};
/// How long a replay of the test input may take, the cluster's forming included.
const LIMIT: Duration = Duration::from_secs(120);

/// Loopback addresses with ports the OS handed out (released again for the processes to bind).
fn free_addresses(n: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

/// Waits for `child` to exit; its status code, or a failure after `LIMIT`.
fn wait(child: &mut Child, what: &str) -> i32 {
    let status = poll_until(LIMIT, Duration::from_millis(50), || {
        child.try_wait().unwrap()
    });
    match status {
        Some(status) => status.code().unwrap_or(-1),
        None => {
            let _ = child.kill();
            panic!("{what} did not end within {LIMIT:?}");
        }
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
    }
    text
}

/// The lines of `path`, sorted (a multiset to compare).
fn sorted_lines(paths: &[PathBuf]) -> Vec<String> {
    let mut lines: Vec<String> = paths
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

fn replay_one_process(input: &Path, out: &Path) {
    let output = Command::new(BIN)
        .args(["replay", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts process `process` of a replay by `addresses.len()` processes of `threads` workers.
fn start_replay_process(
    input: &Path,
    out: &Path,
    addresses: &[String],
    process: usize,
    threads: usize,
) -> Child {
    Command::new(BIN)
        .args(["replay", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(["--workers", &threads.to_string()])
        .args(["--addresses", &addresses.join(",")])
        .args(["--process", &process.to_string()])
        .env("PAGEFLOW__CLUSTER__CONNECT_TIMEOUT", "\"60s\"")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_replay_by_several_processes_equals_the_one_process_replay() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let generated = Command::new(BIN)
        .args(["generate", "--events", "20000", "--seed", "7"])
        .args(["--invalid-share", "0.02", "--out"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(generated.status.success());
    let single = dir.path().join("single");
    replay_one_process(&input, &single);
    let expected_features = sorted_lines(&[single.join("features.jsonl")]);
    let expected_dead = sorted_lines(&[single.join("dead-letter.jsonl")]);
    assert!(expected_features.len() > 100 && !expected_dead.is_empty());

    for (processes, threads) in [(2, 1), (2, 2), (3, 1)] {
        let out = dir.path().join(format!("cluster-{processes}x{threads}"));
        let addresses = free_addresses(processes);
        let mut children: Vec<Child> = (0..processes)
            .map(|p| start_replay_process(&input, &out, &addresses, p, threads))
            .collect();
        for (p, child) in children.iter_mut().enumerate() {
            let code = wait(child, &format!("process {p} of {processes}x{threads}"));
            assert_eq!(
                code,
                0,
                "process {p} of {processes}x{threads}: {}",
                stderr_of(child)
            );
        }
        let part = |name: &str| -> Vec<PathBuf> {
            (0..processes)
                .map(|p| out.join(format!("process-{p}")).join(name))
                .collect()
        };
        let features = sorted_lines(&part("features.jsonl"));
        assert_eq!(
            features.len(),
            expected_features.len(),
            "{processes}x{threads}: feature count"
        );
        assert!(
            features == expected_features,
            "{processes}x{threads}: the processes' features differ from the one-process replay"
        );
        assert_eq!(
            sorted_lines(&part("dead-letter.jsonl")),
            expected_dead,
            "{processes}x{threads}: dead letters"
        );
        // The work was shared: more than one process emitted features.
        let emitting = part("features.jsonl")
            .iter()
            .filter(|path| {
                std::fs::metadata(path)
                    .map(|m| m.len() > 0)
                    .unwrap_or(false)
            })
            .count();
        assert!(
            emitting > 1,
            "{processes}x{threads}: only {emitting} process emitted features"
        );
    }
}

#[test]
fn a_peer_that_never_starts_stops_the_others_naming_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let addresses = free_addresses(2);
    let mut child = Command::new(BIN)
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["--addresses", &addresses.join(","), "--process", "1"])
        .env("PAGEFLOW__CLUSTER__CONNECT_TIMEOUT", "\"1s\"")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait(&mut child, "the lone process");
    let stderr = stderr_of(&mut child);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains(&addresses[0]), "{stderr}");
    assert!(stderr.contains("does not answer"), "{stderr}");
}

#[test]
fn a_killed_process_makes_the_others_exit_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let generated = Command::new(BIN)
        .args(["generate", "--events", "300000", "--seed", "3", "--out"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(generated.status.success());
    let addresses = free_addresses(2);
    let start = |process: usize| {
        JobProcess::spawn(
            Command::new(BIN)
                .args(["replay", "--input"])
                .arg(&input)
                .arg("--out")
                .arg(dir.path().join("out"))
                .args(["--addresses", &addresses.join(",")])
                .args(["--process", &process.to_string()])
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
        )
        .unwrap()
    };
    let mut first = start(0);
    let mut second = start(1);
    assert!(
        first.wait_for_stderr("cluster formed", LIMIT),
        "{}",
        first.stderr()
    );
    second.kill();
    let Some(status) = first.wait_timeout(Duration::from_secs(10)) else {
        first.kill();
        panic!(
            "process 0 did not exit within 10 s of losing process 1:\n{}",
            first.stderr()
        );
    };
    let stderr = first.stderr();
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("lost process 1"), "{stderr}");
    assert!(stderr.contains(&addresses[1]), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// `pageflow run` as a cluster.

/// Pageviews of the run tests' input: enough for a debug build to be stopped several times.
const RUN_EVENTS: &str = "200000";

/// Generates the run tests' input into `dir` and replays it; the input and the replay's sorted
/// feature lines.
fn run_input(dir: &Path, seed: u64) -> (PathBuf, Vec<String>) {
    let input = dir.join("events.jsonl");
    let generated = Command::new(BIN)
        .args([
            "generate",
            "--events",
            RUN_EVENTS,
            "--seed",
            &seed.to_string(),
        ])
        .arg("--out")
        .arg(&input)
        .output()
        .unwrap();
    assert!(generated.status.success());
    let single = dir.join("replay");
    replay_one_process(&input, &single);
    (input, sorted_lines(&[single.join("features.jsonl")]))
}

/// Writes the configuration of a files job over `input` with `threads` workers per process,
/// results and checkpoints under `data`; its path.
fn run_config(dir: &Path, name: &str, input: &Path, data: &Path, threads: usize) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[source]\nkind = \"files\"\npaths = ['{}']\n\n\
         [sinks]\nkind = \"local\"\ndir = '{}'\narchive = false\n\n\
         [serve]\nenabled = false\n\n\
         [runtime]\nworkers = {threads}\n\n\
         [checkpoint]\ninterval = \"100ms\"\n",
        input.display(),
        data.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts every process of a job of `processes` processes (one process: no `[cluster]`).
fn start_run(config: &Path, processes: usize) -> Vec<JobProcess> {
    let addresses = free_addresses(processes);
    (0..processes)
        .map(|process| {
            let mut command = Command::new(BIN);
            command
                .args(["run", "--config"])
                .arg(config)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1");
            if processes > 1 {
                let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
                command
                    .env(
                        "PAGEFLOW__CLUSTER__ADDRESSES",
                        format!("[{}]", list.join(",")),
                    )
                    .args(["--process", &process.to_string()]);
            }
            JobProcess::spawn(&mut command).unwrap()
        })
        .collect()
}

/// Every feature line the job wrote under `data` (one process's and every cluster process's
/// files): the distinct lines, sorted, and the number of duplicates dropped.
fn all_features(data: &Path) -> (Vec<String>, usize) {
    let mut text = std::fs::read_to_string(data.join("features.jsonl")).unwrap_or_default();
    for entry in std::fs::read_dir(data).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("process-") {
            text +=
                &std::fs::read_to_string(entry.path().join("features.jsonl")).unwrap_or_default();
        }
    }
    crate::checkpoints::distinct_features(&text).unwrap()
}

/// Waits until every process of `job` has exited; their exit codes and standard errors.
fn wait_all(job: &mut [JobProcess], what: &str) -> Vec<(i32, String)> {
    job.iter_mut()
        .enumerate()
        .map(|(p, process)| match process.wait_timeout(LIMIT) {
            Some(status) => (status.code().unwrap_or(-1), process.stderr()),
            None => {
                process.kill();
                panic!(
                    "{what}: process {p} did not end within {LIMIT:?}:\n{}",
                    process.stderr()
                );
            }
        })
        .collect()
}

/// The id in "stopped after checkpoint N" (process 0's last words after a graceful stop).
fn stopped_after(stderr: &str) -> Option<u64> {
    let rest = stderr.split("stopped after checkpoint ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A job stopped with SIGTERM at 1 × 2, restarted as 2 × 1, stopped again, restarted as 3 × 2 and
/// stopped, then run to its end as 1 × 1 (processes × workers): each start restores the last
/// final checkpoint onto its shape, a SIGTERM to any one process stops them all after one final
/// checkpoint, and every feature is written exactly once, equal to the one-process replay.
#[test]
fn a_run_rescaled_across_processes_writes_every_feature_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (input, expected) = run_input(dir.path(), 31);
    let data = dir.path().join("data");
    let mut last: Option<u64> = None;
    for (phase, (processes, threads, stop)) in
        [(1, 2, true), (2, 1, true), (3, 2, true), (1, 1, false)]
            .into_iter()
            .enumerate()
    {
        let what = format!("phase {phase} ({processes} × {threads})");
        let config = run_config(
            dir.path(),
            &format!("phase-{phase}"),
            &input,
            &data,
            threads,
        );
        let mut job = start_run(&config, processes);
        if let Some(id) = last {
            for (p, process) in job.iter_mut().enumerate() {
                assert!(
                    process.wait_for_stderr(&format!("restored from checkpoint {id};"), LIMIT),
                    "{what}: process {p} did not restore checkpoint {id}:\n{}",
                    process.stderr()
                );
            }
        }
        if stop {
            // A SIGTERM to the last process only, as soon as the cluster runs: the final
            // checkpoint then comes long before the input's end, however fast the machine.
            let last = &mut job[processes - 1];
            assert!(
                last.wait_for_stderr("pageflow is running", LIMIT),
                "{what}: the job did not start:\n{}",
                last.stderr()
            );
            last.terminate().unwrap();
        }
        let ended = wait_all(&mut job, &what);
        for (p, (code, stderr)) in ended.iter().enumerate() {
            assert_eq!(*code, 0, "{what}: process {p}:\n{stderr}");
            assert!(
                !stop || !stderr.contains("the input has ended"),
                "{what}: the input ended before the stop; make RUN_EVENTS larger"
            );
        }
        if stop {
            let id = stopped_after(&ended[0].1)
                .unwrap_or_else(|| panic!("{what}: no final checkpoint:\n{}", ended[0].1));
            for (p, (_, stderr)) in ended.iter().enumerate().skip(1) {
                assert!(
                    stderr.contains(&format!("part of checkpoint {id} ")),
                    "{what}: process {p} did not write its part of {id}:\n{stderr}"
                );
            }
            assert!(last.is_none_or(|before| id > before), "{what}: {id}");
            last = Some(id);
        }
    }
    let (features, duplicates) = all_features(&data);
    assert_eq!(duplicates, 0, "graceful stops write nothing twice");
    crate::checkpoints::assert_same_features(&features, &expected, "after three rescales");
    // Each cluster process wrote its own files.
    for p in 0..3 {
        assert!(data.join(format!("process-{p}/features.jsonl")).exists());
    }
}

/// `kill -9` of one process of a running cluster: the other exits promptly with 75 naming it;
/// restarted, both resume from the last committed checkpoint, and the features, duplicates
/// dropped by `feature_id`, equal the one-process replay.
#[test]
fn a_killed_run_process_stops_the_cluster_and_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (input, expected) = run_input(dir.path(), 37);
    let data = dir.path().join("data");
    let config = run_config(dir.path(), "job", &input, &data, 1);
    let mut job = start_run(&config, 2);
    assert!(
        job[0].wait_for_stderr("checkpoint committed", LIMIT),
        "no checkpoint:\n{}",
        job[0].stderr()
    );
    job[1].kill();
    let Some(status) = job[0].wait_timeout(Duration::from_secs(10)) else {
        job[0].kill();
        panic!(
            "process 0 did not exit within 10 s of losing process 1:\n{}",
            job[0].stderr()
        );
    };
    let stderr = job[0].stderr();
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("lost process 1"), "{stderr}");

    let mut job = start_run(&config, 2);
    let ended = wait_all(&mut job, "the restart");
    for (p, (code, stderr)) in ended.iter().enumerate() {
        assert_eq!(*code, 0, "the restart, process {p}:\n{stderr}");
        assert!(stderr.contains("restored from checkpoint"), "{stderr}");
    }
    let (features, _duplicates) = all_features(&data);
    crate::checkpoints::assert_same_features(&features, &expected, "after kill -9 and a restart");
}

/// The portals of the Kinesis test, one stream each.
const KINESIS_PORTALS: [&str; 3] = ["g1", "ge", "gshow"];

/// Reshards every portal's stream from 2 to 4 shards and waits until each is active again.
fn reshard_every_stream(endpoint: &str) {
    let client = pageflow_tests::clients::kinesis_client(
        endpoint,
        aws_sdk_kinesis::config::retry::RetryConfig::standard(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for portal in KINESIS_PORTALS {
            let stream = format!("pageviews-{portal}");
            client
                .update_shard_count()
                .stream_name(&stream)
                .target_shard_count(4)
                .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
                .send()
                .await
                .unwrap();
            let started = std::time::Instant::now();
            loop {
                let summary = client
                    .describe_stream_summary()
                    .stream_name(&stream)
                    .send()
                    .await
                    .unwrap();
                let active = summary.stream_description_summary.is_some_and(|s| {
                    s.stream_status == aws_sdk_kinesis::types::StreamStatus::Active
                });
                if active {
                    break;
                }
                assert!(
                    started.elapsed() < LIMIT,
                    "{stream} did not become active again"
                );
                tokio::time::sleep(Duration::from_millis(50)).await; // a poll's interval
            }
        }
    });
}

/// Writes the configuration of a job over the Kinesis test streams at `endpoint` (bounded with
/// `stop_at_latest`, serving on a port of its own otherwise); its path.
fn kinesis_config(dir: &Path, endpoint: &str, data: &Path, bounded: bool) -> String {
    let mut text = format!(
        "[source]\nkind = \"kinesis\"\n\n[source.kinesis]\nstop_at_latest = {bounded}\ndiscovery_interval = \"1s\"\nmax_records = 500\n\n"
    );
    for portal in KINESIS_PORTALS {
        text += &format!(
            "[[source.kinesis.streams]]\nportal = \"{portal}\"\nstream = \"pageviews-{portal}\"\n\n"
        );
    }
    text += &format!(
        "[aws]\nregion = \"us-east-1\"\nkinesis_endpoint_url = \"{endpoint}\"\n\n\
         [sinks]\nkind = \"local\"\ndir = '{}'\narchive = false\n\n\
         [serve]\nenabled = {}\nlisten = \"127.0.0.1:0\"\n\n\
         [runtime]\nworkers = 1\n\n[checkpoint]\ninterval = \"200ms\"\n",
        data.display(),
        !bounded
    );
    let config = dir.join("job.toml");
    std::fs::write(&config, text).unwrap();
    config.to_string_lossy().into_owned()
}

/// Starts the two processes of a job of `config` on loopback with `env`.
fn start_two(config: &str, env: &[(String, String)]) -> Vec<JobProcess> {
    let addresses = free_addresses(2);
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    (0..2)
        .map(|process| {
            JobProcess::spawn(
                Command::new(BIN)
                    .args(["run", "--config", config, "--process", &process.to_string()])
                    .env(
                        "PAGEFLOW__CLUSTER__ADDRESSES",
                        format!("[{}]", list.join(",")),
                    )
                    .env("RUST_LOG", "info")
                    .env("NO_COLOR", "1")
                    .envs(env.iter().cloned()),
            )
            .unwrap()
        })
        .collect()
}

// The records a process says it read when its input ended come from its last words' line only
// (`records_read`): other lines say "read" too, a compaction's bytes for one, and may be logged
// after them. A test once took those bytes for records read twice.
#[test]
fn the_records_read_come_from_the_last_words_only() {
    let stderr = "pageflow: the input has ended; every result is written (process 1 read 4495 records)\n\
                  INFO compacted checkpoint 7: 11 deltas, read 3359588 bytes, wrote 315940 bytes\n";
    assert_eq!(records_read(stderr), Some(4495));
}

/// Two processes read three portals' streams (kinesis-local) whose shards were split from 2 to
/// 4 between two halves of the input: every record is read exactly once across the processes,
/// both read some, and children after parents (the features equal the replay's, which a child
/// read before its parent would break: a reader's later pageviews would make its earlier ones
/// late). The run is bounded (`stop_at_latest`): both processes end with the input.
#[test]
fn two_processes_share_kinesis_shards_across_a_reshard() {
    let local = pageflow_tests::kinesis_local::KinesisLocal::start().unwrap();
    let env = local.env();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    pageflow_ok(
        &[
            "generate",
            "--events",
            "12000",
            "--seed",
            "41",
            "--out",
            &input.to_string_lossy(),
        ],
        &[],
    );
    let single = dir.path().join("replay");
    replay_one_process(&input, &single);
    let expected = sorted_lines(&[single.join("features.jsonl")]);
    // The input in two halves, the second put after the reshard (to the children).
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let halves = [
        dir.path().join("first.jsonl"),
        dir.path().join("second.jsonl"),
    ];
    let middle = lines.len() / 2;
    std::fs::write(&halves[0], lines[..middle].join("\n") + "\n").unwrap();
    std::fs::write(&halves[1], lines[middle..].join("\n") + "\n").unwrap();

    let data = dir.path().join("data");
    let config_str = kinesis_config(dir.path(), &local.endpoint, &data, true);
    pageflow_ok(
        &["aws", "setup", "--config", &config_str, "--shards", "2"],
        &env,
    );
    pageflow_ok(
        &[
            "aws",
            "put",
            "--config",
            &config_str,
            "--input",
            &halves[0].to_string_lossy(),
        ],
        &env,
    );
    reshard_every_stream(&local.endpoint);
    pageflow_ok(
        &[
            "aws",
            "put",
            "--config",
            &config_str,
            "--input",
            &halves[1].to_string_lossy(),
        ],
        &env,
    );

    let mut job = start_two(&config_str, &env);
    let ended = wait_all(&mut job, "the Kinesis cluster");
    let mut read = Vec::new();
    for (p, (code, stderr)) in ended.iter().enumerate() {
        assert_eq!(*code, 0, "process {p}:\n{stderr}\n{}", local.output());
        assert!(stderr.contains("the input has ended"), "{stderr}");
        read.push(records_read(stderr).unwrap_or_else(|| panic!("process {p}:\n{stderr}")));
    }
    assert_eq!(
        read.iter().sum::<u64>(),
        lines.len() as u64,
        "every record read exactly once: {read:?}\n{}\n{}",
        ended[0].1,
        ended[1].1
    );
    assert!(
        read.iter().all(|&n| n > 0),
        "both processes read shards: {read:?}"
    );
    let (features, duplicates) = all_features(&data);
    assert_eq!(duplicates, 0);
    crate::checkpoints::assert_same_features(&features, &expected, "Kinesis across two processes");
}

/// Reads `path` from the job serving on `addr`: the body of a 200 answer.
fn answer(addr: &str, path: &str) -> Option<String> {
    pageflow_tests::http_get(addr, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// Polls `path` on both processes until they answer 200 with the same body; that body.
fn same_answer(served: &[String], path: &str) -> String {
    let agreed = poll_until(LIMIT, Duration::from_millis(100), || {
        let first = answer(&served[0], path)?;
        let second = answer(&served[1], path)?;
        (first == second).then_some(first)
    });
    agreed.unwrap_or_else(|| {
        panic!(
            "the processes never agreed on {path}: {:?} / {:?}",
            answer(&served[0], path),
            answer(&served[1], path)
        )
    })
}

/// Two processes each serve the whole job: once every record is read, both answer every route
/// alike (final popular and trending rankings of every portal, an article's related list, a
/// reader's recommendations), and `/v1/status` lists both processes. A SIGTERM to process 0
/// stops both after one final checkpoint, to which process 1 adds its part.
#[test]
fn every_process_of_a_cluster_serves_the_whole_job() {
    let local = pageflow_tests::kinesis_local::KinesisLocal::start().unwrap();
    let env = local.env();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate_closing_sessions(&input);
    let text = std::fs::read_to_string(&input).unwrap();
    let total = text.lines().count() as u64;
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let data = dir.path().join("data");
    let config = kinesis_config(dir.path(), &local.endpoint, &data, false);
    pageflow_ok(
        &["aws", "setup", "--config", &config, "--shards", "2"],
        &env,
    );
    pageflow_ok(
        &[
            "aws",
            "put",
            "--config",
            &config,
            "--input",
            &input.to_string_lossy(),
        ],
        &env,
    );
    let mut job = start_two(&config, &env);
    let served: Vec<String> = job
        .iter_mut()
        .map(|process| process.http_address(LIMIT).unwrap())
        .collect();
    let read = poll_until(LIMIT, Duration::from_millis(100), || {
        let counts: Option<Vec<u64>> = served
            .iter()
            .map(|addr| {
                let status: serde_json::Value =
                    serde_json::from_str(&answer(addr, "/v1/status")?).ok()?;
                status["events"]["in_total"].as_u64()
            })
            .collect();
        counts.filter(|c| c.iter().sum::<u64>() >= total)
    });
    assert!(
        read.is_some(),
        "the processes did not read all {total} records"
    );

    for portal in KINESIS_PORTALS {
        for kind in ["popular", "trending"] {
            let body = same_answer(&served, &format!("/v1/portals/{portal}/{kind}?final=true"));
            let ranking: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                ranking["items"]
                    .as_array()
                    .is_some_and(|items| !items.is_empty()),
                "{portal} {kind}: {body}"
            );
        }
    }
    let portal = first["portal"].as_str().unwrap();
    let popular: serde_json::Value = serde_json::from_str(&same_answer(
        &served,
        &format!("/v1/portals/{portal}/popular?final=true"),
    ))
    .unwrap();
    // An article of the ranking with a related list (one read in sessions that have closed).
    let related = popular["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["article_id"].as_str())
        .map(|article| format!("/v1/articles/{article}/related?portal={portal}"))
        .find(|path| answer(&served[0], path).is_some())
        .unwrap_or_else(|| panic!("no article of {popular} has a related list"));
    same_answer(&served, &related);
    let user = first["user_id"].as_str().unwrap();
    let recommended = same_answer(
        &served,
        &format!("/v1/users/{user}/recommendations?portal={portal}&n=5"),
    );
    assert!(recommended.contains("article_id"), "{recommended}");
    for (process, addr) in served.iter().enumerate() {
        let status: serde_json::Value =
            serde_json::from_str(&answer(addr, "/v1/status").unwrap()).unwrap();
        let cluster = &status["cluster"];
        assert_eq!(cluster["process"], process, "{status}");
        assert_eq!(cluster["processes"], 2, "{status}");
        assert_eq!(
            cluster["peers"].as_array().map(Vec::len),
            Some(2),
            "{status}"
        );
    }

    job[0].terminate().unwrap();
    let ended = wait_all(&mut job, "the serving cluster");
    for (p, (code, stderr)) in ended.iter().enumerate() {
        assert_eq!(*code, 0, "process {p}:\n{stderr}");
    }
    let id = stopped_after(&ended[0].1).unwrap_or_else(|| panic!("{}", ended[0].1));
    assert!(
        ended[1].1.contains(&format!("part of checkpoint {id} ")),
        "{}",
        ended[1].1
    );
}
