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
pub fn say(line: fmt::Arguments<'_>) {
    let _ = writeln!(LossyStderr, "{line}");
}

/// `eprintln!` that never panics: `say!("pageflow: {message}")`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stderr::say(format_args!($($arg)*))
    };
}
