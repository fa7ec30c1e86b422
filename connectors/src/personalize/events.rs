//! Pageviews to Amazon Personalize's event tracker (`PutEvents`), without ever holding up the job.
//!
//! Personalize's real-time recipes adjust a reader's recommendations within seconds of the
//! interactions they are told about. The job [`EventForwarder::offer`]s every accepted pageview;
//! the offer only puts it in a bounded queue and returns, and when the queue is full the event is
//! dropped and counted (recommendations slightly less fresh beat a stalled dataflow). A background
//! task does the rest:
//!
//! - **Grouping.** One `PutEvents` call carries the events of one tracker, one user and one session,
//!   at most [`MAX_EVENTS_PER_CALL`] of them (the API's limit). A group is sent as soon as it has
//!   10 events, when its first event has waited `linger` (1 s by default), when too many events are
//!   buffered (the oldest group goes first), or at shutdown.
//! - **Pacing.** Calls to one tracker are paced by a token bucket, `requests_per_second` (500 by
//!   default) with a burst of a tenth of a second's worth. The Personalize developer guide's quota
//!   page (<https://docs.aws.amazon.com/personalize/latest/dg/limits.html>; the figure as published
//!   in its source, `awsdocs/amazon-personalize-developer-guide`, `doc_source/limits.md`) gives the
//!   "Maximum rate of `PutEvents` requests" as 1000 per second, adjustable; the default keeps half
//!   of it for other writers and for retries. Check the account's current value in the Service
//!   Quotas console and set `requests_per_second` below it.
//! - **Retries.** A call that is throttled, fails with a 5xx, times out (`call_timeout`) or cannot
//!   be sent is retried with the crate's full-jitter backoff ([`crate::retry::Backoff`]), each
//!   attempt taking a token, up to `max_attempts` attempts; then its events are counted as failed
//!   and a warning names the tracker and the reason. An input the service refuses is not retried.
//! - **Shutdown.** [`EventForwarder::shutdown`] stops taking events, sends everything queued and
//!   buffered, and waits for the calls under way, within a time budget; what is still unsent when
//!   the budget runs out is counted as failed.
//!
//! Everything is counted ([`ForwarderStats`]). After shutdown, `offered = dropped_queue_full +
//! dropped_invalid + dropped_closed + sent_events + failed_events`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_sdk_personalizeevents::Client;
use aws_sdk_personalizeevents::config::retry::RetryConfig;
use aws_sdk_personalizeevents::error::SdkError;
use aws_sdk_personalizeevents::operation::put_events::PutEventsError;
use aws_sdk_personalizeevents::primitives::DateTime;
use aws_sdk_personalizeevents::types::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::ConnectorError;
use crate::retry::{Backoff, Jitter};

/// The most events one `PutEvents` call may carry.
pub const MAX_EVENTS_PER_CALL: usize = 10;
/// The longest `trackingId`, `userId`, `sessionId`, `eventId`, `eventType` or `itemId` the API
/// accepts.
pub const MAX_ID_CHARS: usize = 256;
/// The longest `properties` string the API accepts.
pub const MAX_PROPERTIES_CHARS: usize = 1024;

/// One interaction, as the forwarder takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalizeEvent {
    /// The event tracker's tracking id (from `CreateEventTracker`), e.g. one per portal.
    pub tracking_id: String,
    /// The reader (may be empty: the event is then sent without a user, tied to its session).
    pub user_id: String,
    /// The reader's session.
    pub session_id: String,
    /// The event's id; Personalize ignores later events with an id it has seen.
    pub event_id: String,
    /// The event type of the interactions dataset, e.g. `pageview`.
    pub event_type: String,
    /// The item (article) read.
    pub item_id: String,
    /// When it happened (event time), in milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Event-specific data as a JSON object string, e.g. `{"dwellMs":5200,"scrollPct":80}`, whose
    /// keys match the interactions dataset's schema.
    pub properties: Option<String>,
}

