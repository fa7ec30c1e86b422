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
        const UNITS: &[(&str, u64)] = &[
            ("", 1),
            ("ms", 1),
            ("s", 1_000),
            ("m", 60_000),
            ("min", 60_000),
            ("h", 3_600_000),
            ("d", 86_400_000),
        ];
        parse_with_unit(
            text,
            "a duration",
            "`30s`, `10m`, `24h`",
            "ms, s, m, h or d",
            UNITS,
        )
        .map(Millis)
    }
}

/// A whole number followed by one of `units` (name, factor), e.g. `"30s"` or `"4GiB"`: the value
/// times the unit's factor. Errors name `what` was expected and show `examples` and `unit_names`.
pub fn parse_with_unit(
    text: &str,
    what: &str,
    examples: &str,
    unit_names: &str,
    units: &[(&str, u64)],
) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| {
        format!("`{text}` is not {what}: write a whole number with a unit, e.g. {examples}")
    })?;
    let unit = unit.trim();
    let Some((_, factor)) = units.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "`{text}` has an unknown unit `{unit}`: use {unit_names}"
        ));
    };
    value
        .checked_mul(*factor)
        .ok_or_else(|| format!("`{text}` is too large for {what}"))
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
        /// A number of milliseconds or a duration with a unit; anything else is named in the error.
        struct MillisVisitor;

        impl serde::de::Visitor<'_> for MillisVisitor {
            type Value = Millis;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration such as \"30s\", \"10m\", \"24h\" or a number of milliseconds",
                )
            }

            fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<Millis, E> {
                Ok(Millis(ms))
            }

            fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<Millis, E> {
                u64::try_from(ms)
                    .map(Millis)
                    .map_err(|_| E::custom(format!("{ms} is negative: a duration is at least 0")))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Millis, E> {
                Millis::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(MillisVisitor)
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
    /// The co-occurrence window (and the views `related` divides by) advances by this much: window
    /// `j` covers `[j·cooc_slide − cooc_window, j·cooc_slide)`, and `related` is evaluated only at
    /// these window ends. A whole number of `slide`s; `cooc_window` is a whole number of these.
    /// (A day-long window needs no minute precision: this keeps its state smaller.)
    pub cooc_slide: Millis,
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
            cooc_slide: Millis::minutes(10),
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
        multiple("cooc_slide", self.cooc_slide, &mut problems);
        multiple("related_interval", self.related_interval, &mut problems);
        let cooc_slide = self.cooc_slide.ms();
        if cooc_slide != 0 && !self.cooc_window.ms().is_multiple_of(cooc_slide) {
            problems.push(format!(
                "`cooc_window` ({}) must be a whole number of `cooc_slide`s ({}): the co-occurrence window advances by `cooc_slide`",
                self.cooc_window, self.cooc_slide
            ));
        }
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

    /// The co-occurrence counterpart of [`Self::tick`]: `ts` rounded down to a multiple of
    /// `cooc_slide`. The first co-occurrence window whose end is after `ts` (the first to count it)
    /// ends at `cooc_tick(ts) + cooc_slide`. Always a tick too, as `cooc_slide` is a whole number of
    /// `slide`s.
    pub fn cooc_tick(&self, ts: u64) -> u64 {
        ts - ts % self.cooc_slide.ms()
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

    #[test]
    fn cooc_slide_divides_cooc_window_and_is_divided_by_slide() {
        let defaults = SemanticsConfig::default();
        assert_eq!(defaults.cooc_slide, Millis::minutes(10));
        assert!(
            defaults
                .cooc_window
                .ms()
                .is_multiple_of(defaults.cooc_slide.ms())
        );

        // 90 s is not a whole number of 1-minute slides; a day is not a whole number of 7 minutes.
        let off_slide = SemanticsConfig {
            cooc_slide: Millis::seconds(90),
            ..SemanticsConfig::default()
        };
        let problems = off_slide.validate();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`cooc_slide` (90s)") && p.contains("`slide`s (1m)")),
            "{problems:?}"
        );
        let off_window = SemanticsConfig {
            cooc_slide: Millis::minutes(7),
            ..SemanticsConfig::default()
        };
        assert_eq!(
            off_window.validate(),
            vec![
                "`cooc_window` (1d) must be a whole number of `cooc_slide`s (7m): the co-occurrence window advances by `cooc_slide`"
                    .to_string()
            ]
        );
        // Both at once, with the rest of the problems: every one is reported.
        let both = SemanticsConfig {
            cooc_slide: Millis::seconds(90),
            cooc_window: Millis::minutes(100),
            top_n: 0,
            ..SemanticsConfig::default()
        };
        let problems = both.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("`cooc_slide`")));
        assert!(problems.iter().any(|p| p.starts_with("`cooc_window`")));
        assert!(problems.iter().any(|p| p.starts_with("`top_n`")));
        // Zero is reported once, as not positive (no division by it).
        let zero = SemanticsConfig {
            cooc_slide: Millis(0),
            ..SemanticsConfig::default()
        };
        assert_eq!(
            zero.validate(),
            vec!["`cooc_slide` must be positive".to_string()]
        );
    }

    #[test]
    fn cooc_tick_rounds_down_to_cooc_slide() {
        let config = SemanticsConfig::default();
        let ten_minutes = 600_000;
        assert_eq!(config.cooc_tick(0), 0);
        assert_eq!(config.cooc_tick(ten_minutes - 1), 0);
        assert_eq!(config.cooc_tick(ten_minutes), ten_minutes);
        assert_eq!(config.cooc_tick(3 * ten_minutes + 59_999), 3 * ten_minutes);
        // A co-occurrence tick is always a tick.
        assert_eq!(
            config.tick(config.cooc_tick(1_234_567)),
            config.cooc_tick(1_234_567)
        );
    }
}
