//! The HTTP API, one module per resource: rankings, related articles, recommendations, their
//! change streams, the job's status and health, the OpenAPI document and the dashboard. The route
//! table itself is in [`mod@crate::router`]; what the handlers share (errors, JSON answers, checks of
//! path and query) is in [`crate::api`].
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v1/portals/{portal}/popular?n=&final=` | the portal's popular ranking (first `n` items); `final=true` for the last final one only |
//! | `GET /v1/portals/{portal}/trending?n=&final=` | the portal's trending ranking (first `n` items); `final=true` for the last final one only |
//! | `GET /v1/articles/{article_id}/related?portal=&n=` | the article's related articles in `portal`; the id as it is (slashes included) or percent-encoded |
//! | `GET /v1/users/{user_id}/recommendations?portal=&n=` | what the reader should read next: Amazon Personalize blended with related-to-recent-reads and trending, without what they read (see [`recommendations`]) |
//! | `GET /v1/portals/{portal}/popular/stream?n=`, `…/trending/stream?n=` | the same rankings as Server-Sent Events, pushed when they change (see [`stream`]) |
//! | `GET /v1/status` | the job's health as JSON: events/s, totals, dead letters, lag, watermark delay, checkpoints, readiness (see [`status`]) |
//! | `GET /v1/job` | the operator's view: the job graph with records in/out and busy ratio per operator, the last checkpoints, each source partition's watermark (see [`job`]) |
//! | `GET /v1/portals` | `{"portals":[...]}`, the portals with a ranking, sorted |
//! | `GET /healthz` | `{"status":"ok"}` while the process serves |
//! | `GET /readyz` | `{"status":"ready"}` once the state is loaded and the sources caught up, else 503 |
//! | `GET /metrics` | the [`Metrics`](pageflow_metrics::Metrics) in the Prometheus text format 0.0.4 |
//! | `GET /` | the dashboard, one self-contained HTML page: a portal's live popular and trending lists (streamed), a related-articles explorer, the job's health |
//!
//! A ranking answer is
//! `{"portal","kind","window_start","window_end","watermark","final","items":[{"article_id","views","engaged_views","score"}]}`:
//! the window `[window_start, window_end)` in ms since the epoch, the event time `watermark` it is
//! complete up to, and `final: false` when it is the provisional ranking of a window still filling
//! (served when it is newer than the last final one, see [`crate::state`]). A related answer is
//! `{"portal","article_id","window_end","watermark","final":true,"items":[{"article_id","cooc","score"}]}`;
//! its `items` may be empty (the article had related articles and no longer has).
//!
//! `n` is 1 to 100, 10 when absent. Unknown query parameters are ignored. `portal` must match
//! `^[a-z0-9][a-z0-9-]{0,31}$`; `article_id` and `user_id` are 1 to 256 characters (Unicode code
//! points, after percent-decoding).
//!
//! Errors are `{"error":{"code":"…","message":"…"}}`; the message says what was wrong and what to
//! do, the code is stable:
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_portal` | the portal (path, or `portal=` query parameter) is missing or does not match the pattern |
//! | 400 | `invalid_n` | `n` is not a whole number from 1 to 100 |
//! | 400 | `invalid_final` | `final` is not `true` or `false` |
//! | 400 | `invalid_article_id` | the article id is empty, longer than 256 characters or not UTF-8 |
//! | 400 | `invalid_user_id` | the user id is empty, longer than 256 characters or not UTF-8 |
//! | 400 | `invalid_query` | the query string cannot be decoded |
//! | 404 | `portal_not_found` | nothing (of this kind) was computed for the portal yet |
//! | 404 | `article_not_found` | no related list was computed for the article in this portal yet |
//! | 404 | `not_found` | no such endpoint |
//! | 401 | `unauthorized` | the route group needs an API key or a Cognito token and none was sent, or the one sent is unknown, malformed, expired or of a kind the group does not take; `WWW-Authenticate` names what it takes (see [`crate::auth`]) |
//! | 403 | `forbidden` | the API key may not call this route group (its `groups`), or a CORS preflight from an origin not in `[serve.cors] allowed_origins` |
//! | 429 | `rate_limited` | the caller's rate limit is spent; `Retry-After` says in how many whole seconds to retry (see [`crate::rate_limit`]) |
//! | 503 | `not_ready` | `/readyz`: the state is still loading, or a Kinesis shard is unread, failing or more than a minute behind |
//!
//! Who may call what is configured per route group in `[serve.auth]` (see [`crate::auth`]); the
//! API is described by the OpenAPI document at `GET /openapi.json` (see [`openapi`]).
//!
//! JSON answers carry `Cache-Control: no-store`: they change every few seconds.

pub mod dashboard;
pub mod health;
pub mod job;
pub mod openapi;
pub mod rankings;
pub mod recommendations;
pub mod related;
pub mod status;
pub mod stream;

#[cfg(test)]
mod tests;
