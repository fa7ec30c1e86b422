//! The whole graph against the batch oracle: on random, out-of-order input with late events,
//! duplicate beacons and invalid records, `replay` with 1 and 2 workers must produce exactly the
//! oracle's features, dead letters and counts.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::graph::GraphOptions;
use super::replay::replay;
use crate::oracle;
use crate::test_support::{one_partition, pageview_line, records, small_config};

#[derive(Clone, Debug)]
enum Op {
    /// A pageview `jitter` ms around the clock, which then advances by `advance` ms.
    View {
        portal: u8,
        user: u8,
        article: u8,
        jitter: i64,
        advance: u64,
        dwell: u32,
        scroll: u8,
    },
    /// Re-send the beacon of an earlier line (a duplicate, or not if far enough away).
    Resend { back: usize },
    /// A malformed line.
    Invalid { kind: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..2, 0u8..5, 0u8..6, -3_000i64..1_000, 0u64..1_500, prop_oneof![Just(0u32), Just(20_000u32)], prop_oneof![Just(0u8), Just(80u8)])
            .prop_map(|(portal, user, article, jitter, advance, dwell, scroll)| Op::View { portal, user, article, jitter, advance, dwell, scroll }),
        1 => (1usize..6).prop_map(|back| Op::Resend { back }),
        1 => (0u8..5).prop_map(|kind| Op::Invalid { kind }),
    ]
}

/// Turns operations into lines: a clock that mostly moves forward, events around it.
fn lines(ops: &[Op]) -> Vec<Vec<u8>> {
    let portals = ["g1", "ge"];
    let mut clock: i64 = 1_700_000_000_000;
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        match op {
            Op::View {
                portal,
                user,
                article,
                jitter,
                advance,
                dwell,
                scroll,
            } => {
                let ts = (clock + jitter) as u64;
                out.push(pageview_line(
                    &format!("e{index}"),
                    portals[*portal as usize],
                    &format!("u{user}"),
                    &format!("a{article}"),
                    ts,
                    *dwell,
                    *scroll,
                ));
                clock += *advance as i64;
            }
            Op::Resend { back } => {
                if let Some(line) = out.len().checked_sub(*back).map(|i| out[i].clone()) {
                    out.push(line);
                }
            }
            Op::Invalid { kind } => out.push(match kind {
                0 => b"{\"event_id\":\"x\"".to_vec(),
                1 => br#"{"event_id":"x","portal":"G1","user_id":"u","article_id":"a","ts":1}"#
                    .to_vec(),
                2 => br#"{"event_id":"x","portal":"g1","user_id":"u","article_id":"a"}"#.to_vec(),
                3 => vec![0xff, 0xfe, b'{'],
                _ => br#"[1,2,3]"#.to_vec(),
            }),
        }
    }
    out
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let config = small_config();
    let lines = lines(ops);
    let expected = oracle::run(&records("file:test", &lines), &config);
    let expected_features: Vec<String> = expected.features.iter().map(|f| f.to_json()).collect();
    for workers in [1, 2] {
        let output = replay(
            &config,
            one_partition(&lines, workers),
            &GraphOptions::default(),
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let features: Vec<String> = output.features.iter().map(|f| f.to_json()).collect();
        if features != expected_features {
            let missing: Vec<&String> = expected_features
                .iter()
                .filter(|f| !features.contains(f))
                .take(4)
                .collect();
            let extra: Vec<&String> = features
                .iter()
                .filter(|f| !expected_features.contains(f))
                .take(4)
                .collect();
            return Err(TestCaseError::fail(format!(
                "features differ with {workers} workers ({} vs {} expected)\nmissing: {missing:#?}\nextra: {extra:#?}",
                features.len(),
                expected_features.len()
            )));
        }
        // Everything but the `detail` prose must agree.
        let strip = |letters: &[crate::event::DeadLetter]| {
            letters
                .iter()
                .map(|l| {
                    (
                        l.reason,
                        l.position.clone(),
                        l.portal.clone(),
                        l.ts,
                        l.raw.clone(),
                        l.raw_base64.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(
            strip(&output.dead_letters),
            strip(&expected.dead_letters),
            "dead letters with {} workers",
            workers
        );
        prop_assert_eq!(output.stats.accepted, expected.summary.accepted);
        prop_assert_eq!(output.stats.duplicates, expected.summary.duplicates);
        prop_assert_eq!(output.stats.late, expected.summary.late);
        prop_assert_eq!(&output.stats.invalid, &expected.summary.invalid);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/graph_vs_oracle.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn graph_matches_oracle(ops in prop::collection::vec(op(), 0..80)) {
        check(&ops)?;
    }
}

#[test]
fn a_planted_spike_tops_trending() {
    // Steady article "steady" read by 3 users every second; "spike" appears in the last 3 seconds
    // read by 6 distinct users. The spike must rank first in trending at the last window.
    let config = small_config();
    let mut lines = Vec::new();
    let base = 1_700_000_000_000u64;
    let mut n = 0;
    for second in 0..12u64 {
        for user in 0..3 {
            n += 1;
            lines.push(pageview_line(
                &format!("s{n}"),
                "g1",
                &format!("s{user}"),
                "steady",
                base + second * 1_000 + user,
                0,
                0,
            ));
        }
        if second >= 9 {
            for user in 0..2 {
                n += 1;
                let reader = format!("r{}", (second - 9) * 2 + user);
                lines.push(pageview_line(
                    &format!("p{n}"),
                    "g1",
                    &reader,
                    "spike",
                    base + second * 1_000 + 500,
                    0,
                    0,
                ));
            }
        }
    }
    let output = replay(&config, one_partition(&lines, 1), &GraphOptions::default()).unwrap();
    let last_trending = output
        .features
        .iter()
        .filter_map(|f| match f {
            crate::features::Feature::Trending(t) => Some(t),
            _ => None,
        })
        .next_back()
        .unwrap_or_else(|| panic!("a trending record"));
    assert_eq!(
        last_trending.items.first().map(|i| i.article_id.as_str()),
        Some("spike"),
        "{last_trending:?}"
    );
}
