//! Amazon Personalize: recommendations for a reader, and the pageviews that keep them fresh.
//!
//! Personalize is two APIs with different needs:
//!
//! - **Recommendations** (`personalize-runtime`, `GetRecommendations`) are asked for on the serving
//!   layer's request path: [`Recommender`] gives each call a small time budget and no SDK retries,
//!   and stops calling for a while when calls keep failing ([`breaker::CircuitBreaker`]), so a
//!   Personalize outage costs the reader nothing but the personalised part of the answer.
//! - **Events** (`personalize-events`, `PutEvents`) report what readers read, so that real-time
//!   recipes adapt within seconds: [`EventForwarder`] takes every accepted pageview without ever
//!   blocking the dataflow, groups them per reader and session into calls of up to ten, paces the
//!   calls under the tracker's quota and retries the transient failures in the background.
//!
//! Both take SDK clients built by the caller ([`crate::aws::AwsConfig::personalize_runtime_client`]
//! and [`crate::aws::AwsConfig::personalize_events_client`] in the job), so tests point them at a
//! local fake of the two APIs (`pageflow_tests::fake_personalize`): no local Personalize server
//! exists.

pub mod breaker;
pub mod events;
pub mod recommender;

pub use breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
pub use events::{EventForwarder, ForwarderConfig, ForwarderStats, PersonalizeEvent};
pub use recommender::{
    RecommendOutcome, RecommendationRequest, RecommendationSource, Recommendations,
    RecommendedItem, Recommender, RecommenderConfig,
};
