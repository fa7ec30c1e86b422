//! The manifest, a checkpoint's commit record, and the names of the objects of a checkpoint
//! location: `chk-<id:020>/MANIFEST.json` and `runs/…`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::validate_key;

/// Format of checkpoints this build writes for one process and reads: 2, incremental
/// checkpoints as shared runs. (Format 1 wrote the whole state of every worker into each
/// checkpoint's directory.)
pub const FORMAT_VERSION: u32 = 2;

/// Format of checkpoints written by a cluster of processes: 3, format 2 where each process
/// writes its own delta run (`runs/<id>-delta-p<process>.run`) and a receipt for it
/// (`chk-<id>/PART-p<process>.json`), and one process commits a manifest listing them all; so a
/// manifest may list several deltas of one checkpoint (their keys are disjoint: each key belongs
/// to one worker). This build reads 2 and 3.
pub const CLUSTER_FORMAT_VERSION: u32 = 3;

/// Whether this build reads checkpoints of format `version`.
pub fn is_readable_format(version: u32) -> bool {
    version == FORMAT_VERSION || version == CLUSTER_FORMAT_VERSION
}

/// The prefix of a part receipt's name in a checkpoint's directory.
pub const RECEIPT_PREFIX: &str = "PART-p";

/// The name of the manifest in a checkpoint's directory.
pub const MANIFEST_NAME: &str = "MANIFEST.json";

/// The prefix of every run object's key.
pub const RUNS_PREFIX: &str = "runs/";

/// The prefix of a checkpoint's directory name; the id follows, zero-padded to 20 digits.
pub(super) const CHECKPOINT_PREFIX: &str = "chk-";

/// What a run holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// What changed in one checkpoint: upserts and tombstones of the keys it touched. Level 1.
    Delta,
    /// One part of a compacted base: every live key (no tombstones) whose hash falls in part
    /// `part` of `parts`. Level 0: nothing is below it.
    Base {
        /// Which part, `0..parts`.
        part: u32,
        /// How many parts the base has.
        parts: u32,
    },
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunKind::Delta => write!(f, "delta run"),
            RunKind::Base { part, parts } => write!(f, "base part {part} of {parts}"),
        }
    }
}

/// One run in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunInfo {
    /// The object's key in the store, e.g. `runs/00000000000000000042-delta.run`.
    pub key: String,
    /// Delta or base part.
    pub kind: RunKind,
    /// For a delta, the checkpoint that wrote it; for a base part, the checkpoint whose state the
    /// compaction that wrote it merged.
    pub checkpoint: u64,
    /// How many entries it holds.
    pub entries: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// The commit record of a checkpoint, written last (as pretty JSON) at
/// `chk-<id:020>/MANIFEST.json`: the runs that make up its state.
///
/// `runs` is oldest first: the base parts (if any, by part number; at most one base), then the
/// deltas in the order they were committed. A key's value is that of its newest entry; a key
/// whose newest entry is a tombstone, or that has none, is absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format of the checkpoint; this build reads and writes [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The checkpoint's id (the number in its directory's name).
    pub id: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// How many workers wrote it.
    pub workers: usize,
    /// How many processes wrote it (format 3; 1 for format 2, where it is not written).
    #[serde(default = "one_process", skip_serializing_if = "is_one_process")]
    pub processes: usize,
    /// Fingerprint of the settings the state depends on; the job refuses a mismatch (opaque here).
    pub fingerprint: String,
    /// The checkpoint whose state this one's delta applies to; `None` when it started from empty
    /// state.
    pub parent: Option<u64>,
    /// The runs making up the state, oldest first (see the type's docs).
    pub runs: Vec<RunInfo>,
    /// Free-form facts for operators and tools (watermark, sources, sizes), opaque here.
    pub info: BTreeMap<String, String>,
}

fn one_process() -> usize {
    1
}

fn is_one_process(processes: &usize) -> bool {
    *processes == 1
}

/// What one process wrote of a checkpoint of a cluster: its delta run (none when nothing changed
/// on its workers). Written create-only at `chk-<id>/PART-p<process>.json` after the run, so a
/// receipt names a run that is whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    /// The checkpoint.
    pub checkpoint: u64,
    /// The process that wrote it.
    pub process: usize,
    /// Its delta run.
    pub run: Option<RunInfo>,
}

impl Manifest {
    /// The base parts: the runs before the first delta.
    pub fn base_parts(&self) -> &[RunInfo] {
        &self.runs[..self.base_len()]
    }

    /// The deltas above the base, oldest first.
    pub fn deltas(&self) -> &[RunInfo] {
        &self.runs[self.base_len()..]
    }

    fn base_len(&self) -> usize {
        self.runs
            .iter()
            .position(|run| run.kind == RunKind::Delta)
            .unwrap_or(self.runs.len())
    }

