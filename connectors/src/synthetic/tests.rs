//! The synthetic traffic's tests: determinism, the shape of the traffic, malformed records,
//! pacing and resuming.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pageflow_dataflow::clock::ManualClock;
use pageflow_dataflow::config::Millis;
use pageflow_dataflow::event::{Event, RawRecord, validate};
use pageflow_dataflow::source::{PollStatus, RecordSource, SourceError};
use proptest::prelude::*;

use super::config::*;
use super::file::write_json_lines;
use super::json::*;
use super::malformed::*;
use super::source::*;
use super::traffic::*;
use crate::error::ConnectorError;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn lines(
    config: &SyntheticConfig,
    partition: u32,
    n: usize,
) -> Result<Vec<Vec<u8>>, ConnectorError> {
    let mut traffic = SyntheticTraffic::for_partition(config.clone(), partition)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut line = Vec::new();
        if !traffic.next_line(&mut line) {
            break;
        }
        out.push(line);
    }
    Ok(out)
}

fn events(
    config: &SyntheticConfig,
    partition: u32,
    n: usize,
) -> Result<Vec<Event>, Box<dyn std::error::Error>> {
    lines(config, partition, n)?
        .iter()
        .map(|line| {
            validate(line)
                .map(|view| Event::from(&view))
                .map_err(|e| e.detail.into())
        })
        .collect()
}

#[test]
fn same_seed_gives_the_same_bytes() -> TestResult {
    let config = SyntheticConfig {
        invalid_share: 0.05,
        ..SyntheticConfig::default()
    };
    assert_eq!(lines(&config, 0, 20_000)?, lines(&config, 0, 20_000)?);
    let other = SyntheticConfig {
        seed: 7,
        ..config.clone()
    };
    assert_ne!(lines(&config, 0, 100)?, lines(&other, 0, 100)?);
    Ok(())
}

#[test]
fn partitions_have_disjoint_users_and_event_ids() -> TestResult {
    let config = SyntheticConfig::default();
    let a = events(&config, 0, 5_000)?;
    let b = events(&config, 1, 5_000)?;
    let users_a: HashSet<_> = a.iter().map(|e| e.user_id.clone()).collect();
    let users_b: HashSet<_> = b.iter().map(|e| e.user_id.clone()).collect();
    assert!(users_a.is_disjoint(&users_b));
    let ids_a: HashSet<_> = a.iter().map(|e| e.event_id.clone()).collect();
    assert!(b.iter().all(|e| !ids_a.contains(&e.event_id)));
    // Same catalogue in every partition.
    let articles_a: HashSet<_> = a.iter().map(|e| e.article_id.clone()).collect();
    assert!(
        b.iter()
            .filter(|e| articles_a.contains(&e.article_id))
            .count()
            > 2_500
    );
    assert_eq!(
        events(&config, 1, 2_000)?,
        b[..2_000].to_vec(),
        "deterministic per partition"
    );
    Ok(())
}

#[test]
fn every_line_is_valid_without_invalid_share() -> TestResult {
    let config = SyntheticConfig {
        duplicate_share: 0.05,
        out_of_order_share: 0.1,
        ..Default::default()
    };
    for partition in [0, 3] {
        for line in lines(&config, partition, 30_000)? {
            if let Err(invalid) = validate(&line) {
                return Err(
                    format!("{}: {}", String::from_utf8_lossy(&line), invalid.detail).into(),
                );
            }
        }
    }
    Ok(())
}

#[test]
fn iterator_and_lines_describe_the_same_stream() -> TestResult {
    let config = SyntheticConfig {
        invalid_share: 0.1,
        ..SyntheticConfig::default()
    };
    let records: Vec<SyntheticRecord> =
        SyntheticTraffic::new(config.clone())?.take(3_000).collect();
    let lines = lines(&config, 0, 3_000)?;
    assert_eq!(records.len(), lines.len());
    for (record, line) in records.iter().zip(&lines) {
        match record {
            SyntheticRecord::Valid(event) => {
                let view = validate(line).map_err(|e| e.detail)?;
                assert_eq!(&Event::from(&view), event);
                let json: serde_json::Value = serde_json::from_slice(line)?;
                assert!(json["device"].is_string());
            }
            SyntheticRecord::Malformed { bytes, .. } => assert_eq!(bytes, line),
        }
    }
    Ok(())
}

