//! Local sinks: the job's outputs as files under one root directory.
//!
//! The concepts:
//!
//! - **[`Sink`]** is the small lifecycle every output implements (local files now, Kinesis and
//!   Firehose later): `write_batch` hands over records, `flush` makes everything written so far
//!   durable (or delivered), `close` flushes and releases resources. Errors are [`ConnectorError`]s,
//!   which say whether a retry can help.
//! - **Features file.** [`FeatureFileSink`] appends the features stream, one JSON object per line,
//!   to `<root>/features.jsonl`: the local stand-in for the second Kinesis stream. With a
//!   [`RollPolicy`] it rolls like a Flink file sink's part file: once `features.jsonl` is over a size
//!   or has been written for longer than an interval, it is closed and renamed
//!   `features-<unix-ms>.jsonl` (the time it was rolled) and a new `features.jsonl` is started.
//!   Readers take every `features*.jsonl` file; [`crate::files::retention`] deletes the oldest rolled ones.
//! - **Archive.** [`ArchiveSink`] writes newline-delimited JSON laid out like the Firehose-to-S3
//!   archive, partitioned by layer, portal and event hour (UTC):
//!   `<root>/archive/{raw,processed,dead-letter}/portal=<portal>/date=YYYY-MM-DD/hour=HH/part-<writer-id>.jsonl`.
//!   `raw/` takes each valid event's bytes as received (partitioned by its `ts`), `processed/` the
//!   features (by [`Feature::final_ts`]), `dead-letter/` the dead letters (by their `portal` and
//!   `ts` when known). What is not known goes to `portal=_unknown` and `date=unknown/hour=unknown`;
//!   a portal that is not a valid portal name (so could not be a safe directory name) is `_unknown`
//!   too. Each writer (worker) has its own `part-<writer-id>.jsonl` files, so writers never share a
//!   file.
//! - **Open-file budget.** An archive touches one file per (layer, portal, hour); a long replay
//!   touches thousands. [`ArchiveSink`] keeps at most [`DEFAULT_MAX_OPEN_FILES`] (configurable) open,
//!   closing the least recently used one (after flushing it) when it needs another, and re-opens
//!   files in append mode. So the number of file descriptors stays bounded.
//! - **Civil time without a date crate.** [`UtcHour::from_millis`] turns a timestamp into its UTC
//!   date and hour with the days-to-civil algorithm (Howard Hinnant's `civil_from_days`).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pageflow_dataflow::event::{DeadLetter, is_valid_portal};
use pageflow_dataflow::features::Feature;

use crate::error::ConnectorError;

/// An output of the job, with the lifecycle shared by local files and remote streams.
///
/// Records written are not guaranteed durable (or delivered) until [`Sink::flush`] returns `Ok`.
/// After [`Sink::close`] every call fails with [`ConnectorError::Closed`]. Dropping a sink without
/// closing it flushes on a best-effort basis but cannot report errors: close sinks explicitly.
pub trait Sink<T>: Send {
    /// Writes `records`, in order.
    fn write_batch(&mut self, records: &[T]) -> Result<(), ConnectorError>;

    /// Makes everything written so far durable (or delivered).
    fn flush(&mut self) -> Result<(), ConnectorError>;

    /// Flushes and releases the sink's resources; the sink cannot be used afterwards.
    fn close(&mut self) -> Result<(), ConnectorError>;
}

/// The size of each file's write buffer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Milliseconds in an hour.
const MILLIS_PER_HOUR: u64 = 3_600_000;

/// The file name of the features stream under the root.
pub const FEATURES_FILE_NAME: &str = "features.jsonl";

/// When the features file is rolled (closed, renamed, and started again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollPolicy {
    /// Roll once the file holds at least this many bytes.
    pub max_bytes: u64,
    /// Roll once the file has been written for this long.
    pub max_age: std::time::Duration,
}

