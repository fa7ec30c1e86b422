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
//! curated = true         # the Parquet lake under dir/curated/ (default: on for local sinks)
//!
//! [sinks.curated]        # instead of `curated = …`: AWS mode also uploads the committed files
//! bucket = "my-archive"  # to s3://bucket/<prefix>curated/… (on by default once a bucket is set)
//! prefix = "lake"       # (optional)
//!
//! [sinks.retention]      # local sinks: the archive and features files are kept within both
//! max_bytes = "4GiB"     # oldest closed files go first; the file being written never does
//! max_age = "7d"
//!
//! [aws]                  # only for kind = "kinesis" / "aws"; credentials from the usual chain
//! region = "sa-east-1"
//!
//! [serve]
//! listen = "127.0.0.1:8080"
//!
//! [serve.auth]           # per route group: "open" (default), "api_key", "jwt", "api_key_or_jwt"
//! rankings = "api_key"   # also recommendations, dashboard, metrics (see pageflow_serve::auth)
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
//!
//! [metrics.emf]          # CloudWatch embedded-metric-format lines on standard output
//! enabled = true         # off by default (see pageflow_metrics::emf)
//! interval = "60s"
//! namespace = "Pageflow"
//! environment = "prod"   # the `Environment` dimension
//!
//! [collect]              # `pageflow collect` only: listen, [[collect.portals]], spool_dir,
//!                        # [collect.rate_limit] (see commands::collect::config)
//!
//! [log]                  # the tracing log on standard error
//! format = "json"        # or "text" (the default)
//! level = "info"         # a tracing filter, e.g. "info,pageflow=debug"; RUST_LOG wins
//! ```
//!
//! An override such as `PAGEFLOW__SEMANTICS__TOP_N=20` sets `semantics.top_n`; values are read as
//! TOML (`20`, `true`, `"10m"`), and anything that does not parse as TOML is taken as a string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pageflow_connectors::aws::AwsConfig;
use pageflow_dataflow::config::{Millis, SemanticsConfig};
pub use pageflow_serve::config::{
    PersonalizeConfig, PersonalizeEventsConfig, PortalPersonalize, RecommendationsConfig,
    ServeConfig,
};
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
    /// The processes that together run the dataflow (none: one process).
    pub cluster: crate::cluster::ClusterConfig,
    /// Metrics pushed out by the job itself (CloudWatch EMF lines).
    pub metrics: MetricsConfig,
    /// The log's format and level.
    pub log: LogConfig,
    /// How `pageflow serve` (the read-only serving tier) reads the features stream.
    pub serving_tier: ServingTierConfig,
    /// What `pageflow collect` listens on and collects (checked by that command only).
    pub collect: crate::commands::collect::config::CollectConfig,
}

/// The `[serving_tier]` section: how `pageflow serve` reads the features stream
/// (`[sinks.kinesis] stream`) it serves from (see `commands::serve`). `pageflow run` ignores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingTierConfig {
    /// Where the stream is read from: `trim_horizon` (default: everything the stream retains, so
    /// a new task has the last day's rankings and related lists), `latest`, `at_timestamp`.
    pub start_position: StartPositionName,
    /// With `at_timestamp`: ms since the epoch.
    pub start_timestamp_ms: Option<u64>,
    /// How often to look for new shards (also done whenever a shard closes).
    pub discovery_interval: Millis,
    /// The least time between two `GetRecords` calls on one shard (Kinesis allows 5 per second per
    /// shard, shared by every polling consumer: the job's other readers and every serving task).
    pub poll_interval: Millis,
    /// Records per `GetRecords` call (at most 10,000).
    pub max_records: i32,
}

impl Default for ServingTierConfig {
    fn default() -> Self {
        ServingTierConfig {
            start_position: StartPositionName::TrimHorizon,
            start_timestamp_ms: None,
            discovery_interval: Millis::seconds(60),
            poll_interval: Millis(1_000),
            max_records: 10_000,
        }
    }
}

