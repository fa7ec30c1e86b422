//! `pageflow checkpoints`: what the checkpoint store holds, for the people who recover the job.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use pageflow_connectors::checkpoint_store::CheckpointStatus;

use crate::config::JobConfig;

/// One line per checkpoint, newest first: id, state, creation time, workers, watermark, and
/// which one a restart would use.
pub fn list(config: &JobConfig) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let checkpoints = crate::checkpoints::open_store(config, &runtime)?;
    let summaries = checkpoints.list()?;
    let mut out = String::new();
    let _ = writeln!(out, "checkpoints in {}", checkpoints.location());
    if summaries.is_empty() {
        out.push_str("  none: the job starts from the sources' start positions\n");
        return Ok(out);
    }
    let mut restart_uses = None;
    for summary in &summaries {
        let (state, detail) = match &summary.status {
            CheckpointStatus::Committed => {
                if restart_uses.is_none() {
                    restart_uses = Some(summary.id);
                }
                ("committed", String::new())
            }
            CheckpointStatus::Torn => ("torn", "its write did not finish".to_string()),
            CheckpointStatus::Corrupt(why) => ("corrupt", why.clone()),
        };
        let facts = summary
            .manifest
            .as_ref()
            .map(|m| {
                format!(
                    "created_ms={} workers={} watermark={} parts={}",
                    m.created_ms,
                    m.workers,
                    m.info.get("watermark").map_or("?", String::as_str),
                    m.parts.len()
                )
            })
            .unwrap_or_default();
        let marker = if restart_uses == Some(summary.id) {
            "  <- a restart uses this one (parts are verified then)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:>6}  {state:<9} {facts} {detail}{marker}",
            summary.id
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_committed_and_torn_checkpoints_and_the_one_a_restart_uses() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut config = JobConfig::default();
        config.checkpoint.dir = Some(dir.path().to_path_buf());
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let checkpoints = crate::checkpoints::open_store(&config, &runtime)?;
        for id in [1, 2] {
            checkpoints.write(
                id,
                1,
                "f",
                Default::default(),
                vec![("worker-0.bin".into(), vec![id as u8])],
            )?;
        }
        // A third whose manifest was never written (a crash during the write).
        let torn = dir.path().join(format!("chk-{:020}", 3));
        std::fs::create_dir_all(&torn)?;
        std::fs::write(torn.join("worker-0.bin"), b"x")?;

        let text = list(&config)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].contains("3  torn"), "{text}");
        assert!(
            lines[2].contains("2  committed") && lines[2].contains("a restart uses this one"),
            "{text}"
        );
        assert!(!lines[3].contains("restart"), "{text}");
        Ok(())
    }
}