/// Appends the features stream to `<root>/features.jsonl`, one JSON object per line.
#[derive(Debug)]
pub struct FeatureFileSink {
    /// `<root>/features.jsonl`.
    path: PathBuf,
    /// The buffered file; `None` once closed.
    writer: Option<BufWriter<File>>,
    /// When to roll; `None`: never.
    roll: Option<RollPolicy>,
    /// The bytes in the file (what was there when it was opened, and what was written since).
    bytes: u64,
    /// When this file was started (or opened).
    started: SystemTime,
}

impl FeatureFileSink {
    /// Opens (creating it and `root` if needed) `<root>/features.jsonl` for appending.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        let root = root.as_ref();
        create_dir_all(root)?;
        let path = root.join(FEATURES_FILE_NAME);
        let file = open_for_append(&path)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(FeatureFileSink {
            path,
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            roll: None,
            bytes,
            started: SystemTime::now(),
        })
    }

    /// Rolls the file by `policy` (see the module docs); `started` is when the current file counts
    /// as started (the caller's clock, usually now).
    pub fn with_rolling(mut self, policy: RollPolicy, started: SystemTime) -> Self {
        self.roll = Some(policy);
        self.started = started;
        self
    }

    /// Rolls the file if it is due at `now`: flushes and renames it `features-<unix-ms>.jsonl` and
    /// starts a new `features.jsonl`. Returns the rolled file's path. Never rolls an empty file.
    pub fn roll_if_due(&mut self, now: SystemTime) -> Result<Option<PathBuf>, ConnectorError> {
        let Some(policy) = self.roll else {
            return Ok(None);
        };
        let age = now.duration_since(self.started).unwrap_or_default();
        if self.bytes == 0 || (self.bytes < policy.max_bytes && age < policy.max_age) {
            return Ok(None);
        }
        self.flush()?;
        self.writer = None;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let millis = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut rolled = dir.join(format!("features-{millis}.jsonl"));
        let mut suffix = 1;
        while rolled.exists() {
            rolled = dir.join(format!("features-{millis}-{suffix}.jsonl"));
            suffix += 1;
        }
        fs::rename(&self.path, &rolled).map_err(|source| ConnectorError::Write {
            path: rolled.clone(),
            source,
        })?;
        let file = open_for_append(&self.path)?;
        self.writer = Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file));
        self.bytes = 0;
        self.started = now;
        Ok(Some(rolled))
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one feature as a JSON line.
    pub fn write(&mut self, feature: &Feature) -> Result<(), ConnectorError> {
        self.write_line(feature.to_json().as_bytes())
    }

    /// Appends `json` (one JSON object without a line break) and a line break.
    pub fn write_line(&mut self, json: &[u8]) -> Result<(), ConnectorError> {
        let writer = self.writer.as_mut().ok_or_else(|| closed(&self.path))?;
        write_line(writer, json).map_err(|source| ConnectorError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.bytes += json.len() as u64 + 1;
        Ok(())
    }

    /// Writes the buffered lines to the file.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        let writer = self.writer.as_mut().ok_or_else(|| closed(&self.path))?;
        writer.flush().map_err(|source| ConnectorError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes and closes the file; later calls fail with [`ConnectorError::Closed`].
    pub fn close(&mut self) -> Result<(), ConnectorError> {
        self.flush()?;
        self.writer = None;
        Ok(())
    }
}

impl Sink<Feature> for FeatureFileSink {
    fn write_batch(&mut self, records: &[Feature]) -> Result<(), ConnectorError> {
        records.iter().try_for_each(|feature| self.write(feature))
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        FeatureFileSink::flush(self)
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        FeatureFileSink::close(self)
    }
}

/// The three layers of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArchiveLayer {
    /// Every valid event as received.
    Raw,
    /// The features.
    Processed,
    /// The dead letters.
    DeadLetter,
}

