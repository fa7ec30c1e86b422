//! The parameters of the computation: every default of `SEMANTICS.md` is a key here.
//!
//! Durations are written as strings with a unit (`"150ms"`, `"5s"`, `"30m"`, `"24h"`) or as a bare
//! number of milliseconds. [`SemanticsConfig::validate`] returns *every* problem at once, so a
//! start-up can print them all.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of event or processing time, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// Minutes to milliseconds.
    pub const fn minutes(m: u64) -> Self {
        Millis(m * 60_000)
    }
    /// Seconds to milliseconds.
    pub const fn seconds(s: u64) -> Self {
        Millis(s * 1_000)
    }
    /// Hours to milliseconds.
    pub const fn hours(h: u64) -> Self {
        Millis(h * 3_600_000)
    }
    /// The number of milliseconds.
    pub const fn ms(self) -> u64 {
        self.0
    }

    /// Parses `"250ms"`, `"5s"`, `"10m"`, `"24h"`, `"1d"` or a bare number of milliseconds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits.parse().map_err(|_| {
            format!("`{text}` is not a duration: write a whole number with a unit, e.g. `30s`, `10m`, `24h`")
        })?;
        let factor = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "`{text}` has an unknown unit `{other}`: use ms, s, m, h or d"
                ));
            }
        };
        value
            .checked_mul(factor)
            .map(Millis)
            .ok_or_else(|| format!("`{text}` is too large a duration"))
    }
}

impl From<Millis> for std::time::Duration {
    fn from(value: Millis) -> Self {
        std::time::Duration::from_millis(value.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms != 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(u64),
            Text(String),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Number(ms) => Ok(Millis(ms)),
            Repr::Text(text) => Millis::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// What the job computes and how event time behaves. Field docs give the `SEMANTICS.md` meaning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SemanticsConfig {
    /// Same `event_id` within this span of `ts` is a duplicate beacon.
    pub dedup_window: Millis,
    /// A partition's watermark trails its largest `ts` by this much.
    pub max_out_of_orderness: Millis,
    /// A partition with no record for this long (processing time) stops holding the watermark back.
    pub idle_timeout: Millis,
    /// A gap larger than this between a user's events starts a new session.
    pub session_gap: Millis,
    /// Length of the popular/trending sliding window.
    pub trending_window: Millis,
    /// Windows advance (and the dataflow's clock ticks) by this much; aligned to the epoch.
    pub slide: Millis,
    /// The "recent" tail of the trending window that is compared with the rest.
    pub trending_recent: Millis,
    /// Length of rankings (popular, trending, related).
    pub top_n: usize,
    /// A newly read article pairs with this many previously read distinct articles of the session.
    pub cooc_recent: usize,
    /// Length of the co-occurrence sliding window.
    pub cooc_window: Millis,
    /// A pair must co-occur at least this often in the window to count as related.
    pub cooc_min_support: u64,
    /// A `related` feature for one article is emitted at most this often (event time).
    pub related_interval: Millis,
}

impl Default for SemanticsConfig {
    fn default() -> Self {
        SemanticsConfig {
            dedup_window: Millis::minutes(10),
            max_out_of_orderness: Millis::seconds(5),
            idle_timeout: Millis::seconds(30),
            session_gap: Millis::minutes(30),
            trending_window: Millis::minutes(60),
            slide: Millis::minutes(1),
            trending_recent: Millis::minutes(10),
            top_n: 50,
            cooc_recent: 10,
            cooc_window: Millis::hours(24),
            cooc_min_support: 2,
            related_interval: Millis::minutes(10),
        }
    }
}

/// The largest `top_n` accepted: rankings are served whole and must stay small.
pub const MAX_TOP_N: usize = 1000;

impl SemanticsConfig {
    /// Checks every constraint and returns all the problems found, each naming the key and the fix.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let slide = self.slide.ms();
        if slide == 0 {
            problems.push("`slide` must be positive, e.g. `1m`".to_string());
        }
        let multiple = |name: &str, value: Millis, problems: &mut Vec<String>| {
            if value.ms() == 0 {
                problems.push(format!("`{name}` must be positive"));
            } else if slide != 0 && !value.ms().is_multiple_of(slide) {
                problems.push(format!(
                    "`{name}` ({value}) must be a whole number of `slide`s ({}): windows are aligned to slides",
                    self.slide
                ));
            }
        };
        multiple("trending_window", self.trending_window, &mut problems);
        multiple("trending_recent", self.trending_recent, &mut problems);
        multiple("cooc_window", self.cooc_window, &mut problems);
        multiple("related_interval", self.related_interval, &mut problems);
        if self.trending_recent >= self.trending_window {
            problems.push(format!(
                "`trending_recent` ({}) must be shorter than `trending_window` ({}): the score compares the recent part with the rest",
                self.trending_recent, self.trending_window
            ));
        }
        if self.session_gap.ms() == 0 {
            problems.push("`session_gap` must be positive, e.g. `30m`".to_string());
        }
        if self.dedup_window.ms() == 0 {
            problems.push("`dedup_window` must be positive, e.g. `10m`".to_string());
        }
        if self.top_n == 0 || self.top_n > MAX_TOP_N {
            problems.push(format!(
                "`top_n` must be between 1 and {MAX_TOP_N}, not {}",
                self.top_n
            ));
        }
        if self.cooc_recent == 0 || self.cooc_recent > 100 {
            problems.push(format!(
                "`cooc_recent` must be between 1 and 100, not {}",
                self.cooc_recent
            ));
        }
        if self.cooc_min_support == 0 {
            problems.push("`cooc_min_support` must be at least 1".to_string());
        }
        problems
    }

    /// The tick (timely timestamp) of an event time: `ts` rounded down to a multiple of `slide`.
    pub fn tick(&self, ts: u64) -> u64 {
        ts - ts % self.slide.ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_round_trip() {
        assert_eq!(Millis::parse("150ms"), Ok(Millis(150)));
        assert_eq!(Millis::parse("5s"), Ok(Millis::seconds(5)));
        assert_eq!(Millis::parse("24h"), Ok(Millis::hours(24)));
        assert_eq!(Millis::parse("42"), Ok(Millis(42)));
        assert!(Millis::parse("5 parsecs").is_err());
        assert!(Millis::parse("m").is_err());
        assert_eq!(Millis::hours(24).to_string(), "1d");
        assert_eq!(Millis(1500).to_string(), "1500ms");
    }

    #[test]
    fn defaults_are_valid_and_every_problem_is_reported() {
        assert!(SemanticsConfig::default().validate().is_empty());
        let bad = SemanticsConfig {
            slide: Millis::seconds(7),
            top_n: 0,
            trending_recent: Millis::hours(2),
            ..SemanticsConfig::default()
        };
        let problems = bad.validate();
        assert!(problems.len() >= 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("top_n")));
        assert!(problems.iter().any(|p| p.contains("trending_recent")));
    }
}
