//! Stopping: on SIGTERM or SIGINT the broker stops accepting, lets serving
//! clients (and connections yet to send their first byte) finish for the
//! grace period, then sends every worker SIGTERM and, every
//! [`KILL_AFTER`] while any is left, SIGKILL. A second signal ends the
//! grace period at once.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::Broker;
use crate::status::ExitCategory;
use crate::workers::Kill;

/// After the grace period, workers get SIGTERM and then this long.
const KILL_AFTER: Duration = Duration::from_secs(2);

/// Where a stop is.
#[derive(Debug)]
pub(super) struct StopSequence {
    /// The end of the grace period.
    deadline: Instant,
    /// When workers were last told to end.
    terminated_at: Option<Instant>,
}

/// What the stop asks for now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StopStep {
    /// The grace period is over: close silent connections, SIGTERM workers.
    Terminate,
    /// Workers had [`KILL_AFTER`] since the last step: SIGKILL them.
    Kill,
}

impl StopSequence {
    pub(super) fn new(now: Instant, grace: Duration) -> StopSequence {
        StopSequence {
            deadline: now + grace,
            terminated_at: None,
        }
    }

    /// A second stop signal: the grace period ends now.
    pub(super) fn hurry(&mut self, now: Instant) {
        self.deadline = now;
    }

    pub(super) fn step(&mut self, now: Instant) -> Option<StopStep> {
        match self.terminated_at {
            None if now >= self.deadline => {
                self.terminated_at = Some(now);
                Some(StopStep::Terminate)
            }
            Some(t) if now.duration_since(t) >= KILL_AFTER => {
                self.terminated_at = Some(now);
                Some(StopStep::Kill)
            }
            _ => None,
        }
    }
}

impl Broker {
    /// Stops accepting; serving clients get the grace period.
    pub(super) fn begin_stop(&mut self, signal: Signal) {
        if let Some(stop) = &mut self.stop {
            info!(signal = %signal, "second stop signal: ending every worker now");
            stop.hurry(Instant::now());
            return;
        }
        let grace = Duration::from_secs(self.settings.config.server.shutdown_grace_secs);
        info!(signal = %signal, grace_secs = grace.as_secs(), "stopping: no new clients");
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1");
        }
        self.listeners.close_all();
        self.admin = None;
        // Accepted connections that have not sent their first byte are not
        // dropped: they get a worker if they speak within the grace period.
        // Connections not yet accepted stay queued in the listening socket
        // (kept open by systemd under socket activation) for the next broker.
        if !self.waiting.is_empty() {
            info!(
                waiting = self.waiting.len(),
                "connections waiting for their first byte get the grace period too"
            );
        }
        self.workers.forget_ready();
        self.workers.end_pool(None, "pool worker ended by the stop");
        self.stop = Some(StopSequence::new(Instant::now(), grace));
    }

    /// The stop's next step, when one is due at `now`.
    pub(super) fn continue_stop(&mut self, now: Instant) {
        match self.stop.as_mut().and_then(|s| s.step(now)) {
            Some(StopStep::Terminate) => {
                if !self.waiting.is_empty() {
                    info!(
                        connections = self.waiting.len(),
                        "grace period over: closing connections that never sent a byte"
                    );
                    self.counters.closed_before_first_byte += u64::from(self.waiting.clear());
                }
                if !self.queued.is_empty() {
                    let n = self.queued.clear();
                    info!(
                        clients = n,
                        "grace period over: closing clients still queued for a worker"
                    );
                    self.counters
                        .refused("stopped before a worker was free", u64::from(n));
                }
                let workers = self.workers.ids();
                if !workers.is_empty() {
                    info!(workers = workers.len(), "grace period over: ending workers");
                }
                for id in workers {
                    let why = Kill {
                        category: ExitCategory::Shutdown,
                        text: "ended by the broker's stop after the grace period",
                    };
                    self.workers.end(id, Signal::SIGTERM, why);
                }
            }
            Some(StopStep::Kill) => {
                for (_, w) in self.workers.iter() {
                    warn!(worker = w.pid, "worker did not stop; killing");
                    let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_terminated_after_the_grace_then_killed_every_two_seconds() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut stop = StopSequence::new(t0, Duration::from_secs(10));
        assert_eq!(stop.step(s(9)), None);
        assert_eq!(stop.step(s(10)), Some(StopStep::Terminate));
        assert_eq!(stop.step(s(10)), None, "terminated once");
        assert_eq!(stop.step(s(11)), None);
        assert_eq!(stop.step(s(12)), Some(StopStep::Kill));
        assert_eq!(stop.step(s(13)), None);
        assert_eq!(stop.step(s(14)), Some(StopStep::Kill));
    }

    #[test]
    fn a_second_signal_ends_the_grace_period() {
        let t0 = Instant::now();
        let mut stop = StopSequence::new(t0, Duration::from_secs(30));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(stop.step(t1), None);
        stop.hurry(t1);
        assert_eq!(stop.step(t1), Some(StopStep::Terminate));
        // Once terminating, another signal changes nothing.
        stop.hurry(t1 + Duration::from_secs(1));
        assert_eq!(stop.step(t1 + Duration::from_secs(1)), None);
        assert_eq!(stop.step(t1 + Duration::from_secs(2)), Some(StopStep::Kill));
    }
}
