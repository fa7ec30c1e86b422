//! Runs: immutable objects of state entries sorted by key. Their byte layout (see the module docs of
//! [`super`]), how one is written, read back and checked, which part of a base a key belongs to, and
//! the merge of a base part with the deltas above it that both loading and compaction use.

use std::ops::Range;

use super::manifest::{RunInfo, RunKind, sha256_hex};
use super::store::{CheckpointStore, StoreError};

/// The first four bytes of every run.
const RUN_MAGIC: &[u8; 4] = b"PFRN";
/// The last four bytes of every run (after the entry count): a run cut short lacks them.
const RUN_END_MAGIC: &[u8; 4] = b"NRFP";
/// The version of the run layout this build writes and reads (the byte after the magic).
const RUN_LAYOUT_VERSION: u8 = 1;
/// The kind byte of a delta run.
const KIND_DELTA: u8 = 0;
/// The kind byte of a base part.
const KIND_BASE: u8 = 1;
/// The tag byte of a tombstone entry.
const TAG_TOMBSTONE: u8 = 0;
/// The tag byte of an upsert entry (a value follows).
const TAG_VALUE: u8 = 1;
/// The trailer: the entry count (u64, little-endian) and [`RUN_END_MAGIC`].
const TRAILER_LEN: usize = 12;

/// One entry of the job's state as a checkpoint records it: a key and its new value, or `None`
/// for a tombstone (the key was deleted).
///
/// Keys are opaque bytes here (the job encodes operator, key group and logical key in them); a
/// later checkpoint's entry for a key replaces every earlier one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<Vec<u8>>,
}

impl StateEntry {
    /// An upsert: `key` now has `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        StateEntry {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// A tombstone: `key` was deleted.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        StateEntry {
            key: key.into(),
            value: None,
        }
    }
}

impl std::fmt::Debug for StateEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key readably, the value's size only (values can be large).
        let key = self.key.escape_ascii().to_string();
        match &self.value {
            Some(value) => write!(f, "put {key:?} ({} bytes)", value.len()),
            None => write!(f, "delete {key:?}"),
        }
    }
}

/// The base part (of `parts`) that `key` belongs to: a 64-bit FNV-1a hash of the key, mixed with
/// SplitMix64's finaliser (FNV's low bits are weak for short keys), modulo `parts`.
///
/// This is part of the checkpoint format: changing it would put keys in the wrong parts of every
/// existing base. Because it is `hash % parts`, a key of part `p` of `n` parts is in part `p`,
/// `p + n`, `p + 2n`… of `k·n` parts, so doubling the number of parts splits each part into parts
/// of the new base without looking at any other.
pub(super) fn part_of(key: &[u8], parts: u32) -> u32 {
    if parts <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    // The remainder is below `parts`, a u32.
    (hash % u64::from(parts)) as u32
}

/// Appends `value` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint at `*at` (before `end`), moving `*at` past it.
fn get_varint(bytes: &[u8], at: &mut usize, end: usize) -> Result<u64, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        if *at >= end {
            return Err(format!("a length at byte {at} runs past the entries"));
        }
        let byte = bytes[*at];
        *at += 1;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(format!("a length before byte {at} overflows 64 bits"));
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(format!("a length before byte {at} is longer than 10 bytes"))
}

/// Encodes a run: the header, entries pushed in strictly increasing key order, the trailer.
#[derive(Debug)]
pub(super) struct RunWriter {
    bytes: Vec<u8>,
    entries: u64,
    /// Where the previous key is in `bytes`, to check the order.
    previous_key: Option<Range<usize>>,
}

impl RunWriter {
    /// A run of `kind`.
    pub(super) fn new(kind: RunKind) -> Self {
        let mut bytes = Vec::with_capacity(4096);
        bytes.extend_from_slice(RUN_MAGIC);
        bytes.push(RUN_LAYOUT_VERSION);
        match kind {
            RunKind::Delta => bytes.push(KIND_DELTA),
            RunKind::Base { part, parts } => {
                bytes.push(KIND_BASE);
                put_varint(&mut bytes, u64::from(part));
                put_varint(&mut bytes, u64::from(parts));
            }
        }
        RunWriter {
            bytes,
            entries: 0,
            previous_key: None,
        }
    }

