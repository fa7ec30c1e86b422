//! `pageflow serve`: the read-only serving tier, scaled with the API's traffic.
//!
//! ```text
//!  pageflow run (fixed cluster) ──► features stream (Kinesis) ──► pageflow serve × N (behind the ALB)
//!                                                                  follower thread ──► ServingState ◄── HTTP
//! ```
//!
//! The job runs as a fixed timely cluster whose shape changes only by a restart, so it cannot
//! follow the API's traffic. `pageflow serve` answers the same routes (the same router, see
//! [`pageflow_serve::app_router`]) from a [`ServingState`] it rebuilds from what the job publishes:
//! the features stream (`[sinks.kinesis] stream`, one JSON feature per record, see
//! [`pageflow_dataflow::features`]). Any number of these tasks can run; they share nothing but the
//! stream, so they scale out and in freely (target tracking on requests per target).
//!
//! What each feature becomes ([`live_update`]):
//! - `popular` / `trending` → the portal's **final** ranking, `watermark` = `window_end` (the
//!   window is complete up to its end). The job's provisional preview of the window still filling
//!   is not in the stream: this tier serves final windows only, refreshed every `slide`, while the
//!   job's own HTTP also serves the provisional ranking.
//! - `related` → the article's related list.
//! - `session` → the reader's recent reads, for recommendations (related to what they read, and
//!   excluding it). A session is only published once it closes, so a read reaches this tier up to
//!   one session gap (`[semantics] session_gap`) after it happened; the job itself knows it at
//!   once. The session gives only its first and last times, so its articles' read times are spread
//!   evenly between them in first-read order ([`session_reads`]); a session lists at most
//!   [`SESSION_ARTICLES_MAX`](pageflow_dataflow::features::SESSION_ARTICLES_MAX) articles, the
//!   first ones read.
//!
//! Reading: the job's Kinesis consumer ([`KinesisConsumer`], one process, one worker), whose
//! [`ShardFeed`] hands over each shard as a [`RecordSource`]; one follower thread polls them. That
//! reuses shard discovery, resharding (children after parents), KPL de-aggregation, retries and
//! the per-shard status that `/readyz`, `/v1/status` and `/metrics` show, which a bare
//! `GetRecords` loop would have to redo. Where it starts is `[serving_tier] start_position`
//! (default `trim_horizon`: everything the stream retains, so a new task has the last day's
//! rankings and related lists before it takes traffic).
//!
//! Readiness: `/readyz` answers 503 until the tier has caught up once (every shard listed, read to
//! within [`READY_MAX_LAG_MS`] of its tip and its buffered records applied), then 200 as long as
//! every shard stays within that lag, the same rule as the job's (see
//! [`pageflow_serve::routes::health`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::kinesis::consumer::{
    ConsumerPlacement, ConsumerSettings, KinesisConsumer, NowhereElse, ShardFeed, StreamSpec,
};
use pageflow_connectors::kinesis::polling_reader::ReaderSettings;
use pageflow_connectors::kinesis::shard_reader::StartPosition;
use pageflow_dataflow::event::RawRecord;
use pageflow_dataflow::features::{Feature, RankingFeature, RankingKind, SessionFeature};
use pageflow_dataflow::live::LiveUpdate;
use pageflow_dataflow::source::{PartitionFeed, PollStatus, RecordSource};
use pageflow_metrics::Metrics;
use pageflow_serve::personalize::PersonalizeRecommendations;
use pageflow_serve::routes::health::READY_MAX_LAG_MS;
use pageflow_serve::{JobView, ServingState};

use crate::commands::run::serving::start_http;
use crate::config::{JobConfig, StartPositionName};

/// The portal name the features stream's shards are listed under (the stream carries every
/// portal; the name only labels its shards in `/v1/status` and `/metrics`).
pub const FEATURES_PORTAL: &str = "features";

/// Records taken from one shard per poll.
const POLL_BATCH: usize = 1_000;

