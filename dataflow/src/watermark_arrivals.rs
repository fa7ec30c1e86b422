//! When the job's watermark reached each value: the wall clock of the data that closed a window.
//!
//! A window's results are final once the job watermark passes its end, and the watermark moves
//! when the records that carry it have been read and counted. So the wall clock at which the job
//! watermark *first* reached a value `w` is the arrival of the last data a result complete up to
//! `w` needed. The sink thread looks it up when it makes such a result visible over HTTP, and the
//! difference is the "arrival → visible" latency (`pageflow_arrival_to_visible_seconds`): the
//! pipeline's own delay, without the sources' or the allowed out-of-orderness.
//!
//! Ingest records each advance of the job watermark where it publishes it
//! ([`crate::stats::JobStats::watermark_ms`]), so the record is as exact as the watermark itself.
//! It is bounded: advances less than [`WatermarkArrivals::RESOLUTION_MS`] of wall clock apart
//! share one entry (the later values are then said to have arrived up to that much early), and
//! only the newest [`WatermarkArrivals::CAPACITY`] entries are kept, at least 80 s of wall clock;
//! a value older than that is not found, and its latency is not recorded.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// `(watermark, wall clock in ms when the job watermark first reached it)`, both ascending.
#[derive(Debug, Default)]
pub struct WatermarkArrivals {
    entries: Mutex<VecDeque<(u64, u64)>>,
}

impl WatermarkArrivals {
    /// Entries kept (16 bytes each).
    pub const CAPACITY: usize = 8192;
    /// Advances closer than this in wall clock share one entry.
    pub const RESOLUTION_MS: u64 = 10;

    /// Records that the job watermark reached `watermark` at wall clock `now_ms`. A watermark not
    /// above the last one recorded (another worker raced ahead) is ignored.
    pub fn record(&self, watermark: u64, now_ms: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.back_mut() {
            Some((last, _)) if watermark <= *last => {}
            Some((last, at)) if now_ms.saturating_sub(*at) < Self::RESOLUTION_MS => {
                *last = watermark;
            }
            _ => {
                if entries.len() == Self::CAPACITY {
                    entries.pop_front();
                }
                entries.push_back((watermark, now_ms));
            }
        }
    }

    /// The wall clock (ms) at which the job watermark first reached at least `watermark`, or
    /// `None` when it has not yet, or did so before the oldest entry kept.
    pub fn reached_at(&self, watermark: u64) -> Option<u64> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let first_at_or_above = entries.partition_point(|(reached, _)| *reached < watermark);
        if first_at_or_above == 0 && entries.len() == Self::CAPACITY {
            // The entry before the oldest one kept may have reached it already, earlier.
            return entries
                .front()
                .filter(|(reached, _)| *reached == watermark)
                .map(|(_, at)| *at);
        }
        entries.get(first_at_or_above).map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_time_the_watermark_reached_a_value() {
        let arrivals = WatermarkArrivals::default();
        assert_eq!(arrivals.reached_at(1), None);
        arrivals.record(1_000, 50_000);
        arrivals.record(2_000, 50_100);
        // Another worker publishing an older value changes nothing.
        arrivals.record(1_500, 50_200);
        arrivals.record(5_000, 50_300);
        assert_eq!(arrivals.reached_at(0), Some(50_000));
        assert_eq!(arrivals.reached_at(1_000), Some(50_000));
        assert_eq!(arrivals.reached_at(1_001), Some(50_100));
        assert_eq!(arrivals.reached_at(2_000), Some(50_100));
        assert_eq!(arrivals.reached_at(3_000), Some(50_300));
        assert_eq!(arrivals.reached_at(5_001), None, "not reached yet");
    }

    #[test]
    fn close_advances_share_an_entry_and_old_ones_go() {
        let arrivals = WatermarkArrivals::default();
        arrivals.record(1_000, 10_000);
        arrivals.record(1_100, 10_005);
        assert_eq!(
            arrivals.reached_at(1_100),
            Some(10_000),
            "within the resolution"
        );
        arrivals.record(1_200, 10_010);
        assert_eq!(arrivals.reached_at(1_200), Some(10_010));

        let full = WatermarkArrivals::default();
        for i in 0..WatermarkArrivals::CAPACITY as u64 + 10 {
            full.record(1_000 + i, 100 * i);
        }
        assert_eq!(
            full.entries.lock().unwrap().len(),
            WatermarkArrivals::CAPACITY
        );
        // The first ten entries went: their values are not known any more…
        assert_eq!(full.reached_at(1_005), None);
        // …except the oldest entry kept, exactly.
        assert_eq!(full.reached_at(1_010), Some(1_000));
        assert_eq!(full.reached_at(1_011), Some(1_100));
    }
}
