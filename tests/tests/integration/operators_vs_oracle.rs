//! Each incremental operator's state, driven directly (no timely) on random, out-of-order input,
//! against the batch oracle's from-scratch computation (or a naive reference written here).
//!
//! The driver keeps the dataflow's frontier contract (`docs/semantics-notes.md` N7): after a batch
//! of events is delivered the frontier may move to `F`, which promises that every event delivered
//! later has `ts >= F`; a downstream state is advanced to `F` only once everything upstream with
//! `ts < F` (events, pairs, the window statistics of windows `<= F`) has been inserted into it. The
//! frontier is mostly a tick (as in the dataflow) but also the exact smallest `ts` still to come, a
//! value lagging behind it, or, once every event is in, a finite value past the last event (as
//! upstream flushes do at the end of a replay). Downstream states sometimes lag a step behind.

use std::collections::{BTreeMap, BTreeSet};

use pageflow_dataflow::config::SemanticsConfig;
use pageflow_dataflow::event::Id;
use pageflow_dataflow::event::{Event, Reason};
use pageflow_dataflow::features::{Feature, SessionFeature, sort_features};
use pageflow_dataflow::operators::cooccurrence::CooccurrenceState;
use pageflow_dataflow::operators::dedup::DedupState;
use pageflow_dataflow::operators::rankings::{RankingSpec, RankingsState};
use pageflow_dataflow::operators::related::{
    DirectedPair, RelatedSideInput, RelatedSpec, RelatedState,
};
use pageflow_dataflow::operators::sessionize::{SessionRead, SessionUpdate, SessionizeState};
use pageflow_dataflow::operators::top_n::{Descending, OrderedScore, TopN};
use pageflow_dataflow::operators::window_stats::{
    ArticleWindowStats, WindowSpec, WindowStatsState,
};
use pageflow_dataflow::oracle;
use pageflow_tests::{pageview_line, records, small_config};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

// ---------------------------------------------------------------------------------------------
// Random input: events around a clock, delivered with bounded disorder, and the frontier moves.
// ---------------------------------------------------------------------------------------------

/// One generated pageview and what the driver does after delivering it.
#[derive(Clone, Debug)]
struct View {
    portal: u8,
    user: u8,
    article: u8,
    /// `ts = clock + jitter` (at least 0).
    jitter: i64,
    /// The clock advances by this much after the event.
    advance: u64,
    /// The event arrives at `ts + delay` (ties in generation order).
    delay: u64,
    /// 0: not engaged, 1: `dwell_ms` at the threshold, 2: `scroll_pct` at the threshold,
    /// 3: just below both thresholds.
    engagement: u8,
    /// After delivering this event: 0 keeps the frontier, 1 moves it to the tick of the smallest
    /// `ts` still to come, 2 to that `ts` exactly, 3 to that `ts` minus `lag`.
    step: u8,
    lag: u64,
    /// Downstream states (rankings, related) skip this step and catch up later.
    downstream_lags: bool,
}

fn view() -> impl Strategy<Value = View> {
    (
        (0u8..2, 0u8..5, 0u8..6),
        (
            -3_000i64..1_000,
            prop_oneof![1 => Just(0u64), 4 => 0u64..1_500],
            0u64..4_000,
        ),
        (0u8..4, 0u8..4, 0u64..5_000, prop::bool::weighted(0.2)),
    )
        .prop_map(
            |(
                (portal, user, article),
                (jitter, advance, delay),
                (engagement, step, lag, downstream_lags),
            )| View {
                portal,
                user,
                article,
                jitter,
                advance,
                delay,
                engagement,
                step,
                lag,
                downstream_lags,
            },
        )
}

/// Where the clock starts: at the epoch (windows saturate at 0) or at a realistic time.
fn base() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1_700_000_000_000u64),
        Just(1_700_000_000_437u64)
    ]
}

/// A batch of events delivered together, then the frontier.
#[derive(Clone, Debug)]
struct Delivery {
    events: Vec<Event>,
    /// Every event delivered later has `ts >= frontier`; non-decreasing.
    frontier: u64,
    /// Whether the downstream states advance at this step.
    downstream: bool,
}

