//! Standard error that never takes the process down.
//!
//! `pageflow replay … 2>&1 | head` closes the pipe after a few lines; a full disk makes writes
//! fail. Rust's `eprintln!` panics then, and so does tracing-subscriber, which reports a failed
//! write with `eprintln!` on the same broken stream. Log lines and messages go through
//! [`LossyStderr`] instead: what cannot be written is dropped and the job goes on.

use std::fmt;
use std::io::{self, Write};

/// Standard error, dropping what cannot be written.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Nobody is left to tell: the bytes are lost, the job is not.
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Writes one line to standard error, as `eprintln!` does, without panicking.
///
/// The line is formatted first and written with one call: formatting straight into standard
/// error writes each piece on its own, and another thread's panic message can land between them.
pub fn say(line: fmt::Arguments<'_>) {
    let mut text = line.to_string();
    text.push('\n');
    let _ = LossyStderr.write_all(text.as_bytes());
}

/// `eprintln!` that never panics: `say!("pageflow: {message}")`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stderr::say(format_args!($($arg)*))
    };
}

/// An error and its causes on one line, as `{:#}` writes them, but without repeating a cause that
/// a message already includes: our errors say their OS reason in their message *and* keep it as
/// their source, so `{:#}` would print "No such file or directory" twice.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let opened = pageflow_connectors::JsonLinesFile::open("/nonexistent/pageflow-input.jsonl");
        let error = anyhow::Error::from(opened.unwrap_err()).context("cannot replay it");
        let text = describe(&error);
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert!(
            text.starts_with("cannot replay it: cannot open `/nonexistent/pageflow-input.jsonl`")
        );
        // A cause that adds something is still said.
        let error = anyhow::anyhow!("disk full").context("cannot write features.jsonl");
        assert_eq!(describe(&error), "cannot write features.jsonl: disk full");
    }
}
