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
                    "created_ms={} workers={} watermark_ms={} runs={} stored_bytes={} written_bytes={}",
                    m.created_ms,
                    m.workers,
                    m.info.get("watermark_ms").map_or("?", String::as_str),
                    summary.runs,
                    summary.state_bytes,
                    summary.bytes_written
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
    use pageflow_connectors::checkpoint_store::StateEntry;

    #[test]
    fn lists_committed_and_torn_checkpoints_and_the_one_a_restart_uses() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut config = JobConfig::default();
        config.checkpoint.dir = Some(dir.path().to_path_buf());
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let checkpoints = crate::checkpoints::open_store(&config, &runtime)?;
        let mut parent = None;
        for id in [1u8, 2] {
            let commit = checkpoints.commit(
                u64::from(id),
                parent.as_ref(),
                vec![StateEntry::put(vec![id], vec![id])],
                1,
                "f",
                Default::default(),
            )?;
            parent = Some(commit.manifest);
        }
        // A third whose manifest was never written (a crash during the write): its run only.
        let runs = dir.path().join("runs");
        std::fs::write(runs.join(format!("{:020}-delta.run", 3)), b"x")?;

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
