//! # pageflow (the binary's library)
//!
//! The `pageflow` command: configuration, the long-running job, replay, the synthetic generator
//! and the benchmarks. The operator graph lives in `pageflow-dataflow`; sources and sinks in
//! `pageflow-connectors`; the HTTP serving layer in `pageflow-serve`; what the job counts and
//! measures in `pageflow-metrics`.

pub mod checkpoints;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod outputs;
pub mod stderr;