/// The events (valid, de-duplicated, distinct `(ts, event_id)`) and their delivery.
#[derive(Clone, Debug)]
struct Input {
    /// Every event, in generation order.
    accepted: Vec<Event>,
    deliveries: Vec<Delivery>,
}

fn input(base: u64, views: &[View], config: &SemanticsConfig) -> Input {
    let slide = config.slide.ms();
    let portals = ["g1", "ge"];
    let mut clock = base as i64;
    let mut accepted = Vec::new();
    for (index, v) in views.iter().enumerate() {
        let ts = (clock + v.jitter).max(0) as u64;
        let (dwell_ms, scroll_pct) = match v.engagement {
            1 => (10_000, 0),
            2 => (0, 50),
            3 => (9_999, 49),
            _ => (0, 0),
        };
        accepted.push(Event {
            event_id: format!("e{index}").into(),
            portal: portals[usize::from(v.portal)].into(),
            user_id: format!("u{}", v.user).into(),
            article_id: format!("a{}", v.article).into(),
            ts,
            dwell_ms,
            scroll_pct,
            clicks: (index % 3) as u32,
        });
        clock += v.advance as i64;
    }
    let mut order: Vec<usize> = (0..accepted.len()).collect();
    order.sort_by_key(|&i| (accepted[i].ts + views[i].delay, i));
    // The smallest ts still to come after k deliveries.
    let mut to_come = vec![u64::MAX; order.len() + 1];
    for k in (0..order.len()).rev() {
        to_come[k] = to_come[k + 1].min(accepted[order[k]].ts);
    }
    let max_ts = accepted.iter().map(|e| e.ts).max().unwrap_or(0);
    let mut deliveries = Vec::new();
    let mut batch = Vec::new();
    let mut frontier = 0u64;
    for (k, &i) in order.iter().enumerate() {
        batch.push(accepted[i].clone());
        let v = &views[i];
        let last = k + 1 == order.len();
        if v.step == 0 && !last {
            continue;
        }
        let next = to_come[k + 1];
        let candidate = if next == u64::MAX {
            // Everything is in: upstream may run ahead to a finite time past the last event.
            max_ts + 1 + v.lag * 8
        } else {
            match v.step {
                2 => next,
                3 => next.saturating_sub(v.lag),
                _ => next - next % slide,
            }
        };
        frontier = frontier.max(candidate);
        assert!(frontier <= next, "the driver breaks the frontier contract");
        deliveries.push(Delivery {
            events: std::mem::take(&mut batch),
            frontier,
            downstream: !v.downstream_lags,
        });
    }
    Input {
        accepted,
        deliveries,
    }
}

fn tick(ts: u64, config: &SemanticsConfig) -> u64 {
    ts - ts % config.slide.ms()
}

/// Features in the canonical replay order, as JSON lines (for exact, readable comparisons).
fn canonical(features: &[Feature]) -> Vec<String> {
    let mut sorted = features.to_vec();
    sort_features(&mut sorted);
    sorted.iter().map(Feature::to_json).collect()
}

