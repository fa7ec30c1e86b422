//! The pageflow graph: every operator composed into the job.
//!
//! ```text
//!  sources ─► ingest ─┬─► dead letters ────────────────────────────────────────────► dead-letter out
//!  (validate, late,   ├─► raw valid records ───────────────────────────────────────► raw archive
//!   intern ids)       └─► events ─► deduplicate ─► accepted ─┬─► sessionize ─┬─► sessions ─────────┐
//!                                                            │               └─► pairs ─► pair counts ─► cooc changes ─┐
//!                                                            ├─► window stats ─┬─► trending ─► rankings ──────────────┤
//!                                                            │                 └─► cooc views (broadcast) ─► related ─┤
//!                                                            └─► event horizon ─► (rankings, related)                 │
//!                                                                                                 features ◄─────────┘
//! ```
//!
//! With [`GraphOptions::keep_pageviews`] (the curated lake), the events carry their optional fields
//! (`url`, `referrer`, `device`) up to de-duplication, and the accepted ones also go out as
//! `pageviews`.
//!
//! Routing (by key group, so that a checkpoint restores onto any number of workers): events by
//! `event_id` (dedup), then by `(portal, user_id)` (sessions and the pairs they form), pairs by
//! the pair, events by `(portal, article_id)` (window statistics), co-occurrence changes by article
//! (related), trending statistics by `portal` (rankings). Any number of workers computes the same
//! features.

use std::sync::Arc;

use timely::dataflow::operators::Concat;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::OperatorStates;
use crate::config::SemanticsConfig;
use crate::event::{CompactEvent, DeadLetter, DetailedEvent};
use crate::features::Feature;
use crate::live::LiveUpdate;
use crate::operators::cooccurrence::PairCount;
use crate::operators::dedup::Deduplicate;
use crate::operators::horizon::EventHorizon;
use crate::operators::ingest::{IngestConfig, Ingested, RawValid, ingest};
use crate::operators::pair_counts::{PairCounts, PairCountsSpec};
use crate::operators::rankings::{RankingSpec, Rankings, RankingsOutput};
use crate::operators::related::{Related, RelatedSpec};
use crate::operators::sessionize::{SessionOutput, SessionSpec, Sessionize};
use crate::operators::window_stats::{ArticleWindowStats, WindowOutput, WindowSpec, WindowStats};
use crate::source::WorkerSources;
use crate::stats::JobStats;
use crate::watermark_exchange::BoardPublisher;

/// Options of the graph that are not part of the semantics.
#[derive(Clone, Debug)]
pub struct GraphOptions {
    /// Emit every valid record's bytes for the `raw/` archive.
    pub keep_raw: bool,
    /// Emit the counted events with their optional fields on [`GraphOutputs::pageviews`] (the
    /// curated lake's `pageviews` table). Off, the graph is the same as without it.
    pub keep_pageviews: bool,
    /// Preview the windows still filling at this processing-time interval (the live view);
    /// `None` for replays, which only need final results.
    pub live_interval: Option<std::time::Duration>,
    /// Watermark alignment: a partition whose watermark is more than this (event time, ms)
    /// ahead of the job watermark is not read until the others catch up (see
    /// [`IngestConfig::alignment`]). `None` reads every partition as fast as it goes.
    pub watermark_alignment: Option<u64>,
    /// A partition that fails for good ends (see [`IngestConfig::end_on_failure`]): for bounded
    /// runs that report the failure at the end; a long-running job holds and stops instead.
    pub end_on_source_failure: bool,
}

/// Partitions may run a minute of event time ahead of the job watermark.
pub const DEFAULT_WATERMARK_ALIGNMENT_MS: u64 = 60_000;

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            keep_raw: false,
            keep_pageviews: false,
            live_interval: None,
            watermark_alignment: Some(DEFAULT_WATERMARK_ALIGNMENT_MS),
            end_on_source_failure: false,
        }
    }
}

