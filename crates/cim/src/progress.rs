//! Progress of a long operation: a bar with rate and ETA on a terminal, a plain log line every
//! few seconds otherwise (a CronJob's log, a pipe), so both an operator and a log reader can see
//! how far it is.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    /// `total` items (events) expected under `label`.
    pub(crate) fn new(label: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style =
                ProgressStyle::with_template("{msg:>24} [{bar:30}] {human_pos}/{human_len} events {per_sec} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_owned());
            bar
        });
        let now = Instant::now();
        let progress = Progress { bar, label: label.to_owned(), total, done: 0, started: now, logged: now };
        if progress.bar.is_none() {
            progress.log("started");
        }
        progress
    }

    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.logged.elapsed() >= LOG_EVERY => {
                self.logged = Instant::now();
                self.log("");
            }
            None => {}
        }
    }

    pub(crate) fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.log("done"),
        }
    }

    fn log(&self, what: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { self.done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 && self.total > self.done {
            format!(", ETA {:.0}s", (self.total - self.done) as f64 / rate)
        } else {
            String::new()
        };
        let line = format!("{}: {}/{} events, {rate:.0}/s{eta} {what}", self.label, self.done, self.total);
        let _ = writeln!(std::io::stderr().lock(), "{}", line.trim_end());
    }
}
