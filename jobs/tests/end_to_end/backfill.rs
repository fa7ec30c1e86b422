//! `pageflow backfill`: the raw archive a job wrote, read back through the same graph.
//!
//! The archive comes from the real job: `pageflow run` over a generated file with the local
//! archive on. Backfilling it (from the local directory, or from a moto S3 bucket laid out and
//! gzipped as the Firehose delivery stream writes it) must give the features of the original
//! `pageflow replay`, byte for byte, and those of `pageflow replay` over the archive's records
//! concatenated in backfill's order.

use std::path::{Path, PathBuf};
use std::process::Command;

use pageflow_tests::aws::MotoServer;
use pageflow_tests::clients::s3_client;

use crate::support::{BIN, pageflow_ok};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The environment that gives `pageflow replay` the allowance backfill runs with.
fn an_hour_of_allowance() -> Vec<(String, String)> {
    vec![(
        "PAGEFLOW__SEMANTICS__MAX_OUT_OF_ORDERNESS".to_string(),
        "\"1h\"".to_string(),
    )]
}

/// The input, its original replay and the raw archive `pageflow run` wrote of it.
struct Archived {
    dir: tempfile::TempDir,
    input: PathBuf,
    /// `pageflow replay` of the input, with the default semantics.
    original: PathBuf,
    /// The sinks directory of `pageflow run` (holding `archive/raw/`).
    sinks: PathBuf,
}

/// 6,000 generated pageviews over about 17 hours of event time (from midday to the next
/// morning: two dates, three portals), replayed, and run by the job with the archive on.
fn archived() -> Result<Archived, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input.jsonl");
    pageflow_ok(
        &[
            "generate",
            "--events",
            "6000",
            "--seed",
            "15",
            "--rate",
            "0.1",
            "--users",
            "400",
            "--out",
            &input.to_string_lossy(),
        ],
        &[],
    );
    let original = dir.path().join("original");
    pageflow_ok(
        &[
            "replay",
            "--input",
            &input.to_string_lossy(),
            "--out",
            &original.to_string_lossy(),
        ],
        &[],
    );
    // The input has no late event: the archive holds every valid one.
    assert_eq!(std::fs::read(original.join("dead-letter.jsonl"))?, b"");
    let sinks = dir.path().join("data");
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"files\"\npaths = ['{}']\n\n\
             [sinks]\nkind = \"local\"\ndir = '{}'\narchive = true\n\n\
             [serve]\nenabled = false\n\n[checkpoint]\nenabled = false\n",
            input.display(),
            sinks.display()
        ),
    )?;
    pageflow_ok(&["run", "--config", &config.to_string_lossy()], &[]);
    Ok(Archived {
        dir,
        input,
        original,
        sinks,
    })
}

/// The raw archive's files under `raw` as `(relative path, path)`, in backfill's order: date,
/// hour, portal, file name (what the documentation promises, computed here independently).
fn raw_files(raw: &Path) -> Result<Vec<(String, PathBuf)>, std::io::Error> {
    let mut files = Vec::new();
    for portal in std::fs::read_dir(raw)? {
        let portal = portal?.path();
        for date in std::fs::read_dir(&portal)? {
            let date = date?.path();
            for hour in std::fs::read_dir(&date)? {
                let hour = hour?.path();
                for file in std::fs::read_dir(&hour)? {
                    let file = file?.path();
                    let name = |p: &Path| {
                        p.file_name()
                            .map(|n| n.to_string_lossy().to_string())
                            .unwrap_or_default()
                    };
                    let relative = format!(
                        "{}/{}/{}/{}",
                        name(&portal),
                        name(&date),
                        name(&hour),
                        name(&file)
                    );
                    files.push((
                        (name(&date), name(&hour), name(&portal), name(&file)),
                        relative,
                        file,
                    ));
                }
            }
        }
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|(_, relative, path)| (relative, path))
        .collect())
}

/// Concatenates `files` into `out`.
fn concatenate(files: &[(String, PathBuf)], out: &Path) -> Result<(), std::io::Error> {
    let mut bytes = Vec::new();
    for (_, path) in files {
        bytes.extend(std::fs::read(path)?);
    }
    std::fs::write(out, bytes)
}

/// `pageflow replay` of `input` into `out` with `env`; the features file.
fn replay(input: &Path, out: &Path, env: &[(String, String)]) -> Result<Vec<u8>, std::io::Error> {
    pageflow_ok(
        &[
            "replay",
            "--input",
            &input.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
        ],
        env,
    );
    std::fs::read(out.join("features.jsonl"))
}

