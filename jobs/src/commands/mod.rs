//! The subcommands of the `pageflow` binary.

pub mod aws;
pub mod backfill;
pub mod bench;
pub mod bench_checkpoints;
pub mod bench_cluster;
pub mod bench_collect;
pub mod bench_serve;
pub mod bench_soak;
pub mod checkpoints;
pub mod collect;
pub mod generate;
pub mod replay;
pub mod run;
pub mod serve;
