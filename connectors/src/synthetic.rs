//! Seeded synthetic news-portal traffic: realistic pageview beacons for demos, tests and benchmarks.
//!
//! The concepts:
//!
//! - **Catalogue.** Each portal (`g1`, `ge`, `gshow` by default) has `articles_per_portal` articles
//!   split into `topics_per_portal` topic clusters (`g1/politica/noticia-00042`). Topics and the
//!   articles within a topic are chosen with Zipf-distributed popularity (`zipf_exponent`), so there
//!   are clear popular articles and a long tail. The catalogue depends on the seed only, so every
//!   partition shares it.
//! - **Sessions.** A reader picks a portal and reads 1–15 articles, mostly from one topic cluster
//!   (so related articles exist), with gaps of the page's dwell time plus seconds to minutes between
//!   reads. Some readers come back after more than 30 minutes (a new session). `dwell_ms`,
//!   `scroll_pct` and `clicks` follow realistic distributions (log-normal dwell with quick bounces,
//!   scroll depth that grows with dwell, mostly zero clicks).
//! - **Readers.** A new session goes to the reader idle the longest, so a reader's sessions are as
//!   far apart as the population allows. Readers in a session or planning to return are busy; the
//!   rest must last more than 30 minutes of new sessions. Keep `users` at least ~750 × the event
//!   rate (the default 50 000 readers suit the default 50 events per second), or readers run out,
//!   sessions go to busy readers and the job sees them merged into longer ones.
//! - **Breaking news.** Every `spike_every` of event time a new article (`g1/mundo/urgente-3`) appears
//!   on one portal and, for 10–20 minutes, takes a large share of that portal's reads (ramping up
//!   fast, then fading): a planted trend. [`SyntheticConfig::planned_spikes`] says which and when.
//! - **Delivery.** Beacons are delivered roughly in event-time order, except that an
//!   `out_of_order_share` of them arrive up to `max_delivery_delay` late, a `duplicate_share` are
//!   re-sent with the same `event_id` (browser retries, also within `max_delivery_delay`), and an
//!   `invalid_share` are malformed ([`MalformedKind`]: truncated JSON, a missing field, a wrong type,
//!   a value out of range, a bad portal, not an object, bad UTF-8). With the default
//!   `max_delivery_delay` of 2 s, below the job's default 5 s out-of-orderness, nothing is late.
//! - **Event time.** The `k`-th event generated has `ts = start + k · 1000 / rate` (integer
//!   milliseconds), so event time advances at exactly `rate` events per second. [`SyntheticTraffic`]
//!   uses simulated time: `start = start_ts`, `rate = simulated_events_per_second`, as fast as the
//!   CPU allows and deterministic. [`SyntheticSource`] with `events_per_second = Some(r)` instead
//!   starts at the wall clock and holds each record back until the wall clock reaches its delivery
//!   time, so `ts` tracks the wall clock (`ts ≈ now`) and records flow at `r` per second.
//! - **Partitions.** Several sources with different `partition_index` generate disjoint readers
//!   (`user_id` `u<index>-<n>`) and disjoint `event_id`s, and each is deterministic per
//!   `(seed, partition_index)`. Breaking news is shared: it happens on the site, not in a partition.
//! - **Resuming.** After a restart from a checkpoint, [`SyntheticSource::resume_after`] continues a
//!   partition: positions go on, no delivered `event_id` comes again, and paced event time goes on
//!   from the wall clock. It reseeds the generator instead of regenerating what was delivered.
//! - **Determinism and speed.** One small portable pseudo-random generator (SplitMix64) drives
//!   everything in a fixed order; the JSON is written by hand into a reusable buffer with correct
//!   escaping. Same seed, same bytes; well over a million lines per second in a release build.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pageflow_dataflow::config::Millis;
use pageflow_dataflow::event::{Event, RawRecord, Reason, SourcePosition};
use pageflow_dataflow::source::{PollStatus, RecordSource, SourceError};
use serde::{Deserialize, Serialize};

use crate::error::ConnectorError;
use crate::local_sink::is_valid_portal;

/// The largest `ts` the schema allows (9999-12-31T23:59:59.999Z).
const MAX_TS: u64 = 253_402_300_799_999;

/// The synthetic traffic's parameters. Every key has a default, so a config file names only what
/// it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Seeds everything: the same seed (and partition) gives the same bytes.
    pub seed: u64,
    /// The portals (sites); each must match the schema's portal pattern.
    pub portals: Vec<String>,
    /// Articles in each portal's catalogue.
    pub articles_per_portal: u32,
    /// Topic clusters per portal (the articles are split evenly among them).
    pub topics_per_portal: u32,
    /// Distinct readers per partition (see the module docs for how many a rate needs).
    pub users: u32,
    /// Exponent of the Zipf popularity of topics and of articles within a topic.
    pub zipf_exponent: f64,
    /// Event time of the first event in simulated time (ignored when paced by the wall clock).
    pub start_ts: u64,
    /// `Some(r)`: [`SyntheticSource`] is paced by the wall clock at `r` records per second and
    /// `ts` tracks the wall clock. `None`: as fast as possible, in simulated time.
    pub events_per_second: Option<f64>,
    /// Event-time rate of simulated time: events per simulated second.
    pub simulated_events_per_second: f64,
    /// How often a breaking-news spike starts (event time); `None` for no spikes.
    pub spike_every: Option<Millis>,
    /// The share of its portal's reads a breaking article takes at its peak.
    pub spike_peak_share: f64,
    /// The share of sessions after which the reader comes back, more than 30 minutes later.
    pub return_share: f64,
    /// The share of beacons re-sent with the same `event_id`.
    pub duplicate_share: f64,
    /// The share of beacons delivered late relative to others.
    pub out_of_order_share: f64,
    /// The largest delivery delay of late and re-sent beacons.
    pub max_delivery_delay: Millis,
    /// The share of records that are malformed (0 for real runs; tests raise it).
    pub invalid_share: f64,
    /// Stop after this many records per partition (`None`: never stop).
    pub limit: Option<u64>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 42,
            portals: vec!["g1".into(), "ge".into(), "gshow".into()],
            articles_per_portal: 2_000,
            topics_per_portal: 40,
            users: 50_000,
            zipf_exponent: 1.1,
            start_ts: 1_795_435_200_000, // 2026-11-23T12:00:00Z
            events_per_second: None,
            simulated_events_per_second: 50.0,
            spike_every: Some(Millis::minutes(30)),
            spike_peak_share: 0.3,
            return_share: 0.2,
            duplicate_share: 0.01,
            out_of_order_share: 0.02,
            max_delivery_delay: Millis::seconds(2),
            invalid_share: 0.0,
            limit: None,
        }
    }
}

