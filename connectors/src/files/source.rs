//! Replaying a JSON-lines file: one file is one source partition.
//!
//! [`JsonLinesFile`] reads a file of pageview records, one per line, and hands them to the dataflow
//! as [`RawRecord`]s through the [`RecordSource`] trait. The concepts:
//!
//! - **Partition.** A file is a single partition named `file:<path as given>`, read strictly in file
//!   order, so its watermark depends only on the file's content ([`RecordSource::is_replay`] is
//!   `true`): replaying the same file always gives the same result.
//! - **Positions** are 1-based line numbers. Every line counts toward the numbering, including the
//!   blank ones, so a dead letter's position is the line an editor shows.
//! - **Line breaks.** A record is a line without its `\n` and without a `\r` just before it
//!   (`\r\n` files work). A final line without a line break is still a record (and keeps a trailing
//!   `\r`, which is not part of a line break there).
//! - **Blank lines** (empty, or only JSON whitespace: space, tab, `\r`) carry no record: they are
//!   skipped and counted ([`RecordSource::blank_lines`]).
//! - **Oversized lines.** A line longer than [`MAX_RECORD_BYTES`] is invalid (`too_large`) whatever it
//!   holds, so only its first [`KEPT_LINE_BYTES`] bytes are kept (enough for validation to tell) and
//!   the rest is skipped up to the next line break. A multi-gigabyte line costs time, not memory.
//! - **Resuming.** After a restart, [`JsonLinesFile::resume_after`] skips the lines up to a
//!   checkpoint's position (a fast scan for line breaks), so the replay continues exactly where the
//!   checkpointed one was; an input shorter than that is an error (it is not the same input).
//! - **Speed.** The file is read in large chunks (1 MiB by default) into one reusable buffer and
//!   lines are found with `memchr`; apart from the [`RawRecord`] itself (its bytes and position),
//!   nothing is allocated per line.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use pageflow_dataflow::event::{MAX_RECORD_BYTES, RawRecord, SourcePosition};
use pageflow_dataflow::source::{PollStatus, RecordSource, SourceError};

use crate::error::ConnectorError;

/// How many bytes of an oversized line are kept: one more than [`MAX_RECORD_BYTES`], so that
/// validation still sees that the record is too large.
pub const KEPT_LINE_BYTES: usize = MAX_RECORD_BYTES + 1;

/// How many bytes of a line are kept while it is assembled: one more than [`KEPT_LINE_BYTES`], so a
/// `\r` right before the `\n` can still be told apart from content.
const ASSEMBLY_LIMIT_BYTES: usize = KEPT_LINE_BYTES + 1;

/// The default size of one read from the file.
pub const DEFAULT_READ_CHUNK_BYTES: usize = 1 << 20;

/// Whether `byte` is JSON whitespace (space, tab, line feed, carriage return).
fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a line is blank: empty or only JSON whitespace (space, tab, `\r`, `\n`).
///
/// Blank lines carry no record: file sources skip and count them instead of dead-lettering them.
pub fn is_blank_line(line: &[u8]) -> bool {
    line.iter().all(|&byte| is_json_whitespace(byte))
}

/// A JSON-lines file read as one source partition (see the module docs).
///
/// `R` is the byte stream; [`JsonLinesFile::open`] reads a [`File`], and
/// [`JsonLinesFile::from_reader`] takes any reader (tests, decompressors).
pub struct JsonLinesFile<R = File> {
    /// `file:<path as given>`.
    name: String,
    /// The path as given (for error messages).
    path: PathBuf,
    /// Where the bytes come from.
    reader: R,
    /// The reusable read buffer; `chunk[chunk_start..chunk_end]` is not yet consumed.
    chunk: Vec<u8>,
    /// First unconsumed byte of `chunk`.
    chunk_start: usize,
    /// End of the valid bytes of `chunk`.
    chunk_end: usize,
    /// The reader has reported the end of the stream.
    reader_exhausted: bool,
    /// Every line has been handed out; polls return `Finished`.
    finished: bool,
    /// The line that spans reads, as far as it is kept (at most [`ASSEMBLY_LIMIT_BYTES`]).
    partial: PartialLine,
    /// Lines completed so far (records and blank lines): the number of the last line.
    lines_read: u64,
    /// Blank lines skipped so far.
    blank_lines: u64,
}

