//! The job's configuration: a TOML file, then `PAGEFLOW__SECTION__KEY=value` environment overrides,
//! validated as a whole at start-up so that every problem is reported at once.
//!
//! ```toml
//! [semantics]            # what is computed: every default of SEMANTICS.md (see its docs)
//! session_gap = "30m"
//!
//! [source]               # where pageviews come from
//! kind = "synthetic"     # or "files", or "kinesis" (see [source.kinesis] below)
//! events_per_second = 2000
//!
//! [sinks]
//! kind = "local"         # or "aws": features to Kinesis, archive through Firehose
//! dir = "./pageflow-data"
//!
//! [aws]                  # only for kind = "kinesis" / "aws"; credentials from the usual chain
//! region = "sa-east-1"
//!
//! [serve]
//! listen = "127.0.0.1:8080"
//!
//! [serve.auth]           # per route group: "open" (default), "api_key", "jwt", "api_key_or_jwt"
//! rankings = "api_key"   # also recommendations, dashboard, metrics (see serve::auth)
//! [[serve.auth.api_keys]]
//! name = "g1-frontend"
//! sha256 = "…"           # printf %s KEY | sha256sum; optional per_second, burst, groups
//! [serve.auth.jwt]       # an Amazon Cognito user pool; optional jwks_url or jwks_file
//! issuer = "https://cognito-idp.sa-east-1.amazonaws.com/sa-east-1_AbCdEf123"
//! token_use = "access"   # or "id"
//! client_ids = ["1example23456789"]
//!
//! [serve.rate_limit]     # a token bucket per API key, token subject or client address
//! enabled = true         # off by default
//! per_second = 50.0
//! burst = 100
//!
//! [serve.cors]           # the portals' pages that may call the API from a browser
//! allowed_origins = ["https://g1.globo.com"]
//!
//! [runtime]
//! workers = 2
//!
//! [checkpoint]           # state and source positions saved together; restored at start
//! interval = "30s"
//! store = "local"        # or "s3" with bucket = "…", prefix = "pageflow/checkpoints"
//! ```
//!
//! An override such as `PAGEFLOW__SEMANTICS__TOP_N=20` sets `semantics.top_n`; values are read as
//! TOML (`20`, `true`, `"10m"`), and anything that does not parse as TOML is taken as a string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pageflow_connectors::aws::AwsConfig;
use pageflow_dataflow::config::{Millis, SemanticsConfig};
use serde::{Deserialize, Serialize};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "PAGEFLOW__";

/// Everything `pageflow run` needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// What the job computes.
    pub semantics: SemanticsConfig,
    /// Where pageviews come from.
    pub source: SourceConfig,
    /// Where results go.
    pub sinks: SinksConfig,
    /// The HTTP serving layer.
    pub serve: ServeConfig,
    /// Threads and processes.
    pub runtime: RuntimeConfig,
    /// Where the AWS APIs are (AWS mode only): `region`, `endpoint_url`, `kinesis_endpoint_url`.
    pub aws: AwsConfig,
    /// Checkpoints of the dataflow's state and source positions.
    pub checkpoint: CheckpointConfig,
    /// How recommendations are blended, and how much of each reader's history is kept.
    pub recommendations: RecommendationsConfig,
    /// Amazon Personalize: campaigns for recommendations and event trackers fed by the job.
    pub personalize: PersonalizeConfig,
}

/// The `[personalize]` section: per portal, a campaign or recommender that
/// `GET /v1/users/{user_id}/recommendations` asks, and an event tracker the job forwards every
/// counted pageview to. Region, endpoint and credentials come from `[aws]` and the usual chain.
///
/// ```toml
/// [personalize]
/// timeout = "150ms"
///
/// [personalize.portals.g1]
/// campaign_arn = "arn:aws:personalize:sa-east-1:123456789012:campaign/g1-articles"
/// filter_arn = "arn:aws:personalize:sa-east-1:123456789012:filter/g1-fresh"   # optional
/// tracking_id = "a1b2c3d4-…"   # optional: forward pageviews with PutEvents
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonalizeConfig {
    /// The budget of one `GetRecommendations` call; past it the answer comes from pageflow alone.
    pub timeout: Option<Millis>,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: Option<u32>,
    /// How long an open breaker skips Personalize before it tries again.
    pub breaker_open_for: Option<Millis>,
    /// Per portal: what to ask and where to send events.
    pub portals: std::collections::BTreeMap<String, PortalPersonalize>,
    /// How pageviews are forwarded to the event trackers.
    pub events: PersonalizeEventsConfig,
}