    /// Appends an entry; its key must be greater than the previous one's (the callers' merges and
    /// sorts guarantee it).
    pub(super) fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        debug_assert!(
            self.previous_key
                .as_ref()
                .is_none_or(|previous| &self.bytes[previous.clone()] < key),
            "run keys must be strictly increasing"
        );
        put_varint(&mut self.bytes, key.len() as u64);
        let key_start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.previous_key = Some(key_start..self.bytes.len());
        match value {
            None => self.bytes.push(TAG_TOMBSTONE),
            Some(value) => {
                self.bytes.push(TAG_VALUE);
                put_varint(&mut self.bytes, value.len() as u64);
                self.bytes.extend_from_slice(value);
            }
        }
        self.entries += 1;
    }

    /// How many entries were pushed.
    pub(super) fn entries(&self) -> u64 {
        self.entries
    }

    /// The run's bytes and its number of entries.
    pub(super) fn finish(mut self) -> (Vec<u8>, u64) {
        self.bytes.extend_from_slice(&self.entries.to_le_bytes());
        self.bytes.extend_from_slice(RUN_END_MAGIC);
        (self.bytes, self.entries)
    }
}

/// Where one entry is inside a run's bytes.
#[derive(Clone, Debug)]
struct EntrySpan {
    key: Range<usize>,
    /// `None` for a tombstone.
    value: Option<Range<usize>>,
    /// Where the next entry starts.
    next: usize,
}

/// Decodes the entry at `at` (before `end`, where the entries stop).
fn decode_entry(bytes: &[u8], at: usize, end: usize) -> Result<EntrySpan, String> {
    let mut position = at;
    let key_len = get_varint(bytes, &mut position, end)?;
    let key = take(position, key_len, end, "a key")?;
    position = key.end;
    if position >= end {
        return Err(format!("the entry at byte {at} has no value tag"));
    }
    let tag = bytes[position];
    position += 1;
    let value = match tag {
        TAG_TOMBSTONE => None,
        TAG_VALUE => {
            let value_len = get_varint(bytes, &mut position, end)?;
            let value = take(position, value_len, end, "a value")?;
            position = value.end;
            Some(value)
        }
        other => {
            return Err(format!(
                "the entry at byte {at} has the value tag {other}, neither 0 (tombstone) nor 1"
            ));
        }
    };
    Ok(EntrySpan {
        key,
        value,
        next: position,
    })
}

/// The range of `len` bytes at `start`, if they end before `end`.
fn take(start: usize, len: u64, end: usize, what: &str) -> Result<Range<usize>, String> {
    usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&stop| stop <= end)
        .map(|stop| start..stop)
        .ok_or_else(|| format!("{what} of {len} bytes at byte {start} runs past the entries"))
}

/// A run read back whose layout was checked from end to end: header, every entry, keys strictly
/// increasing, entry count and trailer.
pub(super) struct Run {
    bytes: Vec<u8>,
    kind: RunKind,
    /// Where the entries are.
    body: Range<usize>,
    entries: u64,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("kind", &self.kind)
            .field("bytes", &self.bytes.len())
            .field("entries", &self.entries)
            .finish()
    }
}

impl Run {
    /// Checks the layout of `bytes` and keeps them.
    pub(super) fn parse(bytes: Vec<u8>) -> Result<Run, String> {
        if bytes.len() < RUN_MAGIC.len() + 2 + TRAILER_LEN || !bytes.starts_with(RUN_MAGIC) {
            return Err("it does not start like a run".to_string());
        }
        if !bytes.ends_with(RUN_END_MAGIC) {
            return Err("it does not end like a run (cut short?)".to_string());
        }
        let version = bytes[4];
        if version != RUN_LAYOUT_VERSION {
            return Err(format!(
                "its layout version is {version}; this build reads {RUN_LAYOUT_VERSION}"
            ));
        }
        let end = bytes.len() - TRAILER_LEN;
        let mut at = 6;
        let kind = match bytes[5] {
            KIND_DELTA => RunKind::Delta,
            KIND_BASE => {
                let part = get_varint(&bytes, &mut at, end)?;
                let parts = get_varint(&bytes, &mut at, end)?;
                match (u32::try_from(part), u32::try_from(parts)) {
                    (Ok(part), Ok(parts)) if part < parts => RunKind::Base { part, parts },
                    _ => return Err(format!("its header names part {part} of {parts}")),
                }
            }
            other => return Err(format!("its kind byte is {other}, neither 0 nor 1")),
        };
        let body = at..end;
        let mut count = [0u8; 8];
        count.copy_from_slice(&bytes[end..end + 8]);
        let declared = u64::from_le_bytes(count);

        let mut entries = 0u64;
        let mut previous: Option<Range<usize>> = None;
        while at < end {
            let entry = decode_entry(&bytes, at, end)?;
            if let Some(previous) = previous
                && bytes[previous] >= bytes[entry.key.clone()]
            {
                return Err(format!("its keys are not strictly increasing at byte {at}"));
            }
            if let RunKind::Base { part, parts } = kind
                && part_of(&bytes[entry.key.clone()], parts) != part
            {
                return Err(format!(
                    "the key at byte {at} does not belong to part {part} of {parts}"
                ));
            }
            previous = Some(entry.key);
            at = entry.next;
            entries += 1;
        }
        if entries != declared {
            return Err(format!(
                "it holds {entries} entries but its trailer says {declared}"
            ));
        }
        Ok(Run {
            bytes,
            kind,
            body,
            entries,
        })
    }

