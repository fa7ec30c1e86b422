//! [`SyntheticTraffic`]: the generator. Sessions of readers over the catalogue, breaking-news
//! spikes, delivery order (late, duplicate and malformed beacons) and the rendering of each beacon
//! as one JSON line, all driven by one seeded [`SplitMix64`](super::random) in a fixed order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;

use pageflow_dataflow::event::Event;

use super::catalogue::PortalCatalogue;
use super::config::{MAX_TS, SyntheticConfig};
use super::json::{write_decimal, write_hex8, write_json_string};
use super::malformed::{Field, MalformedKind, Required};
use super::names::write_breaking_article_id;
use super::random::{Cumulative, SplitMix64, mix64};
use super::spikes::Spike;
use crate::error::ConnectorError;

/// One record of synthetic traffic, in delivery order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntheticRecord {
    /// A valid pageview (a re-sent beacon appears twice with the same `event_id`). Its JSON line
    /// also carries a `device` field, which [`Event`] does not keep.
    Valid(Event),
    /// A malformed record.
    Malformed {
        /// How it is broken.
        kind: MalformedKind,
        /// Its bytes (one line, without a line break).
        bytes: Vec<u8>,
    },
}

/// The article of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ArticleRef {
    /// An article of the portal's catalogue, by index.
    Catalogue(u32),
    /// The breaking article of a spike (its portal is the read's portal).
    Breaking { number: u64, topic: u16 },
}

/// A generated beacon before rendering: everything in it is an index or a number, so drafts are
/// cheap to queue.
#[derive(Clone, Copy, Debug)]
pub(super) struct Draft {
    /// The partition's beacon number (for `event_id`).
    sequence: u64,
    ts: u64,
    portal: u16,
    user: u32,
    article: ArticleRef,
    dwell_ms: u32,
    scroll_pct: u8,
    clicks: u32,
    /// Whether (and how) this record is malformed, with a random parameter for the breakage.
    malformed: Option<(MalformedKind, u32)>,
}

/// A draft waiting for its delivery time.
#[derive(Clone, Copy, Debug)]
pub(super) struct InFlight {
    deliver_at: u64,
    /// Breaks ties in generation order.
    order: u64,
    draft: Draft,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.order) == (other.deliver_at, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deliver_at, self.order).cmp(&(other.deliver_at, other.order))
    }
}

/// A reading session in progress (or a planned return of its reader).
#[derive(Clone, Copy, Debug)]
pub(super) struct Session {
    user: u32,
    portal: u16,
    topic: u16,
    reads_left: u8,
    last_article: Option<ArticleRef>,
}

/// The longest session a reader starts.
pub(super) const MAX_READS_PER_SESSION: u32 = 15;
/// Share of bounces (a few seconds on the page).
pub(super) const BOUNCE_SHARE: f64 = 0.15;
/// Median dwell of a real read.
pub(super) const MEDIAN_DWELL_MS: f64 = 35_000.0;
/// Longest dwell recorded.
pub(super) const MAX_DWELL_MS: f64 = 30.0 * 60_000.0;
/// Mean time between leaving a page and opening the next one.
pub(super) const MEAN_NAVIGATION_MS: f64 = 20_000.0;
/// The longest gap within a session (below the job's 30-minute session gap).
pub(super) const MAX_GAP_WITHIN_SESSION_MS: u64 = 25 * 60_000;
/// Share of reads that stay in the session's topic cluster.
pub(super) const SAME_TOPIC_SHARE: f64 = 0.8;
/// Share of reads that reload the previous article.
pub(super) const RELOAD_SHARE: f64 = 0.04;
/// Returning readers come back after this long at the earliest…
pub(super) const MIN_RETURN_MS: u64 = 31 * 60_000;
/// …and at the latest.
pub(super) const MAX_RETURN_MS: u64 = 2 * 60 * 60_000;

