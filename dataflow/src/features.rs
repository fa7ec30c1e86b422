//! The feature records the job emits: what the ML team reads from the features stream.
//!
//! Every record is one JSON object with a fixed field order (`type, feature_id, portal, …`, see
//! `docs/semantics-notes.md` N19) and a deterministic `feature_id`, so that the same input always gives
//! the same bytes and consumers can drop duplicates after a restart.

use serde::{Deserialize, Serialize};

use crate::ids::stable_id;

/// One emitted feature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Feature {
    /// A closed user session.
    Session(SessionFeature),
    /// The most viewed articles of a portal in a final window.
    Popular(RankingFeature),
    /// The rising articles of a portal in a final window.
    Trending(RankingFeature),
    /// The articles read together with one article.
    Related(RelatedFeature),
}

/// A closed session of one user on one portal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFeature {
    /// Deterministic id of this record.
    pub feature_id: String,
    /// The site.
    pub portal: String,
    /// The reader.
    pub user_id: String,
    /// Stable function of `(portal, user_id, start_ts)`.
    pub session_id: String,
    /// `ts` of the first event.
    pub start_ts: u64,
    /// `ts` of the last event.
    pub end_ts: u64,
    /// Number of events.
    pub views: u64,
    /// Number of distinct articles (uncapped).
    pub distinct_articles: u64,
    /// Sum of `dwell_ms`.
    pub dwell_ms_total: u64,
    /// Sum of `clicks`.
    pub clicks_total: u64,
    /// Largest `scroll_pct`.
    pub max_scroll_pct: u8,
    /// Distinct article ids in first-read order, at most [`SESSION_ARTICLES_MAX`].
    pub articles: Vec<String>,
}

/// At most this many article ids are listed in a session feature.
pub const SESSION_ARTICLES_MAX: usize = 50;

/// A ranking of one portal's articles in one final window (popular or trending).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankingFeature {
    /// Deterministic id of this record.
    pub feature_id: String,
    /// The site.
    pub portal: String,
    /// Inclusive start of the window.
    pub window_start: u64,
    /// Exclusive end of the window (the time at which it became final).
    pub window_end: u64,
    /// The ranked articles, best first.
    pub items: Vec<RankedItem>,
}

/// One article in a popular or trending ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedItem {
    /// The article.
    pub article_id: String,
    /// Views in the window.
    pub views: u64,
    /// Engaged views in the window.
    pub engaged_views: u64,
    /// The ranking score (views for popular; the trending score for trending).
    pub score: f64,
}

/// The related articles of one article in one final co-occurrence window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelatedFeature {
    /// Deterministic id of this record.
    pub feature_id: String,
    /// The site.
    pub portal: String,
    /// The article whose partners are listed.
    pub article_id: String,
    /// Inclusive start of the co-occurrence window.
    pub window_start: u64,
    /// Exclusive end of the co-occurrence window.
    pub window_end: u64,
    /// The partners, best first.
    pub items: Vec<RelatedItem>,
}

/// One partner article in a related list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelatedItem {
    /// The partner article.
    pub article_id: String,
    /// Sessions (in the window) in which the pair was formed.
    pub cooc: u64,
    /// `cooc / sqrt(views(a) · views(b))`.
    pub score: f64,
}

/// The kind of a ranking: which of popular or trending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankingKind {
    /// By views.
    Popular,
    /// By the trending score.
    Trending,
}

impl RankingKind {
    /// `popular` or `trending`.
    pub fn name(self) -> &'static str {
        match self {
            RankingKind::Popular => "popular",
            RankingKind::Trending => "trending",
        }
    }
}

impl SessionFeature {
    /// The `session_id` of a session (N11).
    pub fn session_id(portal: &str, user_id: &str, start_ts: u64) -> String {
        stable_id(&["session", portal, user_id, &start_ts.to_string()])
    }
    /// The `feature_id` of a session record (N18).
    pub fn feature_id(portal: &str, user_id: &str, start_ts: u64) -> String {
        stable_id(&["feature", "session", portal, user_id, &start_ts.to_string()])
    }
}