impl ArchiveLayer {
    /// The layer's directory name: `raw`, `processed` or `dead-letter`.
    pub fn dir_name(self) -> &'static str {
        match self {
            ArchiveLayer::Raw => "raw",
            ArchiveLayer::Processed => "processed",
            ArchiveLayer::DeadLetter => "dead-letter",
        }
    }
}

/// One record for the archive, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum ArchiveRecord<'a> {
    /// A valid event's bytes as received, with its portal and `ts`.
    Raw {
        /// The event's portal.
        portal: &'a str,
        /// The event's `ts`.
        ts: u64,
        /// The record's bytes (without a line break).
        bytes: &'a [u8],
    },
    /// A feature (goes to `processed/`).
    Feature(&'a Feature),
    /// A dead letter.
    DeadLetter(&'a DeadLetter),
}

/// The directory name used when a dead letter's portal is not known (or not a valid portal name).
pub const UNKNOWN_PORTAL: &str = "_unknown";

/// At most this many archive files are open at once unless configured otherwise.
pub const DEFAULT_MAX_OPEN_FILES: usize = 64;

/// The archive under `<root>/archive`, written by one writer (see the module docs for the layout).
#[derive(Debug)]
pub struct ArchiveSink {
    /// `<root>/archive`.
    archive_root: PathBuf,
    /// Names this writer's part files.
    writer_id: String,
    /// The open part files, at most `max_open_files`.
    open_parts: Vec<OpenPart>,
    /// The open-file budget.
    max_open_files: usize,
    /// Counts file uses, for least-recently-used eviction.
    use_clock: u64,
    /// Whether [`ArchiveSink::close`] was called.
    closed: bool,
    /// Reused to turn raw bytes into one line.
    line_scratch: Vec<u8>,
}

/// Which part file a record belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PartKey {
    /// The layer.
    layer: ArchiveLayer,
    /// The portal directory name (already made safe).
    portal: String,
    /// Hours since the epoch, if the record's time is known.
    hour: Option<u64>,
}

/// An open part file.
#[derive(Debug)]
struct OpenPart {
    /// Which part.
    key: PartKey,
    /// Its path.
    path: PathBuf,
    /// The buffered file.
    writer: BufWriter<File>,
    /// When it was last used (by `use_clock`).
    last_used: u64,
}

impl ArchiveSink {
    /// An archive under `<root>/archive` whose files are named `part-<writer_id>.jsonl`.
    ///
    /// `writer_id` must be non-empty and use only ASCII letters, digits, `-`, `_` and `.`.
    pub fn new(root: impl AsRef<Path>, writer_id: &str) -> Result<Self, ConnectorError> {
        let valid_id = !writer_id.is_empty()
            && writer_id != "."
            && writer_id != ".."
            && writer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_id {
            return Err(ConnectorError::InvalidConfig {
                what: "archive",
                problems: vec![format!(
                    "writer id `{writer_id}` is not a safe file name part: use ASCII letters, digits, \
                     `-`, `_` or `.`, e.g. `worker-0`"
                )],
            });
        }
        let archive_root = root.as_ref().join("archive");
        create_dir_all(&archive_root)?;
        Ok(ArchiveSink {
            archive_root,
            writer_id: writer_id.to_string(),
            open_parts: Vec::new(),
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            use_clock: 0,
            closed: false,
            line_scratch: Vec::new(),
        })
    }

    /// Sets the open-file budget (at least 1; default [`DEFAULT_MAX_OPEN_FILES`]).
    pub fn with_max_open_files(mut self, max_open_files: usize) -> Self {
        self.max_open_files = max_open_files.max(1);
        self
    }

    /// `<root>/archive`.
    pub fn archive_root(&self) -> &Path {
        &self.archive_root
    }

    /// How many files are open now (never more than the budget).
    pub fn open_files(&self) -> usize {
        self.open_parts.len()
    }

    /// The files open now: being written, so retention must leave them.
    pub fn open_paths(&self) -> impl Iterator<Item = &Path> {
        self.open_parts.iter().map(|part| part.path.as_path())
    }