/// One portal's Personalize resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortalPersonalize {
    /// A custom campaign to ask (`arn:aws:personalize:…:campaign/…`).
    pub campaign_arn: Option<String>,
    /// Or a domain recommender (`arn:aws:personalize:…:recommender/…`).
    pub recommender_arn: Option<String>,
    /// An optional filter (`arn:aws:personalize:…:filter/…`).
    pub filter_arn: Option<String>,
    /// Values of the filter's placeholders, as Personalize expects them (e.g. `"\"g1\""`).
    pub filter_values: std::collections::BTreeMap<String, String>,
    /// The event tracker's tracking id: every counted pageview of the portal is sent to it.
    pub tracking_id: Option<String>,
}

/// `[personalize.events]`: forwarding pageviews with `PutEvents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonalizeEventsConfig {
    /// `PutEvents` calls per second, per tracker (the service allows 1,000 by default).
    pub requests_per_second: f64,
    /// Events waiting to be sent; when full, new ones are dropped and counted, never waited for.
    pub queue: usize,
    /// How long a reader's events wait for company before they are sent (up to 10 per call).
    pub linger: Millis,
    /// Attempts per call before its events are counted as failed.
    pub max_attempts: u32,
}

impl Default for PersonalizeEventsConfig {
    fn default() -> Self {
        let defaults = pageflow_connectors::personalize::ForwarderConfig::default();
        PersonalizeEventsConfig {
            requests_per_second: defaults.requests_per_second,
            queue: defaults.queue_capacity,
            linger: Millis(u64::try_from(defaults.linger.as_millis()).unwrap_or(u64::MAX)),
            max_attempts: defaults.max_attempts,
        }
    }
}

impl PersonalizeConfig {
    /// Whether any portal asks Personalize for recommendations.
    pub fn recommends(&self) -> bool {
        self.portals
            .values()
            .any(|p| p.campaign_arn.is_some() || p.recommender_arn.is_some())
    }

    /// Whether any portal forwards its events.
    pub fn forwards_events(&self) -> bool {
        self.portals.values().any(|p| p.tracking_id.is_some())
    }

    /// The recommender's settings (defaults where not set).
    pub fn recommender(&self) -> pageflow_connectors::personalize::RecommenderConfig {
        let mut config = pageflow_connectors::personalize::RecommenderConfig::default();
        if let Some(timeout) = self.timeout {
            config.timeout = timeout.into();
        }
        if let Some(failures) = self.breaker_failures {
            config.breaker.failure_threshold = failures;
        }
        if let Some(open_for) = self.breaker_open_for {
            config.breaker.open_for = open_for.into();
        }
        config
    }

