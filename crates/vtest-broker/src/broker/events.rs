//! One round of the event loop: poll every fd the broker watches, each
//! tagged with a stable token (a listener id, a worker id, a client id,
//! an admin connection id), so that a handler that runs first (a reload,
//! a stop, a hand-over) cannot make a later event name something else.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::accept_pause::ACCEPT_PAUSE;
use super::listeners::ListenerId;
use super::Broker;
use crate::notify::Notifier;
use crate::workers::WorkerId;
use crate::BrokerError;

/// What poll found ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    Signal,
    Accept(ListenerId),
    Admin,
    AdminConn(u64),
    Worker(WorkerId),
    WorkerLog(WorkerId),
    /// A client waiting for its first byte, by client id.
    Waiting(u64),
}

/// What decides how long a poll may sleep.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Wakeups {
    /// A socket is left out of poll for a while: wake to put it back.
    pub(super) accept_paused: bool,
    /// Something needs the periodic timers (watchdogs, idle limits,
    /// refusal summaries, a pool's back-off).
    pub(super) timers: bool,
    /// systemd's watchdog interval, if it watches us.
    pub(super) watchdog: Option<Duration>,
    /// The next admin connection's deadline.
    pub(super) admin_deadline: Option<Instant>,
}

/// How long poll may sleep at `now`, in ms (`None`: until an fd is ready).
pub(super) fn poll_timeout_ms(w: Wakeups, now: Instant) -> Option<u16> {
    let tick = w
        .watchdog
        .map_or(1000, |i| i.as_millis().clamp(50, 1000) as u16);
    let mut timeout = if w.accept_paused {
        Some(ACCEPT_PAUSE.as_millis().min(u128::from(tick)) as u16)
    } else if w.timers || w.watchdog.is_some() {
        Some(tick)
    } else {
        None
    };
    // Admin connections are closed at their deadline (rounded up).
    if let Some(deadline) = w.admin_deadline {
        let ms = deadline.saturating_duration_since(now).as_millis() + 1;
        timeout = Some(ms.min(u128::from(timeout.unwrap_or(u16::MAX))) as u16);
    }
    timeout
}

impl Broker {
    /// Waits for the next events (none: a signal interrupted the wait, or
    /// a timer is due).
    pub(super) fn wait(&self) -> Result<Vec<Event>, BrokerError> {
        let now = Instant::now();
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let mut events = vec![Event::Signal];
        for (id, l) in self.listeners.iter() {
            if let Some(s) = l.socket.as_ref().filter(|_| !l.accept.paused(now)) {
                fds.push(PollFd::new(s.socket.as_fd(), PollFlags::POLLIN));
                events.push(Event::Accept(id));
            }
        }
        let admin = self.admin.as_ref();
        if let Some(a) = admin.filter(|_| !self.admin_accept.paused(now)) {
            fds.push(PollFd::new(a.socket.as_fd(), PollFlags::POLLIN));
            events.push(Event::Admin);
        }
        for (id, fd, flags) in self.admin_conns.poll_fds() {
            fds.push(PollFd::new(fd, flags));
            events.push(Event::AdminConn(id));
        }
        for (id, channel) in self.workers.channels() {
            fds.push(PollFd::new(channel.as_fd(), PollFlags::POLLIN));
            events.push(Event::Worker(id));
        }
        for (id, log) in self.workers.logs(now) {
            fds.push(PollFd::new(log, PollFlags::POLLIN));
            events.push(Event::WorkerLog(id));
        }
        for w in self.waiting.iter() {
            fds.push(PollFd::new(w.stream.as_fd(), PollFlags::POLLIN));
            events.push(Event::Waiting(w.client.client_id));
        }
        let wakeups = Wakeups {
            accept_paused: self.listeners.values().any(|l| l.accept.paused(now))
                || self.admin_accept.paused(now),
            timers: self.workers.len() > 0
                || !self.waiting.is_empty()
                || self.refusals.any()
                || self.listeners.values().any(|l| l.backoff_until.is_some()),
            watchdog: self.notifier.as_ref().and_then(Notifier::interval),
            admin_deadline: self.admin_conns.next_deadline(),
        };
        let timeout = poll_timeout_ms(wakeups, now).map_or(PollTimeout::NONE, PollTimeout::from);
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(BrokerError::EventLoop(e)),
        }
        let ready = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()));
        Ok(events
            .into_iter()
            .zip(ready)
            .filter_map(|(e, r)| r.then_some(e))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_broker_sleeps_until_an_fd_is_ready() {
        assert_eq!(poll_timeout_ms(Wakeups::default(), Instant::now()), None);
    }

    #[test]
    fn timers_tick_every_second_or_at_half_the_watchdog() {
        let now = Instant::now();
        let timers = Wakeups {
            timers: true,
            ..Wakeups::default()
        };
        assert_eq!(poll_timeout_ms(timers, now), Some(1000));
        let watched = |ms| Wakeups {
            watchdog: Some(Duration::from_millis(ms)),
            ..Wakeups::default()
        };
        assert_eq!(poll_timeout_ms(watched(300), now), Some(300));
        assert_eq!(poll_timeout_ms(watched(10), now), Some(50));
        assert_eq!(poll_timeout_ms(watched(30_000), now), Some(1000));
    }

    #[test]
    fn a_paused_socket_is_polled_again_after_the_pause() {
        let now = Instant::now();
        let paused = Wakeups {
            accept_paused: true,
            ..Wakeups::default()
        };
        assert_eq!(poll_timeout_ms(paused, now), Some(250));
        let watched = Wakeups {
            watchdog: Some(Duration::from_millis(100)),
            ..paused
        };
        assert_eq!(poll_timeout_ms(watched, now), Some(100));
    }

    #[test]
    fn admin_deadlines_shorten_the_wait() {
        let now = Instant::now();
        let admin = Wakeups {
            admin_deadline: Some(now + Duration::from_millis(40)),
            ..Wakeups::default()
        };
        assert_eq!(poll_timeout_ms(admin, now), Some(41));
        let later = Wakeups {
            timers: true,
            admin_deadline: Some(now + Duration::from_secs(5)),
            ..Wakeups::default()
        };
        assert_eq!(poll_timeout_ms(later, now), Some(1000));
        let past = Wakeups {
            admin_deadline: Some(now),
            ..Wakeups::default()
        };
        assert_eq!(poll_timeout_ms(past, now + Duration::from_secs(1)), Some(1));
    }
}