impl PersonalizeEvent {
    /// Why Personalize would refuse this event, if it would.
    fn problem(&self) -> Option<String> {
        let ids = [
            ("tracking_id", &self.tracking_id, true),
            ("session_id", &self.session_id, true),
            ("event_type", &self.event_type, true),
            ("user_id", &self.user_id, false),
            ("event_id", &self.event_id, false),
            ("item_id", &self.item_id, false),
        ];
        for (name, value, required) in ids {
            if required && value.is_empty() {
                return Some(format!("{name} is empty"));
            }
            if value.chars().count() > MAX_ID_CHARS {
                return Some(format!("{name} is longer than {MAX_ID_CHARS} characters"));
            }
        }
        match &self.properties {
            Some(p) if p.is_empty() || p.chars().count() > MAX_PROPERTIES_CHARS => Some(format!(
                "properties must be 1 to {MAX_PROPERTIES_CHARS} characters"
            )),
            _ => None,
        }
    }

    /// The SDK's event.
    fn to_sdk(&self) -> Result<Event, aws_sdk_personalizeevents::error::BuildError> {
        let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
        Event::builder()
            .set_event_id(non_empty(&self.event_id))
            .event_type(&self.event_type)
            .set_item_id(non_empty(&self.item_id))
            .sent_at(DateTime::from_millis(
                i64::try_from(self.sent_at_ms).unwrap_or(i64::MAX),
            ))
            .set_properties(self.properties.clone())
            .build()
    }
}

/// The forwarder's knobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwarderConfig {
    /// Events the queue between [`EventForwarder::offer`] and the background task holds (default
    /// 10,000); more are dropped.
    pub queue_capacity: usize,
    /// The longest a group waits for more events before it is sent (default 1 s).
    pub linger: Duration,
    /// `PutEvents` calls per second per tracker, retries included (default 500).
    pub requests_per_second: f64,
    /// Attempts per call before its events count as failed (default 5).
    pub max_attempts: u32,
    /// The delay before each retry (default: the crate's 50 ms doubling to 5 s, with jitter).
    pub backoff: Backoff,
    /// The budget of one attempt (default 5 s).
    pub call_timeout: Duration,
    /// Calls under way (or waiting for their turn) at once (default 64).
    pub max_in_flight_calls: usize,
    /// Events held in groups that are not full yet; past this the oldest group is sent early
    /// (default 10,000).
    pub max_buffered_events: usize,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            queue_capacity: 10_000,
            linger: Duration::from_secs(1),
            requests_per_second: 500.0,
            max_attempts: 5,
            backoff: Backoff::default(),
            call_timeout: Duration::from_secs(5),
            max_in_flight_calls: 64,
            max_buffered_events: 10_000,
        }
    }
}

impl ForwarderConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.queue_capacity == 0 {
            problems.push("queue_capacity is 0; make it at least 1".to_string());
        }
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            problems.push(format!(
                "requests_per_second is {}; make it a positive number (the service allows 1000/s \
                 by default)",
                self.requests_per_second
            ));
        }
        if self.max_attempts == 0 {
            problems.push("max_attempts is 0; make it at least 1".to_string());
        }
        if self.max_in_flight_calls == 0 {
            problems.push("max_in_flight_calls is 0; make it at least 1".to_string());
        }
        if self.call_timeout.is_zero() {
            problems.push("call_timeout is 0; give a call time to answer".to_string());
        }
        problems
    }
}

/// A snapshot of the forwarder's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Events offered, whatever became of them.
    pub offered: u64,
    /// Events dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Events dropped because Personalize would refuse them (an empty tracking id, session id or
    /// event type, an id over 256 characters, properties over 1024).
    pub dropped_invalid: u64,
    /// Events offered after shutdown began.
    pub dropped_closed: u64,
    /// Events Personalize accepted.
    pub sent_events: u64,
    /// Successful `PutEvents` calls.
    pub sent_calls: u64,
    /// Attempts that failed and were tried again.
    pub retried_calls: u64,
    /// Events given up on: refused, out of attempts, or unsent when the shutdown budget ran out.
    pub failed_events: u64,
}

