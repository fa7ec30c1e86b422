//! [`SyntheticSource`]: the traffic as one source partition, paced by the wall clock or as fast as
//! it is polled, and resumable after a checkpoint.

use pageflow_dataflow::clock::{Clock, SystemClock};
use pageflow_dataflow::event::{RawRecord, SourcePosition};
use pageflow_dataflow::source::{PollStatus, RecordSource, SourceError};

use super::config::{MAX_TS, SyntheticConfig};
use super::traffic::SyntheticTraffic;
use crate::error::ConnectorError;

/// Synthetic traffic as one source partition named `synthetic:<index>`.
///
/// With `events_per_second = Some(r)` it is paced by the wall clock: the traffic starts at the
/// clock's time, runs at `r` records per second, and a poll that finds the next record not yet due
/// returns [`PollStatus::Pending`]. Otherwise it delivers as fast as it is polled, in simulated
/// time, and is a replay (only event time moves its watermark). It finishes only when a `limit` is
/// set. Positions are 1-based record numbers; [`SyntheticSource::resume_after`] continues after a
/// checkpoint.
#[derive(Debug)]
pub struct SyntheticSource {
    /// `synthetic:<index>`.
    name: String,
    /// The generator.
    traffic: SyntheticTraffic,
    /// The wall clock, when paced.
    pacing: Option<Box<dyn Clock>>,
}

impl SyntheticSource {
    /// Partition `partition_index` of the traffic, paced by the system clock if the config says so.
    pub fn new(config: SyntheticConfig, partition_index: u32) -> Result<Self, ConnectorError> {
        Self::with_clock(config, partition_index, Box::new(SystemClock::new()))
    }

    /// Like [`SyntheticSource::new`], with the wall clock given (used only when paced).
    pub fn with_clock(
        config: SyntheticConfig,
        partition_index: u32,
        clock: Box<dyn Clock>,
    ) -> Result<Self, ConnectorError> {
        let (traffic, pacing) = match config.events_per_second {
            Some(rate) => {
                let start_ts = clock.unix_now_ms();
                let traffic =
                    SyntheticTraffic::with_timeline(config, partition_index, start_ts, rate)?;
                (traffic, Some(clock))
            }
            None => (
                SyntheticTraffic::for_partition(config, partition_index)?,
                None,
            ),
        };
        Ok(SyntheticSource {
            name: format!("synthetic:{partition_index}"),
            traffic,
            pacing,
        })
    }

    /// Continues the partition's traffic after a restart from a checkpoint whose position is
    /// `delivered` (the [`SyntheticTraffic::delivered`] count when its last record was taken in).
    ///
    /// - **Positions** go on from `delivered + 1`, and a `limit` still counts every record of the
    ///   partition (resuming at or past it gives a finished source).
    /// - **Event ids never repeat** one delivered before: they read `<tag>-<partition>-r<delivered>-<n>`,
    ///   which no traffic before the checkpoint had (resuming twice from the same checkpoint gives
    ///   the same records, as a replay should).
    /// - **Event time** goes on from the wall clock when paced (`events_per_second`): the first
    ///   record has `ts` = now, nothing makes up for the time the job was down, and nothing is in
    ///   the future. In simulated time it goes on from where the traffic before was (`start_ts`
    ///   plus `delivered` events' worth of event time, plus `max_delivery_delay`), so that the
    ///   restored watermark does not make the new records late.
    /// - **Not a replay of the records that would have come next.** Regenerating the `delivered`
    ///   records to reach the generator's state would take time in proportion to how long the
    ///   traffic has run (a day at the default 2000 records per second is over 170 million
    ///   records), so the generator is instead reseeded from `(seed, partition, delivered)`: it
    ///   starts as fast as a fresh one, deterministically, but with new sessions (readers are the
    ///   same population) and without the beacons that were still in flight (late or re-sent ones
    ///   not yet delivered). For synthetic traffic that is the same thing: more pageviews.
    ///
    /// `resume_after(0)` is the same as a fresh source. Call it before the first poll.
    pub fn resume_after(mut self, delivered: u64) -> Self {
        let start_ts = match &self.pacing {
            Some(clock) => clock.unix_now_ms().min(MAX_TS),
            None => {
                let config = self.traffic.config();
                let came = (delivered as f64 * 1000.0 / config.simulated_events_per_second) as u64;
                if delivered == 0 {
                    config.start_ts
                } else {
                    config
                        .start_ts
                        .saturating_add(came)
                        .saturating_add(config.max_delivery_delay.ms())
                        .min(MAX_TS)
                }
            }
        };
        self.traffic.continue_after(delivered, start_ts);
        self
    }

    /// The generator behind the source.
    pub fn traffic(&self) -> &SyntheticTraffic {
        &self.traffic
    }
}

impl RecordSource for SyntheticSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Result<PollStatus, SourceError> {
        let now = self.pacing.as_ref().map(|clock| clock.unix_now_ms());
        let mut appended = 0;
        let mut line = Vec::with_capacity(256);
        while appended < max {
            let Some(deliver_at) = self.traffic.next_delivery_time() else {
                return Ok(PollStatus::Finished);
            };
            if now.is_some_and(|now| deliver_at > now) {
                return Ok(if appended == 0 {
                    PollStatus::Pending
                } else {
                    PollStatus::Ready
                });
            }
            line.clear();
            if !self.traffic.next_line(&mut line) {
                return Ok(PollStatus::Finished);
            }
            out.push(RawRecord {
                position: SourcePosition {
                    partition: self.name.clone(),
                    position: self.traffic.delivered().to_string(),
                },
                bytes: line.as_slice().to_vec(),
                corrupt: None,
            });
            appended += 1;
        }
        Ok(if self.traffic.is_finished() {
            PollStatus::Finished
        } else {
            PollStatus::Ready
        })
    }

    fn is_replay(&self) -> bool {
        self.pacing.is_none()
    }
}
