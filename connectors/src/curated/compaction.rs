//! Files of a useful size: each finished hour's small files become one file per
//! `(table, portal, hour)` and writer.
//!
//! Every checkpoint adds a small file to each hour it has rows for. Once an hour is *finished*
//! (the watermark is past its end plus [`Compaction::lateness_ms`]: its pageviews and windows are
//! final), the next pre-commit reads this writer's visible files of that hour and writes them as
//! one pending file of the checkpoint, `part-HH-compacted-c<N>-<writer>.parquet`, with a sidecar
//! `….replaces` that names the files it replaces. Compaction is part of the two-phase commit
//! ([`super::committer`]): when checkpoint N commits, the replaced files are removed and then the
//! compacted one is renamed into place; if N never commits, the pending file is deleted and the
//! small files stay. Either way no row is ever visible twice.
//!
//! Sessions are partitioned by their start, and a long session closes hours after it started: its
//! row then lands in a new small file of an hour already compacted, and that hour is compacted
//! again at the next checkpoint (an hour with one file is left alone).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::committer::{REPLACES_SUFFIX, list_dir};
use super::parquet_file::{self, TEMP_PREFIX};
use super::rows::{MILLIS_PER_HOUR, Partition};
use super::schema::CuratedTable;
use crate::error::ConnectorError;

/// When finished hours are compacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// An hour is finished when the watermark reaches its end plus this (ms); `None`: never
    /// compact.
    pub lateness_ms: Option<u64>,
}

impl Compaction {
    /// Compacts an hour once the watermark is `lateness_ms` past its end.
    pub fn after(lateness_ms: u64) -> Self {
        Compaction {
            lateness_ms: Some(lateness_ms),
        }
    }

    /// Never compacts.
    pub const OFF: Compaction = Compaction { lateness_ms: None };

    /// Whether `hour` is finished at `watermark_ms`.
    pub fn is_finished(&self, hour: &Partition, watermark_ms: u64) -> bool {
        self.lateness_ms.is_some_and(|lateness| {
            (hour.hour + 1)
                .saturating_mul(MILLIS_PER_HOUR)
                .saturating_add(lateness)
                <= watermark_ms
        })
    }
}

/// Writes the compaction of `writer`'s visible files of `hour` into the pending directory
/// `pending` of `checkpoint`; `None` when the hour has fewer than two such files. Returns the
/// compacted file's size.
pub fn precommit(
    root: &Path,
    pending: &Path,
    hour: &Partition,
    checkpoint: u64,
    writer: &str,
) -> Result<Option<u64>, ConnectorError> {
    let dir = root.join(hour.dir());
    let parts = own_files_of_hour(&dir, hour.hour_of_day(), writer)?;
    if parts.len() < 2 {
        return Ok(None);
    }
    let mut batches = Vec::new();
    for name in &parts {
        batches.extend(parquet_file::read_batches(&dir.join(name))?);
    }
    let name = format!(
        "part-{:02}-compacted-c{checkpoint:020}-{writer}.parquet",
        hour.hour_of_day()
    );
    let target = pending.join(hour.dir());
    let size = parquet_file::write_atomically(&target.join(&name), hour.table, &batches)?;
    // The sidecar is written last: a pending compacted file without it is never committed
    // (a crash here means checkpoint `checkpoint` was never handed on, so it is deleted).
    let sidecar = target.join(format!("{name}{REPLACES_SUFFIX}"));
    let temp = target.join(format!("{TEMP_PREFIX}{name}{REPLACES_SUFFIX}"));
    let write_error = |source| ConnectorError::Write {
        path: sidecar.clone(),
        source,
    };
    fs::write(&temp, parts.join("\n") + "\n").map_err(write_error)?;
    fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(write_error)?;
    fs::rename(&temp, &sidecar).map_err(write_error)?;
    parquet_file::sync_dir(&target)?;
    Ok(Some(size))
}

