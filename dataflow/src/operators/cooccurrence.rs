//! Co-occurrence: pairs of articles read in the same session.
//!
//! Within a session, taken in `(ts, event_id)` order, an article read for the first time pairs with
//! the previous up to `cooc_recent` distinct articles of the session, counted backwards from that
//! read (re-reading an article makes it recent again; `docs/semantics-notes.md` N15). Each unordered
//! pair is formed once per session, at the `ts` of the read that formed it.
//!
//! Pairs are formed by the sessionize operator as it finalizes each reader's reads (it owns the
//! session, so no second copy of it is kept here), counted into co-occurrence buckets on the way
//! out ([`PairCount`]), and windowed by [`super::pair_counts`]. This module holds the concept:
//! [`SessionArticles`], a session's distinct articles in first-read order together with the most
//! recent ones, in one allocation.
//!
//! ```
//! use pageflow_dataflow::intern::Article;
//! use pageflow_dataflow::operators::cooccurrence::SessionArticles;
//! let [a, b, c] = ["a", "b", "c"].map(|id| Article::intern_names("g1", id));
//! let mut session = SessionArticles::default();
//! let mut pairs = Vec::new();
//! for article in [a, b, a, c] {
//!     session.read(article, 2, |x, y| pairs.push((x.id(), y.id())));
//! }
//! // "c" pairs with the two most recent distinct articles: "a" (re-read) and "b".
//! assert_eq!(pairs, [("a", "b"), ("a", "c"), ("b", "c")]);
//! assert_eq!(session.distinct(), [a, b, c]);
//! ```

use serde::{Deserialize, Serialize};

use crate::intern::Article;

/// `count` pairs `{a, b}` (`a < b`, one portal) formed in the co-occurrence bucket starting at
/// `bucket` (a multiple of `cooc_slide`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PairCount {
    /// The smaller article.
    pub a: Article,
    /// The larger article.
    pub b: Article,
    /// The bucket of the reads that formed them.
    pub bucket: u64,
    /// How many.
    pub count: u32,
}

/// The route of a pair's records: a stable hash of both articles' routes.
pub fn pair_route(a: Article, b: Article) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&b.route().to_le_bytes(), a.route())
}

/// The distinct articles of a session, in first-read order, and the most recently read of them.
///
/// One allocation holds both: `[recent…, distinct…]`, where the first `recent` entries are the
/// most recently read distinct articles (most recent first, at most `cooc_recent`) and the rest
/// are all distinct articles in first-read order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionArticles {
    items: Box<[Article]>,
    recent: u8,
}

impl SessionArticles {
    /// The distinct articles, in first-read order.
    pub fn distinct(&self) -> &[Article] {
        &self.items[usize::from(self.recent)..]
    }

    /// The most recently read distinct articles, most recent first.
    pub fn recent(&self) -> &[Article] {
        &self.items[..usize::from(self.recent)]
    }

    /// Records a read of `article`, remembering at most `keep` (≤ 255) recent articles. On the
    /// first read of an article in the session, calls `pair(smaller, larger)` with each recent
    /// article. Returns whether it was the first read.
    pub fn read(
        &mut self,
        article: Article,
        keep: usize,
        mut pair: impl FnMut(Article, Article),
    ) -> bool {
        let keep = keep.clamp(1, usize::from(u8::MAX));
        let recent = usize::from(self.recent);
        let first = !self.distinct().contains(&article);
        if first {
            for &other in self.recent() {
                if other < article {
                    pair(other, article);
                } else {
                    pair(article, other);
                }
            }
        }
        if let Some(position) = self.recent().iter().position(|a| *a == article) {
            // A re-read of a recent article (so not a first read): it becomes the most recent.
            self.items[..=position].rotate_right(1);
            return first;
        }
        let mut items = std::mem::take(&mut self.items).into_vec();
        items.insert(0, article);
        if recent + 1 > keep {
            items.remove(keep);
        } else {
            self.recent += 1;
        }
        if first {
            items.push(article);
        }
        self.items = items.into_boxed_slice();
        first
    }

    /// A session's articles from its recent ones (most recent first) and its distinct ones (in
    /// first-read order), as [`SessionArticles::recent`] and [`SessionArticles::distinct`] gave
    /// them.
    pub fn from_parts(recent: &[Article], distinct: &[Article]) -> Self {
        let recent = &recent[..recent.len().min(usize::from(u8::MAX))];
        SessionArticles {
            items: recent.iter().chain(distinct).copied().collect(),
            recent: recent.len() as u8,
        }
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        // The allocator rounds small blocks up to 16 bytes.
        (self.items.len() * std::mem::size_of::<Article>()).div_ceil(16) * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_reads_refresh_recency_and_old_articles_fall_out() {
        let ids: Vec<Article> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| Article::intern_names("g1", id))
            .collect();
        let mut session = SessionArticles::default();
        let mut pairs = Vec::new();
        for &article in &ids[..3] {
            assert!(session.read(article, 2, |x, y| pairs.push((x.id(), y.id()))));
        }
        // Each new article pairs with the recent ones, most recent first.
        assert_eq!(pairs, [("a", "b"), ("b", "c"), ("a", "c")]);
        assert_eq!(session.recent(), [ids[2], ids[1]]);
        // "a" fell out of the recent ones; re-reading it forms no pair but makes it recent.
        assert!(!session.read(ids[0], 2, |_, _| panic!("a re-read forms no pair")));
        assert_eq!(session.recent(), [ids[0], ids[2]]);
        pairs.clear();
        assert!(session.read(ids[3], 2, |x, y| pairs.push((x.id(), y.id()))));
        assert_eq!(pairs, [("a", "d"), ("c", "d")]);
        assert_eq!(session.distinct(), ids.as_slice());
        assert_ne!(pair_route(ids[0], ids[1]), pair_route(ids[1], ids[0]));
    }
}