    /// The number of parts of the base, `None` when there is no base.
    pub fn base_part_count(&self) -> Option<u32> {
        self.base_parts().first().and_then(|run| match run.kind {
            RunKind::Base { parts, .. } => Some(parts),
            RunKind::Delta => None,
        })
    }

    /// The runs this checkpoint wrote itself (its delta; one per process in a cluster), none
    /// when nothing changed.
    pub fn own_runs(&self) -> impl Iterator<Item = &RunInfo> {
        self.deltas()
            .iter()
            .filter(|run| run.checkpoint == self.id && run.kind == RunKind::Delta)
    }

    /// Bytes this checkpoint wrote itself: its delta runs (0 when nothing changed).
    pub fn bytes_written(&self) -> u64 {
        self.own_runs().map(|run| run.bytes).sum()
    }

    /// Bytes of every run the state is made of (shared ones included).
    pub fn state_bytes(&self) -> u64 {
        self.runs.iter().map(|run| run.bytes).sum()
    }

    /// The keys of every run it references.
    pub(super) fn run_keys(&self) -> impl Iterator<Item = &str> {
        self.runs.iter().map(|run| run.key.as_str())
    }
}

/// What is wrong with the shape of a parsed manifest of checkpoint `id`, if anything: keys, the
/// base before the deltas, one part count, each part once, deltas in commit order.
pub(super) fn manifest_problem(manifest: &Manifest, id: u64) -> Option<String> {
    if manifest.id != id {
        return Some(format!(
            "its manifest is that of checkpoint {}",
            manifest.id
        ));
    }
    let mut keys = BTreeSet::new();
    for run in &manifest.runs {
        if !run.key.starts_with(RUNS_PREFIX) || validate_key(&run.key).is_err() {
            return Some(format!("its manifest names a run {:?}", run.key));
        }
        if !keys.insert(run.key.as_str()) {
            return Some(format!("its manifest names run {} twice", run.key));
        }
        if run.checkpoint > id {
            return Some(format!(
                "its manifest names run {} of a later checkpoint, {}",
                run.key, run.checkpoint
            ));
        }
    }
    let base = manifest.base_parts();
    let mut previous_part = None;
    for run in base {
        let RunKind::Base { part, parts } = run.kind else {
            continue;
        };
        if Some(parts) != manifest.base_part_count() || part >= parts {
            return Some(format!(
                "its manifest's base mixes part counts (run {})",
                run.key
            ));
        }
        if previous_part.is_some_and(|previous| previous >= part) {
            return Some(format!(
                "its manifest's base parts are not in order (run {})",
                run.key
            ));
        }
        previous_part = Some(part);
    }
    let mut previous_checkpoint = None;
    for run in manifest.deltas() {
        if run.kind != RunKind::Delta {
            return Some(format!(
                "its manifest lists base part {} after a delta",
                run.key
            ));
        }
        // A cluster's checkpoint has one delta per process: equal checkpoints may follow.
        if previous_checkpoint.is_some_and(|previous| previous > run.checkpoint) {
            return Some(format!(
                "its manifest's deltas are not in commit order (run {})",
                run.key
            ));
        }
        previous_checkpoint = Some(run.checkpoint);
    }
    None
}

/// The directory (key prefix without the `/`) of checkpoint `id`.
pub(super) fn checkpoint_dir(id: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{id:020}")
}

/// The key of checkpoint `id`'s manifest.
pub(super) fn manifest_key(id: u64) -> String {
    format!("{}/{MANIFEST_NAME}", checkpoint_dir(id))
}

/// The checkpoint id and the name within it of a key like `chk-00000000000000000042/MANIFEST.json`;
/// `None` for keys that are not in a checkpoint's directory.
pub(super) fn parse_checkpoint_key(key: &str) -> Option<(u64, &str)> {
    let (dir, name) = key.split_once('/')?;
    let digits = dir.strip_prefix(CHECKPOINT_PREFIX)?;
    if name.is_empty() {
        return None;
    }
    Some((parse_id(digits)?, name))
}

