//! Personalize, for the portals that configure it: recommendations served over HTTP, and the
//! counted pageviews forwarded to its event trackers by the sink thread.

use std::sync::Arc;

use anyhow::{Context, Result};
use pageflow_connectors::personalize::EventForwarder;

use crate::config::JobConfig;
use pageflow_metrics::Metrics;
use pageflow_serve::personalize::{PersonalizeRecommendations, Trackers, trackers};

/// Forwarding counted pageviews to Personalize event trackers.
#[derive(Clone, Debug)]
pub(super) struct PersonalizeFeed {
    /// Sends the events, batched, in the background.
    pub forwarder: Arc<EventForwarder>,
    /// Which tracker each portal's events go to.
    pub trackers: Trackers,
}

/// Personalize for recommendations and the event forwarder, for the portals that configure them.
pub(super) fn start_personalize(
    config: &JobConfig,
    runtime: &tokio::runtime::Runtime,
    metrics: &Metrics,
) -> Result<(
    Option<Arc<PersonalizeRecommendations>>,
    Option<PersonalizeFeed>,
)> {
    let personalize = &config.personalize;
    if !personalize.recommends() && !personalize.forwards_events() {
        return Ok((None, None));
    }
    let sdk = runtime.block_on(config.aws.load());
    let recommendations = personalize.recommends().then(|| {
        Arc::new(PersonalizeRecommendations::new(
            &config.aws.personalize_runtime_client(&sdk),
            personalize,
        ))
    });
    let feed = if personalize.forwards_events() {
        let forwarder = EventForwarder::start(
            &config.aws.personalize_events_client(&sdk),
            personalize.forwarder(),
            runtime.handle(),
        )
        .context("cannot start forwarding events to Personalize; check [personalize.events]")?;
        let forwarder = Arc::new(forwarder);
        metrics.watch_personalize_events(Arc::clone(&forwarder));
        Some(PersonalizeFeed {
            forwarder,
            trackers: trackers(personalize),
        })
    } else {
        None
    };
    Ok((recommendations, feed))
}