    /// The forwarder's settings.
    pub fn forwarder(&self) -> pageflow_connectors::personalize::ForwarderConfig {
        pageflow_connectors::personalize::ForwarderConfig {
            requests_per_second: self.events.requests_per_second,
            queue_capacity: self.events.queue,
            linger: self.events.linger.into(),
            max_attempts: self.events.max_attempts,
            ..pageflow_connectors::personalize::ForwarderConfig::default()
        }
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if let Some(timeout) = self.timeout
            && !(10..=10_000).contains(&timeout.ms())
        {
            problems.push(format!(
                "[personalize] `timeout` = {timeout} must be between 10ms and 10s (the endpoint answers within it, Personalize or not), e.g. `150ms`"
            ));
        }
        if self.breaker_failures == Some(0) {
            problems.push("[personalize] `breaker_failures` must be at least 1, e.g. 5".into());
        }
        if self.breaker_open_for.is_some_and(|d| d.ms() == 0) {
            problems.push("[personalize] `breaker_open_for` must be positive, e.g. `10s`".into());
        }
        let events = &self.events;
        if !(events.requests_per_second.is_finite() && events.requests_per_second > 0.0) {
            problems.push(format!(
                "[personalize.events] `requests_per_second` = {} must be a positive number (the service allows 1000 per tracker), e.g. 500",
                events.requests_per_second
            ));
        }
        if events.queue == 0 {
            problems.push("[personalize.events] `queue` must be at least 1, e.g. 10000".into());
        }
        if events.max_attempts == 0 {
            problems.push("[personalize.events] `max_attempts` must be at least 1, e.g. 5".into());
        }
        for (portal, resources) in &self.portals {
            let at = format!("[personalize.portals.{portal}]");
            if !pageflow_dataflow::event::is_valid_portal(portal) {
                problems.push(format!(
                    "{at}: {portal:?} is not a portal name: use lowercase letters, digits or '-'"
                ));
            }
            let arn_problem = |key: &str, value: &Option<String>, kind: &str| {
                value.as_ref().and_then(|arn| {
                    (!(arn.starts_with("arn:") && arn.contains(&format!(":{kind}/")))).then(|| {
                        format!(
                            "{at} `{key}` = {arn:?} is not a Personalize {kind} ARN: copy it from the console or `aws personalize list-{kind}s` (arn:aws:personalize:REGION:ACCOUNT:{kind}/NAME)"
                        )
                    })
                })
            };
            problems.extend(arn_problem(
                "campaign_arn",
                &resources.campaign_arn,
                "campaign",
            ));
            problems.extend(arn_problem(
                "recommender_arn",
                &resources.recommender_arn,
                "recommender",
            ));
            problems.extend(arn_problem("filter_arn", &resources.filter_arn, "filter"));
            if resources.campaign_arn.is_some() && resources.recommender_arn.is_some() {
                problems.push(format!(
                    "{at} sets both `campaign_arn` and `recommender_arn`: keep the one to ask"
                ));
            }
            if resources.filter_arn.is_none() && !resources.filter_values.is_empty() {
                problems.push(format!(
                    "{at} has `filter_values` without `filter_arn`: set the filter they belong to, or remove them"
                ));
            }
            if resources.tracking_id.as_deref().is_some_and(str::is_empty) {
                problems.push(format!(
                    "{at} `tracking_id` is empty: copy the event tracker's tracking id, or remove the key"
                ));
            }
        }
    }
}

/// The `[recommendations]` section: the blend of `GET /v1/users/{user_id}/recommendations` and the
/// readers' recent articles it builds on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecommendationsConfig {
    /// Share of the positions for articles read together with the reader's recent reads (0 to 1).
    pub related_share: f64,
    /// Share of the positions for the portal's trending articles (0 to 1); Personalize gets
    /// `1 − related_share − trending_share`.
    pub trending_share: f64,
    /// Recent articles kept per reader and portal (also the "already read" filter).
    pub reads_per_user: usize,
    /// A reader is forgotten this long (event time) after their latest read.
    pub reader_ttl: Millis,
    /// At most this many `(portal, reader)` pairs are held; the least recently active go first.
    pub max_readers: usize,
}

impl Default for RecommendationsConfig {
    fn default() -> Self {
        RecommendationsConfig {
            related_share: 0.3,
            trending_share: 0.2,
            reads_per_user: 10,
            reader_ttl: Millis::hours(24),
            max_readers: 1_000_000,
        }
    }
}

impl RecommendationsConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        for (key, share) in [
            ("related_share", self.related_share),
            ("trending_share", self.trending_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                problems.push(format!(
                    "[recommendations] `{key}` = {share} must be between 0 and 1, e.g. 0.3"
                ));
            }
        }
        if self.related_share + self.trending_share > 1.0 {
            problems.push(format!(
                "[recommendations] `related_share` + `trending_share` = {} is more than 1: lower them so Personalize keeps a share",
                self.related_share + self.trending_share
            ));
        }
        if self.reads_per_user == 0 || self.reads_per_user > 100 {
            problems.push(format!(
                "[recommendations] `reads_per_user` must be between 1 and 100, not {}",
                self.reads_per_user
            ));
        }
        if self.reader_ttl.ms() == 0 {
            problems.push("[recommendations] `reader_ttl` must be positive, e.g. `24h`".into());
        }
        if self.max_readers < 10 {
            problems.push(format!(
                "[recommendations] `max_readers` must be at least 10, not {}",
                self.max_readers
            ));
        }
    }

    /// The limits of the readers' recent articles.
    pub fn read_limits(&self) -> crate::serve::recent_reads::RecentReadsLimits {
        crate::serve::recent_reads::RecentReadsLimits {
            per_user: self.reads_per_user,
            ttl_ms: self.reader_ttl.ms(),
            max_users: self.max_readers,
        }
    }

    /// The blend's shares.
    pub fn shares(&self) -> crate::serve::blend::BlendShares {
        crate::serve::blend::BlendShares {
            related: self.related_share,
            trending: self.trending_share,
        }
    }
}

