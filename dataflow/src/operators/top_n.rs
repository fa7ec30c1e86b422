//! Incremental top-N: a ranking that is kept sorted as scores change, so reading the first `n`
//! items costs `O(n)` and a score change costs `O(log items)`, never a re-sort.
//!
//! Ties are broken by the item key ascending, so the ranking is a deterministic function of the
//! scores. Scores are any totally ordered rank key; [`Descending`] turns "higher is better" into the
//! ascending order the set keeps, and [`OrderedScore`] gives `f64` scores a total order.
//!
//! ```
//! use pageflow_dataflow::operators::top_n::{Descending, TopN};
//! let mut ranking = TopN::default();
//! ranking.upsert("b".to_string(), Descending(5u64));
//! ranking.upsert("a".to_string(), Descending(5u64));
//! ranking.upsert("c".to_string(), Descending(9u64));
//! ranking.remove(&"c".to_string());
//! let top: Vec<_> = ranking.top(2).map(|(key, _)| key.as_str()).collect();
//! assert_eq!(top, ["a", "b"]); // equal scores: by key ascending
//! ```

use crate::ids::FastMap;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::hash::Hash;

/// Orders by the wrapped value, largest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Descending<T>(pub T);

impl<T: Ord> PartialOrd for Descending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Ord> Ord for Descending<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.cmp(&self.0)
    }
}

/// An `f64` score with a total order (`f64::total_cmp`).
#[derive(Clone, Copy, Debug)]
pub struct OrderedScore(pub f64);

impl PartialEq for OrderedScore {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OrderedScore {}

impl PartialOrd for OrderedScore {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedScore {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Items ranked by a rank key `R` (smallest first), ties by item key `K` ascending.
#[derive(Clone, Debug)]
pub struct TopN<K, R> {
    order: BTreeSet<(R, K)>,
    ranks: FastMap<K, R>,
}

impl<K, R> Default for TopN<K, R> {
    fn default() -> Self {
        TopN {
            order: BTreeSet::new(),
            ranks: FastMap::default(),
        }
    }
}

impl<K: Ord + Hash + Clone, R: Ord + Clone> TopN<K, R> {
    /// Sets the rank of `key`, inserting it if new.
    pub fn upsert(&mut self, key: K, rank: R) {
        if let Some(old) = self.ranks.insert(key.clone(), rank.clone()) {
            self.order.remove(&(old, key.clone()));
        }
        self.order.insert((rank, key));
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &K) {
        if let Some(old) = self.ranks.remove(key) {
            self.order.remove(&(old, key.clone()));
        }
    }

    /// The rank of `key`, if ranked.
    pub fn rank_of(&self, key: &K) -> Option<&R> {
        self.ranks.get(key)
    }

    /// The first `n` items, best first.
    pub fn top(&self, n: usize) -> impl Iterator<Item = (&K, &R)> {
        self.order.iter().take(n).map(|(rank, key)| (key, rank))
    }

    /// Number of ranked items.
    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    /// Whether nothing is ranked.
    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(ranking: &TopN<&'static str, Descending<u64>>, n: usize) -> Vec<(&'static str, u64)> {
        ranking.top(n).map(|(key, rank)| (*key, rank.0)).collect()
    }

    #[test]
    fn an_upsert_moves_the_item_and_leaves_no_trace_of_its_old_rank() {
        let mut ranking = TopN::default();
        ranking.upsert("a", Descending(3));
        ranking.upsert("b", Descending(2));
        ranking.upsert("b", Descending(5));
        assert_eq!(top(&ranking, 10), [("b", 5), ("a", 3)]);
        assert_eq!(ranking.len(), 2, "one entry per item");
        ranking.upsert("b", Descending(1));
        assert_eq!(top(&ranking, 10), [("a", 3), ("b", 1)]);
        assert_eq!(ranking.rank_of(&"b"), Some(&Descending(1)));
    }

    #[test]
    fn top_cuts_at_n_and_ties_go_by_key() {
        let mut ranking = TopN::default();
        for (key, views) in [("d", 4), ("c", 4), ("a", 1), ("b", 4)] {
            ranking.upsert(key, Descending(views));
        }
        assert_eq!(top(&ranking, 2), [("b", 4), ("c", 4)]);
        assert_eq!(top(&ranking, 0), []);
        assert_eq!(top(&ranking, 10).len(), 4);
    }

    #[test]
    fn removing_an_unknown_item_changes_nothing() {
        let mut ranking = TopN::default();
        ranking.upsert("a", Descending(1));
        ranking.remove(&"z");
        assert_eq!(top(&ranking, 10), [("a", 1)]);
        ranking.remove(&"a");
        assert!(ranking.is_empty() && ranking.rank_of(&"a").is_none());
        assert_eq!(top(&ranking, 10), []);
    }

    #[test]
    fn scores_are_totally_ordered_largest_first() {
        let mut ranking = TopN::default();
        for (key, score) in [("neg", -1.0), ("zero", 0.0), ("big", 7.5), ("small", 0.25)] {
            ranking.upsert(key, Descending(OrderedScore(score)));
        }
        let order: Vec<&str> = ranking.top(10).map(|(key, _)| *key).collect();
        assert_eq!(order, ["big", "small", "zero", "neg"]);
        // total_cmp: -0.0 sorts below 0.0, and NaN is equal to itself (so it can be removed).
        assert!(OrderedScore(-0.0) < OrderedScore(0.0));
        ranking.upsert("nan", Descending(OrderedScore(f64::NAN)));
        ranking.remove(&"nan");
        assert_eq!(ranking.top(10).count(), 4, "the ordered set forgot it too");
    }
}
