//! Blending recommendation sources into one list.
//!
//! A recommendation answer draws from three ranked sources:
//! - **personalize**: Amazon Personalize's answer for the reader (when configured, in time and
//!   healthy);
//! - **related**: articles read together with what this reader just read (pageflow's co-occurrence
//!   lists, which see a read within seconds, long before Personalize retrains);
//! - **trending**: the portal's trending ranking (fresh articles Personalize has no history for).
//!
//! Each source gets a share of the positions; Personalize gets what the others leave. Positions are
//! handed out by smooth weighted round-robin (the scheme nginx uses for weighted upstreams): at
//! every position each source with items left gains its weight in credit, the richest source
//! places its next item and pays the total weight. The result interleaves the sources evenly
//! instead of stacking them, keeps each source's own order, and when one runs dry the others fill
//! its positions. Articles the reader already read are removed, and an article offered by two
//! sources appears once, where it comes first.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use crate::recent_reads::Read;
use crate::state::Related;

/// Where a recommended article comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Amazon Personalize.
    Personalize,
    /// Read together with what the reader just read.
    Related,
    /// The portal's trending ranking.
    Trending,
}

impl Source {
    /// The name in answers and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Source::Personalize => "personalize",
            Source::Related => "related",
            Source::Trending => "trending",
        }
    }
}

/// One candidate of a source, best first in its list.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The article.
    pub article_id: Arc<str>,
    /// The source's score, if it gives one.
    pub score: Option<f64>,
}

/// One recommended article.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommended {
    /// The article.
    pub article_id: Arc<str>,
    /// Which source placed it.
    pub source: Source,
    /// That source's score, if any.
    pub score: Option<f64>,
}

/// The shares of the positions that the related and trending sources get; Personalize gets the
/// rest (`1 − related − trending`). Without a Personalize answer, related and trending share all
/// positions in the same proportion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlendShares {
    /// Share of related-to-recent-reads, 0 to 1.
    pub related: f64,
    /// Share of trending, 0 to 1.
    pub trending: f64,
}

impl Default for BlendShares {
    fn default() -> Self {
        BlendShares {
            related: 0.3,
            trending: 0.2,
        }
    }
}

/// The first `n` recommendations from the three sources (see the module docs); none of them in
/// `already_read`, each article once.
pub fn blend(
    n: usize,
    shares: BlendShares,
    personalize: &[Candidate],
    related: &[Candidate],
    trending: &[Candidate],
    already_read: &HashSet<&str>,
) -> Vec<Recommended> {
    let personalize_weight = (1.0 - shares.related - shares.trending).max(0.0);
    let mut sources = [
        (Source::Personalize, personalize, personalize_weight),
        (Source::Related, related, shares.related.max(0.0)),
        (Source::Trending, trending, shares.trending.max(0.0)),
    ]
    .map(|(source, list, weight)| Lane {
        source,
        list,
        next: 0,
        // Whole thousandths: integer credits make ties exact (broken by source order).
        weight: (weight * 1000.0).round() as i64,
        credit: 0,
    });
    let mut placed: HashSet<Arc<str>> = HashSet::new();
    let mut answer = Vec::with_capacity(n);
    while answer.len() < n {
        for lane in sources.iter_mut() {
            lane.skip_unusable(&placed, already_read);
        }
        let active_weight: i64 = sources
            .iter()
            .filter(|lane| lane.has_more())
            .map(|lane| lane.weight)
            .sum();
        for lane in sources.iter_mut().filter(|lane| lane.has_more()) {
            lane.credit += lane.weight;
        }
        // The richest source with items left; ties go to the earlier one (personalize first). A
        // source with no share wins only when no source with a share has items left.
        let mut winner: Option<usize> = None;
        for (index, lane) in sources.iter().enumerate() {
            let usable = lane.has_more() && (lane.weight > 0 || active_weight == 0);
            if usable && winner.is_none_or(|w| lane.credit > sources[w].credit) {
                winner = Some(index);
            }
        }
        let Some(winner) = winner else { break };
        let lane = &mut sources[winner];
        lane.credit -= active_weight;
        let candidate = &lane.list[lane.next];
        lane.next += 1;
        placed.insert(Arc::clone(&candidate.article_id));
        answer.push(Recommended {
            article_id: Arc::clone(&candidate.article_id),
            source: lane.source,
            score: candidate.score,
        });
    }
    answer
}

/// One source's list and its place in the round-robin.
struct Lane<'a> {
    source: Source,
    list: &'a [Candidate],
    next: usize,
    weight: i64,
    credit: i64,
}

