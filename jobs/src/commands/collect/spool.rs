//! The local spool: the collector's last resort, a durable, bounded, append-only queue of records
//! per portal on the local disk.
//!
//! An event is acknowledged only once it is durable: in Kinesis, else in the portal's SQS queue,
//! else here. A drainer later [`peek`](Spool::peek)s the oldest records of a portal, puts them to
//! Kinesis, and only then [`remove_front`](Spool::remove_front)s them. The process may be killed
//! (`kill -9`) at any moment: after [`Spool::open`], every record an `append` returned `Ok` for is
//! still there, in order. A record the drainer put but had not yet removed comes back once more
//! (at-least-once; the job drops duplicates by `event_id`).
//!
//! # On disk
//!
//! ```text
//! <dir>/.pageflow.lock            held while a collector uses the spool (a second one is refused)
//! <dir>/<portal>/<first-seq>.spool segments: records appended in order, named by the sequence
//!                                  number of their first record (20 digits, so names sort)
//! <dir>/<portal>/drained           the sequence number of the first record not yet removed
//! ```
//!
//! Each record of a portal has a sequence number (0, 1, 2, …, never reused). A record is one
//! frame: its body's length (`u32` LE), a checksum (`u64` LE, XXH3 of the body seeded with the
//! record's sequence number), then the body: `arrived_ms` (`u64` LE), the partition key's length
//! (`u16` LE), the key, the data. The checksum recognises a torn frame (a write cut short by a
//! crash), a corrupt one, and one read at the wrong place (its seed would be another number).
//!
//! # Why it survives a crash
//!
//! - **Append** writes the frames at the end of the newest segment, then `fsync`s the file; a new
//!   segment's directory is `fsync`ed too before anything is written to it, so its name survives.
//!   A crash before the `fsync` may leave a torn last frame (cut off and counted by `open`, with a
//!   warning) or whole frames of an append that was never acknowledged (kept: at worst a duplicate
//!   of what the client sends again). A failed append is undone (the file truncated back); if even
//!   that fails, the spool refuses further appends until it is opened again.
//! - **Remove** writes the new `drained` number to `drained.tmp`, `fsync`s it, renames it over
//!   `drained` and `fsync`s the directory: the rename is atomic, so `drained` is always the old
//!   number or the new one. Segments whose every record is below it are deleted afterwards; a crash
//!   before that deletion only leaves files that `open` deletes. A leftover `drained.tmp` is ignored
//!   and deleted.
//! - **Open** reads every segment, keeps its frames up to the first one that does not check, and
//!   truncates the file there (a torn tail). New records always go to a new segment, never after
//!   what recovery cut, and take numbers after both the newest record and `drained`, so a number
//!   removed before a crash is never handed out again.
//!
//! # Bounded
//!
//! [`Spool::bytes`] is the size of every segment file on disk; an append that would take it past
//! `max_bytes` is refused whole with [`SpoolError::Full`]. Space comes back when a segment is fully
//! drained (its file is deleted), including the newest one, so an emptied portal holds no segment.
//! A record takes 22 bytes more than its key and data. Records removed from a segment that still
//! holds others keep their space until the whole segment is drained, so `max_bytes` should be
//! several times [`SEGMENT_BYTES`] per portal that may spool at once.
//!
//! # Concurrency
//!
//! The calls are synchronous and block on the disk (`fsync`); the collector shares one spool as
//! `Arc<Mutex<Spool>>` and calls it from `tokio::task::spawn_blocking`. Appends are therefore
//! written one at a time, which is fine for a last resort.
//!
//! # Cheap reads
//!
//! `open` builds an index (each record's offset in its segment and its `arrived_ms`), kept up to
//! date by appends and removals, so `peek` reads exactly the bytes of the records it returns, in
//! one read per segment, and the counts are answered from memory.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use pageflow_connectors::ConnectorError;
use pageflow_connectors::dir_lock::{DirLock, this_process};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Segments are rolled once they reach this size: small enough that draining one gives space back
/// soon, large enough that a busy spool holds few files.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// A frame's header: the body's length (`u32`) and its checksum (`u64`).
const FRAME_HEADER: usize = 4 + 8;

/// A body's fixed part: `arrived_ms` (`u64`) and the key's length (`u16`).
const BODY_FIXED: usize = 8 + 2;

