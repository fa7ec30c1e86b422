//! Rows of the curated tables, from the features the job emits and the events it counted.
//!
//! Rows are kept as the records they come from (a ranking's items become rows only when written)
//! and grouped by [`Partition`]: table, portal and UTC hour of the partitioning time (`ts` for
//! pageviews, `start_ts` for sessions, `window_end` otherwise). [`TableRows::to_batch`] turns one
//! group into an Arrow record batch in a fixed order, so that the same input gives the same files.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::ArrowError;
use pageflow_dataflow::event::DetailedEvent;
use pageflow_dataflow::features::{Feature, RankingFeature, RelatedFeature, SessionFeature};

use super::schema::CuratedTable;
use crate::files::sink::UtcHour;

/// Milliseconds in an hour.
pub const MILLIS_PER_HOUR: u64 = 3_600_000;

/// Where a row goes: its table, portal and the UTC hour (since the epoch) of its partitioning time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// The table.
    pub table: CuratedTable,
    /// The portal (`portal=<p>`).
    pub portal: String,
    /// Hours since the epoch: the date directory (`date=<YYYY-MM-DD>`) and the file's hour.
    pub hour: u64,
}

impl Partition {
    /// The partition directory, relative to `curated/`: `<table>/portal=<p>/date=<YYYY-MM-DD>`.
    pub fn dir(&self) -> String {
        let utc = UtcHour::from_millis(self.hour * MILLIS_PER_HOUR);
        format!(
            "{}/portal={}/date={}",
            self.table.name(),
            self.portal,
            utc.date()
        )
    }

    /// The hour of the day, 0..=23, that starts the partition's file names.
    pub fn hour_of_day(&self) -> u32 {
        UtcHour::from_millis(self.hour * MILLIS_PER_HOUR).hour
    }
}

/// The rows of one partition, as the records they come from.
#[derive(Clone, Debug, PartialEq)]
pub enum TableRows {
    /// Counted events.
    Pageviews(Vec<DetailedEvent>),
    /// Closed sessions.
    Sessions(Vec<SessionFeature>),
    /// Popular or trending rankings (one row per item).
    Rankings(Vec<RankingFeature>),
    /// Related lists (one row per partner).
    Related(Vec<RelatedFeature>),
}

impl TableRows {
    /// How many rows these records make.
    pub fn row_count(&self) -> usize {
        match self {
            TableRows::Pageviews(rows) => rows.len(),
            TableRows::Sessions(rows) => rows.len(),
            TableRows::Rankings(rows) => rows.iter().map(|r| r.items.len()).sum(),
            TableRows::Related(rows) => rows.iter().map(|r| r.items.len()).sum(),
        }
    }

    /// Adds `other`'s records (of the same table).
    fn append(&mut self, other: TableRows) {
        match (self, other) {
            (TableRows::Pageviews(a), TableRows::Pageviews(b)) => a.extend(b),
            (TableRows::Sessions(a), TableRows::Sessions(b)) => a.extend(b),
            (TableRows::Rankings(a), TableRows::Rankings(b)) => a.extend(b),
            (TableRows::Related(a), TableRows::Related(b)) => a.extend(b),
            // Partitions name their table, so two groups of one partition are of one kind.
            _ => {}
        }
    }

    /// The rows as one record batch of `table`'s schema, in a fixed order: pageviews by
    /// `(ts, event_id)`, sessions by `(start_ts, user_id)`, rankings and related lists by window
    /// end, article and rank.
    pub fn to_batch(&self, table: CuratedTable) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = match self {
            TableRows::Pageviews(rows) => pageview_columns(rows),
            TableRows::Sessions(rows) => session_columns(rows),
            TableRows::Rankings(rows) => ranking_columns(rows),
            TableRows::Related(rows) => related_columns(rows),
        };
        RecordBatch::try_new(table.schema(), columns)
    }
}

/// Rows grouped by partition, waiting to be written.
#[derive(Debug, Default)]
pub struct PartitionedRows {
    groups: std::collections::BTreeMap<Partition, TableRows>,
}

impl PartitionedRows {
    /// Adds the rows of final features.
    pub fn add_features(&mut self, features: &[Feature]) {
        for feature in features {
            let (table, rows) = match feature {
                Feature::Session(f) => {
                    (CuratedTable::Sessions, TableRows::Sessions(vec![f.clone()]))
                }
                Feature::Popular(f) => {
                    (CuratedTable::Popular, TableRows::Rankings(vec![f.clone()]))
                }
                Feature::Trending(f) => {
                    (CuratedTable::Trending, TableRows::Rankings(vec![f.clone()]))
                }
                Feature::Related(f) => (CuratedTable::Related, TableRows::Related(vec![f.clone()])),
            };
            let time = match feature {
                Feature::Session(f) => f.start_ts,
                other => other.final_ts(),
            };
            self.add(table, feature.portal(), time, rows);
        }
    }

    /// Adds counted events.
    pub fn add_pageviews(&mut self, events: &[DetailedEvent]) {
        for event in events {
            self.add(
                CuratedTable::Pageviews,
                event.event.portal().name(),
                event.event.ts,
                TableRows::Pageviews(vec![event.clone()]),
            );
        }
    }

