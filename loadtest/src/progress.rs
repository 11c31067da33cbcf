//! The live progress line on stderr: elapsed time, requests sent, answers
//! per second and answers by outcome. On a terminal it redraws one line;
//! otherwise it prints a line per second.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::model::Outcome;

type Counts = (u64, u64, [u64; Outcome::COUNT]);

/// A running progress line.
pub struct Progress {
    done: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts drawing; `counts` returns (sent, answered, answers by outcome).
    pub fn start(
        t0: Instant,
        total: u64,
        planned: Duration,
        counts: impl Fn() -> Counts + Send + 'static,
    ) -> Progress {
        let done = Arc::new(Notify::new());
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        let task = tokio::spawn({
            let done = done.clone();
            async move {
                let mut tick = tokio::time::interval(every);
                let mut last = (Instant::now(), 0u64);
                loop {
                    let finished = tokio::select! {
                        _ = tick.tick() => false,
                        _ = done.notified() => true,
                    };
                    let (sent, answered, by) = counts();
                    let now = Instant::now();
                    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                    let rate = answered.saturating_sub(last.1) as f64 / dt;
                    last = (now, answered);
                    let line = line(
                        now.saturating_duration_since(t0),
                        planned,
                        sent,
                        total,
                        answered,
                        rate,
                        &by,
                    );
                    let mut err = std::io::stderr().lock();
                    let _ = if tty {
                        write!(err, "\r\x1b[2K{line}")
                    } else {
                        writeln!(err, "{line}")
                    };
                    if finished {
                        if tty {
                            let _ = writeln!(err);
                        }
                        return;
                    }
                }
            }
        });
        Progress { done, task }
    }

    /// Draws the last line and stops.
    pub async fn finish(self) {
        self.done.notify_one();
        let _ = self.task.await;
    }
}

fn line(
    elapsed: Duration,
    planned: Duration,
    sent: u64,
    total: u64,
    answered: u64,
    rate: f64,
    by: &[u64; Outcome::COUNT],
) -> String {
    let mut s = format!(
        "{:>6.1}s/{:.1}s  sent {sent}/{total}  in flight {}  {:>7.0} answers/s ",
        elapsed.as_secs_f64(),
        planned.as_secs_f64(),
        sent.saturating_sub(answered + by[Outcome::NoAnswer.index()]),
        rate
    );
    for o in Outcome::ALL {
        let n = by[o.index()];
        if n > 0 {
            s.push_str(&format!(" {} {n}", o.name()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_counts_that_occurred() {
        let mut by = [0; Outcome::COUNT];
        by[Outcome::Success.index()] = 3;
        by[Outcome::SoldOut.index()] = 5;
        let l = line(
            Duration::from_millis(1500),
            Duration::from_secs(2),
            10,
            20,
            8,
            100.0,
            &by,
        );
        assert!(l.contains("sent 10/20"), "{l}");
        assert!(l.contains("in flight 2"), "{l}");
        assert!(l.contains("success 3 sold_out 5"), "{l}");
        assert!(!l.contains("timeout"), "{l}");
    }
}
