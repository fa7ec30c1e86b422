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
//! - [`delivery`]: accepted events made durable before the answer: the portal's stream, else its
//!   SQS FIFO queue, else the local spool; a portal with events buffered keeps its order;
//! - [`spool`]: the local spool, append-only, fsync'd and bounded;
//! - [`drainer`]: per portal, buffered events back to Kinesis, oldest first, removed only once
//!   written;
//! - [`cors`]: which page origins may send each portal's events;
//! - [`client_limits`]: rate limits per client address, kept only as a keyed hash;
//! - [`pixel`]: `GET /v1/pixel.gif?…`, one pageview from a query, for pages without JavaScript;
//! - [`tracker`]: the browser tracker `GET /tracker.js` and its test page `GET /tracker/test.html`;
//! - [`routes`]: `POST /v1/collect` (and its CORS preflight), `/healthz`, `/readyz`, `/metrics`;
//! - [`metrics`]: accepted, rejected by reason, written by path, drained, drain lag, spool use.
//!
//! ```text
//!   request ──► Kinesis ──(refused)──► SQS FIFO queue ──(refused)──► spool (local disk) ──(full)──► 503
//!                  ▲                        │                            │
//!                  └──────── drainer ◄──────┴────────────────────────────┘
//! ```
//!
//! An event is acknowledged (200) only once it is durable in one of them; only when all refuse
//! it is the request answered 503 and the client sends it again.

pub mod client_limits;
pub mod config;
pub mod cors;
pub mod delivery;
pub mod drainer;
pub mod metrics;
pub mod pixel;
pub mod request;
pub mod routes;
pub mod spool;
pub mod tracker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use pageflow_connectors::kinesis::KinesisStream;

use crate::config::JobConfig;
use delivery::{DurableWriter, PortalRoute};
use metrics::CollectMetrics;
use pageflow_connectors::sqs_buffer::SqsBuffer;
use routes::{Collector, router};
use spool::Spool;

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
    let sqs_client = config.aws.sqs_client(&sdk, ATTEMPT_TIMEOUT);
    let spool_dir = config.collect.spool_dir.clone();
    let spool_max = config.collect.spool_max_bytes;
    let spool = tokio::task::spawn_blocking(move || Spool::open(&spool_dir, spool_max))
        .await
        .context("the spool could not be opened")?
        .with_context(|| {
            format!(
                "cannot open the spool in {}: check [collect] spool_dir",
                config.collect.spool_dir.display()
            )
        })?;
    let metrics = Arc::new(CollectMetrics::default());
    let mut routes = BTreeMap::new();
    for entry in &config.collect.portals {
        let spooled = spool.records(&entry.portal);
        if spooled > 0 {
            tracing::info!(
                portal = %entry.portal,
                events = spooled,
                "collect: the spool holds events from before; draining them to Kinesis first"
            );
        }
        metrics.set_spool(&entry.portal, spooled, spool.bytes());
        let route = PortalRoute::new(
            &entry.portal,
            KinesisStream::with_client(client.clone(), &entry.stream),
            entry
                .sqs_queue
                .as_deref()
                .map(|queue| SqsBuffer::new(sqs_client.clone(), queue)),
            spooled,
        );
        routes.insert(entry.portal.clone(), Arc::new(route));
    }
    let spool = Arc::new(Mutex::new(spool));
    let routes_for_stop: Vec<Arc<PortalRoute>> = routes.values().cloned().collect();
    for route in routes.values() {
        tokio::spawn(drainer::drain(
            Arc::clone(route),
            Arc::clone(&spool),
            Arc::clone(&metrics),
        ));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let collector = Arc::new(Collector {
        portals: routes.keys().cloned().collect(),
        writer: DurableWriter::new(routes, spool, Arc::clone(&metrics)),
        origins: cors::Origins::from_config(&config.collect),
        limits: client_limits::ClientLimits::new(&config.collect.rate_limit),
        metrics,
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
    let stopped = stop_signal().context("cannot listen for SIGTERM and SIGINT")?;
    crate::say!(
        "pageflow collect: open http://{addr}/ ; POST pageviews to /v1/collect; stop with Ctrl-C"
    );
    axum::serve(
        listener,
        router(collector).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stopped)
    .await
    .context("the collector's HTTP server failed")?;
    let left = empty_the_spool(&routes_for_stop, config.collect.stop_timeout.into()).await;
    if left > 0 {
        crate::say!(
            "pageflow collect: stopped with {left} event(s) still in the spool at {}: they are moved on when a collector starts on this directory again (on storage that goes away with the task, they are lost: keep an SQS queue per portal so the spool is rarely needed)",
            config.collect.spool_dir.display()
        );
    } else {
        crate::say!("pageflow collect: stopped");
    }
    Ok(())
}

/// Once no more requests come, waits up to `limit` for the drainers to move every spooled event
/// to Kinesis or SQS (the spool is local disk); returns how many are left.
async fn empty_the_spool(routes: &[Arc<PortalRoute>], limit: Duration) -> u64 {
    let spooled = || -> u64 {
        routes
            .iter()
            .map(|route| route.spooled.load(Ordering::SeqCst))
            .sum()
    };
    if spooled() == 0 {
        return 0;
    }
    crate::say!(
        "pageflow collect: stopping: moving {} spooled event(s) to Kinesis or SQS (at most {} s)",
        spooled(),
        limit.as_secs()
    );
    let deadline = tokio::time::Instant::now() + limit;
    while spooled() > 0 && tokio::time::Instant::now() < deadline {
        for route in routes {
            route.wake.notify_one();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spooled()
}

/// Resolves on SIGINT or SIGTERM. The signals are caught from the call on (not from the first
/// poll), so one sent as soon as the collector says it runs stops it cleanly.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
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