/// Where checkpoints are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStoreKind {
    /// A local directory (`dir`), written atomically.
    #[default]
    Local,
    /// An S3 bucket (`bucket`, `prefix`), written with conditional writes; endpoint and region
    /// from `[aws]`.
    S3,
}

/// The `[checkpoint]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Take checkpoints and restore from the newest good one at start.
    pub enabled: bool,
    /// Processing time between two checkpoints.
    pub interval: Millis,
    /// `local` or `s3`.
    pub store: CheckpointStoreKind,
    /// Local store: the directory (default: `checkpoints/` under `[sinks] dir`).
    pub dir: Option<PathBuf>,
    /// S3 store: the bucket.
    pub bucket: String,
    /// S3 store: the key prefix.
    pub prefix: String,
    /// Committed checkpoints kept (older ones are deleted).
    pub keep: usize,
    /// On SIGTERM/SIGINT: the longest the final checkpoint and the sink flush may take before
    /// the job exits anyway (keep it below ECS's `stopTimeout`, 30 s by default).
    pub stop_timeout: Millis,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            enabled: true,
            interval: Millis::seconds(30),
            store: CheckpointStoreKind::Local,
            dir: None,
            bucket: String::new(),
            prefix: "pageflow/checkpoints".to_string(),
            keep: 3,
            stop_timeout: Millis::seconds(25),
        }
    }
}

impl CheckpointConfig {
    /// The local store's directory.
    pub fn local_dir(&self, sinks: &SinksConfig) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| sinks.dir.join("checkpoints"))
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        if self.interval.ms() < 10 {
            problems.push(format!(
                "[checkpoint] `interval` must be at least 10ms, e.g. `30s`, not {}ms",
                self.interval.ms()
            ));
        }
        if self.keep == 0 {
            problems.push(
                "[checkpoint] `keep` must be at least 1 (the newest checkpoint is what a restart uses)"
                    .to_string(),
            );
        }
        if self.store == CheckpointStoreKind::S3 && self.bucket.is_empty() {
            problems.push(
                "[checkpoint] `bucket` must name the S3 bucket when `store = \"s3\"`".to_string(),
            );
        }
        if self.stop_timeout.ms() == 0 {
            problems.push(
                "[checkpoint] `stop_timeout` must be positive, e.g. `25s` (below ECS stopTimeout)"
                    .to_string(),
            );
        }
    }
}

/// Which source feeds the job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Built-in synthetic news traffic (the embedded default).
    #[default]
    Synthetic,
    /// JSON-lines files, one partition each.
    Files,
    /// Amazon Kinesis Data Streams, one per portal, every shard a partition (`[source.kinesis]`).
    Kinesis,
}

/// The source section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// `synthetic` or `files`.
    pub kind: SourceKind,
    /// Synthetic: total events per second of wall-clock time, over all partitions.
    pub events_per_second: f64,
    /// Synthetic: the random seed (the same seed gives the same traffic).
    pub seed: u64,
    /// Synthetic: the portals to simulate.
    pub portals: Vec<String>,
    /// Synthetic: independent generator partitions (spread over the workers).
    pub partitions: usize,
    /// Synthetic: distinct readers per partition; by default enough for the partition's rate
    /// (750 per event per second, at least 50,000), so that readers' sessions stay apart.
    pub users: Option<u32>,
    /// Synthetic: simulated time instead of the wall clock: event time starts at `start_ts` and
    /// advances at `events_per_second` while the job reads as fast as it can (a day of traffic in
    /// minutes, as a backlog would be read).
    pub simulated: bool,
    /// Synthetic, simulated: the event time of the first event (ms since the epoch).
    pub start_ts: Option<u64>,
    /// Synthetic: stop after this many events over all partitions (the input then ends).
    pub limit: Option<u64>,
    /// Files: the JSON-lines files to read, one partition each.
    pub paths: Vec<PathBuf>,
    /// Kinesis: the streams and how to read them.
    pub kinesis: KinesisSourceSection,
}