    /// A mark of the writes so far, for [`ArchiveSink::close_parts_unused_since`].
    pub fn use_mark(&self) -> u64 {
        self.use_clock
    }

    /// Flushes and closes the files not written since `mark` (an earlier [`ArchiveSink::use_mark`]):
    /// the hours the data has moved past, so that retention may delete them. A late record
    /// re-opens its file in append mode. Returns how many were closed.
    pub fn close_parts_unused_since(&mut self, mark: u64) -> Result<usize, ConnectorError> {
        let mut closed = 0;
        let mut index = 0;
        while index < self.open_parts.len() {
            let part = &mut self.open_parts[index];
            if part.last_used > mark {
                index += 1;
                continue;
            }
            part.writer
                .flush()
                .map_err(|source| ConnectorError::Write {
                    path: part.path.clone(),
                    source,
                })?;
            self.open_parts.swap_remove(index);
            closed += 1;
        }
        Ok(closed)
    }

    /// The part file a record of `layer` with `portal` and `ts` goes to.
    ///
    /// A missing or invalid portal becomes `portal=_unknown`; a missing `ts` becomes
    /// `date=unknown/hour=unknown`.
    pub fn part_path(&self, layer: ArchiveLayer, portal: Option<&str>, ts: Option<u64>) -> PathBuf {
        let key = PartKey {
            layer,
            portal: portal_dir_name(portal).to_string(),
            hour: ts.map(|ts| ts / MILLIS_PER_HOUR),
        };
        self.path_of(&key)
    }

