//! The raw archive's layout, and the order `pageflow backfill` reads it in.
//!
//! The local archive ([`pageflow_connectors::files::sink`]) and the Firehose delivery stream
//! (`deploy/cloudformation/pageflow.yaml`, dynamic partitioning) lay the raw layer out alike:
//!
//! ```text
//! raw/portal=<portal>/date=<YYYY-MM-DD>/hour=<HH>/<object>
//! ```
//!
//! where `<object>` is `part-<writer>.jsonl` locally and a Firehose object name (with `.gz` when
//! the stream compresses) on S3. An [`ArchiveObject`] is one such file or object; [`read_order`]
//! sorts them into **the backfill order**: by hour of event time (date, then hour), and within an
//! hour by portal name, then object name; the lines of an object keep their order. [`Filters`]
//! keep the objects of one portal and of a range of UTC dates.

use std::cmp::Ordering;
use std::fmt;

/// A UTC calendar date, `YYYY-MM-DD`, as the archive's `date=` partitions and `--from-date`
/// name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: u16,
    month: u8,
    day: u8,
}

impl Date {
    /// Parses `YYYY-MM-DD` (a real calendar day; leap years count).
    pub fn parse(text: &str) -> Result<Date, String> {
        let bad = || {
            format!("`{text}` is not a date: write it as YYYY-MM-DD (a UTC day, e.g. 2026-12-07)")
        };
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(bad());
        }
        let number = |range: std::ops::Range<usize>| -> Result<u16, String> {
            let digits = &text[range];
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            digits.parse::<u16>().map_err(|_| bad())
        };
        let year = number(0..4)?;
        let month = number(5..7)?;
        let day = number(8..10)?;
        if !(1..=12).contains(&month) {
            return Err(format!(
                "`{text}` is not a date: month {month} is not 1 to 12"
            ));
        }
        let last_day = days_in_month(year, month as u8);
        if day == 0 || day > u16::from(last_day) {
            return Err(format!(
                "`{text}` is not a date: month {month} of {year} has days 1 to {last_day}"
            ));
        }
        Ok(Date {
            year,
            month: month as u8,
            day: day as u8,
        })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl std::str::FromStr for Date {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Date::parse(text)
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// One hour of event time (UTC): an archive partition's `date=` and `hour=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour {
    /// The UTC date.
    pub date: Date,
    /// The UTC hour, 0 to 23.
    pub hour: u8,
}

impl fmt::Display for Hour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:02}h", self.date, self.hour)
    }
}

/// One file or S3 object of the raw layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveObject {
    /// The hour of event time its events belong to.
    pub hour: Hour,
    /// The portal its events belong to.
    pub portal: String,
    /// Its name within its partition directory (the last part of the key or path).
    pub name: String,
    /// Where it is: a path (local) or a key (S3).
    pub location: String,
    /// Its size in bytes, as stored (compressed, when it is).
    pub size: u64,
}

impl ArchiveObject {
    /// Parses `portal=<p>/date=<YYYY-MM-DD>/hour=<HH>/<name>`, the part of a key or path after
    /// `raw/`; `None` for anything else (the `date=unknown/hour=unknown` partition of records
    /// without a time, stray files, "directory" placeholder objects).
    pub fn from_relative(relative: &str, location: String, size: u64) -> Option<ArchiveObject> {
        let mut parts = relative.split('/');
        let portal = parts.next()?.strip_prefix("portal=")?;
        let date = Date::parse(parts.next()?.strip_prefix("date=")?).ok()?;
        let hour_text = parts.next()?.strip_prefix("hour=")?;
        let name = parts.next()?;
        if parts.next().is_some()
            || portal.is_empty()
            || name.is_empty()
            || name.starts_with('.')
            || hour_text.len() != 2
        {
            return None;
        }
        let hour = hour_text.parse::<u8>().ok().filter(|h| *h < 24)?;
        Some(ArchiveObject {
            hour: Hour { date, hour },
            portal: portal.to_string(),
            name: name.to_string(),
            location,
            size,
        })
    }
}

/// The backfill order (see the module docs): hour, then portal, then object name.
pub fn read_order(a: &ArchiveObject, b: &ArchiveObject) -> Ordering {
    (a.hour, &a.portal, &a.name).cmp(&(b.hour, &b.portal, &b.name))
}

/// Which objects a backfill reads: `--portal`, `--from-date`, `--to-date`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only this portal.
    pub portal: Option<String>,
    /// Only hours on or after this date.
    pub from_date: Option<Date>,
    /// Only hours on or before this date.
    pub to_date: Option<Date>,
}

