//! Where an accepted event goes, so that it is durable before its request is answered.
//!
//! Each portal has a [`PortalRoute`]: its Kinesis stream, its optional SQS FIFO queue and its
//! share of the local spool. An event is acknowledged (200) once it is in one of them, tried in
//! this order:
//!
//! 1. **Kinesis** (`PutRecords`, partition key `user_id`, only the failed entries re-sent, within
//!    [`WRITE_POLICY`]: a beacon's request must be answered in seconds);
//! 2. **SQS**, what Kinesis did not take (throttling, an outage, a missing stream): see
//!    [`pageflow_connectors::sqs_buffer`];
//! 3. the **spool** (`super::spool`, append-only and fsync'd), what SQS did not take either.
//!
//! Only when the spool is full too is the request answered 503, and the client sends it again.
//!
//! **Order.** A reader's events must reach Kinesis in the order they were taken, but the drainer
//! (`super::drainer`) moves buffered events to Kinesis later. So once a portal has events
//! buffered, its new events *follow them into the buffer* instead of overtaking them in Kinesis:
//! while the spool holds any of the portal's events, new ones go to the spool; while the SQS queue
//! may hold some, new ones go to SQS (and the drainer empties SQS before the spool, which only
//! took events after SQS failed). The drainer switches a portal back to direct writes only under
//! the route's gate held exclusively, after seeing the queue empty, so no delivery that chose
//! SQS is still on its way then.
//!
//! This order holds within one collector process. Several collector tasks behind a load balancer
//! each keep their own: a reader whose requests go to two tasks, one buffering and one not, may
//! see an event overtake another. The job orders events by event time within its allowed
//! lateness, so that only matters for events buffered longer than that (the drain lag metric).
//!
//! Partial `PutRecords` failures have the same limit: Kinesis writes the entries it took, and the
//! failed ones go to the buffer after them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pageflow_connectors::batch::{OutRecord, RetryPolicy};
use pageflow_connectors::kinesis::KinesisStream;
use pageflow_connectors::retry::Backoff;
use pageflow_connectors::sqs_buffer::SqsBuffer;
use tokio::sync::{Notify, RwLock};

use super::metrics::CollectMetrics;
use super::request::AcceptedEvent;
use super::spool::{Spool, SpoolError, SpooledRecord};

/// How hard a request tries Kinesis: 5 attempts per entry, within about 1.5 s of backoff in all
/// (each attempt bounded by the client's attempt timeout, see `super::ATTEMPT_TIMEOUT`).
pub const WRITE_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: Some(5),
    backoff: Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(800),
    },
};

/// How hard a request tries SQS once Kinesis failed: 3 attempts, then the spool.
pub const BUFFER_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: Some(3),
    backoff: Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(400),
    },
};

/// Where an event was made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DurablePath {
    /// In the portal's stream.
    Kinesis,
    /// In the portal's SQS queue.
    Sqs,
    /// In the local spool.
    Spool,
}

impl DurablePath {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DurablePath::Kinesis => "kinesis",
            DurablePath::Sqs => "sqs",
            DurablePath::Spool => "spool",
        }
    }
}

/// Some accepted events are durable nowhere: the request is answered 503.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{undurable} of the request's events could not be stored ({reason}); send the request again"
)]
pub struct NotDurable {
    /// Events stored nowhere.
    pub undurable: usize,
    /// Why, for the first of them.
    pub reason: String,
}

/// One portal's way to durability, shared by the requests and the portal's drainer.
#[derive(Debug)]
pub struct PortalRoute {
    /// The portal.
    pub portal: String,
    /// Its stream.
    pub(super) kinesis: KinesisStream,
    /// Its buffer queue, when configured.
    pub(super) sqs: Option<SqsBuffer>,
    /// Held shared by every delivery, exclusively by the drainer while it switches the portal
    /// back to direct writes.
    pub(super) gate: RwLock<()>,
    /// The SQS queue may hold events of this portal: new ones follow them there.
    pub(super) buffered_in_sqs: AtomicBool,
    /// Events of this portal in the spool.
    pub(super) spooled: AtomicU64,
    /// Wakes the drainer when something was buffered.
    pub(super) wake: Notify,
}

impl PortalRoute {
    /// The route of `portal`, with `spooled` events in the spool from before a restart.
    pub fn new(portal: &str, kinesis: KinesisStream, sqs: Option<SqsBuffer>, spooled: u64) -> Self {
        PortalRoute {
            portal: portal.to_string(),
            kinesis,
            sqs,
            gate: RwLock::new(()),
            buffered_in_sqs: AtomicBool::new(false),
            spooled: AtomicU64::new(spooled),
            wake: Notify::new(),
        }
    }
}

/// How many of a request's events took each path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Events per path.
    pub by_path: BTreeMap<DurablePath, usize>,
}

impl Stored {
    fn add(&mut self, path: DurablePath, n: usize) {
        if n > 0 {
            *self.by_path.entry(path).or_default() += n;
        }
    }
}

/// Accepted events to durable storage (see the module docs).
#[derive(Debug)]
pub struct DurableWriter {
    routes: BTreeMap<String, Arc<PortalRoute>>,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<CollectMetrics>,
}

impl DurableWriter {
    /// A writer over `routes` (portal → route) and `spool`.
    pub fn new(
        routes: BTreeMap<String, Arc<PortalRoute>>,
        spool: Arc<Mutex<Spool>>,
        metrics: Arc<CollectMetrics>,
    ) -> Self {
        DurableWriter {
            routes,
            spool,
            metrics,
        }
    }