    /// Appends a valid event's bytes, as received, to `raw/` (by `portal` and the event's `ts`).
    ///
    /// Line breaks inside the bytes (JSON whitespace between tokens; a valid record cannot have
    /// them inside strings) become spaces so that each record stays one line.
    pub fn write_raw(&mut self, portal: &str, ts: u64, bytes: &[u8]) -> Result<(), ConnectorError> {
        let mut line = std::mem::take(&mut self.line_scratch);
        line.clear();
        line.extend(
            bytes
                .iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        let result = self.append(ArchiveLayer::Raw, Some(portal), Some(ts), &line);
        self.line_scratch = line;
        result
    }

    /// Appends a feature to `processed/` (by its portal and [`Feature::final_ts`]).
    pub fn write_feature(&mut self, feature: &Feature) -> Result<(), ConnectorError> {
        let json = feature.to_json();
        self.append(
            ArchiveLayer::Processed,
            Some(feature.portal()),
            Some(feature.final_ts()),
            json.as_bytes(),
        )
    }

    /// Appends a dead letter to `dead-letter/` (by its portal and `ts`, when known).
    pub fn write_dead_letter(&mut self, dead_letter: &DeadLetter) -> Result<(), ConnectorError> {
        let json = dead_letter.to_json();
        self.append(
            ArchiveLayer::DeadLetter,
            dead_letter.portal.as_deref(),
            dead_letter.ts,
            json.as_bytes(),
        )
    }

    /// Writes the buffered lines of every open file.
    pub fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.closed {
            return Err(closed(&self.archive_root));
        }
        for part in &mut self.open_parts {
            part.writer
                .flush()
                .map_err(|source| ConnectorError::Write {
                    path: part.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Flushes and closes every file; later calls fail with [`ConnectorError::Closed`].
    pub fn close(&mut self) -> Result<(), ConnectorError> {
        self.flush()?;
        self.open_parts.clear();
        self.closed = true;
        Ok(())
    }

    /// Appends `json` and a line break to the part file of (`layer`, `portal`, `ts`).
    fn append(
        &mut self,
        layer: ArchiveLayer,
        portal: Option<&str>,
        ts: Option<u64>,
        json: &[u8],
    ) -> Result<(), ConnectorError> {
        if self.closed {
            return Err(closed(&self.archive_root));
        }
        let portal = portal_dir_name(portal);
        let hour = ts.map(|ts| ts / MILLIS_PER_HOUR);
        let index = match self.open_parts.iter().position(|part| {
            part.key.layer == layer && part.key.hour == hour && part.key.portal == portal
        }) {
            Some(index) => index,
            None => self.open_part(PartKey {
                layer,
                portal: portal.to_string(),
                hour,
            })?,
        };
        self.use_clock += 1;
        let part = &mut self.open_parts[index];
        part.last_used = self.use_clock;
        write_line(&mut part.writer, json).map_err(|source| ConnectorError::Write {
            path: part.path.clone(),
            source,
        })
    }

    /// Opens the part file of `key` (closing the least recently used one if the budget is spent)
    /// and returns its index in `open_parts`.
    fn open_part(&mut self, key: PartKey) -> Result<usize, ConnectorError> {
        if self.open_parts.len() >= self.max_open_files {
            let oldest = self
                .open_parts
                .iter()
                .enumerate()
                .min_by_key(|(_, part)| part.last_used)
                .map(|(index, _)| index);
            if let Some(oldest) = oldest {
                let mut evicted = self.open_parts.swap_remove(oldest);
                evicted
                    .writer
                    .flush()
                    .map_err(|source| ConnectorError::Write {
                        path: evicted.path.clone(),
                        source,
                    })?;
            }
        }
        let path = self.path_of(&key);
        if let Some(directory) = path.parent() {
            create_dir_all(directory)?;
        }
        let file = open_for_append(&path)?;
        self.open_parts.push(OpenPart {
            key,
            path,
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            last_used: self.use_clock,
        });
        Ok(self.open_parts.len() - 1)
    }

    /// The path of a part file.
    fn path_of(&self, key: &PartKey) -> PathBuf {
        let mut path = self.archive_root.join(key.layer.dir_name());
        path.push(format!("portal={}", key.portal));
        match key.hour {
            Some(hour) => {
                let utc = UtcHour::from_millis(hour * MILLIS_PER_HOUR);
                path.push(format!("date={}", utc.date()));
                path.push(format!("hour={:02}", utc.hour));
            }
            None => {
                path.push("date=unknown");
                path.push("hour=unknown");
            }
        }
        path.push(format!("part-{}.jsonl", self.writer_id));
        path
    }
}

impl<'a> Sink<ArchiveRecord<'a>> for ArchiveSink {
    fn write_batch(&mut self, records: &[ArchiveRecord<'a>]) -> Result<(), ConnectorError> {
        records.iter().try_for_each(|record| match *record {
            ArchiveRecord::Raw { portal, ts, bytes } => self.write_raw(portal, ts, bytes),
            ArchiveRecord::Feature(feature) => self.write_feature(feature),
            ArchiveRecord::DeadLetter(dead_letter) => self.write_dead_letter(dead_letter),
        })
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        ArchiveSink::flush(self)
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        ArchiveSink::close(self)
    }
}

/// The directory name for a portal: itself when valid, else [`UNKNOWN_PORTAL`].
fn portal_dir_name(portal: Option<&str>) -> &str {
    match portal {
        Some(portal) if is_valid_portal(portal) => portal,
        _ => UNKNOWN_PORTAL,
    }
}

/// Writes `json` and a line break.
fn write_line(writer: &mut impl Write, json: &[u8]) -> std::io::Result<()> {
    writer.write_all(json)?;
    writer.write_all(b"\n")
}

/// `fs::create_dir_all` with the crate's error.
fn create_dir_all(path: &Path) -> Result<(), ConnectorError> {
    fs::create_dir_all(path).map_err(|source| ConnectorError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens `path` for appending, creating it if needed.
///
/// A line cut short by a crash (the file does not end with a line break) is removed first: its
/// record came after the last checkpoint, so the restarted job writes it again, whole.
fn open_for_append(path: &Path) -> Result<File, ConnectorError> {
    let open_error = |source| ConnectorError::Open {
        path: path.to_path_buf(),
        source,
    };
    drop_torn_line(path).map_err(open_error)?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(open_error)
}

/// Truncates `path` after its last line break, if it has a partial last line.
fn drop_torn_line(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    if length == 0 {
        return Ok(());
    }
    // Look back in blocks for the last line break.
    let mut end = length;
    let mut block = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(block.len() as u64);
        let size = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..size])?;
        if end == length && block[size - 1] == b'\n' {
            return Ok(()); // ends with a whole line
        }
        if let Some(at) = memchr::memrchr(b'\n', &block[..size]) {
            let keep = start + at as u64 + 1;
            tracing::warn!(
                file = %path.display(),
                dropped_bytes = length - keep,
                "dropping a line cut short by a crash; the restarted job writes its record again"
            );
            return file.set_len(keep);
        }
        if start == 0 {
            tracing::warn!(file = %path.display(), "dropping a file holding only a line cut short by a crash");
            return file.set_len(0);
        }
        end = start;
    }
}

/// The error for a closed sink.
fn closed(path: &Path) -> ConnectorError {
    ConnectorError::Closed {
        sink: path.display().to_string(),
    }
}

/// A UTC calendar date and hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcHour {
    /// The year (proleptic Gregorian).
    pub year: i64,
    /// The month, 1..=12.
    pub month: u32,
    /// The day of the month, 1..=31.
    pub day: u32,
    /// The hour, 0..=23.
    pub hour: u32,
}

impl UtcHour {
    /// The UTC date and hour of `ts_ms` milliseconds since the Unix epoch.
    pub fn from_millis(ts_ms: u64) -> Self {
        const MILLIS_PER_DAY: u64 = 24 * MILLIS_PER_HOUR;
        // u64 milliseconds cover ~5.8e8 years; their day count always fits in an i64.
        let days = i64::try_from(ts_ms / MILLIS_PER_DAY).unwrap_or(i64::MAX);
        let (year, month, day) = civil_from_days(days);
        // Below 24 by construction.
        let hour = ((ts_ms % MILLIS_PER_DAY) / MILLIS_PER_HOUR) as u32;
        UtcHour {
            year,
            month,
            day,
            hour,
        }
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The proleptic Gregorian `(year, month, day)` of a day count since 1970-01-01.
///
/// Howard Hinnant's `civil_from_days` (<http://howardhinnant.github.io/date_algorithms.html>): shift
/// the epoch to 0000-03-01 so leap days end a year, split into 400-year eras of 146097 days, then
/// find the year of the era, the day of the year and the month from it.
pub fn civil_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    let z = days_since_epoch.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_index = (5 * day_of_year + 2) / 153; // [0, 11], March first
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32; // [1, 31]
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use pageflow_dataflow::event::{Reason, SourcePosition};
    use pageflow_dataflow::features::{Feature, RankedItem, RankingKind};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Days since the epoch counted the slow way: whole years, then whole months.
    fn naive_days(year: i64, month: u32, day: u32) -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for y in 1970..year {
            days += if leap(y) { 366 } else { 365 };
        }
        let month_days = [
            31,
            if leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        for m in 1..month {
            days += month_days[(m - 1) as usize];
        }
        days + i64::from(day) - 1
    }

    #[test]
    fn the_features_file_rolls_by_size_and_by_age_on_the_injected_clock() -> TestResult {
        let root = tempfile::tempdir()?;
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let hour = std::time::Duration::from_secs(3600);
        let policy = RollPolicy {
            max_bytes: 10,
            max_age: hour,
        };
        let mut sink = FeatureFileSink::open(root.path())?.with_rolling(policy, t0);
        // Empty: nothing to roll, however old.
        assert_eq!(sink.roll_if_due(t0 + 2 * hour)?, None);
        sink.write_line(b"{\"a\":1}")?; // 8 bytes with the line break
        assert_eq!(sink.roll_if_due(t0)?, None, "under the size and young");
        sink.write_line(b"{}")?; // 11 bytes: over the size
        let rolled = sink.roll_if_due(t0)?.ok_or("rolled by size")?;
        assert_eq!(std::fs::read_to_string(&rolled)?, "{\"a\":1}\n{}\n");
        assert_eq!(
            rolled.file_name().and_then(|n| n.to_str()),
            Some("features-1700000000000.jsonl")
        );
        // The new file is young and small; an hour later it rolls by age.
        sink.write_line(b"{}")?;
        assert_eq!(sink.roll_if_due(t0 + hour / 2)?, None);
        let by_age = sink.roll_if_due(t0 + hour)?.ok_or("rolled by age")?;
        assert_ne!(by_age, rolled);
        assert_eq!(std::fs::read_to_string(&by_age)?, "{}\n");
        sink.write_line(b"{\"b\":2}")?;
        sink.close()?;
        assert_eq!(std::fs::read_to_string(sink.path())?, "{\"b\":2}\n");
        Ok(())
    }

    #[test]
    fn civil_from_days_matches_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
        for (year, month, day) in [(2024, 2, 29), (2100, 3, 1), (2026, 11, 23), (1999, 12, 31)] {
            assert_eq!(
                civil_from_days(naive_days(year, month, day)),
                (year, month, day)
            );
        }
    }

    #[test]
    fn civil_from_days_walks_every_day_of_four_centuries() {
        let (mut year, mut month, mut day) = (1970, 1, 1);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let month_len = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
    }

    #[test]
    fn utc_hour_from_millis() {
        // The schema's example: 2026-11-23T12:00:00Z.
        let utc = UtcHour::from_millis(1_795_435_200_000);
        assert_eq!(
            utc,
            UtcHour {
                year: 2026,
                month: 11,
                day: 23,
                hour: 12
            }
        );
        assert_eq!(utc.date(), "2026-11-23");
        assert_eq!(UtcHour::from_millis(3_599_999).hour, 0);
        assert_eq!(UtcHour::from_millis(3_600_000).hour, 1);
        let last = UtcHour::from_millis(253_402_300_799_999);
        assert_eq!(
            last,
            UtcHour {
                year: 9999,
                month: 12,
                day: 31,
                hour: 23
            }
        );
    }

    fn dead_letter(portal: Option<&str>, ts: Option<u64>) -> DeadLetter {
        let mut letter = DeadLetter::new(
            Reason::Late,
            "late".into(),
            SourcePosition {
                partition: "file:x".into(),
                position: "7".into(),
            },
            b"{\"x\":1}",
        );
        letter.portal = portal.map(str::to_string);
        letter.ts = ts;
        letter
    }

    #[test]
    fn archive_layout_paths() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut sink = ArchiveSink::new(root.path(), "w3")?;
        let ts = 1_795_435_200_000 + 5 * MILLIS_PER_HOUR + 1; // 2026-11-23T17:00:00.001Z
        sink.write_raw("g1", ts, b"{\"a\":\n1}")?;
        let feature = Feature::ranking(
            RankingKind::Popular,
            "ge",
            ts - 3_600_000,
            1_795_478_400_000, // 2026-11-24T00:00:00Z
            vec![RankedItem {
                article_id: "a".into(),
                views: 1,
                engaged_views: 0,
                score: 1.0,
            }],
        );
        sink.write_feature(&feature)?;
        sink.write_dead_letter(&dead_letter(Some("gshow"), Some(ts)))?;
        sink.write_dead_letter(&dead_letter(None, None))?;
        sink.write_dead_letter(&dead_letter(Some("../etc"), None))?;
        sink.close()?;

        let archive = root.path().join("archive");
        let raw = archive.join("raw/portal=g1/date=2026-11-23/hour=17/part-w3.jsonl");
        assert_eq!(fs::read_to_string(&raw)?, "{\"a\": 1}\n");
        let processed = archive.join("processed/portal=ge/date=2026-11-24/hour=00/part-w3.jsonl");
        assert_eq!(
            fs::read_to_string(&processed)?,
            format!("{}\n", feature.to_json())
        );
        let dead = archive.join("dead-letter/portal=gshow/date=2026-11-23/hour=17/part-w3.jsonl");
        assert_eq!(fs::read_to_string(&dead)?.lines().count(), 1);
        let unknown =
            archive.join("dead-letter/portal=_unknown/date=unknown/hour=unknown/part-w3.jsonl");
        let lines: Vec<DeadLetter> = fs::read_to_string(&unknown)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], dead_letter(None, None));
        assert_eq!(
            sink.part_path(ArchiveLayer::Raw, Some("g1"), Some(ts)),
            raw,
            "part_path agrees with where records went"
        );
        Ok(())
    }

