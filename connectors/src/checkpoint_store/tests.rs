//! Checkpoints on a local directory: commits, loads, compaction, retention, fallback, and a model
//! check against a `BTreeMap`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn local() -> Result<(tempfile::TempDir, Arc<LocalDirStore>), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(LocalDirStore::new(dir.path().join("checkpoints"))?);
    Ok((dir, store))
}

/// Compacting only when asked, into 4 parts.
fn manual_policy() -> CompactionPolicy {
    CompactionPolicy {
        min_base_parts: 4,
        ..CompactionPolicy::manual()
    }
}

fn manual(store: Arc<dyn CheckpointStore>, keep: usize) -> Checkpoints {
    Checkpoints::new(store, keep).with_compaction(manual_policy())
}

fn put(key: &str, value: &str) -> StateEntry {
    StateEntry::put(key, value)
}

fn commit(
    checkpoints: &Checkpoints,
    parent: Option<&Manifest>,
    delta: Vec<StateEntry>,
) -> Result<Manifest, CheckpointError> {
    let id = checkpoints.next_id()?;
    let info = BTreeMap::from([("watermark".to_string(), format!("{}", id * 1000))]);
    Ok(checkpoints
        .commit(id, parent, delta, 2, "fp", info)?
        .manifest)
}

fn state_of(loaded: &LoadedCheckpoint) -> Result<State, CheckpointError> {
    loaded.entries().collect()
}

fn latest(checkpoints: &Checkpoints) -> Result<(u64, State), Box<dyn std::error::Error>> {
    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    Ok((loaded.manifest.id, state_of(&loaded)?))
}

fn state(pairs: &[(&str, &str)]) -> State {
    pairs
        .iter()
        .map(|(key, value)| (key.as_bytes().to_vec(), value.as_bytes().to_vec()))
        .collect()
}

/// Every run object in the store.
fn stored_runs(store: &LocalDirStore) -> Result<BTreeSet<String>, StoreError> {
    Ok(store.list(RUNS_PREFIX)?.into_iter().collect())
}

/// The runs the committed manifests in the store list.
fn listed_runs(checkpoints: &Checkpoints) -> Result<BTreeSet<String>, CheckpointError> {
    Ok(checkpoints
        .list()?
        .into_iter()
        .filter_map(|summary| summary.manifest)
        .flat_map(|manifest| manifest.runs.into_iter().map(|run| run.key))
        .collect())
}

fn rewrite(store: &LocalDirStore, key: &str, change: impl FnOnce(&mut Vec<u8>)) -> TestResult {
    let path = store.dir().join(key);
    let mut bytes = fs::read(&path)?;
    change(&mut bytes);
    fs::write(path, bytes)?;
    Ok(())
}

#[test]
fn checkpoint_store_round_trip_of_deltas() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    assert!(checkpoints.load_latest()?.is_none());
    assert_eq!(checkpoints.next_id()?, 1);

    // Unsorted, with a key repeated: the last occurrence wins.
    let first = checkpoints.commit(
        1,
        None,
        vec![
            put("b", "1"),
            put("a", "1"),
            put("b", "2"),
            StateEntry::delete("c"),
        ],
        2,
        "fp",
        BTreeMap::new(),
    )?;
    assert_eq!(first.manifest.format_version, FORMAT_VERSION);
    assert_eq!(first.manifest.parent, None);
    assert_eq!(first.manifest.runs.len(), 1);
    let run = &first.manifest.runs[0];
    assert_eq!(run.key, "runs/00000000000000000001-delta.run");
    assert_eq!(
        (run.kind, run.checkpoint, run.entries),
        (RunKind::Delta, 1, 3)
    );
    assert_eq!(run.sha256.len(), 64);
    assert_eq!(first.bytes_written, run.bytes);
    assert_eq!(first.state_bytes, run.bytes);
    assert_eq!(first.compaction, None);

    let second = checkpoints.commit(
        2,
        Some(&first.manifest),
        vec![StateEntry::delete("a"), put("d", "2")],
        2,
        "fp",
        BTreeMap::new(),
    )?;
    assert_eq!(second.manifest.parent, Some(1));
    assert_eq!(second.manifest.runs[0], first.manifest.runs[0], "shared");
    assert_eq!(
        second.state_bytes,
        first.bytes_written + second.bytes_written
    );

    // An empty delta writes no run: the state is the parent's.
    let third = checkpoints.commit(3, Some(&second.manifest), vec![], 2, "fp", BTreeMap::new())?;
    assert_eq!(third.bytes_written, 0);
    assert_eq!(third.manifest.runs, second.manifest.runs);
    assert_eq!(third.manifest.own_runs().next(), None);

    let loaded = checkpoints.load_latest()?.ok_or("nothing loaded")?;
    assert_eq!(loaded.manifest, third.manifest);
    assert!(loaded.skipped.is_empty());
    assert_eq!(state_of(&loaded)?, state(&[("b", "2"), ("d", "2")]));
    let first_state = state_of(&checkpoints.load(1)?.ok_or("1 is kept")?)?;
    assert_eq!(first_state, state(&[("a", "1"), ("b", "2")]));
    assert_eq!(checkpoints.next_id()?, 4);
    assert_eq!(
        store.list("")?,
        vec![
            "chk-00000000000000000001/MANIFEST.json",
            "chk-00000000000000000002/MANIFEST.json",
            "chk-00000000000000000003/MANIFEST.json",
            "runs/00000000000000000001-delta.run",
            "runs/00000000000000000002-delta.run",
        ]
    );

    let summaries = checkpoints.list()?;
    assert_eq!(summaries.len(), 3);
    assert_eq!(summaries[0].status, CheckpointStatus::Committed);
    assert_eq!(summaries[0].manifest.as_ref(), Some(&third.manifest));
    assert_eq!(summaries[0].runs, 2);
    assert_eq!(summaries[0].state_bytes, second.state_bytes);
    assert_eq!(summaries[0].bytes_written, 0);
    assert_eq!(summaries[1].bytes_written, second.bytes_written);
    Ok(())
}

