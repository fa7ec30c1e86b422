//! The serving layer's configuration: `[serve]` (where to listen, who may call what, rate
//! limits, CORS), `[recommendations]` (the blend) and `[personalize]` (campaigns, recommenders
//! and event trackers per portal). The job's configuration (`pageflow::config::JobConfig`)
//! embeds these sections and validates them with the rest, so that every problem is reported at
//! once; each `validate` here adds its problems to that list.

use pageflow_dataflow::config::Millis;
use serde::{Deserialize, Serialize};

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
    pub auth: crate::auth::AuthConfig,
    /// Rate limits per caller (`[serve.rate_limit]`).
    pub rate_limit: crate::rate_limit::RateLimitConfig,
    /// Which web origins may call the API from a browser (`[serve.cors]`).
    pub cors: crate::cors::CorsConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            live_interval: Millis::seconds(1),
            auth: crate::auth::AuthConfig::default(),
            rate_limit: crate::rate_limit::RateLimitConfig::default(),
            cors: crate::cors::CorsConfig::default(),
        }
    }
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

    pub fn validate(&self, problems: &mut Vec<String>) {
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
    pub fn validate(&self, problems: &mut Vec<String>) {
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
    pub fn read_limits(&self) -> crate::recent_reads::RecentReadsLimits {
        crate::recent_reads::RecentReadsLimits {
            per_user: self.reads_per_user,
            ttl_ms: self.reader_ttl.ms(),
            max_users: self.max_readers,
        }
    }

    /// The blend's shares.
    pub fn shares(&self) -> crate::blend::BlendShares {
        crate::blend::BlendShares {
            related: self.related_share,
            trending: self.trending_share,
        }
    }
}
