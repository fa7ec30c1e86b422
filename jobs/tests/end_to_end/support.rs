//! What several areas' tests share: running the `pageflow` binary, and the generated input
//! whose sessions close while a job runs.

use std::path::Path;
use std::process::Command;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_pageflow");

/// Runs `pageflow args` with `env` to its end: its standard output and error, or why it failed.
pub(crate) fn pageflow(args: &[&str], env: &[(String, String)]) -> Result<String, String> {
    let output = Command::new(BIN)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .map_err(|e| format!("cannot run {BIN}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).to_string() + &stderr)
    } else {
        Err(format!(
            "pageflow {args:?} failed ({}):\n{stderr}",
            output.status
        ))
    }
}

/// [`pageflow`], failing the test unless it succeeds.
pub(crate) fn pageflow_ok(args: &[&str], env: &[(String, String)]) -> String {
    pageflow(args, env).unwrap_or_else(|error| panic!("{error}"))
}

/// Writes 6,000 generated pageviews to `path`: 50 minutes of event time over 2,000 readers, so
/// that sessions close (the session gap passes) while a job reads them and articles have related
/// lists.
pub(crate) fn generate_closing_sessions(path: &Path) {
    pageflow_ok(
        &[
            "generate",
            "--events",
            "6000",
            "--seed",
            "43",
            "--rate",
            "2",
            "--users",
            "2000",
            "--out",
            &path.to_string_lossy(),
        ],
        &[],
    );
}