#[test]
fn malformed_lines_have_the_expected_share_and_reasons() -> TestResult {
    let config = SyntheticConfig {
        invalid_share: 0.2,
        ..SyntheticConfig::default()
    };
    let mut malformed = 0;
    let mut kinds = HashSet::new();
    let mut wrong = Vec::new();
    for record in SyntheticTraffic::new(config)?.take(10_000) {
        if let SyntheticRecord::Malformed { kind, bytes } = record {
            malformed += 1;
            kinds.insert(kind);
            match validate(&bytes) {
                Err(invalid) if invalid.reason == kind.expected_reason() => {}
                other => wrong.push(format!(
                    "{kind:?} {:?}: {:?}",
                    String::from_utf8_lossy(&bytes),
                    other.map(|_| "valid").map_err(|e| e.reason)
                )),
            }
        }
    }
    assert!((1_700..2_300).contains(&malformed), "{malformed}");
    assert_eq!(kinds.len(), MalformedKind::ALL.len());
    assert!(
        wrong.is_empty(),
        "{} misjudged, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    Ok(())
}

#[test]
fn event_time_advances_at_the_simulated_rate_with_bounded_disorder() -> TestResult {
    let config = SyntheticConfig::default();
    let events = events(&config, 0, 100_000)?;
    let max_ts = events.iter().map(|e| e.ts).max().unwrap_or(0);
    let span_s = (max_ts - config.start_ts) as f64 / 1000.0;
    let distinct: HashSet<&str> = events.iter().map(|e| &*e.event_id).collect();
    let expected_s = distinct.len() as f64 / config.simulated_events_per_second;
    assert!(
        (span_s - expected_s).abs() < 3.0,
        "{} events span {span_s} s",
        distinct.len()
    );

    let mut seen_max = 0;
    let mut out_of_order = 0;
    for event in &events {
        assert!(
            event.ts + config.max_delivery_delay.ms() >= seen_max,
            "too late: {event:?}"
        );
        if event.ts < seen_max {
            out_of_order += 1;
        }
        seen_max = seen_max.max(event.ts);
    }
    assert!(out_of_order > 500, "{out_of_order}");

    let mut ids: HashMap<&str, u32> = HashMap::new();
    for event in &events {
        *ids.entry(&event.event_id).or_default() += 1;
    }
    let duplicates = events.len() - ids.len();
    assert!(
        (700..1_300).contains(&duplicates),
        "{duplicates} duplicates"
    );
    Ok(())
}

#[test]
fn sessions_and_values_look_realistic() -> TestResult {
    // 60k events at 5 per second: over 3 hours, long enough for readers to come back.
    let config = SyntheticConfig {
        simulated_events_per_second: 5.0,
        users: 4_000,
        ..Default::default()
    };
    let events = events(&config, 0, 60_000)?;
    let mut by_user: HashMap<&str, Vec<&Event>> = HashMap::new();
    for event in &events {
        by_user.entry(&event.user_id).or_default().push(event);
    }
    let (mut sessions, mut reads, mut same_topic, mut pairs, mut returns) = (0, 0, 0, 0, 0);
    for reads_of_user in by_user.values_mut() {
        reads_of_user.sort_by_key(|e| (e.ts, e.event_id.clone()));
        sessions += 1;
        for pair in reads_of_user.windows(2) {
            if pair[1].ts - pair[0].ts > 30 * 60_000 {
                sessions += 1;
                returns += 1;
            } else if pair[0].portal == pair[1].portal {
                pairs += 1;
                let topic = |e: &Event| e.article_id.split('/').nth(1).map(str::to_string);
                same_topic += usize::from(topic(pair[0]) == topic(pair[1]));
            }
        }
        reads += reads_of_user.len();
    }
    let per_session = reads as f64 / sessions as f64;
    assert!(
        (1.5..8.0).contains(&per_session),
        "{per_session} reads per session"
    );
    assert!(returns > 100, "{returns} returns");
    assert!(
        same_topic as f64 / pairs as f64 > 0.6,
        "{same_topic}/{pairs} same-topic reads"
    );

    let engaged = events.iter().filter(|e| e.engaged()).count() as f64 / events.len() as f64;
    assert!((0.3..0.9).contains(&engaged), "{engaged} engaged");
    let clicked = events.iter().filter(|e| e.clicks > 0).count() as f64 / events.len() as f64;
    assert!((0.1..0.5).contains(&clicked), "{clicked} with clicks");
    assert!(
        events
            .iter()
            .all(|e| e.scroll_pct <= 100 && e.dwell_ms <= 1_800_000)
    );
    let portals: HashSet<_> = events.iter().map(|e| &*e.portal).collect();
    assert_eq!(portals.len(), 3);
    Ok(())
}

#[test]
fn a_planned_spike_dominates_its_portal() -> TestResult {
    let config = SyntheticConfig::default();
    // 40 minutes of traffic: the first spike starts at 30 minutes.
    let events = events(
        &config,
        0,
        (config.simulated_events_per_second * 60.0 * 40.0) as usize,
    )?;
    let spikes = config.planned_spikes(config.start_ts + 40 * 60_000);
    assert_eq!(spikes.len(), 1);
    let spike = &spikes[0];
    assert_eq!(spike.start_ts, config.start_ts + 30 * 60_000);
    assert!((10 * 60_000..=20 * 60_000).contains(&(spike.end_ts - spike.start_ts)));
    let window = (spike.start_ts + 3 * 60_000)..(spike.start_ts + 8 * 60_000);
    let mut views: HashMap<&str, usize> = HashMap::new();
    for event in events
        .iter()
        .filter(|e| *e.portal == *spike.portal && window.contains(&e.ts))
    {
        *views.entry(&event.article_id).or_default() += 1;
    }
    let top = views
        .iter()
        .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id);
    assert_eq!(top, Some(spike.article_id.as_str()));
    assert!(
        events
            .iter()
            .filter(|e| e.ts < spike.start_ts)
            .all(|e| *e.article_id != *spike.article_id)
    );
    Ok(())
}