impl Feature {
    /// A ranking record for `portal` and the window ending at `window_end`.
    pub fn ranking(
        kind: RankingKind,
        portal: &str,
        window_start: u64,
        window_end: u64,
        items: Vec<RankedItem>,
    ) -> Feature {
        let feature = RankingFeature {
            feature_id: stable_id(&["feature", kind.name(), portal, &window_end.to_string()]),
            portal: portal.to_string(),
            window_start,
            window_end,
            items,
        };
        match kind {
            RankingKind::Popular => Feature::Popular(feature),
            RankingKind::Trending => Feature::Trending(feature),
        }
    }

    /// A related record for `article_id` in `portal` at the window ending at `window_end`.
    pub fn related(
        portal: &str,
        article_id: &str,
        window_start: u64,
        window_end: u64,
        items: Vec<RelatedItem>,
    ) -> Feature {
        Feature::Related(RelatedFeature {
            feature_id: stable_id(&[
                "feature",
                "related",
                portal,
                article_id,
                &window_end.to_string(),
            ]),
            portal: portal.to_string(),
            article_id: article_id.to_string(),
            window_start,
            window_end,
            items,
        })
    }
}

impl Feature {
    /// The event time the record is about: the end of its window for a ranking or a related list
    /// (when it became final), the last event's `ts` for a session. Wall clock minus this, when
    /// the record is emitted, is the "event time → feature" latency.
    pub fn event_time(&self) -> u64 {
        match self {
            Feature::Session(session) => session.end_ts,
            Feature::Popular(ranking) | Feature::Trending(ranking) => ranking.window_end,
            Feature::Related(related) => related.window_end,
        }
    }

    /// `session`, `popular`, `trending` or `related`.
    pub fn kind(&self) -> &'static str {
        match self {
            Feature::Session(_) => "session",
            Feature::Popular(_) => "popular",
            Feature::Trending(_) => "trending",
            Feature::Related(_) => "related",
        }
    }

    /// The record's deterministic id.
    pub fn feature_id(&self) -> &str {
        match self {
            Feature::Session(f) => &f.feature_id,
            Feature::Popular(f) | Feature::Trending(f) => &f.feature_id,
            Feature::Related(f) => &f.feature_id,
        }
    }

    /// The portal the record belongs to.
    pub fn portal(&self) -> &str {
        match self {
            Feature::Session(f) => &f.portal,
            Feature::Popular(f) | Feature::Trending(f) => &f.portal,
            Feature::Related(f) => &f.portal,
        }
    }

    /// The event time the record is about: `end_ts` for sessions, `window_end` otherwise (N20).
    pub fn final_ts(&self) -> u64 {
        match self {
            Feature::Session(f) => f.end_ts,
            Feature::Popular(f) | Feature::Trending(f) => f.window_end,
            Feature::Related(f) => f.window_end,
        }
    }

    /// The Kinesis partition key: `user_id` for sessions, `article_id` for related, else `portal`.
    pub fn partition_key(&self) -> &str {
        match self {
            Feature::Session(f) => &f.user_id,
            Feature::Popular(f) | Feature::Trending(f) => &f.portal,
            Feature::Related(f) => &f.article_id,
        }
    }

    /// The sort key of replay files (N20).
    pub fn sort_key(&self) -> (u64, &'static str, &str) {
        (self.final_ts(), self.kind(), self.feature_id())
    }

    /// One JSON object, one line, fixed field order (no line break).
    pub fn to_json(&self) -> String {
        // Strings, integers and finite floats only: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Sorts features into the canonical replay order (N20).
pub fn sort_features(features: &mut [Feature]) {
    features.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_fixed_field_order() {
        let feature = Feature::ranking(
            RankingKind::Popular,
            "g1",
            0,
            60_000,
            vec![RankedItem {
                article_id: "a".into(),
                views: 2,
                engaged_views: 1,
                score: 2.0,
            }],
        );
        let json = feature.to_json();
        assert!(
            json.starts_with(r#"{"type":"popular","feature_id":""#),
            "{json}"
        );
        assert!(json.ends_with(r#""portal":"g1","window_start":0,"window_end":60000,"items":[{"article_id":"a","views":2,"engaged_views":1,"score":2.0}]}"#), "{json}");
        let back: Feature = serde_json::from_str(&json).unwrap();
        assert_eq!(back, feature);
    }
}