#[test]
fn checkpoint_store_compaction_merges_into_a_base_and_keeps_every_manifest_meaning() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 10);
    let mut parent = None;
    let mut model = State::new();
    let mut snapshots = BTreeMap::new();
    for round in 0..6u32 {
        let mut delta = Vec::new();
        for n in 0..50u32 {
            let key = format!("key-{:03}", (n * 7 + round * 13) % 120);
            if (n + round) % 5 == 0 {
                model.remove(key.as_bytes());
                delta.push(StateEntry::delete(key));
            } else {
                let value = format!("{round}-{n}");
                model.insert(key.clone().into_bytes(), value.clone().into_bytes());
                delta.push(put(&key, &value));
            }
        }
        let manifest = commit(&checkpoints, parent.as_ref(), delta)?;
        snapshots.insert(
            manifest.id,
            (
                model.clone(),
                fs::read(store.dir().join(manifest_key(manifest.id)))?,
            ),
        );
        parent = Some(manifest);
    }
    let compacted = parent.clone().ok_or("committed")?;
    let report = checkpoints
        .compact(&compacted)?
        .ok_or("deltas to compact")?;
    assert_eq!(report.checkpoint, compacted.id);
    assert_eq!(report.deltas_merged, 6);
    assert_eq!(report.parts, 4);
    assert_eq!(report.parts_written, 4);
    assert_eq!(report.parts_reused, 0);
    assert_eq!(report.entries, model.len() as u64);
    assert_eq!(report.bytes_read, compacted.state_bytes());

    // The next commit lists the new base in place of the six deltas.
    let next = checkpoints.commit(
        checkpoints.next_id()?,
        Some(&compacted),
        vec![put("key-000", "new")],
        2,
        "fp",
        BTreeMap::new(),
    )?;
    model.insert(b"key-000".to_vec(), b"new".to_vec());
    assert_eq!(next.compaction.as_ref(), Some(&report));
    assert_eq!(next.manifest.base_part_count(), Some(4));
    assert_eq!(next.manifest.base_parts().len(), 4);
    assert_eq!(next.manifest.deltas().len(), 1);
    assert_eq!(latest(&checkpoints)?, (next.manifest.id, model.clone()));

    // Every older manifest is untouched and still means its state.
    for (id, (expected, manifest_bytes)) in &snapshots {
        assert_eq!(
            &fs::read(store.dir().join(manifest_key(*id)))?,
            manifest_bytes
        );
        let loaded = checkpoints.load(*id)?.ok_or("kept")?;
        assert_eq!(&state_of(&loaded)?, expected, "checkpoint {id}");
    }

    // A second compaction touching one part rewrites it and reuses the other three.
    let report = checkpoints
        .compact(&next.manifest)?
        .ok_or("a delta to compact")?;
    assert_eq!((report.parts_written, report.parts_reused), (1, 3));
    let after = commit(&checkpoints, Some(&next.manifest), vec![])?;
    let reused = after
        .base_parts()
        .iter()
        .filter(|run| next.manifest.base_parts().contains(run))
        .count();
    assert_eq!(reused, 3);
    assert!(after.deltas().is_empty());
    assert_eq!(latest(&checkpoints)?, (after.id, model));
    Ok(())
}

#[test]
fn checkpoint_store_compaction_drops_tombstones_and_empty_parts() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 1);
    let first = commit(&checkpoints, None, vec![put("a", "1"), put("b", "1")])?;
    let second = commit(
        &checkpoints,
        Some(&first),
        vec![StateEntry::delete("a"), StateEntry::delete("b")],
    )?;
    let report = checkpoints.compact(&second)?.ok_or("deltas")?;
    assert_eq!(
        (report.entries, report.parts_written, report.base_bytes),
        (0, 0, 0)
    );
    let third = commit(&checkpoints, Some(&second), vec![])?;
    assert!(third.runs.is_empty(), "nothing is left: {third:?}");
    assert_eq!(latest(&checkpoints)?, (third.id, State::new()));
    assert!(
        stored_runs(&store)?.is_empty(),
        "the deltas are no longer listed"
    );
    Ok(())
}

#[test]
fn checkpoint_store_keeps_the_newest_k_and_exactly_the_runs_they_list() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 2);
    let mut parent: Option<Manifest> = None;
    for round in 0..9 {
        let delta = vec![put(&format!("k{}", round % 4), &format!("v{round}"))];
        let manifest = commit(&checkpoints, parent.as_ref(), delta)?;
        if round % 3 == 2 {
            checkpoints.compact(&manifest)?;
        }
        parent = Some(manifest);
        let ids: Vec<u64> = checkpoints.list()?.iter().map(|s| s.id).collect();
        let newest = parent.as_ref().map_or(0, |m| m.id);
        let expected: Vec<u64> = (newest.saturating_sub(1).max(1)..=newest).rev().collect();
        assert_eq!(ids, expected, "round {round}");
        if round % 3 != 2 {
            assert_eq!(
                stored_runs(&store)?,
                listed_runs(&checkpoints)?,
                "round {round}: every run is listed by a kept manifest, every listed one is there"
            );
        }
    }
    // Deltas shared by both kept manifests survived their own checkpoints' manifests.
    let newest = parent.ok_or("committed")?;
    assert!(
        newest
            .deltas()
            .iter()
            .any(|run| run.checkpoint < newest.id - 1)
    );
    assert_eq!(
        fs::read_dir(store.dir())?.count(),
        3,
        "two manifest directories and runs/: deleted checkpoints leave no directories"
    );
    Ok(())
}

