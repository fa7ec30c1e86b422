//! The catalogue of each portal: topic clusters and their articles, with Zipf-distributed
//! popularity. It depends on the seed only, so every partition shares it.

use super::config::SyntheticConfig;
use super::json::write_padded_decimal;
use super::names::write_topic_name;
use super::random::{Cumulative, SplitMix64};

/// One portal's articles, grouped by topic.
#[derive(Clone, Debug)]
pub(super) struct PortalCatalogue {
    /// The portal's name.
    pub(super) name: String,
    /// Every article id; topic `t` owns `article_ids[topic_starts[t]..topic_starts[t + 1]]`.
    pub(super) article_ids: Vec<Box<str>>,
    /// Where each topic's articles start (one extra entry: the end).
    pub(super) topic_starts: Vec<u32>,
    /// Popularity of topics.
    pub(super) topic_popularity: Cumulative,
    /// Popularity of the articles within each topic.
    pub(super) article_popularity: Vec<Cumulative>,
}

impl PortalCatalogue {
    pub(super) fn new(name: &str, config: &SyntheticConfig) -> Self {
        let topics = config.topics_per_portal;
        let per_topic = config.articles_per_portal / topics;
        let extra = config.articles_per_portal % topics;
        let mut article_ids = Vec::with_capacity(config.articles_per_portal as usize);
        let mut topic_starts = Vec::with_capacity(topics as usize + 1);
        let mut article_popularity = Vec::with_capacity(topics as usize);
        for topic in 0..topics {
            topic_starts.push(u32::try_from(article_ids.len()).unwrap_or(u32::MAX));
            let count = per_topic + u32::from(topic < extra);
            let mut id = Vec::new();
            for _ in 0..count {
                id.clear();
                id.extend_from_slice(name.as_bytes());
                id.push(b'/');
                write_topic_name(&mut id, topic);
                id.extend_from_slice(b"/noticia-");
                write_padded_decimal(&mut id, article_ids.len() as u64, 5);
                article_ids.push(String::from_utf8_lossy(&id).into());
            }
            article_popularity.push(Cumulative::zipf(count, config.zipf_exponent));
        }
        topic_starts.push(u32::try_from(article_ids.len()).unwrap_or(u32::MAX));
        PortalCatalogue {
            name: name.to_string(),
            article_ids,
            topic_starts,
            topic_popularity: Cumulative::zipf(topics, config.zipf_exponent),
            article_popularity,
        }
    }

    /// A popular-weighted article of `topic`.
    pub(super) fn article_of_topic(&self, topic: u16, rng: &mut SplitMix64) -> u32 {
        let topic = usize::from(topic);
        self.topic_starts[topic] + self.article_popularity[topic].sample(rng)
    }
}