/// The graph's outputs on one worker.
#[derive(Debug)]
pub struct GraphOutputs<'scope> {
    /// Final feature records: sessions, popular, trending, related.
    pub features: StreamVec<'scope, u64, Feature>,
    /// Rankings and related lists for the live view (final and provisional), as they change.
    pub live: StreamVec<'scope, u64, LiveUpdate>,
    /// Records that were not counted, with reasons.
    pub dead_letters: StreamVec<'scope, u64, DeadLetter>,
    /// Valid records as received (empty unless [`GraphOptions::keep_raw`]).
    pub raw: StreamVec<'scope, u64, RawValid>,
    /// The counted events (valid, on time, de-duplicated).
    pub accepted: StreamVec<'scope, u64, CompactEvent>,
    /// The counted events with their optional fields (empty unless
    /// [`GraphOptions::keep_pageviews`]).
    pub pageviews: StreamVec<'scope, u64, DetailedEvent>,
}

/// Builds the job on this worker, reading `sources`. Every operator declares its state in
/// `states` (restored from a checkpoint when `states` holds one; `OperatorStates::default()`
/// for a run without checkpoints). `board` is this worker's end of the watermark exchange
/// ([`crate::watermark_exchange`]), whose dataflow the worker installs after this one.
pub fn build<'scope>(
    scope: Scope<'scope, u64>,
    sources: impl Into<WorkerSources>,
    board: BoardPublisher,
    config: &SemanticsConfig,
    options: &GraphOptions,
    stats: Arc<JobStats>,
    states: &OperatorStates,
) -> GraphOutputs<'scope> {
    let slide = config.slide.ms();
    let mut ingest_config = IngestConfig::new(config);
    ingest_config.keep_raw = options.keep_raw;
    ingest_config.keep_details = options.keep_pageviews;
    ingest_config.alignment = options.watermark_alignment;
    ingest_config.end_on_failure = options.end_on_source_failure;
    let ingested = ingest(
        scope,
        sources.into(),
        board,
        ingest_config,
        Arc::clone(&stats),
        states,
    );
    let (events, rest): (
        StreamVec<'scope, u64, CompactEvent>,
        StreamVec<'scope, u64, NotAnEvent>,
    ) = ingested.ok_err(split_events);
    let (dead_letters, kept): (
        StreamVec<'scope, u64, DeadLetter>,
        StreamVec<'scope, u64, Kept>,
    ) = rest.ok_err(split_dead_letters);
    let (raw, detailed): (
        StreamVec<'scope, u64, RawValid>,
        StreamVec<'scope, u64, DetailedEvent>,
    ) = kept.ok_err(split_raw);

    // With `keep_pageviews`, ingest emits every on-time event with its optional fields (and
    // `events` is empty): those are de-duplicated, emitted as pageviews and passed on as plain
    // events. Without, `detailed` is empty and the graph is what it always was.
    let (accepted, pageviews) = if options.keep_pageviews {
        let pageviews: StreamVec<'scope, u64, DetailedEvent> =
            detailed.deduplicate(config.dedup_window.ms(), slide, Arc::clone(&stats), states);
        let accepted = pageviews
            .clone()
            .map(|detailed| detailed.event)
            .concat(events);
        (accepted, pageviews)
    } else {
        let accepted =
            events.deduplicate(config.dedup_window.ms(), slide, Arc::clone(&stats), states);
        (accepted, detailed)
    };
    let horizon = accepted.clone().event_horizon(slide, states);

    let (sessions, pairs): (
        StreamVec<'scope, u64, Feature>,
        StreamVec<'scope, u64, PairCount>,
    ) = accepted
        .clone()
        .sessionize(
            SessionSpec {
                gap: config.session_gap.ms(),
                slide,
                cooc_slide: config.cooc_slide.ms(),
                cooc_recent: config.cooc_recent,
            },
            Arc::clone(&stats),
            states,
        )
        .ok_err(|output| match output {
            SessionOutput::Closed(session) => Ok(Feature::Session(session)),
            SessionOutput::Pairs(pairs) => Err(pairs),
        });
    let cooc_changes = pairs.pair_counts(
        PairCountsSpec {
            window: config.cooc_window.ms(),
            cooc_slide: config.cooc_slide.ms(),
            slide,
            min_support: config.cooc_min_support,
        },
        states,
    );

    let (trending_stats, cooc_views): (
        StreamVec<'scope, u64, ArticleWindowStats>,
        StreamVec<'scope, u64, ArticleWindowStats>,
    ) = accepted
        .clone()
        .window_stats(
            WindowSpec {
                window: config.trending_window.ms(),
                step: slide,
                recent: Some(config.trending_recent.ms()),
            },
            WindowSpec {
                window: config.cooc_window.ms(),
                step: config.cooc_slide.ms(),
                recent: None,
            },
            slide,
            options.live_interval,
            states,
        )
        .ok_err(|output| match output {
            WindowOutput::Trending(stats) => Ok(stats),
            WindowOutput::CoocViews(stats) => Err(stats),
        });
    let rankings = trending_stats.rankings(
        horizon.clone(),
        RankingSpec {
            window: config.trending_window.ms(),
            recent: config.trending_recent.ms(),
            slide,
            top_n: config.top_n,
        },
        states,
    );
    let related = cooc_changes.related(
        cooc_views,
        horizon,
        RelatedSpec {
            window: config.cooc_window.ms(),
            cooc_slide: config.cooc_slide.ms(),
            slide,
            top_n: config.top_n,
            min_support: config.cooc_min_support,
            interval: config.related_interval.ms(),
        },
        states,
    );

    let (ranking_features, live): (
        StreamVec<'scope, u64, Feature>,
        StreamVec<'scope, u64, LiveUpdate>,
    ) = rankings.ok_err(|output| match output {
        RankingsOutput::Feature(feature) => Ok(feature),
        RankingsOutput::Live(update) => Err(update),
    });
    let related_live = related.clone().flat_map(|feature| match feature {
        Feature::Related(list) => Some(LiveUpdate::Related {
            portal: list.portal,
            article_id: list.article_id,
            window_end: list.window_end,
            items: list.items,
        }),
        _ => None,
    });

    GraphOutputs {
        features: sessions.concat(ranking_features).concat(related),
        live: live.concat(related_live),
        dead_letters,
        raw,
        accepted,
        pageviews,
    }
}