/// No record is larger (a request is at most 1 MiB); a longer length in a header is damage.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// File name extension of a segment.
const SEGMENT_EXTENSION: &str = "spool";

/// The file holding a portal's `drained` number, and the temporary name it is written under.
const DRAINED_FILE: &str = "drained";
const DRAINED_TEMP: &str = "drained.tmp";

/// One record of a portal, as the collector would have put it to Kinesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledRecord {
    /// Kinesis partition key (the event's `user_id`).
    pub partition_key: String,
    /// The record's bytes (the event's JSON).
    pub data: Vec<u8>,
    /// When the collector received it (ms since the epoch): the drain lag is measured from it.
    pub arrived_ms: u64,
}

/// Why the spool did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The records would take the spool past its bound; nothing was written.
    #[error(
        "the local spool is full: {used} of {max} bytes used and these records need {needed} more, so \
         they were not written (Kinesis and SQS have refused events long enough to fill it); the \
         drainer frees space as soon as Kinesis takes writes again; to hold more, raise the spool's \
         size limit (`[collect] spool_max_bytes`) or free disk"
    )]
    Full {
        /// Bytes on disk now.
        used: u64,
        /// The bound.
        max: u64,
        /// Bytes the refused records would have taken.
        needed: u64,
    },
    /// A file or directory of the spool could not be read, written or synced.
    #[error(
        "cannot {action} `{}`: {source}; check that the disk has space and the collector may write \
         there",
        path.display()
    )]
    Io {
        /// What was being done (e.g. `sync`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A file of the spool holds something the spool never writes.
    #[error(
        "the spool file `{}` is damaged ({detail}); move it away and start the collector again \
         (records in it are then not replayed)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The spool's directory could not be created or locked: another collector (or another
    /// `Spool` in this process) has it, or it cannot be made.
    #[error("the local spool cannot be opened: {0}")]
    Lock(#[source] ConnectorError),
    /// A portal name that could not have passed the collector's validation.
    #[error(
        "`{portal}` is not a portal name (lower-case letters, digits and `-`, at most 32, not \
         starting with `-`); this is a bug in the caller, which validates names first"
    )]
    InvalidPortal {
        /// The name given.
        portal: String,
    },
    /// `remove_front` was asked to remove more records than the portal holds.
    #[error(
        "cannot remove {asked} records of portal `{portal}`, it holds {held}; this is a bug in the \
         caller, which removes only records it peeked"
    )]
    RemoveTooMany {
        /// The portal.
        portal: String,
        /// Records asked to be removed.
        asked: usize,
        /// Records the portal holds.
        held: u64,
    },
    /// An earlier failed append could not be undone, so the newest segment may end in a partial
    /// write that later appends must not follow.
    #[error(
        "the local spool refuses appends since a failed write to `{}` could not be undone; restart \
         the collector (opening the spool cuts the partial write off)",
        path.display()
    )]
    NeedsReopen {
        /// The segment with the partial write.
        path: PathBuf,
    },
}

impl SpoolError {
    /// Whether trying the same operation again may succeed: a full spool drains, a full disk or an
    /// interrupted call may pass later; damage and a caller's bug do not go away.
    pub fn retryable(&self) -> bool {
        match self {
            SpoolError::Full { .. } => true,
            SpoolError::Io { source, .. } => io_error_is_transient(source),
            SpoolError::Lock(source) => source.is_retryable(),
            SpoolError::Corrupt { .. }
            | SpoolError::InvalidPortal { .. }
            | SpoolError::RemoveTooMany { .. }
            | SpoolError::NeedsReopen { .. } => false,
        }
    }
}

/// Whether an I/O error is the kind that goes away by itself (as the connectors decide).
fn io_error_is_transient(error: &io::Error) -> bool {
    use io::ErrorKind as Kind;
    matches!(
        error.kind(),
        Kind::Interrupted
            | Kind::WouldBlock
            | Kind::TimedOut
            | Kind::ResourceBusy
            | Kind::StorageFull
            | Kind::QuotaExceeded
    )
}

/// Builds the `map_err` closure of an I/O step.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io {
        action,
        path,
        source,
    }
}