#[test]
fn write_json_lines_writes_n_lines() -> TestResult {
    let mut out = Vec::new();
    let written = write_json_lines(&SyntheticConfig::default(), 1_000, &mut out)?;
    assert_eq!(written, 1_000);
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1_000);
    let limited = SyntheticConfig {
        limit: Some(10),
        ..Default::default()
    };
    assert_eq!(write_json_lines(&limited, 1_000, std::io::sink())?, 10);
    Ok(())
}

#[test]
fn source_as_fast_as_possible_is_a_finite_replay_with_a_limit() -> TestResult {
    let config = SyntheticConfig {
        limit: Some(250),
        ..Default::default()
    };
    let mut source = SyntheticSource::new(config.clone(), 2)?;
    assert_eq!(source.name(), "synthetic:2");
    assert!(source.is_replay());
    let mut out = Vec::new();
    assert_eq!(source.poll(100, &mut out)?, PollStatus::Ready);
    assert_eq!(source.poll(100, &mut out)?, PollStatus::Ready);
    assert_eq!(source.poll(100, &mut out)?, PollStatus::Finished);
    assert_eq!(out.len(), 250);
    assert_eq!(out[0].position.position, "1");
    assert_eq!(out[249].position.position, "250");
    let expected = lines(&config, 2, 250)?;
    assert!(
        out.iter()
            .zip(&expected)
            .all(|(record, line)| &record.bytes == line)
    );
    Ok(())
}

#[test]
fn paced_source_follows_the_wall_clock() -> TestResult {
    let start = 1_800_000_000_000;
    let clock = ManualClock::new(start);
    let config = SyntheticConfig {
        events_per_second: Some(1_000.0),
        ..Default::default()
    };
    let mut source = SyntheticSource::with_clock(config, 0, Box::new(clock.clone()))?;
    assert!(!source.is_replay());
    let mut out = Vec::new();
    // Only what is due at the start (ts = start) is delivered, then the source waits.
    while source.poll(10_000, &mut out)? == PollStatus::Ready {}
    assert_eq!(source.poll(10_000, &mut out)?, PollStatus::Pending);
    let first = out.len();
    assert!(first <= 2, "{first} records before the clock moved");
    clock.advance(Duration::from_millis(1_000));
    while source.poll(10_000, &mut out)? == PollStatus::Ready {}
    let in_one_second = out.len() - first;
    assert!(
        (900..1_100).contains(&in_one_second),
        "{in_one_second} records in 1 s"
    );
    for record in &out {
        let ts = validate(&record.bytes).map_err(|e| e.detail)?.ts;
        assert!(
            (start..=start + 1_000).contains(&ts),
            "ts {ts} tracks the clock"
        );
    }
    Ok(())
}

