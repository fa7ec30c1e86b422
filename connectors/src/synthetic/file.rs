//! The traffic as a JSON-lines file (`pageflow generate`).

use std::io::Write;
use std::path::PathBuf;

use super::config::SyntheticConfig;
use super::traffic::SyntheticTraffic;
use crate::error::ConnectorError;

/// Writes `n_events` synthetic records (partition 0, simulated time) as JSON lines to `writer`
/// (fewer if the config's `limit` is smaller); returns how many were written. For `pageflow
/// generate`: it never waits for the wall clock.
pub fn write_json_lines(
    config: &SyntheticConfig,
    n_events: u64,
    mut writer: impl Write,
) -> Result<u64, ConnectorError> {
    const FLUSH_AT_BYTES: usize = 1 << 20;
    let write_error = |source| ConnectorError::Write {
        path: PathBuf::from("(synthetic output)"),
        source,
    };
    let mut traffic = SyntheticTraffic::new(config.clone())?;
    let mut buf = Vec::with_capacity(FLUSH_AT_BYTES + 4096);
    let mut written = 0;
    while written < n_events && traffic.next_line(&mut buf) {
        buf.push(b'\n');
        written += 1;
        if buf.len() >= FLUSH_AT_BYTES {
            writer.write_all(&buf).map_err(write_error)?;
            buf.clear();
        }
    }
    writer.write_all(&buf).map_err(write_error)?;
    writer.flush().map_err(write_error)?;
    Ok(written)
}