/// How shards without a saved position start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPositionName {
    /// The oldest record still retained.
    #[default]
    TrimHorizon,
    /// Only records written after the job starts.
    Latest,
    /// Records written at or after `start_timestamp_ms`.
    AtTimestamp,
}

/// How a stream is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// `GetRecords`: 5 calls/s and 2 MB/s per shard, shared with every other polling consumer.
    #[default]
    Polling,
    /// Enhanced fan-out (`SubscribeToShard`): a dedicated 2 MB/s per shard for this consumer.
    EnhancedFanOut,
}

/// One portal's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalStream {
    /// The portal, e.g. `g1`.
    pub portal: String,
    /// The stream's name or ARN.
    pub stream: String,
    /// `polling` (default) or `enhanced_fan_out`.
    #[serde(default)]
    pub read: ReadMode,
    /// Enhanced fan-out: the stream consumer to register or reuse (never deregistered).
    #[serde(default = "default_consumer_name")]
    pub consumer_name: String,
}

fn default_consumer_name() -> String {
    "pageflow".to_string()
}

/// The `[source.kinesis]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KinesisSourceSection {
    /// The portals' streams: `[[source.kinesis.streams]]` tables.
    pub streams: Vec<PortalStream>,
    /// Where shards without a saved position start: `trim_horizon`, `latest`, `at_timestamp`.
    pub start_position: StartPositionName,
    /// With `at_timestamp`: ms since the epoch.
    pub start_timestamp_ms: Option<u64>,
    /// How often to look for new shards (also done whenever a shard closes).
    pub discovery_interval: Millis,
    /// The least time between two `GetRecords` calls on one shard (Kinesis allows 5 per second per
    /// shard, shared by every polling consumer of the stream).
    pub poll_interval: Millis,
    /// Records per `GetRecords` call (at most 10,000).
    pub max_records: i32,
    /// Batches buffered per shard before its reader waits for the dataflow.
    pub buffered_batches: usize,
    /// End every shard once it is read up to its tip, and the job with them (backfills, tests).
    pub stop_at_latest: bool,
}

impl Default for KinesisSourceSection {
    fn default() -> Self {
        KinesisSourceSection {
            streams: Vec::new(),
            start_position: StartPositionName::TrimHorizon,
            start_timestamp_ms: None,
            discovery_interval: Millis::seconds(60),
            poll_interval: Millis(200),
            max_records: 10_000,
            buffered_batches: 4,
            stop_at_latest: false,
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Synthetic,
            events_per_second: 2_000.0,
            seed: 42,
            portals: vec!["g1".into(), "ge".into(), "gshow".into()],
            partitions: 2,
            users: None,
            simulated: false,
            start_ts: None,
            limit: None,
            paths: Vec::new(),
            kinesis: KinesisSourceSection::default(),
        }
    }
}

/// Where results go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinksKind {
    /// Files under `dir` (the embedded default).
    #[default]
    Local,
    /// Features to a Kinesis stream (`[sinks.kinesis]`), the archive through Firehose
    /// (`[sinks.firehose]`).
    Aws,
}

/// The sinks section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksConfig {
    /// `local` or `aws`.
    pub kind: SinksKind,
    /// The local directory for features, dead letters and the archive; in AWS mode, for records no
    /// service would take (`undeliverable.jsonl`).
    pub dir: PathBuf,
    /// Also write the layered archive (`raw/`, `processed/`, `dead-letter/`).
    pub archive: bool,
    /// AWS: the features stream.
    pub kinesis: FeaturesStreamSection,
    /// AWS: the archive's delivery streams.
    pub firehose: FirehoseSection,
    /// AWS: the longest a record waits in the sink before it is sent.
    pub max_batch_delay: Millis,
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig {
            kind: SinksKind::Local,
            dir: PathBuf::from("./pageflow-data"),
            archive: true,
            kinesis: FeaturesStreamSection::default(),
            firehose: FirehoseSection::default(),
            max_batch_delay: Millis(500),
        }
    }
}

/// The `[sinks.kinesis]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesStreamSection {
    /// The features stream's name or ARN (read by the ML team).
    pub stream: String,
}

