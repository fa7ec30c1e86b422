//! # pageflow-serve: the serving layer
//!
//! Live rankings, related articles, recommendations and the job's status over HTTP, for the
//! portals' front-ends, the dashboard and the platform team.
//!
//! The dataflow pushes [`LiveUpdate`](pageflow_dataflow::live::LiveUpdate)s into a shared
//! [`ServingState`] (see [`state`]); the axum router (see [`mod@router`]) answers from it without
//! recomputing anything, and exposes the job's [`Metrics`](pageflow_metrics::Metrics) for
//! Prometheus.
//!
//! Where things are:
//!
//! | module | what |
//! |---|---|
//! | [`mod@router`] | the route table and its layers |
//! | [`latency`] | the middleware that times each request for the metrics |
//! | [`app`] | [`App`], what every handler gets |
//! | [`routes`] | the handlers, one module per resource, and the API reference (paths, answers, error codes) |
//! | [`api`] | what handlers share: error answers with stable codes, JSON answers, checks of path and query |
//! | [`state`] | the live rankings and related lists the dataflow keeps up to date |
//! | [`auth`], [`rate_limit`], [`cors`] | who may call what, how often, from which web origins |
//! | [`personalize`], [`blend`], [`recent_reads`] | recommendations: Amazon Personalize blended with our own lists |
//! | [`openapi`] | the API's OpenAPI description, filled in with the running security |
//! | [`config`] | the `[serve]`, `[recommendations]` and `[personalize]` sections |
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use pageflow_metrics::Metrics;
//! use pageflow_serve::{ServingState, router, serve};
//!
//! let state = Arc::new(ServingState::default());
//! let metrics = Arc::new(Metrics::new());
//! // … hand `state` and `metrics` to the dataflow, which calls `state.apply(update)` …
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, router(state, metrics), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! Every ranking answer carries the `watermark` it is complete up to and whether it is `final`
//! (`SEMANTICS.md`, "Serving").

pub mod api;
pub mod app;
pub mod auth;
pub mod blend;
pub mod config;
pub mod cors;
pub mod job_view;
pub mod latency;
pub mod openapi;
pub mod personalize;
pub mod rate_limit;
pub mod recent_reads;
pub mod router;
pub mod routes;
pub mod state;

pub use app::App;
pub use job_view::JobView;
pub use router::{app_router, router, serve};
pub use state::{Ranking, Related, ServingState};
