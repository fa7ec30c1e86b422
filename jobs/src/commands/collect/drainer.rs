//! The drainer: a portal's buffered events back to its Kinesis stream, oldest first.
//!
//! One task per portal. The spool only takes events after SQS refused them (`super::delivery`), so
//! everything in the queue is older than anything spooled. The spool is emptied first, as it is
//! the least durable store (local disk, lost with a replaced Fargate task): straight to Kinesis
//! when the queue holds nothing older, else to the end of the queue, behind what waits there (also
//! when Kinesis refuses them: SQS keeps them safer than the disk). The queue is emptied into
//! Kinesis. An event leaves a store only after the next one took it: a message is deleted, a
//! spooled record removed, once written. A crash in between writes it twice, which at-least-once
//! delivery allows (the job drops duplicates by `event_id`).
//!
//! When a batch fails, the drainer keeps it and tries again with backoff (Kinesis is throttling
//! or down: the buffer is doing its job); an error line every try says why. When the queue is
//! seen empty, the drainer takes the route's gate exclusively, looks once more, and only then
//! lets the portal's new events go straight to Kinesis again.
//!
//! The queue is also looked into at start (events left by a collector that stopped while
//! buffering: the portal's new events follow them until they are drained) and every
//! [`IDLE_LOOK`] when nothing is buffered here (events left by another collector task that
//! shares the queue and is gone).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pageflow_connectors::batch::{OutRecord, RetryPolicy};
use pageflow_connectors::retry::{Backoff, Jitter};
use pageflow_connectors::sqs_buffer::{BufferedRecord, MAX_RECEIVE, SqsBuffer};
use pageflow_dataflow::clock::unix_now_ms;

use super::delivery::{PortalRoute, on_spool};
use super::metrics::CollectMetrics;
use super::spool::Spool;

/// How hard one drain attempt tries Kinesis before the drainer backs off.
const DRAIN_POLICY: RetryPolicy = RetryPolicy {
    max_attempts: Some(3),
    backoff: Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    },
};

/// The wait between failed drain attempts.
const RETRY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(250),
    max: Duration::from_secs(10),
};

/// How long one `ReceiveMessage` waits for messages (long polling).
const SQS_WAIT: Duration = Duration::from_secs(1);

/// How often an idle drainer looks into its queue for events another collector left.
pub const IDLE_LOOK: Duration = Duration::from_secs(30);

/// The most spooled records moved in one round.
const SPOOL_BATCH: usize = 500;

/// Drains `route`'s buffers for as long as the collector runs.
pub async fn drain(
    route: Arc<PortalRoute>,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<CollectMetrics>,
) {
    let drainer = Drainer {
        route,
        spool,
        metrics,
        jitter: Jitter::new(),
    };
    drainer.run().await;
}

struct Drainer {
    route: Arc<PortalRoute>,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<CollectMetrics>,
    jitter: Jitter,
}

/// What one round did.
enum Round {
    /// Events moved, or the portal switched back to direct writes: go on at once.
    Moved,
    /// Nothing buffered here.
    Idle,
    /// A buffer or Kinesis failed: back off.
    Failed(String),
}

