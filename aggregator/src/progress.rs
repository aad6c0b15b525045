//! Progress on the console while a run or a study goes on: when stdout is a terminal, a
//! bar (indicatif) shows agents connecting, rounds and trials, with each round or trial
//! line printed above it; otherwise every line is printed plainly, as it happens, so a
//! log file or a pipe gets the same record without control characters.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where plain lines go when stdout is not a terminal.
type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A progress display over `total` steps (rounds or trials). Cheap to clone: clones share
/// one bar, so the hooks of a run can each hold one.
#[derive(Clone)]
pub struct Progress {
    output: Output,
}

#[derive(Clone)]
enum Output {
    Bar(ProgressBar),
    Plain(Sink),
}

impl Progress {
    /// A bar on stdout when stdout is a terminal, plain lines on stdout otherwise.
    /// `unit` names a step ("round", "trial").
    #[must_use]
    pub fn stdout(total: u64, unit: &'static str) -> Self {
        if std::io::stdout().is_terminal() {
            Self::bar(total, unit, ProgressDrawTarget::stdout())
        } else {
            Self::plain(Box::new(std::io::stdout()))
        }
    }

    /// Plain lines into `sink` (one per call, flushed at once so a killed process's log
    /// shows where it was).
    #[must_use]
    pub fn plain(sink: Box<dyn Write + Send>) -> Self {
        Self {
            output: Output::Plain(Arc::new(Mutex::new(sink))),
        }
    }

    fn bar(total: u64, unit: &'static str, target: ProgressDrawTarget) -> Self {
        let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {prefix} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(total), target)
            .with_style(style)
            .with_prefix(format!("{unit}s"));
        bar.enable_steady_tick(Duration::from_millis(250));
        Self {
            output: Output::Bar(bar),
        }
    }

    /// Whether this draws a bar (stdout is a terminal) rather than plain lines.
    #[must_use]
    pub fn is_bar(&self) -> bool {
        matches!(self.output, Output::Bar(_))
    }

    /// Agents connected so far against those needed to start, shown on the bar. Plain
    /// output prints nothing: the aggregator's log already says who it waits for, and a
    /// line per connection would bury the round lines.
    pub fn waiting(&self, connected: usize, needed: usize) {
        if let Output::Bar(bar) = &self.output {
            bar.set_message(format!("waiting for agents: {connected}/{needed} connected"));
        }
    }

    /// A line of the record (a round or a trial), printed above the bar.
    pub fn line(&self, text: &str) {
        match &self.output {
            Output::Bar(bar) => bar.println(text),
            Output::Plain(sink) => {
                // A console line that cannot be written is not worth stopping a run for.
                let mut sink = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = writeln!(sink, "{text}");
                let _ = sink.flush();
            }
        }
    }

    /// `done` steps of the total are finished; `status` says what is running now.
    pub fn advance(&self, done: u64, status: &str) {
        if let Output::Bar(bar) = &self.output {
            bar.set_position(done);
            bar.set_message(status.to_owned());
        }
    }

    /// Removes the bar (the lines stay); plain output has nothing to remove.
    pub fn finish(&self) {
        if let Output::Bar(bar) = &self.output {
            bar.finish_and_clear();
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("bar", &self.is_bar()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink a test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_output_prints_every_record_line_and_nothing_else() {
        let sink = Shared::default();
        let progress = Progress::plain(Box::new(sink.clone()));
        assert!(!progress.is_bar());
        progress.waiting(1, 3);
        progress.waiting(3, 3);
        progress.advance(1, "round 1");
        progress.line("round   0  updates   3");
        progress.clone().line("round   1  updates   2");
        progress.finish();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "round   0  updates   3\nround   1  updates   2\n");
    }

    #[test]
    fn a_bar_keeps_its_position_and_prints_nothing_plain() {
        let progress = Progress::bar(5, "trial", ProgressDrawTarget::hidden());
        assert!(progress.is_bar());
        progress.advance(2, "trial 2 round 1");
        progress.line("trial 1 complete");
        let Output::Bar(bar) = &progress.output else {
            unreachable!()
        };
        assert_eq!(bar.position(), 2);
        assert_eq!(bar.length(), Some(5));
        assert_eq!(bar.message(), "trial 2 round 1");
        progress.finish();
        assert!(bar.is_finished());
    }
}
