//! Progress on standard error: a bar with an ETA on a terminal, a plain line every few
//! seconds otherwise (logs, CI), nothing with `--quiet`.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences progress and notes (`--quiet`, and `--json` so that stderr stays for errors).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether progress and notes are shown.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A line on standard error, unless quiet.
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::progress::quiet() {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use note;

/// One long step: `total` units of `unit`.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    unit: &'static str,
    total: u64,
    started: Instant,
    last_line: Instant,
}

/// Plain lines come at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Starts a step.
    pub fn new(label: &str, total: u64, unit: &'static str) -> Progress {
        let bar = (!quiet() && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{elapsed_precise}] {bar:32} {pos}/{len} {msg} (ETA {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b.set_message(unit);
            b
        });
        Progress {
            bar,
            label: label.into(),
            unit,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// A step of unknown length: a spinner with the time so far on a terminal, a line at the
    /// start and one at the end otherwise.
    pub fn spinner(label: &str) -> Progress {
        let bar = (!quiet() && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {spinner}")
                    .expect("a valid template"),
            );
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        if bar.is_none() {
            note!("{label} ...");
        }
        Progress {
            bar,
            label: label.into(),
            unit: "",
            total: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// `done` of the total are done.
    pub fn set(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        } else if !quiet() && self.last_line.elapsed() >= LINE_EVERY && done < self.total {
            self.last_line = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            let eta = secs / done.max(1) as f64 * (self.total - done) as f64;
            eprintln!(
                "{}: {done}/{} {} ({:.0}%), {secs:.0} s, about {eta:.0} s left",
                self.label,
                self.total,
                self.unit,
                100.0 * done as f64 / self.total.max(1) as f64
            );
        }
    }

    /// The step is over, and the caller says so itself: the bar clears, nothing is printed.
    pub fn clear(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// The step is over: the bar clears and one line says how long it took.
    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        if self.total == 0 {
            note!("{}: done in {secs:.1} s", self.label);
        } else {
            note!(
                "{}: {} {} in {secs:.1} s",
                self.label,
                self.total,
                self.unit
            );
        }
    }
}