/// The `[sinks.firehose]` section: one delivery stream per archive layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirehoseSection {
    /// Valid records as received (`raw/`).
    pub raw: String,
    /// Features (`processed/`).
    pub processed: String,
    /// Dead letters (`dead-letter/`).
    pub dead_letter: String,
}

/// The serving section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// The address to listen on.
    pub listen: String,
    /// How often the live view previews the windows still filling (processing time).
    pub live_interval: Millis,
    /// Who may call which route group: API keys, Cognito tokens (`[serve.auth]`).
    pub auth: crate::serve::auth::AuthConfig,
    /// Rate limits per caller (`[serve.rate_limit]`).
    pub rate_limit: crate::serve::rate_limit::RateLimitConfig,
    /// Which web origins may call the API from a browser (`[serve.cors]`).
    pub cors: crate::serve::cors::CorsConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            live_interval: Millis::seconds(1),
            auth: crate::serve::auth::AuthConfig::default(),
            rate_limit: crate::serve::rate_limit::RateLimitConfig::default(),
            cors: crate::serve::cors::CorsConfig::default(),
        }
    }
}

/// The runtime section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Timely worker threads in this process.
    pub workers: usize,
    /// Watermark alignment: a source partition more than this much event time ahead of the job
    /// watermark is not read until the others catch up, so that catching up on a backlog does
    /// not pile events up in the windows; `0` turns it off. Results are the same either way.
    pub watermark_alignment: Millis,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 2,
            watermark_alignment: Millis(
                pageflow_dataflow::algorithms::graph::DEFAULT_WATERMARK_ALIGNMENT_MS,
            ),
        }
    }
}

/// Loads the configuration from an optional file and the environment, and validates all of it.
///
/// On failure, returns every problem found, each naming the key and what to do.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<JobConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut table = match file {
        None => toml::Table::new(),
        Some(path) => match std::fs::read_to_string(path) {
            Err(error) => {
                return Err(vec![format!(
                    "cannot read the config file {}: {error}; check the path given to --config",
                    path.display()
                )]);
            }
            Ok(text) => match text.parse::<toml::Table>() {
                Ok(table) => table,
                Err(error) => {
                    return Err(vec![format!(
                        "{} is not valid TOML: {error}",
                        path.display()
                    )]);
                }
            },
        },
    };
    for (name, value) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if let Err(problem) = set_path(&mut table, &keys, parse_env_value(&value)) {
            problems.push(format!("{name}: {problem}"));
        }
    }

    // Each section is read on its own so that a mistake in one does not hide those in the others.
    let mut config = JobConfig::default();
    macro_rules! section {
        ($name:literal, $field:ident) => {
            if let Some(value) = table.remove($name) {
                match value.try_into() {
                    Ok(section) => config.$field = section,
                    Err(error) => {
                        problems.push(format!("[{}]: {}", $name, error.to_string().trim()))
                    }
                }
            }
        };
    }
    section!("semantics", semantics);
    section!("source", source);
    section!("sinks", sinks);
    section!("serve", serve);
    section!("runtime", runtime);
    section!("aws", aws);
    section!("checkpoint", checkpoint);
    section!("recommendations", recommendations);
    section!("personalize", personalize);
    for unknown in table.keys() {
        problems.push(format!(
            "unknown section `[{unknown}]`: the sections are semantics, source, sinks, serve, runtime, aws, checkpoint, recommendations, personalize"
        ));
    }
    problems.extend(config.validate());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

