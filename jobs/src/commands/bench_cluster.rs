//! `pageflow bench --cluster`: one job run as shapes of processes × workers on this machine.
//!
//! A shape `PxT` is `P` processes of `T` worker threads each (`pageflow run` with
//! `[cluster] addresses` on loopback and `[runtime] workers = T`). The bench generates one input
//! (the `pageflow generate` model, seed 7, as the other bench modes), splits it into `--files`
//! files by reader, and runs the whole job over them once per shape, each process a child of this
//! executable: files source, checkpoints on (default interval, a fresh local store), serving off.
//! It prints, per shape, the wall-clock time from the first spawn to the last exit, the records
//! read per second, the checkpoints committed, the peak resident set of every process (VmRSS
//! sampled every 100 ms) and the bytes of every process's features, and whether the processes'
//! features together are the one-process run's (never asserted: a figure, as every bench).
//!
//! Why split by reader: with one file only one worker reads (a file is one partition, placed by
//! the rendezvous hash); with several, reading is spread too. A reader's events all go to one
//! file, in the generator's order, so every file is a subsequence of the generated one and has no
//! event late against its own watermark when the generated file has none; that keeps a
//! multi-file run deterministic (`docs/cluster-design.md`, section 1), so the shapes' results
//! can be compared line for line.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

/// How often the children's resident sets are sampled.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// `P` processes of `T` worker threads each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Processes of the cluster (one: no `[cluster]` section).
    pub processes: usize,
    /// Worker threads per process (`[runtime] workers`).
    pub threads: usize,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.processes, self.threads)
    }
}

impl FromStr for Shape {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wrong = || {
            format!(
                "`{text}` is not a shape: write PROCESSESxTHREADS with both at least 1, e.g. `2x1`"
            )
        };
        let (processes, threads) = text.trim().split_once(['x', 'X']).ok_or_else(wrong)?;
        let processes: usize = processes.trim().parse().map_err(|_| wrong())?;
        let threads: usize = threads.trim().parse().map_err(|_| wrong())?;
        if processes == 0 || threads == 0 {
            return Err(wrong());
        }
        Ok(Shape { processes, threads })
    }
}

/// Parses a comma-separated list of shapes (`1x2,2x1`).
pub fn parse_shapes(text: &str) -> Result<Vec<Shape>, String> {
    let shapes = text
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Shape>, String>>()?;
    if shapes.is_empty() {
        return Err("--shapes names no shape: give e.g. `1x2,2x1`".to_string());
    }
    Ok(shapes)
}

/// What `pageflow bench --cluster` is told.
#[derive(Clone, Debug)]
pub struct ClusterBenchSettings {
    /// Events in the generated input.
    pub events: u64,
    /// Where the input is kept and the runs write (each run in a fresh directory under it).
    pub dir: PathBuf,
    /// The shapes to run, in order.
    pub shapes: Vec<Shape>,
    /// Files the input is split into, by reader.
    pub files: usize,
}

/// What one run of one shape measured.
#[derive(Clone, Debug)]
pub struct ShapeRun {
    /// The shape.
    pub shape: Shape,
    /// From the first spawn to the last exit.
    pub seconds: f64,
    /// Records read, every process's together.
    pub records: u64,
    /// Records read by each process.
    pub records_per_process: Vec<u64>,
    /// Checkpoints committed (process 0's log).
    pub checkpoints: usize,
    /// The largest resident set seen of each process, in bytes.
    pub peak_rss: Vec<u64>,
    /// The bytes of each process's features files.
    pub feature_bytes: Vec<u64>,
    /// Every process's feature lines together, as a multiset.
    pub features: LinesFingerprint,
}

/// An order-free fingerprint of a multiset of lines: their number and the wrapping sum of their
/// 128-bit hashes. Two runs that wrote the same lines in any order and split over any processes
/// have the same fingerprint; keeping it instead of the lines keeps the memory small when runs
/// write gigabytes of features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinesFingerprint {
    /// Lines counted.
    pub lines: u64,
    /// The wrapping sum of their xxh3-128 hashes.
    pub sum: u128,
}

