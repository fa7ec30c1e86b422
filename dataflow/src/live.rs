//! Live results for the serving layer: what the dataflow pushes to the HTTP side as it goes.
//!
//! Rankings are pushed when they change, stamped with the watermark they are complete up to and
//! whether they are final (a window the watermark has passed) or provisional (the window still
//! filling). The serving layer keeps the latest of each and never recomputes anything per request.

use serde::{Deserialize, Serialize};

use crate::features::{RankedItem, RankingKind, RelatedItem};

/// One change to the live state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LiveUpdate {
    /// The current popular or trending ranking of a portal.
    Ranking {
        /// Popular or trending.
        kind: RankingKind,
        /// The site.
        portal: String,
        /// The window this ranking covers starts here (inclusive).
        window_start: u64,
        /// The window this ranking covers ends here (exclusive).
        window_end: u64,
        /// The ranking is complete up to this event time.
        watermark: u64,
        /// Whether the window is final (`watermark ≥ window_end`).
        is_final: bool,
        /// Best first.
        items: Vec<RankedItem>,
    },
    /// The current related list of an article (always final: computed on final windows).
    Related {
        /// The site.
        portal: String,
        /// The article.
        article_id: String,
        /// The co-occurrence window ends here (exclusive).
        window_end: u64,
        /// Best first.
        items: Vec<RelatedItem>,
    },
    /// A reader's recent reads, as the serving layer keeps them for recommendations (saved with
    /// checkpoints). Re-applying a read is harmless (see the serving layer's `recent_reads`), so a
    /// checkpoint may hold reads that are also replayed after it.
    Reads {
        /// The site.
        portal: String,
        /// The reader.
        user_id: String,
        /// Articles read and the event time of their latest read.
        reads: Vec<(String, u64)>,
    },
}
