//! Event time across live partitions: an idle partition stops holding the watermark back.
//!
//! Partition A sends an event at ts = 1,000,000, waits (processing time) until partition B has been
//! silent for longer than `idle_timeout`, then sends an event at ts = 1,000, far behind. While B was
//! active without a watermark the job watermark was −∞; once B is idle, A alone sets it
//! (995,000 with the 5 s out-of-orderness), so the second event must be dead-lettered as `late`.
//! With B never idle (a long `idle_timeout`), the same input has nothing late.

use std::time::{Duration, Instant};

use crate::algorithms::graph::GraphOptions;
use crate::algorithms::replay::replay;
use crate::config::{Millis, SemanticsConfig};
use crate::event::{RawRecord, Reason, SourcePosition};
use crate::source::{PollStatus, RecordSource, SourceError, SourcesByWorker};
use crate::test_support::pageview_line;

/// A live partition that releases each record once its processing-time deadline has passed.
struct TimedPartition {
    name: String,
    start: Instant,
    /// `(release after, record)`, in order.
    schedule: Vec<(Duration, Vec<u8>)>,
    next: usize,
    /// The partition ends this long after the start.
    ends_after: Duration,
}

impl RecordSource for TimedPartition {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, _max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        let elapsed = self.start.elapsed();
        while let Some((after, bytes)) = self.schedule.get(self.next) {
            if elapsed < *after {
                return Ok(PollStatus::Pending);
            }
            self.next += 1;
            out.push(RawRecord {
                position: SourcePosition {
                    partition: self.name.clone(),
                    position: self.next.to_string(),
                },
                bytes: bytes.clone(),
                corrupt: None,
            });
        }
        Ok(if elapsed >= self.ends_after {
            PollStatus::Finished
        } else {
            PollStatus::Pending
        })
    }
}

fn run(idle_timeout: Millis) -> Vec<Reason> {
    let config = SemanticsConfig {
        idle_timeout,
        ..SemanticsConfig::default()
    };
    let start = Instant::now();
    let a = TimedPartition {
        name: "live:a".into(),
        start,
        schedule: vec![
            (
                Duration::ZERO,
                pageview_line("e1", "g1", "u1", "a", 1_000_000, 0, 0),
            ),
            (
                Duration::from_millis(600),
                pageview_line("e2", "g1", "u2", "b", 1_000, 0, 0),
            ),
        ],
        next: 0,
        ends_after: Duration::from_millis(700),
    };
    let b = TimedPartition {
        name: "live:b".into(),
        start,
        schedule: Vec::new(),
        next: 0,
        ends_after: Duration::from_millis(800),
    };
    let sources: SourcesByWorker = vec![vec![Box::new(a), Box::new(b)]];
    let output = replay(&config, sources, &GraphOptions::default()).unwrap();
    output
        .dead_letters
        .iter()
        .map(|letter| letter.reason)
        .collect()
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    assert_eq!(
        run(Millis(100)),
        [Reason::Late],
        "B idle after 100 ms: A alone sets the watermark"
    );
}

#[test]
fn an_active_partition_without_events_keeps_the_watermark_undefined() {
    assert_eq!(
        run(Millis::seconds(30)),
        Vec::<Reason>::new(),
        "B never idle: nothing can be late"
    );
}