impl LinesFingerprint {
    /// Counts one line (without its line end).
    pub fn add_line(&mut self, line: &[u8]) {
        self.lines += 1;
        self.sum = self.sum.wrapping_add(xxhash_rust::xxh3::xxh3_128(line));
    }

    /// The fingerprint of both multisets together.
    pub fn merge(self, other: LinesFingerprint) -> LinesFingerprint {
        LinesFingerprint {
            lines: self.lines + other.lines,
            sum: self.sum.wrapping_add(other.sum),
        }
    }
}

/// Runs every shape and prints the table; returns what each run measured.
pub fn run(settings: &ClusterBenchSettings) -> Result<Vec<ShapeRun>> {
    let dir = &settings.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let input = generated_input(settings.events, dir)?;
    let files = split_input(&input, settings.files.max(1))?;

    // The features every shape is compared with: a one-process run of the same files (the first
    // one-process shape, or an extra run of one process with the first shape's threads).
    let reference_shape = settings
        .shapes
        .iter()
        .copied()
        .find(|shape| shape.processes == 1);
    let mut reference = None;
    if reference_shape.is_none() {
        let shape = Shape {
            processes: 1,
            threads: settings.shapes[0].threads,
        };
        eprintln!("reference: one process ({shape}) over the same files, not in the table …");
        reference = Some(run_shape(shape, &files, dir)?.features);
    }
    let mut runs = Vec::new();
    for &shape in &settings.shapes {
        eprintln!("running {shape} over {} file(s) …", files.len());
        let measured = run_shape(shape, &files, dir)?;
        if Some(shape) == reference_shape && reference.is_none() {
            reference = Some(measured.features);
        }
        eprintln!(
            "  {shape}: {:.1} s, {} records, {} checkpoint(s)",
            measured.seconds, measured.records, measured.checkpoints
        );
        runs.push(measured);
    }
    let reference = reference.ok_or_else(|| anyhow!("no reference run"))?;
    print!("{}", table(&runs, &reference, settings.events, files.len()));
    Ok(runs)
}

/// The bench's generated input (the same file as the other bench modes: seed 7).
fn generated_input(events: u64, dir: &Path) -> Result<PathBuf> {
    let input = dir.join(format!("bench-{events}.jsonl"));
    if !input.exists() {
        eprintln!("generating {events} events into {} …", input.display());
        let partial = dir.join(format!("bench-{events}.jsonl.partial"));
        super::generate::run(
            events,
            &super::generate::GenerateOptions {
                seed: 7,
                ..Default::default()
            },
            &partial,
        )?;
        std::fs::rename(&partial, &input).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), input.display())
        })?;
    }
    Ok(input)
}

/// `input` split by reader into `files` files next to it (made once, reused after).
fn split_input(input: &Path, files: usize) -> Result<Vec<PathBuf>> {
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input");
    let dir = input.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = (0..files)
        .map(|i| dir.join(format!("{stem}-by-reader-{i}-of-{files}.jsonl")))
        .collect();
    if paths.iter().all(|path| path.exists()) {
        return Ok(paths);
    }
    eprintln!(
        "splitting {} into {files} file(s) by reader …",
        input.display()
    );
    let reader = BufReader::with_capacity(
        1 << 20,
        File::open(input).with_context(|| format!("cannot open {}", input.display()))?,
    );
    let partials: Vec<PathBuf> = paths
        .iter()
        .map(|path| path.with_extension("jsonl.partial"))
        .collect();
    let mut writers = partials
        .iter()
        .map(|path| {
            File::create(path)
                .map(|file| BufWriter::with_capacity(1 << 20, file))
                .with_context(|| format!("cannot create {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    split_by_reader(reader, &mut writers)
        .with_context(|| format!("splitting {}", input.display()))?;
    for writer in writers {
        writer
            .into_inner()
            .map_err(|e| anyhow!("cannot write a split file: {}", e.error()))?;
    }
    for (partial, path) in partials.iter().zip(&paths) {
        std::fs::rename(partial, path).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), path.display())
        })?;
    }
    Ok(paths)
}