#[derive(Debug, Default)]
struct Counters {
    offered: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_invalid: AtomicU64,
    dropped_closed: AtomicU64,
    sent_events: AtomicU64,
    sent_calls: AtomicU64,
    retried_calls: AtomicU64,
    failed_events: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ForwarderStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ForwarderStats {
            offered: get(&self.offered),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_invalid: get(&self.dropped_invalid),
            dropped_closed: get(&self.dropped_closed),
            sent_events: get(&self.sent_events),
            sent_calls: get(&self.sent_calls),
            retried_calls: get(&self.retried_calls),
            failed_events: get(&self.failed_events),
        }
    }
}

/// Forwards pageviews to Personalize in the background (see the module documentation). Share it
/// (it is `Sync`) between the job's workers; call [`Self::shutdown`] before the runtime stops.
#[derive(Debug)]
pub struct EventForwarder {
    queue: mpsc::Sender<PersonalizeEvent>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    shutdown_signal: Mutex<Option<oneshot::Sender<Instant>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EventForwarder {
    /// Starts the background task on `runtime`. The client's SDK retries are switched off (the
    /// forwarder retries itself, paced). Fails when the configuration is invalid.
    pub fn start(
        client: &Client,
        config: ForwarderConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, ConnectorError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConnectorError::InvalidConfig {
                what: "personalize events",
                problems,
            });
        }
        let client = Client::from_conf(
            client
                .config()
                .to_builder()
                .retry_config(RetryConfig::disabled())
                .build(),
        );
        let (queue, receiver) = mpsc::channel(config.queue_capacity);
        let (shutdown_signal, shutdown_received) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let dispatcher = Dispatcher {
            client,
            config,
            counters: Arc::clone(&counters),
            grouper: Grouper::new(config.linger),
            ready: VecDeque::new(),
            in_flight: JoinSet::new(),
            in_flight_events: HashMap::new(),
            buckets: HashMap::new(),
        };
        let task = runtime.spawn(dispatcher.run(receiver, shutdown_received));
        Ok(EventForwarder {
            queue,
            counters,
            closed: AtomicBool::new(false),
            shutdown_signal: Mutex::new(Some(shutdown_signal)),
            task: Mutex::new(Some(task)),
        })
    }

    /// Queues `event` for sending and returns at once: `true` when queued, `false` when dropped
    /// (queue full, event invalid, or shutdown begun), which is counted. Callable from any thread,
    /// inside or outside the runtime.
    pub fn offer(&self, event: PersonalizeEvent) -> bool {
        Counters::add(&self.counters.offered, 1);
        if self.closed.load(Ordering::Acquire) {
            Counters::add(&self.counters.dropped_closed, 1);
            return false;
        }
        if event.problem().is_some() {
            Counters::add(&self.counters.dropped_invalid, 1);
            return false;
        }
        match self.queue.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::add(&self.counters.dropped_queue_full, 1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Counters::add(&self.counters.dropped_closed, 1);
                false
            }
        }
    }

    /// The counters now.
    pub fn stats(&self) -> ForwarderStats {
        self.counters.snapshot()
    }

    /// Stops taking events and sends what is queued and buffered, waiting at most `budget`; what
    /// is unsent then is counted as failed. Returns the final counters. Calling it again returns
    /// the counters at once.
    pub async fn shutdown(&self, budget: Duration) -> ForwarderStats {
        self.closed.store(true, Ordering::Release);
        let deadline = Instant::now() + budget;
        let signal = self
            .shutdown_signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(signal) = signal {
            // The task may already be gone (its runtime stopped); then there is nothing to flush.
            let _ = signal.send(deadline);
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // The task gives up by itself at the deadline; the margin covers counting what it
            // abandons. Past it, abort it (its calls are aborted with it).
            let abort = task.abort_handle();
            let margin = Duration::from_millis(500);
            if tokio::time::timeout(budget + margin, task).await.is_err() {
                abort.abort();
                tracing::warn!(
                    "the Personalize event forwarder did not stop within its shutdown budget; \
                     aborted it, the events it held are not counted"
                );
            }
        }
        self.stats()
    }
}