impl ServingTierConfig {
    /// Checks the values `pageflow serve` needs, with the features stream's name.
    pub fn validate(&self, features_stream: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if features_stream.trim().is_empty() {
            problems.push(
                "[sinks.kinesis] `stream` is empty: `pageflow serve` reads the features stream the job writes; name it (PAGEFLOW__SINKS__KINESIS__STREAM)"
                    .to_string(),
            );
        }
        if self.start_position == StartPositionName::AtTimestamp
            && self.start_timestamp_ms.is_none()
        {
            problems.push(
                "[serving_tier] start_position = \"at_timestamp\" needs `start_timestamp_ms` (ms since the epoch)"
                    .to_string(),
            );
        }
        if !(1..=10_000).contains(&self.max_records) {
            problems.push(format!(
                "[serving_tier] `max_records` must be between 1 and 10000, not {}",
                self.max_records
            ));
        }
        if self.poll_interval.ms() == 0 || self.discovery_interval.ms() == 0 {
            problems.push(
                "[serving_tier] `poll_interval` and `discovery_interval` must be positive, e.g. `1s`"
                    .to_string(),
            );
        }
        problems
    }
}

/// The `[metrics]` section: what the job reports by itself (`GET /metrics` needs no setting).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// CloudWatch embedded-metric-format lines on standard output.
    pub emf: EmfConfig,
}

/// The `[metrics.emf]` section: one CloudWatch embedded-metric-format line on standard output
/// every `interval`, with the metrics of `pageflow_metrics::emf` (the alarms of `deploy/` read
/// them), in `namespace` with the dimension `Environment = environment`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmfConfig {
    /// Print the lines (off by default: on a laptop they only clutter the output).
    pub enabled: bool,
    /// Time between two lines; each line's counts are those of its interval.
    pub interval: Millis,
    /// The CloudWatch namespace.
    pub namespace: String,
    /// The value of the `Environment` dimension.
    pub environment: String,
}

impl Default for EmfConfig {
    fn default() -> Self {
        EmfConfig {
            enabled: false,
            interval: Millis::seconds(60),
            namespace: "Pageflow".to_string(),
            environment: "local".to_string(),
        }
    }
}

impl EmfConfig {
    /// The encoder's settings.
    pub fn settings(&self) -> pageflow_metrics::emf::EmfSettings {
        pageflow_metrics::emf::EmfSettings {
            namespace: self.namespace.clone(),
            environment: self.environment.clone(),
        }
    }