/// Only the reader of a pageview line.
#[derive(Deserialize)]
struct ReaderOf<'a> {
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
}

/// Which of `files` files a line goes to: by its `user_id` (a stable hash), so that a reader's
/// events stay together and in order; a line without one (malformed) goes to the first file.
pub fn file_of_line(line: &str, files: usize) -> usize {
    let user = serde_json::from_str::<ReaderOf<'_>>(line)
        .ok()
        .and_then(|line| line.user_id);
    match user {
        Some(user) => (xxhash_rust::xxh3::xxh3_64(user.as_bytes()) % files as u64) as usize,
        None => 0,
    }
}

/// Copies every line of `input` to the writer [`file_of_line`] picks, in input order; the lines
/// written to each.
pub fn split_by_reader<W: Write>(input: impl BufRead, outputs: &mut [W]) -> Result<Vec<u64>> {
    let mut written = vec![0u64; outputs.len()];
    for line in input.lines() {
        let line = line.context("cannot read a line of the input")?;
        if line.is_empty() {
            continue;
        }
        let file = file_of_line(&line, outputs.len());
        outputs[file]
            .write_all(line.as_bytes())
            .and_then(|()| outputs[file].write_all(b"\n"))
            .context("cannot write a split file")?;
        written[file] += 1;
    }
    Ok(written)
}

/// Loopback addresses with ports the OS handed out (released again for the processes to bind).
fn free_addresses(n: usize) -> Result<Vec<String>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot bind a loopback port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}

