//! A `pageflow run` process for tests that stop it the hard way (SIGKILL), the polite way (SIGTERM)
//! or let it end by itself, and read what it wrote to standard error meanwhile.
//!
//! Standard error is drained by a thread as it comes (so the job never blocks on a full pipe) and
//! can be searched while the process runs. Dropping a [`JobProcess`] kills and reaps the process.
//!
//! [`FAST_WINDOWS`] and [`JobProcess::http_address`] are what the end-to-end tests of `pageflow
//! run` share: windows that close within seconds, and the address the job serves on.
//!
//! Only `std` is used, like [`crate::aws`].

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often the waiting functions look again.
const POLL: Duration = Duration::from_millis(20);

/// Semantics overrides (environment variables of `pageflow run`) for a job whose rankings change
/// within seconds instead of minutes. The values are TOML strings, as the configuration reads them.
/// Pass them with `Command::envs(FAST_WINDOWS.iter().copied())`.
pub const FAST_WINDOWS: &[(&str, &str)] = &[
    // Windows open and close every second (the default is a minute).
    ("PAGEFLOW__SEMANTICS__SLIDE", "\"1s\""),
    // Trending counts the last 20 s (twenty slides) instead of an hour.
    ("PAGEFLOW__SEMANTICS__TRENDING_WINDOW", "\"20s\""),
    // Of which the last 5 s are the "recent" part that trending compares with the rest.
    ("PAGEFLOW__SEMANTICS__TRENDING_RECENT", "\"5s\""),
    // The watermark trails the newest event by 1 s, so a window is final a second after it ends.
    ("PAGEFLOW__SEMANTICS__MAX_OUT_OF_ORDERNESS", "\"1s\""),
];

/// What `pageflow run` writes to standard error once it serves: `… open http://ADDR/ …`.
const ANNOUNCEMENT: &str = "open http://";

/// A child process whose standard error is collected.
#[derive(Debug)]
pub struct JobProcess {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    drain: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl JobProcess {
    /// Starts `command` with standard output discarded and standard error collected (whatever the
    /// command set for them before).
    pub fn spawn(command: &mut Command) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let drain = child.stderr.take().map(|mut pipe| {
            let stderr = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                loop {
                    match pipe.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => stderr
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buffer[..n]),
                    }
                }
            })
        });
        Ok(JobProcess {
            child,
            stderr,
            drain,
            status: None,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to standard error so far (all of it once the process has been waited
    /// for).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The exit status if the process has ended (then standard error is complete).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.finish(status);
        }
        self.status
    }

    fn finish(&mut self, status: ExitStatus) {
        self.status = Some(status);
        // The pipe ends with the process (nothing else holds it), so the drain ends too.
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }

    /// Waits for the process to end by itself, at most `limit`; `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => {
                self.finish(status);
                status
            }
            Err(error) => panic!("cannot reap process {}: {error}", self.child.id()),
        }
    }

    /// Sends SIGTERM (`kill -TERM <pid>`), as ECS does before stopping a task.
    pub fn terminate(&self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("cannot run kill -TERM {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -TERM {pid} failed: {status}"))
        }
    }

    /// Waits until standard error contains `needle`, at most `limit`; `false` if it did not (or
    /// the process ended without writing it).
    pub fn wait_for_stderr(&mut self, needle: &str, limit: Duration) -> bool {
        self.wait_for_stderr_match(limit, |stderr| stderr.contains(needle).then_some(()))
            .is_ok()
    }

    /// The address a `pageflow run` job serves HTTP on (`127.0.0.1:PORT` when it listens on
    /// `127.0.0.1:0`), from the `open http://ADDR/` it announces on standard error once it
    /// serves. Waits at most `limit`; the error says why and holds the job's standard error when
    /// the job ends first or the limit passes.
    pub fn http_address(&mut self, limit: Duration) -> Result<String, String> {
        self.wait_for_stderr_match(limit, announced_address)
            .map_err(|ended| {
                let why = match ended {
                    Some(status) => format!("the job ended ({status})"),
                    None => format!("{limit:?} passed"),
                };
                format!(
                    "the job did not announce its address ({why}):\n{}",
                    self.stderr()
                )
            })
    }

    /// Waits until `probe` finds something in standard error, at most `limit`. The error is the
    /// exit status if the process ended without it, `None` if the limit passed.
    fn wait_for_stderr_match<T>(
        &mut self,
        limit: Duration,
        mut probe: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            // Looked at before reading, so that once it has ended all of standard error is seen.
            let ended = self.try_status();
            if let Some(found) = probe(&self.stderr()) {
                return Ok(found);
            }
            if ended.is_some() || Instant::now() >= deadline {
                return Err(ended);
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for JobProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address in the first complete `open http://ADDR/` of `stderr` (complete: the `/` after the
/// address is written too, as the line may arrive in pieces).
fn announced_address(stderr: &str) -> Option<String> {
    let start = stderr.find(ANNOUNCEMENT)? + ANNOUNCEMENT.len();
    let (address, _) = stderr[start..].split_once('/')?;
    Some(address.to_string())
}

/// Polls `probe` every `every` until it returns `Some`, at most `limit`.
pub fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::announced_address;

    #[test]
    fn the_address_is_read_from_the_complete_announcement_only() {
        let log = "INFO serving rankings on http://127.0.0.1:4000/ (metrics at /metrics)\n";
        assert_eq!(announced_address(log), None, "not the announcement");
        assert_eq!(
            announced_address(&format!(
                "{log}pageflow is running: open http://127.0.0.1:4"
            )),
            None,
            "not written to the end yet"
        );
        assert_eq!(
            announced_address(&format!(
                "{log}pageflow is running: open http://127.0.0.1:4000/ ; stop with Ctrl-C\n"
            ))
            .as_deref(),
            Some("127.0.0.1:4000")
        );
    }
}