    /// Its size in bytes.
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Its bytes, for [`PartMerge::next_live`].
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The offsets of its entries, grouped by the base part (of `parts`) their keys belong to; each
    /// group is in key order.
    pub(super) fn offsets_by_part(&self, parts: u32) -> Result<Vec<Vec<usize>>, String> {
        let mut groups = vec![Vec::new(); parts.max(1) as usize];
        let mut at = self.body.start;
        while at < self.body.end {
            let entry = decode_entry(&self.bytes, at, self.body.end)?;
            let part = part_of(&self.bytes[entry.key], parts) as usize;
            if let Some(group) = groups.get_mut(part) {
                group.push(at);
            }
            at = entry.next;
        }
        Ok(groups)
    }

    /// Every entry, in key order (tests, tools, and a failed commit giving its delta back).
    pub(super) fn entries(&self) -> Result<Vec<StateEntry>, String> {
        let mut entries = Vec::new();
        let mut at = self.body.start;
        while at < self.body.end {
            let entry = decode_entry(&self.bytes, at, self.body.end)?;
            entries.push(StateEntry {
                key: self.bytes[entry.key].to_vec(),
                value: entry.value.map(|value| self.bytes[value].to_vec()),
            });
            at = entry.next;
        }
        Ok(entries)
    }
}

/// Reads the run `info` names and checks it against the manifest: present, the size, the SHA-256,
/// then the layout, kind and number of entries. The outer error is the store's; the inner one
/// says what is wrong with the run (for a "checkpoint … is damaged: …" message).
pub(super) fn fetch_run(
    store: &dyn CheckpointStore,
    info: &RunInfo,
) -> Result<Result<Run, String>, StoreError> {
    let Some(bytes) = store.get(&info.key)? else {
        return Ok(Err(format!("run {} is missing", info.key)));
    };
    Ok(check_run(info, bytes))
}

/// Checks `bytes` against `info` (see [`fetch_run`]).
pub(super) fn check_run(info: &RunInfo, bytes: Vec<u8>) -> Result<Run, String> {
    let key = &info.key;
    if bytes.len() as u64 != info.bytes {
        return Err(format!(
            "run {key} has {} bytes but the manifest says {}",
            bytes.len(),
            info.bytes
        ));
    }
    let sha256 = sha256_hex(&bytes);
    if sha256 != info.sha256 {
        return Err(format!(
            "run {key} has SHA-256 {sha256} but the manifest says {}",
            info.sha256
        ));
    }
    let run = Run::parse(bytes).map_err(|why| format!("run {key} is not a valid run: {why}"))?;
    if run.kind != info.kind {
        return Err(format!(
            "run {key} is a {} but the manifest says {}",
            run.kind, info.kind
        ));
    }
    if run.entries != info.entries {
        return Err(format!(
            "run {key} holds {} entries but the manifest says {}",
            run.entries, info.entries
        ));
    }
    Ok(run)
}

/// Where a merge source's remaining entries are.
#[derive(Debug)]
enum Positions {
    /// Every entry from `next` to `end` of the run; with `only`, just those of part `.0` of `.1`
    /// (an old base part being split into the parts of a bigger base).
    Sequential {
        next: usize,
        end: usize,
        only: Option<(u32, u32)>,
    },
    /// The entries at these offsets, in key order (a delta's entries of one part).
    Listed { offsets: Vec<usize>, next: usize },
}

/// One input of a [`PartMerge`].
#[derive(Debug)]
struct Source {
    /// Index of the run's bytes in the slice given to [`PartMerge::next_live`].
    run: usize,
    positions: Positions,
    /// The entry this source offers next; `None` when not read yet or exhausted.
    head: Option<EntrySpan>,
}

