//! Which shards a stream has, and which of them may be read now.
//!
//! **Listing.** [`list_shards`] pages through `ListShards` (`NextToken` follow-ups carry only the
//! token, as the API requires) and starts over when a token expires. It is called from one place,
//! the consumer's coordinator, never by every worker: `ListShards` is limited per account (100
//! calls per second), and a job with hundreds of shards and workers that each list would throttle
//! itself.
//!
//! **Lineage.** Resharding closes shards and opens children: a split gives one parent two children,
//! a merge gives two parents (`ParentShardId`, `AdjacentParentShardId`) one child. Records of one
//! partition key go to the parent before the reshard and to a child after it, so a child may be read
//! only once every parent has been read to its end; otherwise a user's later pageviews could
//! overtake earlier ones. [`ShardLineage`] keeps that rule: it knows every listed shard's parents,
//! which shards are being read and which are done, and says which shards may start. A parent that is
//! no longer listed (trimmed past the retention period) cannot hold its children back. Done shards
//! are forgotten once the listing no longer contains them.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;

use crate::ConnectorError;
use crate::aws::classify;
use crate::retry::{Backoff, Jitter};

/// One shard as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// Its id.
    pub shard_id: String,
    /// The shards it came from (none for an original shard, two after a merge).
    pub parents: Vec<String>,
    /// Whether it is closed to new records (it has an ending sequence number).
    pub closed: bool,
}

/// Lists every shard of `stream` (a name or an ARN), `page_size` per call, retrying throttling and
/// transient failures with backoff.
///
/// Errors only for failures no retry can fix (a missing stream, no permission).
pub async fn list_shards(
    client: &Client,
    stream: &str,
    page_size: i32,
    backoff: Backoff,
) -> Result<Vec<ShardInfo>, ConnectorError> {
    let mut jitter = Jitter::new();
    let mut failures = 0u32;
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = client.list_shards().max_results(page_size);
        let request = match &next_token {
            // Follow-up pages name only the token: the API rejects a stream name beside it.
            Some(token) => request.next_token(token),
            None if stream.starts_with("arn:") => request.stream_arn(stream),
            None => request.stream_name(stream),
        };
        match request.send().await {
            Ok(page) => {
                failures = 0;
                shards.extend(page.shards().iter().map(|shard| {
                    let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                        .into_iter()
                        .flatten()
                        .map(str::to_string)
                        .collect();
                    ShardInfo {
                        shard_id: shard.shard_id().to_string(),
                        parents,
                        closed: shard
                            .sequence_number_range()
                            .and_then(|range| range.ending_sequence_number())
                            .is_some(),
                    }
                }));
                match page.next_token {
                    Some(token) if !page.shards().is_empty() => next_token = Some(token),
                    _ => return Ok(shards),
                }
            }
            Err(error) => {
                let code = error.as_service_error().and_then(|e| e.code());
                if code == Some("ExpiredNextTokenException") {
                    // The listing took longer than the token lives (5 minutes): start over.
                    shards.clear();
                    next_token = None;
                    continue;
                }
                let (message, retryable) = classify(&error);
                if !retryable {
                    return Err(ConnectorError::Aws {
                        what: format!("listing the shards of stream {stream}"),
                        message,
                        retryable: false,
                    });
                }
                failures += 1;
                tracing::debug!(stream, "ListShards failed, backing off: {message}");
                tokio::time::sleep(backoff.delay(failures, jitter.next_u64())).await;
            }
        }
    }
}

/// Where a shard stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Known, waiting for its parents.
    Waiting,
    /// Being read.
    Reading,
    /// Read to its end.
    Done,
}

/// The shards of one stream and the order in which they may be read.
#[derive(Clone, Debug, Default)]
pub struct ShardLineage {
    shards: BTreeMap<String, (Vec<String>, ShardState)>,
}

impl ShardLineage {
    /// An empty lineage: nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges a fresh listing. Shards not seen before start `Waiting`; done shards that the
    /// listing no longer contains are forgotten (their children are no longer held by them).
    pub fn update(&mut self, listing: &[ShardInfo]) {
        let listed: BTreeSet<&str> = listing.iter().map(|s| s.shard_id.as_str()).collect();
        self.shards
            .retain(|id, (_, state)| *state != ShardState::Done || listed.contains(id.as_str()));
        for shard in listing {
            self.shards
                .entry(shard.shard_id.clone())
                .or_insert_with(|| (shard.parents.clone(), ShardState::Waiting));
        }
    }

    /// Records that `shard` was read to its end, and learns its children (from `ChildShards`)
    /// before the next listing shows them.
    pub fn finish(&mut self, shard: &str, children: &[String]) {
        if let Some((_, state)) = self.shards.get_mut(shard) {
            *state = ShardState::Done;
        }
        for child in children {
            let entry = self
                .shards
                .entry(child.clone())
                .or_insert_with(|| (Vec::new(), ShardState::Waiting));
            if !entry.0.iter().any(|parent| parent == shard) {
                entry.0.push(shard.to_string());
            }
        }
    }

