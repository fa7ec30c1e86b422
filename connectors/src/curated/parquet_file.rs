//! One Parquet file of a curated table: how it is encoded, and how it appears (atomically).
//!
//! Encoding: row groups of at most [`MAX_ROW_GROUP_ROWS`] rows, snappy compression (pure Rust; the
//! files are read by Athena, Redshift Spectrum and DuckDB, which all support it), page-level
//! statistics (min/max per column, so engines skip row groups by time or article), dictionary
//! encoding for the low-cardinality columns ([`CuratedTable::dictionary_columns`]) and plain
//! encoding for ids that are mostly unique, and the schema version in the key-value metadata.
//!
//! A file is written to a hidden temporary name beside its destination (`.tmp-<name>`), flushed to
//! disk (`fsync`), then renamed over the destination, and the directory is synced: a reader sees
//! the whole file under its name or nothing, never half a file. Temporaries left by a crash start
//! with `.tmp-` and are deleted at the next start ([`super::committer`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::schema::{CuratedTable, SCHEMA_VERSION, SCHEMA_VERSION_KEY};
use crate::error::ConnectorError;

/// Rows per row group, at most: large enough for efficient scans, small enough that a writer
/// holds little in memory.
pub const MAX_ROW_GROUP_ROWS: usize = 128 * 1024;

/// The prefix of temporary files (hidden from readers: Athena, Spark and DuckDB's Hive
/// partitioning skip names starting with `.` or `_`).
pub const TEMP_PREFIX: &str = ".tmp-";

/// The writer settings of `table`'s files.
pub fn writer_properties(table: CuratedTable) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_VERSION_KEY.to_string(),
            SCHEMA_VERSION.to_string(),
        )]));
    for column in table.dictionary_columns() {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), true);
    }
    builder.build()
}

/// Writes `batches` as one Parquet file of `table` at `path`, atomically (temporary file, fsync,
/// rename, directory fsync). Returns the file's size in bytes.
pub fn write_atomically(
    path: &Path,
    table: CuratedTable,
    batches: &[RecordBatch],
) -> Result<u64, ConnectorError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| ConnectorError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let write_error = |source| ConnectorError::Write {
        path: temp.clone(),
        source,
    };
    let file = File::create(&temp).map_err(write_error)?;
    let mut writer = ArrowWriter::try_new(file, table.schema(), Some(writer_properties(table)))
        .map_err(|e| parquet_error(&temp, "encode", e))?;
    for batch in batches {
        writer
            .write(batch)
            .map_err(|e| parquet_error(&temp, "encode", e))?;
    }
    let file = writer
        .into_inner()
        .map_err(|e| parquet_error(&temp, "encode", e))?;
    file.sync_all().map_err(write_error)?;
    let size = file.metadata().map_err(write_error)?.len();
    drop(file);
    fs::rename(&temp, path).map_err(|source| ConnectorError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    sync_dir(dir)?;
    Ok(size)
}

/// Reads a curated file back (for compaction).
pub fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, ConnectorError> {
    let file = File::open(path).map_err(|source| ConnectorError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .map_err(|e| parquet_error(path, "read", e))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet_error(path, "read", e))
}

/// Makes renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), ConnectorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ConnectorError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

fn parquet_error(path: &Path, what: &'static str, error: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Parquet {
        path: PathBuf::from(path),
        what,
        message: error.to_string(),
    }
}