impl Lane<'_> {
    fn has_more(&self) -> bool {
        self.next < self.list.len()
    }

    /// Moves past candidates already placed or already read.
    fn skip_unusable(&mut self, placed: &HashSet<Arc<str>>, already_read: &HashSet<&str>) {
        while let Some(candidate) = self.list.get(self.next) {
            if placed.contains(&candidate.article_id)
                || already_read.contains(&*candidate.article_id)
            {
                self.next += 1;
            } else {
                break;
            }
        }
    }
}

/// How much a related list counts per step back in the reader's history: the partners of the
/// article read just now outweigh those of one read ten articles ago.
pub const RECENCY_DECAY: f64 = 0.7;

/// The related source for a reader: the partners of their recent reads (newest first), each
/// partner scored by its best `related score × RECENCY_DECAY^k` over the reads (`k` = how many reads
/// back), best first (ties by article id).
pub fn related_candidates(
    recent: &[Read],
    related_of: impl Fn(&str) -> Option<Arc<Related>>,
) -> Vec<Candidate> {
    let mut best: std::collections::HashMap<Arc<str>, f64> = std::collections::HashMap::new();
    let mut decay = 1.0;
    for read in recent {
        if let Some(list) = related_of(&read.article_id) {
            for item in &list.items {
                let score = item.score * decay;
                let entry = best
                    .entry(Arc::from(item.article_id.as_str()))
                    .or_insert(score);
                if score > *entry {
                    *entry = score;
                }
            }
        }
        decay *= RECENCY_DECAY;
    }
    let mut candidates: Vec<Candidate> = best
        .into_iter()
        .map(|(article_id, score)| Candidate {
            article_id,
            score: Some(score),
        })
        .collect();
    candidates.sort_by(|a, b| {
        b.score
            .unwrap_or_default()
            .total_cmp(&a.score.unwrap_or_default())
            .then_with(|| a.article_id.cmp(&b.article_id))
    });
    candidates
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use pageflow_dataflow::features::RelatedItem;
    use proptest::prelude::*;

    use super::*;

    fn candidates(ids: &[u8]) -> Vec<Candidate> {
        ids.iter()
            .map(|id| Candidate {
                article_id: Arc::from(format!("a{id}")),
                score: Some(f64::from(*id)),
            })
            .collect()
    }

    fn sources_of(answer: &[Recommended]) -> Vec<&'static str> {
        answer.iter().map(|r| r.source.name()).collect()
    }

    #[test]
    fn sources_interleave_by_share() {
        let personalize = candidates(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let related = candidates(&[10, 11, 12, 13, 14]);
        let trending = candidates(&[20, 21, 22, 23]);
        let answer = blend(
            10,
            BlendShares::default(),
            &personalize,
            &related,
            &trending,
            &HashSet::new(),
        );
        assert_eq!(
            sources_of(&answer),
            [
                "personalize",
                "related",
                "trending",
                "personalize",
                "personalize",
                "related",
                "personalize",
                "trending",
                "related",
                "personalize"
            ]
        );
        assert_eq!(&*answer[0].article_id, "a0");
        assert_eq!(&*answer[1].article_id, "a10");
    }

    #[test]
    fn without_personalize_related_and_trending_share_everything() {
        let answer = blend(
            5,
            BlendShares::default(),
            &[],
            &candidates(&[10, 11, 12, 13, 14]),
            &candidates(&[20, 21, 22, 23, 24]),
            &HashSet::new(),
        );
        assert_eq!(
            sources_of(&answer),
            ["related", "trending", "related", "trending", "related"]
        );
    }

    #[test]
    fn read_articles_and_repeats_are_left_out() {
        let read: HashSet<&str> = ["a1", "a10"].into_iter().collect();
        let answer = blend(
            10,
            BlendShares::default(),
            &candidates(&[1, 2, 20]),
            &candidates(&[10, 2, 11]),
            &candidates(&[20, 21]),
            &read,
        );
        let ids: Vec<&str> = answer.iter().map(|r| &*r.article_id).collect();
        assert_eq!(ids, ["a2", "a11", "a20", "a21"]);
        assert_eq!(
            sources_of(&answer),
            ["personalize", "related", "trending", "trending"]
        );
    }

    #[test]
    fn related_candidates_weigh_recent_reads_more() {
        let list = |article: &str, partners: &[(&str, f64)]| {
            Arc::new(Related {
                portal: "g1".into(),
                article_id: article.into(),
                window_end: 0,
                items: partners
                    .iter()
                    .map(|(id, score)| RelatedItem {
                        article_id: (*id).into(),
                        cooc: 2,
                        score: *score,
                    })
                    .collect(),
            })
        };
        let lists: HashMap<&str, Arc<Related>> = [
            ("new", list("new", &[("x", 0.5), ("y", 0.4)])),
            ("old", list("old", &[("z", 0.6), ("x", 0.9)])),
        ]
        .into_iter()
        .collect();
        let recent = [
            Read {
                article_id: "new".into(),
                ts: 2,
            },
            Read {
                article_id: "old".into(),
                ts: 1,
            },
        ];
        let found = related_candidates(&recent, |a| lists.get(a).cloned());
        let ranked: Vec<(&str, f64)> = found
            .iter()
            .map(|c| (&*c.article_id, c.score.unwrap_or_default()))
            .collect();
        // x: max(0.5, 0.9 × 0.7 = 0.63); z: 0.6 × 0.7 = 0.42; y: 0.4.
        assert_eq!(ranked.len(), 3);
        assert_eq!(ranked[0].0, "x");
        assert!((ranked[0].1 - 0.63).abs() < 1e-9);
        assert_eq!((ranked[1].0, ranked[2].0), ("z", "y"));
    }

    proptest! {
        /// Whatever the sources: no read article, no repeat, each item where its source has it and
        /// in its source's order, and as many items as the sources can give (up to n).
        #[test]
        fn blend_keeps_its_promises(
            personalize in proptest::collection::vec(0u8..30, 0..15),
            related in proptest::collection::vec(0u8..30, 0..15),
            trending in proptest::collection::vec(0u8..30, 0..15),
            read in proptest::collection::hash_set(0u8..30, 0..8),
            n in 1usize..20,
            related_share in 0.0f64..0.6,
            trending_share in 0.0f64..0.4,
        ) {
            let lists = [candidates(&personalize), candidates(&related), candidates(&trending)];
            let read_ids: Vec<String> = read.iter().map(|id| format!("a{id}")).collect();
            let already_read: HashSet<&str> = read_ids.iter().map(String::as_str).collect();
            let shares = BlendShares { related: related_share, trending: trending_share };
            let answer = blend(n, shares, &lists[0], &lists[1], &lists[2], &already_read);

            let mut seen = HashSet::new();
            for item in &answer {
                prop_assert!(!already_read.contains(&*item.article_id));
                prop_assert!(seen.insert(item.article_id.clone()), "repeated {}", item.article_id);
            }
            let available: HashSet<Arc<str>> = lists
                .iter()
                .flatten()
                .map(|c| c.article_id.clone())
                .filter(|id| !already_read.contains(&**id))
                .collect();
            prop_assert_eq!(answer.len(), n.min(available.len()));
            for (index, source) in [Source::Personalize, Source::Related, Source::Trending].into_iter().enumerate() {
                let positions: Vec<usize> = answer
                    .iter()
                    .filter(|item| item.source == source)
                    .map(|item| {
                        lists[index]
                            .iter()
                            .position(|c| c.article_id == item.article_id)
                            .unwrap_or(usize::MAX)
                    })
                    .collect();
                prop_assert!(positions.iter().all(|p| *p != usize::MAX), "not in its source");
                prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of source order");
            }
        }

        /// With every source long enough, each gets its share of the positions, within one.
        #[test]
        fn shares_hold_when_every_source_has_enough(
            n in 1usize..40,
            related_share in 0.0f64..0.6,
            trending_share in 0.0f64..0.4,
        ) {
            let personalize: Vec<u8> = (0..40).collect();
            let related: Vec<u8> = (40..80).collect();
            let trending: Vec<u8> = (80..120).collect();
            let shares = BlendShares { related: related_share, trending: trending_share };
            let answer = blend(
                n,
                shares,
                &candidates(&personalize),
                &candidates(&related),
                &candidates(&trending),
                &HashSet::new(),
            );
            let count = |source| answer.iter().filter(|r| r.source == source).count() as f64;
            let expected = [
                (Source::Personalize, 1.0 - related_share - trending_share),
                (Source::Related, related_share),
                (Source::Trending, trending_share),
            ];
            for (source, share) in expected {
                let want = share * n as f64;
                prop_assert!((count(source) - want).abs() <= 1.0 + 1e-9,
                    "{:?}: {} placed, {} expected of {}", source, count(source), want, n);
            }
        }
    }
}