/// `pageflow backfill args --out out`; the features file and the summary.
fn backfill(
    args: &[&str],
    out: &Path,
    env: &[(String, String)],
) -> Result<(Vec<u8>, serde_json::Value), Box<dyn std::error::Error>> {
    let out_text = out.to_string_lossy().to_string();
    let mut all: Vec<&str> = vec!["backfill"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", &out_text]);
    pageflow_ok(&all, env);
    let summary = serde_json::from_slice(&std::fs::read(out.join("summary.json"))?)?;
    Ok((std::fs::read(out.join("features.jsonl"))?, summary))
}

/// Runs `pageflow args` expecting a failure: its exit code and standard error.
fn failing(args: &[&str], env: &[(String, String)]) -> Result<(i32, String), String> {
    let output = Command::new(BIN)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    if output.status.success() {
        return Err(format!("pageflow {args:?} succeeded:\n{stderr}"));
    }
    Ok((output.status.code().unwrap_or(-1), stderr))
}

#[test]
fn a_local_backfill_equals_the_original_replay_and_the_replay_of_its_order() -> TestResult {
    let archived = archived()?;
    let original = std::fs::read(archived.original.join("features.jsonl"))?;
    let files = raw_files(&archived.sinks.join("archive/raw"))?;
    let dates: std::collections::BTreeSet<&str> = files
        .iter()
        .filter_map(|(r, _)| r.split('/').nth(1))
        .collect();
    assert!(dates.len() >= 2, "the input spans one date only: {dates:?}");
    assert!(files.len() > 20, "{} files", files.len());

    // From the sinks directory (archive/raw/), and from the archive's root (raw/).
    let out = archived.dir.path().join("backfill");
    let (features, summary) = backfill(&["--from", &archived.sinks.to_string_lossy()], &out, &[])?;
    assert!(
        features == original,
        "the backfill's features differ from the original replay's"
    );
    assert_eq!(summary["late"], 0, "{summary}");
    assert_eq!(summary["objects"], files.len(), "{summary}");
    assert_eq!(std::fs::read(out.join("dead-letter.jsonl"))?, b"");
    let (from_root, _) = backfill(
        &["--from", &archived.sinks.join("archive").to_string_lossy()],
        &archived.dir.path().join("backfill-root"),
        &[],
    )?;
    assert!(from_root == original);
    // The curated lake is rebuilt too: the same tables, files and bytes as the original replay's.
    let lake = |root: &Path| -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let name = path
                        .strip_prefix(root)
                        .unwrap_or(&path)
                        .display()
                        .to_string();
                    files.push((name, std::fs::read(&path)?));
                }
            }
        }
        files.sort();
        Ok(files)
    };
    let rebuilt = lake(&out.join("curated"))?;
    assert!(
        rebuilt
            .iter()
            .any(|(name, _)| name.starts_with("pageviews/")),
        "the backfill wrote no curated pageviews"
    );
    let original_lake = lake(&archived.original.join("curated"))?;
    assert_eq!(
        rebuilt.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        original_lake
            .iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>(),
        "the same curated files"
    );
    assert!(rebuilt == original_lake, "the same curated bytes");

    // The replay of the archive's records in backfill's order.
    let concatenated = archived.dir.path().join("concatenated.jsonl");
    concatenate(&files, &concatenated)?;
    let replayed = replay(
        &concatenated,
        &archived.dir.path().join("replay-of-order"),
        &an_hour_of_allowance(),
    )?;
    assert!(
        replayed == features,
        "the backfill differs from the replay of its order"
    );
    Ok(())
}