/// A line whose bytes arrived in more than one read.
#[derive(Debug, Default)]
struct PartialLine {
    /// Whether any byte of the line has been seen (a final line may lack its `\n`).
    started: bool,
    /// The kept bytes (at most [`ASSEMBLY_LIMIT_BYTES`]).
    kept: Vec<u8>,
    /// Whether bytes beyond the kept ones were skipped.
    overflowed: bool,
    /// Whether every byte seen so far is whitespace.
    blank: bool,
}

impl PartialLine {
    /// Adds the next piece of the line, keeping at most [`ASSEMBLY_LIMIT_BYTES`].
    fn append(&mut self, piece: &[u8]) {
        if !self.started {
            self.started = true;
            self.blank = true;
        }
        if self.blank {
            self.blank = is_blank_line(piece);
        }
        let room = ASSEMBLY_LIMIT_BYTES.saturating_sub(self.kept.len());
        if piece.len() > room {
            self.overflowed = true;
        }
        self.kept.extend_from_slice(&piece[..piece.len().min(room)]);
    }

    /// The finished line's record bytes (line break stripped, bounded), and resets for the next line.
    fn take_record_bytes(&mut self, terminated: bool) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.kept);
        if terminated && !self.overflowed && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        bytes.truncate(KEPT_LINE_BYTES);
        self.reset();
        bytes
    }

    /// Forgets the line, keeping the buffer for the next one.
    fn reset(&mut self) {
        self.kept.clear();
        self.started = false;
        self.overflowed = false;
    }
}