/// Seeded synthetic traffic for one partition, in simulated time (see the module docs).
///
/// Read it either as an [`Iterator`] of [`SyntheticRecord`]s or line by line with
/// [`SyntheticTraffic::next_line`]; both advance the same stream. With a `limit`, it ends after
/// that many records.
pub struct SyntheticTraffic {
    /// The parameters (validated).
    config: SyntheticConfig,
    /// Which partition this is.
    partition_index: u32,
    /// Event time of the first event.
    start_ts: u64,
    /// Milliseconds of event time per generated event.
    ms_per_event: f64,
    /// The random generator.
    rng: SplitMix64,
    /// Identifies the seed in `event_id`s.
    seed_tag: u32,
    /// Each portal's catalogue.
    catalogues: Vec<PortalCatalogue>,
    /// Popularity of portals.
    portal_popularity: Cumulative,
    /// How many articles a session reads (index + 1).
    session_length: Cumulative,
    /// Sessions and planned returns, by slot.
    sessions: Vec<Session>,
    /// Slots of `sessions` free for reuse.
    free_sessions: Vec<u32>,
    /// When each session's next read (or a planned return) is due: `(due_ts, order, slot)`.
    due: BinaryHeap<Reverse<(u64, u64, u32)>>,
    /// Sessions and planned returns per reader.
    pending_per_user: Vec<u32>,
    /// Readers with nothing pending, the longest idle first.
    idle_users: VecDeque<u32>,
    /// Generated beacons waiting for their delivery time.
    in_flight: BinaryHeap<Reverse<InFlight>>,
    /// Events generated so far (the next one is number `generated`).
    generated: u64,
    /// Beacon numbers handed out so far.
    sequence: u64,
    /// Tie-breaker for the queues.
    order: u64,
    /// Records delivered so far.
    delivered: u64,
    /// The spikes in progress.
    active_spikes: Vec<Spike>,
    /// The next spike to start.
    next_spike: u64,
    /// Reused for rendering malformed records.
    scratch: Vec<u8>,
    /// Breaking-news spike `n` starts at `spike_anchor_ts + (n + 1) · spike_every`: `start_ts`,
    /// except in resumed traffic (see [`SyntheticSource::resume_after`]).
    spike_anchor_ts: u64,
    /// `Some(n)`: traffic resumed after `n` delivered records, whose `event_id`s carry `r<n>-`.
    resumed_after: Option<u64>,
}

impl fmt::Debug for SyntheticTraffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyntheticTraffic")
            .field("seed", &self.config.seed)
            .field("partition_index", &self.partition_index)
            .field("start_ts", &self.start_ts)
            .field("generated", &self.generated)
            .field("delivered", &self.delivered)
            .field("resumed_after", &self.resumed_after)
            .finish_non_exhaustive()
    }
}

impl SyntheticTraffic {
    /// Partition 0's traffic in simulated time.
    pub fn new(config: SyntheticConfig) -> Result<Self, ConnectorError> {
        Self::for_partition(config, 0)
    }

    /// Partition `partition_index`'s traffic in simulated time: its readers and event ids are
    /// disjoint from every other partition's.
    pub fn for_partition(
        config: SyntheticConfig,
        partition_index: u32,
    ) -> Result<Self, ConnectorError> {
        let start_ts = config.start_ts;
        let rate = config.simulated_events_per_second;
        Self::with_timeline(config, partition_index, start_ts, rate)
    }

    /// Traffic whose first event is at `start_ts` and whose event time advances at `rate` events
    /// per second.
    pub(super) fn with_timeline(
        config: SyntheticConfig,
        partition_index: u32,
        start_ts: u64,
        rate: f64,
    ) -> Result<Self, ConnectorError> {
        config.validate()?;
        let catalogues: Vec<PortalCatalogue> = config
            .portals
            .iter()
            .map(|portal| PortalCatalogue::new(portal, &config))
            .collect();
        let portal_popularity = Cumulative::from_weights(
            (0..config.portals.len()).map(|rank| 1.0 / (rank as f64 + 1.0)),
        );
        let session_length =
            Cumulative::from_weights((0..MAX_READS_PER_SESSION).map(|n| 0.72f64.powi(n as i32)));
        let seed_tag = (mix64(config.seed ^ 0x7A6) >> 32) as u32;
        let mut traffic = SyntheticTraffic {
            partition_index,
            start_ts,
            ms_per_event: 1000.0 / rate,
            rng: SplitMix64::new(0),
            seed_tag,
            catalogues,
            portal_popularity,
            session_length,
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            due: BinaryHeap::new(),
            pending_per_user: Vec::new(),
            idle_users: VecDeque::new(),
            in_flight: BinaryHeap::new(),
            generated: 0,
            sequence: 0,
            order: 0,
            delivered: 0,
            active_spikes: Vec::new(),
            next_spike: 0,
            scratch: Vec::new(),
            spike_anchor_ts: start_ts,
            resumed_after: None,
            config,
        };
        traffic.continue_after(0, start_ts);
        Ok(traffic)
    }