impl SyntheticConfig {
    /// Enough readers for `rate` events per second that a reader's sessions stay apart (the model
    /// needs about 750 per event per second, see the module docs), and never fewer than the
    /// default.
    pub fn readers_for_rate(rate: f64) -> u32 {
        let needed = (rate.max(0.0) * 750.0).ceil();
        (needed.min(f64::from(u32::MAX)) as u32).max(SyntheticConfig::default().users)
    }

    /// Checks every key and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        let mut problems = Vec::new();
        if self.portals.is_empty() {
            problems
                .push("`portals` is empty: name at least one portal, e.g. [\"g1\"]".to_string());
        }
        if self.portals.len() > usize::from(u16::MAX) {
            problems.push(format!(
                "`portals` has {} entries: at most 65535",
                self.portals.len()
            ));
        }
        for (index, portal) in self.portals.iter().enumerate() {
            if !is_valid_portal(portal) {
                problems.push(format!(
                    "`portals[{index}]` = {portal:?} does not match ^[a-z0-9][a-z0-9-]{{0,31}}$: use \
                     lowercase letters, digits and `-`"
                ));
            }
            if self.portals[..index].contains(portal) {
                problems.push(format!(
                    "`portals` names {portal:?} twice: list each portal once"
                ));
            }
        }
        if self.topics_per_portal == 0 || self.topics_per_portal > u32::from(u16::MAX) {
            problems.push(format!(
                "`topics_per_portal` = {} must be between 1 and 65535",
                self.topics_per_portal
            ));
        }
        if self.articles_per_portal < self.topics_per_portal {
            problems.push(format!(
                "`articles_per_portal` = {} must be at least `topics_per_portal` = {}",
                self.articles_per_portal, self.topics_per_portal
            ));
        }
        if self.users == 0 {
            problems.push("`users` must be at least 1".to_string());
        }
        if !(self.zipf_exponent.is_finite() && (0.0..=10.0).contains(&self.zipf_exponent)) {
            problems.push(format!(
                "`zipf_exponent` = {} must be between 0 and 10 (about 1.1 is realistic)",
                self.zipf_exponent
            ));
        }
        if self.start_ts > MAX_TS {
            problems.push(format!(
                "`start_ts` = {} is past the schema's maximum {MAX_TS}",
                self.start_ts
            ));
        }
        if let Some(rate) = self.events_per_second
            && !(rate.is_finite() && rate > 0.0 && rate <= 1e9)
        {
            problems.push(format!(
                "`events_per_second` = {rate} must be a positive number (or absent for as fast as \
                 possible)"
            ));
        }
        let rate = self.simulated_events_per_second;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) {
            problems.push(format!(
                "`simulated_events_per_second` = {rate} must be a positive number"
            ));
        }
        if let Some(every) = self.spike_every
            && every < Millis::minutes(1)
        {
            problems.push(format!(
                "`spike_every` = {every} is too short: use at least 1m (or null for no spikes)"
            ));
        }
        if self.max_delivery_delay > Millis::hours(1) {
            problems.push(format!(
                "`max_delivery_delay` = {} is too long: use at most 1h",
                self.max_delivery_delay
            ));
        }
        for (key, share) in [
            ("spike_peak_share", self.spike_peak_share),
            ("return_share", self.return_share),
            ("duplicate_share", self.duplicate_share),
            ("out_of_order_share", self.out_of_order_share),
            ("invalid_share", self.invalid_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                problems.push(format!("`{key}` = {share} must be a share between 0 and 1"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::InvalidConfig {
                what: "synthetic",
                problems,
            })
        }
    }

    /// The breaking-news spikes that start before `until_ts` in simulated time (from `start_ts`).
    pub fn planned_spikes(&self, until_ts: u64) -> Vec<PlannedSpike> {
        let Some(every) = self.spike_every.filter(|every| every.ms() > 0) else {
            return Vec::new();
        };
        let topics = self.topics_per_portal.max(1);
        let portals = u32::try_from(self.portals.len()).unwrap_or(u32::MAX).max(1);
        let mut spikes = Vec::new();
        for number in 0.. {
            let spike = Spike::plan(
                self.seed,
                number,
                self.start_ts,
                every.ms(),
                portals,
                topics,
            );
            if spike.start_ts >= until_ts {
                break;
            }
            let portal = self
                .portals
                .get(usize::from(spike.portal))
                .cloned()
                .unwrap_or_default();
            let mut article_id = Vec::new();
            write_breaking_article_id(&mut article_id, &portal, spike.topic, number);
            spikes.push(PlannedSpike {
                number,
                article_id: String::from_utf8_lossy(&article_id).into_owned(),
                portal,
                start_ts: spike.start_ts,
                end_ts: spike.end_ts,
            });
        }
        spikes
    }
}

/// A breaking-news spike as planned: which article, where and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSpike {
    /// The spike's number (0 for the first).
    pub number: u64,
    /// The portal it happens on.
    pub portal: String,
    /// The breaking article.
    pub article_id: String,
    /// When it starts (event time).
    pub start_ts: u64,
    /// When it is over (event time, exclusive).
    pub end_ts: u64,
}

/// How a malformed record is broken, and so which dead-letter reason it must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedKind {
    /// A valid line cut short.
    TruncatedJson,
    /// A required field left out.
    MissingField,
    /// A field of the wrong JSON type (`null` included).
    WrongType,
    /// A number or string length outside its bounds.
    OutOfRange,
    /// A portal that does not match the portal pattern.
    BadPortal,
    /// Valid JSON that is not an object.
    NotObject,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
}

impl MalformedKind {
    /// Every kind.
    pub const ALL: [MalformedKind; 7] = [
        MalformedKind::TruncatedJson,
        MalformedKind::MissingField,
        MalformedKind::WrongType,
        MalformedKind::OutOfRange,
        MalformedKind::BadPortal,
        MalformedKind::NotObject,
        MalformedKind::InvalidUtf8,
    ];