/// Fails with the features missing from and extra in `actual`.
fn same_features(
    actual: &[Feature],
    expected: &[Feature],
    what: &str,
) -> Result<(), TestCaseError> {
    let actual = canonical(actual);
    let expected = canonical(expected);
    if actual == expected {
        return Ok(());
    }
    let missing: Vec<&String> = expected.iter().filter(|f| !actual.contains(f)).collect();
    let extra: Vec<&String> = actual.iter().filter(|f| !expected.contains(f)).collect();
    Err(TestCaseError::fail(format!(
        "{what}: {} features vs {} expected\nmissing: {missing:#?}\nextra: {extra:#?}",
        actual.len(),
        expected.len()
    )))
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/operators_vs_oracle.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Dedup
// ---------------------------------------------------------------------------------------------

/// A beacon: a few ids, often resent with the same or a nearby `ts`.
#[derive(Clone, Debug)]
struct Beacon {
    id: u8,
    jitter: i64,
    advance: u64,
    delay: u64,
    step: u8,
    lag: u64,
}

fn beacon() -> impl Strategy<Value = Beacon> {
    (
        0u8..6,
        prop_oneof![1 => Just(0i64), 3 => -5_000i64..5_000],
        prop_oneof![1 => Just(0u64), 3 => 0u64..1_500],
        0u64..6_000,
        0u8..4,
        0u64..5_000,
    )
        .prop_map(|(id, jitter, advance, delay, step, lag)| Beacon {
            id,
            jitter,
            advance,
            delay,
            step,
            lag,
        })
}

fn check_dedup(base: u64, beacons: &[Beacon]) -> Result<(), TestCaseError> {
    let config = small_config();
    let window = config.dedup_window.ms();
    let mut clock = base as i64;
    let mut sent: Vec<(String, u64, u64)> = Vec::new(); // (id, ts, arrival)
    for b in beacons {
        let ts = (clock + b.jitter).max(0) as u64;
        sent.push((format!("b{}", b.id), ts, ts + b.delay));
        clock += b.advance as i64;
    }
    let mut order: Vec<usize> = (0..sent.len()).collect();
    order.sort_by_key(|&i| (sent[i].2, i));

    // The oracle's classification of the arrival order; late records never reach dedup.
    let lines: Vec<Vec<u8>> = order
        .iter()
        .map(|&i| pageview_line(&sent[i].0, "g1", "u1", "a1", sent[i].1, 0, 0))
        .collect();
    let (classified, dead_letters, summary) =
        oracle::classify(&records("file:test", &lines), &config);
    let late: BTreeSet<usize> = dead_letters
        .iter()
        .filter(|letter| matches!(letter.reason, Reason::Late))
        .filter_map(|letter| letter.position.position.parse::<usize>().ok())
        .map(|line| line - 1)
        .collect();
    prop_assert_eq!(late.len() as u64, summary.late);
    let on_time: Vec<(usize, &str, u64)> = order
        .iter()
        .enumerate()
        .filter(|(k, _)| !late.contains(k))
        .map(|(_, &i)| (i, sent[i].0.as_str(), sent[i].1))
        .collect();

    // Naive reference: a duplicate has an earlier accepted event with the same id less than
    // `window` away.
    let mut naive: Vec<(&str, u64)> = Vec::new();
    for &(_, id, ts) in &on_time {
        if !naive
            .iter()
            .any(|&(seen, seen_ts)| seen == id && seen_ts.abs_diff(ts) < window)
        {
            naive.push((id, ts));
        }
    }

    // The state, with the frontier at most the smallest ts still to come.
    let mut to_come = vec![u64::MAX; on_time.len() + 1];
    for k in (0..on_time.len()).rev() {
        to_come[k] = to_come[k + 1].min(on_time[k].2);
    }
    let mut state = DedupState::default();
    let mut accepted: Vec<(&str, u64)> = Vec::new();
    let mut frontier = 0u64;
    for (k, &(i, id, ts)) in on_time.iter().enumerate() {
        if state.accept(&Id::from(id), ts, window) {
            accepted.push((id, ts));
        }
        let b = &beacons[i];
        if b.step == 0 {
            continue;
        }
        let next = to_come[k + 1];
        let candidate = match (next, b.step) {
            (u64::MAX, _) => ts + b.lag * 4,
            (_, 2) => next,
            (_, 3) => next.saturating_sub(b.lag),
            _ => next - next % config.slide.ms(),
        };
        frontier = frontier.max(candidate);
        state.expire(frontier, window);
        // Exactly the ids that a later event could still duplicate are remembered.
        let remembered: BTreeSet<&str> = accepted
            .iter()
            .filter(|(_, ts)| ts + window > frontier)
            .map(|(id, _)| *id)
            .collect();
        prop_assert_eq!(
            state.len(),
            remembered.len(),
            "remembered ids after expire({}) with accepted {:?}",
            frontier,
            accepted
        );
    }
    prop_assert_eq!(&accepted, &naive, "state vs naive reference");
    let oracle_accepted: Vec<(&str, u64)> =
        classified.iter().map(|e| (&*e.event_id, e.ts)).collect();
    prop_assert_eq!(&accepted, &oracle_accepted, "state vs oracle::classify");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sessionize and co-occurrence
// ---------------------------------------------------------------------------------------------

/// Drives sessionize: the frontier of each step and the updates its advance produced (the last
/// step is the end of input, `u64::MAX`).
fn run_sessionize(config: &SemanticsConfig, input: &Input) -> Vec<(u64, Vec<SessionUpdate>)> {
    let mut state = SessionizeState::new(config.session_gap.ms());
    let mut steps = Vec::new();
    for delivery in &input.deliveries {
        for event in &delivery.events {
            state.insert(event.clone());
        }
        let mut out = Vec::new();
        state.advance(delivery.frontier, &mut out);
        steps.push((delivery.frontier, out));
    }
    let mut out = Vec::new();
    state.advance(u64::MAX, &mut out);
    steps.push((u64::MAX, out));
    steps
}

fn session_key(s: &SessionFeature) -> (String, String, u64) {
    (s.portal.clone(), s.user_id.clone(), s.start_ts)
}

fn check_sessionize(base: u64, views: &[View]) -> Result<(), TestCaseError> {
    let config = small_config();
    let gap = config.session_gap.ms();
    let input = input(base, views, &config);
    let expected_sessions = oracle::sessions(&input.accepted, &config);

    // Timing: reads are emitted exactly once final, sessions exactly once closed.
    let mut state = SessionizeState::new(gap);
    let mut updates: Vec<SessionUpdate> = Vec::new();
    let steps = input
        .deliveries
        .iter()
        .map(|d| (d.events.as_slice(), d.frontier))
        .chain(std::iter::once((&[][..], u64::MAX)));
    for (events, frontier) in steps {
        for event in events {
            state.insert(event.clone());
        }
        let mut out = Vec::new();
        state.advance(frontier, &mut out);
        for update in &out {
            match update {
                SessionUpdate::Read(read) => prop_assert!(
                    read.ts < frontier,
                    "read {:?} emitted at frontier {}",
                    read,
                    frontier
                ),
                SessionUpdate::Closed(s) => prop_assert!(
                    s.end_ts.saturating_add(gap) < frontier,
                    "session {:?} closed at frontier {}",
                    s,
                    frontier
                ),
            }
        }
        updates.extend(out);
        let reads = updates
            .iter()
            .filter(|u| matches!(u, SessionUpdate::Read(_)))
            .count();
        let final_reads = input.accepted.iter().filter(|e| e.ts < frontier).count();
        prop_assert_eq!(reads, final_reads, "reads emitted by frontier {}", frontier);
        let closed = updates.iter().filter(|u| u.closed().is_some()).count();
        let closable = expected_sessions
            .iter()
            .filter(|s| s.end_ts.saturating_add(gap) < frontier)
            .count();
        prop_assert_eq!(closed, closable, "sessions closed by frontier {}", frontier);
    }
    prop_assert_eq!(state.users(), 0, "users left at the end");
    prop_assert_eq!(state.open_sessions(), 0, "sessions left open at the end");

    // The closed sessions are the oracle's.
    let mut closed: Vec<SessionFeature> =
        updates.iter().filter_map(|u| u.closed().cloned()).collect();
    closed.sort_by_key(session_key);
    let mut expected = expected_sessions.clone();
    expected.sort_by_key(session_key);
    prop_assert_eq!(&closed, &expected);

    // Each user's reads come in (ts, event_id) order, flagged as the oracle's sessions say, and each
    // session closes after its last read and before the next session's first.
    let mut expected_reads: BTreeMap<(Id, Id), Vec<SessionRead>> = BTreeMap::new();
    for session in oracle::session_events(&input.accepted, &config) {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for (position, event) in session.iter().enumerate() {
            expected_reads
                .entry((event.portal.clone(), event.user_id.clone()))
                .or_default()
                .push(SessionRead {
                    portal: event.portal.clone(),
                    user_id: event.user_id.clone(),
                    article_id: event.article_id.clone(),
                    ts: event.ts,
                    new_session: position == 0,
                    first_read: seen.insert(&event.article_id),
                });
        }
    }
    let mut actual_reads: BTreeMap<(Id, Id), Vec<SessionRead>> = BTreeMap::new();
    // Per user: the reads since the last closed session.
    let mut open: BTreeMap<(Id, Id), Vec<u64>> = BTreeMap::new();
    for update in &updates {
        match update {
            SessionUpdate::Read(read) => {
                let key = (read.portal.clone(), read.user_id.clone());
                let since = open.entry(key.clone()).or_default();
                prop_assert_eq!(
                    read.new_session,
                    since.is_empty(),
                    "new_session of {:?} after unclosed reads {:?}",
                    read,
                    since
                );
                since.push(read.ts);
                actual_reads.entry(key).or_default().push(read.clone());
            }
            SessionUpdate::Closed(s) => {
                let since = open
                    .remove(&(Id::from(s.portal.as_str()), Id::from(s.user_id.as_str())))
                    .unwrap_or_default();
                prop_assert_eq!(since.len() as u64, s.views, "reads of session {:?}", s);
                prop_assert_eq!(since.first().copied(), Some(s.start_ts));
                prop_assert_eq!(since.last().copied(), Some(s.end_ts));
            }
        }
    }
    prop_assert!(open.is_empty(), "reads of unclosed sessions: {:?}", open);
    prop_assert_eq!(actual_reads, expected_reads);
    Ok(())
}

fn check_cooccurrence(base: u64, views: &[View]) -> Result<(), TestCaseError> {
    let config = small_config();
    let input = input(base, views, &config);
    let mut state = CooccurrenceState::default();
    let mut pairs = Vec::new();
    for (_, updates) in run_sessionize(&config, &input) {
        for update in updates {
            state.apply(update, config.cooc_recent, &mut pairs);
        }
    }
    prop_assert!(state.is_empty(), "sessions left: {}", state.len());
    let mut actual: Vec<(String, String, String, u64)> = pairs
        .into_iter()
        .map(|p| {
            (
                p.portal.to_string(),
                p.article_a.to_string(),
                p.article_b.to_string(),
                p.ts,
            )
        })
        .collect();
    actual.sort();
    prop_assert_eq!(actual, oracle::pairs(&input.accepted, &config));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Window statistics and rankings
// ---------------------------------------------------------------------------------------------

/// `(views, engaged_views, older_views, recent_users, recent_engaged_users)`.
type Counts = (u64, u64, u64, u64, u64);

/// The users of an article in the recent part: all of them, and those with an engaged view.
type RecentUsers<'a> = (BTreeSet<&'a str>, BTreeSet<&'a str>);

/// The statistics of every article with a view in the window ending at `end`, from scratch.
/// Without a recent part, `older_views` is `views` and the user counts are 0 (as the state reports).
fn naive_window(
    accepted: &[Event],
    end: u64,
    window: u64,
    recent: Option<u64>,
) -> BTreeMap<(Id, Id), Counts> {
    let mut views: BTreeMap<(Id, Id), (u64, u64, u64)> = BTreeMap::new();
    let mut users: BTreeMap<(Id, Id), RecentUsers<'_>> = BTreeMap::new();
    for e in accepted {
        if e.ts < end.saturating_sub(window) || e.ts >= end {
            continue;
        }
        let key = (e.portal.clone(), e.article_id.clone());
        let counts = views.entry(key.clone()).or_default();
        counts.0 += 1;
        counts.1 += u64::from(e.engaged());
        match recent {
            Some(recent) if e.ts >= end.saturating_sub(recent) => {
                let (all, engaged) = users.entry(key).or_default();
                all.insert(&e.user_id);
                if e.engaged() {
                    engaged.insert(&e.user_id);
                }
            }
            _ => counts.2 += 1,
        }
    }
    views
        .into_iter()
        .map(|(key, (views, engaged, older))| {
            let (u, eu) = users
                .get(&key)
                .map_or((0, 0), |(u, eu)| (u.len() as u64, eu.len() as u64));
            (key, (views, engaged, older, u, eu))
        })
        .collect()
}

/// Checks the changes a window-statistics state emitted (in order) against [`naive_window`] at every
/// window they cover: applying the changes up to `T` gives every article's statistics at `T`.
fn check_window_stats(
    stats: &[ArticleWindowStats],
    accepted: &[Event],
    config: &SemanticsConfig,
    window: u64,
    recent: Option<u64>,
) -> Result<(), TestCaseError> {
    let slide = config.slide.ms();
    prop_assert!(
        stats.windows(2).all(|w| w[0].window_end <= w[1].window_end),
        "windows out of order"
    );
    let Some(first) = accepted.iter().map(|e| e.ts).min() else {
        prop_assert!(stats.is_empty());
        return Ok(());
    };
    let last = stats.last().map_or(0, |s| s.window_end);
    let mut current: BTreeMap<(Id, Id), Counts> = BTreeMap::new();
    let mut next = 0;
    let mut end = tick(first, config) + slide;
    while end <= last {
        while next < stats.len() && stats[next].window_end <= end {
            let s = &stats[next];
            let key = (s.portal.clone(), s.article_id.clone());
            let counts = (
                s.views,
                s.engaged_views,
                s.older_views,
                s.recent_users,
                s.recent_engaged_users,
            );
            prop_assert!(
                current.get(&key) != Some(&counts),
                "unchanged statistics reported: {:?}",
                s
            );
            current.insert(key, counts);
            next += 1;
        }
        current.retain(|_, counts| counts.0 > 0);
        prop_assert_eq!(
            &current,
            &naive_window(accepted, end, window, recent),
            "window statistics at {}",
            end
        );
        end += slide;
    }
    prop_assert!(
        current.is_empty(),
        "articles left with views: {:?}",
        current
    );
    Ok(())
}

fn check_rankings(base: u64, views: &[View]) -> Result<(), TestCaseError> {
    let config = small_config();
    let input = input(base, views, &config);
    let slide = config.slide.ms();
    let (window, recent) = (config.trending_window.ms(), config.trending_recent.ms());
    let last = oracle::last_window_end(&input.accepted, &config);
    let expected = last.map_or_else(Vec::new, |l| oracle::rankings(&input.accepted, &config, l));

    let mut stats_state = WindowStatsState::new(WindowSpec {
        window,
        slide,
        recent: Some(recent),
    });
    let mut rankings = RankingsState::new(RankingSpec {
        window,
        recent,
        slide,
        top_n: config.top_n,
    });
    let mut horizon = 0u64;
    let mut all_stats = Vec::new();
    let mut emitted = Vec::new();
    for delivery in &input.deliveries {
        for event in &delivery.events {
            stats_state.insert(event);
            horizon = horizon.max(tick(event.ts, &config) + slide);
        }
        let mut stats = Vec::new();
        stats_state.advance(delivery.frontier, &mut stats);
        for s in &stats {
            prop_assert!(
                s.window_end <= delivery.frontier,
                "{:?} at frontier {}",
                s,
                delivery.frontier
            );
        }
        all_stats.extend(stats.iter().cloned());
        for s in stats {
            rankings.insert(s);
        }
        if !delivery.downstream {
            continue;
        }
        rankings.observe_horizon(horizon);
        let limit = delivery.frontier.min(horizon);
        rankings.advance(limit, &mut emitted);
        // Every final window up to the limit, and nothing after it, is out.
        let due: Vec<Feature> = expected
            .iter()
            .filter(|f| f.final_ts() <= limit)
            .cloned()
            .collect();
        same_features(
            &emitted,
            &due,
            &format!("rankings emitted by limit {limit}"),
        )?;
    }
    let mut stats = Vec::new();
    stats_state.advance(u64::MAX, &mut stats);
    all_stats.extend(stats.iter().cloned());
    for s in stats {
        rankings.insert(s);
    }
    prop_assert!(
        stats_state.is_empty(),
        "window stats left: {}",
        stats_state.len()
    );
    let last = last.unwrap_or(0);
    rankings.observe_horizon(last);
    rankings.advance(last, &mut emitted);

    check_window_stats(&all_stats, &input.accepted, &config, window, Some(recent))?;
    same_features(&emitted, &expected, "rankings")
}

// ---------------------------------------------------------------------------------------------
// Related
// ---------------------------------------------------------------------------------------------

fn check_related(base: u64, views: &[View], pair_lead: u64) -> Result<(), TestCaseError> {
    let config = small_config();
    let input = input(base, views, &config);
    let slide = config.slide.ms();
    let window = config.cooc_window.ms();
    let last = oracle::last_window_end(&input.accepted, &config);
    let expected = last.map_or_else(Vec::new, |l| oracle::related(&input.accepted, &config, l));
    let last = last.unwrap_or(0);

    // The oracle's pairs, each inserted (both ways) once the frontier is within `pair_lead` of it,
    // and always before the frontier passes its ts.
    let pairs = oracle::pairs(&input.accepted, &config);
    let mut inserted = vec![false; pairs.len()];
    let insert_pairs = |state: &mut RelatedState, inserted: &mut [bool], before: u64| {
        for (done, (portal, a, b, ts)) in inserted.iter_mut().zip(&pairs) {
            if !*done && *ts < before {
                *done = true;
                for (article_id, partner) in [(a, b), (b, a)] {
                    state.insert_pair(DirectedPair {
                        portal: portal.as_str().into(),
                        article_id: article_id.as_str().into(),
                        partner: partner.as_str().into(),
                        ts: *ts,
                    });
                }
            }
        }
    };

    let mut views_state = WindowStatsState::new(WindowSpec {
        window,
        slide,
        recent: None,
    });
    let mut state = RelatedState::new(RelatedSpec {
        window,
        slide,
        top_n: config.top_n,
        min_support: config.cooc_min_support,
        interval: config.related_interval.ms(),
    });
    let mut horizon = 0u64;
    let mut all_stats = Vec::new();
    let mut emitted = Vec::new();
    for delivery in &input.deliveries {
        for event in &delivery.events {
            views_state.insert(event);
            horizon = horizon.max(tick(event.ts, &config) + slide);
        }
        insert_pairs(
            &mut state,
            &mut inserted,
            delivery.frontier.saturating_add(pair_lead),
        );
        let mut stats = Vec::new();
        views_state.advance(delivery.frontier, &mut stats);
        all_stats.extend(stats.iter().cloned());
        for s in stats {
            state.insert_side(RelatedSideInput::Views(s));
        }
        if !delivery.downstream {
            continue;
        }
        state.insert_side(RelatedSideInput::Horizon(horizon));
        let limit = delivery.frontier.min(state.horizon());
        state.advance(limit, &mut emitted);
        prop_assert!(
            emitted.iter().all(|f| f.final_ts() <= limit),
            "related past the limit {}: {:?}",
            limit,
            emitted
        );
        // Every throttled emission up to the limit is out (those at `last` may still be joined by the
        // end-of-replay flush).
        let before_last = |features: &[Feature]| -> Vec<Feature> {
            features
                .iter()
                .filter(|f| f.final_ts() <= limit && f.final_ts() < last)
                .cloned()
                .collect()
        };
        same_features(
            &before_last(&emitted),
            &before_last(&expected),
            &format!("related emitted by limit {limit}"),
        )?;
    }
    let mut stats = Vec::new();
    views_state.advance(u64::MAX, &mut stats);
    all_stats.extend(stats.iter().cloned());
    for s in stats {
        state.insert_side(RelatedSideInput::Views(s));
    }
    insert_pairs(&mut state, &mut inserted, u64::MAX);
    state.insert_side(RelatedSideInput::Horizon(last));
    state.finish(last, &mut emitted);
    prop_assert!(state.is_idle(), "related state left after finish");

    check_window_stats(&all_stats, &input.accepted, &config, window, None)?;
    same_features(&emitted, &expected, "related")
}

// ---------------------------------------------------------------------------------------------
// Top-N
// ---------------------------------------------------------------------------------------------

/// An operation on a ranking: upsert `key` with a rank (or remove it), then read the top `n`.
type RankOp = (u8, Option<u8>, usize);

/// A few scores with ties, signs and a negative zero.
const SCORES: [f64; 6] = [-1.5, -0.0, 0.0, 0.25, 2.0, 2.0];

fn check_top_n(ops: &[RankOp]) -> Result<(), TestCaseError> {
    let mut by_views: TopN<String, Descending<u64>> = TopN::default();
    let mut by_score: TopN<String, Descending<OrderedScore>> = TopN::default();
    let mut reference: BTreeMap<String, u8> = BTreeMap::new();
    for &(key, rank, n) in ops {
        let key = format!("k{key}");
        match rank {
            Some(rank) => {
                by_views.upsert(key.clone(), Descending(u64::from(rank)));
                by_score.upsert(
                    key.clone(),
                    Descending(OrderedScore(SCORES[usize::from(rank) % SCORES.len()])),
                );
                reference.insert(key.clone(), rank);
            }
            None => {
                by_views.remove(&key);
                by_score.remove(&key);
                reference.remove(&key);
            }
        }
        // The reference: a Vec sorted from scratch, best first, ties by key ascending.
        let mut views: Vec<(String, u64)> = reference
            .iter()
            .map(|(k, r)| (k.clone(), u64::from(*r)))
            .collect();
        views.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        views.truncate(n);
        let mut scores: Vec<(String, f64)> = reference
            .iter()
            .map(|(k, r)| (k.clone(), SCORES[usize::from(*r) % SCORES.len()]))
            .collect();
        scores.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        scores.truncate(n);

        let top_views: Vec<(String, u64)> =
            by_views.top(n).map(|(k, r)| (k.clone(), r.0)).collect();
        prop_assert_eq!(top_views, views);
        let top_scores: Vec<(String, u64)> = by_score
            .top(n)
            .map(|(k, r)| (k.clone(), r.0.0.to_bits()))
            .collect();
        let scores: Vec<(String, u64)> =
            scores.into_iter().map(|(k, s)| (k, s.to_bits())).collect();
        prop_assert_eq!(top_scores, scores);
        prop_assert_eq!(by_views.len(), reference.len());
        prop_assert_eq!(by_views.is_empty(), reference.is_empty());
        prop_assert_eq!(by_score.len(), reference.len());
        prop_assert_eq!(
            by_views.rank_of(&key).map(|r| r.0),
            reference.get(&key).map(|r| u64::from(*r))
        );
    }
    Ok(())
}

fn rank_op() -> impl Strategy<Value = RankOp> {
    (0u8..8, prop::option::weighted(0.75, 0u8..6), 0usize..10)
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn dedup_matches_a_naive_reference_and_the_oracle(
        base in base(),
        beacons in prop::collection::vec(beacon(), 0..80),
    ) {
        check_dedup(base, &beacons)?;
    }

    #[test]
    fn sessionize_matches_oracle_sessions(
        base in base(),
        views in prop::collection::vec(view(), 0..80),
    ) {
        check_sessionize(base, &views)?;
    }

    #[test]
    fn cooccurrence_matches_oracle_pairs(
        base in base(),
        views in prop::collection::vec(view(), 0..80),
    ) {
        check_cooccurrence(base, &views)?;
    }

    #[test]
    fn window_stats_and_rankings_match_oracle_rankings(
        base in base(),
        views in prop::collection::vec(view(), 0..80),
    ) {
        check_rankings(base, &views)?;
    }

    #[test]
    fn related_matches_oracle_related(
        base in base(),
        views in prop::collection::vec(view(), 0..80),
        pair_lead in prop_oneof![Just(0u64), Just(3_000u64), Just(u64::MAX)],
    ) {
        check_related(base, &views, pair_lead)?;
    }

    #[test]
    fn top_n_matches_a_sorted_vec(ops in prop::collection::vec(rank_op(), 0..60)) {
        check_top_n(&ops)?;
    }
}