    /// Stores `events` (in the body's order), each where the module docs say; counts the paths.
    pub async fn store(&self, events: &[AcceptedEvent]) -> Result<Stored, NotDurable> {
        let mut by_portal: BTreeMap<&str, Vec<OutRecord>> = BTreeMap::new();
        for event in events {
            by_portal
                .entry(event.portal.as_str())
                .or_default()
                .push(OutRecord {
                    partition_key: event.user_id.clone(),
                    data: event.record.clone(),
                });
        }
        let mut stored = Stored::default();
        let mut failure: Option<NotDurable> = None;
        for (portal, records) in by_portal {
            let outcome = match self.routes.get(portal) {
                Some(route) => self.store_portal(route, records, &mut stored).await,
                // `judge` accepts only the configured portals; this is a bug if it happens.
                None => Err(NotDurable {
                    undurable: records.len(),
                    reason: format!("no stream is configured for portal `{portal}`"),
                }),
            };
            if let Err(not_durable) = outcome {
                let entry = failure.get_or_insert(NotDurable {
                    undurable: 0,
                    reason: not_durable.reason,
                });
                entry.undurable += not_durable.undurable;
            }
        }
        for (path, n) in &stored.by_path {
            self.metrics.add_written(path.as_str(), *n as u64);
        }
        match failure {
            None => Ok(stored),
            Some(failure) => Err(failure),
        }
    }

    async fn store_portal(
        &self,
        route: &PortalRoute,
        records: Vec<OutRecord>,
        stored: &mut Stored,
    ) -> Result<(), NotDurable> {
        let _shared = route.gate.read().await;
        // Behind the portal's spooled events, if any: they are older than anything new.
        if route.spooled.load(Ordering::SeqCst) > 0 {
            return self.spool(route, records, stored).await;
        }
        let mut rest = records;
        if !route.buffered_in_sqs.load(Ordering::SeqCst) {
            let delivery = route.kinesis.write(rest, WRITE_POLICY).await;
            stored.add(DurablePath::Kinesis, delivery.written);
            if delivery.undeliverable.is_empty() {
                return Ok(());
            }
            let reason = &delivery.undeliverable[0].1;
            tracing::warn!(
                portal = %route.portal,
                events = delivery.undeliverable.len(),
                "collect: Kinesis did not take the events ({reason}); buffering them"
            );
            rest = delivery.undeliverable.into_iter().map(|(r, _)| r).collect();
        }
        if let Some(sqs) = &route.sqs {
            // Set before sending: from now on the portal's events follow into the queue.
            route.buffered_in_sqs.store(true, Ordering::SeqCst);
            let delivery = sqs.send(rest, BUFFER_POLICY).await;
            stored.add(DurablePath::Sqs, delivery.written);
            route.wake.notify_one();
            if delivery.undeliverable.is_empty() {
                return Ok(());
            }
            let reason = &delivery.undeliverable[0].1;
            tracing::warn!(
                portal = %route.portal,
                events = delivery.undeliverable.len(),
                "collect: SQS did not take the events either ({reason}); spooling them to local disk"
            );
            rest = delivery.undeliverable.into_iter().map(|(r, _)| r).collect();
        }
        self.spool(route, rest, stored).await
    }

    /// Appends `records` to the spool, fsync'd, before returning.
    async fn spool(
        &self,
        route: &PortalRoute,
        records: Vec<OutRecord>,
        stored: &mut Stored,
    ) -> Result<(), NotDurable> {
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len();
        let arrived_ms = pageflow_dataflow::clock::unix_now_ms();
        let spooled: Vec<SpooledRecord> = records
            .into_iter()
            .map(|r| SpooledRecord {
                partition_key: r.partition_key,
                data: r.data,
                arrived_ms,
            })
            .collect();
        let portal = route.portal.clone();
        let appended = on_spool(&self.spool, move |spool| {
            spool
                .append(&portal, &spooled)
                .map(|()| (spool.records(&portal), spool.bytes()))
        })
        .await;
        match appended {
            Ok(Ok((events, bytes))) => {
                route.spooled.fetch_add(count as u64, Ordering::SeqCst);
                self.metrics.set_spool(&route.portal, events, bytes);
                stored.add(DurablePath::Spool, count);
                route.wake.notify_one();
                Ok(())
            }
            Ok(Err(error)) => {
                if matches!(error, SpoolError::Full { .. }) {
                    self.metrics.add_spool_full(count as u64);
                }
                tracing::error!(
                    portal = %route.portal,
                    events = count,
                    "collect: the events are durable nowhere: {error}"
                );
                Err(NotDurable {
                    undurable: count,
                    reason: error.to_string(),
                })
            }
            Err(join) => Err(NotDurable {
                undurable: count,
                reason: format!("the spool's writer failed ({join}); this is a bug in pageflow"),
            }),
        }
    }
}

/// Runs `work` on the shared spool on a blocking thread (its writes fsync, which must not stall
/// the async workers).
pub(super) async fn on_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    work: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<Result<T, SpoolError>, tokio::task::JoinError> {
    let spool = Arc::clone(spool);
    tokio::task::spawn_blocking(move || {
        // The spool's own recovery makes a poisoned lock harmless: its state is on disk.
        let mut spool = spool.lock().unwrap_or_else(|e| e.into_inner());
        work(&mut spool)
    })
    .await
}
