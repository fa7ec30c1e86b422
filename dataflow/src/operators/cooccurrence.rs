//! Co-occurrence: pairs of articles read in the same session.
//!
//! Within a session, taken in `(ts, event_id)` order, an article read for the first time pairs with
//! the previous up to `cooc_recent` distinct articles of the session, counted backwards from that
//! read (re-reading an article makes it recent again; `docs/semantics-notes.md` N15). Each unordered
//! pair is formed once per session, at the `ts` of the read that formed it.
//!
//! This is a dedicated stateful operator rather than a `reduce` over each user's history: it keeps
//! only the last `cooc_recent` distinct articles of every open session, so each read costs
//! `O(cooc_recent)` whatever the session's length. It consumes [`SessionUpdate`]s, which arrive final
//! and in session order, on the worker that owns the user, so no routing is needed.
//!
//! ```
//! use pageflow_dataflow::operators::cooccurrence::RecentArticles;
//! let mut recent = RecentArticles::default();
//! let mut pairs = Vec::new();
//! for article in ["a", "b", "a", "c"] {
//!     let article = article.into();
//!     let first = !recent.contains(&article);
//!     recent.read(&article, first, 2, |x, y| pairs.push((x.to_string(), y.to_string())));
//! }
//! // "c" pairs with the two most recent distinct articles: "a" (re-read) and "b".
//! assert_eq!(pairs, [("a".into(), "b".into()), ("a".into(), "c".into()), ("b".into(), "c".into())]);
//! ```

use crate::event::Id;
use crate::ids::FastMap;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use super::sessionize::{SessionUpdate, UserKey, user_route};
use crate::checkpoint::entries::{Entry, EntryWriter};
use crate::checkpoint::{CheckpointError, Checkpointed, OperatorStates};

/// A pair of articles read together, `article_a < article_b`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArticlePair {
    /// The site.
    pub portal: Id,
    /// The smaller article id.
    pub article_a: Id,
    /// The larger article id.
    pub article_b: Id,
    /// `ts` of the read that formed the pair.
    pub ts: u64,
}

/// The distinct articles of a session, most recently read first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentArticles {
    recent: VecDeque<Id>,
}

impl RecentArticles {
    /// Whether `article` is among the remembered recent articles.
    pub fn contains(&self, article: &Id) -> bool {
        self.recent.iter().any(|a| a == article)
    }

    /// Records a read: on a first read, calls `pair(smaller, larger)` with each remembered article;
    /// then makes `article` the most recent, remembering at most `keep` articles.
    pub fn read(
        &mut self,
        article: &Id,
        first_read: bool,
        keep: usize,
        mut pair: impl FnMut(&Id, &Id),
    ) {
        if first_read {
            for other in &self.recent {
                if other < article {
                    pair(other, article);
                } else {
                    pair(article, other);
                }
            }
        }
        if let Some(position) = self.recent.iter().position(|a| a == article) {
            if let Some(existing) = self.recent.remove(position) {
                self.recent.push_front(existing);
            }
        } else {
            self.recent.push_front(Id::clone(article));
            self.recent.truncate(keep);
        }
    }
}

/// The recent articles of every open session on one worker.
#[derive(Clone, Debug, Default)]
pub struct CooccurrenceState {
    sessions: FastMap<UserKey, RecentArticles>,
}

impl CooccurrenceState {
    /// Applies one session update, appending the pairs it forms.
    pub fn apply(&mut self, update: SessionUpdate, keep: usize, out: &mut Vec<ArticlePair>) {
        match update {
            SessionUpdate::Read(read) => {
                let key = (read.portal, read.user_id);
                if read.new_session {
                    self.sessions.remove(&key);
                }
                let portal = &key.0;
                let ts = read.ts;
                let recent = self.sessions.entry(key.clone()).or_default();
                recent.read(&read.article_id, read.first_read, keep, |a, b| {
                    out.push(ArticlePair {
                        portal: portal.clone(),
                        article_a: Id::clone(a),
                        article_b: Id::clone(b),
                        ts,
                    });
                });
            }
            SessionUpdate::Closed(session) => {
                self.sessions
                    .remove(&(Id::from(session.portal), Id::from(session.user_id)));
            }
        }
    }

    /// Sessions with remembered articles.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// One entry per open session, routed like the user's events (this operator runs beside
/// sessionize, on the worker that owns the user).
impl Checkpointed for CooccurrenceState {
    fn save(&self, out: &mut EntryWriter) -> Result<(), CheckpointError> {
        for (key, recent) in &self.sessions {
            out.keyed(user_route(&key.0, &key.1), &(key, recent))?;
        }
        Ok(())
    }

    fn restore(&mut self, entry: Entry<'_>) -> Result<(), CheckpointError> {
        let (key, recent): (UserKey, RecentArticles) = entry.decode()?;
        self.sessions.insert(key, recent);
        Ok(())
    }
}

/// Forms co-occurrence pairs from finalized session reads.
pub trait Cooccurrences<'scope> {
    /// The pairs formed by each session's first reads, at the reads' times. The recent articles
    /// of open sessions are checkpointed under `"cooccurrence"` in `states`.
    fn cooccurrences(
        self,
        cooc_recent: usize,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, ArticlePair>;
}

impl<'scope> Cooccurrences<'scope> for StreamVec<'scope, u64, SessionUpdate> {
    fn cooccurrences(
        self,
        cooc_recent: usize,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, ArticlePair> {
        let state = states.attach("cooccurrence", CooccurrenceState::default());
        self.unary(Pipeline, "Cooccurrences", move |_capability, _info| {
            let mut out = Vec::new();
            move |input, output| {
                let mut state = state.borrow_mut();
                input.for_each(|cap, data| {
                    for update in data.drain(..) {
                        state.apply(update, cooc_recent, &mut out);
                    }
                    if !out.is_empty() {
                        output.session(&cap).give_iterator(out.drain(..));
                    }
                });
            }
        })
    }
}