/// How long the follower waits when no shard had anything.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// What one feature of the stream becomes in the serving state (see the module docs).
pub fn live_update(feature: Feature) -> LiveUpdate {
    let final_ranking = |kind: RankingKind, ranking: RankingFeature| LiveUpdate::Ranking {
        kind,
        portal: ranking.portal,
        window_start: ranking.window_start,
        window_end: ranking.window_end,
        // A ranking is published once its window is final: complete up to its end.
        watermark: ranking.window_end,
        is_final: true,
        items: ranking.items,
    };
    match feature {
        Feature::Popular(ranking) => final_ranking(RankingKind::Popular, ranking),
        Feature::Trending(ranking) => final_ranking(RankingKind::Trending, ranking),
        Feature::Related(related) => LiveUpdate::Related {
            portal: related.portal,
            article_id: related.article_id,
            window_end: related.window_end,
            items: related.items,
        },
        Feature::Session(session) => LiveUpdate::Reads {
            reads: session_reads(&session),
            portal: session.portal,
            user_id: session.user_id,
        },
    }
}

/// A closed session's articles with read times: the session says only when it started and ended,
/// so its articles (in first-read order) are given times spread evenly from `start_ts` to
/// `end_ts`. The order of a reader's recent reads is then right across sessions and within one up
/// to re-reads (the job orders by each article's latest read; a re-read article keeps its first
/// place here). A one-article session's article was last read at `end_ts`, exactly.
pub fn session_reads(session: &SessionFeature) -> Vec<(String, u64)> {
    let steps = session.articles.len().saturating_sub(1) as u64;
    let span = session.end_ts.saturating_sub(session.start_ts);
    session
        .articles
        .iter()
        .enumerate()
        .map(|(index, article)| {
            let ts = match steps {
                0 => session.end_ts,
                _ => session.start_ts + span * index as u64 / steps,
            };
            (article.clone(), ts)
        })
        .collect()
}

