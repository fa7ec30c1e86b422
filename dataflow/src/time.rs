//! Event time: per-partition watermarks, idleness, and the job watermark.
//!
//! Every partition (file, shard, synthetic stream) keeps the largest `ts` of its valid records; its
//! watermark trails that by `max_out_of_orderness`. The job watermark is the minimum over partitions
//! that are neither idle nor finished. A partition with no valid record yet has no watermark, and
//! while such a partition is active the job watermark is −∞ (nothing is late, `docs/semantics-notes.md`
//! N6). A finished partition (end of file) never holds the watermark back again (N8); when every
//! partition has finished the watermark is +∞.
//!
//! Every worker holds a replica of the [`WatermarkBoard`], with one slot per worker of the whole
//! job: it publishes the opinion of its own partitions into its replica and reads everyone's
//! minimum from it. The other workers' opinions reach the replica as [`BoardUpdate`]s through the
//! watermark exchange ([`crate::watermark_exchange`]), not through shared memory, so the board
//! means the same when the workers are spread over processes. Holding capabilities at the job's
//! minimum, rather than at each worker's own watermark, is what lets a worker accept an event that
//! is on time for the job even though it is behind the worker's own partitions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a set of partitions says about the watermark.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Opinion {
    /// Some active partition has no watermark yet: the watermark is −∞.
    Undefined,
    /// The minimum watermark of the active partitions.
    At(u64),
    /// Every partition is idle (live sources): no opinion, the watermark holds where it is.
    Idle,
    /// Every partition has ended: no further records, the watermark may go to +∞.
    Finished,
}

/// The job watermark as seen by one worker.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Watermark {
    /// No watermark yet: nothing is late.
    MinusInfinity,
    /// Every record with `ts` below this has been seen.
    At(u64),
    /// Input has ended.
    PlusInfinity,
}

impl Watermark {
    /// Whether an event with this `ts` is late.
    pub fn is_late(self, ts: u64) -> bool {
        match self {
            Watermark::MinusInfinity => false,
            Watermark::At(wm) => ts < wm,
            Watermark::PlusInfinity => true,
        }
    }

    /// The watermark in milliseconds, if finite.
    pub fn ms(self) -> Option<u64> {
        match self {
            Watermark::At(wm) => Some(wm),
            _ => None,
        }
    }
}

/// One partition's event-time state.
#[derive(Clone, Debug, Default)]
pub struct PartitionClock {
    /// Largest `ts` of the valid records seen (duplicates included).
    pub max_ts: Option<u64>,
    /// Processing time (ms) of the last record seen, for idleness.
    pub last_record_at: Option<u64>,
    /// The partition has ended.
    pub finished: bool,
}

impl PartitionClock {
    /// This partition's watermark: `max_ts − max_out_of_orderness`, saturating at 0.
    pub fn watermark(&self, max_out_of_orderness: u64) -> Option<u64> {
        self.max_ts
            .map(|max| max.saturating_sub(max_out_of_orderness))
    }

    /// Counts a valid record into the partition.
    pub fn observe(&mut self, ts: u64) {
        self.max_ts = Some(self.max_ts.map_or(ts, |max| max.max(ts)));
    }
}

/// `a − b` in ms, signed and saturating: how far one time is ahead of another (a watermark's
/// delay behind the wall clock, a partition's lead over the job watermark).
pub fn signed_difference_ms(a: u64, b: u64) -> i64 {
    let difference = i128::from(a) - i128::from(b);
    i64::try_from(difference).unwrap_or(if difference < 0 { i64::MIN } else { i64::MAX })
}

