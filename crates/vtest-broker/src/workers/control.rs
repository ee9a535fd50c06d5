//! What workers say over their control channel (Ready, Attached, Stats,
//! Finished, SeccompViolation), read without blocking; a worker that floods
//! it or speaks garbage is killed as compromised. And the hang watchdog,
//! which goes by the fences in their Stats.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};
use vtest_control::{ExitReason, SessionStats, WorkerMsg};

use super::ending::Kill;
use super::{Role, Worker, WorkerId, Workers};
use crate::status::{ExitCategory, Syscall};

/// A worker sends a handful of messages in its life plus one `Stats` a
/// second; one sending more than this in a second is treated as
/// compromised (a flood would keep the broker from everything else).
pub(crate) const MAX_MESSAGES_PER_SEC: u32 = 64;

/// Messages counted per one-second window.
pub(crate) struct MessageWindow {
    start: Instant,
    count: u32,
}

impl MessageWindow {
    pub(crate) fn new(now: Instant) -> MessageWindow {
        MessageWindow {
            start: now,
            count: 0,
        }
    }

    /// Counts one more message at `now`; true past
    /// [`MAX_MESSAGES_PER_SEC`] within its second.
    pub(crate) fn flooding(&mut self, now: Instant) -> bool {
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            *self = MessageWindow::new(now);
        }
        self.count += 1;
        self.count > MAX_MESSAGES_PER_SEC
    }
}

/// The last thing a worker said about how its session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LastWord {
    Finished(ExitReason),
    /// From its SIGSYS handler, before it died.
    SeccompViolation(Syscall),
}

impl Workers {
    /// Reads every queued message from worker `id`.
    pub(crate) fn drain(&mut self, id: WorkerId) {
        let Some(worker) = self.by_id.get_mut(&id) else {
            return;
        };
        let pid = worker.pid;
        while let Some(channel) = worker.channel.as_ref() {
            match channel.try_recv::<WorkerMsg>() {
                Ok(Some(_)) if worker.messages.flooding(Instant::now()) => {
                    warn!(
                        worker = pid,
                        limit = MAX_MESSAGES_PER_SEC,
                        "control channel flooded; killing worker"
                    );
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    worker.channel = None;
                    worker.killed_for = Some(Kill {
                        category: ExitCategory::ProtocolError,
                        text: "control channel flooded (a compromised worker?); killed",
                    });
                }
                Ok(Some((msg, _fds))) => {
                    if matches!(msg, WorkerMsg::Ready { .. }) && !worker.reported_ready {
                        worker.reported_ready = true;
                        let took = worker.spawned_at.elapsed();
                        self.start_times.push((worker.listener.clone(), took));
                        if let Some(args) = worker.checks.take() {
                            self.checked.push((worker.listener.clone(), args));
                        }
                    }
                    if worker.record(msg) {
                        self.ready
                            .entry(worker.listener.clone())
                            .or_default()
                            .push_back(id);
                    }
                }
                Ok(None) => break,
                Err(vtest_control::ControlError::Disconnected) => worker.channel = None,
                Err(e) => {
                    // A worker that speaks garbage is treated as compromised.
                    warn!(worker = pid, error = %e, "bad control message; killing worker");
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    worker.channel = None;
                }
            }
        }
    }

    /// Kills serving workers whose GPU work has not progressed for `timeout`.
    pub(crate) fn watchdog(&mut self, timeout: Duration, now: Instant) {
        for w in self.by_id.values_mut() {
            let Role::Serving { client, .. } = &w.role else {
                continue;
            };
            if w.killed_for.is_some() || !hung(&w.stats, w.progress_at, now, timeout) {
                continue;
            }
            warn!(
                worker = w.pid,
                client = client.client_id,
                peer_pid = client.pid,
                uid = client.uid,
                submitted = w.stats.fences_submitted,
                completed = w.stats.fences_completed,
                "GPU work made no progress for {} s; killing worker",
                timeout.as_secs()
            );
            w.killed_for = Some(Kill {
                category: ExitCategory::Hang,
                text: "killed by the hang watchdog",
            });
            let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
        }
    }
}

impl Worker {
    /// Records a message; true when a pool worker just became ready.
    fn record(&mut self, msg: WorkerMsg) -> bool {
        let pid = self.pid;
        match msg {
            WorkerMsg::Ready { .. } => {
                if let Role::Pool { ready } = &mut self.role {
                    if !*ready {
                        *ready = true;
                        return true;
                    }
                }
            }
            WorkerMsg::Attached { client_id } => {
                debug!(worker = pid, client = client_id, "attached")
            }
            WorkerMsg::Stats(stats) => self.update(stats, Instant::now()),
            WorkerMsg::Finished { stats, reason } => {
                self.update(stats, Instant::now());
                self.last = Some(LastWord::Finished(reason.printable()));
            }
            WorkerMsg::SeccompViolation { syscall } => {
                let name = syscalls::Sysno::new(syscall as usize).map_or("unknown", |s| s.name());
                let (client_id, peer_pid, uid, gid) = match &self.role {
                    Role::Serving { client: c, .. } => (c.client_id, c.pid, c.uid, c.gid),
                    Role::Pool { .. } => (0, 0, 0, 0),
                };
                warn!(
                    worker = pid,
                    client = client_id,
                    peer_pid,
                    uid,
                    gid,
                    syscall,
                    "seccomp violation: {name}"
                );
                self.last = Some(LastWord::SeccompViolation(Syscall {
                    number: syscall,
                    name: name.to_string(),
                }));
            }
        }
        false
    }