/// A running serving tier's handles, for the binary and tests.
#[derive(Debug)]
pub struct RunningServer {
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// The state served, rebuilt from the features stream.
    pub serving: Arc<ServingState>,
    stop: Arc<AtomicBool>,
    consumer: KinesisConsumer,
    follower: Option<JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl RunningServer {
    /// Stops following the stream and serving HTTP (open responses end first).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.consumer.stop();
        if let Some(follower) = self.follower.take()
            && follower.join().is_err()
        {
            tracing::error!("the features stream follower panicked");
        }
        // The HTTP server sees `stop` within 100 ms and closes the change streams.
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// Starts the serving tier: the features stream's consumer, the follower thread and HTTP.
pub fn start(mut config: JobConfig) -> Result<RunningServer> {
    let mut problems = config.validate();
    problems.extend(config.serving_tier.validate(&config.sinks.kinesis.stream));
    if !problems.is_empty() {
        return Err(anyhow!(
            "invalid configuration:\n  {}",
            problems.join("\n  ")
        ));
    }
    // Serving is the whole point of this command.
    config.serve.enabled = true;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("pageflow-serve")
        .build()
        .context("cannot start the I/O runtime")?;
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(ServingState::with_read_limits(
        config.recommendations.read_limits(),
    ));
    let sdk = runtime.block_on(config.aws.load());
    let tier = &config.serving_tier;
    let settings = ConsumerSettings {
        start: match tier.start_position {
            StartPositionName::TrimHorizon => StartPosition::TrimHorizon,
            StartPositionName::Latest => StartPosition::Latest,
            StartPositionName::AtTimestamp => {
                StartPosition::AtTimestamp(tier.start_timestamp_ms.unwrap_or(0))
            }
        },
        discovery_interval: tier.discovery_interval.into(),
        reader: ReaderSettings {
            max_records: tier.max_records,
            min_call_interval: tier.poll_interval.into(),
            ..ReaderSettings::default()
        },
        ..ConsumerSettings::default()
    };
    let (consumer, mut feeds) = KinesisConsumer::start(
        runtime.handle(),
        config.aws.kinesis_client(&sdk),
        vec![StreamSpec {
            portal: FEATURES_PORTAL.to_string(),
            stream: config.sinks.kinesis.stream.clone(),
            fan_out_consumer: None,
        }],
        ConsumerPlacement::single(1),
        Arc::new(NowhereElse),
        settings,
    );
    metrics.watch_kinesis(Arc::clone(&consumer.status));
    let feed = feeds
        .pop()
        .ok_or_else(|| anyhow!("the Kinesis consumer gave no feed for its one worker"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let follower = Follower {
        feed,
        shards: Vec::new(),
        serving: Arc::clone(&serving),
        stop: Arc::clone(&stop),
        unreadable: 0,
    };
    let follower = std::thread::Builder::new()
        .name("pageflow-follow".to_string())
        .spawn(move || follower.run())
        .context("cannot start the features stream follower thread")?;
    let personalize = config.personalize.recommends().then(|| {
        Arc::new(PersonalizeRecommendations::new(
            &config.aws.personalize_runtime_client(&sdk),
            &config.personalize,
        ))
    });
    let http_addr = start_http(
        &config,
        &runtime,
        &serving,
        &metrics,
        personalize.as_ref(),
        &Arc::new(JobView::default()),
        &stop,
    )?
    .ok_or_else(|| anyhow!("HTTP did not start although [serve] is enabled"))?;
    Ok(RunningServer {
        http_addr,
        serving,
        stop,
        consumer,
        follower: Some(follower),
        runtime,
    })
}

/// Runs the serving tier until SIGINT or SIGTERM.
pub fn run(config: JobConfig) -> Result<()> {
    let stream = config.sinks.kinesis.stream.clone();
    let server = start(config)?;
    tracing::info!(
        stream = %stream,
        "serving what the features stream holds on http://{}/",
        server.http_addr
    );
    crate::say!(
        "pageflow serve is following {stream}: open http://{}/ ; stop with Ctrl-C",
        server.http_addr
    );
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    signals.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = terminate.recv() => {},
        }
        Ok::<_, std::io::Error>(())
    })?;
    crate::say!("pageflow serve: stopping");
    server.shutdown();
    Ok(())
}

/// One shard of the features stream, as the consumer handed it over.
struct FollowedShard {
    source: Box<dyn RecordSource>,
    /// It has been read to within [`READY_MAX_LAG_MS`] of its tip and everything read was applied.
    caught_up: bool,
    finished: bool,
}

/// The follower thread: polls every shard, applies each feature to the serving state, and marks
/// the state loaded once it has caught up.
struct Follower {
    feed: ShardFeed,
    shards: Vec<FollowedShard>,
    serving: Arc<ServingState>,
    stop: Arc<AtomicBool>,
    /// Records that are not features (logged, then skipped).
    unreadable: u64,
}

impl Follower {
    fn run(mut self) {
        let mut records = Vec::new();
        let mut new = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            // Read before `poll_new`: once it says no, every shard of the first listing is here.
            let discovering = self.feed.is_discovering();
            self.feed.poll_new(&mut new);
            self.shards
                .extend(new.drain(..).map(|source| FollowedShard {
                    source,
                    caught_up: false,
                    finished: false,
                }));
            let mut busy = false;
            for shard in &mut self.shards {
                // The lag is read before polling: records read before the lag was reported are
                // in the channel by then, so an empty poll means they were applied.
                let near_tip = shard
                    .source
                    .lag_ms()
                    .is_some_and(|lag| lag <= READY_MAX_LAG_MS.unsigned_abs());
                match shard.source.poll(POLL_BATCH, &mut records) {
                    Ok(PollStatus::Ready) => busy = true,
                    Ok(PollStatus::Pending) => shard.caught_up |= near_tip,
                    Ok(PollStatus::Finished) => shard.finished = true,
                    Err(error) => tracing::warn!(
                        shard = shard.source.name(),
                        "cannot read the features stream: {error}"
                    ),
                }
                for record in records.drain(..) {
                    apply_record(&self.serving, &record, &mut self.unreadable);
                }
            }
            // A closed shard read to its end is done; its children follow through the feed.
            self.shards.retain(|shard| !shard.finished);
            if !discovering
                && !self.serving.is_loaded()
                && self.shards.iter().all(|shard| shard.caught_up)
            {
                self.serving.mark_loaded();
                tracing::info!("caught up with the features stream: ready for traffic");
            }
            if !busy {
                std::thread::sleep(IDLE_WAIT);
            }
        }
    }
}