/// The spool: a queue of records per portal under one directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    portals: BTreeMap<String, PortalQueue>,
    /// Sum of every segment's size.
    bytes: u64,
    /// Torn or damaged records `open` cut off.
    records_cut: u64,
    /// Set when a failed append could not be undone.
    needs_reopen: Option<PathBuf>,
    _lock: DirLock,
}

/// One portal's records.
#[derive(Debug)]
struct PortalQueue {
    dir: PathBuf,
    /// Oldest first. The front ones may be fully drained if deleting them failed.
    segments: VecDeque<Segment>,
    /// Sequence number of the first record not removed (what `drained` holds).
    drained: u64,
    /// Sequence number of the next record appended.
    next_seq: u64,
    /// Records not removed.
    records: u64,
    /// Open on the newest segment once this process created it; appends go only there.
    writer: Option<File>,
}

/// One segment file and the index of its records.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Each record's frame offset; a frame ends where the next begins, the last at `len`.
    offsets: Vec<u64>,
    arrived_ms: Vec<u64>,
    /// The file's size.
    len: u64,
    /// Opened by the first `peek` that reads the segment.
    reader: Option<File>,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64
    }

    /// Index of the first record at or after `seq`.
    fn index_of(&self, seq: u64) -> usize {
        (seq.saturating_sub(self.first_seq) as usize).min(self.offsets.len())
    }

    fn frame_end(&self, index: usize) -> u64 {
        self.offsets.get(index + 1).copied().unwrap_or(self.len)
    }
}