/// What ingest emits besides events.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum NotAnEvent {
    DeadLetter(DeadLetter),
    Kept(Kept),
}

/// What ingest emits only when asked: raw records, events with their optional fields.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Kept {
    Raw(RawValid),
    Detailed(DetailedEvent),
}

/// Takes the events out of ingest's output (timely's `ok_err` splits by `Result`).
#[allow(
    clippy::result_large_err,
    reason = "the record moves into one of two streams; no error is propagated"
)]
fn split_events(record: Ingested) -> Result<CompactEvent, NotAnEvent> {
    match record {
        Ingested::Event(event) => Ok(event),
        Ingested::DeadLetter(letter) => Err(NotAnEvent::DeadLetter(letter)),
        Ingested::Raw(raw) => Err(NotAnEvent::Kept(Kept::Raw(raw))),
        Ingested::Detailed(event) => Err(NotAnEvent::Kept(Kept::Detailed(event))),
    }
}

/// Takes the dead letters out of what is not an event.
#[allow(
    clippy::result_large_err,
    reason = "the record moves into one of two streams; no error is propagated"
)]
fn split_dead_letters(record: NotAnEvent) -> Result<DeadLetter, Kept> {
    match record {
        NotAnEvent::DeadLetter(letter) => Ok(letter),
        NotAnEvent::Kept(kept) => Err(kept),
    }
}

/// Splits what ingest kept on request into raw records and events with their optional fields.
#[allow(
    clippy::result_large_err,
    reason = "the record moves into one of two streams; no error is propagated"
)]
fn split_raw(record: Kept) -> Result<RawValid, DetailedEvent> {
    match record {
        Kept::Raw(raw) => Ok(raw),
        Kept::Detailed(event) => Err(event),
    }
}