/// The names of `writer`'s visible files of the hour `hour_of_day` in a partition directory.
fn own_files_of_hour(
    dir: &Path,
    hour_of_day: u32,
    writer: &str,
) -> Result<Vec<String>, ConnectorError> {
    let prefix = format!("part-{hour_of_day:02}-");
    Ok(list_dir(dir)?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with(&prefix) && writer_of(name) == Some(writer))
        .collect())
}

/// The writer named in a part's file name (`part-HH-…-<writer>.parquet`).
fn writer_of(name: &str) -> Option<&str> {
    name.strip_suffix(".parquet")?.rsplit('-').next()
}

/// Whether a file name is that of a compacted file.
pub fn is_compacted_name(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().contains("-compacted-"))
}

/// The hour a visible file (path relative to `curated/`:
/// `<table>/portal=<p>/date=<YYYY-MM-DD>/part-HH-…`) belongs to.
pub fn partition_of(relative: &Path) -> Option<Partition> {
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let [table, portal, date, name] = parts.as_slice() else {
        return None;
    };
    let table = CuratedTable::from_name(table)?;
    let portal = portal.strip_prefix("portal=")?.to_string();
    let days = days_from_date(date.strip_prefix("date=")?)?;
    let hour_of_day: u64 = name.strip_prefix("part-")?.get(..2)?.parse().ok()?;
    Some(Partition {
        table,
        portal,
        hour: u64::try_from(days).ok()? * 24 + hour_of_day,
    })
}

/// Every hour in which `writer` has two or more visible files (found at start: hours a previous
/// run of the job left uncompacted).
pub fn hours_to_compact(root: &Path, writer: &str) -> Result<BTreeSet<Partition>, ConnectorError> {
    let mut counts: BTreeMap<Partition, usize> = BTreeMap::new();
    for table in CuratedTable::ALL {
        for (portal, portal_dir) in list_dir(&root.join(table.name()))? {
            for (date, date_dir) in list_dir(&portal_dir)? {
                for (name, _) in list_dir(&date_dir)? {
                    if writer_of(&name) != Some(writer) {
                        continue;
                    }
                    let relative = Path::new(table.name())
                        .join(&portal)
                        .join(&date)
                        .join(&name);
                    if let Some(hour) = partition_of(&relative) {
                        *counts.entry(hour).or_default() += 1;
                    }
                }
            }
        }
    }
    Ok(counts
        .into_iter()
        .filter(|(_, count)| *count >= 2)
        .map(|(hour, _)| hour)
        .collect())
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (Howard Hinnant's `days_from_civil`, the inverse
/// of [`crate::files::sink::civil_from_days`]).
fn days_from_date(date: &str) -> Option<i64> {
    let mut fields = date.splitn(3, '-');
    let year: i64 = fields.next()?.parse().ok()?;
    let month: i64 = fields.next()?.parse().ok()?;
    let day: i64 = fields.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::sink::civil_from_days;

    #[test]
    fn dates_round_trip_through_day_counts() {
        for days in [0i64, 1, 59, 365, 11_016, 20_000, 20_780, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_date(&format!("{y:04}-{m:02}-{d:02}")), Some(days));
        }
        assert_eq!(days_from_date("2026-13-01"), None);
    }

    #[test]
    fn a_visible_path_names_its_hour() {
        let hour = partition_of(Path::new(
            "popular/portal=g1/date=1970-01-02/part-05-c00000000000000000003-w0.parquet",
        ));
        assert_eq!(
            hour,
            Some(Partition {
                table: CuratedTable::Popular,
                portal: "g1".into(),
                hour: 29,
            })
        );
        assert_eq!(
            writer_of("part-05-c00000000000000000003-w0.parquet"),
            Some("w0")
        );
        assert_eq!(
            writer_of("part-05-compacted-c00000000000000000003-p1.parquet"),
            Some("p1")
        );
    }
}
