//! # pageflow (the binary's library)
//!
//! The `pageflow` command: configuration, the long-running job, replay, the synthetic generator,
//! the benchmark, metrics and the HTTP serving layer. The operator graph itself lives in
//! `pageflow-dataflow`; sources and sinks in `pageflow-connectors`.

pub mod checkpoints;
pub mod commands;
pub mod config;
pub mod heap;
pub mod metrics;
pub mod outputs;
pub mod serve;
pub mod stderr;