/// Combines the opinions of several partitions or workers.
pub fn combine(opinions: impl IntoIterator<Item = Opinion>) -> Opinion {
    let mut result = Opinion::Finished;
    for opinion in opinions {
        result = match (result, opinion) {
            (Opinion::Undefined, _) | (_, Opinion::Undefined) => Opinion::Undefined,
            (Opinion::At(a), Opinion::At(b)) => Opinion::At(a.min(b)),
            (Opinion::At(a), _) | (_, Opinion::At(a)) => Opinion::At(a),
            (Opinion::Idle, _) | (_, Opinion::Idle) => Opinion::Idle,
            (Opinion::Finished, Opinion::Finished) => Opinion::Finished,
        };
    }
    result
}

/// One worker's replica of the opinions of every worker of the job, and the job watermark they
/// imply. Its own worker writes its slot directly ([`WatermarkBoard::publish`]); the other slots
/// change when their workers' [`BoardUpdate`]s arrive ([`WatermarkBoard::receive`]). The mutex
/// is there for the one reader outside the worker: serving reads local worker 0's replica
/// through a [`BoardView`].
#[derive(Debug)]
pub struct WatermarkBoard {
    state: Mutex<BoardState>,
    /// What each partition last reported, for operators to see (apart from `state`, so that a
    /// reader never delays a worker publishing its opinion).
    partitions: Mutex<Reports>,
}

/// Every partition's last report, with the update it came in (so that an older update arriving
/// late never overwrites a newer one).
#[derive(Clone, Debug, Default)]
struct Reports {
    latest: BTreeMap<String, PartitionWatermark>,
    /// The sender and sequence number of the update each report came in (none: reported here).
    from: BTreeMap<String, (usize, u64)>,
}

/// What one worker tells every other worker's replica of the board: its opinion, its partitions'
/// reports and the restored partitions it has taken up since its previous update. Each worker
/// numbers its updates 1, 2, …; a replica keeps the highest-numbered opinion of each sender, so
/// the order in which updates of different senders arrive does not matter.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoardUpdate {
    /// The worker (job-wide index) whose opinion this is.
    pub sender: usize,
    /// The sender's count of its updates, from 1.
    pub seq: u64,
    /// The sender's opinion now.
    pub opinion: Opinion,
    /// Partitions of the sender that reported since its previous update.
    pub reports: Vec<(String, PartitionWatermark)>,
    /// Restored partitions the sender took up since its previous update.
    pub claims: Vec<String>,
    /// Partitions the sender's finished partitions continue in, with the opinion they hold the
    /// watermark at until a worker takes them up ([`crate::source::RecordSource::successors`]),
    /// for at most `expect_for_ms`.
    pub expects: Vec<(String, Opinion)>,
    /// How long `expects` may hold the watermark (processing time, ms).
    pub expect_for_ms: u64,
}

/// One source partition's event time as its worker last reported it (about once a second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionWatermark {
    /// Its watermark (`max_ts − max_out_of_orderness`), `None` before its first valid record.
    pub watermark_ms: Option<u64>,
    /// No record for `idle_timeout` (live sources): it does not hold the job watermark back.
    pub idle: bool,
    /// It has ended: it never holds the job watermark back again.
    pub finished: bool,
    /// The job watermark as its worker saw it at the same moment (the partition's lead over it
    /// is then measured at one instant, not across a second of progress).
    pub job_watermark_ms: Option<u64>,
    /// How far behind the newest record of its source it is read (see
    /// [`crate::source::RecordSource::lag_ms`]), when the source tells.
    pub lag_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct BoardState {
    opinions: Vec<Opinion>,
    /// For every worker, the sequence number of its latest update applied here (0: none yet).
    heard: Vec<u64>,
    watermark: Watermark,
    /// Partitions restored from a checkpoint that no worker has taken up again yet (a Kinesis
    /// shard waits for discovery): they hold the watermark where they stood, until `idle_after`.
    expected: BTreeMap<String, Opinion>,
    expected_until: Option<Instant>,
    /// Every partition some worker has taken up: an expectation arriving after the claim (from
    /// another worker, whose update came later) is already met.
    claimed: std::collections::BTreeSet<String>,
}

