//! Where the archive is (`--from`), and what of its raw layer there is to read.
//!
//! `--from` names either a local directory or `s3://bucket/prefix`:
//!
//! - **Local**: the archive's root (the directory holding `raw/`), or the job's sinks directory
//!   (`[sinks] dir`, holding `archive/raw/`). Both are accepted; the one found is said.
//! - **S3**: the prefix holding `raw/` (the archive bucket's root when there is no prefix), read
//!   with `ListObjectsV2`, page by page, under `<prefix>/raw/` (`<prefix>/raw/portal=<p>/` with
//!   `--portal`). The Firehose error output (`errors/`) and the other layers are never read.
//!
//! Listing finds every [`ArchiveObject`] of `raw/portal=*/date=*/hour=*/`, keeps those the
//! [`Filters`] allow and sorts them in the backfill order ([`read_order`]). Only names and sizes
//! are listed here; the contents are read later, hour by hour ([`super::reading`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::layout::{ArchiveObject, Filters, read_order};

/// The archive named by `--from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// A local directory; `root` holds `raw/`.
    Local {
        /// The directory holding `raw/`.
        root: PathBuf,
        /// `--from` as given (for messages).
        given: PathBuf,
    },
    /// An S3 prefix holding `raw/`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix, empty or ending with `/`.
        prefix: String,
    },
}

impl ArchiveLocation {
    /// Reads `--from`: an `s3://bucket[/prefix]` URL, or a local directory holding `raw/` or
    /// `archive/raw/`.
    pub fn parse(from: &str) -> Result<ArchiveLocation> {
        if let Some(rest) = from.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!(
                    "--from {from}: the S3 URL names no bucket; write s3://BUCKET/PREFIX, where \
                     PREFIX holds the archive's raw/"
                );
            }
            let prefix = prefix.trim_matches('/');
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            return Ok(ArchiveLocation::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        let given = PathBuf::from(from);
        if !given.is_dir() {
            bail!(
                "--from {from}: no such directory; give the archive's root (the directory holding \
                 raw/), the job's sinks directory (holding archive/raw/), or s3://BUCKET/PREFIX"
            );
        }
        for root in [given.clone(), given.join("archive")] {
            if root.join("raw").is_dir() {
                return Ok(ArchiveLocation::Local { root, given });
            }
        }
        bail!(
            "--from {from}: neither {0}/raw/ nor {0}/archive/raw/ is a directory; is --from the \
             archive's root (holding raw/) or the job's sinks directory (holding archive/raw/)?",
            given.display()
        )
    }

    /// The raw layer's location, as messages name it.
    pub fn raw_display(&self) -> String {
        match self {
            ArchiveLocation::Local { root, .. } => format!("{}", root.join("raw").display()),
            ArchiveLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}raw/"),
        }
    }

    /// Which directory was taken, when `--from` was a sinks directory rather than the archive's
    /// root; `None` otherwise.
    pub fn resolution_note(&self) -> Option<String> {
        match self {
            ArchiveLocation::Local { root, given } if root != given => Some(format!(
                "{} is a sinks directory: reading its archive, {}",
                given.display(),
                root.display()
            )),
            _ => None,
        }
    }

    /// The error for an archive with nothing to read: what was looked for, where, and with
    /// which filters.
    pub fn nothing_found(&self, filters: &Filters) -> anyhow::Error {
        let within = match filters.describe() {
            words if words.is_empty() => String::new(),
            words => format!(" for {words}"),
        };
        let hint = match self {
            ArchiveLocation::Local { .. } => {
                "is --from the archive's root (holding raw/) or the job's sinks directory?"
            }
            ArchiveLocation::S3 { .. } => "is --from the archive's root (the prefix holding raw/)?",
        };
        let (layout, location) = match self {
            ArchiveLocation::Local { root, .. } => ("files", root.display().to_string()),
            ArchiveLocation::S3 { bucket, prefix } => (
                "objects",
                format!("s3://{bucket}/{}", prefix.trim_end_matches('/')),
            ),
        };
        anyhow::anyhow!(
            "no raw/portal=*/date=*/hour=*/ {layout} under {location}{within}; {hint}{}",
            if within.is_empty() {
                ""
            } else {
                " (or do the filters leave nothing?)"
            }
        )
    }
}