#[test]
fn checkpoint_store_ignores_a_torn_commit_and_prunes_its_run_later() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    let first = commit(&checkpoints, None, vec![put("a", "1")])?;
    // Checkpoint 2 wrote its run and stopped before its manifest.
    let mut writer = RunWriter::new(RunKind::Delta);
    writer.push(b"a", Some(b"2"));
    store.put(&delta_run_key(2), &writer.finish().0, true)?;

    let loaded = checkpoints.load_latest()?.ok_or("1 is committed")?;
    assert_eq!(loaded.manifest.id, 1);
    assert_eq!(state_of(&loaded)?, state(&[("a", "1")]));
    assert_eq!(loaded.skipped.len(), 1);
    assert!(
        loaded.skipped[0].starts_with("checkpoint 2 at ")
            && loaded.skipped[0].contains("has no manifest")
            && loaded.skipped[0].ends_with("trying the previous one, 1"),
        "{:?}",
        loaded.skipped
    );
    assert_eq!(checkpoints.next_id()?, 3, "ids never repeat");
    let statuses: Vec<_> = checkpoints
        .list()?
        .into_iter()
        .map(|s| (s.id, s.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (2, CheckpointStatus::Torn),
            (1, CheckpointStatus::Committed)
        ]
    );

    let third = commit(&checkpoints, Some(&first), vec![put("b", "3")])?;
    assert_eq!(third.id, 3);
    assert!(
        !stored_runs(&store)?.contains(&delta_run_key(2)),
        "the orphan run is gone"
    );
    let ids: Vec<u64> = checkpoints.list()?.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![3, 1]);
    assert_eq!(latest(&checkpoints)?, (3, state(&[("a", "1"), ("b", "3")])));
    Ok(())
}

#[test]
fn checkpoint_store_only_torn_checkpoints_mean_none() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    store.put(&delta_run_key(7), b"half", false)?;
    assert!(checkpoints.load_latest()?.is_none());
    assert_eq!(checkpoints.next_id()?, 8);
    Ok(())
}

#[test]
fn checkpoint_store_next_id_counts_torn_leftovers() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    checkpoints.commit(4, None, vec![put("a", "1")], 1, "fp", BTreeMap::new())?;
    assert_eq!(checkpoints.next_id()?, 5);
    store.put(&delta_run_key(9), b"x", true)?;
    assert_eq!(checkpoints.next_id()?, 10);
    // A directory without a manifest (a leftover of format 1, say) counts too.
    store.put("chk-00000000000000000011/worker-1.bin", b"x", true)?;
    assert_eq!(checkpoints.next_id()?, 12);
    // Keys that are not checkpoints or runs are ignored.
    store.put("notes.txt", b"hello", false)?;
    store.put("chk-12/worker-0.bin", b"short id", false)?;
    store.put("runs/notes.txt", b"hello", false)?;
    assert_eq!(checkpoints.next_id()?, 12);
    Ok(())
}

/// Commits 1 and 2 (one delta each), damages 2's own run with `damage`, and checks that 1 is loaded
/// with a warning about 2 containing `reason`.
fn falls_back_after(
    damage: impl FnOnce(&LocalDirStore, &str) -> TestResult,
    reason: &str,
) -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    let first = commit(&checkpoints, None, vec![put("a", "1"), put("b", "1")])?;
    let second = commit(&checkpoints, Some(&first), vec![put("a", "2")])?;
    let own = second.own_runs().next().ok_or("a delta was written")?;
    damage(&store, &own.key)?;

    let loaded = checkpoints.load_latest()?.ok_or("1 is good")?;
    assert_eq!(loaded.manifest.id, 1);
    assert_eq!(state_of(&loaded)?, state(&[("a", "1"), ("b", "1")]));
    let warning = loaded.skipped.first().ok_or("a warning")?;
    let expected_start = format!(
        "checkpoint 2 at {} is damaged: run {}",
        store.location(),
        own.key
    );
    assert!(warning.starts_with(&expected_start), "{warning}");
    assert!(warning.contains(reason), "{warning}");
    assert!(
        warning.ends_with("; skipping it and trying the previous one, 1"),
        "{warning}"
    );
    assert!(matches!(
        checkpoints.load(2),
        Err(CheckpointError::Damaged { id: 2, .. })
    ));
    Ok(())
}

#[test]
fn checkpoint_store_falls_back_after_a_flipped_byte() -> TestResult {
    falls_back_after(
        |store, key| rewrite(store, key, |bytes| bytes[7] ^= 0x01),
        "has SHA-256 ",
    )?;
    falls_back_after(
        |store, key| rewrite(store, key, |bytes| bytes[7] ^= 0x01),
        " but the manifest says ",
    )
}

#[test]
fn checkpoint_store_falls_back_after_a_truncated_run() -> TestResult {
    falls_back_after(
        |store, key| rewrite(store, key, |bytes| bytes.truncate(bytes.len() - 1)),
        "bytes but the manifest says",
    )
}

#[test]
fn checkpoint_store_falls_back_after_a_missing_run() -> TestResult {
    falls_back_after(
        |store, key| Ok(store.delete(&[key.to_string()])?),
        "is missing",
    )?;
    // And `list` sees a missing run without reading anything.
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    let first = commit(&checkpoints, None, vec![put("a", "1")])?;
    store.delete(&[first.runs[0].key.clone()])?;
    let summaries = checkpoints.list()?;
    assert_eq!(
        summaries[0].status,
        CheckpointStatus::Corrupt(format!("run {} is missing", first.runs[0].key))
    );
    Ok(())
}

