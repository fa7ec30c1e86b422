//! Restoring from a checkpoint continues exactly: on random, out-of-order input with late events,
//! duplicate beacons and invalid records, a run stopped at a random record, checkpointed, and
//! restored (on the same or another number of workers) emits, together with what the first run
//! emitted before its checkpoint, exactly what one uninterrupted run emits: no feature lost, none
//! twice, the same dead letters. Checkpoints are incremental: a chain of runs, each restored from
//! the previous one's state and checkpointing only what it changed, continues exactly too.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::graph::GraphOptions;
use super::replay::replay;
use super::restart::run_half;
use crate::features::sort_features;
use crate::test_support::{one_partition, pageview_line, records, small_config};

/// `(user, article, jitter, advance, engaged)` per line, or a broken line.
fn lines(ops: &[(u8, u8, i64, u64, bool, bool)]) -> Vec<Vec<u8>> {
    let mut clock: i64 = 1_700_000_000_000;
    let mut out = Vec::new();
    for (index, &(user, article, jitter, advance, engaged, broken)) in ops.iter().enumerate() {
        if broken {
            out.push(b"{\"event_id\":".to_vec());
            continue;
        }
        // Every seventh line resends the previous beacon (a duplicate).
        if index % 7 == 6
            && let Some(previous) = out.last()
        {
            out.push(previous.clone());
            continue;
        }
        let ts = (clock + jitter) as u64;
        let portal = if user % 3 == 0 { "ge" } else { "g1" };
        out.push(pageview_line(
            &format!("e{index}"),
            portal,
            &format!("u{user}"),
            &format!("a{article}"),
            ts,
            if engaged { 20_000 } else { 0 },
            0,
        ));
        clock += advance as i64;
    }
    out
}

fn op() -> impl Strategy<Value = (u8, u8, i64, u64, bool, bool)> {
    (
        0u8..6,
        0u8..7,
        -3_000i64..800,
        0u64..1_500,
        any::<bool>(),
        prop::bool::weighted(0.05),
    )
}

fn check(ops: &[(u8, u8, i64, u64, bool, bool)], cut: usize, first: usize, second: usize) {
    check_chain(ops, &[cut], &[first, second]);
}

/// Runs the input in stages cut at `cuts`, each stage on `workers[i]` workers, restored from the
/// state the previous stages checkpointed (their changes applied one after the other), and
/// compares everything emitted with one uninterrupted run.
fn check_chain(ops: &[(u8, u8, i64, u64, bool, bool)], cuts: &[usize], workers: &[usize]) {
    let config = small_config();
    let lines = lines(ops);
    let all = records("file:test", &lines);
    let expected = replay(&config, one_partition(&lines, 1), &GraphOptions::default()).unwrap();

    let mut bounds: Vec<usize> = cuts.iter().map(|cut| (*cut).min(lines.len())).collect();
    bounds.sort_unstable();
    bounds.push(lines.len());
    let (mut features, mut letters) = (Vec::new(), Vec::new());
    let mut saved = None;
    let mut from = 0;
    for (stage, &to) in bounds.iter().enumerate() {
        let last = stage + 1 == bounds.len();
        let half = run_half(
            &config,
            "file:test",
            all[from..to].to_vec(),
            workers[stage.min(workers.len() - 1)],
            saved.as_ref(),
            !last,
        )
        .unwrap_or_else(|e| panic!("stage {stage} ({from}..{to}): {e}"));
        features.extend(half.features);
        letters.extend(half.dead_letters);
        if !last {
            saved = Some(half.checkpoint.unwrap_or_else(|| panic!("no checkpoint")));
        }
        from = to;
    }
    sort_features(&mut features);
    if features != expected.features {
        let got: Vec<String> = features
            .iter()
            .map(crate::features::Feature::to_json)
            .collect();
        let want: Vec<String> = expected
            .features
            .iter()
            .map(crate::features::Feature::to_json)
            .collect();
        let missing: Vec<&String> = want.iter().filter(|f| !got.contains(f)).take(4).collect();
        let extra: Vec<&String> = got.iter().filter(|f| !want.contains(f)).take(4).collect();
        panic!(
            "features differ, cut at {cuts:?} of {} on {workers:?} workers: {} vs {} expected\nmissing {missing:#?}\nextra {extra:#?}",
            lines.len(),
            got.len(),
            want.len()
        );
    }
    let key = |l: &crate::event::DeadLetter| l.position.position.parse::<u64>().unwrap_or(0);
    letters.sort_by_key(key);
    assert_eq!(letters, expected.dead_letters, "dead letters");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/restore.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_restored_run_continues_exactly(
        ops in prop::collection::vec(op(), 1..120),
        cut in 0usize..120,
        first in 1usize..4,
        second in 1usize..4,
    ) {
        check(&ops, cut, first, second);
    }

    #[test]
    fn a_chain_of_incremental_checkpoints_continues_exactly(
        ops in prop::collection::vec(op(), 1..150),
        cuts in prop::collection::vec(0usize..150, 1..4),
        workers in prop::collection::vec(1usize..4, 4),
    ) {
        check_chain(&ops, &cuts, &workers);
    }
}

/// A long input with every kind of state alive at the cut, restored with 1 → 2 and 2 → 1
/// workers (the rescaling cases) and 2 → 2.
#[test]
fn rescaling_restores_identical_results() {
    let ops: Vec<_> = (0..600u64)
        .map(|i| {
            (
                (i * 7 % 6) as u8,
                (i * 5 % 7) as u8,
                -((i * 37 % 2_500) as i64),
                (i * 13 % 700),
                i % 3 == 0,
                i % 97 == 5,
            )
        })
        .collect();
    for (first, second) in [(1, 2), (2, 1), (2, 2)] {
        for cut in [153, 335, 599] {
            check(&ops, cut, first, second);
        }
    }
}