impl JobConfig {
    /// Checks the values (not the syntax) and returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .semantics
            .validate()
            .into_iter()
            .map(|p| format!("[semantics] {p}"))
            .collect();
        if self.runtime.workers == 0 || self.runtime.workers > 256 {
            problems.push(format!(
                "[runtime] `workers` must be between 1 and 256, not {}",
                self.runtime.workers
            ));
        }
        if self.serve.enabled && self.serve.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "[serve] `listen` = `{}` is not an address: write e.g. `127.0.0.1:8080` or `0.0.0.0:8080`",
                self.serve.listen
            ));
        }
        if self.serve.live_interval.ms() == 0 {
            problems.push("[serve] `live_interval` must be positive, e.g. `1s`".to_string());
        }
        self.serve.auth.validate(&mut problems);
        self.serve.rate_limit.validate(&mut problems);
        self.serve.cors.validate(&mut problems);
        if !self.serve.rate_limit.enabled {
            for key in &self.serve.auth.api_keys {
                if key.per_second.is_some() || key.burst.is_some() {
                    problems.push(format!(
                        "[[serve.auth.api_keys]] `{}` has its own rate limit, but limits are off: set [serve.rate_limit] enabled = true, or remove `per_second`/`burst`",
                        key.name
                    ));
                }
            }
        }
        self.checkpoint.validate(&mut problems);
        self.recommendations.validate(&mut problems);
        self.personalize.validate(&mut problems);
        match self.source.kind {
            SourceKind::Synthetic => {
                if !(self.source.events_per_second > 0.0
                    && self.source.events_per_second.is_finite())
                {
                    problems
                        .push("[source] `events_per_second` must be a positive number".to_string());
                }
                if self.source.portals.is_empty() {
                    problems.push("[source] `portals` must list at least one portal".to_string());
                }
                if self.source.partitions == 0 {
                    problems.push("[source] `partitions` must be at least 1".to_string());
                }
                if self.source.users == Some(0) {
                    problems.push(
                        "[source] `users` must be at least 1 (or absent: enough for the rate)"
                            .to_string(),
                    );
                }
                if self.source.start_ts.is_some() && !self.source.simulated {
                    problems.push(
                        "[source] `start_ts` only applies with `simulated = true` (paced traffic follows the wall clock)"
                            .to_string(),
                    );
                }
            }
            SourceKind::Files => {
                if self.source.paths.is_empty() {
                    problems.push(
                        "[source] kind = \"files\" needs `paths`, the JSON-lines files to read"
                            .to_string(),
                    );
                }
            }
            SourceKind::Kinesis => problems.extend(self.source.kinesis.validate()),
        }
        if self.sinks.kind == SinksKind::Aws {
            if self.sinks.kinesis.stream.trim().is_empty() {
                problems.push(
                    "[sinks.kinesis] `stream` is empty: name the features stream (or set [sinks] kind = \"local\")"
                        .to_string(),
                );
            }
            if self.sinks.archive {
                for (key, value) in [
                    ("raw", &self.sinks.firehose.raw),
                    ("processed", &self.sinks.firehose.processed),
                    ("dead_letter", &self.sinks.firehose.dead_letter),
                ] {
                    if value.trim().is_empty() {
                        problems.push(format!(
                            "[sinks.firehose] `{key}` is empty: name its delivery stream, or set [sinks] archive = false"
                        ));
                    }
                }
            }
            if self.sinks.max_batch_delay.ms() == 0 {
                problems
                    .push("[sinks] `max_batch_delay` must be positive, e.g. `500ms`".to_string());
            }
        }
        for (key, url) in [
            ("endpoint_url", &self.aws.endpoint_url),
            ("kinesis_endpoint_url", &self.aws.kinesis_endpoint_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                problems.push(format!(
                    "[aws] `{key}` = `{url}` is not a URL: write e.g. `http://127.0.0.1:5000`"
                ));
            }
        }
        problems
    }
}

impl KinesisSourceSection {
    /// Checks the Kinesis source's values and returns every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.streams.is_empty() {
            problems.push(
                "[source] kind = \"kinesis\" needs at least one [[source.kinesis.streams]] with `portal` and `stream`"
                    .to_string(),
            );
        }
        let mut portals = std::collections::BTreeSet::new();
        for (index, stream) in self.streams.iter().enumerate() {
            let at = format!("[[source.kinesis.streams]] #{}", index + 1);
            if !pageflow_dataflow::event::is_valid_portal(&stream.portal) {
                problems.push(format!(
                    "{at}: `portal` = `{}` is not a portal name: lowercase letters, digits and `-`, at most 32 characters, as in the pageview schema",
                    stream.portal
                ));
            }
            if !portals.insert(stream.portal.as_str()) {
                problems.push(format!(
                    "{at}: portal `{}` is listed twice; give each portal one stream",
                    stream.portal
                ));
            }
            if stream.stream.trim().is_empty() {
                problems.push(format!(
                    "{at}: `stream` is empty: write the stream's name or ARN"
                ));
            }
            if stream.read == ReadMode::EnhancedFanOut && stream.consumer_name.trim().is_empty() {
                problems.push(format!(
                    "{at}: `consumer_name` is empty: enhanced fan-out registers a consumer under this name"
                ));
            }
        }
        if self.start_position == StartPositionName::AtTimestamp
            && self.start_timestamp_ms.is_none()
        {
            problems.push(
                "[source.kinesis] start_position = \"at_timestamp\" needs `start_timestamp_ms` (ms since the epoch)"
                    .to_string(),
            );
        }
        if self.discovery_interval.ms() < 1_000 {
            problems.push(
                "[source.kinesis] `discovery_interval` must be at least `1s`: ListShards is limited per account"
                    .to_string(),
            );
        }
        if self.poll_interval.ms() < 200 {
            problems.push(format!(
                "[source.kinesis] `poll_interval` = {} is below 200ms: Kinesis allows 5 GetRecords calls per second per shard, shared by all consumers",
                self.poll_interval
            ));
        }
        if !(1..=10_000).contains(&self.max_records) {
            problems.push(format!(
                "[source.kinesis] `max_records` must be between 1 and 10000, not {}",
                self.max_records
            ));
        }
        if self.buffered_batches == 0 {
            problems.push("[source.kinesis] `buffered_batches` must be at least 1".to_string());
        }
        problems
    }
}