impl Spool {
    /// Opens (creating) `dir`, recovering what a crash left: a torn last record (partial write) is
    /// cut off and counted (logged with `tracing::warn`), never returned; everything fsync'd is
    /// kept. The directory stays locked until the spool is dropped.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        Spool::open_with_segment_bytes(dir, max_bytes, SEGMENT_BYTES)
    }

    /// [`Spool::open`] rolling segments at `segment_bytes` (tests roll small ones).
    pub(crate) fn open_with_segment_bytes(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Spool, SpoolError> {
        let existed = dir.exists();
        let lock = DirLock::acquire(dir, &this_process("pageflow collect (its local spool)"))
            .map_err(SpoolError::Lock)?;
        if !existed && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: segment_bytes.max(1),
            portals: BTreeMap::new(),
            bytes: 0,
            records_cut: 0,
            needs_reopen: None,
            _lock: lock,
        };
        let entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry
                .file_type()
                .map_err(io_error("inspect", &entry.path()))?
                .is_dir();
            if !is_dir || !is_portal_name(&name) {
                continue;
            }
            let (queue, cut) = PortalQueue::recover(&entry.path())?;
            spool.records_cut += cut;
            spool.bytes += queue.bytes();
            spool.portals.insert(name, queue);
        }
        Ok(spool)
    }

    /// Appends records of one portal, in order, durably (written and fsync'd, the directory too
    /// when a file is created) before returning. All or nothing: [`SpoolError::Full`] when they
    /// would take the spool past `max_bytes` (nothing written).
    pub fn append(&mut self, portal: &str, records: &[SpooledRecord]) -> Result<(), SpoolError> {
        if !is_portal_name(portal) {
            return Err(SpoolError::InvalidPortal {
                portal: portal.to_string(),
            });
        }
        if let Some(path) = &self.needs_reopen {
            return Err(SpoolError::NeedsReopen { path: path.clone() });
        }
        if records.is_empty() {
            return Ok(());
        }
        let needed: u64 = records.iter().map(|r| frame_len(r) as u64).sum();
        if self.bytes + needed > self.max_bytes {
            return Err(SpoolError::Full {
                used: self.bytes,
                max: self.max_bytes,
                needed,
            });
        }
        if !self.portals.contains_key(portal) {
            let portal_dir = self.dir.join(portal);
            match fs::create_dir(&portal_dir) {
                Ok(()) => sync_dir(&self.dir)?,
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(io_error("create directory", &portal_dir)(error)),
            }
            self.portals
                .insert(portal.to_string(), PortalQueue::empty(portal_dir));
        }
        let Some(queue) = self.portals.get_mut(portal) else {
            return Ok(());
        };
        let before = queue.bytes();
        let result = queue.append(records, self.segment_bytes);
        self.bytes = self.bytes - before + queue.bytes();
        match result {
            Ok(()) => Ok(()),
            Err(AppendError::Undone(error)) => Err(error),
            Err(AppendError::NotUndone { error, path }) => {
                tracing::error!(
                    path = %path.display(),
                    "collect spool: a failed append could not be undone; appends are refused until the spool is opened again: {error}"
                );
                self.needs_reopen = Some(path);
                Err(error)
            }
        }
    }

    /// The oldest `max` records of `portal` not yet removed, in append order (no removal).
    pub fn peek(&mut self, portal: &str, max: usize) -> Result<Vec<SpooledRecord>, SpoolError> {
        match self.portals.get_mut(portal) {
            Some(queue) => queue.peek(max),
            None => Ok(Vec::new()),
        }
    }

    /// Removes the oldest `count` records of `portal` (those a peek returned and the drainer put),
    /// durably; disk space is given back when whole files are drained.
    ///
    /// Once this returns `Ok` the records are gone for good. A segment file whose deletion fails is
    /// only logged (the removal itself is durable) and deleted by a later call or `open`.
    pub fn remove_front(&mut self, portal: &str, count: usize) -> Result<(), SpoolError> {
        if count == 0 {
            return Ok(());
        }
        let held = self.records(portal);
        let Some(queue) = self.portals.get_mut(portal) else {
            return Err(SpoolError::RemoveTooMany {
                portal: portal.to_string(),
                asked: count,
                held,
            });
        };
        if count as u64 > held {
            return Err(SpoolError::RemoveTooMany {
                portal: portal.to_string(),
                asked: count,
                held,
            });
        }
        let before = queue.bytes();
        let result = queue.remove_front(count);
        self.bytes = self.bytes - before + queue.bytes();
        result
    }

    /// Portals holding records, in name order.
    pub fn portals(&self) -> Vec<String> {
        self.portals
            .iter()
            .filter(|(_, queue)| queue.records > 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Records of `portal` not yet removed.
    pub fn records(&self, portal: &str) -> u64 {
        self.portals.get(portal).map_or(0, |queue| queue.records)
    }

    /// Bytes on disk of `portal`'s segments (records removed from a segment that still holds
    /// others count until the whole segment is drained).
    pub fn portal_bytes(&self, portal: &str) -> u64 {
        self.portals.get(portal).map_or(0, PortalQueue::bytes)
    }

    /// Bytes on disk of every segment: what `max_bytes` bounds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The `arrived_ms` of `portal`'s oldest record not yet removed (the drain lag starts there).
    pub fn oldest_arrived_ms(&self, portal: &str) -> Option<u64> {
        let queue = self.portals.get(portal)?;
        queue.segments.iter().find_map(|segment| {
            let index = segment.index_of(queue.drained);
            segment.arrived_ms.get(index).copied()
        })
    }

    /// Torn or damaged records `open` cut off (they were never acknowledged, unless the disk
    /// damaged them).
    pub fn records_cut(&self) -> u64 {
        self.records_cut
    }
}

/// An append that failed, and whether the spool is as it was.
enum AppendError {
    /// Nothing of the append is left: the spool may go on.
    Undone(SpoolError),
    /// The segment may end in a partial write.
    NotUndone { error: SpoolError, path: PathBuf },
}

impl PortalQueue {
    fn empty(dir: PathBuf) -> PortalQueue {
        PortalQueue {
            dir,
            segments: VecDeque::new(),
            drained: 0,
            next_seq: 0,
            records: 0,
            writer: None,
        }
    }

    fn bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len).sum()
    }

    /// Reads a portal's directory back after a restart (or a crash); returns it and how many
    /// records were cut off.
    fn recover(dir: &Path) -> Result<(PortalQueue, u64), SpoolError> {
        let mut queue = PortalQueue::empty(dir.to_path_buf());
        let temp = dir.join(DRAINED_TEMP);
        if temp.exists() {
            // A crash during a removal, before the rename: `drained` still holds the old number.
            fs::remove_file(&temp).map_err(io_error("delete", &temp))?;
        }
        queue.drained = read_drained(&dir.join(DRAINED_FILE))?;

        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
            let path = entry.map_err(io_error("list", dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXTENSION) {
                continue;
            }
            let first = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok())
                .ok_or_else(|| SpoolError::Corrupt {
                    path: path.clone(),
                    detail: "a segment's name must be its first record's sequence number".into(),
                })?;
            firsts.push((first, path));
        }
        firsts.sort();

        let mut cut_total = 0;
        let mut end_of_previous = 0;
        for (first_seq, path) in firsts {
            if first_seq < end_of_previous {
                return Err(SpoolError::Corrupt {
                    path,
                    detail: format!(
                        "it starts at record {first_seq}, inside the previous segment (which ends \
                         at {end_of_previous})"
                    ),
                });
            }
            let (segment, cut) = Segment::recover(first_seq, path)?;
            cut_total += cut;
            end_of_previous = segment.end_seq();
            queue.next_seq = queue.next_seq.max(segment.end_seq());
            if segment.offsets.is_empty() || segment.end_seq() <= queue.drained {
                // Empty, or fully removed before a crash cut the deletion short.
                fs::remove_file(&segment.path).map_err(io_error("delete", &segment.path))?;
                continue;
            }
            queue.segments.push_back(segment);
        }
        queue.next_seq = queue.next_seq.max(queue.drained);
        queue.records = queue
            .segments
            .iter()
            .map(|segment| (segment.offsets.len() - segment.index_of(queue.drained)) as u64)
            .sum();
        Ok((queue, cut_total))
    }

    fn append(&mut self, records: &[SpooledRecord], segment_bytes: u64) -> Result<(), AppendError> {
        let rolled = match (&self.writer, self.segments.back()) {
            (Some(_), Some(newest)) => newest.len >= segment_bytes,
            _ => true,
        };
        if rolled {
            self.start_segment().map_err(AppendError::Undone)?;
        }
        let (Some(writer), Some(segment)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Ok(());
        };

        let mut frames = Vec::with_capacity(records.iter().map(frame_len).sum());
        let mut offsets = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            offsets.push(segment.len + frames.len() as u64);
            encode_frame(self.next_seq + i as u64, record, &mut frames);
        }
        let written = writer
            .seek(SeekFrom::Start(segment.len))
            .and_then(|_| writer.write_all(&frames))
            .and_then(|()| writer.sync_data())
            .map_err(io_error("append to", &segment.path));
        if let Err(error) = written {
            // Undo: nothing of a failed append may stay, or a later one would follow a partial
            // frame (and `open` would cut the later one off with it).
            let undone = writer
                .set_len(segment.len)
                .and_then(|()| writer.sync_data());
            return Err(match undone {
                Ok(()) => AppendError::Undone(error),
                Err(_) => AppendError::NotUndone {
                    error,
                    path: segment.path.clone(),
                },
            });
        }
        segment.len += frames.len() as u64;
        segment.offsets.extend(offsets);
        segment
            .arrived_ms
            .extend(records.iter().map(|record| record.arrived_ms));
        self.next_seq += records.len() as u64;
        self.records += records.len() as u64;
        Ok(())
    }

    /// Creates the segment the next records go to, durably named.
    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let path = self
            .dir
            .join(format!("{:020}.{SEGMENT_EXTENSION}", self.next_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        sync_dir(&self.dir)?;
        self.writer = Some(file);
        self.segments.push_back(Segment {
            first_seq: self.next_seq,
            path,
            offsets: Vec::new(),
            arrived_ms: Vec::new(),
            len: 0,
            reader: None,
        });
        Ok(())
    }

    fn peek(&mut self, max: usize) -> Result<Vec<SpooledRecord>, SpoolError> {
        let mut out = Vec::with_capacity(max.min(self.records as usize));
        for segment in &mut self.segments {
            if out.len() >= max {
                break;
            }
            let start = segment.index_of(self.drained);
            let end = start
                .saturating_add(max - out.len())
                .min(segment.offsets.len());
            if start >= end {
                continue;
            }
            let from = segment.offsets[start];
            let to = segment.frame_end(end - 1);
            let bytes = segment.read(from, to)?;
            let mut at = 0;
            for index in start..end {
                let seq = segment.first_seq + index as u64;
                match decode_frame(&bytes[at..], seq) {
                    Ok((record, used)) => {
                        out.push(record);
                        at += used;
                    }
                    Err(problem) => {
                        return Err(SpoolError::Corrupt {
                            path: segment.path.clone(),
                            detail: format!(
                                "record {seq} at byte {} changed since it was written: {problem}",
                                segment.offsets[index]
                            ),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn remove_front(&mut self, count: usize) -> Result<(), SpoolError> {
        // The sequence number after the `count`-th record still held (numbers may have gaps
        // where `open` cut damaged records off).
        let mut left = count;
        let mut new_drained = self.drained;
        for segment in &self.segments {
            let start = segment.index_of(new_drained);
            let here = segment.offsets.len() - start;
            if left <= here {
                new_drained = segment.first_seq + (start + left) as u64;
                left = 0;
                break;
            }
            left -= here;
            new_drained = segment.end_seq();
        }
        if left > 0 {
            return Err(SpoolError::RemoveTooMany {
                portal: self.dir.display().to_string(),
                asked: count,
                held: self.records,
            });
        }
        write_drained(&self.dir, new_drained)?;
        self.drained = new_drained;
        self.records -= count as u64;
        self.delete_drained_segments();
        Ok(())
    }

    /// Deletes the files of fully drained segments (the newest too: the next append starts a new
    /// one). A failed deletion keeps the segment for a later try.
    fn delete_drained_segments(&mut self) {
        while let Some(oldest) = self.segments.front() {
            if oldest.end_seq() > self.drained {
                return;
            }
            if self.segments.len() == 1 {
                self.writer = None;
            }
            if let Err(error) = fs::remove_file(&oldest.path)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(
                    path = %oldest.path.display(),
                    "collect spool: cannot delete a drained segment (its records are removed; it \
                     is deleted later): {error}"
                );
                return;
            }
            self.segments.pop_front();
        }
    }
}

impl Segment {
    /// Reads a segment back, keeping its frames up to the first that does not check and cutting
    /// the file there; returns it and how many records (at least one, if any bytes) were cut.
    fn recover(first_seq: u64, path: PathBuf) -> Result<(Segment, u64), SpoolError> {
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        let mut segment = Segment {
            first_seq,
            path,
            offsets: Vec::new(),
            arrived_ms: Vec::new(),
            len: 0,
            reader: None,
        };
        let mut at = 0;
        let problem = loop {
            if at == bytes.len() {
                break None;
            }
            let seq = segment.end_seq();
            match decode_frame(&bytes[at..], seq) {
                Ok((record, used)) => {
                    segment.offsets.push(at as u64);
                    segment.arrived_ms.push(record.arrived_ms);
                    at += used;
                }
                Err(problem) => break Some(problem),
            }
        };
        segment.len = at as u64;
        let Some(problem) = problem else {
            return Ok((segment, 0));
        };
        let cut_bytes = bytes.len() - at;
        // The frames after a bad one cannot be found reliably: they count as one record cut,
        // or as many whole frames as can still be read past a damaged one.
        let cut_records = count_frames_after(&bytes[at..]).max(1);
        tracing::warn!(
            path = %segment.path.display(),
            kept = segment.offsets.len(),
            cut_records,
            cut_bytes,
            "collect spool: cut off a torn or damaged tail ({problem}); records after record {} \
             of this segment were never acknowledged if the collector was killed while writing",
            segment.end_seq()
        );
        let file = OpenOptions::new()
            .write(true)
            .open(&segment.path)
            .map_err(io_error("open", &segment.path))?;
        file.set_len(segment.len)
            .and_then(|()| file.sync_all())
            .map_err(io_error("truncate", &segment.path))?;
        Ok((segment, cut_records))
    }

    /// The bytes `from..to` of the file.
    fn read(&mut self, from: u64, to: u64) -> Result<Vec<u8>, SpoolError> {
        let reader = match &mut self.reader {
            Some(reader) => reader,
            None => self
                .reader
                .insert(File::open(&self.path).map_err(io_error("open", &self.path))?),
        };
        let mut bytes = vec![0; (to - from) as usize];
        reader
            .seek(SeekFrom::Start(from))
            .and_then(|_| reader.read_exact(&mut bytes))
            .map_err(io_error("read", &self.path))?;
        Ok(bytes)
    }
}

/// How many frames' headers can be walked past in a damaged tail (by their lengths alone).
fn count_frames_after(bytes: &[u8]) -> u64 {
    let mut at = 0;
    let mut frames = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if body_len > MAX_BODY {
            break;
        }
        at += FRAME_HEADER + body_len;
        frames += 1;
    }
    frames
}

/// The bytes a record takes on disk.
fn frame_len(record: &SpooledRecord) -> usize {
    FRAME_HEADER
        + BODY_FIXED
        + record.partition_key.len().min(u16::MAX as usize)
        + record.data.len()
}

/// Appends `record`'s frame, checksummed for sequence number `seq`, to `out`.
fn encode_frame(seq: u64, record: &SpooledRecord, out: &mut Vec<u8>) {
    let key = record.partition_key.as_bytes();
    // Kinesis keys are at most 256 characters; the collector's are user ids.
    let key_len = key.len().min(u16::MAX as usize);
    let body_len = BODY_FIXED + key_len + record.data.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&record.arrived_ms.to_le_bytes());
    out.extend_from_slice(&(key_len as u16).to_le_bytes());
    out.extend_from_slice(&key[..key_len]);
    out.extend_from_slice(&record.data);
    let checksum = xxh3_64_with_seed(&out[start + FRAME_HEADER..], seq);
    out[start + 4..start + FRAME_HEADER].copy_from_slice(&checksum.to_le_bytes());
}

/// Reads the frame at the start of `bytes` as record `seq`; returns it and the bytes it took, or
/// what is wrong with it.
fn decode_frame(bytes: &[u8], seq: u64) -> Result<(SpooledRecord, usize), String> {
    let Some(header) = bytes.get(..FRAME_HEADER) else {
        return Err(format!(
            "a frame header cut short: {} of {FRAME_HEADER} bytes",
            bytes.len()
        ));
    };
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if !(BODY_FIXED..=MAX_BODY).contains(&body_len) {
        return Err(format!("an impossible record length {body_len}"));
    }
    let Some(body) = bytes.get(FRAME_HEADER..FRAME_HEADER + body_len) else {
        return Err(format!(
            "a record cut short: {} of {body_len} bytes",
            bytes.len() - FRAME_HEADER
        ));
    };
    let mut checksum = [0; 8];
    checksum.copy_from_slice(&header[4..FRAME_HEADER]);
    if u64::from_le_bytes(checksum) != xxh3_64_with_seed(body, seq) {
        return Err(format!("record {seq} does not match its checksum"));
    }
    let mut arrived = [0; 8];
    arrived.copy_from_slice(&body[..8]);
    let key_len = u16::from_le_bytes([body[8], body[9]]) as usize;
    let Some(key) = body.get(BODY_FIXED..BODY_FIXED + key_len) else {
        return Err(format!("a key length {key_len} longer than its record"));
    };
    let Ok(partition_key) = std::str::from_utf8(key) else {
        return Err("a partition key that is not UTF-8".into());
    };
    Ok((
        SpooledRecord {
            partition_key: partition_key.to_string(),
            data: body[BODY_FIXED + key_len..].to_vec(),
            arrived_ms: u64::from_le_bytes(arrived),
        },
        FRAME_HEADER + body_len,
    ))
}

/// The portal's `drained` number (0 when there is none yet).
fn read_drained(path: &Path) -> Result<u64, SpoolError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(io_error("read", path)(error)),
    };
    text.trim().parse().map_err(|_| SpoolError::Corrupt {
        path: path.to_path_buf(),
        detail: format!(
            "`{}` is not a record number (without this file the portal's records are replayed \
             from its oldest segment)",
            text.trim()
        ),
    })
}

/// Replaces the portal's `drained` number atomically and durably.
fn write_drained(dir: &Path, drained: u64) -> Result<(), SpoolError> {
    let temp = dir.join(DRAINED_TEMP);
    File::create(&temp)
        .and_then(|mut file| {
            file.write_all(format!("{drained}\n").as_bytes())?;
            file.sync_all()
        })
        .map_err(io_error("write", &temp))?;
    let path = dir.join(DRAINED_FILE);
    fs::rename(&temp, &path).map_err(io_error("rename into", &path))?;
    sync_dir(dir)
}

/// Syncs a directory so that the names created, renamed or deleted in it survive a crash (Unix
/// only; other systems have no portable way to do it).
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    if cfg!(unix) {
        File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(io_error("sync directory", dir))?;
    }
    Ok(())
}

/// `^[a-z0-9][a-z0-9-]{0,31}$`, as the collector validates portal names: safe as a directory name.
fn is_portal_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=32).contains(&bytes.len())
        && bytes[0] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
