//! The archive as **one** replay partition: its objects' lines, one object after the other.
//!
//! [`ArchiveSource`] is what `pageflow replay` would read if the objects were concatenated into
//! one file in the backfill order: one partition, read strictly in order, whose watermark only
//! event time moves. Each object is read by the same JSON-lines reader as a replayed file
//! ([`JsonLinesFile`]), so lines, blank lines and oversized lines are treated alike, and an
//! object whose last line lacks its newline does not run into the next object's first line.
//!
//! A record's position names its object and its line there (`file:<path>` or
//! `s3://bucket/key`, and the 1-based line), so that a dead letter says where to look.

use std::io::Read;

use pageflow_connectors::JsonLinesFile;
use pageflow_dataflow::event::RawRecord;
use pageflow_dataflow::source::{PollStatus, RecordSource, SourceError};

use super::progress::Progress;
use super::reading::ObjectStream;

/// The archive's objects read as one partition (see the module docs).
pub struct ArchiveSource {
    /// The partition's name: `backfill:<--from>`.
    name: String,
    /// The objects not opened yet, in order.
    objects: ObjectStream,
    /// The object being read and its label.
    current: Option<(String, JsonLinesFile<Box<dyn Read + Send>>)>,
    /// Blank lines of the objects already finished.
    blank_lines_before: u64,
    /// Hours and events read, shown as they advance.
    progress: Progress,
}

impl std::fmt::Debug for ArchiveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSource")
            .field("name", &self.name)
            .field("current", &self.current.as_ref().map(|(label, _)| label))
            .finish_non_exhaustive()
    }
}

impl ArchiveSource {
    /// The partition `name` over `objects`, reporting to `progress`.
    pub fn new(name: String, objects: ObjectStream, progress: Progress) -> ArchiveSource {
        ArchiveSource {
            name,
            objects,
            current: None,
            blank_lines_before: 0,
            progress,
        }
    }
}

impl RecordSource for ArchiveSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        loop {
            let Some((label, file)) = self.current.as_mut() else {
                match self.objects.next() {
                    None => {
                        self.progress.finish();
                        return Ok(PollStatus::Finished);
                    }
                    Some(opened) => {
                        let opened = opened?;
                        self.progress.reading(opened.hour);
                        let file = JsonLinesFile::from_reader(&opened.label, opened.reader);
                        self.current = Some((opened.label, file));
                    }
                }
                continue;
            };
            let before = out.len();
            let status = file.poll(max, out)?;
            for record in &mut out[before..] {
                // `JsonLinesFile` names the partition `file:<label>`: the label says it better.
                record.position.partition.clone_from(label);
            }
            self.progress.read((out.len() - before) as u64);
            match status {
                PollStatus::Finished => {
                    self.blank_lines_before += file.blank_lines();
                    self.current = None;
                    if out.len() > before {
                        return Ok(PollStatus::Ready);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    fn blank_lines(&self) -> u64 {
        self.blank_lines_before
            + self
                .current
                .as_ref()
                .map_or(0, |(_, file)| file.blank_lines())
    }

    fn is_replay(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::backfill::layout::{Date, Hour};
    use crate::commands::backfill::reading::OpenedObject;

    fn object(hour: u8, label: &str, text: &'static str) -> Result<OpenedObject, SourceError> {
        Ok(OpenedObject {
            hour: Hour {
                date: Date::parse("2026-12-07").map_err(|message| SourceError {
                    message,
                    retryable: false,
                })?,
                hour,
            },
            label: label.to_string(),
            reader: Box::new(text.as_bytes()),
        })
    }

    #[test]
    fn objects_follow_each_other_line_by_line() -> Result<(), SourceError> {
        let objects: ObjectStream = Box::new(
            vec![
                object(1, "a", "{\"n\":1}\n\n{\"n\":2}"),
                object(1, "b", "{\"n\":3}\n"),
                object(2, "c", ""),
                object(2, "d", "{\"n\":4}\n"),
            ]
            .into_iter(),
        );
        let mut source = ArchiveSource::new("backfill:x".to_string(), objects, Progress::new(2));
        let mut records = Vec::new();
        while source.poll(1, &mut records)? != PollStatus::Finished {}
        let got: Vec<(String, String, String)> = records
            .iter()
            .map(|r| {
                (
                    r.position.partition.clone(),
                    r.position.position.clone(),
                    String::from_utf8_lossy(&r.bytes).to_string(),
                )
            })
            .collect();
        let want = [
            ("a", "1", "{\"n\":1}"),
            ("a", "3", "{\"n\":2}"),
            ("b", "1", "{\"n\":3}"),
            ("d", "1", "{\"n\":4}"),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(got, want);
        assert_eq!(source.blank_lines(), 1);
        assert_eq!(source.name(), "backfill:x");
        Ok(())
    }

    #[test]
    fn a_failure_to_open_stops_the_partition() {
        let objects: ObjectStream = Box::new(
            vec![
                object(1, "a", "{}\n"),
                Err(SourceError {
                    message: "cannot download s3://b/k".to_string(),
                    retryable: false,
                }),
            ]
            .into_iter(),
        );
        let mut source = ArchiveSource::new("backfill:x".to_string(), objects, Progress::new(1));
        let mut records = Vec::new();
        let mut outcome = Ok(PollStatus::Ready);
        while let Ok(PollStatus::Ready) = outcome {
            outcome = source.poll(10, &mut records);
        }
        assert_eq!(records.len(), 1);
        match outcome {
            Err(error) => assert!(error.message.contains("s3://b/k"), "{}", error.message),
            Ok(status) => panic!("polled {status:?} after a failure"),
        }
    }
}
