//! Amazon Personalize in the job: the campaigns recommendations ask, and the event trackers the
//! job feeds.
//!
//! - [`PersonalizeRecommendations`] holds one [`Recommender`] (a time budget and a circuit breaker
//!   around `GetRecommendations`, see `pageflow_connectors::personalize`) and what to ask per
//!   portal (`[personalize.portals.<portal>]`). A portal without a campaign or recommender is
//!   answered `not_configured`; every other failure is named in the answer's `personalize` field
//!   and counted in `pageflow_recommendations_total{personalize}`, and the caller serves
//!   pageflow's own lists instead.
//! - [`personalize_event`] turns a counted pageview into a `PutEvents` event for the portal's
//!   tracker; the sink thread offers each to an [`EventForwarder`](pageflow_connectors::personalize::EventForwarder),
//!   which never blocks it (a full queue drops and counts).

use std::collections::HashMap;
use std::sync::Arc;

use pageflow_connectors::personalize::recommender::MAX_NUM_RESULTS;
use pageflow_connectors::personalize::{
    PersonalizeEvent, RecommendOutcome, RecommendationRequest, RecommendationSource, Recommender,
};
use pageflow_dataflow::event::CompactEvent;
use pageflow_dataflow::ids::stable_id;

use crate::blend::Candidate;
use crate::config::PersonalizeConfig;

/// What asking Personalize gave.
#[derive(Clone, Debug, Default)]
pub struct PersonalizeAnswer {
    /// `ok`, `not_configured`, or a failure: `timeout`, `throttled`, `not_found`,
    /// `invalid_input`, `error`, `breaker_open` (see [`RecommendOutcome`]).
    pub status: &'static str,
    /// Personalize's id of this answer, when it answered.
    pub recommendation_id: Option<String>,
    /// Its items, best first.
    pub items: Vec<Candidate>,
}

impl PersonalizeAnswer {
    /// No campaign or recommender for the portal.
    pub fn not_configured() -> Self {
        PersonalizeAnswer {
            status: "not_configured",
            ..PersonalizeAnswer::default()
        }
    }
}

/// What a portal asks: its campaign or recommender and optional filter.
#[derive(Clone, Debug)]
struct PortalTarget {
    source: RecommendationSource,
    filter_arn: Option<String>,
    filter_values: Vec<(String, String)>,
}

/// Personalize campaigns per portal, asked through one recommender (one budget, one breaker: the
/// service fails as a whole more often than one campaign does).
#[derive(Debug)]
pub struct PersonalizeRecommendations {
    recommender: Recommender,
    targets: HashMap<String, PortalTarget>,
}

impl PersonalizeRecommendations {
    /// The portals of `config` that name a campaign or recommender, asked with `client`.
    pub fn new(client: &aws_sdk_personalizeruntime::Client, config: &PersonalizeConfig) -> Self {
        let targets = config
            .portals
            .iter()
            .filter_map(|(portal, resources)| {
                let source = match (&resources.campaign_arn, &resources.recommender_arn) {
                    (Some(arn), _) => RecommendationSource::Campaign(arn.clone()),
                    (None, Some(arn)) => RecommendationSource::Recommender(arn.clone()),
                    (None, None) => return None,
                };
                Some((
                    portal.clone(),
                    PortalTarget {
                        source,
                        filter_arn: resources.filter_arn.clone(),
                        filter_values: resources
                            .filter_values
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    },
                ))
            })
            .collect();
        PersonalizeRecommendations {
            recommender: Recommender::new(client, config.recommender()),
            targets,
        }
    }

    /// The recommender (its breaker state, for status pages).
    pub fn recommender(&self) -> &Recommender {
        &self.recommender
    }

    /// Asks for `count` recommendations for `user_id` in `portal`; never fails (a failure is the
    /// answer's `status`, with no items).
    pub async fn ask(&self, portal: &str, user_id: &str, count: usize) -> PersonalizeAnswer {
        let Some(target) = self.targets.get(portal) else {
            return PersonalizeAnswer::not_configured();
        };
        let count = u32::try_from(count)
            .unwrap_or(MAX_NUM_RESULTS)
            .clamp(1, MAX_NUM_RESULTS);
        let mut request = RecommendationRequest::new(target.source.clone(), user_id, count);
        if let Some(filter) = &target.filter_arn {
            request = request.with_filter(filter, target.filter_values.iter().cloned());
        }
        let result = self.recommender.recommend(&request).await;
        let status = RecommendOutcome::of(&result).as_str();
        match result {
            Ok(answer) => PersonalizeAnswer {
                status,
                recommendation_id: answer.recommendation_id,
                items: answer
                    .items
                    .into_iter()
                    .map(|item| Candidate {
                        article_id: Arc::from(item.item_id),
                        score: item.score,
                    })
                    .collect(),
            },
            Err(error) => {
                tracing::debug!("recommendations for {portal}: Personalize not used: {error}");
                PersonalizeAnswer {
                    status,
                    ..PersonalizeAnswer::default()
                }
            }
        }
    }
}