/// A 20-digit id.
fn parse_id(digits: &str) -> Option<u64> {
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The key of the delta run checkpoint `id` writes. One per checkpoint id: a second writer of the
/// same id finds it there (create-only) instead of replacing it.
pub(super) fn delta_run_key(id: u64) -> String {
    format!("{RUNS_PREFIX}{id:020}-delta.run")
}

/// The key of the delta run process `process` of a cluster writes for checkpoint `id`.
pub(super) fn delta_part_run_key(id: u64, process: usize) -> String {
    format!("{RUNS_PREFIX}{id:020}-delta-p{process:04}.run")
}

/// The key of process `process`'s receipt for its part of checkpoint `id`.
pub(super) fn receipt_key(id: u64, process: usize) -> String {
    format!("{}/{RECEIPT_PREFIX}{process:04}.json", checkpoint_dir(id))
}

/// The process a receipt's name (within its checkpoint's directory) is of.
pub(super) fn parse_receipt_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(RECEIPT_PREFIX)?.strip_suffix(".json")?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The key prefix of the base parts one compaction of checkpoint `checkpoint` writes; `nonce`
/// tells compactions of the same checkpoint apart (a crashed process's leftovers, a retry).
pub(super) fn base_run_prefix(checkpoint: u64, nonce: u64) -> String {
    format!("{RUNS_PREFIX}{checkpoint:020}-base-{nonce:016x}-")
}

/// The key of part `part` of `parts` of a compaction's base (see [`base_run_prefix`]).
pub(super) fn base_run_key(checkpoint: u64, nonce: u64, part: u32, parts: u32) -> String {
    format!(
        "{}{part:05}of{parts:05}.run",
        base_run_prefix(checkpoint, nonce)
    )
}

/// What a run key says about its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RunName {
    /// The delta of checkpoint `.0`.
    Delta(u64),
    /// A base part of a compaction of checkpoint `.0`.
    Base(u64),
}

impl RunName {
    /// The checkpoint the name carries.
    pub(super) fn checkpoint(self) -> u64 {
        match self {
            RunName::Delta(id) | RunName::Base(id) => id,
        }
    }
}

/// Parses a key written by [`delta_run_key`] or [`base_run_key`]; `None` for any other key
/// (which the checkpoint logic leaves alone).
pub(super) fn parse_run_key(key: &str) -> Option<RunName> {
    let name = key.strip_prefix(RUNS_PREFIX)?;
    let (digits, rest) = name.split_at_checked(20)?;
    let id = parse_id(digits)?;
    let is_part = |rest: &str| {
        rest.strip_prefix("-delta-p")
            .and_then(|rest| rest.strip_suffix(".run"))
            .is_some_and(|digits| digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()))
    };
    if rest == "-delta.run" || is_part(rest) {
        Some(RunName::Delta(id))
    } else if rest.starts_with("-base-") && rest.ends_with(".run") {
        Some(RunName::Base(id))
    } else {
        None
    }
}

/// Lowercase hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// The SHA-256 of `bytes`, lowercase hex.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_store_sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn checkpoint_store_keys_parse_back() {
        assert_eq!(
            parse_checkpoint_key(&manifest_key(42)),
            Some((42, MANIFEST_NAME))
        );
        assert_eq!(parse_checkpoint_key("chk-12/MANIFEST.json"), None);
        assert_eq!(parse_run_key(&delta_run_key(7)), Some(RunName::Delta(7)));
        assert_eq!(
            parse_run_key(&base_run_key(9, 0xabc, 3, 16)),
            Some(RunName::Base(9))
        );
        assert_eq!(
            base_run_key(9, 0xabc, 3, 16),
            "runs/00000000000000000009-base-0000000000000abc-00003of00016.run"
        );
        assert_eq!(
            parse_run_key(&delta_part_run_key(7, 12)),
            Some(RunName::Delta(7))
        );
        assert_eq!(
            delta_part_run_key(7, 12),
            "runs/00000000000000000007-delta-p0012.run"
        );
        assert_eq!(
            parse_checkpoint_key(&receipt_key(7, 12)),
            Some((7, "PART-p0012.json"))
        );
        assert_eq!(parse_receipt_name("PART-p0012.json"), Some(12));
        assert_eq!(parse_receipt_name("PART-p12.json"), None);
        assert_eq!(parse_receipt_name(MANIFEST_NAME), None);
        assert_eq!(
            parse_run_key("runs/00000000000000000009-delta-p1.run"),
            None
        );
        assert_eq!(parse_run_key("runs/notes.txt"), None);
        assert_eq!(parse_run_key("runs/00000000000000000009-other"), None);
    }

    #[test]
    fn checkpoint_store_manifest_json_names_run_kinds() -> Result<(), serde_json::Error> {
        let run = RunInfo {
            key: base_run_key(9, 1, 3, 16),
            kind: RunKind::Base { part: 3, parts: 16 },
            checkpoint: 9,
            entries: 2,
            bytes: 30,
            sha256: sha256_hex(b""),
        };
        let json = serde_json::to_value(&run)?;
        assert_eq!(
            json["kind"],
            serde_json::json!({"base": {"part": 3, "parts": 16}})
        );
        let delta = RunInfo {
            kind: RunKind::Delta,
            ..run
        };
        assert_eq!(serde_json::to_value(&delta)?["kind"], "delta");
        Ok(())
    }
}