    /// CloudWatch's rules for a namespace and a dimension value, and a sensible interval.
    fn validate(&self, problems: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        if self.interval.ms() < 1_000 {
            problems.push(format!(
                "[metrics.emf] `interval` must be at least 1s (CloudWatch stores 1-minute points unless told otherwise): write e.g. `60s`, not {}",
                self.interval
            ));
        }
        let namespace = &self.namespace;
        if namespace.trim().is_empty()
            || namespace.len() > 255
            || namespace.starts_with("AWS/")
            || !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " ._-/#:".contains(c))
        {
            problems.push(format!(
                "[metrics.emf] `namespace` = `{namespace}` is not a CloudWatch namespace: 1 to 255 characters among letters, digits and . - _ / # : and space, not starting with AWS/ (e.g. `Pageflow`)"
            ));
        }
        let environment = &self.environment;
        if environment.trim().is_empty() || environment.len() > 1024 || !environment.is_ascii() {
            problems.push(format!(
                "[metrics.emf] `environment` = `{environment}` is not a CloudWatch dimension value: 1 to 1024 ASCII characters, not only spaces (e.g. `prod`)"
            ));
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields, for CloudWatch Logs Insights and the like.
    Json,
}

/// The `[log]` section: the `tracing` log on standard error. (The short messages the job says
/// to a person, such as "listening on …", are not log events and keep their form.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Which events are logged: a `tracing` filter such as `info` or `info,pageflow=debug`.
    /// `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

impl LogConfig {
    /// The filter: `RUST_LOG` when it is set and valid, else `level`, else `info`.
    pub fn filter(&self) -> tracing_subscriber::EnvFilter {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(&self.level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            problems.push(format!(
                "[log] `level` = `{}` is not a log filter ({error}): write e.g. `info`, `debug` or `info,pageflow=debug`",
                self.level
            ));
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
    /// Committed checkpoints kept (older ones are deleted). The default, 2, is the newest and one
    /// to fall back to if it is damaged; on disk that is about twice the state at most (the
    /// checkpoints share their runs; see the README's "Disk use in local mode").
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
            keep: 2,
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
    /// Local: how much of the output stays on disk.
    pub retention: RetentionSection,
    /// The curated lake (Parquet tables of the final results) under `<dir>/curated/`
    /// (`pageflow replay`: under `OUT/curated/`): `curated = true|false`, or a `[sinks.curated]`
    /// section (see [`CuratedSection`], `pageflow_connectors::curated` and the README, "The lake:
    /// curated Parquet"). Unset: on for local sinks, and for AWS sinks when a bucket is named.
    pub curated: Option<CuratedSetting>,
}

/// `[sinks] curated = true|false`, or the `[sinks.curated]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CuratedSetting {
    /// On or off, with the defaults of [`CuratedSection`].
    Switch(bool),
    /// The whole section.
    Section(CuratedSection),
}

/// The `[sinks.curated]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CuratedSection {
    /// Write the lake; unset: on for local sinks, and for AWS sinks when `bucket` is set.
    pub enabled: Option<bool>,
    /// AWS mode: the bucket the committed files are also uploaded to (the archive bucket), under
    /// `<prefix>curated/`.
    pub bucket: String,
    /// AWS mode: the key prefix before `curated/` (e.g. `lake`: `s3://bucket/lake/curated/…`).
    pub prefix: String,
}

impl SinksConfig {
    /// The `[sinks.curated]` settings, whichever way they were written.
    pub fn curated_section(&self) -> CuratedSection {
        match &self.curated {
            None => CuratedSection::default(),
            Some(CuratedSetting::Switch(on)) => CuratedSection {
                enabled: Some(*on),
                ..CuratedSection::default()
            },
            Some(CuratedSetting::Section(section)) => section.clone(),
        }
    }

    /// Whether the curated lake is written: as set, or by default for local sinks, and for AWS
    /// sinks with a bucket to upload to.
    pub fn curated_enabled(&self) -> bool {
        let section = self.curated_section();
        section.enabled.unwrap_or(match self.kind {
            SinksKind::Local => true,
            SinksKind::Aws => !section.bucket.trim().is_empty(),
        })
    }
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
            retention: RetentionSection::default(),
            curated: None,
        }
    }
}

/// The `[sinks.retention]` section (local sinks): the archive, the features files and the dead
/// letters under `dir` are kept within `max_bytes` and `max_age`, as a rolling file sink in Flink
/// or a Kafka topic would keep them. `features.jsonl` rolls at `roll_bytes` or after
/// `roll_interval`; the archive's files roll by event hour. Closed files go, oldest first
/// (see `pageflow_connectors::files::retention`); the files being written never do. The checkpoints under
/// `dir` are not counted: `[checkpoint] keep` bounds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Delete old output at all (`false` keeps everything: watch the disk).
    pub enabled: bool,
    /// The most the archive and features files may take together.
    pub max_bytes: ByteSize,
    /// The longest a closed file is kept after its last write.
    pub max_age: Millis,
    /// `features.jsonl` is rolled (renamed `features-<unix-ms>.jsonl`) at this size…
    pub roll_bytes: ByteSize,
    /// …or after this long.
    pub roll_interval: Millis,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            enabled: true,
            max_bytes: ByteSize(4 * ByteSize::GIB),
            max_age: Millis::hours(7 * 24),
            roll_bytes: ByteSize(256 * ByteSize::MIB),
            roll_interval: Millis::hours(1),
        }
    }
}

impl RetentionSection {
    /// The retention policy (unlimited when disabled).
    pub fn policy(&self) -> pageflow_connectors::files::retention::RetentionPolicy {
        if !self.enabled {
            return pageflow_connectors::files::retention::RetentionPolicy::UNLIMITED;
        }
        pageflow_connectors::files::retention::RetentionPolicy {
            max_bytes: Some(self.max_bytes.0),
            max_age: Some(self.max_age.into()),
        }
    }

