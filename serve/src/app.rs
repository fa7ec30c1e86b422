//! [`App`]: what every handler gets. The live state, the metrics, and the optional parts of the
//! serving layer (Personalize, the blend, security), built once at start-up and shared.

use std::sync::Arc;

use axum::body::Bytes;
use pageflow_metrics::Metrics;

use crate::openapi;
use crate::state::ServingState;

/// What every handler gets: the live state, the metrics, and the optional parts of the serving
/// layer. Cheap to clone (every field is shared).
#[derive(Clone, Debug)]
pub struct App {
    pub(crate) state: Arc<ServingState>,
    pub(crate) metrics: Arc<Metrics>,
    /// Amazon Personalize for recommendations; `None` when no portal has a campaign configured.
    pub(crate) personalize: Option<Arc<crate::personalize::PersonalizeRecommendations>>,
    /// How recommendations blend their sources.
    pub(crate) blend_shares: crate::blend::BlendShares,
    /// Who may call what: policies, keys, tokens, rate limits and CORS.
    pub(crate) security: Arc<crate::auth::ServeSecurity>,
    /// The OpenAPI document, with the security of each route group as `security` sets it.
    pub(crate) openapi: Bytes,
    /// What `/v1/job` shows: the job graph, the checkpoint history, the partitions' watermarks.
    pub(crate) job: Arc<crate::job_view::JobView>,
}

impl App {
    /// The serving layer over `state`, with `metrics` at `/metrics`.
    pub fn new(state: Arc<ServingState>, metrics: Arc<Metrics>) -> Self {
        let security = crate::auth::ServeSecurity::open();
        App {
            state,
            metrics,
            personalize: None,
            blend_shares: crate::blend::BlendShares::default(),
            openapi: openapi::document(&|group| security.policy(group)),
            security: Arc::new(security),
            job: Arc::default(),
        }
    }

    /// Guards the routes with `security` (by default every route is open, with no rate limit
    /// and no CORS).
    pub fn with_security(mut self, security: crate::auth::ServeSecurity) -> Self {
        self.openapi = openapi::document(&|group| security.policy(group));
        self.security = Arc::new(security);
        self
    }

    /// Recommendations ask `personalize` (see [`crate::routes::recommendations`]).
    pub fn with_personalize(
        mut self,
        personalize: Arc<crate::personalize::PersonalizeRecommendations>,
    ) -> Self {
        self.personalize = Some(personalize);
        self
    }

    /// `/v1/job` shows what `view` reads (by default it answers empty lists).
    pub fn with_job_view(mut self, view: Arc<crate::job_view::JobView>) -> Self {
        self.job = view;
        self
    }

    /// Recommendations blend their sources by `shares`.
    pub fn with_blend_shares(mut self, shares: crate::blend::BlendShares) -> Self {
        self.blend_shares = shares;
        self
    }
}
