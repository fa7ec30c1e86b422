//! Checkpoints of `pageflow run`, end to end, with the real binary: killed with SIGKILL at random
//! moments and in the middle of a checkpoint write, stopped with SIGTERM, restarted with another
//! number of workers, restarted over damaged checkpoints. Whatever happens, the features it writes,
//! duplicates dropped by `feature_id`, must equal what `pageflow replay` computes in one
//! uninterrupted run of the same input, popular and trending rankings included.
//!
//! The kill moments come from a seeded generator: the seed is printed, and
//! `PAGEFLOW_TEST_SEED=<seed>` repeats a run's choices.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pageflow_connectors::checkpoint_store::{Checkpoints, LocalDirStore, MANIFEST_NAME};
use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::features::RankingKind;
use pageflow_serve::ServingState;
use pageflow_tests::http_get;
use pageflow_tests::job_process::{JobProcess, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Pageviews of the shared input: a debug build on two cores needs several seconds for them (and
/// commits two or three checkpoints on the way), so a run can be stopped several times.
const EVENTS: u64 = 60_000;
/// Its generator seed.
const INPUT_SEED: u64 = 23;
/// The checkpoint interval of every run here: many checkpoints per run.
const INTERVAL: &str = "100ms";
/// The longest a run to the end of the input may take (a debug build on a busy 2-core machine).
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// The longest a start-up, a graceful stop or a refusal may take.
const STEP_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The shared input and its replay.

/// The generated input and the features of its replay, shared by the tests of this file.
struct Fixture {
    input: PathBuf,
    /// The replay's feature lines, sorted.
    expected: Vec<String>,
}

/// Generates `events` pageviews into `dir` and replays them; the sorted feature lines.
fn generate_and_replay(
    dir: &Path,
    events: u64,
    seed: u64,
) -> Result<(PathBuf, Vec<String>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let input = dir.join("events.jsonl");
    run_ok(&[
        "generate",
        "--events",
        &events.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        &input.to_string_lossy(),
    ])?;
    let out = dir.join("replay");
    run_ok(&[
        "replay",
        "--input",
        &input.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
        "--workers",
        "1",
    ])?;
    let text = std::fs::read_to_string(out.join("features.jsonl")).map_err(|e| e.to_string())?;
    let (expected, duplicates) = distinct_features(&text)?;
    if duplicates != 0 {
        return Err(format!(
            "the replay wrote {duplicates} duplicate feature ids"
        ));
    }
    for kind in ["session", "popular", "trending", "related"] {
        let needle = format!("{{\"type\":\"{kind}\"");
        if !expected.iter().any(|line| line.starts_with(&needle)) {
            return Err(format!(
                "the replay has no {kind} features: a weak comparison"
            ));
        }
    }
    Ok((input, expected))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    let fixture = FIXTURE.get_or_init(|| {
        // In the target directory (not removed by the tests: statics are never dropped), one
        // directory per test process, so that concurrent runs do not share files.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = root.join(format!("checkpoints-fixture-{}", std::process::id()));
        remove_stale_fixtures(root, &dir);
        let (input, expected) = generate_and_replay(&dir, EVENTS, INPUT_SEED)?;
        Ok(Fixture { input, expected })
    });
    match fixture {
        Ok(fixture) => fixture,
        Err(error) => panic!("cannot prepare the shared input: {error}"),
    }
}

/// Removes the fixtures of earlier test processes (older than an hour).
fn remove_stale_fixtures(root: &Path, own: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if path != own
            && stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("checkpoints-fixture-")
        {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Runs `pageflow args` to its end; its standard error, or why it failed.
fn run_ok(args: &[&str]) -> Result<String, String> {
    run_with_env(args, &[])
}

fn run_with_env(args: &[&str], env: &[(String, String)]) -> Result<String, String> {
    let output = Command::new(BIN)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stderr)
    } else {
        Err(format!(
            "pageflow {args:?} failed ({}):\n{stderr}",
            output.status
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Features.

/// The distinct feature lines of a features file, sorted, and how many duplicates were dropped.
/// Every line must be a JSON object with a `feature_id`, and lines with the same id must be
/// byte-identical (a restart emits the same feature again, never a different one).
pub(crate) fn distinct_features(text: &str) -> Result<(Vec<String>, usize), String> {
    let mut by_id: BTreeMap<String, &str> = BTreeMap::new();
    let mut duplicates = 0;
    for (index, line) in text.lines().enumerate() {
        let json: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("line {} is not JSON ({e}): {line}", index + 1))?;
        let id = json["feature_id"]
            .as_str()
            .ok_or_else(|| format!("line {} has no feature_id: {line}", index + 1))?;
        match by_id.get(id) {
            None => {
                by_id.insert(id.to_string(), line);
            }
            Some(first) if *first == line => duplicates += 1,
            Some(first) => {
                return Err(format!(
                    "feature {id} was written twice with different contents:\n{first}\n{line}"
                ));
            }
        }
    }
    let mut lines: Vec<String> = by_id.into_values().map(str::to_string).collect();
    lines.sort();
    Ok((lines, duplicates))
}

/// The job's features (duplicates dropped) and the number of duplicates.
fn job_features(data: &Path) -> Result<(Vec<String>, usize), String> {
    let path = data.join("features.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    distinct_features(&text)
}

/// Fails with a readable difference unless the two sorted feature lists are equal.
pub(crate) fn assert_same_features(got: &[String], expected: &[String], what: &str) {
    if got == expected {
        return;
    }
    let got_set: BTreeSet<&String> = got.iter().collect();
    let expected_set: BTreeSet<&String> = expected.iter().collect();
    let missing: Vec<&&String> = expected_set.difference(&got_set).take(3).collect();
    let extra: Vec<&&String> = got_set.difference(&expected_set).take(3).collect();
    panic!(
        "{what}: {} distinct features, the replay has {}; {} missing, e.g. {missing:#?}; {} not in the replay, e.g. {extra:#?}",
        got.len(),
        expected.len(),
        expected_set.difference(&got_set).count(),
        got_set.difference(&expected_set).count(),
    );
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Jobs.

/// A `pageflow run` configuration: `source` is the `[source]` section (with sub-tables), results
/// go to `data` (checkpoints to `data/checkpoints`).
fn config_text(source: &str, data: &Path, workers: usize, serve: bool) -> String {
    format!(
        "{source}\n\
         [sinks]\nkind = \"local\"\ndir = '{}'\narchive = false\n\n\
         [serve]\nenabled = {serve}\nlisten = \"127.0.0.1:0\"\n\n\
         [runtime]\nworkers = {workers}\n\n\
         [checkpoint]\ninterval = \"{INTERVAL}\"\n",
        data.display()
    )
}

fn files_source(input: &Path) -> String {
    format!(
        "[source]\nkind = \"files\"\npaths = ['{}']\n",
        input.display()
    )
}

/// Writes the configuration to `dir/<name>.toml` and returns its path.
fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf, std::io::Error> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn start_job(config: &Path, env: &[(String, String)]) -> Result<JobProcess, String> {
    JobProcess::spawn(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().cloned()),
    )
}

/// Lets `job` run to the end of its input; fails unless it exits 0 saying so.
fn run_to_end(job: &mut JobProcess, what: &str) -> Result<String, String> {
    let Some(status) = job.wait_timeout(RUN_LIMIT) else {
        job.kill();
        return Err(format!(
            "{what}: did not end within {RUN_LIMIT:?}:\n{}",
            job.stderr()
        ));
    };
    let stderr = job.stderr();
    if !status.success() || !stderr.contains("the input has ended") {
        return Err(format!("{what}: ended with {status}:\n{stderr}"));
    }
    Ok(stderr)
}

/// Sends SIGTERM and waits for the graceful stop; the id of the final checkpoint.
fn stop_gracefully(job: &mut JobProcess, what: &str) -> Result<u64, String> {
    job.terminate()?;
    let Some(status) = job.wait_timeout(STEP_LIMIT) else {
        job.kill();
        return Err(format!(
            "{what}: did not stop within {STEP_LIMIT:?} of SIGTERM:\n{}",
            job.stderr()
        ));
    };
    let stderr = job.stderr();
    if !status.success() {
        return Err(format!("{what}: SIGTERM ended it with {status}:\n{stderr}"));
    }
    let id = stderr
        .split("stopped after checkpoint ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .ok_or_else(|| {
            format!("{what}: no \"stopped after checkpoint N\" after SIGTERM:\n{stderr}")
        })?;
    Ok(id)
}

/// The log line of a restore from checkpoint `id`.
fn restored_line(id: u64) -> String {
    format!("restored from checkpoint {id};")
}

// ---------------------------------------------------------------------------------------------
// The checkpoint directory.

fn checkpoint_dir_name(id: u64) -> String {
    format!("chk-{id:020}")
}

/// The delta run checkpoint `id` writes (incremental checkpoints: one run per checkpoint, then
/// its manifest).
fn delta_run(dir: &Path, id: u64) -> PathBuf {
    dir.join("runs").join(format!("{id:020}-delta.run"))
}

/// Every checkpoint by id, committed (it has its manifest) or not (only its delta run is there: a
/// write cut short, or one under way).
fn checkpoints_in(dir: &Path) -> BTreeMap<u64, bool> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_prefix("chk-")
            .and_then(|d| d.parse::<u64>().ok())
        {
            found.insert(id, entry.path().join(MANIFEST_NAME).is_file());
        }
    }
    for entry in std::fs::read_dir(dir.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_suffix("-delta.run")
            .and_then(|d| d.parse::<u64>().ok())
        {
            found.entry(id).or_insert(false);
        }
    }
    found
}

fn committed(dir: &Path) -> Vec<u64> {
    checkpoints_in(dir)
        .into_iter()
        .filter(|(_, committed)| *committed)
        .map(|(id, _)| id)
        .collect()
}

/// The run keys checkpoint `id`'s manifest lists.
fn runs_of(dir: &Path, id: u64) -> Result<Vec<String>, String> {
    let path = dir.join(checkpoint_dir_name(id)).join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(manifest["runs"]
        .as_array()
        .ok_or_else(|| format!("no runs in {text}"))?
        .iter()
        .filter_map(|run| run["key"].as_str().map(str::to_string))
        .collect())
}

/// Watches `dir` closely and kills `job` with SIGKILL the moment a checkpoint that was not there
/// before (`known`) has its delta run but no manifest yet: in the middle of its write. Returns the
/// id of the checkpoint left torn, or `None` when the manifest won the race, the job ended by
/// itself, or no write was caught within `limit` (then the job is killed too, unless it had ended).
fn kill_during_checkpoint_write(
    job: &mut JobProcess,
    dir: &Path,
    known: &BTreeSet<u64>,
    limit: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + limit;
    loop {
        if job.try_status().is_some() {
            return None;
        }
        // The newest one only: older ones without a manifest are being deleted, not written.
        if let Some((&id, _)) = checkpoints_in(dir)
            .iter()
            .next_back()
            .filter(|(id, committed)| !known.contains(id) && !**committed)
            && delta_run(dir, id).is_file()
        {
            job.kill();
            let torn = !dir
                .join(checkpoint_dir_name(id))
                .join(MANIFEST_NAME)
                .exists();
            return torn.then_some(id);
        }
        if Instant::now() >= deadline {
            job.kill();
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness.

/// SplitMix64: the kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("PAGEFLOW_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        println!("{test}: seed {seed} (PAGEFLOW_TEST_SEED={seed} repeats it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[low, high)`.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_micros().max(1) as u64;
        low + Duration::from_micros(self.next() % span)
    }
}

// ---------------------------------------------------------------------------------------------
// The crash harness.

/// How a crash loop ended.
#[derive(Debug, Default)]
struct CrashReport {
    kills: usize,
    /// Checkpoints left torn by a kill during their write.
    torn: Vec<u64>,
    /// Restores seen in the logs.
    restores: usize,
    /// Each restore's checkpoint: `(id, partitions, finished partitions)` from its manifest.
    restored_from: Vec<(u64, usize, usize)>,
}

/// `(partitions, finished partitions)` from the `info` of checkpoint `id`'s manifest.
fn manifest_partitions(checkpoints: &Path, id: u64) -> Result<(usize, usize), String> {
    let path = checkpoints
        .join(checkpoint_dir_name(id))
        .join(MANIFEST_NAME);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let count = |key: &str| {
        manifest["info"][key]
            .as_str()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no info.{key} in {}: {text}", path.display()))
    };
    Ok((count("partitions")?, count("finished_partitions")?))
}

/// When a run is killed.
#[derive(Clone, Copy, Debug)]
enum KillAfter {
    /// A random delay after the run's first committed checkpoint.
    Commit,
    /// A random delay after the run has committed a checkpoint that shows records taken in (a
    /// partition read to its end, or a watermark).
    Reading,
}

/// A crash loop: the job of `config` (results in `data`, checkpoints in `data/checkpoints`), killed
/// with SIGKILL `kills` times, each time a random delay in `delays` after `after` (and after its
/// restore, if there was a checkpoint), so that every run moves the input on; with `torn_kill`, one
/// of the kills instead lands in the middle of a checkpoint write (tried in up to 5 runs, once an
/// older committed checkpoint exists to fall back to).
struct CrashPlan<'a> {
    config: &'a Path,
    data: &'a Path,
    env: &'a [(String, String)],
    kills: usize,
    torn_kill: bool,
    after: KillAfter,
    delays: (Duration, Duration),
}

/// Whether checkpoint `id`'s manifest shows records taken in.
fn shows_reading(checkpoints: &Path, id: u64) -> bool {
    let path = checkpoints
        .join(checkpoint_dir_name(id))
        .join(MANIFEST_NAME);
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(manifest) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let info = &manifest["info"];
    info["finished_partitions"]
        .as_str()
        .is_some_and(|n| n != "0")
        || info["watermark"]
            .as_str()
            .is_some_and(|w| w != "MinusInfinity")
}

/// Runs a [`CrashPlan`], then a last run to the end of the input. Every restart must restore from
/// the newest committed checkpoint and skip a torn one with a warning.
fn crash_loop(plan: &CrashPlan<'_>, rng: &mut Rng) -> Result<CrashReport, String> {
    let checkpoints = plan.data.join("checkpoints");
    let features = plan.data.join("features.jsonl");
    let mut report = CrashReport::default();
    let mut torn_attempts = 0;
    let mut expect_skip: Option<u64> = None;
    loop {
        let finishing = report.kills >= plan.kills && (!plan.torn_kill || !report.torn.is_empty());
        if report.kills >= plan.kills + 5 {
            return Err(format!(
                "no kill landed during a checkpoint write in {torn_attempts} tries"
            ));
        }
        let before = checkpoints_in(&checkpoints);
        let newest = committed(&checkpoints).last().copied();
        let mut job = start_job(plan.config, plan.env)?;
        let what = format!("run {}", report.kills + 1);
        // Until the restore is done, a kill would test nothing new.
        if let Some(id) = newest {
            if !job.wait_for_stderr(&restored_line(id), STEP_LIMIT) {
                return Err(format!(
                    "{what}: no restore from checkpoint {id}, the newest committed one:\n{}",
                    job.stderr()
                ));
            }
            report.restores += 1;
            let (partitions, finished) = manifest_partitions(&checkpoints, id)?;
            report.restored_from.push((id, partitions, finished));
        }
        if let Some(torn) = expect_skip.take() {
            // Logged before the restore, which was awaited.
            let stderr = job.stderr();
            let warning = format!("checkpoint {torn} at");
            if !stderr
                .lines()
                .any(|l| l.contains(&warning) && l.contains("has no manifest"))
            {
                return Err(format!(
                    "{what}: no warning about the torn checkpoint {torn}:\n{stderr}"
                ));
            }
        }
        if finishing {
            run_to_end(&mut job, &format!("{what} (to the end)"))?;
            return Ok(report);
        }
        // The torn checkpoint is tried once there is an older committed one to fall back to.
        if plan.torn_kill && report.torn.is_empty() && newest.is_some() {
            torn_attempts += 1;
            let known: BTreeSet<u64> = before.keys().copied().collect();
            match kill_during_checkpoint_write(&mut job, &checkpoints, &known, STEP_LIMIT) {
                Some(id) => {
                    println!("{what}: killed during the write of checkpoint {id}");
                    report.torn.push(id);
                    expect_skip = Some(id);
                }
                None => println!("{what}: the kill did not land during a checkpoint write"),
            }
        } else {
            let ready = match plan.after {
                KillAfter::Commit => job.wait_for_stderr("checkpoint committed", RUN_LIMIT),
                KillAfter::Reading => {
                    poll_until(RUN_LIMIT, Duration::from_millis(20), || {
                        let ended = job.try_status().is_some();
                        let found = committed(&checkpoints).into_iter().any(|id| {
                            newest.is_none_or(|n| id > n) && shows_reading(&checkpoints, id)
                        });
                        (found || ended).then_some(found)
                    }) == Some(true)
                }
            };
            if !ready {
                return Err(format!(
                    "{what}: no checkpoint {:?} (or it ended):\n{}",
                    plan.after,
                    job.stderr()
                ));
            }
            let delay = rng.between(plan.delays.0, plan.delays.1);
            if job.wait_timeout(delay).is_some() {
                return Err(format!(
                    "{what}: ended by itself within {delay:?}, before its kill: make the input larger\n{}",
                    job.stderr()
                ));
            }
            job.kill();
            println!(
                "{what}: killed {delay:?} after {:?}, {} feature lines written",
                plan.after,
                count_lines(&features)
            );
        }
        if let Some(status) = job.try_status()
            && status.success()
        {
            return Err(format!(
                "{what}: ended by itself before its kill: make the input larger\n{}",
                job.stderr()
            ));
        }
        report.kills += 1;
    }
}

/// Kill -9 at random moments and once in the middle of a checkpoint write, then a run to the end:
/// the features, duplicates dropped, equal the replay's.
#[test]
fn killed_at_random_and_mid_checkpoint_the_deduplicated_features_equal_replay() -> TestResult {
    let fixture = fixture();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        "job",
        &config_text(&files_source(&fixture.input), &data, 2, false),
    )?;
    let mut rng = Rng::from_env("file crash loop");
    let started = Instant::now();
    let plan = CrashPlan {
        config: &config,
        data: &data,
        env: &[],
        kills: 4,
        torn_kill: true,
        after: KillAfter::Commit,
        delays: (Duration::ZERO, Duration::from_millis(1500)),
    };
    let report = crash_loop(&plan, &mut rng)?;
    println!("file crash loop: {report:?} in {:?}", started.elapsed());
    assert!(report.kills >= 4, "{report:?}");
    assert_eq!(report.torn.len(), 1, "{report:?}");
    assert!(report.restores >= 4, "every restart restored: {report:?}");
    assert!(
        report
            .restored_from
            .iter()
            .all(|&(_, p, f)| (p, f) == (1, 0)),
        "every restore continued the file midway: {report:?}"
    );

    let (features, duplicates) = job_features(&data)?;
    println!("file crash loop: {duplicates} duplicates dropped");
    assert_same_features(&features, &fixture.expected, "after the kills");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Kinesis.

const PORTALS: [&str; 3] = ["g1", "ge", "gshow"];

/// The Kinesis source of the portals' streams. `max_records` keeps its default (10,000, more than a
/// shard holds here): kinesis-local computes `MillisBehindLatest` from arrival times, so it answers
/// 0 while records put in the same `PutRecords` call are still unread, and with a smaller limit
/// `stop_at_latest` would end such a shard early.
fn kinesis_source(endpoint: &str) -> String {
    let mut text = String::from(
        // 100 records per GetRecords (at most 5 calls a second per shard) spreads the 12,000
        // records over seconds of reading, so every random kill lands while shards are read.
        "[source]\nkind = \"kinesis\"\n\n[source.kinesis]\nstop_at_latest = true\ndiscovery_interval = \"1s\"\nmax_records = 100\n\n",
    );
    for portal in PORTALS {
        text.push_str(&format!(
            "[[source.kinesis.streams]]\nportal = \"{portal}\"\nstream = \"pageviews-{portal}\"\n\n"
        ));
    }
    text.push_str(&format!(
        "[aws]\nregion = \"us-east-1\"\nkinesis_endpoint_url = \"{endpoint}\"\n\n"
    ));
    text
}

/// The same through Kinesis (kinesis-local): three portal streams of two shards each, read with
/// `stop_at_latest`, killed twice. The generated input has no event later than the allowed
/// out-of-orderness in file order, and `aws put` keeps each reader's pageviews in order on one
/// shard, so no interleaving of the shards makes an event late: the replay of the file is the
/// reference, as in `aws_end_to_end.rs`.
#[test]
fn killed_while_reading_kinesis_the_deduplicated_features_equal_replay() -> TestResult {
    let local = pageflow_tests::kinesis_local::KinesisLocal::start()?;
    let env = local.env();
    let dir = tempfile::tempdir()?;
    let (input, expected) = generate_and_replay(&dir.path().join("input"), 12_000, 31)?;
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        "job",
        &config_text(&kinesis_source(&local.endpoint), &data, 2, false),
    )?;
    let config_str = config.to_string_lossy().into_owned();
    let started = Instant::now();
    run_with_env(
        &["aws", "setup", "--config", &config_str, "--shards", "2"],
        &env,
    )?;
    let put = run_with_env(
        &[
            "aws",
            "put",
            "--config",
            &config_str,
            "--input",
            &input.to_string_lossy(),
        ],
        &env,
    )?;
    assert!(put.contains("wrote 12000 records"), "{put}");
    println!(
        "kinesis: streams created and filled in {:?}",
        started.elapsed()
    );

    let mut rng = Rng::from_env("kinesis crash loop");
    let started = Instant::now();
    let plan = CrashPlan {
        config: &config,
        data: &data,
        env: &env,
        kills: 2,
        torn_kill: false,
        after: KillAfter::Reading,
        delays: (Duration::ZERO, Duration::from_millis(800)),
    };
    let report = crash_loop(&plan, &mut rng)
        .map_err(|e| format!("{e}\nkinesis-local:\n{}", local.output()))?;
    println!("kinesis crash loop: {report:?} in {:?}", started.elapsed());
    assert!(report.kills >= 2 && report.restores >= 2, "{report:?}");
    assert!(
        report.restored_from.iter().any(|&(_, p, f)| f < p),
        "a restore continued shards midway: {report:?}"
    );

    let (features, duplicates) = job_features(&data)?;
    println!("kinesis crash loop: {duplicates} duplicates dropped");
    assert_same_features(&features, &expected, "Kinesis after the kills");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Damaged checkpoints, unknown formats, other semantics.

/// Flips one byte in the middle of a file.
fn flip_a_byte(path: &Path) -> Result<(), std::io::Error> {
    let mut bytes = std::fs::read(path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(path, bytes)
}

/// The newest committed checkpoint is corrupt (a byte flipped in a part) and the one before is
/// truncated: the job skips both with a warning naming each, restores from the third and ends with
/// the replay's features. A manifest in an unknown format, or a checkpoint of other semantics,
/// stops the job at once with a message saying which checkpoint and what to do.
#[test]
fn damaged_checkpoints_are_skipped_and_unknown_formats_or_other_semantics_refused() -> TestResult {
    let fixture = fixture();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let checkpoints = data.join("checkpoints");
    // Three checkpoints kept (the default keeps two): the newest two are damaged, the third is
    // the good one the job falls back to.
    let config = write_config(
        dir.path(),
        "job",
        &(config_text(&files_source(&fixture.input), &data, 2, false) + "keep = 3\n"),
    )?;

    // Runs killed once they have committed a checkpoint, until the three kept are.
    for run in 1.. {
        if committed(&checkpoints).len() >= 3 {
            break;
        }
        assert!(run <= 6, "no 3 checkpoints after 5 runs");
        let mut job = start_job(&config, &[])?;
        let commit = job.wait_for_stderr("checkpoint committed", RUN_LIMIT);
        job.kill();
        assert!(
            commit,
            "run {run} committed no checkpoint:\n{}",
            job.stderr()
        );
    }
    let ids = committed(&checkpoints);
    let [third, second, newest] = ids[ids.len() - 3..] else {
        return Err(format!("not 3 checkpoints: {ids:?}").into());
    };
    // Runs are shared by the checkpoints built on them: damage runs the third newest does not list.
    let third_runs = runs_of(&checkpoints, third)?;
    let own = |id: u64| -> Result<String, String> {
        runs_of(&checkpoints, id)?
            .into_iter()
            .rfind(|run| !third_runs.contains(run))
            .ok_or_else(|| format!("checkpoint {id} lists no run of its own"))
    };
    let (flipped, truncated) = (own(newest)?, own(second)?);
    if flipped == truncated {
        return Err(
            format!("checkpoints {second} and {newest} share their newest run {flipped}").into(),
        );
    }
    flip_a_byte(&checkpoints.join(&flipped))?;
    let length = std::fs::metadata(checkpoints.join(&truncated))?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(checkpoints.join(&truncated))?
        .set_len(length / 2)?;

    let mut job = start_job(&config, &[])?;
    let stderr = run_to_end(&mut job, "the run over damaged checkpoints")?;
    let skipped = |id: u64, problem: &str| {
        stderr.lines().any(|line| {
            line.contains(&format!("checkpoint {id} at"))
                && line.contains("is damaged")
                && line.contains(problem)
        })
    };
    // The newest lists both damaged runs (runs are shared): the warning names the first found.
    assert!(
        skipped(newest, &format!("run {flipped} has SHA-256"))
            || skipped(newest, &format!("run {truncated} has {} bytes", length / 2)),
        "the corrupt checkpoint {newest} is skipped with a warning:\n{stderr}"
    );
    assert!(
        skipped(second, &format!("run {truncated} has {} bytes", length / 2)),
        "the truncated checkpoint {second} is skipped with a warning:\n{stderr}"
    );
    assert!(
        stderr.contains(&restored_line(third)),
        "restored from the third newest, {third}:\n{stderr}"
    );
    let (features, _) = job_features(&data)?;
    assert_same_features(&features, &fixture.expected, "after the fallback");

    // A newest checkpoint in format 999 (a newer release wrote it): refused at once, not skipped.
    let ids = committed(&checkpoints);
    let last = *ids.last().ok_or("no checkpoint after the run")?;
    // After the newest of all (a checkpoint in progress when the input ended stays torn).
    let future = checkpoints_in(&checkpoints)
        .keys()
        .next_back()
        .map_or(last, |newest| *newest.max(&last))
        + 1;
    let future_dir = checkpoints.join(checkpoint_dir_name(future));
    std::fs::create_dir(&future_dir)?;
    std::fs::copy(
        checkpoints
            .join(checkpoint_dir_name(last))
            .join(MANIFEST_NAME),
        future_dir.join(MANIFEST_NAME),
    )?;
    let manifest_path = future_dir.join(MANIFEST_NAME);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)?;
    manifest["format_version"] = 999.into();
    manifest["id"] = future.into();
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    let features_before = std::fs::read(data.join("features.jsonl"))?;

    let started = Instant::now();
    let mut job = start_job(&config, &[])?;
    let status = job.wait_timeout(STEP_LIMIT);
    let stderr = job.stderr();
    let status =
        status.ok_or_else(|| format!("a format-999 checkpoint: still running:\n{stderr}"))?;
    println!(
        "format 999: {status} after {:?}; {}",
        started.elapsed(),
        stderr.lines().last().unwrap_or_default()
    );
    assert!(!status.success(), "{stderr}");
    assert!(status.code().is_some(), "an exit, not a signal: {status}");
    let message = format!("checkpoint {future} at");
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(&message) && line.contains("is in format 999"))
        .collect();
    assert_eq!(refusals.len(), 1, "one refusal, no retries:\n{stderr}");
    assert!(
        refusals[0].contains("reads formats 2 and 3")
            && refusals[0].contains(&checkpoint_dir_name(future)),
        "says which format it reads and which checkpoint to move: {}",
        refusals[0]
    );
    assert!(!stderr.contains("restored from checkpoint"), "{stderr}");
    assert_eq!(
        std::fs::read(data.join("features.jsonl"))?,
        features_before,
        "nothing written"
    );

    // Other [semantics] than the checkpoint's: refused too.
    std::fs::remove_dir_all(&future_dir)?;
    let mut job = start_job(
        &config,
        &[("PAGEFLOW__SEMANTICS__TOP_N".to_string(), "7".to_string())],
    )?;
    let status = job.wait_timeout(STEP_LIMIT);
    let stderr = job.stderr();
    let status = status
        .ok_or_else(|| format!("a checkpoint of other semantics: still running:\n{stderr}"))?;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("checkpoint {last} in"))
            && stderr.contains("different [semantics] settings"),
        "{stderr}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Graceful stops.

/// Starts the job of `config`, waits until it has written features, stops it with SIGTERM and
/// returns the final checkpoint's id and the number of features written.
fn stop_midway(config: &Path, data: &Path, what: &str) -> Result<(u64, usize), String> {
    let mut job = start_job(config, &[])?;
    let checkpoints = data.join("checkpoints");
    let features = data.join("features.jsonl");
    let progress = poll_until(STEP_LIMIT, Duration::from_millis(10), || {
        (count_lines(&features) > 0).then_some(())
    });
    if progress.is_none() {
        return Err(format!("{what}: no features:\n{}", job.stderr()));
    }
    let id = stop_gracefully(&mut job, what)?;
    let manifest = std::fs::read_to_string(
        checkpoints
            .join(checkpoint_dir_name(id))
            .join(MANIFEST_NAME),
    )
    .map_err(|e| format!("{what}: the final checkpoint {id} is not committed: {e}"))?;
    if !manifest.contains("\"final\": \"true\"") {
        return Err(format!(
            "{what}: checkpoint {id} is not marked final:\n{manifest}"
        ));
    }
    Ok((id, count_lines(&features)))
}

/// SIGTERM, then a restart: the final checkpoint covers exactly what was written, so the features
/// file has no duplicate at all and equals the replay.
#[test]
fn sigterm_then_restart_writes_every_feature_exactly_once() -> TestResult {
    let fixture = fixture();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        "job",
        &config_text(&files_source(&fixture.input), &data, 2, false),
    )?;
    let (id, written) = stop_midway(&config, &data, "the first run")?;
    assert!(
        written < fixture.expected.len(),
        "stopped midway: {written} of {} features",
        fixture.expected.len()
    );
    let mut job = start_job(&config, &[])?;
    let stderr = run_to_end(&mut job, "the restart")?;
    assert!(stderr.contains(&restored_line(id)), "{stderr}");
    let (features, duplicates) = job_features(&data)?;
    assert_eq!(duplicates, 0, "a graceful stop writes nothing twice");
    assert_same_features(&features, &fixture.expected, "after SIGTERM and a restart");
    Ok(())
}

/// A checkpoint of one worker continues on two, and one of two on one.
#[test]
fn a_checkpoint_continues_with_another_number_of_workers() -> TestResult {
    let fixture = fixture();
    for (before, after) in [(1, 2), (2, 1)] {
        let what = format!("{before} → {after} workers");
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let source = files_source(&fixture.input);
        let first = write_config(
            dir.path(),
            "first",
            &config_text(&source, &data, before, false),
        )?;
        let second = write_config(
            dir.path(),
            "second",
            &config_text(&source, &data, after, false),
        )?;
        let (id, written) = stop_midway(&first, &data, &what)?;
        assert!(written < fixture.expected.len(), "{what}: stopped midway");
        let mut job = start_job(&second, &[])?;
        let stderr = run_to_end(&mut job, &what)?;
        assert!(stderr.contains(&restored_line(id)), "{what}: {stderr}");
        let (features, duplicates) = job_features(&data)?;
        assert_eq!(duplicates, 0, "{what}: nothing written twice");
        assert_same_features(&features, &fixture.expected, &what);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Serving.

/// The address in "open http://ADDR/", once the job has printed it.
fn announced_address(job: &mut JobProcess) -> Result<String, String> {
    if !job.wait_for_stderr("open http://", STEP_LIMIT) {
        return Err(format!("the job announced no address:\n{}", job.stderr()));
    }
    let stderr = job.stderr();
    let start = stderr.find("open http://").unwrap_or_default() + "open http://".len();
    Ok(stderr[start..]
        .split(['/', ' '])
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The ranking the job would serve from a state, as the JSON fields of an answer.
fn served(state: &ServingState, portal: &str, kind: RankingKind) -> Option<serde_json::Value> {
    let ranking = state.ranking(portal, kind)?;
    Some(serde_json::json!({
        "window_start": ranking.window_start,
        "window_end": ranking.window_end,
        "watermark": ranking.watermark,
        "final": ranking.is_final,
        "items": serde_json::to_value(&ranking.items).ok()?,
    }))
}

/// The same fields of an HTTP answer.
fn answered(body: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(serde_json::json!({
        "window_start": value["window_start"],
        "window_end": value["window_end"],
        "watermark": value["watermark"],
        "final": value["final"],
        "items": value["items"],
    }))
}

/// After a SIGTERM stop and a restart, the first answers are the rankings held at the stop, not
/// 404s. To keep the restarted job from moving on before the question, its input is a FIFO that
/// carries exactly the lines the final checkpoint had read, and no more until the test closes it.
#[test]
fn a_restart_serves_the_rankings_held_at_the_stop() -> TestResult {
    let fixture = fixture();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let input = dir.path().join("events.jsonl");
    std::fs::copy(&fixture.input, &input)?;
    let config = write_config(
        dir.path(),
        "job",
        &config_text(&files_source(&input), &data, 2, true),
    )?;

    let mut job = start_job(&config, &[])?;
    let addr = announced_address(&mut job)?;
    let before = poll_until(STEP_LIMIT, Duration::from_millis(20), || {
        let (status, body) = http_get(&addr, "/v1/portals/g1/popular?n=100")?;
        let value = answered(&body)?;
        (status == 200 && !value["items"].as_array()?.is_empty()).then_some(value)
    })
    .ok_or_else(|| format!("no popular ranking for g1:\n{}", job.stderr()))?;
    let id = stop_gracefully(&mut job, "the first run")?;

    // What the final checkpoint holds: the serving state and the file position.
    let store = Checkpoints::new(Arc::new(LocalDirStore::new(data.join("checkpoints"))?), 3);
    let restored = pageflow::checkpoints::restore(&store, &SemanticsConfig::default(), 1)?
        .ok_or("no checkpoint to restore")?;
    assert_eq!(restored.id, id, "the final checkpoint is the newest");
    let state = ServingState::new();
    for update in &restored.serving {
        state.apply(update.clone());
    }
    let popular = served(&state, "g1", RankingKind::Popular).ok_or("no popular ranking saved")?;
    let trending =
        served(&state, "g1", RankingKind::Trending).ok_or("no trending ranking saved")?;
    assert!(
        popular["window_end"].as_u64() >= before["window_end"].as_u64(),
        "the saved ranking is no older than the one served before the stop: {popular} {before}"
    );
    let partition = format!("file:{}", input.display());
    let lines: usize = restored
        .partition(&partition)
        .and_then(|p| p.position.as_deref())
        .and_then(|p| p.parse().ok())
        .filter(|lines| *lines > 0)
        .ok_or_else(|| format!("no position of {partition} in checkpoint {id}"))?;

    // The restarted job's input: a FIFO with exactly those lines, held open.
    let full = dir.path().join("events-full.jsonl");
    std::fs::rename(&input, &full)?;
    let mkfifo = Command::new("mkfifo").arg(&input).status()?;
    assert!(mkfifo.success(), "mkfifo {}", input.display());
    let text = std::fs::read(&full)?;
    let prefix_len = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(lines.saturating_sub(1))
        .map(|(at, _)| at + 1)
        .ok_or("the input is shorter than the checkpoint's position")?;
    let prefix = text[..prefix_len].to_vec();
    let (close, closed) = mpsc::channel::<()>();
    let fifo = input.clone();
    let writer = std::thread::spawn(move || -> Result<(), String> {
        // Blocks until the job opens it for reading.
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .map_err(|e| e.to_string())?;
        pipe.write_all(&prefix).map_err(|e| e.to_string())?;
        // Held open (the job waits for more) until the test is done or gone.
        let _ = closed.recv();
        Ok(())
    });

    let mut job = start_job(&config, &[])?;
    let addr = announced_address(&mut job)?;
    let first_popular = http_get(&addr, "/v1/portals/g1/popular?n=100");
    let first_trending = http_get(&addr, "/v1/portals/g1/trending?n=100");
    assert!(
        job.stderr().contains(&restored_line(id)),
        "{}",
        job.stderr()
    );
    for (what, answer, expected) in [
        ("popular", first_popular, popular),
        ("trending", first_trending, trending),
    ] {
        let (status, body) = answer.ok_or_else(|| format!("no answer to GET {what}"))?;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(
            answered(&body),
            Some(expected),
            "{what}: the first answer after the restart is the ranking held at the stop"
        );
    }

    // The input ends: the job finishes it.
    drop(close);
    let stderr = run_to_end(&mut job, "the restart")?;
    assert!(stderr.contains("the input has ended"), "{stderr}");
    writer.join().map_err(|_| "the FIFO writer panicked")??;
    Ok(())
}
