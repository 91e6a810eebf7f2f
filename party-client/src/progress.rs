//! Progress of long local work (loading a CSV, training epochs): a bar on an interactive
//! terminal, otherwise a log line at most every [`LOG_EVERY`] and one at the end, so a daemon
//! under systemd or docker shows that a two-minute load is moving.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

/// Least time between two progress log lines when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One piece of work with a known total (bytes, epochs).
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    unit: &'static str,
    total: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    /// Work called `label`, `total` `unit`s long (`unit` is "bytes" or "epochs").
    pub fn new(label: &str, total: u64, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = match unit {
                "bytes" => "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}",
                _ => "{prefix} [{bar:30}] {pos}/{len} {msg}",
            };
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            label: label.to_string(),
            unit,
            total,
            started: now,
            logged: now,
        }
    }

    /// `done` of the total are done; `msg` says more (e.g. the last loss).
    pub fn set(&mut self, done: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(msg.to_string());
            }
            None => {
                if self.logged.elapsed() >= LOG_EVERY && done < self.total {
                    self.logged = Instant::now();
                    self.log(done, msg);
                }
            }
        }
    }

    /// The work is over after `done` units (early stopping ends training before the total).
    pub fn finish(self, done: u64, msg: &str) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            // Only work long enough to have been worth watching gets a closing line.
            None if self.started.elapsed() >= LOG_EVERY => self.log(done, msg),
            None => {}
        }
    }

    fn log(&self, done: u64, msg: &str) {
        let pct = if self.total == 0 {
            100.0
        } else {
            100.0 * done as f64 / self.total as f64
        };
        tracing::info!(
            work = %self.label,
            done,
            total = self.total,
            unit = self.unit,
            seconds = self.started.elapsed().as_secs(),
            "{pct:.0} % {msg}"
        );
    }
}