impl BoardState {
    /// Every worker's opinion and every expected partition's, combined.
    fn combined(&self, except_worker: Option<usize>) -> Opinion {
        let expecting = self
            .expected_until
            .is_some_and(|until| Instant::now() < until);
        combine(
            self.opinions
                .iter()
                .enumerate()
                .filter(|(index, _)| Some(*index) != except_worker)
                .map(|(_, opinion)| *opinion)
                .chain(self.expected.values().copied().filter(|_| expecting)),
        )
    }

    /// Moves the job watermark to what the opinions now imply (never backwards).
    fn advance(&mut self) -> Watermark {
        let proposed = match self.combined(None) {
            Opinion::Undefined => Watermark::MinusInfinity,
            Opinion::At(wm) => Watermark::At(wm),
            Opinion::Idle => self.watermark,
            Opinion::Finished => Watermark::PlusInfinity,
        };
        self.watermark = self.watermark.max(proposed);
        self.watermark
    }
}

impl WatermarkBoard {
    /// A board for `workers` workers, each starting undefined.
    pub fn new(workers: usize) -> Self {
        Self::with_opinions(vec![Opinion::Undefined; workers])
    }

    /// A board whose workers start with the given opinions: workers that own no partition start
    /// `Finished`, so they never hold back a watermark they know nothing about.
    pub fn with_opinions(opinions: Vec<Opinion>) -> Self {
        WatermarkBoard {
            state: Mutex::new(BoardState {
                heard: vec![0; opinions.len()],
                opinions,
                watermark: Watermark::MinusInfinity,
                expected: BTreeMap::new(),
                expected_until: None,
                claimed: std::collections::BTreeSet::new(),
            }),
            partitions: Mutex::new(Reports::default()),
        }
    }

