//! Local files: the job's input replayed from JSON-lines files and its outputs written under one
//! root directory.
//!
//! | file | concept |
//! |------|---------|
//! | [`source`] | [`JsonLinesFile`]: one JSON-lines file replayed as one source partition (a `RecordSource`) |
//! | [`sink`] | the [`Sink`] trait every output implements, and the local sinks: [`FeatureFileSink`] (`features.jsonl`) and [`ArchiveSink`] (the raw/processed/dead-letter archive laid out like the Firehose-to-S3 one) |

pub mod retention;
pub mod sink;
pub mod source;

pub use sink::{ArchiveSink, FeatureFileSink, Sink};
pub use source::JsonLinesFile;