/// A line that ended with `\n` without the `\r` of a `\r\n` line break.
fn strip_carriage_return(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The partition name of the file at `path` as given: `file:<path>` (in checkpoints, dead letters
/// and the placement of partitions on workers).
pub fn partition_name(path: &Path) -> String {
    format!("file:{}", path.display())
}

impl JsonLinesFile<File> {
    /// Opens `path` for replay. The partition is named `file:<path as given>`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ConnectorError> {
        let path = path.as_ref();
        let open_error = |source| ConnectorError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_error)?;
        // A directory opens fine on Unix and fails only at the first read, where a source would
        // report it again on every poll: refuse it here, where the caller can say so and stop.
        if file.metadata().map_err(open_error)?.is_dir() {
            return Err(ConnectorError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::from_reader(path, file))
    }
}

impl<R: Read> JsonLinesFile<R> {
    /// Reads the JSON lines of `reader`, naming the partition `file:<path>`.
    pub fn from_reader(path: impl AsRef<Path>, reader: R) -> Self {
        let path = path.as_ref().to_path_buf();
        JsonLinesFile {
            name: partition_name(&path),
            path,
            reader,
            chunk: Vec::new(),
            chunk_start: 0,
            chunk_end: 0,
            reader_exhausted: false,
            finished: false,
            partial: PartialLine::default(),
            lines_read: 0,
            blank_lines: 0,
        }
    }

    /// Sets how many bytes one read asks for (default [`DEFAULT_READ_CHUNK_BYTES`], at least 1).
    pub fn with_read_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk = vec![0; bytes.max(1)];
        self
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of the last line read completely (records and blank lines).
    pub fn lines_read(&self) -> u64 {
        self.lines_read
    }

    /// Continues a replay after line `line` (a checkpoint's position: the last record taken in).
    ///
    /// Skips the first `line` lines, records and blank lines alike, so that the next record has the
    /// position an uninterrupted read would give it (`line + 1` or later). Skipping only looks for
    /// line breaks (`memchr`), without keeping or validating anything; the blank lines skipped are
    /// not counted in [`RecordSource::blank_lines`] (they were counted before the checkpoint).
    /// `resume_after(0)` changes nothing. Call it on a fresh source, before the first poll.
    ///
    /// Errors when the input has fewer than `line` lines (it is not the input the checkpoint was
    /// taken from), or when reading fails.
    pub fn resume_after(mut self, line: u64) -> Result<Self, ConnectorError> {
        while self.lines_read < line {
            if self.chunk_start == self.chunk_end {
                if self.reader_exhausted {
                    if self.partial.started {
                        // A final line without a line break is a line too.
                        self.partial.reset();
                        self.lines_read += 1;
                        continue;
                    }
                    return Err(ConnectorError::Read {
                        path: self.path.clone(),
                        line: self.lines_read,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the input changed since the checkpoint: it ends after line {}, but \
                                 the checkpoint continues after line {line}; restore the input the \
                                 checkpoint was taken from, or move the checkpoint away to read the \
                                 input from its start",
                                self.lines_read
                            ),
                        ),
                    });
                }
                self.refill()?;
                continue;
            }
            let (start, end) = (self.chunk_start, self.chunk_end);
            match memchr::memchr(b'\n', &self.chunk[start..end]) {
                Some(offset) => {
                    self.chunk_start = start + offset + 1;
                    self.partial.reset();
                    self.lines_read += 1;
                }
                None => {
                    // The line goes on in the next read: only remember that it has begun.
                    self.partial.started = true;
                    self.chunk_start = end;
                }
            }
        }
        Ok(self)
    }

    /// Refills the read buffer; at the end of the stream, marks the reader as exhausted.
    fn refill(&mut self) -> Result<(), ConnectorError> {
        if self.chunk.is_empty() {
            self.chunk = vec![0; DEFAULT_READ_CHUNK_BYTES];
        }
        loop {
            match self.reader.read(&mut self.chunk) {
                Ok(read) => {
                    self.chunk_start = 0;
                    self.chunk_end = read;
                    self.reader_exhausted = read == 0;
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ConnectorError::Read {
                        path: self.path.clone(),
                        line: self.lines_read,
                        source,
                    });
                }
            }
        }
    }

    /// Counts a completed line and, unless it is blank, appends its record to `out`.
    fn complete_line(&mut self, bytes: RecordBytes<'_>, out: &mut Vec<RawRecord>) {
        self.lines_read += 1;
        let bytes = match bytes {
            RecordBytes::Whole(line) if is_blank_line(line) => None,
            RecordBytes::Whole(line) => Some(line[..line.len().min(KEPT_LINE_BYTES)].to_vec()),
            RecordBytes::Blank => None,
            RecordBytes::Assembled(bytes) => Some(bytes),
        };
        match bytes {
            None => self.blank_lines += 1,
            Some(bytes) => out.push(RawRecord {
                position: SourcePosition {
                    partition: self.name.clone(),
                    position: self.lines_read.to_string(),
                },
                bytes,
                corrupt: None,
            }),
        }
    }

    /// Handles the rest of a line that was being assembled across reads.
    fn complete_partial_line(&mut self, terminated: bool, out: &mut Vec<RawRecord>) {
        if self.partial.blank {
            self.partial.reset();
            self.complete_line(RecordBytes::Blank, out);
        } else {
            let bytes = self.partial.take_record_bytes(terminated);
            self.complete_line(RecordBytes::Assembled(bytes), out);
        }
    }

    /// Reads up to `max` lines (records and blank lines), appending the records to `out`.
    fn read_lines(
        &mut self,
        max: usize,
        out: &mut Vec<RawRecord>,
    ) -> Result<PollStatus, ConnectorError> {
        if self.finished {
            return Ok(PollStatus::Finished);
        }
        let mut lines_left = max;
        while lines_left > 0 {
            if self.chunk_start == self.chunk_end {
                if self.reader_exhausted {
                    if self.partial.started {
                        self.complete_partial_line(false, out);
                    }
                    self.finished = true;
                    return Ok(PollStatus::Finished);
                }
                self.refill()?;
                continue;
            }
            let start = self.chunk_start;
            let end = self.chunk_end;
            match memchr::memchr(b'\n', &self.chunk[start..end]) {
                Some(offset) => {
                    let line_end = start + offset;
                    self.chunk_start = line_end + 1;
                    if self.partial.started {
                        self.partial.append(&self.chunk[start..line_end]);
                        self.complete_partial_line(true, out);
                    } else {
                        // Split borrows: the line lives in `chunk`, the counters elsewhere.
                        let chunk = std::mem::take(&mut self.chunk);
                        self.complete_line(
                            RecordBytes::Whole(strip_carriage_return(&chunk[start..line_end])),
                            out,
                        );
                        self.chunk = chunk;
                    }
                    lines_left -= 1;
                }
                None => {
                    self.partial.append(&self.chunk[start..end]);
                    self.chunk_start = end;
                }
            }
        }
        Ok(PollStatus::Ready)
    }
}

/// The bytes of a completed line, by where they are.
enum RecordBytes<'a> {
    /// Found whole in the read buffer, line break already stripped, not yet bounded (may be blank).
    Whole(&'a [u8]),
    /// Assembled across reads, and blank.
    Blank,
    /// Assembled across reads, not blank.
    Assembled(Vec<u8>),
}

impl<R: Read + Send> RecordSource for JsonLinesFile<R> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Reads up to `max` lines; blank lines count toward `max` (so a poll's work stays bounded) but
    /// produce no record. Returns `Finished` once the last line has been handed out.
    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        self.read_lines(max, out).map_err(SourceError::from)
    }

    fn blank_lines(&self) -> u64 {
        self.blank_lines
    }

    fn is_replay(&self) -> bool {
        true
    }
}

