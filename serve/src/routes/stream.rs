//! Live change streams: a portal's ranking pushed to the client as Server-Sent Events whenever
//! what the client sees of it changes.
//!
//! | method and path | stream |
//! |---|---|
//! | `GET /v1/portals/{portal}/popular/stream?n=` | the portal's popular ranking (first `n` items) |
//! | `GET /v1/portals/{portal}/trending/stream?n=` | the portal's trending ranking (first `n` items) |
//!
//! `portal` and `n` are checked as for `GET /v1/portals/{portal}/popular` (400 `invalid_portal`,
//! `invalid_n`, `invalid_query`, JSON error bodies, see [`crate::api`]); after that the answer is
//! `200 text/event-stream` and stays open.
//!
//! # What is sent
//!
//! - First a frame with a `retry:` hint ([`RETRY_HINT`]) and a comment naming what is followed.
//! - Then `event: ranking`, with `data:` the same JSON body `GET /v1/portals/{portal}/popular?n=`
//!   (or `trending`) answers (built by the same code, `http::ranking_body`) and `id:` the
//!   [ranking event id](ranking_event_id) of that body: the current ranking at once, then again
//!   each time the event id of the current ranking changes.
//! - A keep-alive comment after [`KEEP_ALIVE_INTERVAL`] without any event, so that proxies and
//!   clients do not time the connection out.
//!
//! A portal without a ranking yet (an unknown one, or before its first window) is not an error:
//! the stream stays open, sends only the `retry:` frame and keep-alives, and sends the first
//! ranking as soon as one appears. (Validation still rejects a malformed portal name.)
//!
//! # What counts as a change
//!
//! The event id covers what a reader of the list sees: the window (`window_start`,
//! `window_end`), whether it is `final`, and the first `n` items (article ids, their order, views,
//! engaged views and scores). So an event is sent when
//! - the items of the top `n` change (an article enters, leaves or moves, a count or score moves),
//! - a new window is served, even with identical items (its `window_end` differs),
//! - the provisional ranking of a window is replaced by its final one, even with identical items;
//!
//! and not when
//! - only the `watermark` of a provisional ranking advanced with the same top `n` (nothing in the
//!   list changed; the event keeps the watermark it was built with, and
//!   `GET /v1/portals/{portal}/popular` has the latest),
//! - only items after the first `n` changed, or another portal or the other kind changed.
//!
//! # Event ids and reconnecting
//!
//! An id is `<window_end>-<f|p>-<hash>`: the window's end (ms since the epoch), `f` for final or
//! `p` for provisional, and a 64-bit xxh3 of the fields above as 16 hex digits. It depends only
//! on the ranking's content, not on the process, so it stays meaningful across a restart (which
//! restores the served rankings from the checkpoint). A client reconnecting with `Last-Event-ID`
//! equal to the current ranking's id gets nothing until the next change; with any other id (or an
//! id for another `n`) it gets the current ranking at once. Browsers' `EventSource` sends that
//! header by itself when it reconnects.
//!
//! # Flow and memory
//!
//! A stream waits on [`ServingState::subscribe`], a `tokio::sync::watch` that only says "some
//! ranking changed"; then it reads the one ranking it follows (an `Arc` snapshot; no lock is held
//! across an await) and compares its event id with the last one sent. Nothing is queued per
//! client: a slow client that has not taken the last event yet is simply not polled for the next
//! one, and when it is, it gets the ranking current at that moment (latest wins; intermediate
//! rankings are skipped). A client costs one task's worth of memory whatever its speed.
//!
//! A stream ends when the client goes away. A server stopping gracefully waits for open streams
//! to end; the job's runtime ends them when the process stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use pageflow_dataflow::features::RankingKind;
use tokio::sync::watch;

use super::rankings::{portal_from_path, ranking_body};
use crate::api::{ApiError, QueryParams, parse_n, query_params};
use crate::app::App;
use crate::state::{Ranking, ServingState};