#[test]
fn a_portal_and_a_date_range_backfill_exactly_that_subset() -> TestResult {
    let archived = archived()?;
    let files = raw_files(&archived.sinks.join("archive/raw"))?;
    let first_date = files
        .first()
        .and_then(|(r, _)| r.split('/').nth(1))
        .and_then(|d| d.strip_prefix("date="))
        .ok_or("no archive")?
        .to_string();
    let subset: Vec<(String, PathBuf)> = files
        .iter()
        .filter(|(r, _)| r.starts_with(&format!("portal=ge/date={first_date}/")))
        .cloned()
        .collect();
    assert!(subset.len() > 1 && subset.len() < files.len());

    let out = archived.dir.path().join("backfill");
    let (features, summary) = backfill(
        &[
            "--from",
            &archived.sinks.to_string_lossy(),
            "--portal",
            "ge",
            "--from-date",
            &first_date,
            "--to-date",
            &first_date,
        ],
        &out,
        &[],
    )?;
    assert_eq!(summary["objects"], subset.len(), "{summary}");
    assert!(!features.is_empty());

    // The replay of that subset in backfill's order...
    let concatenated = archived.dir.path().join("subset.jsonl");
    concatenate(&subset, &concatenated)?;
    let replayed = replay(
        &concatenated,
        &archived.dir.path().join("replay-of-subset"),
        &an_hour_of_allowance(),
    )?;
    assert!(
        replayed == features,
        "the subset's backfill differs from its replay"
    );
    // ...which is the original replay of the same events (the input's ge pageviews of that
    // date, in input order, with the default semantics).
    let input = std::fs::read_to_string(&archived.input)?;
    let mut kept = String::new();
    for line in input.lines() {
        let json: serde_json::Value = serde_json::from_str(line)?;
        let ts = json["ts"].as_u64().ok_or("no ts")?;
        let date = civil_date(ts / 86_400_000);
        if json["portal"] == "ge" && date == first_date {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let subset_input = archived.dir.path().join("subset-input.jsonl");
    std::fs::write(&subset_input, kept)?;
    let original = replay(
        &subset_input,
        &archived.dir.path().join("original-subset"),
        &[],
    )?;
    assert!(
        original == features,
        "the subset's backfill differs from its original replay"
    );
    Ok(())
}

/// `YYYY-MM-DD` of a day number since the Unix epoch (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[test]
fn an_empty_archive_or_range_fails_saying_what_was_looked_for() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out").to_string_lossy().to_string();

    // A directory without raw/ or archive/raw/.
    let nothing = dir.path().join("nothing");
    std::fs::create_dir_all(&nothing)?;
    let (code, stderr) = failing(
        &[
            "backfill",
            "--from",
            &nothing.to_string_lossy(),
            "--out",
            &out,
        ],
        &[],
    )?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("archive/raw/"), "{stderr}");
    assert!(stderr.contains("is --from the archive's root"), "{stderr}");

    // raw/ without a single hour's file.
    std::fs::create_dir_all(nothing.join("raw/portal=g1/date=2026-12-07"))?;
    let (code, stderr) = failing(
        &[
            "backfill",
            "--from",
            &nothing.to_string_lossy(),
            "--out",
            &out,
        ],
        &[],
    )?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no raw/portal=*/date=*/hour=*/ files under {}",
            nothing.display()
        )),
        "{stderr}"
    );

    // An archive, but nothing in the range.
    let hour = nothing.join("raw/portal=g1/date=2026-12-07/hour=10");
    std::fs::create_dir_all(&hour)?;
    std::fs::write(hour.join("part-0.jsonl"), b"")?;
    let (code, stderr) = failing(
        &[
            "backfill",
            "--from",
            &nothing.to_string_lossy(),
            "--from-date",
            "2026-12-08",
            "--out",
            &out,
        ],
        &[],
    )?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("for dates from 2026-12-08"), "{stderr}");

    // A reversed range, and a date that is not one.
    let (code, stderr) = failing(
        &[
            "backfill",
            "--from",
            &nothing.to_string_lossy(),
            "--from-date",
            "2026-12-08",
            "--to-date",
            "2026-12-07",
            "--out",
            &out,
        ],
        &[],
    )?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--from-date 2026-12-08 is after --to-date 2026-12-07"),
        "{stderr}"
    );
    let (code, stderr) = failing(
        &[
            "backfill",
            "--from",
            &nothing.to_string_lossy(),
            "--to-date",
            "2026-02-30",
            "--out",
            &out,
        ],
        &[],
    )?;
    // A malformed argument is a usage error, as for every command.
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`2026-02-30` is not a date"), "{stderr}");
    assert!(!Path::new(&out).exists(), "a failed backfill wrote {out}");
    Ok(())
}

/// Gzips `bytes` as the Firehose delivery stream does (`CompressionFormat: GZIP`).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_backfill_equals_the_original_replay() -> TestResult {
    let archived = archived()?;
    let original = std::fs::read(archived.original.join("features.jsonl"))?;
    let moto = MotoServer::start()?;
    let s3 = s3_client(&moto.endpoint);
    s3.create_bucket().bucket("archive").send().await?;

    // The raw archive as the Firehose delivery stream lays it out under the prefix `lake/`:
    // several gzip objects per partition (named by delivery time, so in arrival order), more
    // objects than one `ListObjectsV2` page holds (1,000), beside the error output.
    let files = raw_files(&archived.sinks.join("archive/raw"))?;
    let mut uploaded = 0;
    for (relative, path) in &files {
        let partition = relative.rsplit_once('/').map_or("", |(p, _)| p);
        let text = std::fs::read(path)?;
        let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
        for (index, chunk) in lines.chunks(5).enumerate() {
            let key = format!(
                "lake/raw/{partition}/pageflow-test-raw-1-2026-12-07-10-{:02}-{:02}-{index:06}.gz",
                index / 60,
                index % 60
            );
            s3.put_object()
                .bucket("archive")
                .key(key)
                .body(gzip(&chunk.concat())?.into())
                .send()
                .await?;
            uploaded += 1;
        }
    }
    assert!(
        uploaded > 1000,
        "{uploaded} objects fit in one listing page"
    );
    s3.put_object()
        .bucket("archive")
        .key("lake/errors/raw/processing-failed/date=2026-12-07/hour=10/x.gz")
        .body(gzip(b"{\"not\":\"an event\"}\n")?.into())
        .send()
        .await?;

    let config = archived.dir.path().join("aws.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            moto.endpoint
        ),
    )?;
    let config = config.to_string_lossy().to_string();
    let env = moto.env();
    let out = archived.dir.path().join("from-s3");
    let (features, summary) = tokio::task::block_in_place(|| {
        backfill(
            &["--from", "s3://archive/lake", "--config", &config],
            &out,
            &env,
        )
    })
    .map_err(|e| e.to_string())?;
    assert_eq!(summary["objects"], uploaded, "{summary}");
    assert!(
        features == original,
        "the S3 backfill's features differ from the original replay's"
    );

    // A prefix with nothing under it.
    let (code, stderr) = tokio::task::block_in_place(|| {
        failing(
            &[
                "backfill",
                "--from",
                "s3://archive/elsewhere",
                "--config",
                &config,
                "--out",
                &out.to_string_lossy(),
            ],
            &env,
        )
    })?;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "no raw/portal=*/date=*/hour=*/ objects under s3://archive/elsewhere; is --from the \
             archive's root"
        ),
        "{stderr}"
    );
    Ok(())
}

