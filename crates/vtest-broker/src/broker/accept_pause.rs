//! Accepting on a socket paused after failures (EMFILE: the connection
//! stays in the backlog and the socket stays readable), so that a broker
//! out of fds neither spins on a readable socket nor floods the log: one
//! line when it starts failing, one when it accepts again.

use std::time::{Duration, Instant};

use tracing::{error, info};

/// After a failed accept, the socket is left alone this long.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub(super) struct AcceptPause {
    until: Option<Instant>,
    failures: u64,
    since: Option<Instant>,
}

impl AcceptPause {
    /// Whether the socket is left out of poll at `now`.
    pub(super) fn paused(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Accepting on `socket` failed at `now`.
    pub(super) fn failed(&mut self, socket: &str, e: &std::io::Error, now: Instant) {
        if self.failures == 0 {
            error!(socket, error = %e, pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                   "accept failed; new connections wait in the backlog");
            self.since = Some(now);
        }
        self.failures += 1;
        self.until = Some(now + ACCEPT_PAUSE);
    }

    /// Accepting on `socket` worked at `now`: a streak of failures is over.
    pub(super) fn succeeded(&mut self, socket: &str, now: Instant) {
        if self.failures > 0 {
            let secs = self
                .since
                .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            info!(socket, failures = self.failures, secs, "accepting again");
        }
        *self = AcceptPause::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_pauses_the_socket_for_a_while() {
        let t0 = Instant::now();
        let emfile = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
        let mut p = AcceptPause::default();
        assert!(!p.paused(t0));
        p.failed("s", &emfile, t0);
        assert!(p.paused(t0));
        assert!(p.paused(t0 + ACCEPT_PAUSE - Duration::from_millis(1)));
        assert!(!p.paused(t0 + ACCEPT_PAUSE));
        // Failing again extends it; the streak keeps its start.
        let t1 = t0 + Duration::from_secs(1);
        p.failed("s", &emfile, t1);
        assert!(p.paused(t1 + Duration::from_millis(100)));
        assert_eq!((p.failures, p.since), (2, Some(t0)));
        // Accepting ends the streak.
        p.succeeded("s", t1 + ACCEPT_PAUSE);
        assert_eq!((p.failures, p.since, p.until), (0, None, None));
        assert!(!p.paused(t1));
    }
}
