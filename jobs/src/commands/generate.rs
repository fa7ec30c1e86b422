//! `pageflow generate`: synthetic pageviews as JSON lines, deterministic for a seed.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};
use pageflow_connectors::SyntheticConfig;
use pageflow_connectors::synthetic::write_json_lines;

/// The knobs of `pageflow generate`.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// The random seed.
    pub seed: u64,
    /// Share of malformed lines.
    pub invalid_share: f64,
    /// Events per second of event time.
    pub rate: f64,
    /// Distinct readers; `None` for [`SyntheticConfig::readers_for_rate`].
    pub users: Option<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            seed: 42,
            invalid_share: 0.0,
            rate: 50.0,
            users: None,
        }
    }
}

/// Writes `events` synthetic pageviews to `out` and returns how many lines were written.
pub fn run(events: u64, options: &GenerateOptions, out: &Path) -> Result<u64> {
    let config = SyntheticConfig {
        seed: options.seed,
        invalid_share: options.invalid_share,
        simulated_events_per_second: options.rate,
        users: options
            .users
            .unwrap_or_else(|| SyntheticConfig::readers_for_rate(options.rate)),
        ..SyntheticConfig::default()
    };
    config.validate()?;
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let written = write_json_lines(&config, events, BufWriter::with_capacity(1 << 20, file))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(written)
}