    /// The shards that may start now (every parent done or gone), marked `Reading`.
    pub fn start_ready(&mut self) -> Vec<String> {
        let ready: Vec<String> = self
            .shards
            .iter()
            .filter(|(_, (parents, state))| {
                *state == ShardState::Waiting
                    && parents.iter().all(|parent| {
                        self.shards
                            .get(parent)
                            .is_none_or(|(_, state)| *state == ShardState::Done)
                    })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ready {
            if let Some((_, state)) = self.shards.get_mut(id) {
                *state = ShardState::Reading;
            }
        }
        ready
    }

    /// Where `shard` stands, if known.
    pub fn state(&self, shard: &str) -> Option<ShardState> {
        self.shards.get(shard).map(|(_, state)| *state)
    }

    /// Whether every known shard is done.
    pub fn all_done(&self) -> bool {
        self.shards
            .values()
            .all(|(_, state)| *state == ShardState::Done)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An open shard of a listing, with its parents.
    pub(crate) fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_string(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed: false,
        }
    }

    #[test]
    fn children_wait_for_every_parent() {
        let mut lineage = ShardLineage::new();
        // 0 and 1 merged into 3; 2 split into 4 and 5.
        lineage.update(&[
            shard("0", &[]),
            shard("1", &[]),
            shard("2", &[]),
            shard("3", &["0", "1"]),
            shard("4", &["2"]),
            shard("5", &["2"]),
        ]);
        assert_eq!(lineage.start_ready(), ["0", "1", "2"]);
        assert!(lineage.start_ready().is_empty(), "nothing starts twice");
        lineage.finish("0", &["3".to_string()]);
        assert!(lineage.start_ready().is_empty(), "3 still waits for 1");
        lineage.finish("2", &["4".to_string(), "5".to_string()]);
        assert_eq!(lineage.start_ready(), ["4", "5"]);
        lineage.finish("1", &["3".to_string()]);
        assert_eq!(lineage.start_ready(), ["3"]);
    }

    #[test]
    fn trimmed_parents_do_not_hold_children_and_done_shards_are_forgotten() {
        let mut lineage = ShardLineage::new();
        lineage.update(&[shard("7", &["6"])]);
        assert_eq!(lineage.start_ready(), ["7"], "6 is past retention");
        lineage.finish("7", &[]);
        assert_eq!(lineage.state("7"), Some(ShardState::Done));
        lineage.update(&[shard("7", &["6"])]);
        assert!(
            lineage.start_ready().is_empty(),
            "a listed done shard is not read again"
        );
        lineage.update(&[]);
        assert_eq!(lineage.state("7"), None);
        assert!(lineage.all_done());
    }

    #[test]
    fn children_learned_from_the_reader_wait_for_the_listing_of_other_parents() {
        let mut lineage = ShardLineage::new();
        lineage.update(&[shard("a", &[]), shard("b", &[])]);
        assert_eq!(lineage.start_ready(), ["a", "b"]);
        lineage.finish("a", &["c".to_string()]);
        // The listing has not shown c yet; only a is known as its parent.
        assert_eq!(lineage.start_ready(), ["c"]);
    }

    proptest! {
        /// Random reshard histories: whatever the order in which readers finish, no shard starts
        /// before all of its listed parents are done, and every shard starts exactly once.
        #[test]
        fn no_shard_starts_before_its_parents(
            splits in proptest::collection::vec((0usize..64, proptest::bool::ANY), 1..20),
            order in proptest::collection::vec(0usize..1000, 0..200),
        ) {
            // Build a history: each step splits or merges open shards.
            let mut infos = vec![shard("s0", &[]), shard("s1", &[])];
            let mut open = vec!["s0".to_string(), "s1".to_string()];
            let mut next = 2;
            for (pick, merge) in splits {
                if merge && open.len() >= 2 {
                    let a = open.remove(pick % open.len());
                    let b = open.remove(pick % open.len());
                    let child = format!("s{next}");
                    next += 1;
                    infos.push(shard(&child, &[&a, &b]));
                    open.push(child);
                } else {
                    let parent = open.remove(pick % open.len());
                    for _ in 0..2 {
                        let child = format!("s{next}");
                        next += 1;
                        infos.push(shard(&child, &[&parent]));
                        open.push(child);
                    }
                }
            }
            let parents: BTreeMap<String, Vec<String>> =
                infos.iter().map(|s| (s.shard_id.clone(), s.parents.clone())).collect();
            let mut lineage = ShardLineage::new();
            lineage.update(&infos);
            let mut reading: Vec<String> = Vec::new();
            let mut done: BTreeSet<String> = BTreeSet::new();
            let mut started: BTreeSet<String> = BTreeSet::new();
            let mut order = order.into_iter();
            loop {
                for id in lineage.start_ready() {
                    prop_assert!(parents[&id].iter().all(|p| done.contains(p)), "{} started early", id);
                    prop_assert!(started.insert(id.clone()), "{} started twice", id);
                    reading.push(id);
                }
                if reading.is_empty() {
                    break;
                }
                let index = order.next().unwrap_or(0) % reading.len();
                let finished = reading.remove(index);
                let children: Vec<String> = parents
                    .iter()
                    .filter(|(_, ps)| ps.contains(&finished))
                    .map(|(id, _)| id.clone())
                    .collect();
                lineage.finish(&finished, &children);
                done.insert(finished);
            }
            prop_assert_eq!(started.len(), infos.len(), "every shard is read");
            prop_assert!(lineage.all_done());
        }
    }
}