fn parse_env_value(text: &str) -> toml::Value {
    // `key = <text>` parses for numbers, booleans, quoted strings, arrays; anything else is a string.
    format!("value = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("no key after the PAGEFLOW__ prefix".to_string()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("`{first}` is a value, not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(load(None, Vec::new()), Ok(JobConfig::default()));
    }

    #[test]
    fn environment_overrides_the_file_and_durations_parse() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pageflow.toml");
        std::fs::write(
            &path,
            "[semantics]\ntop_n = 7\nsession_gap = \"20m\"\n[runtime]\nworkers = 3\n",
        )?;
        let env = vec![
            ("PAGEFLOW__SEMANTICS__TOP_N".to_string(), "9".to_string()),
            (
                "PAGEFLOW__SERVE__LISTEN".to_string(),
                "127.0.0.1:9999".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = load(Some(&path), env).map_err(|p| p.join("\n"))?;
        assert_eq!(config.semantics.top_n, 9);
        assert_eq!(config.semantics.session_gap.ms(), 20 * 60_000);
        assert_eq!(config.runtime.workers, 3);
        assert_eq!(config.serve.listen, "127.0.0.1:9999");
        Ok(())
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let env = vec![
            ("PAGEFLOW__SEMANTICS__TOP_N".to_string(), "0".to_string()),
            (
                "PAGEFLOW__SEMANTICS__SLIDE".to_string(),
                "\"7 parsecs\"".to_string(),
            ),
            ("PAGEFLOW__RUNTIME__WORKERS".to_string(), "0".to_string()),
            (
                "PAGEFLOW__SERVE__LISTEN".to_string(),
                "not-an-address".to_string(),
            ),
            ("PAGEFLOW__NOPE__X".to_string(), "1".to_string()),
        ];
        let problems = load(None, env).err().unwrap_or_default();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("[semantics]") && p.contains("parsecs")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("workers")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("listen")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("[nope]")),
            "{problems:#?}"
        );
    }

    #[test]
    fn recommendation_and_personalize_problems_are_reported_together() {
        let toml = r#"
            [recommendations]
            related_share = 0.8
            trending_share = 0.4
            reads_per_user = 0

            [personalize]
            timeout = "5ms"

            [personalize.portals.g1]
            campaign_arn = "arn:aws:personalize:us-east-1:1:campaign/a"
            recommender_arn = "arn:aws:personalize:us-east-1:1:recommender/b"
            filter_values = { PORTAL = '"g1"' }

            [personalize.portals.G2]
            campaign_arn = "not-an-arn"

            [[serve.auth.api_keys]]
            name = "g1-frontend"
            sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
            per_second = 10.0
        "#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pageflow.toml");
        std::fs::write(&path, toml).unwrap();
        let problems = load(Some(&path), Vec::new()).err().unwrap_or_default();
        for needle in [
            "`related_share` + `trending_share`",
            "`reads_per_user`",
            "[personalize] `timeout`",
            "sets both `campaign_arn` and `recommender_arn`",
            "`filter_values` without `filter_arn`",
            "\"G2\" is not a portal name",
            "\"not-an-arn\" is not a Personalize campaign ARN",
            "limits are off",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:#?}"
            );
        }
    }
}