/// The processes of one run; any still running are killed when dropped (a failed run).
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The configuration of one process of `shape` (the cluster's addresses, if more than one).
fn run_config(files: &[PathBuf], data: &Path, shape: Shape, addresses: &[String]) -> String {
    let paths: Vec<String> = files.iter().map(|p| format!("'{}'", p.display())).collect();
    let mut text = format!(
        "[source]\nkind = \"files\"\npaths = [{}]\n\n\
         [sinks]\nkind = \"local\"\ndir = '{}'\narchive = false\ncurated = false\n\n\
         [sinks.retention]\nenabled = false\n\n\
         [serve]\nenabled = false\n\n\
         [runtime]\nworkers = {}\n\n\
         [checkpoint]\nenabled = true\n",
        paths.join(", "),
        data.display(),
        shape.threads
    );
    if shape.processes > 1 {
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        text += &format!("\n[cluster]\naddresses = [{}]\n", list.join(", "));
    }
    text
}

/// Runs the job once as `shape` over `files` in a fresh directory under `dir`.
fn run_shape(shape: Shape, files: &[PathBuf], dir: &Path) -> Result<ShapeRun> {
    let work = dir.join(format!("cluster-{shape}"));
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let data = work.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let addresses = free_addresses(shape.processes)?;
    let config = work.join("pageflow.toml");
    std::fs::write(&config, run_config(files, &data, shape, &addresses))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let exe = std::env::current_exe().context("cannot find the pageflow binary")?;
    let logs: Vec<PathBuf> = (0..shape.processes)
        .map(|p| work.join(format!("process-{p}.log")))
        .collect();

    let started = Instant::now();
    let mut processes = Processes(Vec::new());
    for (process, log) in logs.iter().enumerate() {
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(&exe);
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("PAGEFLOW__CLUSTER__PROCESS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        if shape.processes > 1 {
            command.args(["--process", &process.to_string()]);
        }
        processes.0.push(
            command
                .spawn()
                .with_context(|| format!("cannot start process {process} of {shape}"))?,
        );
    }

    // Wait for every process, sampling their resident sets meanwhile.
    let mut peak_rss = vec![0u64; shape.processes];
    let mut ended: Vec<Option<i32>> = vec![None; shape.processes];
    while ended.iter().any(Option::is_none) {
        for (p, child) in processes.0.iter_mut().enumerate() {
            if ended[p].is_some() {
                continue;
            }
            if let Some(rss) = rss_of(child.id()) {
                peak_rss[p] = peak_rss[p].max(rss);
            }
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("cannot wait for process {p} of {shape}"))?
            {
                let code = status.code().unwrap_or(-1);
                if code != 0 {
                    bail!(
                        "process {p} of {shape} exited with {code}; the end of its log ({}):\n{}",
                        logs[p].display(),
                        log_tail(&logs[p])
                    );
                }
                ended[p] = Some(code);
            }
        }
        if ended.iter().any(Option::is_none) {
            std::thread::sleep(RSS_SAMPLE_EVERY);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(processes);

    let texts = logs
        .iter()
        .map(|log| {
            std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let records_per_process = texts
        .iter()
        .zip(&logs)
        .map(|(text, log)| {
            records_read(text).ok_or_else(|| {
                anyhow!(
                    "{} does not say how many records the process read (no \"the input has ended\" line)",
                    log.display()
                )
            })
        })
        .collect::<Result<Vec<u64>>>()?;
    let checkpoints = texts[0].matches("checkpoint committed").count();

    let mut feature_bytes = Vec::new();
    let mut features = LinesFingerprint::default();
    for process in 0..shape.processes {
        let out = if shape.processes > 1 {
            data.join(format!("process-{process}"))
        } else {
            data.clone()
        };
        let (bytes, fingerprint) = features_of(&out)?;
        feature_bytes.push(bytes);
        features = features.merge(fingerprint);
    }
    // The features can take gigabytes: only the figures and the logs are kept.
    std::fs::remove_dir_all(&data).with_context(|| format!("cannot remove {}", data.display()))?;
    Ok(ShapeRun {
        shape,
        seconds,
        records: records_per_process.iter().sum(),
        records_per_process,
        checkpoints,
        peak_rss,
        feature_bytes,
        features,
    })
}

/// The resident set of a running process, in bytes (Linux).
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The last lines of a log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// How many records a process says it read in its last words.
pub fn records_read(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("the input has ended"))?;
    let number = |text: &str| text.trim().parse::<u64>().ok();
    if let Some((_, rest)) = line.split_once(" read ") {
        // "… (process I read N records)"
        return number(rest.split(" records").next()?);
    }
    // "… (N records read)"
    let (before, _) = line.split_once(" records read")?;
    number(before.rsplit('(').next()?)
}

/// The bytes of every `features*.jsonl` file in `dir` and the fingerprint of their lines.
fn features_of(dir: &Path) -> Result<(u64, LinesFingerprint)> {
    let mut bytes = 0;
    let mut fingerprint = LinesFingerprint::default();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("features") && name.ends_with(".jsonl")) {
            continue;
        }
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        bytes += file
            .metadata()
            .with_context(|| format!("cannot read the size of {}", path.display()))?
            .len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if read == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            fingerprint.add_line(&line);
        }
    }
    Ok((bytes, fingerprint))
}