impl Filters {
    /// Checks that `--portal` can name a partition and that the range is not empty
    /// (`--from-date` on or before `--to-date`).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(portal) = &self.portal
            && !pageflow_dataflow::event::is_valid_portal(portal)
        {
            return Err(format!(
                "--portal `{portal}` is not a portal name: 1 to 32 lowercase letters (a-z), digits \
                 or hyphens, not starting with a hyphen, as in the archive's portal=<name>/"
            ));
        }
        if let (Some(from), Some(to)) = (self.from_date, self.to_date)
            && from > to
        {
            return Err(format!(
                "--from-date {from} is after --to-date {to}: the range is inclusive and must not \
                 be empty (swap them, or give the same date twice for one day)"
            ));
        }
        Ok(())
    }

    /// Whether `object` is to be read.
    pub fn keeps(&self, object: &ArchiveObject) -> bool {
        self.portal.as_ref().is_none_or(|p| *p == object.portal)
            && self.from_date.is_none_or(|d| object.hour.date >= d)
            && self.to_date.is_none_or(|d| object.hour.date <= d)
    }

    /// The filters in words, for messages ("" when there are none).
    pub fn describe(&self) -> String {
        let mut words = Vec::new();
        if let Some(portal) = &self.portal {
            words.push(format!("portal {portal}"));
        }
        match (self.from_date, self.to_date) {
            (Some(from), Some(to)) => words.push(format!("dates {from} to {to}")),
            (Some(from), None) => words.push(format!("dates from {from}")),
            (None, Some(to)) => words.push(format!("dates up to {to}")),
            (None, None) => {}
        }
        words.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(relative: &str) -> ArchiveObject {
        ArchiveObject::from_relative(relative, relative.to_string(), 1)
            .unwrap_or_else(|| panic!("{relative} did not parse"))
    }

    #[test]
    fn dates_parse_only_real_days() {
        assert_eq!(
            Date::parse("2024-02-29").map(|d| d.to_string()),
            Ok("2024-02-29".to_string())
        );
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "2024-4-01",
            "yesterday",
            "2024-01-0x",
            "+024-01-01",
        ] {
            let error = Date::parse(bad).err().unwrap_or_default();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn keys_parse_and_others_are_left_out() {
        let parsed = object("portal=g1/date=2026-12-07/hour=05/part-0.jsonl");
        assert_eq!(parsed.portal, "g1");
        assert_eq!(parsed.hour.hour, 5);
        assert_eq!(parsed.name, "part-0.jsonl");
        for other in [
            "portal=g1/date=unknown/hour=unknown/part-0.jsonl",
            "portal=g1/date=2026-12-07/hour=24/part-0.jsonl",
            "portal=g1/date=2026-12-07/hour=5/part-0.jsonl",
            "portal=g1/date=2026-12-07/hour=05/",
            "portal=g1/date=2026-12-07/hour=05/.part-0.jsonl.swp",
            "portal=g1/date=2026-12-07/hour=05/x/part-0.jsonl",
            "date=2026-12-07/hour=05/part-0.jsonl",
        ] {
            assert_eq!(
                ArchiveObject::from_relative(other, String::new(), 0),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn the_order_is_hour_then_portal_then_name() {
        let mut objects = [
            object("portal=g1/date=2026-12-08/hour=00/a"),
            object("portal=ge/date=2026-12-07/hour=23/a"),
            object("portal=g1/date=2026-12-07/hour=23/b"),
            object("portal=g1/date=2026-12-07/hour=23/a"),
            object("portal=g1/date=2026-12-07/hour=09/z"),
        ];
        objects.sort_by(read_order);
        let keys: Vec<&str> = objects.iter().map(|o| o.location.as_str()).collect();
        assert_eq!(
            keys,
            [
                "portal=g1/date=2026-12-07/hour=09/z",
                "portal=g1/date=2026-12-07/hour=23/a",
                "portal=g1/date=2026-12-07/hour=23/b",
                "portal=ge/date=2026-12-07/hour=23/a",
                "portal=g1/date=2026-12-08/hour=00/a",
            ]
        );
    }

    #[test]
    fn filters_keep_a_portal_and_an_inclusive_date_range() -> Result<(), String> {
        let filters = Filters {
            portal: Some("g1".to_string()),
            from_date: Some(Date::parse("2026-12-07")?),
            to_date: Some(Date::parse("2026-12-08")?),
        };
        filters.validate()?;
        assert!(filters.keeps(&object("portal=g1/date=2026-12-07/hour=00/a")));
        assert!(filters.keeps(&object("portal=g1/date=2026-12-08/hour=23/a")));
        assert!(!filters.keeps(&object("portal=g1/date=2026-12-09/hour=00/a")));
        assert!(!filters.keeps(&object("portal=g1/date=2026-12-06/hour=23/a")));
        assert!(!filters.keeps(&object("portal=ge/date=2026-12-07/hour=00/a")));
        let reversed = Filters {
            from_date: filters.to_date,
            to_date: filters.from_date,
            portal: None,
        };
        let error = reversed.validate().err().unwrap_or_default();
        assert!(
            error.contains("--from-date 2026-12-08 is after --to-date 2026-12-07"),
            "{error}"
        );
        let path = Filters {
            portal: Some("../g1".to_string()),
            ..Filters::default()
        };
        let error = path.validate().err().unwrap_or_default();
        assert!(error.contains("`../g1` is not a portal name"), "{error}");
        Ok(())
    }
}