impl Drainer {
    async fn run(mut self) {
        let route = Arc::clone(&self.route);
        if let Some(sqs) = &route.sqs {
            self.look_at_start(sqs).await;
        }
        let mut failures = 0u32;
        loop {
            match self.round().await {
                Round::Moved => failures = 0,
                Round::Failed(reason) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        portal = %self.route.portal,
                        failures,
                        "collect: cannot drain the buffered events yet ({reason}); trying again"
                    );
                    let delay = RETRY_BACKOFF.delay(failures, self.jitter.next_u64());
                    tokio::time::sleep(delay).await;
                }
                Round::Idle => {
                    failures = 0;
                    self.metrics.set_drain_lag(&self.route.portal, "spool", 0.0);
                    let woken = tokio::time::timeout(IDLE_LOOK, self.route.wake.notified()).await;
                    if woken.is_err()
                        && let Some(sqs) = &route.sqs
                    {
                        // Another collector's leftovers: drained like ours, new events follow.
                        if let Ok(found) = sqs.receive(MAX_RECEIVE, Duration::ZERO).await
                            && !found.is_empty()
                        {
                            tracing::info!(
                                portal = %self.route.portal,
                                "collect: the buffer queue holds events no collector is draining; draining them"
                            );
                            self.route.buffered_in_sqs.store(true, Ordering::SeqCst);
                            self.move_from_sqs(sqs, found).await;
                        }
                    }
                }
            }
        }
    }

    /// Events a stopped collector left in the queue go first: until they are drained, the
    /// portal's new events follow them.
    async fn look_at_start(&mut self, sqs: &SqsBuffer) {
        let route = Arc::clone(&self.route);
        let exclusive = route.gate.write().await;
        match sqs.receive(MAX_RECEIVE, SQS_WAIT).await {
            Ok(found) if found.is_empty() => {}
            Ok(found) => {
                tracing::info!(
                    portal = %self.route.portal,
                    queue = sqs.queue(),
                    "collect: the buffer queue holds events from before; new events follow them until they are drained"
                );
                self.route.buffered_in_sqs.store(true, Ordering::SeqCst);
                drop(exclusive);
                self.move_from_sqs(sqs, found).await;
            }
            Err(failure) => tracing::warn!(
                portal = %self.route.portal,
                queue = sqs.queue(),
                "collect: cannot look into the buffer queue ({}); events left there from before are drained when it answers (within {} s), maybe after newer ones",
                failure.message,
                IDLE_LOOK.as_secs()
            ),
        }
    }

    async fn round(&mut self) -> Round {
        let route = Arc::clone(&self.route);
        if route.spooled.load(Ordering::SeqCst) > 0 {
            match self.move_from_spool().await {
                Round::Moved => return Round::Moved,
                // The spool waits behind the queue: drain the queue meanwhile.
                failed if !route.buffered_in_sqs.load(Ordering::SeqCst) => return failed,
                _ => {}
            }
        }
        if route.buffered_in_sqs.load(Ordering::SeqCst)
            && let Some(sqs) = &route.sqs
        {
            return match sqs.receive(MAX_RECEIVE, SQS_WAIT).await {
                Err(failure) => Round::Failed(failure.message),
                Ok(found) if !found.is_empty() => self.move_from_sqs(sqs, found).await,
                Ok(_) => {
                    // Looks empty: look again with no delivery on its way to the queue.
                    let exclusive = route.gate.write().await;
                    match sqs.receive(MAX_RECEIVE, SQS_WAIT).await {
                        Err(failure) => Round::Failed(failure.message),
                        Ok(found) if found.is_empty() => {
                            route.buffered_in_sqs.store(false, Ordering::SeqCst);
                            self.metrics.set_drain_lag(&route.portal, "sqs", 0.0);
                            tracing::info!(
                                portal = %route.portal,
                                "collect: the buffer queue is drained; writing to Kinesis directly again"
                            );
                            Round::Moved
                        }
                        Ok(found) => {
                            drop(exclusive);
                            self.move_from_sqs(sqs, found).await
                        }
                    }
                }
            };
        }
        Round::Idle
    }

    /// Writes `found` to Kinesis, then deletes it from the queue.
    async fn move_from_sqs(&mut self, sqs: &SqsBuffer, found: Vec<BufferedRecord>) -> Round {
        let oldest = found.iter().map(|m| m.sent_ms).filter(|&ms| ms > 0).min();
        if let Some(oldest) = oldest {
            self.metrics
                .set_drain_lag(&self.route.portal, "sqs", age_seconds(oldest));
        }
        let receipts: Vec<String> = found.iter().map(|m| m.receipt_handle.clone()).collect();
        let records: Vec<OutRecord> = found.into_iter().map(|m| m.record).collect();
        let count = records.len() as u64;
        self.put_until_written(records).await;
        if let Err(failure) = sqs.delete(&receipts).await {
            // They come back after their visibility timeout and are written again: duplicates
            // the job drops, nothing lost.
            tracing::warn!(
                portal = %self.route.portal,
                "collect: drained events stay in the queue ({}); they will be written to Kinesis twice",
                failure.message
            );
        }
        self.metrics.add_drained("sqs", count);
        Round::Moved
    }

    /// Moves the oldest spooled records out of the spool, then removes them: to Kinesis when the
    /// queue holds nothing older, else (or when Kinesis refuses them) to the end of the portal's
    /// SQS queue, behind what waits there. The spool is local disk (a replaced Fargate task loses
    /// it), so its events leave it for whichever durable store takes them first.
    async fn move_from_spool(&mut self) -> Round {
        let portal = self.route.portal.clone();
        let peeked = on_spool(&self.spool, move |spool| spool.peek(&portal, SPOOL_BATCH)).await;
        let records = match peeked {
            Ok(Ok(records)) => records,
            Ok(Err(error)) => return Round::Failed(format!("cannot read the spool: {error}")),
            Err(join) => return Round::Failed(format!("the spool reader failed: {join}")),
        };
        if records.is_empty() {
            // The count was ahead of the spool (it cannot be behind): trust the spool.
            self.route.spooled.store(0, Ordering::SeqCst);
            return Round::Moved;
        }
        if let Some(first) = records.first() {
            self.metrics
                .set_drain_lag(&self.route.portal, "spool", age_seconds(first.arrived_ms));
        }
        let count = records.len();
        let mut rest: Vec<OutRecord> = records
            .into_iter()
            .map(|r| OutRecord {
                partition_key: r.partition_key,
                data: r.data,
            })
            .collect();
        let mut reason = String::new();
        if !self.route.buffered_in_sqs.load(Ordering::SeqCst) {
            let delivery = self.route.kinesis.write(rest, DRAIN_POLICY).await;
            if delivery.undeliverable.is_empty() {
                return self.remove_spooled(count, "spool").await;
            }
            reason = delivery.undeliverable[0].1.clone();
            rest = delivery.undeliverable.into_iter().map(|(r, _)| r).collect();
        }
        let Some(sqs) = &self.route.sqs else {
            return Round::Failed(reason);
        };
        // From here the portal's events follow into the queue, behind these.
        self.route.buffered_in_sqs.store(true, Ordering::SeqCst);
        let delivery = sqs.send(rest, DRAIN_POLICY).await;
        if delivery.undeliverable.is_empty() {
            return self.remove_spooled(count, "spool_to_sqs").await;
        }
        Round::Failed(format!(
            "{reason}{}{}",
            if reason.is_empty() { "" } else { "; " },
            delivery.undeliverable[0].1
        ))
    }

    /// Removes the `count` oldest spooled records, which are now in Kinesis or SQS (`moved_to`
    /// names the metric's path: `spool` when drained to Kinesis, `spool_to_sqs` when requeued).
    async fn remove_spooled(&mut self, count: usize, moved_to: &str) -> Round {
        let portal = self.route.portal.clone();
        let removed = on_spool(&self.spool, move |spool| {
            spool
                .remove_front(&portal, count)
                .map(|()| (spool.records(&portal), spool.bytes()))
        })
        .await;
        match removed {
            Ok(Ok((left, bytes))) => {
                self.route.spooled.store(left, Ordering::SeqCst);
                self.metrics.set_spool(&self.route.portal, left, bytes);
                self.metrics.add_drained(moved_to, count as u64);
                if left == 0 {
                    self.metrics.set_drain_lag(&self.route.portal, "spool", 0.0);
                }
                Round::Moved
            }
            // They are moved again next round: duplicates the job drops.
            Ok(Err(error)) => Round::Failed(format!(
                "cannot remove moved events from the spool ({error}); they will be written twice"
            )),
            Err(join) => Round::Failed(format!("the spool writer failed: {join}")),
        }
    }

    /// Puts `records` to the portal's stream, keeping what Kinesis refused and trying it again
    /// with backoff until everything is written: the buffer holds them meanwhile, the clients
    /// were answered long ago.
    async fn put_until_written(&mut self, mut records: Vec<OutRecord>) {
        let mut failures = 0u32;
        loop {
            let delivery = self.route.kinesis.write(records, DRAIN_POLICY).await;
            if delivery.undeliverable.is_empty() {
                return;
            }
            failures = failures.saturating_add(1);
            let reason = &delivery.undeliverable[0].1;
            if delivery.fatal.is_some() {
                tracing::error!(
                    portal = %self.route.portal,
                    "collect: Kinesis refuses the buffered events ({reason}); they stay buffered: check [[collect.portals]] stream and the task role's kinesis:PutRecords"
                );
            } else {
                tracing::warn!(
                    portal = %self.route.portal,
                    events = delivery.undeliverable.len(),
                    failures,
                    "collect: Kinesis did not take the buffered events yet ({reason}); trying again"
                );
            }
            records = delivery.undeliverable.into_iter().map(|(r, _)| r).collect();
            let delay = RETRY_BACKOFF.delay(failures, self.jitter.next_u64());
            tokio::time::sleep(delay).await;
        }
    }
}

/// Seconds from `ms` (since the epoch) to now.
fn age_seconds(ms: u64) -> f64 {
    unix_now_ms().saturating_sub(ms) as f64 / 1000.0
}