/// Polls until `n` records are out (or the source finishes or waits).
fn poll_records(source: &mut SyntheticSource, n: usize) -> Result<Vec<RawRecord>, SourceError> {
    let mut out = Vec::new();
    while out.len() < n {
        let max = n - out.len();
        if source.poll(max, &mut out)? != PollStatus::Ready {
            break;
        }
    }
    Ok(out)
}

/// `(position, event_id, ts)` of every valid record.
fn ids_and_times(records: &[RawRecord]) -> Result<Vec<(String, String, u64)>, String> {
    records
        .iter()
        .map(|record| {
            let view = validate(&record.bytes).map_err(|e| e.detail)?;
            let event = Event::from(&view);
            Ok((
                record.position.position.clone(),
                event.event_id.to_string(),
                event.ts,
            ))
        })
        .collect()
}

#[test]
fn resumed_source_continues_positions_without_repeating_event_ids() -> TestResult {
    let config = SyntheticConfig {
        duplicate_share: 0.05,
        out_of_order_share: 0.1,
        limit: Some(9_000),
        ..Default::default()
    };
    let mut before = SyntheticSource::new(config.clone(), 1)?;
    let first = ids_and_times(&poll_records(&mut before, 3_000)?)?;
    assert_eq!(first.len(), 3_000);

    let mut resumed = SyntheticSource::new(config.clone(), 1)?.resume_after(3_000);
    assert_eq!(resumed.name(), "synthetic:1");
    assert!(resumed.is_replay());
    let second = ids_and_times(&poll_records(&mut resumed, 3_000)?)?;
    let positions: Vec<String> = second.iter().map(|r| r.0.clone()).collect();
    let expected: Vec<String> = (3_001..=6_000).map(|p: u64| p.to_string()).collect();
    assert_eq!(positions, expected, "positions go on");

    let ids_before: HashSet<&str> = first.iter().map(|r| r.1.as_str()).collect();
    let ids_after: HashSet<&str> = second.iter().map(|r| r.1.as_str()).collect();
    assert!(ids_before.is_disjoint(&ids_after), "an event id came again");
    assert!(
        ids_after.len() < second.len(),
        "re-sent beacons still share their id within the resumed traffic"
    );

    // Event time goes on from where it was: on time for the restored watermark, not far ahead.
    let max_before = first.iter().map(|r| r.2).max().unwrap_or(0);
    let min_after = second.iter().map(|r| r.2).min().unwrap_or(0);
    assert!(
        min_after + 5_000 > max_before && min_after < max_before + 10_000,
        "resumed at ts {min_after} after {max_before}"
    );

    // The same checkpoint gives the same records; a later one gives ids of its own.
    let again = SyntheticSource::new(config.clone(), 1)?.resume_after(3_000);
    assert_eq!(
        ids_and_times(&poll_records(&mut { again }, 3_000)?)?,
        second
    );
    let mut later = SyntheticSource::new(config.clone(), 1)?.resume_after(6_000);
    let third = ids_and_times(&poll_records(&mut later, 3_000)?)?;
    assert_eq!(third.first().map(|r| r.0.as_str()), Some("6001"));
    assert!(
        third
            .iter()
            .all(|r| !ids_before.contains(r.1.as_str()) && !ids_after.contains(r.1.as_str()))
    );
    // The limit counts the records before the checkpoint too.
    let mut out = Vec::new();
    assert_eq!(later.poll(10, &mut out)?, PollStatus::Finished);
    assert!(out.is_empty());
    assert_eq!(
        SyntheticSource::new(config.clone(), 1)?
            .resume_after(9_000)
            .poll(10, &mut out)?,
        PollStatus::Finished
    );

    // Resuming after nothing is a fresh start.
    let mut fresh = SyntheticSource::new(config, 1)?.resume_after(0);
    let fresh = ids_and_times(&poll_records(&mut fresh, 3_000)?)?;
    assert_eq!(fresh, first);
    Ok(())
}

