//! The one error type of this crate.
//!
//! Every failure at pageflow's edges is a [`ConnectorError`]. Each variant names the thing that
//! failed (a file, a directory, a configuration key) and its message says what to do about it.
//! [`ConnectorError::is_retryable`] tells a caller whether trying the same operation again may
//! succeed (an interrupted read, a full disk that may be cleaned up, too many open files) or cannot
//! (a missing file, a permission problem, a bad configuration), so that a supervisor can decide
//! between backing off and stopping.
//!
//! Sources hand errors to the dataflow as [`SourceError`]; the conversion keeps the message and the
//! retry decision.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use pageflow_dataflow::source::SourceError;

/// A failure at one of pageflow's edges (a source, a sink, or their configuration).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A file could not be opened.
    #[error("cannot open `{}`: {source}; check that the path exists and is readable", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// An input path names a directory (or another non-file), which has no lines to read.
    #[error(
        "`{}` is a directory, not a file: pageflow reads JSON-lines files; name the file itself (to \
         read every file of a directory, list each one in `source.paths`)",
        path.display()
    )]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// Another job holds the directory (see [`crate::dir_lock`]).
    #[error(
        "`{}` is in use by {holder}: two processes on one directory would overwrite each other's \
         files; stop that one first, or give this one another directory (a job's `sinks.dir` or \
         `checkpoint.dir`, a collector's `[collect] spool_dir`)",
        dir.display()
    )]
    DirectoryInUse {
        /// The directory.
        dir: PathBuf,
        /// Who holds it, as its lock file says.
        holder: String,
    },
    /// Another job holds the lease of the S3 checkpoint prefix (see
    /// [`crate::checkpoint_store::S3Lease`]).
    #[error(
        "the checkpoint prefix `{location}` is in use by {holder} (its lease runs out in \
         {expires_in_s} s unless renewed): two jobs on one prefix would overwrite each other's \
         checkpoints; stop that one first, or give this one another prefix (`checkpoint.prefix`)"
    )]
    PrefixInUse {
        /// The lease object, `s3://bucket/prefix/.pageflow.lock`.
        location: String,
        /// Who holds it, as the lease says.
        holder: String,
        /// Seconds until the lease runs out if its holder stops renewing it.
        expires_in_s: u64,
    },
    /// Reading an open file failed.
    #[error(
        "cannot read `{}` after line {line}: {source}; check that the file is not being truncated or \
         moved while it is read, then run again",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The last line read completely before the failure (0 if none).
        line: u64,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A directory could not be created.
    #[error(
        "cannot create directory `{}`: {source}; check the permissions and free space of the output root",
        path.display()
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Writing or flushing an output failed.
    #[error(
        "cannot write `{}`: {source}; check free disk space and permissions of the output root",
        path.display()
    )]
    Write {
        /// The file (or stream) written.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// A sink was used after [`crate::Sink::close`].
    #[error("the sink `{sink}` is closed; create a new one to write more")]
    Closed {
        /// Which sink.
        sink: String,
    },
    /// An AWS API refused a request in a way no retry fixes (missing stream, no permission), or
    /// kept failing.
    #[error(
        "{what}: {message}; check that the stream exists, the region and endpoint, and the IAM permissions"
    )]
    Aws {
        /// What was being done, e.g. `reading shard shardId-000000000000 of stream g1`.
        what: String,
        /// The service's error code and message.
        message: String,
        /// Whether trying again later may work.
        retryable: bool,
    },
    /// Amazon Personalize was not called because its circuit breaker is open: the last calls
    /// failed (see [`crate::personalize::breaker`]).
    #[error(
        "{what}: not sent, Amazon Personalize's circuit breaker is open after repeated failures \
         (see the earlier errors for why); answer without Personalize for now, a probe call goes \
         through in {}ms",
        retry_in.as_millis()
    )]
    PersonalizeBreakerOpen {
        /// The request that was not sent.
        what: String,
        /// How long until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// Amazon Personalize did not answer within the time budget.
    #[error(
        "{what}: no answer within the {}ms budget; answer without Personalize, and if this keeps \
         happening check the endpoint's region (call the nearest one), the network path, or raise \
         the budget",
        budget.as_millis()
    )]
    PersonalizeTimeout {
        /// The request.
        what: String,
        /// The budget that ran out.
        budget: Duration,
    },
    /// Amazon Personalize throttled the request: the account or campaign is over its request rate.
    #[error(
        "{what}: throttled by Amazon Personalize ({message}); send fewer requests per second or ask \
         for a higher quota (Service Quotas console); for a campaign, check its minProvisionedTPS"
    )]
    PersonalizeThrottled {
        /// The request.
        what: String,
        /// The service's error code and message.
        message: String,
    },
    /// The campaign, recommender, filter or event tracker does not exist where the request went.
    #[error(
        "{what}: not found ({message}); check the ARN or tracking id in the configuration, that the \
         resource is ACTIVE, and that the region and endpoint are the resource's"
    )]
    PersonalizeNotFound {
        /// The request.
        what: String,
        /// The service's error code and message.
        message: String,
    },
    /// Amazon Personalize (or the check before calling it) refused the request's input.
    #[error(
        "{what}: invalid input ({message}); fix the request (user id, number of results 1 to 500, \
         filter ARN and values, event fields) or the configuration it comes from"
    )]
    PersonalizeInvalidInput {
        /// The request.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// Any other failure of an Amazon Personalize call: a 5xx, a transport error, an answer that
    /// could not be read, a permission problem.
    #[error(
        "{what}: Amazon Personalize call failed ({message}); check the endpoint, region and IAM \
         permissions (personalize:GetRecommendations, personalize:PutEvents) if it persists"
    )]
    PersonalizeService {
        /// The request.
        what: String,
        /// The service's error code and message, or the transport's failure.
        message: String,
        /// Whether trying again later may work.
        retryable: bool,
    },
    /// A curated Parquet file could not be encoded or read back: a bug in pageflow (encoding) or a
    /// damaged file (reading), which no retry fixes.
    #[error(
        "cannot {what} the curated Parquet file `{}`: {message}; if the file is damaged, move it \
         away (its rows come back when the input is replayed), otherwise report this as a bug",
        path.display()
    )]
    Parquet {
        /// The file.
        path: PathBuf,
        /// `encode` or `read`.
        what: &'static str,
        /// The Parquet or Arrow library's message.
        message: String,
    },
    /// A configuration has problems; all of them are listed.
    #[error("invalid {what} configuration: {}", problems.join("; "))]
    InvalidConfig {
        /// Which configuration (e.g. `synthetic`).
        what: &'static str,
        /// Every problem found, each naming the key and the fix.
        problems: Vec<String>,
    },
}