/// Who receives one call: the group's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    tracking_id: String,
    user_id: String,
    session_id: String,
}

impl GroupKey {
    fn of(event: &PersonalizeEvent) -> Self {
        GroupKey {
            tracking_id: event.tracking_id.clone(),
            user_id: event.user_id.clone(),
            session_id: event.session_id.clone(),
        }
    }
}

/// The events of one `PutEvents` call.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Batch {
    key: GroupKey,
    events: Vec<PersonalizeEvent>,
}

#[derive(Debug)]
struct OpenGroup {
    events: Vec<PersonalizeEvent>,
    generation: u64,
}

/// Groups events by (tracker, user, session) into batches of at most [`MAX_EVENTS_PER_CALL`].
/// Pure: the clock is passed in.
#[derive(Debug)]
struct Grouper {
    linger: Duration,
    open: HashMap<GroupKey, OpenGroup>,
    /// When each open group is due, in the order they were opened (so in deadline order). An entry
    /// whose generation no longer matches its group's is stale (that group was sent full).
    deadlines: VecDeque<(Instant, GroupKey, u64)>,
    next_generation: u64,
    buffered: usize,
}

impl Grouper {
    fn new(linger: Duration) -> Self {
        Grouper {
            linger,
            open: HashMap::new(),
            deadlines: VecDeque::new(),
            next_generation: 0,
            buffered: 0,
        }
    }

    /// Adds `event`, received at `now`; returns its group when that is now full.
    fn push(&mut self, event: PersonalizeEvent, now: Instant) -> Option<Batch> {
        let key = GroupKey::of(&event);
        let group = match self.open.get_mut(&key) {
            Some(group) => group,
            None => {
                let generation = self.next_generation;
                self.next_generation += 1;
                self.deadlines
                    .push_back((now + self.linger, key.clone(), generation));
                self.open.entry(key.clone()).or_insert(OpenGroup {
                    events: Vec::with_capacity(MAX_EVENTS_PER_CALL),
                    generation,
                })
            }
        };
        group.events.push(event);
        self.buffered += 1;
        if group.events.len() >= MAX_EVENTS_PER_CALL {
            self.take(&key)
        } else {
            None
        }
    }

    fn take(&mut self, key: &GroupKey) -> Option<Batch> {
        let group = self.open.remove(key)?;
        self.buffered -= group.events.len();
        Some(Batch {
            key: key.clone(),
            events: group.events,
        })
    }

    /// The earliest time a group may be due (possibly a stale entry: waking early is harmless).
    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|(deadline, _, _)| *deadline)
    }

    /// Removes and returns the oldest open group.
    fn take_oldest(&mut self) -> Option<Batch> {
        while let Some((_, key, generation)) = self.deadlines.pop_front() {
            if self
                .open
                .get(&key)
                .is_some_and(|g| g.generation == generation)
            {
                return self.take(&key);
            }
        }
        None
    }

    /// Removes and returns the groups due at `now`, oldest first.
    fn take_due(&mut self, now: Instant) -> Vec<Batch> {
        let mut due = Vec::new();
        while self
            .deadlines
            .front()
            .is_some_and(|(deadline, _, _)| *deadline <= now)
        {
            let Some((_, key, generation)) = self.deadlines.pop_front() else {
                break;
            };
            let live = self
                .open
                .get(&key)
                .is_some_and(|g| g.generation == generation);
            if live && let Some(batch) = self.take(&key) {
                due.push(batch);
            }
        }
        due
    }

    /// Removes and returns every open group, oldest first.
    fn take_all(&mut self) -> Vec<Batch> {
        std::iter::from_fn(|| self.take_oldest()).collect()
    }

    fn buffered_events(&self) -> usize {
        self.buffered
    }
}