/// The event types pageflow sends; the dataset's `EVENT_TYPE` values.
pub const PAGEVIEW_EVENT_TYPE: &str = "pageview";

/// Per portal, the event tracker's tracking id.
pub type Trackers = HashMap<String, String>;

/// The trackers of `config`'s portals that forward events.
pub fn trackers(config: &PersonalizeConfig) -> Trackers {
    config
        .portals
        .iter()
        .filter_map(|(portal, resources)| {
            resources
                .tracking_id
                .as_ref()
                .map(|id| (portal.clone(), id.clone()))
        })
        .collect()
}

/// The `PutEvents` event for a counted pageview, or `None` when its portal has no tracker.
///
/// Personalize groups a reader's events by session; pageflow's readers are identified by a
/// persistent id, so the session is the reader's UTC day (a stable id, so a replay after a restore
/// sends the same one). The event id is the beacon's, so Personalize sees a replayed event as the
/// same event. Engagement goes in `properties` (`dwellMs`, `scrollPct`, `clicks`), for datasets
/// whose schema has them.
pub fn personalize_event(trackers: &Trackers, event: &CompactEvent) -> Option<PersonalizeEvent> {
    let portal = event.portal().name();
    let tracking_id = trackers.get(portal)?;
    let day = (event.ts / 86_400_000).to_string();
    Some(PersonalizeEvent {
        tracking_id: tracking_id.clone(),
        user_id: event.user_id.to_string(),
        session_id: stable_id(&["personalize-session", portal, &event.user_id, &day]),
        event_id: event.event_id.to_string(),
        event_type: PAGEVIEW_EVENT_TYPE.to_string(),
        item_id: event.article.id().to_string(),
        sent_at_ms: event.ts,
        properties: Some(format!(
            "{{\"dwellMs\":{},\"scrollPct\":{},\"clicks\":{}}}",
            event.dwell_ms, event.scroll_pct, event.clicks
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(portal: &str, user: &str, ts: u64) -> CompactEvent {
        CompactEvent {
            event_id: "e1".into(),
            user_id: user.into(),
            article: pageflow_dataflow::intern::Article::intern_names(portal, "a1"),
            ts,
            dwell_ms: 12_000,
            clicks: 2,
            scroll_pct: 40,
        }
    }

    #[test]
    fn events_of_tracked_portals_become_put_events_events() {
        let trackers: Trackers = [("g1".to_string(), "track-g1".to_string())].into();
        assert!(personalize_event(&trackers, &event("ge", "u1", 0)).is_none());
        let sent = personalize_event(&trackers, &event("g1", "u1", 1_000))
            .unwrap_or_else(|| panic!("g1 is tracked"));
        assert_eq!(sent.tracking_id, "track-g1");
        assert_eq!((sent.user_id.as_str(), sent.item_id.as_str()), ("u1", "a1"));
        assert_eq!(sent.event_id, "e1");
        assert_eq!(sent.event_type, "pageview");
        assert_eq!(sent.sent_at_ms, 1_000);
        let properties: serde_json::Value =
            serde_json::from_str(sent.properties.as_deref().unwrap_or_default()).unwrap();
        assert_eq!(properties["dwellMs"], 12_000);
        assert_eq!(properties["scrollPct"], 40);
        // One session per reader and UTC day.
        let same_day = personalize_event(&trackers, &event("g1", "u1", 86_399_999))
            .unwrap_or_else(|| panic!());
        let next_day = personalize_event(&trackers, &event("g1", "u1", 86_400_000))
            .unwrap_or_else(|| panic!());
        let other_reader =
            personalize_event(&trackers, &event("g1", "u2", 1_000)).unwrap_or_else(|| panic!());
        assert_eq!(sent.session_id, same_day.session_id);
        assert_ne!(sent.session_id, next_day.session_id);
        assert_ne!(sent.session_id, other_reader.session_id);
    }
}