/// The SSE `event:` name of a ranking.
pub const RANKING_EVENT: &str = "ranking";
/// The reconnection delay suggested to clients with `retry:`.
pub const RETRY_HINT: Duration = Duration::from_secs(3);
/// A keep-alive comment is sent after this long without an event.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// The request header a reconnecting `EventSource` sends with the last id it received.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The change-stream routes.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v1/portals/{portal}/popular/stream", get(popular_stream))
        .route("/v1/portals/{portal}/trending/stream", get(trending_stream))
}

/// `GET /v1/portals/{portal}/popular/stream`.
async fn popular_stream(
    State(app): State<App>,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    ranking_stream(&app, RankingKind::Popular, portal, query, &headers)
}

/// `GET /v1/portals/{portal}/trending/stream`.
async fn trending_stream(
    State(app): State<App>,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    ranking_stream(&app, RankingKind::Trending, portal, query, &headers)
}

/// Checks the request, then answers with the event stream of `(portal, kind)`.
fn ranking_stream(
    app: &App,
    kind: RankingKind,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let portal = portal_from_path(portal)?;
    let n = parse_n(&query_params(query)?)?;
    // An id that is not visible ASCII cannot be one of ours: treated as absent.
    let last_event_id = headers
        .get(LAST_EVENT_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let follower = RankingFollower::new(Arc::clone(&app.state), portal, kind, n, last_event_id);
    let keep_alive = KeepAlive::new()
        .interval(KEEP_ALIVE_INTERVAL)
        .text("keep-alive");
    Ok(Sse::new(follower.into_stream())
        .keep_alive(keep_alive)
        .into_response())
}

/// The id of the `ranking` event carrying the first `n` items of `ranking`:
/// `<window_end>-<f|p>-<xxh3 of kind, portal, window, final flag and those items, 16 hex digits>`.
/// Equal ids mean (up to a 64-bit hash collision) an identical list; see the module docs for why
/// the watermark is left out.
pub fn ranking_event_id(ranking: &Ranking, n: usize) -> String {
    let items = &ranking.items[..n.min(ranking.items.len())];
    let mut bytes = Vec::with_capacity(64 + items.len() * 48);
    let mut field = |value: &[u8]| {
        // Length-prefixed, so that no two different lists encode the same.
        bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
        bytes.extend_from_slice(value);
    };
    field(ranking.kind.name().as_bytes());
    field(ranking.portal.as_bytes());
    field(&ranking.window_start.to_le_bytes());
    field(&ranking.window_end.to_le_bytes());
    field(&[u8::from(ranking.is_final)]);
    for item in items {
        field(item.article_id.as_bytes());
        field(&item.views.to_le_bytes());
        field(&item.engaged_views.to_le_bytes());
        field(&item.score.to_bits().to_le_bytes());
    }
    let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    let finality = if ranking.is_final { 'f' } else { 'p' };
    format!("{}-{finality}-{hash:016x}", ranking.window_end)
}

/// One client's view of one `(portal, kind)`: what it was last sent, and the change signal.
#[derive(Debug)]
struct RankingFollower {
    state: Arc<ServingState>,
    changes: watch::Receiver<u64>,
    portal: String,
    kind: RankingKind,
    n: usize,
    /// The id of the last ranking the client has (sent here, or given as `Last-Event-ID`).
    last_sent_id: Option<String>,
    /// Whether the opening `retry:` frame was sent.
    opened: bool,
}

impl RankingFollower {
    /// Subscribes before anything is read, so that no change after this point is missed.
    fn new(
        state: Arc<ServingState>,
        portal: String,
        kind: RankingKind,
        n: usize,
        last_event_id: Option<String>,
    ) -> Self {
        let changes = state.subscribe();
        RankingFollower {
            state,
            changes,
            portal,
            kind,
            n,
            last_sent_id: last_event_id,
            opened: false,
        }
    }

    /// The events of this follower, until the client leaves or the server shuts down
    /// ([`ServingState::close`]).
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut follower| async move {
            let event = follower.next_event().await?;
            Some((Ok(event), follower))
        })
    }

    /// The next event to send: the opening frame, then a ranking whenever the current one's id
    /// differs from the last one sent. Waits for a change in between; `None` (the end of the
    /// response) once the state is closed: a graceful shutdown waits for open responses.
    async fn next_event(&mut self) -> Option<Event> {
        if !self.opened {
            self.opened = true;
            let comment = format!(
                "{} ranking of {}, first {} items",
                self.kind.name(),
                self.portal,
                self.n
            );
            return Some(Event::default().retry(RETRY_HINT).comment(comment));
        }
        loop {
            if self.state.is_closed() {
                return None; // The server is shutting down: end the response.
            }
            if let Some(event) = self.event_if_changed() {
                return Some(event);
            }
            // Marks the newest value seen: a change after this point wakes the next wait.
            self.changes.changed().await.ok()?;
        }
    }

    /// The `ranking` event of the current ranking, unless the client already has it.
    fn event_if_changed(&mut self) -> Option<Event> {
        let ranking = self.state.ranking(&self.portal, self.kind)?;
        let id = ranking_event_id(&ranking, self.n);
        if self.last_sent_id.as_deref() == Some(id.as_str()) {
            return None;
        }
        let data = match serde_json::to_string(&ranking_body(&ranking, self.n)) {
            Ok(data) => data,
            Err(error) => {
                // Only strings, integers and floats: cannot happen. Skip this ranking, not loop.
                tracing::warn!("cannot encode the {} ranking event: {error}", self.portal);
                self.last_sent_id = Some(id);
                return None;
            }
        };
        let event = Event::default().event(RANKING_EVENT).id(&id).data(data);
        self.last_sent_id = Some(id);
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, BodyDataStream};
    use axum::http::{Request, StatusCode, header};
    use futures_util::{FutureExt, StreamExt};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::router::router;
    use crate::state::tests::ranking as ranking_update;
    use pageflow_metrics::Metrics;

    const MIN: u64 = 60_000;
    /// A bound on waiting for a frame that must come (never reached when the code is right).
    const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

    /// One SSE frame, its fields parsed.
    #[derive(Debug, Default)]
    struct Frame {
        event: Option<String>,
        id: Option<String>,
        retry: Option<String>,
        data: Option<String>,
        comments: Vec<String>,
    }

    impl Frame {
        fn parse(text: &str) -> Frame {
            let mut frame = Frame::default();
            for line in text.lines() {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                match name {
                    "" => frame.comments.push(value),
                    "event" => frame.event = Some(value),
                    "id" => frame.id = Some(value),
                    "retry" => frame.retry = Some(value),
                    "data" => frame.data = Some(value),
                    other => panic!("unexpected field {other:?} in {text:?}"),
                }
            }
            frame
        }

        /// The ranking carried, asserting it is a `ranking` event with an id.
        fn ranking(&self) -> Value {
            assert_eq!(self.event.as_deref(), Some(RANKING_EVENT), "{self:?}");
            assert!(self.id.is_some(), "{self:?}");
            serde_json::from_str(self.data.as_deref().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}: {self:?}"))
        }

        fn article_ids(&self) -> Vec<String> {
            self.ranking()["items"]
                .as_array()
                .unwrap_or_else(|| panic!("{self:?}"))
                .iter()
                .map(|item| item["article_id"].as_str().unwrap_or_default().to_string())
                .collect()
        }
    }

    /// An open event stream, read frame by frame.
    struct Client {
        body: BodyDataStream,
    }

    impl Client {
        /// The next frame; fails the test if none comes within [`FRAME_TIMEOUT`].
        async fn next_frame(&mut self) -> Frame {
            let chunk = tokio::time::timeout(FRAME_TIMEOUT, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {FRAME_TIMEOUT:?}"))
                .unwrap_or_else(|| panic!("the stream ended"))
                .unwrap();
            let text = String::from_utf8_lossy(&chunk).into_owned();
            assert!(text.ends_with("\n\n"), "one frame per chunk: {text:?}");
            Frame::parse(&text)
        }

        /// Asserts that the stream has nothing to send now: polled once, it is pending (it has
        /// looked at every change so far and found nothing new for this client).
        fn assert_nothing_to_send(&mut self) {
            if let Some(item) = self.body.next().now_or_never() {
                panic!("expected no frame, got {item:?}");
            }
        }
    }

    async fn connect(router: &Router, uri: &str, last_event_id: Option<&str>) -> Client {
        let mut request = Request::get(uri);
        if let Some(id) = last_event_id {
            request = request.header(LAST_EVENT_ID, id);
        }
        let request = request.body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        let mut client = Client {
            body: response.into_body().into_data_stream(),
        };
        let opening = client.next_frame().await;
        assert_eq!(opening.retry.as_deref(), Some("3000"), "{opening:?}");
        assert!(opening.event.is_none() && opening.data.is_none());
        client
    }

    fn setup() -> (Router, Arc<ServingState>) {
        let state = Arc::new(ServingState::new());
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            120 * MIN,
            120 * MIN,
            true,
            &["a", "b", "c"],
        ));
        let router = router(Arc::clone(&state), Arc::new(Metrics::new()));
        (router, state)
    }

    #[tokio::test]
    async fn sends_the_current_ranking_then_each_change_of_the_top_n() {
        let (router, state) = setup();
        let mut client = connect(&router, "/v1/portals/g1/popular/stream?n=2", None).await;
        let first = client.next_frame().await;
        let body = first.ranking();
        assert_eq!(body["portal"], "g1");
        assert_eq!(body["kind"], "popular");
        assert_eq!(body["final"], true);
        assert_eq!(first.article_ids(), ["a", "b"]);
        client.assert_nothing_to_send();

        // Another portal, the other kind, and a change after the first n: nothing to send.
        state.apply(ranking_update(
            RankingKind::Popular,
            "g2",
            120 * MIN,
            120 * MIN,
            true,
            &["x"],
        ));
        client.assert_nothing_to_send();
        state.apply(ranking_update(
            RankingKind::Trending,
            "g1",
            120 * MIN,
            120 * MIN,
            true,
            &["t"],
        ));
        client.assert_nothing_to_send();
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            121 * MIN,
            120 * MIN,
            false,
            &["a", "b", "z"],
        ));
        let provisional = client.next_frame().await;
        assert_eq!(
            provisional.ranking()["final"],
            false,
            "a new window is a change"
        );
        assert_eq!(provisional.article_ids(), ["a", "b"]);
        // Its watermark advances with the same top 2: nothing to send.
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            121 * MIN,
            120 * MIN + 30_000,
            false,
            &["a", "b", "y"],
        ));
        client.assert_nothing_to_send();

        // The top 2 changes: sent, with the same body GET answers.
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            121 * MIN,
            120 * MIN + 40_000,
            false,
            &["b", "a"],
        ));
        let changed = client.next_frame().await;
        assert_eq!(changed.article_ids(), ["b", "a"]);
        assert_ne!(changed.id, provisional.id);
        let get = router
            .clone()
            .oneshot(
                Request::get("/v1/portals/g1/popular?n=2")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(get.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(changed.data.as_deref().map(str::as_bytes), Some(&bytes[..]));

        // The same window becomes final with the same items: a change.
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            121 * MIN,
            121 * MIN,
            true,
            &["b", "a"],
        ));
        let last = client.next_frame().await;
        assert_eq!(last.ranking()["final"], true);
        assert!(last.id.as_deref().is_some_and(|id| id.contains("-f-")));
    }

    #[tokio::test]
    async fn last_event_id_of_the_current_ranking_skips_it() {
        let (router, state) = setup();
        let uri = "/v1/portals/g1/popular/stream?n=3";
        let mut first = connect(&router, uri, None).await;
        let id = first.next_frame().await.id.unwrap_or_default();

        // Reconnecting with the current id: nothing until the next change.
        let mut resumed = connect(&router, uri, Some(&id)).await;
        resumed.assert_nothing_to_send();
        state.apply(ranking_update(
            RankingKind::Popular,
            "g1",
            121 * MIN,
            121 * MIN,
            true,
            &["c", "b", "a"],
        ));
        let next = resumed.next_frame().await;
        assert_eq!(next.article_ids(), ["c", "b", "a"]);
        assert_ne!(next.id.as_deref(), Some(id.as_str()));

        // An old id, or the current id with another n: the current ranking at once.
        let mut stale = connect(&router, uri, Some(&id)).await;
        assert_eq!(stale.next_frame().await.id, next.id);
        let mut other_n = connect(
            &router,
            "/v1/portals/g1/popular/stream?n=2",
            next.id.as_deref(),
        )
        .await;
        assert_eq!(other_n.next_frame().await.article_ids(), ["c", "b"]);
    }

    #[test]
    fn the_id_depends_only_on_the_content() {
        let (_, state) = setup();
        let ranking = state
            .ranking("g1", RankingKind::Popular)
            .unwrap_or_else(|| panic!("set up"));
        // Another process holding the same ranking (a restart) gives the same id.
        let restarted = ServingState::new();
        for update in state.export() {
            restarted.apply(update);
        }
        let again = restarted
            .ranking("g1", RankingKind::Popular)
            .unwrap_or_else(|| panic!("restored"));
        assert_eq!(ranking_event_id(&ranking, 3), ranking_event_id(&again, 3));
        assert_ne!(ranking_event_id(&ranking, 3), ranking_event_id(&ranking, 2));
        let id = ranking_event_id(&ranking, 3);
        assert!(id.starts_with(&format!("{}-f-", 120 * MIN)), "{id}");
        assert_eq!(id.rsplit('-').next().map(str::len), Some(16), "{id}");
        // n beyond the list is the whole list.
        assert_eq!(
            ranking_event_id(&ranking, 3),
            ranking_event_id(&ranking, 50)
        );
        // The watermark is not part of it.
        let mut later = (*ranking).clone();
        later.watermark += 1;
        assert_eq!(ranking_event_id(&later, 3), id);
        later.items[0].views += 1;
        assert_ne!(ranking_event_id(&later, 3), id);
    }

    #[tokio::test]
    async fn a_portal_without_a_ranking_waits_for_its_first() {
        let (router, state) = setup();
        let mut client = connect(&router, "/v1/portals/new-site/trending/stream", None).await;
        client.assert_nothing_to_send();
        state.apply(ranking_update(
            RankingKind::Trending,
            "new-site",
            MIN,
            MIN,
            true,
            &["first"],
        ));
        let first = client.next_frame().await;
        assert_eq!(first.ranking()["portal"], "new-site");
        assert_eq!(first.ranking()["kind"], "trending");
        assert_eq!(first.article_ids(), ["first"]);
    }

    #[tokio::test]
    async fn closing_the_state_ends_every_stream() {
        let (router, state) = setup();
        let mut client = connect(&router, "/v1/portals/g1/popular/stream", None).await;
        assert_eq!(client.next_frame().await.article_ids(), ["a", "b", "c"]);
        client.assert_nothing_to_send();
        state.close();
        let end = tokio::time::timeout(FRAME_TIMEOUT, client.body.next())
            .await
            .unwrap_or_else(|_| panic!("the stream did not end within {FRAME_TIMEOUT:?}"));
        assert!(end.is_none(), "expected the end of the stream, got {end:?}");
        // A stream opened after the close ends at once, after its opening frame.
        let mut late = connect(&router, "/v1/portals/g1/popular/stream", None).await;
        let end = tokio::time::timeout(FRAME_TIMEOUT, late.body.next())
            .await
            .unwrap_or_else(|_| panic!("the stream did not end within {FRAME_TIMEOUT:?}"));
        assert!(end.is_none(), "{end:?}");
    }

    #[tokio::test]
    async fn invalid_requests_are_refused_before_streaming() {
        let (router, _) = setup();
        for (uri, code) in [
            ("/v1/portals/G1/popular/stream", "invalid_portal"),
            ("/v1/portals/-x/trending/stream", "invalid_portal"),
            ("/v1/portals/%FF/popular/stream", "invalid_portal"),
            ("/v1/portals/g1/popular/stream?n=0", "invalid_n"),
            ("/v1/portals/g1/trending/stream?n=101", "invalid_n"),
        ] {
            let response = router
                .clone()
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(body["error"]["code"], code, "{uri}");
        }
    }
}