    /// When `features.jsonl` rolls (never when retention is off: nothing would delete the rolled
    /// files, and one file is easier to read).
    pub fn roll(&self) -> Option<pageflow_connectors::files::sink::RollPolicy> {
        self.enabled
            .then(|| pageflow_connectors::files::sink::RollPolicy {
                max_bytes: self.roll_bytes.0,
                max_age: self.roll_interval.into(),
            })
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        if self.roll_bytes.0 < ByteSize::MIB {
            problems.push(format!(
                "[sinks.retention] `roll_bytes` = {} is below 1MiB: write e.g. `256MiB`",
                self.roll_bytes
            ));
        }
        if self.max_bytes.0 < 2 * self.roll_bytes.0 {
            problems.push(format!(
                "[sinks.retention] `max_bytes` = {} must be at least twice `roll_bytes` = {} (the file being written is never deleted): raise it, e.g. `4GiB`, or lower `roll_bytes`",
                self.max_bytes, self.roll_bytes
            ));
        }
        if self.roll_interval.ms() < 60_000 {
            problems.push(format!(
                "[sinks.retention] `roll_interval` = {} is below 1m: write e.g. `1h`",
                self.roll_interval
            ));
        }
        if self.max_age < self.roll_interval {
            problems.push(format!(
                "[sinks.retention] `max_age` = {} is shorter than `roll_interval` = {}: a file would be due for deletion before it is closed; write e.g. `7d`",
                self.max_age, self.roll_interval
            ));
        }
    }
}

