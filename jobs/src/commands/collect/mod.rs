//! `pageflow collect`: the front door of the pipeline, an HTTP service that takes the portals'
//! pageview beacons and writes them to the portals' Kinesis streams.
//!
//! ```text
//!  browser ── POST /v1/collect ──► pageflow collect ── PutRecords (key user_id) ──► pageviews-<portal>
//!                                   validate as the job does                          └─► pageflow run
//! ```
//!
//! One concept per file:
//! - [`config`]: the `[collect]` section (listen address, portals with their streams);
//! - [`request`]: a body split into events, each validated exactly as the job validates a record;
//! - [`kinesis_writer`]: accepted events to their portal's stream, retrying only failed entries;
//! - [`cors`]: which page origins may send each portal's events;
//! - [`client_limits`]: rate limits per client address, kept only as a keyed hash;
//! - [`pixel`]: `GET /v1/pixel.gif?…`, one pageview from a query, for pages without JavaScript;
//! - [`tracker`]: the browser tracker `GET /tracker.js` and its test page `GET /tracker/test.html`;
//! - [`routes`]: `POST /v1/collect` (and its CORS preflight), `/healthz`, `/readyz`, `/metrics`;
//! - [`metrics`]: accepted, rejected by reason, written by path.
//!
//! An event is acknowledged (200) only once it is in Kinesis; if Kinesis does not take it the
//! request is answered 503 and the client sends it again. The SQS buffer and the local spool that
//! will take events while Kinesis refuses them, and their drainer are not in this version yet
//! (issue 14).

pub mod client_limits;
pub mod config;
pub mod cors;
pub mod kinesis_writer;
pub mod metrics;
pub mod pixel;
pub mod request;
pub mod routes;
pub mod tracker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::kinesis::KinesisStream;

use crate::config::JobConfig;
use kinesis_writer::{KinesisWriter, WRITE_POLICY};
use metrics::CollectMetrics;
use routes::{Collector, router};

/// The longest one `PutRecords` call may take before it counts as failed (and is retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the streams are looked for again until all are found (`/readyz`).
const READY_RETRY: Duration = Duration::from_secs(2);

/// Runs the collector until SIGINT or SIGTERM.
pub fn run(config: JobConfig) -> Result<()> {
    let problems = config.collect.validate();
    if !problems.is_empty() {
        return Err(anyhow!(
            "the configuration has {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the collector's threads")?;
    runtime.block_on(serve(config))
}

async fn serve(config: JobConfig) -> Result<()> {
    let sdk = config.aws.load().await;
    // The SDK's own retries are off: `deliver` retries (only the failed entries, within
    // WRITE_POLICY), and an attempt that hangs is cut short, so a request is answered in seconds.
    let client = {
        let base = config.aws.kinesis_client(&sdk);
        let conf = base
            .config()
            .to_builder()
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_kinesis::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .build();
        aws_sdk_kinesis::Client::from_conf(conf)
    };
    let streams: BTreeMap<String, KinesisStream> = config
        .collect
        .portals
        .iter()
        .map(|entry| {
            (
                entry.portal.clone(),
                KinesisStream::with_client(client.clone(), &entry.stream),
            )
        })
        .collect();
    let ready = Arc::new(AtomicBool::new(false));
    let collector = Arc::new(Collector {
        portals: streams.keys().cloned().collect::<BTreeSet<_>>(),
        writer: KinesisWriter::new(streams, WRITE_POLICY),
        origins: cors::Origins::from_config(&config.collect),
        limits: client_limits::ClientLimits::new(&config.collect.rate_limit),
        metrics: Arc::new(CollectMetrics::default()),
        ready: Arc::clone(&ready),
    });
    let stream_names: Vec<String> = config
        .collect
        .portals
        .iter()
        .map(|entry| entry.stream.clone())
        .collect();
    tokio::spawn(find_streams(client, stream_names, ready));

    let listen = &config.collect.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}: is another process using it? Set [collect] listen")
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(
        portals = config.collect.portals.len(),
        "collecting on http://{addr}/"
    );
    crate::say!(
        "pageflow collect: open http://{addr}/ ; POST pageviews to /v1/collect; stop with Ctrl-C"
    );
    axum::serve(
        listener,
        router(collector).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop_signal())
    .await
    .context("the collector's HTTP server failed")?;
    crate::say!("pageflow collect: stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}

/// Describes every stream until each has answered once, then marks the collector ready.
async fn find_streams(
    client: aws_sdk_kinesis::Client,
    streams: Vec<String>,
    ready: Arc<AtomicBool>,
) {
    let mut missing = streams;
    loop {
        let mut still_missing = Vec::new();
        for stream in missing {
            let request = client.describe_stream_summary();
            let request = if stream.starts_with("arn:") {
                request.stream_arn(&stream)
            } else {
                request.stream_name(&stream)
            };
            if let Err(error) = request.send().await {
                let (message, _) = pageflow_connectors::aws::classify(&error);
                tracing::warn!(stream = %stream, "collect: cannot describe the stream: {message}");
                still_missing.push(stream);
            }
        }
        if still_missing.is_empty() {
            ready.store(true, Ordering::SeqCst);
            return;
        }
        missing = still_missing;
        tokio::time::sleep(READY_RETRY).await;
    }
}
