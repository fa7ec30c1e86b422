//! How far a backfill has come: hours done out of the total, events read, events per second.
//!
//! On a terminal, a progress bar on standard error (redrawn a few times a second); otherwise
//! (a log file, CI), a plain line every [`LINE_INTERVAL`], so that logs stay readable.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::layout::Hour;

/// How often a plain progress line is written when standard error is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// The progress of one backfill, updated by the source as it reads.
#[derive(Debug)]
pub struct Progress {
    /// The bar on a terminal; `None`: plain lines.
    bar: Option<ProgressBar>,
    /// Distinct hours to read.
    total_hours: u64,
    /// Hours read completely.
    hours_done: u64,
    /// The hour being read.
    current: Option<Hour>,
    /// Records read so far.
    events: u64,
    /// When reading started.
    started: Instant,
    /// When the last plain line was written.
    last_line: Instant,
    /// The end has been reported.
    finished: bool,
}

impl Progress {
    /// Progress over `total_hours`, as a bar when standard error is a terminal.
    pub fn new(total_hours: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_hours),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} hours  {msg}  (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            total_hours,
            hours_done: 0,
            current: None,
            events: 0,
            started: now,
            last_line: now,
            finished: false,
        }
    }

    /// An object of `hour` is being opened: the hour before it, if another, is done.
    pub fn reading(&mut self, hour: Hour) {
        if self.current.is_some_and(|current| current != hour) {
            self.hours_done += 1;
        }
        self.current = Some(hour);
        self.update();
    }

    /// `count` more records were read.
    pub fn read(&mut self, count: u64) {
        self.events += count;
        self.update();
    }

    /// Every hour has been read.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.hours_done = self.total_hours;
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.hours_done);
                bar.finish_with_message(self.counts());
            }
            None => pageflow_says(&self.line()),
        }
    }

    /// Events and rate, for the bar's message and the plain lines.
    fn counts(&self) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{} events, {:.0} events/s",
            self.events,
            self.events as f64 / seconds
        )
    }

    fn line(&self) -> String {
        let at = match self.current {
            Some(hour) if !self.finished => format!(" (reading {hour})"),
            _ => String::new(),
        };
        format!(
            "backfill: {}/{} hours{at}, {}",
            self.hours_done,
            self.total_hours,
            self.counts()
        )
    }

    fn update(&mut self) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.hours_done);
                bar.set_message(self.counts());
            }
            None => {
                if self.last_line.elapsed() >= LINE_INTERVAL {
                    self.last_line = Instant::now();
                    pageflow_says(&self.line());
                }
            }
        }
    }
}

fn pageflow_says(line: &str) {
    crate::say!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::backfill::layout::Date;

    #[test]
    fn an_hour_is_done_when_the_next_one_starts() -> Result<(), String> {
        let date = Date::parse("2026-12-07")?;
        let mut progress = Progress::new(3);
        progress.reading(Hour { date, hour: 1 });
        progress.reading(Hour { date, hour: 1 });
        assert_eq!(progress.hours_done, 0);
        progress.read(10);
        progress.reading(Hour { date, hour: 2 });
        assert_eq!(progress.hours_done, 1);
        assert!(
            progress
                .line()
                .contains("1/3 hours (reading 2026-12-07 02h), 10 events")
        );
        progress.finish();
        assert_eq!(progress.hours_done, 3);
        Ok(())
    }
}
