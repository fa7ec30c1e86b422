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

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::cooccurrence::PairCount;
use super::dedup::DedupState;
use super::pair_counts::{CoocChange, PairCountsSpec, PairCountsState};
use super::rankings::{RankingSpec, RankingsState};
use super::related::{RelatedSideInput, RelatedSpec, RelatedState};
use super::sessionize::{SessionSpec, SessionizeState};
use super::top_n::{Descending, OrderedScore, TopN};
use super::window_stats::{ArticleWindowStats, WindowSpec, WindowStatsState};
use crate::config::SemanticsConfig;
use crate::event::{CompactEvent, Event, Reason};
use crate::features::{Feature, SessionFeature, sort_features};
use crate::intern::Article;
use crate::oracle;
use crate::test_support::{pageview_line, records, small_config};

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
    events: Vec<CompactEvent>,
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
        batch.push(CompactEvent::from(&accepted[i]));
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
    let (window, slide) = (config.dedup_window.ms(), config.slide.ms());
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
    let mut state = DedupState::new(window, slide);
    let mut accepted: Vec<(&str, u64)> = Vec::new();
    let mut frontier = 0u64;
    for (k, &(i, id, ts)) in on_time.iter().enumerate() {
        if state.accept(id, ts) {
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
            _ => next - next % slide,
        };
        frontier = frontier.max(candidate);
        state.expire(frontier);
        // Ids are forgotten a tick at a time: once the frontier is `dedup_window` past the end of
        // the tick of every `ts` they were accepted with (so every id a later event could still
        // duplicate is kept).
        let remembered: BTreeSet<&str> = accepted
            .iter()
            .filter(|(_, ts)| ts - ts % slide + slide + window > frontier)
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
// Sessionize and the co-occurrence pairs it forms
// ---------------------------------------------------------------------------------------------

fn session_spec(config: &SemanticsConfig) -> SessionSpec {
    SessionSpec {
        gap: config.session_gap.ms(),
        slide: config.slide.ms(),
        cooc_slide: config.cooc_slide.ms(),
        cooc_recent: config.cooc_recent,
    }
}

/// `(portal, a, b, bucket)` → count of the oracle's pairs with `ts` below `before`.
fn oracle_pair_counts(
    pairs: &[(String, String, String, u64)],
    config: &SemanticsConfig,
    before: u64,
) -> BTreeMap<(String, String, String, u64), u32> {
    let cooc_slide = config.cooc_slide.ms();
    let mut counts = BTreeMap::new();
    for (portal, a, b, ts) in pairs.iter().filter(|p| p.3 < before) {
        *counts
            .entry((portal.clone(), a.clone(), b.clone(), ts - ts % cooc_slide))
            .or_default() += 1;
    }
    counts
}

fn add_pair_counts(counts: &mut BTreeMap<(String, String, String, u64), u32>, pairs: &[PairCount]) {
    for pair in pairs {
        *counts
            .entry((
                pair.a.portal().name().to_string(),
                pair.a.id().to_string(),
                pair.b.id().to_string(),
                pair.bucket,
            ))
            .or_default() += pair.count;
    }
}

fn session_key(s: &SessionFeature) -> (String, String, u64) {
    (s.portal.clone(), s.user_id.clone(), s.start_ts)
}

fn check_sessionize(base: u64, views: &[View]) -> Result<(), TestCaseError> {
    let config = small_config();
    let (gap, slide) = (config.session_gap.ms(), config.slide.ms());
    let input = input(base, views, &config);
    let expected_sessions = oracle::sessions(&input.accepted, &config);
    let expected_pairs = oracle::pairs(&input.accepted, &config);

    let mut state = SessionizeState::new(session_spec(&config));
    let (mut closed, mut pair_counts) = (Vec::new(), BTreeMap::new());
    let steps = input
        .deliveries
        .iter()
        .map(|d| (d.events.as_slice(), d.frontier))
        .chain(std::iter::once((&[][..], u64::MAX)));
    for (events, frontier) in steps {
        for event in events {
            state.insert(event.clone());
        }
        let (mut sessions, mut pairs) = (Vec::new(), Vec::new());
        state.advance(frontier, &mut sessions, &mut pairs);
        for s in &sessions {
            prop_assert!(
                s.end_ts.saturating_add(gap) < frontier,
                "session {:?} closed at frontier {}",
                s,
                frontier
            );
        }
        closed.extend(sessions);
        // Pairs leave exactly when the reads that formed them are final.
        add_pair_counts(&mut pair_counts, &pairs);
        prop_assert_eq!(
            &pair_counts,
            &oracle_pair_counts(&expected_pairs, &config, frontier),
            "pairs by frontier {}",
            frontier
        );
        // Sessions close at the first tick boundary after their gap (N7), so by then at the latest.
        let due = expected_sessions
            .iter()
            .filter(|s| {
                let end = s.end_ts.saturating_add(gap);
                end - end % slide + slide <= frontier
            })
            .count();
        let closable = expected_sessions
            .iter()
            .filter(|s| s.end_ts.saturating_add(gap) < frontier)
            .count();
        prop_assert!(
            (due..=closable).contains(&closed.len()),
            "{} sessions closed by frontier {}, expected {} to {}",
            closed.len(),
            frontier,
            due,
            closable
        );
    }
    prop_assert!(state.is_idle(), "sessions or reads left at the end");
    prop_assert_eq!(state.open_sessions(), 0, "sessions left open at the end");

    closed.sort_by_key(session_key);
    let mut expected = expected_sessions.clone();
    expected.sort_by_key(session_key);
    prop_assert_eq!(&closed, &expected);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Window statistics and rankings
// ---------------------------------------------------------------------------------------------

/// `(views, engaged_views, older_views, recent_users, recent_engaged_users)`.
type Counts = (u64, u64, u64, u64, u64);

/// The users of an article in the recent part: all of them, and those with an engaged view.
type RecentUsers<'a> = (BTreeSet<&'a str>, BTreeSet<&'a str>);

/// `(portal, article_id)`.
type Key = (String, String);

/// The statistics of every article with a view in the window ending at `end`, from scratch.
/// Without a recent part, `older_views` is `views` and the user counts are 0 (as the state reports).
fn naive_window(
    accepted: &[Event],
    end: u64,
    window: u64,
    recent: Option<u64>,
) -> BTreeMap<Key, Counts> {
    let mut views: BTreeMap<Key, (u64, u64, u64)> = BTreeMap::new();
    let mut users: BTreeMap<Key, RecentUsers<'_>> = BTreeMap::new();
    for e in accepted {
        if e.ts < end.saturating_sub(window) || e.ts >= end {
            continue;
        }
        let key = (e.portal.to_string(), e.article_id.to_string());
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
/// window they cover (windows stepping by `step`): applying the changes up to `T` gives every
/// article's statistics at `T`.
fn check_window_stats(
    stats: &[ArticleWindowStats],
    accepted: &[Event],
    spec: WindowSpec,
) -> Result<(), TestCaseError> {
    prop_assert!(
        stats.windows(2).all(|w| w[0].window_end <= w[1].window_end),
        "windows out of order"
    );
    let Some(first) = accepted.iter().map(|e| e.ts).min() else {
        prop_assert!(stats.is_empty());
        return Ok(());
    };
    let last = stats.last().map_or(0, |s| s.window_end);
    let mut current: BTreeMap<Key, Counts> = BTreeMap::new();
    let mut next = 0;
    let mut end = first - first % spec.step + spec.step;
    while end <= last {
        while next < stats.len() && stats[next].window_end <= end {
            let s = &stats[next];
            prop_assert_eq!(s.window_end % spec.step, 0, "not a window end: {:?}", s);
            let key = (
                s.article.portal().name().to_string(),
                s.article.id().to_string(),
            );
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
            &naive_window(accepted, end, spec.window, spec.recent),
            "window statistics at {}",
            end
        );
        end += spec.step;
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

    let spec = WindowSpec {
        window,
        step: slide,
        recent: Some(recent),
    };
    let mut stats_state = WindowStatsState::new(spec);
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
        all_stats.extend(stats.iter().copied());
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
    all_stats.extend(stats.iter().copied());
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

    check_window_stats(&all_stats, &input.accepted, spec)?;
    same_features(&emitted, &expected, "rankings")
}

// ---------------------------------------------------------------------------------------------
// Pair counts and related
// ---------------------------------------------------------------------------------------------

fn check_related(base: u64, views: &[View], pair_lead: u64) -> Result<(), TestCaseError> {
    let config = small_config();
    let input = input(base, views, &config);
    let slide = config.slide.ms();
    let (window, cooc_slide) = (config.cooc_window.ms(), config.cooc_slide.ms());
    let last = oracle::last_cooc_window_end(&input.accepted, &config);
    let expected = last.map_or_else(Vec::new, |l| oracle::related(&input.accepted, &config, l));
    let last = last.unwrap_or(0);

    // The oracle's pairs, counted per bucket, each inserted once the frontier is within
    // `pair_lead` of it, and always before the frontier passes its ts.
    let pairs = oracle::pairs(&input.accepted, &config);
    let mut inserted = vec![false; pairs.len()];
    let insert_pairs = |state: &mut PairCountsState, inserted: &mut [bool], before: u64| {
        for (done, (portal, a, b, ts)) in inserted.iter_mut().zip(&pairs) {
            if !*done && *ts < before {
                *done = true;
                state.insert(PairCount {
                    a: Article::intern_names(portal, a),
                    b: Article::intern_names(portal, b),
                    bucket: ts - ts % cooc_slide,
                    count: 1,
                });
            }
        }
    };
    // Every change of a pair's count is its count in the window, from scratch.
    let check_changes = |changes: &[CoocChange]| -> Result<(), TestCaseError> {
        for change in changes {
            let (a, b) = if change.article < change.partner {
                (change.article, change.partner)
            } else {
                (change.partner, change.article)
            };
            let count = pairs
                .iter()
                .filter(|(portal, x, y, ts)| {
                    portal == a.portal().name()
                        && x == a.id()
                        && y == b.id()
                        && *ts < change.window_end
                        && *ts >= change.window_end.saturating_sub(window)
                })
                .count() as u32;
            prop_assert_eq!(change.cooc, count, "{:?}", change);
            prop_assert_eq!(change.window_end % cooc_slide, 0);
        }
        Ok(())
    };

    let views_spec = WindowSpec {
        window,
        step: cooc_slide,
        recent: None,
    };
    let mut views_state = WindowStatsState::new(views_spec);
    let mut counts = PairCountsState::new(PairCountsSpec {
        window,
        cooc_slide,
        slide,
        min_support: config.cooc_min_support,
    });
    let mut state = RelatedState::new(RelatedSpec {
        window,
        cooc_slide,
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
            &mut counts,
            &mut inserted,
            delivery.frontier.saturating_add(pair_lead),
        );
        let mut changes = Vec::new();
        counts.advance(delivery.frontier, &mut changes);
        check_changes(&changes)?;
        for change in changes {
            state.insert_cooc(change);
        }
        let mut stats = Vec::new();
        views_state.advance(delivery.frontier, &mut stats);
        all_stats.extend(stats.iter().copied());
        for s in stats {
            state.insert_side(RelatedSideInput::Views(s));
        }
        if !delivery.downstream {
            continue;
        }
        state.insert_side(RelatedSideInput::Horizon(horizon));
        let limit = delivery.frontier.min(state.last_window());
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
    all_stats.extend(stats.iter().copied());
    for s in stats {
        state.insert_side(RelatedSideInput::Views(s));
    }
    insert_pairs(&mut counts, &mut inserted, u64::MAX);
    let mut changes = Vec::new();
    counts.advance(u64::MAX, &mut changes);
    check_changes(&changes)?;
    prop_assert!(counts.is_empty(), "pairs left: {}", counts.len());
    for change in changes {
        state.insert_cooc(change);
    }
    state.insert_side(RelatedSideInput::Horizon(horizon));
    prop_assert_eq!(state.last_window(), last);
    state.finish(&mut emitted);
    prop_assert!(state.is_idle(), "related state left after finish");

    check_window_stats(&all_stats, &input.accepted, views_spec)?;
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
    fn sessionize_and_its_pairs_match_the_oracle(
        base in base(),
        views in prop::collection::vec(view(), 0..80),
    ) {
        check_sessionize(base, &views)?;
    }

    #[test]
    fn window_stats_and_rankings_match_oracle_rankings(
        base in base(),
        views in prop::collection::vec(view(), 0..80),
    ) {
        check_rankings(base, &views)?;
    }

    #[test]
    fn pair_counts_and_related_match_oracle_related(
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