    /// Starts the partition's traffic over as the continuation of one that delivered `delivered`
    /// records, with its first event at `start_ts` (see [`SyntheticSource::resume_after`]).
    ///
    /// The generator is seeded from `(seed, partition, delivered)`, not regenerated: nothing is
    /// replayed, so this takes as long as a fresh start whatever `delivered` is. With `delivered`
    /// = 0 it is exactly a fresh start.
    pub(super) fn continue_after(&mut self, delivered: u64, start_ts: u64) {
        // Per (seed, partition): partitions draw independent streams; resumed traffic also per
        // `delivered`, so that each resumption draws a stream of its own.
        let mut seed =
            mix64(self.config.seed) ^ mix64(u64::from(self.partition_index) ^ 0xA5A5_0000);
        if delivered > 0 {
            seed ^= mix64(delivered ^ 0x5E5D_0000_0000_0000);
        }
        let mut rng = SplitMix64::new(seed);
        // Readers start idle in a random order (Fisher–Yates).
        let mut idle_users: Vec<u32> = (0..self.config.users).collect();
        for index in (1..idle_users.len()).rev() {
            let other = rng.below(index as u64 + 1) as usize;
            idle_users.swap(index, other);
        }
        // Spikes stay on the schedule of the traffic before (about as far from its start as it
        // had come), so that their numbers, and the breaking articles' ids, go on instead of
        // starting again at 0.
        let came = (delivered as f64 * self.ms_per_event) as u64;
        self.spike_anchor_ts = if delivered == 0 {
            start_ts
        } else {
            start_ts
                .saturating_sub(came)
                .saturating_sub(self.config.max_delivery_delay.ms())
        };
        self.rng = rng;
        self.start_ts = start_ts;
        self.sessions.clear();
        self.free_sessions.clear();
        self.due.clear();
        self.pending_per_user = vec![0; self.config.users as usize];
        self.idle_users = idle_users.into();
        self.in_flight.clear();
        self.generated = 0;
        self.sequence = 0;
        self.order = 0;
        self.delivered = delivered;
        self.active_spikes.clear();
        self.next_spike = 0;
        self.resumed_after = (delivered > 0).then_some(delivered);
    }

    /// The parameters.
    pub fn config(&self) -> &SyntheticConfig {
        &self.config
    }

    /// Which partition this is.
    pub fn partition_index(&self) -> u32 {
        self.partition_index
    }

    /// Event time of the first event.
    pub fn start_ts(&self) -> u64 {
        self.start_ts
    }

    /// Records delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether the `limit` has been reached (never without one).
    pub fn is_finished(&self) -> bool {
        self.config
            .limit
            .is_some_and(|limit| self.delivered >= limit)
    }