#[test]
fn resumed_traffic_keeps_the_breaking_news_schedule() -> TestResult {
    let config = SyntheticConfig {
        spike_every: Some(Millis::minutes(1)),
        spike_peak_share: 0.9,
        ..Default::default()
    };
    // 10 simulated minutes in, then 2 more: spikes 0–11 have started by then.
    let mut resumed = SyntheticSource::new(config.clone(), 0)?.resume_after(30_000);
    let records = poll_records(&mut resumed, 6_000)?;
    let planned = config.planned_spikes(config.start_ts + 3_600_000);
    let mut breaking = 0;
    let mut articles = HashSet::new();
    for record in &records {
        let event = Event::from(&validate(&record.bytes).map_err(|e| e.detail)?);
        if !event.article_id.contains("/urgente-") {
            continue;
        }
        breaking += 1;
        articles.insert(event.article_id.to_string());
        let spike = planned
            .iter()
            .find(|spike| *spike.article_id == *event.article_id)
            .ok_or_else(|| format!("{} is not planned", event.article_id))?;
        assert!(
            (spike.start_ts..spike.end_ts).contains(&event.ts),
            "{} read at {} outside its spike {spike:?}",
            event.article_id,
            event.ts
        );
    }
    assert!(breaking > 100, "{breaking} breaking reads");
    // The spikes under way (several overlap), not a schedule started over.
    assert!(articles.len() >= 3, "{articles:?}");
    Ok(())
}

#[test]
fn paced_resumed_source_starts_at_the_wall_clock() -> TestResult {
    let start = 1_800_000_000_000;
    let clock = ManualClock::new(start);
    let config = SyntheticConfig {
        events_per_second: Some(1_000.0),
        ..Default::default()
    };
    let mut before = SyntheticSource::with_clock(config.clone(), 0, Box::new(clock.clone()))?;
    clock.advance(Duration::from_millis(2_000));
    let first = ids_and_times(&poll_records(&mut before, 100_000)?)?;
    let delivered = first.len() as u64;
    assert!((1_900..2_100).contains(&delivered), "{delivered}");

    // Down for an hour, then resumed.
    let restart = start + 3_600_000;
    clock.set(restart);
    let mut resumed =
        SyntheticSource::with_clock(config, 0, Box::new(clock.clone()))?.resume_after(delivered);
    assert!(!resumed.is_replay());
    let mut out = Vec::new();
    while resumed.poll(10_000, &mut out)? == PollStatus::Ready {}
    assert!(
        out.len() <= 2,
        "{} records before the clock moved: a burst",
        out.len()
    );
    clock.advance(Duration::from_millis(1_000));
    while resumed.poll(10_000, &mut out)? == PollStatus::Ready {}
    assert!(
        (900..1_100).contains(&out.len()),
        "{} records in 1 s",
        out.len()
    );
    let second = ids_and_times(&out)?;
    assert_eq!(second[0].0, (delivered + 1).to_string());
    let ids_before: HashSet<&str> = first.iter().map(|r| r.1.as_str()).collect();
    for (position, id, ts) in &second {
        assert!(
            !ids_before.contains(id.as_str()),
            "{id} at {position} came again"
        );
        assert!(
            (restart..=restart + 1_000).contains(ts),
            "ts {ts} tracks the clock after the restart"
        );
    }
    Ok(())
}

#[test]
fn config_validation_lists_every_problem() -> TestResult {
    let config = SyntheticConfig {
        portals: vec!["G1".into(), "ok".into(), "ok".into()],
        users: 0,
        duplicate_share: 1.5,
        simulated_events_per_second: 0.0,
        ..Default::default()
    };
    match config.validate() {
        Err(ConnectorError::InvalidConfig { problems, .. }) => {
            assert_eq!(problems.len(), 5, "{problems:?}")
        }
        other => return Err(format!("{other:?}").into()),
    }
    let parsed: SyntheticConfig =
        serde_json::from_str(r#"{"seed": 3, "spike_every": "20m", "limit": 5}"#)?;
    assert_eq!(parsed.seed, 3);
    assert_eq!(parsed.spike_every, Some(Millis::minutes(20)));
    assert_eq!(parsed.portals, SyntheticConfig::default().portals);
    assert!(serde_json::from_str::<SyntheticConfig>(r#"{"sead": 3}"#).is_err());
    Ok(())
}

proptest! {
    #[test]
    fn json_strings_round_trip(text in "\\PC*|[\\x00-\\x1f\"\\\\]{0,10}") {
        let mut out = Vec::new();
        write_json_string(&mut out, &text);
        let back: String = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, text);
    }
}