#[test]
fn checkpoint_store_falls_back_after_a_manifest_that_is_not_json() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    let first = commit(&checkpoints, None, vec![put("a", "1")])?;
    commit(&checkpoints, Some(&first), vec![put("a", "2")])?;
    store.put(&manifest_key(2), b"{\"format_version\": 2,", false)?;
    let loaded = checkpoints.load_latest()?.ok_or("1 is good")?;
    assert_eq!(loaded.manifest.id, 1);
    assert!(loaded.skipped[0].contains("is damaged: its manifest is not valid JSON"));
    // Its run is not listed by a manifest that parses, but it is no torn checkpoint of its own.
    let statuses: Vec<_> = checkpoints.list()?.into_iter().map(|s| s.id).collect();
    assert_eq!(statuses, vec![2, 1]);
    Ok(())
}

#[test]
fn checkpoint_store_damaged_base_falls_back_past_every_checkpoint_that_lists_it() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 5);
    let first = commit(
        &checkpoints,
        None,
        vec![put("a", "1"), put("b", "1"), put("c", "1")],
    )?;
    let second = commit(&checkpoints, Some(&first), vec![put("a", "2")])?;
    checkpoints.compact(&second)?;
    let third = commit(&checkpoints, Some(&second), vec![put("b", "3")])?;
    let fourth = commit(&checkpoints, Some(&third), vec![put("c", "4")])?;
    assert_eq!(third.base_parts(), fourth.base_parts());
    let part = third.base_parts().first().ok_or("a base")?;
    rewrite(&store, &part.key, |bytes| bytes[8] ^= 0x40)?;

    let loaded = checkpoints
        .load_latest()?
        .ok_or("2 does not list the base")?;
    assert_eq!(loaded.manifest.id, 2);
    assert_eq!(
        state_of(&loaded)?,
        state(&[("a", "2"), ("b", "1"), ("c", "1")])
    );
    assert_eq!(loaded.skipped.len(), 2);
    for (warning, id) in loaded.skipped.iter().zip([4, 3]) {
        assert!(
            warning.starts_with(&format!("checkpoint {id} at ")) && warning.contains(&part.key),
            "{warning}"
        );
    }

    // Without an older checkpoint that does not list it, nothing is usable.
    store.delete(&[manifest_key(1), manifest_key(2)])?;
    match checkpoints.load_latest() {
        Err(CheckpointError::NoneUsable { problems, .. }) => {
            assert_eq!(problems.len(), 2);
            assert!(
                problems[0].starts_with("checkpoint 4: run "),
                "{problems:?}"
            );
        }
        other => panic!("expected NoneUsable, got {other:?}"),
    }
    Ok(())
}

#[test]
fn checkpoint_store_every_committed_checkpoint_damaged_is_an_error() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    commit(&checkpoints, None, vec![put("a", "1")])?;
    store.put(&manifest_key(1), b"garbage", false)?;
    let error = match checkpoints.load_latest() {
        Err(error) => error,
        Ok(loaded) => panic!("expected NoneUsable, got {loaded:?}"),
    };
    assert!(!error.is_retryable());
    let CheckpointError::NoneUsable { problems, .. } = &error else {
        panic!("expected NoneUsable, got {error:?}");
    };
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("checkpoint 1: "), "{problems:?}");
    Ok(())
}

#[test]
fn checkpoint_store_unknown_format_is_a_hard_error() -> TestResult {
    for found in [1, 4] {
        let (_dir, store) = local()?;
        let checkpoints = manual(store.clone(), 3);
        let first = commit(&checkpoints, None, vec![put("a", "1")])?;
        let mut manifest = commit(&checkpoints, Some(&first), vec![put("a", "2")])?;
        manifest.format_version = found;
        store.put(&manifest_key(2), &serde_json::to_vec(&manifest)?, false)?;
        let error = match checkpoints.load_latest() {
            Err(error) => error,
            Ok(loaded) => panic!("expected UnknownFormat, got {loaded:?}"),
        };
        assert!(
            matches!(
                error,
                CheckpointError::UnknownFormat { id: 2, found: f, supported: 2, .. } if f == found
            ),
            "{error:?}"
        );
        let message = error.to_string();
        for needle in [
            "checkpoint 2",
            &format!("format {found}"),
            "formats 2 and 3",
            "release",
            "move",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        assert!(!error.is_retryable());
        assert!(
            matches!(&checkpoints.list()?[0].status, CheckpointStatus::Corrupt(reason) if reason.contains("format")),
        );
        // While another release's manifest is kept, no run is deleted (it may list any of them).
        let runs_before = stored_runs(&store)?;
        commit(&checkpoints, Some(&first), vec![put("z", "3")])?;
        assert!(stored_runs(&store)?.is_superset(&runs_before));
    }
    Ok(())
}

#[test]
fn checkpoint_store_second_writer_of_an_id_conflicts() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    let delta = || vec![put("a", "1")];
    checkpoints.commit(1, None, delta(), 1, "fp", BTreeMap::new())?;
    let error = checkpoints
        .commit(1, None, vec![put("a", "other")], 1, "fp", BTreeMap::new())
        .map_err(|failed| failed.error);
    assert!(
        matches!(&error, Err(CheckpointError::Conflict { id: 1, key, .. }) if key.ends_with("-delta.run")),
        "{error:?}"
    );
    // The same delta again (a retried request that had succeeded) is fine up to the manifest,
    // whose creation time differs.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let error = checkpoints
        .commit(1, None, delta(), 1, "fp", BTreeMap::new())
        .map_err(|failed| failed.error);
    assert!(
        matches!(&error, Err(CheckpointError::Conflict { key, .. }) if key.ends_with(MANIFEST_NAME)),
        "{error:?}"
    );
    assert!(error.is_err_and(|error| !error.is_retryable()));
    assert_eq!(latest(&checkpoints)?, (1, state(&[("a", "1")])));
    // A failed commit gives its delta back, whether it failed before or after writing its run.
    let given = vec![put("b", "2"), put("a", "3")];
    let failed = checkpoints
        .commit(1, None, given.clone(), 1, "fp", BTreeMap::new())
        .err()
        .ok_or("the second writer of checkpoint 1 must fail")?;
    let mut back = failed.delta;
    back.sort();
    let mut expected = given;
    expected.sort();
    assert_eq!(back, expected);
    Ok(())
}