/// A token bucket that hands out reservations: each call takes a token now and is told how long
/// to wait for it. Pure: the clock is passed in.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    /// Tokens available; negative when reservations are ahead of the refill.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_second` tokens a second, holding at most a tenth of a second's worth
    /// (at least one).
    fn new(per_second: f64, now: Instant) -> Self {
        let burst = (per_second / 10.0).max(1.0);
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes a token; returns how long after `now` it may be used.
    fn reserve(&mut self, now: Instant) -> Duration {
        if now > self.updated {
            let refill = (now - self.updated).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
            self.updated = now;
        }
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

/// How calls are attempted.
#[derive(Clone, Copy, Debug)]
struct CallPolicy {
    max_attempts: u32,
    backoff: Backoff,
    call_timeout: Duration,
}

/// The background task's state.
#[derive(Debug)]
struct Dispatcher {
    client: Client,
    config: ForwarderConfig,
    counters: Arc<Counters>,
    grouper: Grouper,
    /// Batches waiting for a free call slot.
    ready: VecDeque<Batch>,
    in_flight: JoinSet<()>,
    /// The events of each call under way, to count them if the shutdown budget runs out.
    in_flight_events: HashMap<tokio::task::Id, u64>,
    buckets: HashMap<String, Arc<Mutex<TokenBucket>>>,
}

impl Dispatcher {
    async fn run(
        mut self,
        mut receiver: mpsc::Receiver<PersonalizeEvent>,
        mut shutdown: oneshot::Receiver<Instant>,
    ) {
        // Set once shutdown is asked for (or the forwarder is dropped): flush everything.
        let mut stopping = false;
        let mut give_up_at: Option<Instant> = None;
        let mut queue_done = false;
        loop {
            self.start_ready_calls();
            if stopping && queue_done {
                self.ready.extend(self.grouper.take_all());
                self.start_ready_calls();
                if self.ready.is_empty() && self.in_flight.is_empty() {
                    break;
                }
            }
            let can_receive = !queue_done
                && self.ready.is_empty()
                && self.in_flight.len() < self.config.max_in_flight_calls;
            let linger_deadline = self.grouper.next_deadline().filter(|_| !stopping);
            tokio::select! {
                biased;
                Some(joined) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => {
                    match joined {
                        // The call counted its events itself.
                        Ok((id, ())) => {
                            self.in_flight_events.remove(&id);
                        }
                        Err(error) => {
                            let lost = self.in_flight_events.remove(&error.id()).unwrap_or(0);
                            Counters::add(&self.counters.failed_events, lost);
                            tracing::warn!(
                                "a PutEvents call ended abnormally ({error}); its {lost} events \
                                 are counted as failed"
                            );
                        }
                    }
                }
                signal = &mut shutdown, if !stopping => {
                    stopping = true;
                    give_up_at = signal.ok();
                    // Offers fail from now on; what is already queued is still received.
                    receiver.close();
                }
                () = sleep_until_optional(give_up_at), if give_up_at.is_some() => {
                    self.abandon(&mut receiver).await;
                    return;
                }
                () = sleep_until_optional(linger_deadline), if linger_deadline.is_some() => {
                    self.ready.extend(self.grouper.take_due(Instant::now()));
                }
                received = receiver.recv(), if can_receive => match received {
                    Some(event) => {
                        if let Some(full) = self.grouper.push(event, Instant::now()) {
                            self.ready.push_back(full);
                        }
                        while self.grouper.buffered_events() > self.config.max_buffered_events {
                            match self.grouper.take_oldest() {
                                Some(oldest) => self.ready.push_back(oldest),
                                None => break,
                            }
                        }
                    }
                    None => {
                        queue_done = true;
                        stopping = true;
                    }
                },
                else => break,
            }
        }
    }

    /// Starts calls for ready batches while there are free slots.
    fn start_ready_calls(&mut self) {
        while self.in_flight.len() < self.config.max_in_flight_calls {
            let Some(batch) = self.ready.pop_front() else {
                return;
            };
            let now = Instant::now();
            let per_second = self.config.requests_per_second;
            let bucket = Arc::clone(
                self.buckets
                    .entry(batch.key.tracking_id.clone())
                    .or_insert_with(|| Arc::new(Mutex::new(TokenBucket::new(per_second, now)))),
            );
            let events = batch.events.len() as u64;
            let policy = CallPolicy {
                max_attempts: self.config.max_attempts,
                backoff: self.config.backoff,
                call_timeout: self.config.call_timeout,
            };
            let handle = self.in_flight.spawn(send_batch(
                self.client.clone(),
                batch,
                bucket,
                policy,
                Arc::clone(&self.counters),
            ));
            self.in_flight_events.insert(handle.id(), events);
        }
    }

    /// The shutdown budget ran out: stop the calls under way and count everything unsent as failed.
    async fn abandon(&mut self, receiver: &mut mpsc::Receiver<PersonalizeEvent>) {
        self.in_flight.abort_all();
        let mut unsent = 0u64;
        while let Some(joined) = self.in_flight.join_next_with_id().await {
            match joined {
                // Finished before the abort took effect: it counted itself.
                Ok((id, ())) => {
                    self.in_flight_events.remove(&id);
                }
                Err(error) => unsent += self.in_flight_events.remove(&error.id()).unwrap_or(0),
            }
        }
        unsent += self
            .ready
            .drain(..)
            .map(|batch| batch.events.len() as u64)
            .sum::<u64>();
        unsent += self.grouper.buffered_events() as u64;
        self.grouper = Grouper::new(self.config.linger);
        receiver.close();
        while receiver.try_recv().is_ok() {
            unsent += 1;
        }
        if unsent > 0 {
            Counters::add(&self.counters.failed_events, unsent);
            tracing::warn!(
                unsent,
                "the Personalize event forwarder's shutdown budget ran out; {unsent} events were \
                 not sent (give the shutdown more time, or expect slightly staler recommendations)"
            );
        }
    }
}

/// Sleeps until `deadline` (forever without one; the caller disables the branch then).
async fn sleep_until_optional(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends one batch: paced, retried, counted.
async fn send_batch(
    client: Client,
    batch: Batch,
    bucket: Arc<Mutex<TokenBucket>>,
    policy: CallPolicy,
    counters: Arc<Counters>,
) {
    let Batch { key, events } = batch;
    let mut sdk_events = Vec::with_capacity(events.len());
    for event in &events {
        match event.to_sdk() {
            Ok(sdk_event) => sdk_events.push(sdk_event),
            Err(error) => {
                Counters::add(&counters.failed_events, 1);
                tracing::warn!(
                    tracker = %key.tracking_id,
                    event_id = %event.event_id,
                    "a Personalize event could not be built ({error}); it is not sent"
                );
            }
        }
    }
    if sdk_events.is_empty() {
        return;
    }
    let count = sdk_events.len() as u64;
    let mut jitter = Jitter::new();
    let mut attempt = 1;
    loop {
        let wait = bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let call = client
            .put_events()
            .tracking_id(&key.tracking_id)
            .set_user_id((!key.user_id.is_empty()).then(|| key.user_id.clone()))
            .session_id(&key.session_id)
            .set_event_list(Some(sdk_events.clone()))
            .send();
        let (reason, retryable) = match tokio::time::timeout(policy.call_timeout, call).await {
            Ok(Ok(_)) => {
                Counters::add(&counters.sent_calls, 1);
                Counters::add(&counters.sent_events, count);
                return;
            }
            Ok(Err(error)) => classify_put_events_error(&error),
            Err(_) => (
                format!(
                    "no answer within the call timeout of {}ms",
                    policy.call_timeout.as_millis()
                ),
                true,
            ),
        };
        if !retryable || attempt >= policy.max_attempts {
            Counters::add(&counters.failed_events, count);
            let advice = if retryable {
                "out of attempts; if this persists check the service's health and the tracker's \
                 request quota"
            } else {
                "not retryable; check the tracking id, the region, the IAM permission \
                 personalize:PutEvents and the event fields"
            };
            tracing::warn!(
                tracker = %key.tracking_id,
                attempts = attempt,
                events = count,
                "PutEvents to tracker {} failed, {count} events dropped: {reason} ({advice})",
                key.tracking_id
            );
            return;
        }
        Counters::add(&counters.retried_calls, 1);
        tokio::time::sleep(policy.backoff.delay(attempt, jitter.next_u64())).await;
        attempt += 1;
    }
}

/// What went wrong with a `PutEvents` call, and whether trying again may help: throttling, 5xx
/// answers and transport failures may; refused input may not.
fn classify_put_events_error(error: &SdkError<PutEventsError>) -> (String, bool) {
    let (message, retryable) = crate::aws::classify(error);
    let server_error = matches!(error, SdkError::ServiceError(_))
        && error
            .raw_response()
            .is_some_and(|response| response.status().is_server_error());
    (message, retryable || server_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, session: &str, n: u32) -> PersonalizeEvent {
        PersonalizeEvent {
            tracking_id: "tracker-1".into(),
            user_id: user.into(),
            session_id: session.into(),
            event_id: format!("{user}-{session}-{n}"),
            event_type: "pageview".into(),
            item_id: format!("a{n}"),
            sent_at_ms: 1_700_000_000_000 + u64::from(n),
            properties: Some(r#"{"dwellMs":1000}"#.into()),
        }
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = ForwarderConfig::default();
        assert_eq!(config.linger, Duration::from_secs(1));
        assert_eq!(config.requests_per_second, 500.0);
        assert!(config.problems().is_empty());
        let bad = ForwarderConfig {
            queue_capacity: 0,
            requests_per_second: 0.0,
            max_attempts: 0,
            max_in_flight_calls: 0,
            call_timeout: Duration::ZERO,
            ..config
        };
        assert_eq!(bad.problems().len(), 5, "{:?}", bad.problems());
    }

    #[test]
    fn a_group_is_full_at_ten_events() {
        let now = Instant::now();
        let mut grouper = Grouper::new(Duration::from_secs(1));
        for n in 0..9 {
            assert_eq!(grouper.push(event("u1", "s1", n), now), None);
        }
        let full = grouper.push(event("u1", "s1", 9), now);
        let full = full.unwrap_or_else(|| panic!("the tenth event fills the group"));
        assert_eq!(full.events.len(), 10);
        assert_eq!(grouper.buffered_events(), 0);
        assert_eq!(grouper.push(event("u1", "s1", 10), now), None);
        assert_eq!(grouper.buffered_events(), 1);
    }

    #[test]
    fn groups_never_mix_users_sessions_or_trackers() {
        let now = Instant::now();
        let mut grouper = Grouper::new(Duration::from_secs(1));
        grouper.push(event("u1", "s1", 0), now);
        grouper.push(event("u2", "s1", 1), now);
        grouper.push(event("u1", "s2", 2), now);
        let mut other_tracker = event("u1", "s1", 3);
        other_tracker.tracking_id = "tracker-2".into();
        grouper.push(other_tracker, now);
        grouper.push(event("u1", "s1", 4), now);
        let batches = grouper.take_all();
        assert_eq!(batches.len(), 4);
        for batch in &batches {
            assert!(
                batch.events.iter().all(|e| GroupKey::of(e) == batch.key),
                "{batch:?}"
            );
        }
        assert_eq!(
            batches[0].events.len(),
            2,
            "u1/s1 on tracker-1 holds 0 and 4"
        );
    }

    #[test]
    fn groups_are_due_after_linger_oldest_first() {
        let now = Instant::now();
        let linger = Duration::from_millis(100);
        let mut grouper = Grouper::new(linger);
        grouper.push(event("u1", "s1", 0), now);
        grouper.push(event("u2", "s1", 1), now + Duration::from_millis(50));
        assert_eq!(grouper.next_deadline(), Some(now + linger));
        assert!(grouper.take_due(now + Duration::from_millis(99)).is_empty());
        let due = grouper.take_due(now + linger);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].key.user_id, "u1");
        let due = grouper.take_due(now + Duration::from_millis(150));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].key.user_id, "u2");
        assert_eq!(grouper.next_deadline(), None);
    }

    #[test]
    fn a_group_sent_full_leaves_no_due_entry_behind() {
        let now = Instant::now();
        let mut grouper = Grouper::new(Duration::from_millis(100));
        for n in 0..10 {
            grouper.push(event("u1", "s1", n), now);
        }
        grouper.push(event("u1", "s1", 10), now + Duration::from_millis(60));
        let due = grouper.take_due(now + Duration::from_millis(100));
        assert!(
            due.is_empty(),
            "the reopened group is due at 160 ms, not at the full one's 100 ms: {due:?}"
        );
        assert_eq!(grouper.take_due(now + Duration::from_millis(160)).len(), 1);
    }

    #[test]
    fn token_bucket_paces_after_its_burst() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(100.0, now);
        for _ in 0..10 {
            assert_eq!(bucket.reserve(now), Duration::ZERO, "a burst of 10");
        }
        let waits: Vec<Duration> = (0..3).map(|_| bucket.reserve(now)).collect();
        let millis: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert_eq!(millis, [10, 20, 30], "then one every 10 ms");
        let later = now + Duration::from_secs(10);
        assert_eq!(bucket.reserve(later), Duration::ZERO);
        for _ in 0..9 {
            bucket.reserve(later);
        }
        assert!(
            bucket.reserve(later) > Duration::ZERO,
            "the refill is capped at the burst"
        );
    }

    #[test]
    fn invalid_events_are_recognised() {
        assert_eq!(event("u1", "s1", 0).problem(), None);
        let mut no_session = event("u1", "s1", 0);
        no_session.session_id.clear();
        assert!(
            no_session
                .problem()
                .is_some_and(|p| p.contains("session_id"))
        );
        let mut anonymous = event("", "s1", 0);
        assert_eq!(anonymous.problem(), None, "userId is optional in PutEvents");
        anonymous.item_id = "x".repeat(MAX_ID_CHARS + 1);
        assert!(anonymous.problem().is_some_and(|p| p.contains("item_id")));
        let mut big = event("u1", "s1", 0);
        big.properties = Some("x".repeat(MAX_PROPERTIES_CHARS + 1));
        assert!(big.problem().is_some_and(|p| p.contains("properties")));
    }

    #[test]
    fn events_map_to_the_sdk_shape() {
        let sdk = event("u1", "s1", 7)
            .to_sdk()
            .unwrap_or_else(|e| panic!("builds: {e}"));
        assert_eq!(sdk.event_id(), Some("u1-s1-7"));
        assert_eq!(sdk.event_type(), "pageview");
        assert_eq!(sdk.item_id(), Some("a7"));
        assert_eq!(sdk.sent_at().to_millis().ok(), Some(1_700_000_000_007));
        assert_eq!(sdk.properties(), Some(r#"{"dwellMs":1000}"#));
    }
}