impl<R> fmt::Debug for JsonLinesFile<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesFile")
            .field("name", &self.name)
            .field("lines_read", &self.lines_read)
            .field("blank_lines", &self.blank_lines)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use proptest::prelude::*;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Records as `(position, bytes)`, and the number of blank lines.
    type Replay = (Vec<(String, Vec<u8>)>, u64);

    /// Everything a source hands out, read with polls of `max` lines.
    fn read_all<R: Read + Send>(
        mut source: JsonLinesFile<R>,
        max: usize,
    ) -> Result<Replay, SourceError> {
        let mut out = Vec::new();
        for _ in 0..10_000_000 {
            if source.poll(max, &mut out)? == PollStatus::Finished {
                break;
            }
        }
        let records = out
            .into_iter()
            .map(|r| (r.position.position, r.bytes))
            .collect();
        Ok((records, source.blank_lines()))
    }

    /// The reference: split on `\n`, strip one `\r` before it, skip blanks, keep 65537 bytes.
    fn naive_split(data: &[u8]) -> Replay {
        let pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let mut records = Vec::new();
        let mut blank = 0;
        for (index, piece) in pieces.iter().enumerate() {
            let terminated = index + 1 < pieces.len();
            if !terminated && piece.is_empty() {
                break;
            }
            let mut line = piece.to_vec();
            if terminated && line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                blank += 1;
                continue;
            }
            line.truncate(KEPT_LINE_BYTES);
            records.push(((index + 1).to_string(), line));
        }
        (records, blank)
    }

    /// What an uninterrupted read hands out after line `after`: the records past it, and the blank
    /// lines past it. Also returns how many lines `data` has.
    fn naive_tail(data: &[u8], after: u64) -> (Replay, u64) {
        let pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let lines = if data.is_empty() || data.ends_with(b"\n") {
            pieces.len() - 1
        } else {
            pieces.len()
        } as u64;
        // Blank line numbers: the lines that are neither records nor past the end.
        let (all, _) = naive_split(data);
        let records: Vec<_> = all
            .into_iter()
            .filter(|(position, _)| position.parse::<u64>().is_ok_and(|p| p > after))
            .collect();
        let blank = (after + 1..=lines).count() as u64 - records.len() as u64;
        ((records, blank), lines)
    }

    /// Everything a source resumed after line `after` hands out.
    fn resume_and_read_all(
        data: &[u8],
        after: u64,
        chunk: usize,
        max: usize,
    ) -> Result<Replay, Box<dyn std::error::Error>> {
        let source = JsonLinesFile::from_reader("p", data)
            .with_read_chunk_bytes(chunk)
            .resume_after(after)?;
        assert_eq!(source.lines_read(), after);
        Ok(read_all(source, max)?)
    }

    #[test]
    fn resumes_right_after_a_checkpointed_line() -> TestResult {
        // Lines: 1 record, 2 blank, 3 record, 4 blank (spaces), 5 record, 6 record (no line break).
        let data = b"{\"a\":1}\n\n{\"b\":2}\r\n  \t\n{\"c\":3}\n{\"d\":4}";
        for chunk in [1, 3, 4096] {
            for after in 0..=6 {
                let got = resume_and_read_all(data, after, chunk, 2)?;
                let (expected, lines) = naive_tail(data, after);
                assert_eq!(lines, 6);
                assert_eq!(got, expected, "resumed after line {after}, chunk {chunk}");
            }
        }
        // At 0: the whole file, as if not resumed.
        assert_eq!(resume_and_read_all(data, 0, 4096, 10)?, naive_split(data));
        // Mid-file, right after a record: the blank line 2 comes next and is counted once.
        let (records, blank) = resume_and_read_all(data, 1, 4096, 10)?;
        assert_eq!(records.first().map(|r| r.0.as_str()), Some("3"));
        assert_eq!(blank, 2);
        // At a blank line: it is not counted again.
        let (records, blank) = resume_and_read_all(data, 4, 4096, 10)?;
        assert_eq!(
            records,
            vec![
                ("5".to_string(), b"{\"c\":3}".to_vec()),
                ("6".to_string(), b"{\"d\":4}".to_vec()),
            ]
        );
        assert_eq!(blank, 0);
        // At the end: nothing left, and the first poll says so.
        let mut source = JsonLinesFile::from_reader("p", &data[..]).resume_after(6)?;
        let mut out = Vec::new();
        assert_eq!(source.poll(10, &mut out)?, PollStatus::Finished);
        assert!(out.is_empty());
        assert_eq!(source.blank_lines(), 0);
        Ok(())
    }

    #[test]
    fn resuming_past_the_end_says_the_input_changed() {
        let data = b"{\"a\":1}\n\n{\"b\":2}\n";
        for after in [4, 100] {
            let error = match JsonLinesFile::from_reader("data/events.jsonl", &data[..])
                .with_read_chunk_bytes(2)
                .resume_after(after)
            {
                Ok(_) => panic!("resuming after line {after} of a 3-line file succeeded"),
                Err(error) => error,
            };
            let message = error.to_string();
            assert!(!error.is_retryable(), "{message}");
            for part in [
                "data/events.jsonl",
                "changed since the checkpoint",
                "ends after line 3",
                &format!("after line {after}"),
                "restore the input",
                "move the checkpoint away",
            ] {
                assert!(message.contains(part), "{part:?} missing: {message}");
            }
        }
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn reads_records_positions_and_blank_lines() -> TestResult {
        let data = b"{\"a\":1}\n\n  \t\r\n{\"b\":2}\r\n{\"c\":3}";
        let source = JsonLinesFile::from_reader("events.jsonl", &data[..]);
        assert_eq!(source.name(), "file:events.jsonl");
        assert!(source.is_replay());
        let (records, blank) = read_all(source, 100)?;
        assert_eq!(
            records,
            vec![
                ("1".to_string(), b"{\"a\":1}".to_vec()),
                ("4".to_string(), b"{\"b\":2}".to_vec()),
                ("5".to_string(), b"{\"c\":3}".to_vec()),
            ]
        );
        assert_eq!(blank, 2);
        Ok(())
    }

    #[test]
    fn polls_return_ready_until_the_end_then_finished() -> TestResult {
        let data = b"a\nb\nc\n";
        let mut source = JsonLinesFile::from_reader("x", &data[..]);
        let mut out = Vec::new();
        assert_eq!(source.poll(2, &mut out)?, PollStatus::Ready);
        assert_eq!(out.len(), 2);
        assert_eq!(source.poll(2, &mut out)?, PollStatus::Finished);
        assert_eq!(out.len(), 3);
        assert_eq!(source.poll(2, &mut out)?, PollStatus::Finished);
        assert_eq!(out.len(), 3);
        Ok(())
    }

    #[test]
    fn long_line_is_cut_to_kept_bytes_and_the_next_line_survives() -> TestResult {
        let mut data = vec![b'x'; 1_000_000];
        data.extend_from_slice(b"\n{\"ok\":true}\n");
        let source = JsonLinesFile::from_reader("big", &data[..]).with_read_chunk_bytes(4096);
        let (records, _) = read_all(source, 10)?;
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].1.len(), KEPT_LINE_BYTES);
        assert_eq!(records[1], ("2".to_string(), b"{\"ok\":true}".to_vec()));
        Ok(())
    }

    #[test]
    fn a_100_kb_line_is_a_dead_letter_that_does_not_claim_the_kept_length() -> TestResult {
        let mut data = vec![b'x'; 100 * 1024];
        data.push(b'\n');
        let source = JsonLinesFile::from_reader("big", &data[..]);
        let (records, _) = read_all(source, 10)?;
        let invalid = pageflow_dataflow::event::validate(&records[0].1)
            .err()
            .ok_or("a 100 KB line is too large")?;
        assert_eq!(invalid.reason, pageflow_dataflow::event::Reason::TooLarge);
        // The source kept 65,537 bytes; the line had 102,400: the reason says only what is known.
        assert!(
            invalid.detail.contains("more than 65536 bytes"),
            "{}",
            invalid.detail
        );
        assert!(!invalid.detail.contains("65537"), "{}", invalid.detail);
        Ok(())
    }

    #[test]
    fn crlf_right_at_the_size_limit_is_not_content() -> TestResult {
        // 65536 bytes of content plus `\r\n`: exactly at the limit, so not too large.
        let mut data = vec![b'y'; MAX_RECORD_BYTES];
        data.extend_from_slice(b"\r\n");
        let source = JsonLinesFile::from_reader("edge", &data[..]).with_read_chunk_bytes(1000);
        let (records, _) = read_all(source, 10)?;
        assert_eq!(records[0].1.len(), MAX_RECORD_BYTES);
        Ok(())
    }

    #[test]
    fn opens_a_real_file_and_names_it_in_errors() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("events.jsonl");
        let mut file = File::create(&path)?;
        file.write_all(b"{\"a\":1}\n")?;
        drop(file);
        let source = JsonLinesFile::open(&path)?;
        assert_eq!(source.name(), format!("file:{}", path.display()));
        assert_eq!(read_all(source, 10)?.0.len(), 1);

        let missing = dir.path().join("missing.jsonl");
        let error = match JsonLinesFile::open(&missing) {
            Ok(_) => return Err("opening a missing file succeeded".into()),
            Err(error) => error,
        };
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("missing.jsonl"), "{error}");

        let error = match JsonLinesFile::open(dir.path()) {
            Ok(_) => return Err("opening a directory succeeded".into()),
            Err(error) => error,
        };
        assert!(!error.is_retryable());
        let message = error.to_string();
        assert!(message.contains("is a directory"), "{message}");
        assert!(message.contains("source.paths"), "{message}");
        Ok(())
    }

    #[test]
    fn read_errors_become_source_errors_naming_the_file() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut source = JsonLinesFile::from_reader("data/broken.jsonl", Broken);
        match source.poll(10, &mut Vec::new()) {
            Err(error) => {
                assert!(
                    error.message.contains("data/broken.jsonl"),
                    "{}",
                    error.message
                );
                assert!(error.message.contains("disk on fire"), "{}", error.message);
            }
            Ok(status) => panic!("a broken reader polled {status:?}"),
        }
    }

    /// One generated line: its content and whether it ends with `\r\n` instead of `\n`.
    fn line_strategy() -> impl Strategy<Value = (Vec<u8>, bool)> {
        let content = prop_oneof![
            6 => "[ -~]{0,30}".prop_map(String::into_bytes),
            2 => "[ \t\r]{0,4}".prop_map(String::into_bytes),
            1 => "\\PC{0,8}".prop_map(String::into_bytes),
            1 => (MAX_RECORD_BYTES - 2..MAX_RECORD_BYTES + 4, any::<bool>())
                .prop_map(|(len, cr)| {
                    let mut line = vec![b'z'; len];
                    if cr {
                        line.push(b'\r');
                    }
                    line
                }),
            1 => (0usize..3, any::<bool>()).prop_map(|(extra, text_at_end)| {
                let mut line = vec![b' '; KEPT_LINE_BYTES + extra];
                if text_at_end {
                    line.push(b'x');
                }
                line
            }),
        ];
        (content, any::<bool>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn matches_a_naive_split(
            lines in proptest::collection::vec(line_strategy(), 0..12),
            final_newline in any::<bool>(),
            chunk in prop_oneof![Just(1usize), 2usize..64, Just(4096usize), Just(1 << 20)],
            trickle in prop_oneof![Just(usize::MAX), 1usize..50],
            max in 1usize..5,
        ) {
            let mut data = Vec::new();
            for (index, (content, crlf)) in lines.iter().enumerate() {
                data.extend_from_slice(content);
                if index + 1 < lines.len() || final_newline {
                    data.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                }
            }
            let chunk = if chunk == 1 && data.len() > 100_000 { 997 } else { chunk };
            let reader = Trickle { data: &data, step: trickle };
            let source = JsonLinesFile::from_reader("p", reader).with_read_chunk_bytes(chunk);
            let got = read_all(source, max).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, naive_split(&data));
        }

        #[test]
        fn resumed_reads_equal_the_tail_of_an_uninterrupted_one(
            lines in proptest::collection::vec(line_strategy(), 0..12),
            final_newline in any::<bool>(),
            chunk in prop_oneof![Just(1usize), 2usize..64, Just(1 << 20)],
            after_share in 0.0f64..=1.0,
            max in 1usize..5,
        ) {
            let mut data = Vec::new();
            for (index, (content, crlf)) in lines.iter().enumerate() {
                data.extend_from_slice(content);
                if index + 1 < lines.len() || final_newline {
                    data.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                }
            }
            let chunk = if chunk == 1 && data.len() > 100_000 { 997 } else { chunk };
            let (_, total) = naive_tail(&data, 0);
            let after = (total as f64 * after_share).round() as u64;
            let got = resume_and_read_all(&data, after, chunk, max)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, naive_tail(&data, after).0);
            let past_the_end = JsonLinesFile::from_reader("p", &data[..])
                .with_read_chunk_bytes(chunk)
                .resume_after(total + 1);
            prop_assert!(past_the_end.is_err());
        }
    }
}