    fn add(&mut self, table: CuratedTable, portal: &str, time: u64, rows: TableRows) {
        let partition = Partition {
            table,
            portal: portal.to_string(),
            hour: time / MILLIS_PER_HOUR,
        };
        match self.groups.get_mut(&partition) {
            Some(group) => group.append(rows),
            None => {
                self.groups.insert(partition, rows);
            }
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Rows waiting, over every partition.
    pub fn row_count(&self) -> usize {
        self.groups.values().map(TableRows::row_count).sum()
    }

    /// Takes every group out, in partition order.
    pub fn take(&mut self) -> Vec<(Partition, TableRows)> {
        std::mem::take(&mut self.groups).into_iter().collect()
    }
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn optional_strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn times(values: impl Iterator<Item = u64>) -> ArrayRef {
    let millis: Vec<i64> = values.map(to_i64).collect();
    Arc::new(TimestampMillisecondArray::from(millis).with_timezone("UTC"))
}

fn int64s(values: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(values.map(to_i64).collect::<Int64Array>())
}

fn int32s(values: impl Iterator<Item = i32>) -> ArrayRef {
    Arc::new(values.collect::<Int32Array>())
}

fn float64s(values: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(values.collect::<Float64Array>())
}

/// Counts and times beyond `i64::MAX` cannot occur (times are milliseconds of real dates); such
/// a value would be clamped rather than wrap negative.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn rank(index: usize) -> i32 {
    i32::try_from(index + 1).unwrap_or(i32::MAX)
}

fn pageview_columns(rows: &[DetailedEvent]) -> Vec<ArrayRef> {
    let mut rows: Vec<&DetailedEvent> = rows.iter().collect();
    rows.sort_by(|a, b| (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id)));
    vec![
        strings(rows.iter().map(|r| r.event.event_id.as_str())),
        strings(rows.iter().map(|r| r.event.portal().name())),
        strings(rows.iter().map(|r| r.event.user_id.as_str())),
        strings(rows.iter().map(|r| r.event.article.id())),
        times(rows.iter().map(|r| r.event.ts)),
        int64s(rows.iter().map(|r| u64::from(r.event.dwell_ms))),
        int32s(rows.iter().map(|r| i32::from(r.event.scroll_pct))),
        int64s(rows.iter().map(|r| u64::from(r.event.clicks))),
        optional_strings(rows.iter().map(|r| r.details.url.as_deref())),
        optional_strings(rows.iter().map(|r| r.details.referrer.as_deref())),
        optional_strings(rows.iter().map(|r| r.details.device.as_deref())),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.event.engaged()))
                .collect::<BooleanArray>(),
        ),
    ]
}

fn session_columns(rows: &[SessionFeature]) -> Vec<ArrayRef> {
    let mut rows: Vec<&SessionFeature> = rows.iter().collect();
    rows.sort_by(|a, b| (a.start_ts, &a.user_id).cmp(&(b.start_ts, &b.user_id)));
    let mut articles = ListBuilder::new(StringBuilder::new());
    for row in &rows {
        for article in &row.articles {
            articles.values().append_value(article);
        }
        articles.append(true);
    }
    vec![
        strings(rows.iter().map(|r| r.feature_id.as_str())),
        strings(rows.iter().map(|r| r.portal.as_str())),
        strings(rows.iter().map(|r| r.user_id.as_str())),
        strings(rows.iter().map(|r| r.session_id.as_str())),
        times(rows.iter().map(|r| r.start_ts)),
        times(rows.iter().map(|r| r.end_ts)),
        int64s(rows.iter().map(|r| r.views)),
        int64s(rows.iter().map(|r| r.distinct_articles)),
        int64s(rows.iter().map(|r| r.dwell_ms_total)),
        int64s(rows.iter().map(|r| r.clicks_total)),
        int32s(rows.iter().map(|r| i32::from(r.max_scroll_pct))),
        Arc::new(articles.finish()),
    ]
}

fn ranking_columns(rows: &[RankingFeature]) -> Vec<ArrayRef> {
    let mut rows: Vec<&RankingFeature> = rows.iter().collect();
    rows.sort_by_key(|r| r.window_end);
    let items: Vec<(&RankingFeature, usize)> = rows
        .iter()
        .flat_map(|r| (0..r.items.len()).map(move |i| (*r, i)))
        .collect();
    vec![
        strings(items.iter().map(|(r, _)| r.feature_id.as_str())),
        strings(items.iter().map(|(r, _)| r.portal.as_str())),
        times(items.iter().map(|(r, _)| r.window_start)),
        times(items.iter().map(|(r, _)| r.window_end)),
        int32s(items.iter().map(|(_, i)| rank(*i))),
        strings(items.iter().map(|(r, i)| r.items[*i].article_id.as_str())),
        int64s(items.iter().map(|(r, i)| r.items[*i].views)),
        int64s(items.iter().map(|(r, i)| r.items[*i].engaged_views)),
        float64s(items.iter().map(|(r, i)| r.items[*i].score)),
    ]
}

fn related_columns(rows: &[RelatedFeature]) -> Vec<ArrayRef> {
    let mut rows: Vec<&RelatedFeature> = rows.iter().collect();
    rows.sort_by(|a, b| (a.window_end, &a.article_id).cmp(&(b.window_end, &b.article_id)));
    let items: Vec<(&RelatedFeature, usize)> = rows
        .iter()
        .flat_map(|r| (0..r.items.len()).map(move |i| (*r, i)))
        .collect();
    vec![
        strings(items.iter().map(|(r, _)| r.feature_id.as_str())),
        strings(items.iter().map(|(r, _)| r.portal.as_str())),
        strings(items.iter().map(|(r, _)| r.article_id.as_str())),
        times(items.iter().map(|(r, _)| r.window_start)),
        times(items.iter().map(|(r, _)| r.window_end)),
        int32s(items.iter().map(|(_, i)| rank(*i))),
        strings(items.iter().map(|(r, i)| r.items[*i].article_id.as_str())),
        float64s(items.iter().map(|(r, i)| r.items[*i].score)),
        int64s(items.iter().map(|(r, i)| r.items[*i].cooc)),
    ]
}
