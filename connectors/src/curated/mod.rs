//! The curated lake: the job's final results as Parquet tables that analysts query (Athena,
//! Redshift Spectrum, DuckDB).
//!
//! Layout: `<sinks.dir>/curated/<table>/portal=<p>/date=<YYYY-MM-DD>/part-HH-….parquet` for the
//! tables `pageviews`, `sessions`, `popular`, `trending` and `related` (schema version 1,
//! `docs/curated-schema.md`). Only final results are written: features (final by definition) and
//! the events the job counted.
//!
//! | module | concept |
//! |--------|---------|
//! | [`schema`] | the tables, their Arrow schemas and the schema version |
//! | [`rows`] | rows from features and events, grouped by table, portal and hour |
//! | [`parquet_file`] | one file: encoding (row groups, compression, statistics, dictionaries) and atomic appearance |
//! | [`committer`] | the two-phase commit tied to checkpoints: pre-commit, commit, recovery after a crash |
//! | [`compaction`] | one file per finished hour, inside the same two-phase commit |

pub mod committer;
pub mod compaction;
pub mod parquet_file;
pub mod rows;
pub mod schema;

#[cfg(test)]
mod tests;

pub use committer::{CuratedCommitter, Precommitted};
pub use compaction::Compaction;
pub use schema::{CuratedTable, SCHEMA_VERSION, SCHEMA_VERSION_KEY};

/// The lake's directory under a sink directory.
pub const CURATED_DIR: &str = "curated";
