//! Breaking news: a spike is a new article on one portal that, for 10–20 minutes, takes a large
//! share of that portal's reads (a fast ramp up, then a fade). Spikes depend on the seed only, so
//! every partition plans the same ones.

use super::random::mix64;

/// A breaking-news spike.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spike {
    pub(super) number: u64,
    pub(super) portal: u16,
    pub(super) topic: u16,
    pub(super) start_ts: u64,
    pub(super) end_ts: u64,
}

/// How long a spike takes to reach its peak.
pub(super) const SPIKE_RAMP_MS: u64 = 2 * 60_000;

impl Spike {
    /// Spike `number`: a pure function of the seed, so every partition plans the same spikes.
    pub(super) fn plan(
        seed: u64,
        number: u64,
        start_ts: u64,
        every_ms: u64,
        portals: u32,
        topics: u32,
    ) -> Self {
        let hash = mix64(seed ^ mix64(number.wrapping_add(0x5EED_5EED)));
        let start = start_ts.saturating_add(every_ms.saturating_mul(number + 1));
        let duration = 10 * 60_000 + (hash % (10 * 60_000 + 1));
        // Any portal, one of its three most popular topics (breaking news lands in big sections).
        // Both casts fit: portal and topic counts are validated to fit u16.
        let portal = ((hash >> 24) % u64::from(portals)) as u16;
        let topic = ((hash >> 40) % u64::from(topics.min(3))) as u16;
        Spike {
            number,
            portal,
            topic,
            start_ts: start,
            end_ts: start.saturating_add(duration),
        }
    }

    /// The share of its portal's reads the spike takes at `ts`: ramps up over two minutes, holds
    /// until half-time, then fades to a fifth of the peak at the end.
    pub(super) fn share(&self, ts: u64, peak: f64) -> f64 {
        if ts < self.start_ts || ts >= self.end_ts {
            return 0.0;
        }
        let elapsed = (ts - self.start_ts) as f64;
        let duration = (self.end_ts - self.start_ts) as f64;
        let half = duration / 2.0;
        if elapsed < SPIKE_RAMP_MS as f64 {
            peak * elapsed / SPIKE_RAMP_MS as f64
        } else if elapsed < half {
            peak
        } else {
            peak * (1.0 - 0.8 * (elapsed - half) / (duration - half))
        }
    }
}