    /// The dead-letter reason validation must give a record of this kind.
    pub fn expected_reason(self) -> Reason {
        match self {
            MalformedKind::TruncatedJson => Reason::InvalidJson,
            MalformedKind::MissingField => Reason::MissingField,
            MalformedKind::WrongType => Reason::WrongType,
            MalformedKind::OutOfRange => Reason::OutOfRange,
            MalformedKind::BadPortal => Reason::BadPattern,
            MalformedKind::NotObject => Reason::NotObject,
            MalformedKind::InvalidUtf8 => Reason::InvalidUtf8,
        }
    }
}

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

/// A source of wall-clock time, so paced sources can be tested without sleeping.
pub trait WallClock: Send + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests); clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    /// Milliseconds since the Unix epoch.
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock {
            now_ms: Arc::new(AtomicU64::new(now_ms)),
        }
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ms`.
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// SplitMix64: a small, fast, portable generator (its output never changes with a crate version).
#[derive(Clone, Debug)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Exponentially distributed with mean `mean`.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// The SplitMix64 finaliser: a good 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A discrete distribution sampled by binary search over its cumulative weights.
#[derive(Clone, Debug)]
struct Cumulative {
    /// Cumulative weights, normalised so the last is 1.
    cdf: Vec<f64>,
}

impl Cumulative {
    fn from_weights(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = weights
            .into_iter()
            .map(|weight| {
                total += weight;
                total
            })
            .collect();
        for value in &mut cdf {
            *value /= total;
        }
        Cumulative { cdf }
    }

    /// Zipf over `n` ranks: rank `i` has weight `1 / (i + 1)^s`.
    fn zipf(n: u32, exponent: f64) -> Self {
        Self::from_weights((0..n).map(|rank| 1.0 / f64::from(rank + 1).powf(exponent)))
    }

    /// An index in `[0, len)`.
    fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let u = rng.unit();
        let index = self.cdf.partition_point(|&c| c <= u);
        u32::try_from(index.min(self.cdf.len().saturating_sub(1))).unwrap_or(0)
    }
}

/// Section names for topic clusters (suffixed when there are more topics than names).
const TOPIC_NAMES: [&str; 40] = [
    "politica",
    "economia",
    "mundo",
    "tecnologia",
    "ciencia",
    "saude",
    "educacao",
    "carros",
    "natureza",
    "turismo",
    "futebol",
    "basquete",
    "volei",
    "formula-1",
    "tenis",
    "novelas",
    "series",
    "famosos",
    "musica",
    "cinema",
    "reality",
    "humor",
    "receitas",
    "moda",
    "sp",
    "rj",
    "mg",
    "rs",
    "pe",
    "ba",
    "pr",
    "df",
    "am",
    "ce",
    "go",
    "sc",
    "es",
    "pb",
    "agro",
    "loterias",
];

/// One portal's articles, grouped by topic.
#[derive(Clone, Debug)]
struct PortalCatalogue {
    /// The portal's name.
    name: String,
    /// Every article id; topic `t` owns `article_ids[topic_starts[t]..topic_starts[t + 1]]`.
    article_ids: Vec<Box<str>>,
    /// Where each topic's articles start (one extra entry: the end).
    topic_starts: Vec<u32>,
    /// Popularity of topics.
    topic_popularity: Cumulative,
    /// Popularity of the articles within each topic.
    article_popularity: Vec<Cumulative>,
}

impl PortalCatalogue {
    fn new(name: &str, config: &SyntheticConfig) -> Self {
        let topics = config.topics_per_portal;
        let per_topic = config.articles_per_portal / topics;
        let extra = config.articles_per_portal % topics;
        let mut article_ids = Vec::with_capacity(config.articles_per_portal as usize);
        let mut topic_starts = Vec::with_capacity(topics as usize + 1);
        let mut article_popularity = Vec::with_capacity(topics as usize);
        for topic in 0..topics {
            topic_starts.push(u32::try_from(article_ids.len()).unwrap_or(u32::MAX));
            let count = per_topic + u32::from(topic < extra);
            let mut id = Vec::new();
            for _ in 0..count {
                id.clear();
                id.extend_from_slice(name.as_bytes());
                id.push(b'/');
                write_topic_name(&mut id, topic);
                id.extend_from_slice(b"/noticia-");
                write_padded_decimal(&mut id, article_ids.len() as u64, 5);
                article_ids.push(String::from_utf8_lossy(&id).into());
            }
            article_popularity.push(Cumulative::zipf(count, config.zipf_exponent));
        }
        topic_starts.push(u32::try_from(article_ids.len()).unwrap_or(u32::MAX));
        PortalCatalogue {
            name: name.to_string(),
            article_ids,
            topic_starts,
            topic_popularity: Cumulative::zipf(topics, config.zipf_exponent),
            article_popularity,
        }
    }

    /// A popular-weighted article of `topic`.
    fn article_of_topic(&self, topic: u16, rng: &mut SplitMix64) -> u32 {
        let topic = usize::from(topic);
        self.topic_starts[topic] + self.article_popularity[topic].sample(rng)
    }
}

/// Writes a topic's name: a section name, suffixed with `-<n>` after the first 40.
fn write_topic_name(out: &mut Vec<u8>, topic: u32) {
    let names = TOPIC_NAMES.len() as u32;
    out.extend_from_slice(TOPIC_NAMES[(topic % names) as usize].as_bytes());
    if topic >= names {
        out.push(b'-');
        write_decimal(out, u64::from(topic / names));
    }
}

/// Writes the article id of breaking-news spike `number`: `<portal>/<topic>/urgente-<number>`.
fn write_breaking_article_id(out: &mut Vec<u8>, portal: &str, topic: u16, number: u64) {
    out.extend_from_slice(portal.as_bytes());
    out.push(b'/');
    write_topic_name(out, u32::from(topic));
    out.extend_from_slice(b"/urgente-");
    write_decimal(out, number);
}

/// A breaking-news spike.
#[derive(Clone, Copy, Debug)]
struct Spike {
    number: u64,
    portal: u16,
    topic: u16,
    start_ts: u64,
    end_ts: u64,
}

/// How long a spike takes to reach its peak.
const SPIKE_RAMP_MS: u64 = 2 * 60_000;

impl Spike {
    /// Spike `number`: a pure function of the seed, so every partition plans the same spikes.
    fn plan(
        seed: u64,
        number: u64,
        start_ts: u64,
        every_ms: u64,
        portals: u32,
        topics: u32,
    ) -> Self {
        let hash = mix64(seed ^ mix64(number.wrapping_add(0x5EED_5EED)));
        let start = start_ts.saturating_add(every_ms.saturating_mul(number + 1));
        let duration = 10 * 60_000 + (hash % (10 * 60_000 + 1));
        // Any portal, one of its three most popular topics (breaking news lands in big sections).
        // Both casts fit: portal and topic counts are validated to fit u16.
        let portal = ((hash >> 24) % u64::from(portals)) as u16;
        let topic = ((hash >> 40) % u64::from(topics.min(3))) as u16;
        Spike {
            number,
            portal,
            topic,
            start_ts: start,
            end_ts: start.saturating_add(duration),
        }
    }

    /// The share of its portal's reads the spike takes at `ts`: ramps up over two minutes, holds
    /// until half-time, then fades to a fifth of the peak at the end.
    fn share(&self, ts: u64, peak: f64) -> f64 {
        if ts < self.start_ts || ts >= self.end_ts {
            return 0.0;
        }
        let elapsed = (ts - self.start_ts) as f64;
        let duration = (self.end_ts - self.start_ts) as f64;
        let half = duration / 2.0;
        if elapsed < SPIKE_RAMP_MS as f64 {
            peak * elapsed / SPIKE_RAMP_MS as f64
        } else if elapsed < half {
            peak
        } else {
            peak * (1.0 - 0.8 * (elapsed - half) / (duration - half))
        }
    }
}

/// The article of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArticleRef {
    /// An article of the portal's catalogue, by index.
    Catalogue(u32),
    /// The breaking article of a spike (its portal is the read's portal).
    Breaking { number: u64, topic: u16 },
}

/// A generated beacon before rendering: everything in it is an index or a number, so drafts are
/// cheap to queue.
#[derive(Clone, Copy, Debug)]
struct Draft {
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
struct InFlight {
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
struct Session {
    user: u32,
    portal: u16,
    topic: u16,
    reads_left: u8,
    last_article: Option<ArticleRef>,
}

/// The longest session a reader starts.
const MAX_READS_PER_SESSION: u32 = 15;
/// Share of bounces (a few seconds on the page).
const BOUNCE_SHARE: f64 = 0.15;
/// Median dwell of a real read.
const MEDIAN_DWELL_MS: f64 = 35_000.0;
/// Longest dwell recorded.
const MAX_DWELL_MS: f64 = 30.0 * 60_000.0;
/// Mean time between leaving a page and opening the next one.
const MEAN_NAVIGATION_MS: f64 = 20_000.0;
/// The longest gap within a session (below the job's 30-minute session gap).
const MAX_GAP_WITHIN_SESSION_MS: u64 = 25 * 60_000;
/// Share of reads that stay in the session's topic cluster.
const SAME_TOPIC_SHARE: f64 = 0.8;
/// Share of reads that reload the previous article.
const RELOAD_SHARE: f64 = 0.04;
/// Returning readers come back after this long at the earliest…
const MIN_RETURN_MS: u64 = 31 * 60_000;
/// …and at the latest.
const MAX_RETURN_MS: u64 = 2 * 60 * 60_000;

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
    fn with_timeline(
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
    fn continue_after(&mut self, delivered: u64, start_ts: u64) {
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
    fn next_delivery_time(&mut self) -> Option<u64> {
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

/// The required fields, in the schema's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Required {
    EventId,
    Portal,
    UserId,
    ArticleId,
    Ts,
}

impl Required {
    const ALL: [Required; 5] = [
        Required::EventId,
        Required::Portal,
        Required::UserId,
        Required::ArticleId,
        Required::Ts,
    ];
}

/// One deliberate change to a valid line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// No change.
    None,
    /// Leave a required field out (`missing_field`).
    Omit(Required),
    /// `"ts":"123"` (`wrong_type`).
    StringTs,
    /// `"user_id":123` (`wrong_type`).
    NumericUserId,
    /// `"portal":null` (`wrong_type`).
    NullPortal,
    /// `scroll_pct` above 100 (`out_of_range`).
    ScrollPct(u64),
    /// `"event_id":""` (`out_of_range`: minLength 1).
    EmptyEventId,
    /// A portal that breaks the pattern (`bad_pattern`).
    BadPortal(&'static str),
    /// A 0xFF byte inside `article_id` (`invalid_utf8`).
    InvalidUtf8ArticleId,
}

/// The device of a reader: mostly mobile, then desktop, a few tablets.
fn device_of(partition_index: u32, user: u32) -> &'static str {
    match mix64((u64::from(partition_index) << 32) | u64::from(user)) % 100 {
        0..65 => "mobile",
        65..95 => "desktop",
        _ => "tablet",
    }
}

/// Appends `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
fn write_padded_decimal(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = Vec::with_capacity(20);
    write_decimal(&mut digits, n);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(&digits);
}

