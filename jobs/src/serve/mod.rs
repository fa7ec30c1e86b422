//! The serving layer: live rankings and related lists over HTTP, and the job's metrics.
//!
//! The dataflow pushes [`LiveUpdate`](pageflow_dataflow::live::LiveUpdate)s into a shared
//! [`ServingState`] (see [`state`]); the axum [`router`] (see [`http`]) answers from it without
//! recomputing anything, and exposes the [`Metrics`](crate::metrics::Metrics) for Prometheus.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use pageflow::{metrics::Metrics, serve};
//!
//! let state = Arc::new(serve::ServingState::default());
//! let metrics = Arc::new(Metrics::new());
//! // … hand `state` and `metrics` to the dataflow, which calls `state.apply(update)` …
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve::serve(listener, serve::router(state, metrics), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! Every ranking answer carries the `watermark` it is complete up to and whether it is `final`
//! (`SEMANTICS.md`, "Serving").

pub mod auth;
pub mod blend;
pub mod cors;
pub mod http;
pub mod openapi;
pub mod personalize;
pub mod rate_limit;
pub mod recent_reads;
pub mod recommend;
pub mod state;
pub mod status;
pub mod stream;

pub use http::{App, app_router, router, serve};
pub use state::{Ranking, Related, ServingState};