#[test]
fn checkpoint_store_refuses_parents_it_cannot_build_on() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 1);
    let first = commit(&checkpoints, None, vec![put("a", "1")])?;
    let second = commit(&checkpoints, Some(&first), vec![put("b", "2")])?;
    let error = checkpoints
        .commit(2, Some(&second), vec![], 1, "fp", BTreeMap::new())
        .map_err(|failed| failed.error);
    assert!(
        matches!(error, Err(CheckpointError::Invalid { id: 2, .. })),
        "{error:?}"
    );

    // With keep = 1, compacting 2 and committing 3 deletes 1's and 2's deltas: a commit on top of
    // the forgotten 2 would list runs that are gone.
    checkpoints.compact(&second)?;
    let third = commit(&checkpoints, Some(&second), vec![])?;
    assert_eq!(third.base_part_count(), Some(4));
    let error = checkpoints
        .commit(
            4,
            Some(&second),
            vec![put("c", "4")],
            1,
            "fp",
            BTreeMap::new(),
        )
        .map_err(|failed| failed.error);
    match error {
        Err(error @ CheckpointError::Damaged { id: 2, .. }) => {
            assert!(error.to_string().contains("is missing"), "{error}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
    assert!(
        !store
            .list("")?
            .iter()
            .any(|key| key.contains("00000000000000000004"))
    );
    Ok(())
}

#[test]
fn checkpoint_store_a_compaction_that_finds_a_damaged_run_stops_commits_on_it() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    let first = commit(&checkpoints, None, vec![put("a", "1")])?;
    let second = commit(&checkpoints, Some(&first), vec![put("b", "2")])?;
    rewrite(&store, &first.runs[0].key, |bytes| bytes[6] ^= 0x10)?;
    let error = checkpoints.compact(&second);
    assert!(
        matches!(error, Err(CheckpointError::Damaged { id: 2, .. })),
        "{error:?}"
    );
    let error = checkpoints
        .commit(
            3,
            Some(&second),
            vec![put("c", "3")],
            1,
            "fp",
            BTreeMap::new(),
        )
        .map_err(|failed| failed.error);
    match error {
        Err(error @ CheckpointError::Damaged { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&first.runs[0].key), "{message}");
            assert!(message.contains("without a parent"), "{message}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
    // Starting afresh works.
    let fresh = commit(&checkpoints, None, vec![put("a", "1"), put("b", "2")])?;
    assert_eq!(
        latest(&checkpoints)?,
        (fresh.id, state(&[("a", "1"), ("b", "2")]))
    );
    Ok(())
}

#[test]
fn checkpoint_store_a_compaction_no_commit_uses_is_pruned() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    let first = commit(&checkpoints, None, vec![put("a", "1")])?;
    let second = commit(&checkpoints, Some(&first), vec![put("b", "2")])?;
    checkpoints.compact(&second)?;
    let with_base = stored_runs(&store)?;
    assert!(
        with_base.len() > 2,
        "the new base is written: {with_base:?}"
    );
    // A commit that does not build on 2 (a fresh start) drops the new base.
    let fresh = commit(&checkpoints, None, vec![put("x", "1")])?;
    assert!(fresh.base_parts().is_empty());
    assert_eq!(stored_runs(&store)?, listed_runs(&checkpoints)?);

    // So does the next commit of another process (the first one crashed after compacting).
    checkpoints.compact(&fresh)?;
    let restarted = manual(store.clone(), 3);
    let loaded = restarted.load_latest()?.ok_or("committed")?;
    let next = restarted.commit(
        restarted.next_id()?,
        Some(&loaded.manifest),
        vec![put("y", "2")],
        1,
        "fp",
        BTreeMap::new(),
    )?;
    assert!(next.manifest.base_parts().is_empty());
    assert_eq!(stored_runs(&store)?, listed_runs(&restarted)?);
    Ok(())
}

#[test]
fn checkpoint_store_compacts_in_the_background_and_the_next_commit_uses_it() -> TestResult {
    let (_dir, store) = local()?;
    let policy = CompactionPolicy {
        max_deltas: 2,
        min_base_parts: 2,
        ..CompactionPolicy::default()
    };
    let checkpoints = Checkpoints::new(store.clone(), 3).with_compaction(policy);
    let mut model = State::new();
    let mut parent: Option<Manifest> = None;
    let mut reports = Vec::new();
    for round in 0..12u32 {
        let key = format!("k{}", round % 5);
        let value = format!("v{round}");
        model.insert(key.clone().into_bytes(), value.clone().into_bytes());
        let done = checkpoints.commit(
            checkpoints.next_id()?,
            parent.as_ref(),
            vec![put(&key, &value)],
            1,
            "fp",
            BTreeMap::new(),
        )?;
        reports.extend(done.compaction);
        parent = Some(done.manifest);
        if round % 4 == 3 {
            checkpoints.wait_for_compaction();
        }
    }
    assert!(
        !reports.is_empty(),
        "commits picked up background compactions"
    );
    assert!(
        parent
            .as_ref()
            .is_some_and(|m| m.base_part_count() == Some(2))
    );
    checkpoints.wait_for_compaction();
    assert_eq!(latest(&checkpoints)?.1, model);
    Ok(())
}

#[test]
fn checkpoint_store_doubles_the_parts_of_a_growing_base() -> TestResult {
    let (_dir, store) = local()?;
    let policy = CompactionPolicy {
        min_base_parts: 2,
        max_part_bytes: 2_000,
        ..CompactionPolicy::manual()
    };
    let checkpoints = Checkpoints::new(store.clone(), 2).with_compaction(policy);
    let mut model = State::new();
    let mut parent: Option<Manifest> = None;
    let mut part_counts = Vec::new();
    for round in 0..4u32 {
        let delta: Vec<StateEntry> = (0..100u32)
            .map(|n| put(&format!("key-{round}-{n}"), &"x".repeat(20)))
            .collect();
        for entry in &delta {
            model.insert(entry.key.clone(), entry.value.clone().unwrap_or_default());
        }
        let manifest = commit(&checkpoints, parent.as_ref(), delta)?;
        checkpoints.compact(&manifest)?;
        let manifest = commit(&checkpoints, Some(&manifest), vec![])?;
        part_counts.push(manifest.base_part_count().unwrap_or(0));
        assert_eq!(latest(&checkpoints)?, (manifest.id, model.clone()));
        parent = Some(manifest);
    }
    assert_eq!(
        part_counts,
        vec![2, 4, 8, 8],
        "about 3 kB of state per 100 keys"
    );
    Ok(())
}

/// A store that records the size of every object read.
#[derive(Debug)]
struct CountingStore {
    inner: LocalDirStore,
    gets: Mutex<Vec<(String, usize)>>,
}

impl CountingStore {
    fn take_gets(&self) -> Vec<(String, usize)> {
        std::mem::take(&mut *self.gets.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl CheckpointStore for CountingStore {
    fn put(&self, key: &str, bytes: &[u8], create_only: bool) -> Result<(), StoreError> {
        self.inner.put(key, bytes, create_only)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let bytes = self.inner.get(key)?;
        if let Some(bytes) = &bytes {
            let mut gets = self.gets.lock().unwrap_or_else(|e| e.into_inner());
            gets.push((key.to_string(), bytes.len()));
        }
        Ok(bytes)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix)
    }
    fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        self.inner.delete(keys)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

#[test]
fn checkpoint_store_compaction_and_restore_read_one_base_part_at_a_time() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(CountingStore {
        inner: LocalDirStore::new(dir.path())?,
        gets: Mutex::default(),
    });
    let policy = CompactionPolicy {
        min_base_parts: 16,
        ..CompactionPolicy::manual()
    };
    let checkpoints = Checkpoints::new(store.clone(), 2).with_compaction(policy);
    let value = "v".repeat(200);
    let everything: Vec<StateEntry> = (0..4_000u32)
        .map(|n| put(&format!("key-{n:05}"), &value))
        .collect();
    let first = commit(&checkpoints, None, everything)?;
    checkpoints.compact(&first)?;
    let second = commit(
        &checkpoints,
        Some(&first),
        vec![put("key-00042", "changed")],
    )?;
    let state_bytes = second.state_bytes();
    let largest_part = second
        .base_parts()
        .iter()
        .map(|run| run.bytes)
        .max()
        .ok_or("a base")?;
    assert_eq!(second.base_parts().len(), 16);
    assert!(
        largest_part * 10 < state_bytes,
        "{largest_part} of {state_bytes}"
    );

    // Compacting one small delta reads it and the one part it touches.
    store.take_gets();
    let report = checkpoints.compact(&second)?.ok_or("a delta")?;
    assert_eq!((report.parts_written, report.parts_reused), (1, 15));
    let gets = store.take_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets.iter().all(|(_, bytes)| *bytes as u64 <= largest_part));
    assert_eq!(
        report.bytes_read,
        gets.iter().map(|(_, b)| *b as u64).sum::<u64>()
    );
    let third = commit(
        &checkpoints,
        Some(&second),
        vec![put("key-00043", "changed too")],
    )?;

    // Loading checks every run, one object per read; streaming reads one base part at a time, as
    // the iteration reaches it.
    store.take_gets();
    let loaded = checkpoints.load_latest()?.ok_or("committed")?;
    let gets = store.take_gets();
    let largest_get = gets
        .iter()
        .map(|(_, bytes)| *bytes as u64)
        .max()
        .unwrap_or(0);
    assert!(
        largest_get <= largest_part,
        "{largest_get} > {largest_part}"
    );
    let mut entries = loaded.entries();
    let first_entry = entries.next().ok_or("entries")??;
    let before_first = store.take_gets();
    // Part 0, and perhaps already part 1: the next part is read on another thread while this one
    // is merged (so at most two parts are in memory).
    assert!(
        (1..=2).contains(&before_first.len()),
        "one base part, and perhaps the next, before the first entry: {before_first:?}"
    );
    for (index, (key, _)) in before_first.iter().enumerate() {
        assert_eq!(key, &third.base_parts()[index].key);
    }
    let mut count = 1;
    let mut state = BTreeMap::from([first_entry]);
    for entry in entries {
        let (key, value) = entry?;
        state.insert(key, value);
        count += 1;
    }
    assert_eq!(count, 4_000);
    assert_eq!(state.len(), 4_000, "each key once");
    assert_eq!(state[&b"key-00042"[..]], b"changed");
    assert_eq!(state[&b"key-00043"[..]], b"changed too");
    let mut gets = before_first;
    gets.extend(store.take_gets());
    let read: BTreeSet<&str> = gets.iter().map(|(key, _)| key.as_str()).collect();
    let parts: BTreeSet<&str> = third
        .base_parts()
        .iter()
        .map(|run| run.key.as_str())
        .collect();
    assert_eq!(gets.len(), 16, "every part once: {gets:?}");
    assert_eq!(read, parts);
    assert!(gets.iter().all(|(_, bytes)| *bytes as u64 <= largest_part));
    Ok(())
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    Commit,
    /// A commit that crashes after writing its run.
    TornCommit,
    Compact,
    Load,
    /// A new process: loads the latest checkpoint and builds on it.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..24, any::<u8>()).prop_map(|(key, value)| Step::Put(key, value)),
        3 => (0u8..24).prop_map(Step::Delete),
        3 => Just(Step::Commit),
        1 => Just(Step::TornCommit),
        2 => Just(Step::Compact),
        1 => Just(Step::Load),
        1 => Just(Step::Restart),
    ]
}

fn model_key(key: u8) -> Vec<u8> {
    format!("key-{key}").into_bytes()
}

/// Runs `steps` against checkpoints and a `BTreeMap`: every load equals the model's state at the
/// last commit, every kept checkpoint means the state it was committed with, and the store holds
/// exactly the runs kept manifests list after each commit.
fn check_model(steps: &[Step]) -> Result<(), TestCaseError> {
    let fail = |error: &dyn std::fmt::Display| TestCaseError::fail(error.to_string());
    let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
    let store = Arc::new(LocalDirStore::new(dir.path()).map_err(|e| fail(&e))?);
    let policy = CompactionPolicy {
        min_base_parts: 2,
        max_part_bytes: 96,
        ..CompactionPolicy::manual()
    };
    let open = || Checkpoints::new(store.clone(), 3).with_compaction(policy.clone());
    let mut checkpoints = open();
    let mut live = State::new();
    let mut delta = Vec::new();
    let mut parent: Option<Manifest> = None;
    let mut committed: BTreeMap<u64, State> = BTreeMap::new();
    for step in steps {
        match step {
            Step::Put(key, value) => {
                let value = vec![*value; usize::from(*value % 7)];
                live.insert(model_key(*key), value.clone());
                delta.push(StateEntry::put(model_key(*key), value));
            }
            Step::Delete(key) => {
                live.remove(&model_key(*key));
                delta.push(StateEntry::delete(model_key(*key)));
            }
            Step::Commit => {
                let id = checkpoints.next_id().map_err(|e| fail(&e))?;
                let done = checkpoints
                    .commit(
                        id,
                        parent.as_ref(),
                        std::mem::take(&mut delta),
                        1,
                        "fp",
                        BTreeMap::new(),
                    )
                    .map_err(|e| fail(&e))?;
                committed.insert(id, live.clone());
                parent = Some(done.manifest);
                let stored = stored_runs(&store).map_err(|e| fail(&e))?;
                let listed = listed_runs(&checkpoints).map_err(|e| fail(&e))?;
                prop_assert_eq!(stored, listed);
            }
            Step::TornCommit => {
                let id = checkpoints.next_id().map_err(|e| fail(&e))?;
                let mut writer = RunWriter::new(RunKind::Delta);
                writer.push(b"torn", Some(b"never committed"));
                store
                    .put(&delta_run_key(id), &writer.finish().0, true)
                    .map_err(|e| fail(&e))?;
            }
            Step::Compact => {
                if let Some(parent) = &parent {
                    checkpoints.compact(parent).map_err(|e| fail(&e))?;
                }
            }
            Step::Load | Step::Restart => {
                let loaded = checkpoints.load_latest().map_err(|e| fail(&e))?;
                let newest = committed.last_key_value();
                prop_assert_eq!(
                    loaded.as_ref().map(|l| l.manifest.id),
                    newest.map(|(id, _)| *id)
                );
                if let (Some(loaded), Some((_, expected))) = (&loaded, newest) {
                    prop_assert_eq!(&state_of(loaded).map_err(|e| fail(&e))?, expected);
                }
                for summary in checkpoints.list().map_err(|e| fail(&e))? {
                    if summary.status != CheckpointStatus::Committed {
                        continue;
                    }
                    let loaded = checkpoints.load(summary.id).map_err(|e| fail(&e))?;
                    let state =
                        state_of(&loaded.ok_or_else(|| fail(&"kept"))?).map_err(|e| fail(&e))?;
                    prop_assert_eq!(
                        Some(&state),
                        committed.get(&summary.id),
                        "checkpoint {}",
                        summary.id
                    );
                }
                if matches!(step, Step::Restart) {
                    // The uncommitted changes are lost with the process.
                    checkpoints = open();
                    parent = loaded.map(|loaded| loaded.manifest);
                    live = committed
                        .last_key_value()
                        .map(|(_, s)| s.clone())
                        .unwrap_or_default();
                    delta.clear();
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn checkpoint_store_merged_state_equals_a_model(steps in prop::collection::vec(step(), 1..60)) {
        check_model(&steps)?;
    }
}

/// Commits checkpoint `id` of a cluster of `processes` (a short wait for missing parts).
fn commit_parts(
    checkpoints: &Checkpoints,
    id: u64,
    parent: Option<&Manifest>,
    processes: usize,
) -> Result<Manifest, CheckpointError> {
    Ok(checkpoints
        .commit_parts(
            id,
            parent,
            processes,
            std::time::Duration::from_millis(200),
            4,
            "fp",
            BTreeMap::new(),
        )?
        .manifest)
}

#[test]
fn checkpoint_store_cluster_parts_commit_as_one_checkpoint() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    // One process's checkpoint (format 2) first: a cluster continues it.
    let first = commit(&checkpoints, None, vec![put("a", "1"), put("z", "1")])?;
    assert_eq!(first.format_version, FORMAT_VERSION);

    let id = checkpoints.next_id()?;
    let receipt = checkpoints
        .write_part(id, 1, vec![put("b", "2"), StateEntry::delete("z")])
        .map_err(|failed| failed.error)?;
    assert_eq!(
        receipt.run.as_ref().map(|run| run.key.as_str()),
        Some("runs/00000000000000000002-delta-p0001.run")
    );
    checkpoints
        .write_part(id, 0, vec![put("a", "2")])
        .map_err(|failed| failed.error)?;
    // A process with nothing changed still writes its receipt.
    checkpoints
        .write_part(id, 2, Vec::new())
        .map_err(|failed| failed.error)?;
    let second = commit_parts(&checkpoints, id, Some(&first), 3)?;
    assert_eq!(second.format_version, CLUSTER_FORMAT_VERSION);
    assert_eq!(second.processes, 3);
    assert_eq!(
        second
            .deltas()
            .iter()
            .map(|run| run.key.as_str())
            .collect::<Vec<_>>(),
        [
            "runs/00000000000000000001-delta.run",
            "runs/00000000000000000002-delta-p0000.run",
            "runs/00000000000000000002-delta-p0001.run",
        ],
        "the parent's run, then the parts by process"
    );
    assert_eq!(
        second.bytes_written(),
        second.own_runs().map(|run| run.bytes).sum::<u64>()
    );
    assert_eq!(second.own_runs().count(), 2);
    assert_eq!(
        latest(&checkpoints)?,
        (id, state(&[("a", "2"), ("b", "2")]))
    );

    // A format-2 manifest does not carry `processes`: older builds read it as before.
    let json = String::from_utf8(
        store
            .get(&manifest::manifest_key(first.id))?
            .ok_or("the first manifest")?,
    )?;
    assert!(!json.contains("processes"), "{json}");
    Ok(())
}

#[test]
fn checkpoint_store_cluster_commit_waits_for_every_part_and_names_the_missing() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store, 3);
    checkpoints
        .write_part(1, 0, vec![put("a", "1")])
        .map_err(|failed| failed.error)?;
    match commit_parts(&checkpoints, 1, None, 3) {
        Err(CheckpointError::PartsMissing {
            id: 1,
            missing,
            processes: 3,
            ..
        }) => assert_eq!(missing, [1, 2]),
        other => return Err(format!("expected missing parts, got {other:?}").into()),
    }
    assert!(checkpoints.load_latest()?.is_none(), "nothing is committed");
    let error = commit_parts(&checkpoints, 1, None, 3)
        .err()
        .ok_or("still missing")?;
    assert!(error.is_retryable());
    assert!(
        error.to_string().contains("process(es) [1, 2] of 3"),
        "{error}"
    );
    Ok(())
}

#[test]
fn checkpoint_store_cluster_commit_includes_parts_of_a_checkpoint_never_committed() -> TestResult {
    let (_dir, store) = local()?;
    let checkpoints = manual(store.clone(), 3);
    // Checkpoint 1: only process 0's part arrives; its commit fails.
    checkpoints
        .write_part(1, 0, vec![put("a", "1"), put("c", "1")])
        .map_err(|failed| failed.error)?;
    assert!(commit_parts(&checkpoints, 1, None, 2).is_err());
    // Process 1 failed to write its part of 1 and carries it into 2; process 0 counts its part
    // of 1 as saved and writes only what changed since.
    checkpoints
        .write_part(2, 0, vec![put("a", "2")])
        .map_err(|failed| failed.error)?;
    checkpoints
        .write_part(2, 1, vec![put("b", "1")])
        .map_err(|failed| failed.error)?;
    let second = commit_parts(&checkpoints, 2, None, 2)?;
    assert_eq!(
        second
            .deltas()
            .iter()
            .map(|run| run.checkpoint)
            .collect::<Vec<_>>(),
        [1, 2, 2]
    );
    assert_eq!(
        latest(&checkpoints)?,
        (2, state(&[("a", "2"), ("b", "1"), ("c", "1")])),
        "the orphaned part's changes are in, and the newer ones win"
    );
    // Retention leaves the committed runs alone and clears the receipts of the committed ids.
    let third = {
        checkpoints
            .write_part(3, 0, Vec::new())
            .map_err(|failed| failed.error)?;
        checkpoints
            .write_part(3, 1, vec![put("d", "1")])
            .map_err(|failed| failed.error)?;
        commit_parts(&checkpoints, 3, Some(&second), 2)?
    };
    assert_eq!(
        third
            .deltas()
            .iter()
            .map(|run| run.checkpoint)
            .collect::<Vec<_>>(),
        [1, 2, 2, 3],
        "a part is listed once: receipts up to the parent are not gathered again"
    );
    assert!(stored_runs(&store)?.is_subset(&listed_runs(&checkpoints)?));
    assert!(store.list("chk-00000000000000000001/")?.is_empty());
    // Compaction merges the parts like any deltas.
    checkpoints.compact(&third)?;
    let fourth = commit(&checkpoints, Some(&third), Vec::new())?;
    assert!(fourth.deltas().is_empty());
    assert_eq!(
        latest(&checkpoints)?.1,
        state(&[("a", "2"), ("b", "1"), ("c", "1"), ("d", "1")])
    );
    Ok(())
}