/// Appends `n` as 8 lowercase hex digits.
fn write_hex8(out: &mut Vec<u8>, n: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(HEX[((n >> (shift * 4)) & 0xF) as usize]);
    }
}

/// Appends `text` as a JSON string literal, escaping `"`, `\` and control characters.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..index]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xF)]);
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = index + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

/// Writes `n_events` synthetic records (partition 0, simulated time) as JSON lines to `writer`
/// (fewer if the config's `limit` is smaller); returns how many were written. For `pageflow
/// generate`: it never waits for the wall clock.
pub fn write_json_lines(
    config: &SyntheticConfig,
    n_events: u64,
    mut writer: impl Write,
) -> Result<u64, ConnectorError> {
    const FLUSH_AT_BYTES: usize = 1 << 20;
    let write_error = |source| ConnectorError::Write {
        path: PathBuf::from("(synthetic output)"),
        source,
    };
    let mut traffic = SyntheticTraffic::new(config.clone())?;
    let mut buf = Vec::with_capacity(FLUSH_AT_BYTES + 4096);
    let mut written = 0;
    while written < n_events && traffic.next_line(&mut buf) {
        buf.push(b'\n');
        written += 1;
        if buf.len() >= FLUSH_AT_BYTES {
            writer.write_all(&buf).map_err(write_error)?;
            buf.clear();
        }
    }
    writer.write_all(&buf).map_err(write_error)?;
    writer.flush().map_err(write_error)?;
    Ok(written)
}

/// Synthetic traffic as one source partition named `synthetic:<index>`.
///
/// With `events_per_second = Some(r)` it is paced by the wall clock: the traffic starts at the
/// clock's time, runs at `r` records per second, and a poll that finds the next record not yet due
/// returns [`PollStatus::Pending`]. Otherwise it delivers as fast as it is polled, in simulated
/// time, and is a replay (only event time moves its watermark). It finishes only when a `limit` is
/// set. Positions are 1-based record numbers; [`SyntheticSource::resume_after`] continues after a
/// checkpoint.
#[derive(Debug)]
pub struct SyntheticSource {
    /// `synthetic:<index>`.
    name: String,
    /// The generator.
    traffic: SyntheticTraffic,
    /// The wall clock, when paced.
    pacing: Option<Box<dyn WallClock>>,
}