/// A number of bytes, written `"4GiB"`, `"500MB"`, `"64KiB"` or as a bare number of bytes
/// (`KB`/`MB`/`GB` are powers of 1000, `KiB`/`MiB`/`GiB` of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// 1024 bytes.
    pub const KIB: u64 = 1024;
    /// 1024² bytes.
    pub const MIB: u64 = 1024 * 1024;
    /// 1024³ bytes.
    pub const GIB: u64 = 1024 * 1024 * 1024;

    /// Parses `"256MiB"`, `"4GB"`, `"1024"`…
    pub fn parse(text: &str) -> Result<Self, String> {
        const UNITS: &[(&str, u64)] = &[
            ("", 1),
            ("B", 1),
            ("KB", 1_000),
            ("kB", 1_000),
            ("MB", 1_000_000),
            ("GB", 1_000_000_000),
            ("TB", 1_000_000_000_000),
            ("KiB", ByteSize::KIB),
            ("MiB", ByteSize::MIB),
            ("GiB", ByteSize::GIB),
            ("TiB", ByteSize::GIB * 1024),
        ];
        pageflow_dataflow::config::parse_with_unit(
            text,
            "a size",
            "`256MiB`, `4GiB`",
            "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB",
            UNITS,
        )
        .map(ByteSize)
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0;
        for (unit, size) in [("GiB", Self::GIB), ("MiB", Self::MIB), ("KiB", Self::KIB)] {
            if bytes >= size && bytes.is_multiple_of(size) {
                return write!(f, "{}{unit}", bytes / size);
            }
        }
        write!(f, "{bytes}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A number of bytes or a size with a unit; anything else is named in the error.
        struct ByteSizeVisitor;

        impl serde::de::Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size such as \"256MiB\", \"4GiB\" or a number of bytes")
            }

            fn visit_u64<E: serde::de::Error>(self, bytes: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(bytes))
            }

            fn visit_i64<E: serde::de::Error>(self, bytes: i64) -> Result<ByteSize, E> {
                u64::try_from(bytes)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{bytes} is negative: a size is at least 0")))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                ByteSize::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
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
    let mut table = merged_table(file, env, &mut problems)?;

    // Each section is read on its own, and each of its keys too (`read_section`), so that no
    // mistake hides another: every type error is reported, and the section is then built from its
    // good keys so that validation reports the problems of those as well.
    let mut config = JobConfig::default();
    macro_rules! section {
        ($name:literal, $field:ident) => {
            if let Some(value) = table.remove($name) {
                config.$field = read_section($name, value, &mut problems);
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
    section!("cluster", cluster);
    section!("metrics", metrics);
    section!("log", log);
    section!("serving_tier", serving_tier);
    section!("collect", collect);
    for unknown in table.keys() {
        problems.push(format!(
            "unknown section `[{unknown}]`: the sections are semantics, source, sinks, serve, runtime, aws, checkpoint, recommendations, personalize, cluster, metrics, log, serving_tier, collect"
        ));
    }
    problems.extend(config.validate());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// The `[log]` section alone, before logging starts (the full [`load`] comes later and reports
/// every problem, this section's included): its good keys over the defaults, whatever else is
/// wrong.
pub fn load_log(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> LogConfig {
    let mut ignored = Vec::new();
    let Ok(mut table) = merged_table(file, env, &mut ignored) else {
        return LogConfig::default();
    };
    let log: LogConfig = match table.remove("log") {
        Some(value) => read_section("log", value, &mut ignored),
        None => LogConfig::default(),
    };
    let mut problems = Vec::new();
    log.validate(&mut problems);
    if problems.is_empty() {
        log
    } else {
        LogConfig {
            level: LogConfig::default().level,
            ..log
        }
    }
}

/// The file's table with the environment's overrides set in it; a file that cannot be read or
/// parsed is the one problem returned.
fn merged_table(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) -> Result<toml::Table, Vec<String>> {
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
    Ok(table)
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
        if self.sinks.kind == SinksKind::Local {
            self.sinks.retention.validate(&mut problems);
        }
        self.recommendations.validate(&mut problems);
        self.personalize.validate(&mut problems);
        self.cluster.validate(&mut problems);
        self.metrics.emf.validate(&mut problems);
        self.log.validate(&mut problems);
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
        if self.sinks.kind == SinksKind::Aws
            && self.sinks.curated_enabled()
            && self.sinks.curated_section().bucket.trim().is_empty()
        {
            problems.push(
                "[sinks.curated] is on in AWS mode but `bucket` is empty: name the archive bucket the curated files go to, or set [sinks] curated = false"
                    .to_string(),
            );
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

// Why not a layering crate such as `figment` (TOML + `PAGEFLOW__` env in a few lines): it extracts
// through serde too, and serde's derived `Deserialize` stops at a struct's first bad field, so one
// type error would still hide the others. Reporting every problem at once needs the file and the
// overrides as one `toml::Value` to probe key by key (below); merging them is the 20 lines of
// `set_path`, so the crate would add a dependency without removing the probing.

/// Reads one section, reporting every key that does not deserialize (unknown keys, wrong types,
/// bad durations…) with its TOML path and the environment variable that could also have set it.
/// The section is built from the defaults and the keys that do deserialize, so that validation
/// still sees them; if those together fail (keys that only fail in combination), the defaults.
fn read_section<T>(name: &str, value: toml::Value, problems: &mut Vec<String>) -> T
where
    T: Default + Serialize + serde::de::DeserializeOwned,
{
    let first_error = match value.clone().try_into::<T>() {
        Ok(section) => return section,
        Err(error) => error.to_string(),
    };
    let defaults = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(defaults)) => defaults,
        // Not expected (every section serialises to a table); report serde's first error.
        _ => {
            problems.push(format!("[{name}]: {}", first_error.trim()));
            return T::default();
        }
    };
    let toml::Value::Table(user) = value else {
        problems.push(format!(
            "`{name}` must be a section (`[{name}]` with keys under it), not a single value"
        ));
        return T::default();
    };
    let mut good = defaults.clone();
    let before = problems.len();
    probe_keys::<T>(name, &defaults, &mut Vec::new(), &user, &mut good, problems);
    if problems.len() == before {
        // Every key alone is fine, but not all together: say so with serde's words.
        problems.push(format!("[{name}]: {}", first_error.trim()));
    }
    toml::Value::Table(good).try_into().unwrap_or_default()
}

/// Tries each key of `user` (at `path` inside the section) on top of the defaults, recursing into
/// subsections; keeps the good ones in `good` and reports the others.
fn probe_keys<T: serde::de::DeserializeOwned>(
    section: &str,
    defaults: &toml::Table,
    path: &mut Vec<String>,
    user: &toml::Table,
    good: &mut toml::Table,
    problems: &mut Vec<String>,
) {
    for (key, value) in user {
        path.push(key.clone());
        let default_is_table = lookup(defaults, path).is_some_and(toml::Value::is_table);
        match value {
            toml::Value::Table(inner) if default_is_table => {
                probe_keys::<T>(section, defaults, path, inner, good, problems);
            }
            _ => {
                let mut candidate = defaults.clone();
                let _ = set_path(&mut candidate, path, value.clone());
                match toml::Value::Table(candidate).try_into::<T>() {
                    Ok(_) => {
                        let _ = set_path(good, path, value.clone());
                    }
                    Err(error) => {
                        let (key, parents) = path.split_last().unwrap_or((key, &[]));
                        let at = std::iter::once(section)
                            .chain(parents.iter().map(String::as_str))
                            .collect::<Vec<_>>();
                        let env = std::iter::once(ENV_PREFIX.trim_end_matches('_'))
                            .chain(at.iter().copied())
                            .chain(std::iter::once(key.as_str()))
                            .map(str::to_ascii_uppercase)
                            .collect::<Vec<_>>()
                            .join("__");
                        problems.push(format!(
                            "[{}] `{key}`: {}; fix it in the config file (or in {env} if set there)",
                            at.join("."),
                            // The first line: serde's words; toml adds "in `key`", said above.
                            error.to_string().lines().next().unwrap_or_default().trim_end_matches('.'),
                        ));
                    }
                }
            }
        }
        path.pop();
    }
}

/// The value at `path` in `table`, if any.
fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    if rest.is_empty() {
        Some(value)
    } else {
        value.as_table().and_then(|inner| lookup(inner, rest))
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
    fn every_section_default_can_be_probed_key_by_key() {
        // `read_section` starts from the defaults as a TOML table: each must serialise to one.
        let defaults = toml::Value::try_from(JobConfig::default()).unwrap();
        let table = defaults.as_table().unwrap();
        for section in [
            "semantics",
            "source",
            "sinks",
            "serve",
            "runtime",
            "aws",
            "checkpoint",
            "recommendations",
            "personalize",
            "cluster",
            "metrics",
            "log",
        ] {
            assert!(
                table.get(section).is_some_and(toml::Value::is_table),
                "{section}"
            );
        }
    }

    #[test]
    fn one_type_error_does_not_hide_the_other_problems_of_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pageflow.toml");
        std::fs::write(
            &path,
            r#"
[checkpoint]
keep = "three"
interval = "5ms"
stop_timeout = true
nope = 1

[sinks.retention]
max_bytes = "lots"
roll_interval = "1s"
"#,
        )
        .unwrap();
        let env = vec![("PAGEFLOW__RUNTIME__WORKERS".to_string(), "0".to_string())];
        let problems = load(Some(&path), env).unwrap_err();
        for needle in [
            // Type errors, each with its path and the environment variable that could set it.
            "[checkpoint] `keep`: invalid type: string \"three\"",
            "PAGEFLOW__CHECKPOINT__KEEP",
            "[checkpoint] `stop_timeout`: invalid type: boolean `true`, expected a duration such as \"30s\"",
            "[checkpoint] `nope`: unknown field `nope`",
            "[sinks.retention] `max_bytes`: `lots` is not a size",
            "PAGEFLOW__SINKS__RETENTION__MAX_BYTES",
            // Validation problems of the same sections' good keys.
            "[checkpoint] `interval` must be at least 10ms",
            "[sinks.retention] `roll_interval` = 1s is below 1m",
            // And of other sections.
            "[runtime] `workers`",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "no problem contains {needle:?}:\n{}",
                problems.join("\n")
            );
        }
        assert_eq!(problems.len(), 7, "{}", problems.join("\n"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("4GiB"), Ok(ByteSize(4 << 30)));
        assert_eq!(ByteSize::parse("500MB"), Ok(ByteSize(500_000_000)));
        assert_eq!(ByteSize::parse("1024"), Ok(ByteSize(1024)));
        assert!(ByteSize::parse("4 parsecs").is_err());
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
    }

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
    fn emf_and_log_sections_default_override_and_report_every_problem() {
        let config = load(None, Vec::new()).unwrap();
        assert_eq!(config.metrics.emf, EmfConfig::default());
        assert!(!config.metrics.emf.enabled);
        assert_eq!(config.metrics.emf.interval.ms(), 60_000);
        assert_eq!(config.metrics.emf.namespace, "Pageflow");
        assert_eq!(config.metrics.emf.environment, "local");
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.log.level, "info");

        let var = |key: &str, value: &str| (key.to_string(), value.to_string());
        let config = load(
            None,
            vec![
                var("PAGEFLOW__METRICS__EMF__ENABLED", "true"),
                var("PAGEFLOW__METRICS__EMF__INTERVAL", "10s"),
                var("PAGEFLOW__METRICS__EMF__ENVIRONMENT", "prod"),
                var("PAGEFLOW__LOG__FORMAT", "json"),
                var("PAGEFLOW__LOG__LEVEL", "info,pageflow=debug"),
            ],
        )
        .unwrap();
        assert!(config.metrics.emf.enabled);
        assert_eq!(config.metrics.emf.interval.ms(), 10_000);
        assert_eq!(config.metrics.emf.settings().environment, "prod");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, "info,pageflow=debug");

        let problems = load(
            None,
            vec![
                var("PAGEFLOW__METRICS__EMF__ENABLED", "true"),
                var("PAGEFLOW__METRICS__EMF__INTERVAL", "10ms"),
                var("PAGEFLOW__METRICS__EMF__NAMESPACE", "AWS/Kinesis"),
                var("PAGEFLOW__METRICS__EMF__ENVIRONMENT", " "),
                var("PAGEFLOW__LOG__FORMAT", "xml"),
                var("PAGEFLOW__LOG__LEVEL", "pageflow=loud"),
            ],
        )
        .err()
        .unwrap_or_default();
        for expected in [
            "[metrics.emf] `interval`",
            "[metrics.emf] `namespace`",
            "[metrics.emf] `environment`",
            "[log] `format`",
            "[log] `level`",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:#?}"
            );
        }
        // Before logging starts, the good keys of [log] count and a bad one falls back.
        let log = load_log(
            None,
            vec![
                var("PAGEFLOW__LOG__FORMAT", "json"),
                var("PAGEFLOW__LOG__LEVEL", "pageflow=loud"),
                var("PAGEFLOW__RUNTIME__WORKERS", "0"),
            ],
        );
        assert_eq!(log.format, LogFormat::Json);
        assert_eq!(log.level, "info");
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

    #[test]
    fn the_curated_lake_is_a_switch_or_a_section_and_needs_a_bucket_in_aws_mode() {
        let dir = tempfile::tempdir().unwrap();
        let load_text = |text: &str| {
            let path = dir.path().join("curated.toml");
            std::fs::write(&path, text).unwrap();
            load(Some(&path), Vec::new())
        };
        let config = load_text("[sinks]\nkind = \"local\"\n").unwrap();
        assert!(
            config.sinks.curated_enabled(),
            "on by default for local sinks"
        );
        let config = load_text("[sinks]\ncurated = false\n").unwrap();
        assert!(!config.sinks.curated_enabled());
        let config =
            load_text("[sinks.curated]\nbucket = \"archive\"\nprefix = \"lake\"\n").unwrap();
        assert!(config.sinks.curated_enabled());
        assert_eq!(config.sinks.curated_section().prefix, "lake");
        let aws = "[sinks]\nkind = \"aws\"\n[sinks.kinesis]\nstream = \"f\"\n[sinks.firehose]\nraw = \"r\"\nprocessed = \"p\"\ndead_letter = \"d\"\n";
        let config = load_text(aws).unwrap();
        assert!(
            !config.sinks.curated_enabled(),
            "off in AWS mode without a bucket"
        );
        let problems =
            load_text(&aws.replace("[sinks.kinesis]", "curated = true\n[sinks.kinesis]"))
                .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("[sinks.curated]") && p.contains("bucket")),
            "{problems:?}"
        );
    }
}
