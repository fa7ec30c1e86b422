//! The job's CloudWatch embedded-metric-format (EMF) lines: with `[metrics.emf] enabled = true`,
//! a task on the job's runtime prints one line to standard output every `interval`, made by a
//! [`EmfReporter`] from the job's [`Metrics`] (the line's contents, namespace, dimensions and
//! metrics are described in `pageflow_metrics::emf`). At shutdown a last line reports the
//! interval cut short, so that what the job did just before it stopped is not lost.
//!
//! Standard output carries nothing else while the job runs (the log and the messages for a
//! person go to standard error), so a log router can send the lines to CloudWatch Logs as they
//! are: on ECS, the `awslogs` driver does.

use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pageflow_metrics::Metrics;
use pageflow_metrics::emf::EmfReporter;

use crate::config::EmfConfig;

/// The running EMF task.
#[derive(Debug)]
pub(super) struct EmfLines {
    reporter: Arc<Mutex<EmfReporter>>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the lines when `[metrics.emf]` is enabled.
pub(super) fn start_emf(
    config: &EmfConfig,
    runtime: &tokio::runtime::Runtime,
    metrics: &Arc<Metrics>,
) -> Option<EmfLines> {
    if !config.enabled {
        return None;
    }
    let reporter = Arc::new(Mutex::new(EmfReporter::new(config.settings(), metrics)));
    let period: Duration = config.interval.into();
    let task = runtime.spawn({
        let reporter = Arc::clone(&reporter);
        let metrics = Arc::clone(metrics);
        async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                print_line(&reporter, &metrics);
            }
        }
    });
    Some(EmfLines {
        reporter,
        metrics: Arc::clone(metrics),
        task,
    })
}

impl EmfLines {
    /// Stops the task and prints the line of the interval cut short.
    pub(super) fn finish(self) {
        self.task.abort();
        print_line(&self.reporter, &self.metrics);
    }
}

/// One line on standard output. A closed standard output loses it; the job goes on.
fn print_line(reporter: &Mutex<EmfReporter>, metrics: &Metrics) {
    let line = reporter
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .line(metrics);
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
