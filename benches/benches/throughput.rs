//! Throughput of the whole graph and its stages; prints figures (see `pageflow bench`).
//!
//! `cargo bench -p pageflow-benches --bench throughput` (events: `PAGEFLOW_BENCH_EVENTS`, default
//! 1,000,000). The same code runs as `pageflow bench`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let events = std::env::var("PAGEFLOW_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench-out");
    pageflow::commands::bench::run(
        events,
        &dir,
        &pageflow_dataflow::config::SemanticsConfig::default(),
        false,
    )?;
    Ok(())
}