    fn update(&mut self, stats: SessionStats, now: Instant) {
        if progressed(&self.stats, &stats) {
            self.progress_at = now;
        }
        self.stats = stats;
    }
}

/// Whether `new` stats, after `old`, show the GPU work moving: a fence
/// completed, or none pending.
pub(crate) fn progressed(old: &SessionStats, new: &SessionStats) -> bool {
    new.fences_completed != old.fences_completed || new.fences_completed >= new.fences_submitted
}

/// Whether work is pending and has not progressed since `progress_at` for
/// `timeout`.
pub(crate) fn hung(
    stats: &SessionStats,
    progress_at: Instant,
    now: Instant,
    timeout: Duration,
) -> bool {
    let pending = stats.fences_submitted > stats.fences_completed;
    pending && now.duration_since(progress_at) >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fences(submitted: u64, completed: u64) -> SessionStats {
        SessionStats {
            fences_submitted: submitted,
            fences_completed: completed,
            ..SessionStats::default()
        }
    }

    #[test]
    fn more_than_64_messages_in_a_second_is_a_flood() {
        let t0 = Instant::now();
        let mut w = MessageWindow::new(t0);
        for i in 0..MAX_MESSAGES_PER_SEC {
            assert!(!w.flooding(t0 + Duration::from_millis(u64::from(i))), "{i}");
        }
        assert!(w.flooding(t0 + Duration::from_millis(900)));
        // A new second, a new count.
        let t1 = t0 + Duration::from_millis(1000);
        for _ in 0..MAX_MESSAGES_PER_SEC {
            assert!(!w.flooding(t1));
        }
        assert!(w.flooding(t1 + Duration::from_millis(999)));
        // One Stats a second for a long time is no flood.
        let mut w = MessageWindow::new(t0);
        assert!((0..1000).all(|s| !w.flooding(t0 + Duration::from_secs(s))));
    }

    #[test]
    fn progress_is_a_completed_fence_or_nothing_pending() {
        assert!(progressed(&fences(5, 3), &fences(6, 4)));
        assert!(!progressed(&fences(5, 3), &fences(6, 3)));
        assert!(progressed(&fences(5, 3), &fences(5, 5)));
        assert!(progressed(&fences(0, 0), &fences(0, 0)));
    }

    #[test]
    fn hung_means_pending_work_without_progress_for_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(2);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!hung(&fences(2, 1), t0, at(1999), timeout));
        assert!(hung(&fences(2, 1), t0, at(2000), timeout));
        assert!(
            !hung(&fences(2, 2), t0, at(60_000), timeout),
            "nothing pending"
        );
    }

    #[test]
    fn a_workers_last_word_is_the_last_message() {
        let mut w = Worker::for_test(Role::Pool { ready: false });
        assert!(w.record(WorkerMsg::Ready { pid: 1 }));
        assert!(!w.record(WorkerMsg::Ready { pid: 1 }), "ready once");
        w.record(WorkerMsg::Finished {
            stats: fences(1, 1),
            reason: ExitReason::ProtocolError {
                reason: "bad\nline".into(),
            },
        });
        assert_eq!(
            w.last,
            Some(LastWord::Finished(ExitReason::ProtocolError {
                reason: "bad\\nline".into()
            })),
            "reasons are made printable"
        );
        assert_eq!(w.stats, fences(1, 1));
        w.record(WorkerMsg::SeccompViolation { syscall: 41 });
        let Some(LastWord::SeccompViolation(s)) = &w.last else {
            panic!("{:?}", w.last);
        };
        assert_eq!(s.number, 41);
        assert!(!s.name.is_empty());
    }

    #[test]
    fn stats_without_progress_keep_the_hang_clock() {
        let mut w = Worker::for_test(Role::Pool { ready: false });
        let t0 = w.progress_at;
        let later = t0 + Duration::from_secs(5);
        w.update(fences(3, 1), later);
        assert_eq!(w.progress_at, later, "a fence completed");
        w.update(fences(4, 1), later + Duration::from_secs(1));
        assert_eq!(w.progress_at, later, "no fence completed");
        w.update(fences(4, 2), later + Duration::from_secs(2));
        assert_eq!(w.progress_at, later + Duration::from_secs(2));
    }
}