/// Applies one record of the features stream; one that is not a feature is logged (the first and
/// every 1,000th) and skipped: a newer job may publish kinds this version does not know.
fn apply_record(serving: &ServingState, record: &RawRecord, unreadable: &mut u64) {
    let problem = match (
        &record.corrupt,
        serde_json::from_slice::<Feature>(&record.bytes),
    ) {
        (Some(why), _) => why.clone(),
        (None, Ok(feature)) => {
            serving.apply(live_update(feature));
            return;
        }
        (None, Err(error)) => error.to_string(),
    };
    *unreadable += 1;
    if *unreadable % 1_000 == 1 {
        tracing::warn!(
            at = %record.position.position,
            skipped = *unreadable,
            "a record of the features stream is not a feature this version knows ({problem}); skipped. A job newer than this server? Deploy the same version to both"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageflow_dataflow::features::{RankedItem, RelatedItem};

    fn ranked(article: &str, views: u64) -> RankedItem {
        RankedItem {
            article_id: article.to_string(),
            views,
            engaged_views: views,
            score: views as f64,
        }
    }

    #[test]
    fn a_ranking_feature_is_a_final_ranking_complete_up_to_its_window_end() {
        let items = vec![ranked("a1", 5), ranked("a2", 3)];
        for kind in [RankingKind::Popular, RankingKind::Trending] {
            let feature = Feature::ranking(kind, "g1", 1_000, 61_000, items.clone());
            assert_eq!(
                live_update(feature),
                LiveUpdate::Ranking {
                    kind,
                    portal: "g1".to_string(),
                    window_start: 1_000,
                    window_end: 61_000,
                    watermark: 61_000,
                    is_final: true,
                    items: items.clone(),
                }
            );
        }
    }

    #[test]
    fn a_related_feature_is_the_articles_related_list() {
        let items = vec![RelatedItem {
            article_id: "a2".to_string(),
            cooc: 4,
            score: 0.5,
        }];
        let feature = Feature::related("ge", "a1", 0, 3_600_000, items.clone());
        assert_eq!(
            live_update(feature),
            LiveUpdate::Related {
                portal: "ge".to_string(),
                article_id: "a1".to_string(),
                window_end: 3_600_000,
                items,
            }
        );
    }

    fn session(articles: &[&str], start_ts: u64, end_ts: u64) -> SessionFeature {
        SessionFeature {
            feature_id: "f".to_string(),
            portal: "g1".to_string(),
            user_id: "u1".to_string(),
            session_id: "s".to_string(),
            start_ts,
            end_ts,
            views: articles.len() as u64,
            distinct_articles: articles.len() as u64,
            dwell_ms_total: 0,
            clicks_total: 0,
            max_scroll_pct: 0,
            articles: articles.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_session_becomes_the_readers_reads_spread_over_it_in_first_read_order() {
        let update = live_update(Feature::Session(session(&["a", "b", "c"], 1_000, 3_000)));
        assert_eq!(
            update,
            LiveUpdate::Reads {
                portal: "g1".to_string(),
                user_id: "u1".to_string(),
                reads: vec![
                    ("a".to_string(), 1_000),
                    ("b".to_string(), 2_000),
                    ("c".to_string(), 3_000)
                ],
            }
        );
        assert_eq!(
            session_reads(&session(&["a"], 1_000, 9_000)),
            vec![("a".to_string(), 9_000)],
            "one article: its last read ends the session"
        );
        assert!(session_reads(&session(&[], 1_000, 9_000)).is_empty());
    }

    #[test]
    fn applied_features_are_served_and_exclude_what_the_reader_read() {
        let serving = ServingState::new();
        let lines = [
            Feature::ranking(RankingKind::Popular, "g1", 0, 60_000, vec![ranked("a1", 2)]),
            Feature::Session(session(&["a1", "a2"], 10_000, 20_000)),
        ];
        let record = |bytes: Vec<u8>| {
            RawRecord::new(
                pageflow_dataflow::event::SourcePosition {
                    partition: "kinesis:features/shard-0".to_string(),
                    position: "1:0".to_string(),
                },
                bytes,
            )
        };
        let mut unreadable = 0;
        for feature in lines {
            apply_record(
                &serving,
                &record(feature.to_json().into_bytes()),
                &mut unreadable,
            );
        }
        let not_a_feature = record(b"{\"type\":\"newer_kind\"}".to_vec());
        apply_record(&serving, &not_a_feature, &mut unreadable);
        assert_eq!(unreadable, 1);
        let popular = serving.final_ranking("g1", RankingKind::Popular).unwrap();
        assert_eq!((popular.window_end, popular.watermark), (60_000, 60_000));
        assert!(popular.is_final);
        let read: Vec<String> = serving
            .recent_reads()
            .recent("g1", "u1")
            .iter()
            .map(|read| read.article_id.to_string())
            .collect();
        assert_eq!(read, ["a2", "a1"], "newest first");
    }
}