impl SyntheticSource {
    /// Partition `partition_index` of the traffic, paced by the system clock if the config says so.
    pub fn new(config: SyntheticConfig, partition_index: u32) -> Result<Self, ConnectorError> {
        Self::with_clock(config, partition_index, Box::new(SystemClock))
    }

    /// Like [`SyntheticSource::new`], with the wall clock given (used only when paced).
    pub fn with_clock(
        config: SyntheticConfig,
        partition_index: u32,
        clock: Box<dyn WallClock>,
    ) -> Result<Self, ConnectorError> {
        let (traffic, pacing) = match config.events_per_second {
            Some(rate) => {
                let start_ts = clock.now_ms();
                let traffic =
                    SyntheticTraffic::with_timeline(config, partition_index, start_ts, rate)?;
                (traffic, Some(clock))
            }
            None => (
                SyntheticTraffic::for_partition(config, partition_index)?,
                None,
            ),
        };
        Ok(SyntheticSource {
            name: format!("synthetic:{partition_index}"),
            traffic,
            pacing,
        })
    }

    /// Continues the partition's traffic after a restart from a checkpoint whose position is
    /// `delivered` (the [`SyntheticTraffic::delivered`] count when its last record was taken in).
    ///
    /// - **Positions** go on from `delivered + 1`, and a `limit` still counts every record of the
    ///   partition (resuming at or past it gives a finished source).
    /// - **Event ids never repeat** one delivered before: they read `<tag>-<partition>-r<delivered>-<n>`,
    ///   which no traffic before the checkpoint had (resuming twice from the same checkpoint gives
    ///   the same records, as a replay should).
    /// - **Event time** goes on from the wall clock when paced (`events_per_second`): the first
    ///   record has `ts` = now, nothing makes up for the time the job was down, and nothing is in
    ///   the future. In simulated time it goes on from where the traffic before was (`start_ts`
    ///   plus `delivered` events' worth of event time, plus `max_delivery_delay`), so that the
    ///   restored watermark does not make the new records late.
    /// - **Not a replay of the records that would have come next.** Regenerating the `delivered`
    ///   records to reach the generator's state would take time in proportion to how long the
    ///   traffic has run (a day at the default 2000 records per second is over 170 million
    ///   records), so the generator is instead reseeded from `(seed, partition, delivered)`: it
    ///   starts as fast as a fresh one, deterministically, but with new sessions (readers are the
    ///   same population) and without the beacons that were still in flight (late or re-sent ones
    ///   not yet delivered). For synthetic traffic that is the same thing: more pageviews.
    ///
    /// `resume_after(0)` is the same as a fresh source. Call it before the first poll.
    pub fn resume_after(mut self, delivered: u64) -> Self {
        let start_ts = match &self.pacing {
            Some(clock) => clock.now_ms().min(MAX_TS),
            None => {
                let config = self.traffic.config();
                let came = (delivered as f64 * 1000.0 / config.simulated_events_per_second) as u64;
                if delivered == 0 {
                    config.start_ts
                } else {
                    config
                        .start_ts
                        .saturating_add(came)
                        .saturating_add(config.max_delivery_delay.ms())
                        .min(MAX_TS)
                }
            }
        };
        self.traffic.continue_after(delivered, start_ts);
        self
    }

    /// The generator behind the source.
    pub fn traffic(&self) -> &SyntheticTraffic {
        &self.traffic
    }
}