    /// Appends the next record's bytes (one line, without a line break) to `buf`; returns `false`
    /// (and appends nothing) once the `limit` is reached.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> bool {
        match self.next_draft() {
            Some(draft) => {
                self.render(&draft, buf);
                true
            }
            None => false,
        }
    }

    /// The delivery time of the next record (generating as far as needed to know it), or `None`
    /// once the `limit` is reached.
    pub(super) fn next_delivery_time(&mut self) -> Option<u64> {
        if self.is_finished() {
            return None;
        }
        loop {
            let next_slot_ts = self.slot_ts(self.generated);
            if let Some(Reverse(top)) = self.in_flight.peek()
                && top.deliver_at <= next_slot_ts
            {
                return Some(top.deliver_at);
            }
            self.generate_one();
        }
    }

    /// The next record to deliver.
    fn next_draft(&mut self) -> Option<Draft> {
        self.next_delivery_time()?;
        let Reverse(in_flight) = self.in_flight.pop()?;
        self.delivered += 1;
        Some(in_flight.draft)
    }

    /// Event time of the `k`-th generated event.
    fn slot_ts(&self, k: u64) -> u64 {
        self.start_ts
            .saturating_add((k as f64 * self.ms_per_event) as u64)
            .min(MAX_TS)
    }

    /// Generates the next event (one read of some session) and queues it for delivery.
    fn generate_one(&mut self) {
        let ts = self.slot_ts(self.generated);
        self.generated += 1;
        self.update_spikes(ts);
        let slot = match self.due.peek() {
            Some(Reverse((due_ts, _, _))) if *due_ts <= ts => match self.due.pop() {
                Some(Reverse((_, _, slot))) => slot,
                None => self.start_session(),
            },
            _ => self.start_session(),
        };
        let draft = self.read(slot, ts);
        self.after_read(slot, ts, draft.dwell_ms);
        self.dispatch(draft);
    }

    /// Starts and retires spikes as event time reaches them.
    fn update_spikes(&mut self, ts: u64) {
        let Some(every) = self.config.spike_every else {
            return;
        };
        self.active_spikes.retain(|spike| spike.end_ts > ts);
        loop {
            let spike = Spike::plan(
                self.config.seed,
                self.next_spike,
                self.spike_anchor_ts,
                every.ms(),
                self.catalogues.len() as u32,
                self.config.topics_per_portal,
            );
            if spike.start_ts > ts {
                break;
            }
            self.next_spike += 1;
            if spike.end_ts > ts {
                self.active_spikes.push(spike);
            }
        }
    }

    /// The spike in progress on `portal`, with its current share of reads.
    fn spike_on(&self, portal: u16, ts: u64) -> Option<(Spike, f64)> {
        self.active_spikes
            .iter()
            .rev()
            .find(|spike| spike.portal == portal)
            .map(|spike| (*spike, spike.share(ts, self.config.spike_peak_share)))
    }

    /// A new session of the reader idle the longest (of a random reader if every one is busy);
    /// returns its slot.
    fn start_session(&mut self) -> u32 {
        let user = match self.idle_users.pop_front() {
            Some(user) => user,
            None => self.rng.below(u64::from(self.config.users)) as u32,
        };
        let portal = self.portal_popularity.sample(&mut self.rng) as u16;
        let session = self.new_session(user, portal);
        let pending = &mut self.pending_per_user[user as usize];
        *pending = pending.saturating_add(1);
        match self.free_sessions.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = session;
                slot
            }
            None => {
                self.sessions.push(session);
                (self.sessions.len() - 1) as u32
            }
        }
    }

    /// A session of `user` on `portal` and its length (its topic is chosen at its first read).
    fn new_session(&mut self, user: u32, portal: u16) -> Session {
        let reads = self.session_length.sample(&mut self.rng) + 1;
        Session {
            user,
            portal,
            topic: 0,
            reads_left: reads as u8,
            last_article: None,
        }
    }

    /// One read of the session in `slot` at `ts`.
    fn read(&mut self, slot: u32, ts: u64) -> Draft {
        if self.sessions[slot as usize].last_article.is_none() {
            // The first read picks the session's topic cluster; breaking news pulls readers in.
            let portal = self.sessions[slot as usize].portal;
            let topic = match self.spike_on(portal, ts) {
                Some((spike, share)) if self.rng.chance(share) => spike.topic,
                _ => self.catalogues[usize::from(portal)]
                    .topic_popularity
                    .sample(&mut self.rng) as u16,
            };
            self.sessions[slot as usize].topic = topic;
        }
        let session = self.sessions[slot as usize];
        let catalogue = &self.catalogues[usize::from(session.portal)];
        let article = match (self.spike_on(session.portal, ts), session.last_article) {
            (Some((spike, share)), _) if self.rng.chance(share) => ArticleRef::Breaking {
                number: spike.number,
                topic: spike.topic,
            },
            (_, Some(last)) if self.rng.chance(RELOAD_SHARE) => last,
            _ => {
                let topic = if self.rng.chance(SAME_TOPIC_SHARE) {
                    session.topic
                } else {
                    catalogue.topic_popularity.sample(&mut self.rng) as u16
                };
                let mut article = catalogue.article_of_topic(topic, &mut self.rng);
                if session.last_article == Some(ArticleRef::Catalogue(article)) {
                    article = catalogue.article_of_topic(topic, &mut self.rng);
                }
                ArticleRef::Catalogue(article)
            }
        };
        self.sessions[slot as usize].last_article = Some(article);

        let bounce = self.rng.chance(BOUNCE_SHARE);
        let dwell_ms = if bounce {
            500.0 + 7_500.0 * self.rng.unit()
        } else {
            (MEDIAN_DWELL_MS.ln() + 0.9 * self.rng.normal())
                .exp()
                .min(MAX_DWELL_MS)
        };
        let scroll_pct = if bounce {
            25.0 * self.rng.unit()
        } else {
            let depth = dwell_ms / (dwell_ms + 40_000.0);
            (100.0 * depth * (0.6 + 0.8 * self.rng.unit())).min(100.0)
        };
        let mut clicks = 0;
        if !bounce && self.rng.chance(0.35) {
            clicks = 1;
            while clicks < 20 && self.rng.chance(0.4) {
                clicks += 1;
            }
        }
        let sequence = self.sequence;
        self.sequence += 1;
        let malformed = if self.rng.chance(self.config.invalid_share) {
            let kind = MalformedKind::ALL[self.rng.below(MalformedKind::ALL.len() as u64) as usize];
            Some((kind, self.rng.next_u64() as u32))
        } else {
            None
        };
        Draft {
            sequence,
            ts,
            portal: session.portal,
            user: session.user,
            article,
            dwell_ms: dwell_ms as u32,
            scroll_pct: scroll_pct as u8,
            clicks,
            malformed,
        }
    }

    /// Schedules the session's next read, or ends it (maybe planning the reader's return).
    fn after_read(&mut self, slot: u32, ts: u64, dwell_ms: u32) {
        let session = &mut self.sessions[slot as usize];
        session.reads_left = session.reads_left.saturating_sub(1);
        if session.reads_left > 0 {
            let gap = u64::from(dwell_ms) + 1_000 + self.rng.exponential(MEAN_NAVIGATION_MS) as u64;
            self.schedule(slot, ts + gap.min(MAX_GAP_WITHIN_SESSION_MS));
            return;
        }
        let user = session.user;
        let portal = session.portal;
        let pending = &mut self.pending_per_user[user as usize];
        *pending = pending.saturating_sub(1);
        if *pending == 0 && self.rng.chance(self.config.return_share) {
            *pending = 1;
            let gap = MIN_RETURN_MS + self.rng.below(MAX_RETURN_MS - MIN_RETURN_MS + 1);
            let portal = if self.rng.chance(0.7) {
                portal
            } else {
                self.portal_popularity.sample(&mut self.rng) as u16
            };
            let session = self.new_session(user, portal);
            self.sessions[slot as usize] = session;
            self.schedule(slot, ts + gap);
        } else {
            if *pending == 0 {
                self.idle_users.push_back(user);
            }
            self.free_sessions.push(slot);
        }
    }

    /// Queues the session in `slot` to read again at `due_ts`.
    fn schedule(&mut self, slot: u32, due_ts: u64) {
        self.order += 1;
        self.due.push(Reverse((due_ts, self.order, slot)));
    }

    /// Queues a beacon for delivery: on time, late, and maybe also re-sent.
    fn dispatch(&mut self, draft: Draft) {
        let max_delay = self.config.max_delivery_delay.ms();
        let deliver_at = if self.rng.chance(self.config.out_of_order_share) {
            draft.ts + 1 + self.rng.below(max_delay.max(1))
        } else {
            draft.ts
        };
        self.queue_delivery(deliver_at, draft);
        if draft.malformed.is_none() && self.rng.chance(self.config.duplicate_share) {
            let resent_at = draft.ts + self.rng.below(max_delay + 1);
            self.queue_delivery(resent_at, draft);
        }
    }

    fn queue_delivery(&mut self, deliver_at: u64, draft: Draft) {
        self.order += 1;
        self.in_flight.push(Reverse(InFlight {
            deliver_at,
            order: self.order,
            draft,
        }));
    }

    /// Renders a draft as one line (valid or malformed).
    fn render(&mut self, draft: &Draft, out: &mut Vec<u8>) {
        match draft.malformed {
            None => self.render_valid(draft, out, Field::None),
            Some((kind, parameter)) => self.render_malformed(draft, kind, parameter, out),
        }
    }

    /// Renders a valid line, with one field changed by `change`.
    fn render_valid(&self, draft: &Draft, out: &mut Vec<u8>, change: Field) {
        let catalogue = &self.catalogues[usize::from(draft.portal)];
        out.push(b'{');
        if change != Field::Omit(Required::EventId) {
            out.extend_from_slice(b"\"event_id\":");
            if change == Field::EmptyEventId {
                out.extend_from_slice(b"\"\"");
            } else {
                out.push(b'"');
                self.write_event_id(out, draft.sequence);
                out.push(b'"');
            }
            out.push(b',');
        }
        if change != Field::Omit(Required::Portal) {
            out.extend_from_slice(b"\"portal\":");
            match change {
                Field::NullPortal => out.extend_from_slice(b"null"),
                Field::BadPortal(bad) => write_json_string(out, bad),
                _ => write_json_string(out, &catalogue.name),
            }
            out.push(b',');
        }
        if change != Field::Omit(Required::UserId) {
            out.extend_from_slice(b"\"user_id\":");
            if change == Field::NumericUserId {
                write_decimal(out, u64::from(draft.user));
            } else {
                out.push(b'"');
                self.write_user_id(out, draft.user);
                out.push(b'"');
            }
            out.push(b',');
        }
        if change != Field::Omit(Required::ArticleId) {
            out.extend_from_slice(b"\"article_id\":");
            self.write_article_id(
                out,
                catalogue,
                draft.article,
                change == Field::InvalidUtf8ArticleId,
            );
            out.push(b',');
        }
        if change != Field::Omit(Required::Ts) {
            out.extend_from_slice(b"\"ts\":");
            if change == Field::StringTs {
                out.push(b'"');
                write_decimal(out, draft.ts);
                out.push(b'"');
            } else {
                write_decimal(out, draft.ts);
            }
            out.push(b',');
        }
        out.extend_from_slice(b"\"dwell_ms\":");
        write_decimal(out, u64::from(draft.dwell_ms));
        out.extend_from_slice(b",\"scroll_pct\":");
        if let Field::ScrollPct(scroll) = change {
            write_decimal(out, scroll);
        } else {
            write_decimal(out, u64::from(draft.scroll_pct));
        }
        out.extend_from_slice(b",\"clicks\":");
        write_decimal(out, u64::from(draft.clicks));
        out.extend_from_slice(b",\"device\":\"");
        out.extend_from_slice(device_of(self.partition_index, draft.user).as_bytes());
        out.extend_from_slice(b"\"}");
    }

    /// Renders a malformed line of `kind`; `parameter` picks the variant and where to break it.
    fn render_malformed(
        &mut self,
        draft: &Draft,
        kind: MalformedKind,
        parameter: u32,
        out: &mut Vec<u8>,
    ) {
        let change = match kind {
            MalformedKind::TruncatedJson => {
                let mut line = std::mem::take(&mut self.scratch);
                line.clear();
                self.render_valid(draft, &mut line, Field::None);
                // Cut somewhere after the `{`: never a complete object.
                let cut = 1 + (parameter as usize) % (line.len() - 1);
                out.extend_from_slice(&line[..cut]);
                self.scratch = line;
                return;
            }
            MalformedKind::NotObject => {
                out.push(b'[');
                write_json_string(out, &self.catalogues[usize::from(draft.portal)].name);
                out.push(b',');
                write_decimal(out, draft.ts);
                out.push(b']');
                return;
            }
            MalformedKind::MissingField => {
                Field::Omit(Required::ALL[parameter as usize % Required::ALL.len()])
            }
            MalformedKind::WrongType => match parameter % 3 {
                0 => Field::StringTs,
                1 => Field::NumericUserId,
                _ => Field::NullPortal,
            },
            MalformedKind::OutOfRange => match parameter % 2 {
                0 => Field::ScrollPct(101 + u64::from(parameter % 900)),
                _ => Field::EmptyEventId,
            },
            MalformedKind::BadPortal => {
                Field::BadPortal(["G1", "g1!", "-ge", "gshow.globo", ""][parameter as usize % 5])
            }
            MalformedKind::InvalidUtf8 => Field::InvalidUtf8ArticleId,
        };
        self.render_valid(draft, out, change);
    }

    /// Writes `<seed tag>-<partition>-<sequence>`, or `<seed tag>-<partition>-r<n>-<sequence>` in
    /// traffic resumed after `n` records (so that no id of the traffic before comes again).
    fn write_event_id(&self, out: &mut Vec<u8>, sequence: u64) {
        write_hex8(out, self.seed_tag);
        out.push(b'-');
        write_decimal(out, u64::from(self.partition_index));
        out.push(b'-');
        if let Some(delivered) = self.resumed_after {
            out.push(b'r');
            write_decimal(out, delivered);
            out.push(b'-');
        }
        write_decimal(out, sequence);
    }

    /// Writes `u<partition>-<user>`.
    fn write_user_id(&self, out: &mut Vec<u8>, user: u32) {
        out.push(b'u');
        write_decimal(out, u64::from(self.partition_index));
        out.push(b'-');
        write_decimal(out, u64::from(user));
    }

    /// Writes an article id as a JSON string (optionally with a byte that is not UTF-8 in it).
    fn write_article_id(
        &self,
        out: &mut Vec<u8>,
        catalogue: &PortalCatalogue,
        article: ArticleRef,
        corrupt: bool,
    ) {
        out.push(b'"');
        match article {
            ArticleRef::Catalogue(index) => {
                let id = catalogue.article_ids[index as usize].as_bytes();
                // Catalogue ids are built from safe characters: no escaping needed.
                out.extend_from_slice(id);
            }
            ArticleRef::Breaking { number, topic } => {
                write_breaking_article_id(out, &catalogue.name, topic, number);
            }
        }
        if corrupt {
            out.push(0xFF);
        }
        out.push(b'"');
    }

    /// The event of a draft.
    fn event_of(&self, draft: &Draft) -> Event {
        let catalogue = &self.catalogues[usize::from(draft.portal)];
        let mut buf = Vec::with_capacity(48);
        self.write_event_id(&mut buf, draft.sequence);
        let event_id = String::from_utf8_lossy(&buf).into_owned();
        buf.clear();
        self.write_user_id(&mut buf, draft.user);
        let user_id = String::from_utf8_lossy(&buf).into_owned();
        let article_id = match draft.article {
            ArticleRef::Catalogue(index) => catalogue.article_ids[index as usize].to_string(),
            ArticleRef::Breaking { number, topic } => {
                buf.clear();
                write_breaking_article_id(&mut buf, &catalogue.name, topic, number);
                String::from_utf8_lossy(&buf).into_owned()
            }
        };
        Event {
            event_id: event_id.into(),
            portal: catalogue.name.as_str().into(),
            user_id: user_id.into(),
            article_id: article_id.into(),
            ts: draft.ts,
            dwell_ms: draft.dwell_ms,
            scroll_pct: draft.scroll_pct,
            clicks: draft.clicks,
        }
    }
}

impl Iterator for SyntheticTraffic {
    type Item = SyntheticRecord;

    fn next(&mut self) -> Option<SyntheticRecord> {
        let draft = self.next_draft()?;
        Some(match draft.malformed {
            None => SyntheticRecord::Valid(self.event_of(&draft)),
            Some((kind, _)) => {
                let mut bytes = Vec::new();
                self.render(&draft, &mut bytes);
                SyntheticRecord::Malformed { kind, bytes }
            }
        })
    }
}

/// The device of a reader: mostly mobile, then desktop, a few tablets.
pub(super) fn device_of(partition_index: u32, user: u32) -> &'static str {
    match mix64((u64::from(partition_index) << 32) | u64::from(user)) % 100 {
        0..65 => "mobile",
        65..95 => "desktop",
        _ => "tablet",
    }
}