impl Source {
    /// Reads the next entry into `head` if it is empty and the source has more.
    fn fill(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.head.is_some() {
            return Ok(());
        }
        match &mut self.positions {
            Positions::Sequential { next, end, only } => {
                while *next < *end {
                    let entry = decode_entry(bytes, *next, *end)?;
                    *next = entry.next;
                    let wanted = only.is_none_or(|(part, parts)| {
                        part_of(&bytes[entry.key.clone()], parts) == part
                    });
                    if wanted {
                        self.head = Some(entry);
                        break;
                    }
                }
            }
            Positions::Listed { offsets, next } => {
                if let Some(&offset) = offsets.get(*next) {
                    *next += 1;
                    self.head = Some(decode_entry(
                        bytes,
                        offset,
                        bytes.len().saturating_sub(TRAILER_LEN),
                    )?);
                }
            }
        }
        Ok(())
    }
}

/// A live key and its value, borrowed from a run.
pub(super) type LiveEntry<'b> = (&'b [u8], &'b [u8]);

/// The merge of one part's sources, oldest first (the base part, then each delta in order): yields
/// each live key once, in key order, with the newest source's entry for it; keys whose newest
/// entry is a tombstone are left out. It holds offsets only: the runs' bytes are passed to each
/// call, so that the caller can own them.
#[derive(Debug, Default)]
pub(super) struct PartMerge {
    sources: Vec<Source>,
}

impl PartMerge {
    /// Adds the entries of run `run` from `body`, all of them or only those of part `only.0` of
    /// `only.1`. Sources must be added oldest first.
    fn add_sequential(&mut self, run: usize, body: Range<usize>, only: Option<(u32, u32)>) {
        self.sources.push(Source {
            run,
            positions: Positions::Sequential {
                next: body.start,
                end: body.end,
                only,
            },
            head: None,
        });
    }

    /// Adds the entries of run `run` at `offsets` (in key order). Sources must be added oldest
    /// first.
    pub(super) fn add_listed(&mut self, run: usize, offsets: Vec<usize>) {
        if offsets.is_empty() {
            return;
        }
        self.sources.push(Source {
            run,
            positions: Positions::Listed { offsets, next: 0 },
            head: None,
        });
    }

    /// Adds every entry of `parsed` (run index `run`), or only those of part `only.0` of `only.1`.
    pub(super) fn add_run(&mut self, run: usize, parsed: &Run, only: Option<(u32, u32)>) {
        self.add_sequential(run, parsed.body.clone(), only);
    }