/// Lists the local raw layer under `root/raw`: the files of `portal=*/date=*/hour=*/` that
/// `filters` keep, in the backfill order, and how many files were outside that layout.
pub fn list_local(root: &Path, filters: &Filters) -> Result<(Vec<ArchiveObject>, usize)> {
    let raw = root.join("raw");
    let mut objects = Vec::new();
    let mut skipped = 0;
    let entries = |dir: &Path| -> Result<Vec<std::fs::DirEntry>> {
        std::fs::read_dir(dir)
            .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
            .with_context(|| format!("cannot list {}", dir.display()))
    };
    for portal in entries(&raw)? {
        if !portal.path().is_dir() {
            skipped += 1;
            continue;
        }
        for date in entries(&portal.path())? {
            if !date.path().is_dir() {
                skipped += 1;
                continue;
            }
            for hour in entries(&date.path())? {
                if !hour.path().is_dir() {
                    skipped += 1;
                    continue;
                }
                for file in entries(&hour.path())? {
                    let path = file.path();
                    let metadata = file
                        .metadata()
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let relative = format!(
                        "{}/{}/{}/{}",
                        portal.file_name().to_string_lossy(),
                        date.file_name().to_string_lossy(),
                        hour.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    let parsed = metadata
                        .is_file()
                        .then(|| {
                            ArchiveObject::from_relative(
                                &relative,
                                path.display().to_string(),
                                metadata.len(),
                            )
                        })
                        .flatten();
                    match parsed {
                        Some(object) if filters.keeps(&object) => objects.push(object),
                        Some(_) => {}
                        None => skipped += 1,
                    }
                }
            }
        }
    }
    objects.sort_by(read_order);
    Ok((objects, skipped))
}

/// Lists the raw layer under `s3://bucket/<prefix>raw/` with `ListObjectsV2`, page by page:
/// the objects that `filters` keep, in the backfill order, and how many were outside the layout.
pub async fn list_s3(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    filters: &Filters,
) -> Result<(Vec<ArchiveObject>, usize)> {
    let raw = format!("{prefix}raw/");
    let listed = match &filters.portal {
        Some(portal) => format!("{raw}portal={portal}/"),
        None => raw.clone(),
    };
    let mut objects = Vec::new();
    let mut skipped = 0;
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&listed)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(aws_sdk_s3::Error::from)
            .with_context(|| {
                format!(
                    "cannot list s3://{bucket}/{listed} (check the bucket's name, the credentials \
                     and [aws] in --config)"
                )
            })?;
        for listed_object in page.contents() {
            let Some(key) = listed_object.key() else {
                continue;
            };
            let size = listed_object.size().unwrap_or(0).max(0) as u64;
            let parsed = key
                .strip_prefix(&raw)
                .and_then(|relative| ArchiveObject::from_relative(relative, key.to_string(), size));
            match parsed {
                Some(object) if filters.keeps(&object) => objects.push(object),
                Some(_) => {}
                None => skipped += 1,
            }
        }
        token = page.next_continuation_token;
        if token.is_none() {
            break;
        }
    }
    objects.sort_by(read_order);
    Ok((objects, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() -> Result<()> {
        assert_eq!(
            ArchiveLocation::parse("s3://archive/team/pageflow/")?,
            ArchiveLocation::S3 {
                bucket: "archive".to_string(),
                prefix: "team/pageflow/".to_string()
            }
        );
        assert_eq!(
            ArchiveLocation::parse("s3://archive")?.raw_display(),
            "s3://archive/raw/"
        );
        assert!(ArchiveLocation::parse("s3:///raw").is_err());
        Ok(())
    }

    #[test]
    fn a_local_root_or_a_sinks_directory_is_accepted() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let sinks = dir.path().join("data");
        std::fs::create_dir_all(sinks.join("archive/raw"))?;
        let location = ArchiveLocation::parse(&sinks.display().to_string())?;
        assert!(location.resolution_note().is_some());
        let root = ArchiveLocation::parse(&sinks.join("archive").display().to_string())?;
        assert_eq!(root.resolution_note(), None);
        assert_eq!(
            location.raw_display(),
            sinks.join("archive/raw").display().to_string()
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty)?;
        let error = ArchiveLocation::parse(&empty.display().to_string())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("archive/raw/"), "{error}");
        Ok(())
    }

    #[test]
    fn local_listing_keeps_the_layout_in_read_order() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let write = |relative: &str| -> Result<()> {
            let path = dir.path().join("raw").join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, b"{}\n")?;
            Ok(())
        };
        write("portal=ge/date=2026-12-07/hour=10/part-0.jsonl")?;
        write("portal=g1/date=2026-12-07/hour=10/part-1.jsonl")?;
        write("portal=g1/date=2026-12-07/hour=10/part-0.jsonl")?;
        write("portal=g1/date=2026-12-07/hour=09/part-0.jsonl")?;
        write("portal=g1/date=unknown/hour=unknown/part-0.jsonl")?;
        let (objects, skipped) = list_local(dir.path(), &Filters::default())?;
        let names: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}/{}", o.hour, o.portal, o.name))
            .collect();
        assert_eq!(
            names,
            [
                "2026-12-07 09h/g1/part-0.jsonl",
                "2026-12-07 10h/g1/part-0.jsonl",
                "2026-12-07 10h/g1/part-1.jsonl",
                "2026-12-07 10h/ge/part-0.jsonl",
            ]
        );
        assert_eq!(skipped, 1);
        Ok(())
    }
}
