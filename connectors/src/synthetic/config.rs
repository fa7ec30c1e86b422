//! [`SyntheticConfig`]: the synthetic traffic's parameters, their defaults and their validation,
//! and [`PlannedSpike`], a breaking-news spike as the config plans it.

use pageflow_dataflow::config::Millis;
use pageflow_dataflow::event::is_valid_portal;
use serde::{Deserialize, Serialize};

use super::names::write_breaking_article_id;
use super::spikes::Spike;
use crate::error::ConnectorError;

/// The largest `ts` the schema allows (9999-12-31T23:59:59.999Z).
pub(super) const MAX_TS: u64 = 253_402_300_799_999;

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
    /// `Some(r)`: [`SyntheticSource`](super::SyntheticSource) is paced by the wall clock at `r` records per second and
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