    /// The next live entry: key and value, borrowed from `runs` (indexed as the sources were
    /// added).
    pub(super) fn next_live<'b>(
        &mut self,
        runs: &[&'b [u8]],
    ) -> Result<Option<LiveEntry<'b>>, String> {
        loop {
            let mut smallest: Option<&'b [u8]> = None;
            let mut newest = None;
            for (index, source) in self.sources.iter_mut().enumerate() {
                let bytes = runs
                    .get(source.run)
                    .copied()
                    .ok_or_else(|| format!("no bytes for run {}", source.run))?;
                source.fill(bytes)?;
                let Some(head) = &source.head else { continue };
                let key = &bytes[head.key.clone()];
                // `<=`: among equal keys the later (newer) source wins.
                if smallest.is_none_or(|smallest| key <= smallest) {
                    smallest = Some(key);
                    newest = Some(index);
                }
            }
            let (Some(smallest), Some(newest)) = (smallest, newest) else {
                return Ok(None);
            };
            let mut live = None;
            for (index, source) in self.sources.iter_mut().enumerate() {
                let Some(head) = &source.head else { continue };
                let bytes = runs[source.run];
                if &bytes[head.key.clone()] != smallest {
                    continue;
                }
                if index == newest {
                    live = head.value.clone().map(|value| &bytes[value]);
                }
                // Every source's entry for this key is consumed: older ones are overwritten.
                source.head = None;
            }
            if let Some(value) = live {
                return Ok(Some((smallest, value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: RunKind, entries: &[StateEntry]) -> Vec<u8> {
        let mut writer = RunWriter::new(kind);
        for entry in entries {
            writer.push(&entry.key, entry.value.as_deref());
        }
        writer.finish().0
    }

    #[test]
    fn checkpoint_runs_round_trip_and_reject_damage() -> Result<(), String> {
        let entries = vec![
            StateEntry::put(*b"", *b"empty key"),
            StateEntry::delete(*b"a"),
            StateEntry::put(*b"b", vec![7u8; 300]),
        ];
        let bytes = encode(RunKind::Delta, &entries);
        assert!(bytes.starts_with(b"PFRN\x01\x00"));
        assert!(bytes.ends_with(b"\x03\0\0\0\0\0\0\0NRFP"));
        let run = Run::parse(bytes.clone())?;
        assert_eq!(run.entries()?, entries);
        assert_eq!(run.kind, RunKind::Delta);

        let truncated = bytes[..bytes.len() - 1].to_vec();
        assert!(Run::parse(truncated).is_err());
        let mut count = bytes.clone();
        let at = count.len() - TRAILER_LEN;
        count[at] = 2;
        assert!(Run::parse(count).is_err_and(|why| why.contains("trailer says 2")));
        let mut tag = bytes.clone();
        tag[7] = 9; // The empty key's value tag.
        assert!(Run::parse(tag).is_err_and(|why| why.contains("value tag 9")));

        let unsorted = encode(
            RunKind::Delta,
            &[StateEntry::delete(*b"a"), StateEntry::delete(*b"b")],
        );
        let mut swapped = unsorted.clone();
        // Both keys are one byte long at the same positions in their entries: swap them.
        let (a, b) = (7, 10);
        swapped.swap(a, b);
        assert!(Run::parse(swapped).is_err_and(|why| why.contains("strictly increasing")));
        Ok(())
    }

    #[test]
    fn checkpoint_runs_base_parts_hold_only_their_keys() -> Result<(), String> {
        let key = b"some key";
        let part = part_of(key, 16);
        let right = encode(
            RunKind::Base { part, parts: 16 },
            &[StateEntry::put(*key, *b"v")],
        );
        assert!(Run::parse(right).is_ok());
        let wrong = encode(
            RunKind::Base {
                part: (part + 1) % 16,
                parts: 16,
            },
            &[StateEntry::put(*key, *b"v")],
        );
        assert!(Run::parse(wrong).is_err_and(|why| why.contains("does not belong")));
        Ok(())
    }

    #[test]
    fn checkpoint_runs_partitioning_is_stable_and_splits_on_doubling() {
        // Part of the format: these values must never change.
        let pinned: Vec<u32> = [&b""[..], b"a", b"page:42", b"\x00\x01\x02"]
            .iter()
            .map(|key| part_of(key, 1 << 16))
            .collect();
        assert_eq!(pinned, PINNED_PARTS);
        for n in 0..1000u32 {
            let key = n.to_be_bytes();
            assert_eq!(part_of(&key, 32) % 16, part_of(&key, 16));
            assert_eq!(part_of(&key, 1), 0);
        }
        let mut counts = [0u32; 16];
        for n in 0..16_000u32 {
            counts[part_of(format!("key-{n}").as_bytes(), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    /// `part_of` of the keys in the test above, for 65,536 parts, as an independent implementation
    /// of the documented hash (a few lines of Python) computes them.
    const PINNED_PARTS: [u32; 4] = [59547, 8440, 44886, 3811];

    #[test]
    fn checkpoint_runs_merge_newest_wins_and_drops_tombstones() -> Result<(), String> {
        let base = Run::parse(encode(
            RunKind::Delta,
            &[
                StateEntry::put(*b"a", *b"1"),
                StateEntry::put(*b"b", *b"1"),
                StateEntry::put(*b"c", *b"1"),
            ],
        ))?;
        let delta = Run::parse(encode(
            RunKind::Delta,
            &[
                StateEntry::delete(*b"a"),
                StateEntry::put(*b"c", *b"2"),
                StateEntry::put(*b"d", *b"2"),
                StateEntry::delete(*b"e"),
            ],
        ))?;
        let mut merge = PartMerge::default();
        merge.add_run(0, &base, None);
        merge.add_listed(1, delta.offsets_by_part(1)?.remove(0));
        let runs = [base.bytes(), delta.bytes()];
        let mut live = Vec::new();
        while let Some((key, value)) = merge.next_live(&runs)? {
            live.push((key.to_vec(), value.to_vec()));
        }
        assert_eq!(
            live,
            vec![
                (b"b".to_vec(), b"1".to_vec()),
                (b"c".to_vec(), b"2".to_vec()),
                (b"d".to_vec(), b"2".to_vec()),
            ]
        );
        Ok(())
    }
}
