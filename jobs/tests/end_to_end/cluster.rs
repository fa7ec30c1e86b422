//! Several `pageflow` processes as one timely dataflow, on loopback (issue 12).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pageflow_tests::job_process::{JobProcess, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");
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
fn run_refuses_a_cluster_until_it_can_run_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .arg("run")
        .current_dir(dir.path())
        .env(
            "PAGEFLOW__CLUSTER__ADDRESSES",
            "[\"127.0.0.1:7101\", \"127.0.0.1:7102\"]",
        )
        .env("PAGEFLOW__SERVE__ENABLED", "false")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("runs as one process for now"), "{stderr}");
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
