//! A `pageflow run` process for tests that stop it the hard way (SIGKILL), the polite way (SIGTERM)
//! or let it end by itself, and read what it wrote to standard error meanwhile.
//!
//! Standard error is drained by a thread as it comes (so the job never blocks on a full pipe) and
//! can be searched while the process runs. Dropping a [`JobProcess`] kills and reaps the process.
//!
//! Only `std` is used, like [`crate::aws`].

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often the waiting functions look again.
const POLL: Duration = Duration::from_millis(20);

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
        let deadline = Instant::now() + limit;
        loop {
            let ended = self.try_status().is_some();
            if self.stderr().contains(needle) {
                return true;
            }
            if ended || Instant::now() >= deadline {
                return false;
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
