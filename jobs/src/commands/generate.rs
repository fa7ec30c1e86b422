//! `pageflow generate`: synthetic pageviews as JSON lines, deterministic for a seed.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};
use pageflow_connectors::SyntheticConfig;
use pageflow_connectors::synthetic::write_json_lines;

/// Writes `events` synthetic pageviews to `out` and returns how many lines were written.
pub fn run(events: u64, seed: u64, invalid_share: f64, out: &Path) -> Result<u64> {
    let config = SyntheticConfig {
        seed,
        invalid_share,
        ..SyntheticConfig::default()
    };
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let written = write_json_lines(&config, events, BufWriter::with_capacity(1 << 20, file))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(written)
}
