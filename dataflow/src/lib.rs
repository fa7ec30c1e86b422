//! # pageflow-dataflow
//!
//! pageflow's operator graph: it turns pageview beacons into user sessions, popular and trending
//! rankings, and an article co-occurrence graph, incrementally, on `timely` dataflow. This crate does
//! no I/O: sources hand it records through [`source::RecordSource`], and its outputs are streams that
//! the binary connects to sinks.
//!
//! - [`event`]: the pageview, its validation and dead letters.
//! - [`intern`]: portals and articles as interned ids.
//! - [`config`]: every parameter of `SEMANTICS.md`.
//! - [`operators`]: one incremental operator per file, as extension traits on timely streams.
//! - [`algorithms`]: compositions of operators; [`algorithms::graph`] is the whole job.
//! - [`oracle`]: the same computation done in batch from scratch, the reference for tests.
//! - [`features`]: the records emitted to the ML team.
//! - [`checkpoint`]: consistent snapshots of operator state and source positions, and restores.
//! - [`monitor`]: the job graph with records in and out and busy time per operator, from timely's log.
//! - [`time`]: event time (watermarks, idleness); [`clock`]: processing time, the one [`clock::Clock`]
//!   (system or manual) and [`clock::unix_now_ms`].
//! - [`watermark_arrivals`]: when the job watermark reached each value (arrival → visible latency).
//! - [`watermark_exchange`]: how every worker's replica of the watermark board hears the others,
//!   through a small dataflow of its own.
//!
//! The contract is `SEMANTICS.md`; choices it leaves open are in `docs/semantics-notes.md`.

pub mod algorithms;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod event;
pub mod features;
pub mod ids;
pub mod intern;
pub mod live;
pub mod monitor;
pub mod operators;
pub mod oracle;
pub mod placement;
pub mod score;
pub mod source;
pub mod stats;
pub mod time;
pub mod watermark_arrivals;
pub mod watermark_exchange;

#[cfg(test)]
pub(crate) mod test_support;
