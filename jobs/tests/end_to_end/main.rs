//! End-to-end tests of the `pageflow` binary (started as a process, `CARGO_BIN_EXE_pageflow`), one
//! module per area, linked into one test binary (one link of the AWS SDK instead of one per file).
//! Run one area with e.g. `cargo test -p pageflow --test end_to_end checkpoints::`.

// Test code: a panic with the error is what a failing test should do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod aws_end_to_end;
mod backfill;
mod checkpoints;
mod cli;
mod cloudformation;
mod cloudformation_lake;
mod cluster;
mod collect;
mod collect_buffers;
mod curated;
mod dashboard;
mod observability;
mod recommendations;
mod serving_tier;
mod support;
mod tracker;