/// The figures as a Markdown table, with how they were taken.
fn table(runs: &[ShapeRun], reference: &LinesFingerprint, events: u64, files: usize) -> String {
    let mib = |bytes: u64| format!("{:.0}", bytes as f64 / (1024.0 * 1024.0));
    let list = |values: Vec<String>| values.join(" / ");
    let mut out = format!(
        "\n{events} generated events in {files} file(s) split by reader; `pageflow run`, files \
         source, checkpoints on (default interval), serving off; every process on this machine, \
         loopback.\n\n\
         | shape | seconds | events/s | checkpoints | records read per process | peak RSS per process (MiB) | features per process (MiB) | same results |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    );
    for run in runs {
        out += &format!(
            "| {} | {:.1} | {:.0} | {} | {} | {} | {} | {} |\n",
            run.shape,
            run.seconds,
            run.records as f64 / run.seconds,
            run.checkpoints,
            list(run.records_per_process.iter().map(u64::to_string).collect()),
            list(run.peak_rss.iter().map(|b| mib(*b)).collect()),
            list(run.feature_bytes.iter().map(|b| mib(*b)).collect()),
            if run.features == *reference {
                "yes"
            } else {
                "no"
            }
        );
    }
    let same = runs.iter().all(|run| run.features == *reference);
    out += &format!(
        "\nsame results: {} (every shape's features together, as a multiset of lines, against one process; {} lines)\n",
        if same { "yes" } else { "no" },
        reference.lines
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_wrong_ones_are_named() {
        assert_eq!(
            parse_shapes("1x2,2x1, 2X2").unwrap(),
            vec![
                Shape {
                    processes: 1,
                    threads: 2
                },
                Shape {
                    processes: 2,
                    threads: 1
                },
                Shape {
                    processes: 2,
                    threads: 2
                },
            ]
        );
        assert_eq!(Shape::from_str("3x4").unwrap().to_string(), "3x4");
        for wrong in ["2", "0x1", "1x0", "ax1", "1x", "1x2x3"] {
            let problem = parse_shapes(wrong).unwrap_err();
            assert!(problem.contains(wrong), "{problem}");
        }
        assert!(parse_shapes(" , ").is_err());
    }

    #[test]
    fn splitting_by_reader_keeps_each_readers_events_in_one_file_in_order() {
        let mut input = String::new();
        for n in 0..600 {
            let user = format!("u{}", (n * 7) % 37);
            input += &format!("{{\"event_id\":\"e{n}\",\"user_id\":\"{user}\",\"ts\":{n}}}\n");
        }
        input += "not json\n";
        let mut outputs = vec![Vec::new(); 4];
        let written = split_by_reader(input.as_bytes(), &mut outputs).unwrap();
        assert_eq!(written.iter().sum::<u64>(), 601);
        assert!(
            written.iter().all(|&n| n > 0),
            "37 readers over 4 files leave none empty: {written:?}"
        );

        let mut file_of_user = std::collections::HashMap::new();
        let mut seen = 0;
        for (file, output) in outputs.iter().enumerate() {
            let text = String::from_utf8(output.clone()).unwrap();
            let mut last_of_user = std::collections::HashMap::new();
            for line in text.lines() {
                seen += 1;
                let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
                    assert_eq!(file, 0, "a line without a reader goes to the first file");
                    continue;
                };
                let user = json["user_id"].as_str().unwrap().to_string();
                let ts = json["ts"].as_u64().unwrap();
                assert_eq!(
                    *file_of_user.entry(user.clone()).or_insert(file),
                    file,
                    "{user} is in two files"
                );
                if let Some(last) = last_of_user.insert(user.clone(), ts) {
                    assert!(last < ts, "{user}'s events are out of order in file {file}");
                }
            }
        }
        assert_eq!(seen, 601);
    }

    #[test]
    fn a_process_says_how_many_records_it_read() {
        assert_eq!(
            records_read(
                "x\npageflow: the input has ended; every result is written (process 1 read 1234 records)\n"
            ),
            Some(1234)
        );
        assert_eq!(
            records_read(
                "pageflow: the input has ended; every result is written (99 records read)"
            ),
            Some(99)
        );
        assert_eq!(records_read("pageflow: stopped"), None);
    }

    #[test]
    fn the_fingerprint_ignores_order_and_split_but_not_content() {
        let lines = ["a", "b", "c", "c"];
        let mut whole = LinesFingerprint::default();
        for line in lines {
            whole.add_line(line.as_bytes());
        }
        let (mut first, mut second) = (LinesFingerprint::default(), LinesFingerprint::default());
        for line in ["c", "a"] {
            first.add_line(line.as_bytes());
        }
        for line in ["c", "b"] {
            second.add_line(line.as_bytes());
        }
        assert_eq!(first.merge(second), whole);
        let mut other = LinesFingerprint::default();
        for line in ["a", "b", "c", "d"] {
            other.add_line(line.as_bytes());
        }
        assert_ne!(other, whole);
    }
}
