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
            ConnectorError::Closed { .. } | ConnectorError::InvalidConfig { .. } => false,
            ConnectorError::Aws { retryable, .. } => *retryable,
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