impl RecordSource for SyntheticSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        let now = self.pacing.as_ref().map(|clock| clock.now_ms());
        let mut appended = 0;
        let mut line = Vec::with_capacity(256);
        while appended < max {
            let Some(deliver_at) = self.traffic.next_delivery_time() else {
                return Ok(PollStatus::Finished);
            };
            if now.is_some_and(|now| deliver_at > now) {
                return Ok(if appended == 0 {
                    PollStatus::Pending
                } else {
                    PollStatus::Ready
                });
            }
            line.clear();
            if !self.traffic.next_line(&mut line) {
                return Ok(PollStatus::Finished);
            }
            out.push(RawRecord {
                position: SourcePosition {
                    partition: self.name.clone(),
                    position: self.traffic.delivered().to_string(),
                },
                bytes: line.as_slice().to_vec(),
                corrupt: None,
            });
            appended += 1;
        }
        Ok(if self.traffic.is_finished() {
            PollStatus::Finished
        } else {
            PollStatus::Ready
        })
    }

    fn is_replay(&self) -> bool {
        self.pacing.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use pageflow_dataflow::event::validate;
    use proptest::prelude::*;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn lines(
        config: &SyntheticConfig,
        partition: u32,
        n: usize,
    ) -> Result<Vec<Vec<u8>>, ConnectorError> {
        let mut traffic = SyntheticTraffic::for_partition(config.clone(), partition)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut line = Vec::new();
            if !traffic.next_line(&mut line) {
                break;
            }
            out.push(line);
        }
        Ok(out)
    }

    fn events(
        config: &SyntheticConfig,
        partition: u32,
        n: usize,
    ) -> Result<Vec<Event>, Box<dyn std::error::Error>> {
        lines(config, partition, n)?
            .iter()
            .map(|line| {
                validate(line)
                    .map(|view| Event::from(&view))
                    .map_err(|e| e.detail.into())
            })
            .collect()
    }

    #[test]
    fn same_seed_gives_the_same_bytes() -> TestResult {
        let config = SyntheticConfig {
            invalid_share: 0.05,
            ..SyntheticConfig::default()
        };
        assert_eq!(lines(&config, 0, 20_000)?, lines(&config, 0, 20_000)?);
        let other = SyntheticConfig {
            seed: 7,
            ..config.clone()
        };
        assert_ne!(lines(&config, 0, 100)?, lines(&other, 0, 100)?);
        Ok(())
    }

    #[test]
    fn partitions_have_disjoint_users_and_event_ids() -> TestResult {
        let config = SyntheticConfig::default();
        let a = events(&config, 0, 5_000)?;
        let b = events(&config, 1, 5_000)?;
        let users_a: HashSet<_> = a.iter().map(|e| e.user_id.clone()).collect();
        let users_b: HashSet<_> = b.iter().map(|e| e.user_id.clone()).collect();
        assert!(users_a.is_disjoint(&users_b));
        let ids_a: HashSet<_> = a.iter().map(|e| e.event_id.clone()).collect();
        assert!(b.iter().all(|e| !ids_a.contains(&e.event_id)));
        // Same catalogue in every partition.
        let articles_a: HashSet<_> = a.iter().map(|e| e.article_id.clone()).collect();
        assert!(
            b.iter()
                .filter(|e| articles_a.contains(&e.article_id))
                .count()
                > 2_500
        );
        assert_eq!(
            events(&config, 1, 2_000)?,
            b[..2_000].to_vec(),
            "deterministic per partition"
        );
        Ok(())
    }

    #[test]
    fn every_line_is_valid_without_invalid_share() -> TestResult {
        let config = SyntheticConfig {
            duplicate_share: 0.05,
            out_of_order_share: 0.1,
            ..Default::default()
        };
        for partition in [0, 3] {
            for line in lines(&config, partition, 30_000)? {
                if let Err(invalid) = validate(&line) {
                    return Err(
                        format!("{}: {}", String::from_utf8_lossy(&line), invalid.detail).into(),
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn iterator_and_lines_describe_the_same_stream() -> TestResult {
        let config = SyntheticConfig {
            invalid_share: 0.1,
            ..SyntheticConfig::default()
        };
        let records: Vec<SyntheticRecord> =
            SyntheticTraffic::new(config.clone())?.take(3_000).collect();
        let lines = lines(&config, 0, 3_000)?;
        assert_eq!(records.len(), lines.len());
        for (record, line) in records.iter().zip(&lines) {
            match record {
                SyntheticRecord::Valid(event) => {
                    let view = validate(line).map_err(|e| e.detail)?;
                    assert_eq!(&Event::from(&view), event);
                    let json: serde_json::Value = serde_json::from_slice(line)?;
                    assert!(json["device"].is_string());
                }
                SyntheticRecord::Malformed { bytes, .. } => assert_eq!(bytes, line),
            }
        }
        Ok(())
    }

    #[test]
    fn malformed_lines_have_the_expected_share_and_reasons() -> TestResult {
        let config = SyntheticConfig {
            invalid_share: 0.2,
            ..SyntheticConfig::default()
        };
        let mut malformed = 0;
        let mut kinds = HashSet::new();
        let mut wrong = Vec::new();
        for record in SyntheticTraffic::new(config)?.take(10_000) {
            if let SyntheticRecord::Malformed { kind, bytes } = record {
                malformed += 1;
                kinds.insert(kind);
                match validate(&bytes) {
                    Err(invalid) if invalid.reason == kind.expected_reason() => {}
                    other => wrong.push(format!(
                        "{kind:?} {:?}: {:?}",
                        String::from_utf8_lossy(&bytes),
                        other.map(|_| "valid").map_err(|e| e.reason)
                    )),
                }
            }
        }
        assert!((1_700..2_300).contains(&malformed), "{malformed}");
        assert_eq!(kinds.len(), MalformedKind::ALL.len());
        assert!(
            wrong.is_empty(),
            "{} misjudged, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        Ok(())
    }

    #[test]
    fn event_time_advances_at_the_simulated_rate_with_bounded_disorder() -> TestResult {
        let config = SyntheticConfig::default();
        let events = events(&config, 0, 100_000)?;
        let max_ts = events.iter().map(|e| e.ts).max().unwrap_or(0);
        let span_s = (max_ts - config.start_ts) as f64 / 1000.0;
        let distinct: HashSet<&str> = events.iter().map(|e| &*e.event_id).collect();
        let expected_s = distinct.len() as f64 / config.simulated_events_per_second;
        assert!(
            (span_s - expected_s).abs() < 3.0,
            "{} events span {span_s} s",
            distinct.len()
        );

        let mut seen_max = 0;
        let mut out_of_order = 0;
        for event in &events {
            assert!(
                event.ts + config.max_delivery_delay.ms() >= seen_max,
                "too late: {event:?}"
            );
            if event.ts < seen_max {
                out_of_order += 1;
            }
            seen_max = seen_max.max(event.ts);
        }
        assert!(out_of_order > 500, "{out_of_order}");

        let mut ids: HashMap<&str, u32> = HashMap::new();
        for event in &events {
            *ids.entry(&event.event_id).or_default() += 1;
        }
        let duplicates = events.len() - ids.len();
        assert!(
            (700..1_300).contains(&duplicates),
            "{duplicates} duplicates"
        );
        Ok(())
    }

    #[test]
    fn sessions_and_values_look_realistic() -> TestResult {
        // 60k events at 5 per second: over 3 hours, long enough for readers to come back.
        let config = SyntheticConfig {
            simulated_events_per_second: 5.0,
            users: 4_000,
            ..Default::default()
        };
        let events = events(&config, 0, 60_000)?;
        let mut by_user: HashMap<&str, Vec<&Event>> = HashMap::new();
        for event in &events {
            by_user.entry(&event.user_id).or_default().push(event);
        }
        let (mut sessions, mut reads, mut same_topic, mut pairs, mut returns) = (0, 0, 0, 0, 0);
        for reads_of_user in by_user.values_mut() {
            reads_of_user.sort_by_key(|e| (e.ts, e.event_id.clone()));
            sessions += 1;
            for pair in reads_of_user.windows(2) {
                if pair[1].ts - pair[0].ts > 30 * 60_000 {
                    sessions += 1;
                    returns += 1;
                } else if pair[0].portal == pair[1].portal {
                    pairs += 1;
                    let topic = |e: &Event| e.article_id.split('/').nth(1).map(str::to_string);
                    same_topic += usize::from(topic(pair[0]) == topic(pair[1]));
                }
            }
            reads += reads_of_user.len();
        }
        let per_session = reads as f64 / sessions as f64;
        assert!(
            (1.5..8.0).contains(&per_session),
            "{per_session} reads per session"
        );
        assert!(returns > 100, "{returns} returns");
        assert!(
            same_topic as f64 / pairs as f64 > 0.6,
            "{same_topic}/{pairs} same-topic reads"
        );

        let engaged = events.iter().filter(|e| e.engaged()).count() as f64 / events.len() as f64;
        assert!((0.3..0.9).contains(&engaged), "{engaged} engaged");
        let clicked = events.iter().filter(|e| e.clicks > 0).count() as f64 / events.len() as f64;
        assert!((0.1..0.5).contains(&clicked), "{clicked} with clicks");
        assert!(
            events
                .iter()
                .all(|e| e.scroll_pct <= 100 && e.dwell_ms <= 1_800_000)
        );
        let portals: HashSet<_> = events.iter().map(|e| &*e.portal).collect();
        assert_eq!(portals.len(), 3);
        Ok(())
    }

    #[test]
    fn a_planned_spike_dominates_its_portal() -> TestResult {
        let config = SyntheticConfig::default();
        // 40 minutes of traffic: the first spike starts at 30 minutes.
        let events = events(
            &config,
            0,
            (config.simulated_events_per_second * 60.0 * 40.0) as usize,
        )?;
        let spikes = config.planned_spikes(config.start_ts + 40 * 60_000);
        assert_eq!(spikes.len(), 1);
        let spike = &spikes[0];
        assert_eq!(spike.start_ts, config.start_ts + 30 * 60_000);
        assert!((10 * 60_000..=20 * 60_000).contains(&(spike.end_ts - spike.start_ts)));
        let window = (spike.start_ts + 3 * 60_000)..(spike.start_ts + 8 * 60_000);
        let mut views: HashMap<&str, usize> = HashMap::new();
        for event in events
            .iter()
            .filter(|e| *e.portal == *spike.portal && window.contains(&e.ts))
        {
            *views.entry(&event.article_id).or_default() += 1;
        }
        let top = views
            .iter()
            .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        assert_eq!(top, Some(spike.article_id.as_str()));
        assert!(
            events
                .iter()
                .filter(|e| e.ts < spike.start_ts)
                .all(|e| *e.article_id != *spike.article_id)
        );
        Ok(())
    }

    #[test]
    fn write_json_lines_writes_n_lines() -> TestResult {
        let mut out = Vec::new();
        let written = write_json_lines(&SyntheticConfig::default(), 1_000, &mut out)?;
        assert_eq!(written, 1_000);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1_000);
        let limited = SyntheticConfig {
            limit: Some(10),
            ..Default::default()
        };
        assert_eq!(write_json_lines(&limited, 1_000, std::io::sink())?, 10);
        Ok(())
    }

    #[test]
    fn source_as_fast_as_possible_is_a_finite_replay_with_a_limit() -> TestResult {
        let config = SyntheticConfig {
            limit: Some(250),
            ..Default::default()
        };
        let mut source = SyntheticSource::new(config.clone(), 2)?;
        assert_eq!(source.name(), "synthetic:2");
        assert!(source.is_replay());
        let mut out = Vec::new();
        assert_eq!(source.poll(100, &mut out)?, PollStatus::Ready);
        assert_eq!(source.poll(100, &mut out)?, PollStatus::Ready);
        assert_eq!(source.poll(100, &mut out)?, PollStatus::Finished);
        assert_eq!(out.len(), 250);
        assert_eq!(out[0].position.position, "1");
        assert_eq!(out[249].position.position, "250");
        let expected = lines(&config, 2, 250)?;
        assert!(
            out.iter()
                .zip(&expected)
                .all(|(record, line)| &record.bytes == line)
        );
        Ok(())
    }

    #[test]
    fn paced_source_follows_the_wall_clock() -> TestResult {
        let start = 1_800_000_000_000;
        let clock = ManualClock::new(start);
        let config = SyntheticConfig {
            events_per_second: Some(1_000.0),
            ..Default::default()
        };
        let mut source = SyntheticSource::with_clock(config, 0, Box::new(clock.clone()))?;
        assert!(!source.is_replay());
        let mut out = Vec::new();
        // Only what is due at the start (ts = start) is delivered, then the source waits.
        while source.poll(10_000, &mut out)? == PollStatus::Ready {}
        assert_eq!(source.poll(10_000, &mut out)?, PollStatus::Pending);
        let first = out.len();
        assert!(first <= 2, "{first} records before the clock moved");
        clock.advance(1_000);
        while source.poll(10_000, &mut out)? == PollStatus::Ready {}
        let in_one_second = out.len() - first;
        assert!(
            (900..1_100).contains(&in_one_second),
            "{in_one_second} records in 1 s"
        );
        for record in &out {
            let ts = validate(&record.bytes).map_err(|e| e.detail)?.ts;
            assert!(
                (start..=start + 1_000).contains(&ts),
                "ts {ts} tracks the clock"
            );
        }
        Ok(())
    }

    /// Polls until `n` records are out (or the source finishes or waits).
    fn poll_records(source: &mut SyntheticSource, n: usize) -> Result<Vec<RawRecord>, SourceError> {
        let mut out = Vec::new();
        while out.len() < n {
            let max = n - out.len();
            if source.poll(max, &mut out)? != PollStatus::Ready {
                break;
            }
        }
        Ok(out)
    }

    /// `(position, event_id, ts)` of every valid record.
    fn ids_and_times(records: &[RawRecord]) -> Result<Vec<(String, String, u64)>, String> {
        records
            .iter()
            .map(|record| {
                let view = validate(&record.bytes).map_err(|e| e.detail)?;
                let event = Event::from(&view);
                Ok((
                    record.position.position.clone(),
                    event.event_id.to_string(),
                    event.ts,
                ))
            })
            .collect()
    }

    #[test]
    fn resumed_source_continues_positions_without_repeating_event_ids() -> TestResult {
        let config = SyntheticConfig {
            duplicate_share: 0.05,
            out_of_order_share: 0.1,
            limit: Some(9_000),
            ..Default::default()
        };
        let mut before = SyntheticSource::new(config.clone(), 1)?;
        let first = ids_and_times(&poll_records(&mut before, 3_000)?)?;
        assert_eq!(first.len(), 3_000);

        let mut resumed = SyntheticSource::new(config.clone(), 1)?.resume_after(3_000);
        assert_eq!(resumed.name(), "synthetic:1");
        assert!(resumed.is_replay());
        let second = ids_and_times(&poll_records(&mut resumed, 3_000)?)?;
        let positions: Vec<String> = second.iter().map(|r| r.0.clone()).collect();
        let expected: Vec<String> = (3_001..=6_000).map(|p: u64| p.to_string()).collect();
        assert_eq!(positions, expected, "positions go on");

        let ids_before: HashSet<&str> = first.iter().map(|r| r.1.as_str()).collect();
        let ids_after: HashSet<&str> = second.iter().map(|r| r.1.as_str()).collect();
        assert!(ids_before.is_disjoint(&ids_after), "an event id came again");
        assert!(
            ids_after.len() < second.len(),
            "re-sent beacons still share their id within the resumed traffic"
        );

        // Event time goes on from where it was: on time for the restored watermark, not far ahead.
        let max_before = first.iter().map(|r| r.2).max().unwrap_or(0);
        let min_after = second.iter().map(|r| r.2).min().unwrap_or(0);
        assert!(
            min_after + 5_000 > max_before && min_after < max_before + 10_000,
            "resumed at ts {min_after} after {max_before}"
        );

        // The same checkpoint gives the same records; a later one gives ids of its own.
        let again = SyntheticSource::new(config.clone(), 1)?.resume_after(3_000);
        assert_eq!(
            ids_and_times(&poll_records(&mut { again }, 3_000)?)?,
            second
        );
        let mut later = SyntheticSource::new(config.clone(), 1)?.resume_after(6_000);
        let third = ids_and_times(&poll_records(&mut later, 3_000)?)?;
        assert_eq!(third.first().map(|r| r.0.as_str()), Some("6001"));
        assert!(
            third
                .iter()
                .all(|r| !ids_before.contains(r.1.as_str()) && !ids_after.contains(r.1.as_str()))
        );
        // The limit counts the records before the checkpoint too.
        let mut out = Vec::new();
        assert_eq!(later.poll(10, &mut out)?, PollStatus::Finished);
        assert!(out.is_empty());
        assert_eq!(
            SyntheticSource::new(config.clone(), 1)?
                .resume_after(9_000)
                .poll(10, &mut out)?,
            PollStatus::Finished
        );

        // Resuming after nothing is a fresh start.
        let mut fresh = SyntheticSource::new(config, 1)?.resume_after(0);
        let fresh = ids_and_times(&poll_records(&mut fresh, 3_000)?)?;
        assert_eq!(fresh, first);
        Ok(())
    }

    #[test]
    fn resumed_traffic_keeps_the_breaking_news_schedule() -> TestResult {
        let config = SyntheticConfig {
            spike_every: Some(Millis::minutes(1)),
            spike_peak_share: 0.9,
            ..Default::default()
        };
        // 10 simulated minutes in, then 2 more: spikes 0–11 have started by then.
        let mut resumed = SyntheticSource::new(config.clone(), 0)?.resume_after(30_000);
        let records = poll_records(&mut resumed, 6_000)?;
        let planned = config.planned_spikes(config.start_ts + 3_600_000);
        let mut breaking = 0;
        let mut articles = HashSet::new();
        for record in &records {
            let event = Event::from(&validate(&record.bytes).map_err(|e| e.detail)?);
            if !event.article_id.contains("/urgente-") {
                continue;
            }
            breaking += 1;
            articles.insert(event.article_id.to_string());
            let spike = planned
                .iter()
                .find(|spike| *spike.article_id == *event.article_id)
                .ok_or_else(|| format!("{} is not planned", event.article_id))?;
            assert!(
                (spike.start_ts..spike.end_ts).contains(&event.ts),
                "{} read at {} outside its spike {spike:?}",
                event.article_id,
                event.ts
            );
        }
        assert!(breaking > 100, "{breaking} breaking reads");
        // The spikes under way (several overlap), not a schedule started over.
        assert!(articles.len() >= 3, "{articles:?}");
        Ok(())
    }

    #[test]
    fn paced_resumed_source_starts_at_the_wall_clock() -> TestResult {
        let start = 1_800_000_000_000;
        let clock = ManualClock::new(start);
        let config = SyntheticConfig {
            events_per_second: Some(1_000.0),
            ..Default::default()
        };
        let mut before = SyntheticSource::with_clock(config.clone(), 0, Box::new(clock.clone()))?;
        clock.advance(2_000);
        let first = ids_and_times(&poll_records(&mut before, 100_000)?)?;
        let delivered = first.len() as u64;
        assert!((1_900..2_100).contains(&delivered), "{delivered}");

        // Down for an hour, then resumed.
        let restart = start + 3_600_000;
        clock.set(restart);
        let mut resumed = SyntheticSource::with_clock(config, 0, Box::new(clock.clone()))?
            .resume_after(delivered);
        assert!(!resumed.is_replay());
        let mut out = Vec::new();
        while resumed.poll(10_000, &mut out)? == PollStatus::Ready {}
        assert!(
            out.len() <= 2,
            "{} records before the clock moved: a burst",
            out.len()
        );
        clock.advance(1_000);
        while resumed.poll(10_000, &mut out)? == PollStatus::Ready {}
        assert!(
            (900..1_100).contains(&out.len()),
            "{} records in 1 s",
            out.len()
        );
        let second = ids_and_times(&out)?;
        assert_eq!(second[0].0, (delivered + 1).to_string());
        let ids_before: HashSet<&str> = first.iter().map(|r| r.1.as_str()).collect();
        for (position, id, ts) in &second {
            assert!(
                !ids_before.contains(id.as_str()),
                "{id} at {position} came again"
            );
            assert!(
                (restart..=restart + 1_000).contains(ts),
                "ts {ts} tracks the clock after the restart"
            );
        }
        Ok(())
    }

    #[test]
    fn config_validation_lists_every_problem() -> TestResult {
        let config = SyntheticConfig {
            portals: vec!["G1".into(), "ok".into(), "ok".into()],
            users: 0,
            duplicate_share: 1.5,
            simulated_events_per_second: 0.0,
            ..Default::default()
        };
        match config.validate() {
            Err(ConnectorError::InvalidConfig { problems, .. }) => {
                assert_eq!(problems.len(), 5, "{problems:?}")
            }
            other => return Err(format!("{other:?}").into()),
        }
        let parsed: SyntheticConfig =
            serde_json::from_str(r#"{"seed": 3, "spike_every": "20m", "limit": 5}"#)?;
        assert_eq!(parsed.seed, 3);
        assert_eq!(parsed.spike_every, Some(Millis::minutes(20)));
        assert_eq!(parsed.portals, SyntheticConfig::default().portals);
        assert!(serde_json::from_str::<SyntheticConfig>(r#"{"sead": 3}"#).is_err());
        Ok(())
    }

    proptest! {
        #[test]
        fn json_strings_round_trip(text in "\\PC*|[\\x00-\\x1f\"\\\\]{0,10}") {
            let mut out = Vec::new();
            write_json_string(&mut out, &text);
            let back: String = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, text);
        }
    }
}
