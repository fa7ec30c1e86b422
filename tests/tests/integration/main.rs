//! pageflow's integration tests, one module per area, linked into one test binary: every module
//! links the AWS SDK, and one binary instead of one per file saves CI minutes of linking and
//! gigabytes of disk. Run one area with e.g. `cargo test -p pageflow-tests --test integration
//! personalize::`.

// Test code: a panic with the error is what a failing test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws_sink_faults;
mod aws_sinks;
mod checkpoint_store;
mod curated_s3;
mod iam_policy;
mod kinesis_consumer;
mod kinesis_local;
mod kinesis_source;
mod moto_harness;
mod personalize;