/// One pageview of `portal` at `ts`, read by `user` (as JSON without a line break).
fn pageview(portal: &str, user: u64, article: u64, ts: u64) -> String {
    format!(
        "{{\"event_id\":\"{portal}-{user}-{ts}\",\"portal\":\"{portal}\",\"user_id\":\"u{user}\",\
         \"article_id\":\"{portal}/news/a-{article}\",\"ts\":{ts},\"dwell_ms\":12000}}"
    )
}

#[test]
fn the_features_are_those_of_the_archive_order_even_where_it_makes_events_late() -> TestResult {
    // An archive whose order matters: the 10h file of g1 ends with an event of 12:30 (misfiled by
    // hand), so that the first half of g1's 11h events are late in backfill's order, though not
    // in event-time order. Backfill gives what replay gives for that order, not for another.
    let dir = tempfile::tempdir()?;
    let hour_ms = 3_600_000u64;
    let ten = 1_796_637_600_000u64; // 2026-12-07T10:00:00Z
    let mut files: Vec<(String, Vec<String>)> = Vec::new();
    for (portal, hour) in [("g1", 10u64), ("g1", 11), ("ge", 10), ("ge", 11)] {
        let start = ten + (hour - 10) * hour_ms;
        let mut lines: Vec<String> = (0..60)
            .map(|minute| pageview(portal, minute % 7, minute % 5, start + minute * 60_000))
            .collect();
        if portal == "g1" && hour == 10 {
            lines.push(pageview(portal, 99, 1, ten + 2 * hour_ms + hour_ms / 2));
        }
        files.push((
            format!("raw/portal={portal}/date=2026-12-07/hour={hour}/part-0.jsonl"),
            lines,
        ));
    }
    let mut concatenated = String::new();
    // Backfill's order: hour, then portal.
    for index in [0, 2, 1, 3] {
        let (relative, lines) = &files[index];
        let path = dir.path().join("archive").join(relative);
        std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &text)?;
        concatenated.push_str(&text);
    }
    let input = dir.path().join("concatenated.jsonl");
    std::fs::write(&input, concatenated)?;

    let out = dir.path().join("backfill");
    let (features, summary) = backfill(
        &["--from", &dir.path().join("archive").to_string_lossy()],
        &out,
        &[],
    )?;
    let replay_out = dir.path().join("replay");
    let replayed = replay(&input, &replay_out, &an_hour_of_allowance())?;
    assert!(!features.is_empty());
    assert!(
        features == replayed,
        "the backfill differs from the replay of its order"
    );
    let replay_summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(replay_out.join("summary.json"))?)?;
    assert!(summary["late"].as_u64() > Some(20), "{summary}");
    assert_eq!(summary["late"], replay_summary["late"]);

    // A late event's dead letter names the file and the line it was read from.
    let letters = std::fs::read_to_string(out.join("dead-letter.jsonl"))?;
    let first: serde_json::Value =
        serde_json::from_str(letters.lines().next().ok_or("no dead letter")?)?;
    assert_eq!(first["reason"], "late");
    let partition = first["partition"].as_str().unwrap_or_default();
    assert!(
        partition.starts_with("file:")
            && partition.ends_with("portal=g1/date=2026-12-07/hour=11/part-0.jsonl"),
        "{first}"
    );
    assert_eq!(first["position"], "1", "{first}");
    Ok(())
}
