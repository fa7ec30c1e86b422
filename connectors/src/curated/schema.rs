//! The curated tables and their Arrow schemas: version 1 of the lake's contract
//! (`docs/curated-schema.md`).
//!
//! Times are `Timestamp(Millisecond, "UTC")` (Parquet `TIMESTAMP(MILLIS, UTC)`), counts `Int64`,
//! percentages and ranks `Int32`, strings `Utf8`, scores `Float64`. Only `url`, `referrer` and
//! `device` of `pageviews` may be null. Every file carries the key-value metadata
//! [`SCHEMA_VERSION_KEY`] = [`SCHEMA_VERSION`]; a change that renames, retypes or removes a column,
//! or changes what a row means, bumps it (adding a nullable column does not).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The key of the schema version in every file's key-value metadata.
pub const SCHEMA_VERSION_KEY: &str = "pageflow.schema_version";
/// The schema version the files are written with.
pub const SCHEMA_VERSION: &str = "1";

/// One table of the lake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CuratedTable {
    /// One row per valid, de-duplicated, on-time event; partitioned by the date of `ts`.
    Pageviews,
    /// One row per closed session; partitioned by the date of `start_ts`.
    Sessions,
    /// One row per ranked article of a final popular window; partitioned by `window_end`.
    Popular,
    /// One row per ranked article of a final trending window; partitioned by `window_end`.
    Trending,
    /// One row per partner of a related list; partitioned by `window_end`.
    Related,
}

impl CuratedTable {
    /// Every table.
    pub const ALL: [CuratedTable; 5] = [
        CuratedTable::Pageviews,
        CuratedTable::Sessions,
        CuratedTable::Popular,
        CuratedTable::Trending,
        CuratedTable::Related,
    ];

    /// The table's directory name under `curated/`.
    pub fn name(self) -> &'static str {
        match self {
            CuratedTable::Pageviews => "pageviews",
            CuratedTable::Sessions => "sessions",
            CuratedTable::Popular => "popular",
            CuratedTable::Trending => "trending",
            CuratedTable::Related => "related",
        }
    }

    /// The table named `name`, if any.
    pub fn from_name(name: &str) -> Option<CuratedTable> {
        CuratedTable::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table's Arrow schema (the same for every file of the table).
    pub fn schema(self) -> SchemaRef {
        let fields = match self {
            CuratedTable::Pageviews => vec![
                utf8("event_id"),
                utf8("portal"),
                utf8("user_id"),
                utf8("article_id"),
                timestamp("ts"),
                int64("dwell_ms"),
                int32("scroll_pct"),
                int64("clicks"),
                Field::new("url", DataType::Utf8, true),
                Field::new("referrer", DataType::Utf8, true),
                Field::new("device", DataType::Utf8, true),
                Field::new("engaged", DataType::Boolean, false),
            ],
            CuratedTable::Sessions => vec![
                utf8("feature_id"),
                utf8("portal"),
                utf8("user_id"),
                utf8("session_id"),
                timestamp("start_ts"),
                timestamp("end_ts"),
                int64("views"),
                int64("distinct_articles"),
                int64("dwell_ms_total"),
                int64("clicks_total"),
                int32("max_scroll_pct"),
                Field::new("articles", articles_type(), false),
            ],
            CuratedTable::Popular | CuratedTable::Trending => vec![
                utf8("feature_id"),
                utf8("portal"),
                timestamp("window_start"),
                timestamp("window_end"),
                int32("rank"),
                utf8("article_id"),
                int64("views"),
                int64("engaged_views"),
                Field::new("score", DataType::Float64, false),
            ],
            CuratedTable::Related => vec![
                utf8("feature_id"),
                utf8("portal"),
                utf8("article_id"),
                timestamp("window_start"),
                timestamp("window_end"),
                int32("rank"),
                utf8("related_article_id"),
                Field::new("score", DataType::Float64, false),
                int64("cooc"),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    /// The columns worth a dictionary: few distinct values repeated over many rows.
    pub fn dictionary_columns(self) -> &'static [&'static str] {
        match self {
            CuratedTable::Pageviews => &["portal", "article_id", "device"],
            CuratedTable::Sessions => &["portal"],
            CuratedTable::Popular | CuratedTable::Trending => {
                &["feature_id", "portal", "article_id"]
            }
            CuratedTable::Related => &["portal", "article_id", "related_article_id"],
        }
    }
}

/// `LIST<UTF8>` as Arrow's list builder makes it (items named `item`, nullable).
pub(crate) fn articles_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn int64(name: &str) -> Field {
    Field::new(name, DataType::Int64, false)
}

fn int32(name: &str) -> Field {
    Field::new(name, DataType::Int32, false)
}

/// Milliseconds since the epoch, UTC.
pub(crate) fn timestamp(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )
}