impl ConnectorError {
    /// Whether trying the same operation again may succeed.
    ///
    /// I/O errors are retryable when they are transient: interrupted or timed-out calls, a busy
    /// resource, a full disk or quota (space may be freed), too many open files. Missing files,
    /// permission problems, closed sinks and invalid configurations are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Open { source, .. }
            | ConnectorError::Read { source, .. }
            | ConnectorError::CreateDir { source, .. }
            | ConnectorError::Write { source, .. } => io_error_is_transient(source),
            ConnectorError::Closed { .. }
            | ConnectorError::Parquet { .. }
            | ConnectorError::InvalidConfig { .. }
            | ConnectorError::NotAFile { .. }
            | ConnectorError::DirectoryInUse { .. }
            | ConnectorError::PrefixInUse { .. } => false,
            ConnectorError::Aws { retryable, .. }
            | ConnectorError::PersonalizeService { retryable, .. } => *retryable,
            // Later the breaker lets a probe through; a timeout or throttling is transient.
            ConnectorError::PersonalizeBreakerOpen { .. }
            | ConnectorError::PersonalizeTimeout { .. }
            | ConnectorError::PersonalizeThrottled { .. } => true,
            // The same request finds the same missing resource or bad input again.
            ConnectorError::PersonalizeNotFound { .. }
            | ConnectorError::PersonalizeInvalidInput { .. } => false,
        }
    }
}

/// `EMFILE`/`ENFILE` on Unix: the process or the system has too many open files.
const TOO_MANY_OPEN_FILES: [i32; 2] = [24, 23];

/// Whether an I/O error is the kind that goes away by itself.
pub(crate) fn io_error_is_transient(error: &io::Error) -> bool {
    use io::ErrorKind as Kind;
    match error.kind() {
        Kind::Interrupted
        | Kind::WouldBlock
        | Kind::TimedOut
        | Kind::ResourceBusy
        | Kind::StorageFull
        | Kind::QuotaExceeded
        | Kind::ConnectionReset
        | Kind::ConnectionAborted
        | Kind::BrokenPipe => true,
        _ => error
            .raw_os_error()
            .is_some_and(|code| cfg!(unix) && TOO_MANY_OPEN_FILES.contains(&code)),
    }
}

impl From<ConnectorError> for SourceError {
    fn from(error: ConnectorError) -> Self {
        SourceError {
            retryable: error.is_retryable(),
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_decision_follows_the_io_error_kind() {
        let missing = ConnectorError::Open {
            path: "events.jsonl".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(!missing.is_retryable());
        let interrupted = ConnectorError::Read {
            path: "events.jsonl".into(),
            line: 3,
            source: io::Error::from(io::ErrorKind::Interrupted),
        };
        assert!(interrupted.is_retryable());
        let full = ConnectorError::Write {
            path: "out".into(),
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert!(full.is_retryable());
        assert!(!ConnectorError::Closed { sink: "x".into() }.is_retryable());
    }

    #[test]
    fn personalize_errors_say_whether_a_retry_can_help() {
        let what = || "GetRecommendations from campaign c for user \"u1\"".to_string();
        let transient = [
            ConnectorError::PersonalizeBreakerOpen {
                what: what(),
                retry_in: Duration::from_secs(3),
            },
            ConnectorError::PersonalizeTimeout {
                what: what(),
                budget: Duration::from_millis(150),
            },
            ConnectorError::PersonalizeThrottled {
                what: what(),
                message: "ThrottlingException: Rate exceeded".into(),
            },
            ConnectorError::PersonalizeService {
                what: what(),
                message: "InternalFailure".into(),
                retryable: true,
            },
        ];
        for error in &transient {
            assert!(error.is_retryable(), "{error}");
            assert!(error.to_string().contains("campaign c"), "{error}");
        }
        let permanent = [
            ConnectorError::PersonalizeNotFound {
                what: what(),
                message: "ResourceNotFoundException".into(),
            },
            ConnectorError::PersonalizeInvalidInput {
                what: what(),
                message: "InvalidInputException".into(),
            },
            ConnectorError::PersonalizeService {
                what: what(),
                message: "AccessDeniedException".into(),
                retryable: false,
            },
        ];
        for error in &permanent {
            assert!(!error.is_retryable(), "{error}");
        }
        assert!(transient[1].to_string().contains("150ms"));
        assert!(permanent[0].to_string().contains("check the ARN"));
    }

    #[test]
    fn source_error_keeps_message_and_retry_decision() {
        let error = ConnectorError::Open {
            path: "data/events.jsonl".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let source_error = SourceError::from(error);
        assert!(!source_error.retryable);
        assert!(
            source_error.message.contains("data/events.jsonl"),
            "{}",
            source_error.message
        );
        assert!(
            source_error.message.contains("exists"),
            "{}",
            source_error.message
        );
    }
}
