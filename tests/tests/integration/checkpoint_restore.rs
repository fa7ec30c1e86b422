//! Restoring from a checkpoint continues exactly: on random, out-of-order input with late events,
//! duplicate beacons and invalid records, a run stopped at a random record, checkpointed, and
//! restored (on the same or another number of workers) emits, together with what the first run
//! emitted before its checkpoint, exactly what one uninterrupted run emits: no feature lost, none
//! twice, the same dead letters.

use pageflow_dataflow::algorithms::graph::GraphOptions;
use pageflow_dataflow::algorithms::replay::replay;
use pageflow_dataflow::algorithms::restart::run_half;
use pageflow_dataflow::features::sort_features;
use pageflow_tests::{one_partition, pageview_line, records, small_config};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

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
    let config = small_config();
    let lines = lines(ops);
    let cut = cut.min(lines.len());
    let all = records("file:test", &lines);
    let expected = replay(&config, one_partition(&lines, 1), &GraphOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));

    let before = run_half(&config, "file:test", all[..cut].to_vec(), first, None, true)
        .unwrap_or_else(|e| panic!("first half: {e}"));
    let saved = before
        .checkpoint
        .as_ref()
        .unwrap_or_else(|| panic!("no checkpoint"));
    let after = run_half(
        &config,
        "file:test",
        all[cut..].to_vec(),
        second,
        Some(saved),
        false,
    )
    .unwrap_or_else(|e| panic!("second half: {e}"));

    let mut features = before.features;
    features.extend(after.features);
    sort_features(&mut features);
    assert_eq!(
        features,
        expected.features,
        "features, cut at {cut} of {}",
        lines.len()
    );
    let mut letters: Vec<_> = before.dead_letters;
    letters.extend(after.dead_letters);
    let key =
        |l: &pageflow_dataflow::event::DeadLetter| l.position.position.parse::<u64>().unwrap_or(0);
    letters.sort_by_key(key);
    assert_eq!(letters, expected.dead_letters, "dead letters");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
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