    /// A copy of this board for one worker: every worker's replica starts from the same
    /// opinions and the same expected partitions.
    pub fn replica(&self) -> Self {
        WatermarkBoard {
            state: Mutex::new(self.lock().clone()),
            partitions: Mutex::new(self.reports().clone()),
        }
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, Reports> {
        // A poisoned lock only means a reader panicked; the reports are still consistent.
        self.partitions
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        // A poisoned lock only means another worker panicked; the data is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Partitions restored from a checkpoint, with their watermark opinions: until a worker takes
    /// each up again ([`WatermarkBoard::claim`]), it holds the job watermark where it stood, as it
    /// would have had the job not stopped. One that has not come back after `idle_after`
    /// (processing time; a trimmed shard) stops holding it back, like an idle partition.
    pub fn expect(
        &self,
        partitions: impl IntoIterator<Item = (String, Opinion)>,
        idle_after: Duration,
    ) {
        let mut state = self.lock();
        let unclaimed: Vec<(String, Opinion)> = partitions
            .into_iter()
            .filter(|(name, _)| !state.claimed.contains(name))
            .collect();
        if unclaimed.is_empty() {
            return;
        }
        state.expected.extend(unclaimed);
        state.expected_until = Some(Instant::now() + idle_after);
    }

    /// A worker reads `partition` (again): its own opinion counts from now on.
    pub fn claim(&self, partition: &str) {
        let mut state = self.lock();
        state.expected.remove(partition);
        state.claimed.insert(partition.to_string());
    }

    /// The combined opinion of every worker but `worker`.
    pub fn others(&self, worker: usize) -> Opinion {
        self.lock().combined(Some(worker))
    }

    /// Publishes `worker`'s opinion and returns the job watermark (never moving backwards).
    pub fn publish(&self, worker: usize, opinion: Opinion) -> Watermark {
        let mut state = self.lock();
        if let Some(slot) = state.opinions.get_mut(worker) {
            *slot = opinion;
        }
        state.advance()
    }

    /// Applies another worker's update: its opinion unless a later one of the same sender is
    /// already here, its reports likewise, and its claims (taking a partition up is for good).
    pub fn receive(&self, update: &BoardUpdate) {
        {
            let mut state = self.lock();
            for partition in &update.claims {
                state.expected.remove(partition);
                state.claimed.insert(partition.clone());
            }
            let unclaimed: Vec<(String, Opinion)> = update
                .expects
                .iter()
                .filter(|(name, _)| !state.claimed.contains(name))
                .cloned()
                .collect();
            if !unclaimed.is_empty() {
                state.expected.extend(unclaimed);
                state.expected_until =
                    Some(Instant::now() + Duration::from_millis(update.expect_for_ms));
            }
            let newer = state
                .heard
                .get(update.sender)
                .is_some_and(|heard| update.seq > *heard);
            if newer {
                state.heard[update.sender] = update.seq;
                state.opinions[update.sender] = update.opinion;
            }
            state.advance();
        }
        let mut reports = self.reports();
        for (partition, report) in &update.reports {
            let stale = reports
                .from
                .get(partition)
                .is_some_and(|&(sender, seq)| sender == update.sender && seq >= update.seq);
            if !stale {
                reports.latest.insert(partition.clone(), *report);
                reports
                    .from
                    .insert(partition.clone(), (update.sender, update.seq));
            }
        }
    }

    /// Every worker's opinion as this replica knows it, by worker.
    pub fn opinions(&self) -> Vec<Opinion> {
        self.lock().opinions.clone()
    }

    /// The current job watermark.
    pub fn watermark(&self) -> Watermark {
        self.lock().watermark
    }

    /// Records what `partition` says now (its worker calls this about once a second).
    pub fn report_partition(&self, partition: &str, report: PartitionWatermark) {
        let mut reports = self.reports();
        match reports.latest.get_mut(partition) {
            Some(slot) => *slot = report,
            None => {
                reports.latest.insert(partition.to_string(), report);
            }
        }
        reports.from.remove(partition);
    }

    /// Every partition's last report, by name.
    pub fn partitions(&self) -> BTreeMap<String, PartitionWatermark> {
        self.reports().latest.clone()
    }

    /// One partition's last report.
    pub fn partition(&self, name: &str) -> Option<PartitionWatermark> {
        self.reports().latest.get(name).copied()
    }
}

/// A read-only view of one worker's replica of the board, for serving (`/v1/job`, `/v1/status`):
/// the job watermark and the partitions' reports as that worker knows them. In a running job it
/// is local worker 0's replica, which hears every worker through the exchange.
#[derive(Clone, Debug)]
pub struct BoardView(Arc<WatermarkBoard>);

impl BoardView {
    /// A view of `board` (which its worker goes on writing).
    pub fn of(board: Arc<WatermarkBoard>) -> Self {
        BoardView(board)
    }

    /// The job watermark as the replica knows it.
    pub fn watermark(&self) -> Watermark {
        self.0.watermark()
    }

    /// Every partition's last report, by name.
    pub fn partitions(&self) -> BTreeMap<String, PartitionWatermark> {
        self.0.partitions()
    }

    /// One partition's last report.
    pub fn partition(&self, name: &str) -> Option<PartitionWatermark> {
        self.0.partition(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_dominates_and_finished_is_neutral() {
        assert_eq!(
            combine([Opinion::At(5), Opinion::Undefined]),
            Opinion::Undefined
        );
        assert_eq!(
            combine([Opinion::At(5), Opinion::Finished, Opinion::At(3)]),
            Opinion::At(3)
        );
        assert_eq!(combine([Opinion::Idle, Opinion::At(7)]), Opinion::At(7));
        assert_eq!(combine([Opinion::Idle, Opinion::Finished]), Opinion::Idle);
        assert_eq!(combine([]), Opinion::Finished);
    }

    #[test]
    fn board_is_monotone_and_holds_when_idle() {
        let board = WatermarkBoard::new(2);
        assert_eq!(board.publish(0, Opinion::At(10)), Watermark::MinusInfinity);
        assert_eq!(board.publish(1, Opinion::At(20)), Watermark::At(10));
        assert_eq!(board.publish(0, Opinion::Idle), Watermark::At(20));
        assert_eq!(board.publish(1, Opinion::Idle), Watermark::At(20));
        assert_eq!(
            board.publish(1, Opinion::At(5)),
            Watermark::At(20),
            "never moves back"
        );
        board.publish(0, Opinion::Finished);
        assert_eq!(board.publish(1, Opinion::Finished), Watermark::PlusInfinity);
    }

    #[test]
    fn restored_partitions_hold_the_watermark_until_claimed_or_idle() {
        let board = WatermarkBoard::new(1);
        board.expect(
            [("kinesis:g2/0".to_string(), Opinion::At(5))],
            Duration::from_secs(60),
        );
        assert_eq!(
            board.publish(0, Opinion::At(20)),
            Watermark::At(5),
            "a shard not back yet holds it"
        );
        board.claim("kinesis:g2/0");
        assert_eq!(board.publish(0, Opinion::At(20)), Watermark::At(20));

        let board = WatermarkBoard::new(1);
        board.expect([("gone".to_string(), Opinion::At(5))], Duration::ZERO);
        assert_eq!(
            board.publish(0, Opinion::At(20)),
            Watermark::At(20),
            "past idle_after it no longer holds"
        );
    }

    #[test]
    fn a_finished_shards_children_hold_the_watermark_until_a_worker_takes_them_up() {
        // Worker 0 read the parent; its children reach worker 1 only later.
        let replica = WatermarkBoard::new(2);
        replica.publish(1, Opinion::At(100));
        let parent_finished = BoardUpdate {
            sender: 0,
            seq: 1,
            opinion: Opinion::Finished,
            reports: Vec::new(),
            claims: Vec::new(),
            expects: vec![
                ("kinesis:g1/child-a".to_string(), Opinion::At(40)),
                ("kinesis:g1/child-b".to_string(), Opinion::At(40)),
            ],
            expect_for_ms: 60_000,
        };
        replica.receive(&parent_finished);
        assert_eq!(
            replica.publish(1, Opinion::At(100)),
            Watermark::At(40),
            "the gap before the children are read does not let the watermark run ahead"
        );
        replica.claim("kinesis:g1/child-a");
        assert_eq!(replica.publish(1, Opinion::At(100)), Watermark::At(40));
        replica.claim("kinesis:g1/child-b");
        assert_eq!(replica.publish(1, Opinion::At(100)), Watermark::At(100));

        // A claim heard before the expectation (another worker's update came first) meets it.
        let replica = WatermarkBoard::new(2);
        replica.receive(&BoardUpdate {
            sender: 1,
            seq: 1,
            opinion: Opinion::At(100),
            reports: Vec::new(),
            claims: vec![
                "kinesis:g1/child-a".to_string(),
                "kinesis:g1/child-b".to_string(),
            ],
            expects: Vec::new(),
            expect_for_ms: 0,
        });
        replica.receive(&parent_finished);
        assert_eq!(replica.publish(1, Opinion::At(100)), Watermark::At(100));
    }

    #[test]
    fn the_board_keeps_each_partitions_last_report() {
        let board = WatermarkBoard::new(1);
        let at = |ms| PartitionWatermark {
            watermark_ms: Some(ms),
            ..PartitionWatermark::default()
        };
        board.report_partition("file:a", at(10));
        board.report_partition("file:b", at(30));
        board.report_partition("file:a", at(20));
        let partitions = board.partitions();
        assert_eq!(partitions.len(), 2);
        assert_eq!(partitions["file:a"], at(20));
        assert_eq!(partitions["file:b"], at(30));
    }

    #[test]
    fn lateness_is_strictly_below_the_watermark() {
        assert!(!Watermark::MinusInfinity.is_late(0));
        assert!(Watermark::At(10).is_late(9));
        assert!(!Watermark::At(10).is_late(10));
    }
}
