//! Hand-written JSON output: decimal and hex digits, escaped string literals, and
//! [`write_json_lines`] (`pageflow generate`), all into reusable buffers.

use std::io::Write;
use std::path::PathBuf;

use super::config::SyntheticConfig;
use super::traffic::SyntheticTraffic;
use crate::error::ConnectorError;

/// Appends `n` in decimal.
pub(super) fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
pub(super) fn write_padded_decimal(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = Vec::with_capacity(20);
    write_decimal(&mut digits, n);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(&digits);
}

/// Appends `n` as 8 lowercase hex digits.
pub(super) fn write_hex8(out: &mut Vec<u8>, n: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(HEX[((n >> (shift * 4)) & 0xF) as usize]);
    }
}

/// Appends `text` as a JSON string literal, escaping `"`, `\` and control characters.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..index]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xF)]);
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = index + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

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