    #[test]
    fn archive_keeps_open_files_bounded_and_appends_after_reopening() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut sink = ArchiveSink::new(root.path(), "0")?.with_max_open_files(4);
        for round in 0..3 {
            for hour in 0..10u64 {
                sink.write_raw(
                    "g1",
                    hour * MILLIS_PER_HOUR,
                    format!("{{\"r\":{round}}}").as_bytes(),
                )?;
                assert!(sink.open_files() <= 4);
            }
        }
        Sink::<ArchiveRecord<'_>>::close(&mut sink)?;
        for hour in 0..10u64 {
            let path = sink.part_path(ArchiveLayer::Raw, Some("g1"), Some(hour * MILLIS_PER_HOUR));
            assert_eq!(
                fs::read_to_string(path)?,
                "{\"r\":0}\n{\"r\":1}\n{\"r\":2}\n"
            );
        }
        assert!(matches!(
            sink.write_raw("g1", 0, b"{}"),
            Err(ConnectorError::Closed { .. })
        ));
        Ok(())
    }

    #[test]
    fn rejects_unsafe_writer_ids() {
        for id in ["", "..", "a/b", "a b"] {
            assert!(
                matches!(
                    ArchiveSink::new("/nonexistent", id),
                    Err(ConnectorError::InvalidConfig { .. })
                ),
                "{id:?}"
            );
        }
    }

    #[test]
    fn feature_file_sink_appends_lines() -> TestResult {
        let root = tempfile::tempdir()?;
        let feature = Feature::ranking(RankingKind::Trending, "g1", 0, 60_000, Vec::new());
        let mut sink = FeatureFileSink::open(root.path().join("out"))?;
        sink.write_batch(std::slice::from_ref(&feature))?;
        Sink::close(&mut sink)?;
        assert!(matches!(
            sink.write(&feature),
            Err(ConnectorError::Closed { .. })
        ));
        let mut again = FeatureFileSink::open(root.path().join("out"))?;
        again.write(&feature)?;
        again.close()?;
        let text = fs::read_to_string(root.path().join("out").join(FEATURES_FILE_NAME))?;
        assert_eq!(text, format!("{0}\n{0}\n", feature.to_json()));
        Ok(())
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_dropped_on_open() -> Result<(), ConnectorError> {
        let dir = tempfile::tempdir().map_err(|source| ConnectorError::CreateDir {
            path: std::env::temp_dir(),
            source,
        })?;
        let path = dir.path().join("features.jsonl");
        let write = |bytes: &[u8]| {
            std::fs::write(&path, bytes).map_err(|source| ConnectorError::Write {
                path: path.clone(),
                source,
            })
        };
        write(b"{\"a\":1}\n{\"b\":")?;
        drop(open_for_append(&path)?);
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"{\"a\":1}\n");
        write(b"{\"torn")?;
        drop(open_for_append(&path)?);
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"");
        write(b"{\"a\":1}\n")?;
        drop(open_for_append(&path)?);
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"{\"a\":1}\n");
        Ok(())
    }
}
