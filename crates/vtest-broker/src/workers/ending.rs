//! How a worker ended: from its wait status, the broker's own reason for
//! ending it and the last thing it said, one [`ExitCategory`] and a text,
//! logged with its client's identity and kept for `vtestd status`.

use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use tracing::{debug, info, warn};

use super::control::LastWord;
use super::{Role, Workers};
use crate::status::{ExitCategory, ExitRecord};

/// Why the broker ended a worker itself: counted and logged as this, not
/// as the signal it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kill {
    pub(crate) category: ExitCategory,
    pub(crate) text: &'static str,
}

/// A reaped worker, for counting.
pub(crate) struct Ended {
    pub(crate) listener: String,
    pub(crate) became_ready: bool,
    /// The client's end (`None`: a pool worker, which had none).
    pub(crate) record: Option<ExitRecord>,
    pub(crate) category: ExitCategory,
    /// Why, in words (what the exit record or log line says).
    pub(crate) text: String,
    pub(crate) cgroup: Option<PathBuf>,
    pub(crate) ended_at: Instant,
}

/// The category and text of a worker's end: the broker's reason if it
/// killed the worker, else a seccomp kill (reported, or SIGSYS), else what
/// the worker reported before exiting, else how it died.
pub(crate) fn ending(
    killed: Option<&Kill>,
    last: Option<&LastWord>,
    status: WaitStatus,
) -> (ExitCategory, String) {
    if let Some(k) = killed {
        return (k.category.clone(), k.text.into());
    }
    let reported = match last {
        Some(LastWord::SeccompViolation(s)) => Some(s),
        _ => None,
    };
    if reported.is_some() || matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)) {
        let text = match last {
            // As it always read: the report travelled as a protocol error.
            Some(LastWord::SeccompViolation(s)) => {
                format!("protocol error: seccomp violation: {s}; worker killed by SIGSYS")
            }
            Some(LastWord::Finished(r)) => format!("{r}; worker killed by SIGSYS"),
            None => "worker killed by SIGSYS".into(),
        };
        let syscall = reported.cloned();
        return (ExitCategory::SeccompViolation { syscall }, text);
    }
    match (status, last) {
        (WaitStatus::Exited(..), Some(LastWord::Finished(reason))) => {
            (ExitCategory::of_reason(reason), reason.to_string())
        }
        (WaitStatus::Exited(_, code), _) => (
            ExitCategory::Unknown,
            format!("worker exited with code {code} without a reason"),
        ),
        (WaitStatus::Signaled(_, signal, _), _) => {
            (ExitCategory::Signal, format!("worker killed by {signal}"))
        }
        (other, _) => (ExitCategory::Unknown, format!("worker ended: {other:?}")),
    }
}

impl Workers {
    /// A worker process ended: its last messages and log lines are read,
    /// and its end logged with its client's identity.
    pub(crate) fn reaped(&mut self, status: WaitStatus) -> Option<Ended> {
        let pid = status.pid()?.as_raw() as u32;
        let id = *self.by_pid.get(&pid)?;
        self.drain(id);
        // Its last lines are in the pipe: before the line saying it ended.
        if let Some(log) = self.by_id.get_mut(&id).and_then(|w| w.log.as_mut()) {
            log.unthrottle(Instant::now());
        }
        self.relay_log(id);
        if let Some(mut log) = self.by_id.get_mut(&id).and_then(|w| w.log.take()) {
            log.finish(pid);
        }
        self.by_pid.remove(&pid);
        let w = self.by_id.remove(&id)?;
        let (category, text) = ending(w.killed_for.as_ref(), w.last.as_ref(), status);
        let ended_at = Instant::now();
        let became_ready = matches!(w.role, Role::Pool { ready: true });
        let record = match &w.role {
            Role::Pool { .. } => {
                if category.expected() {
                    debug!(worker = pid, listener = %w.listener, "pool worker ended: {text}");
                } else {
                    warn!(worker = pid, listener = %w.listener, "pool worker ended: {text}");
                }
                None
            }
            Role::Serving { client: c, since } => {
                let s = &w.stats;
                let secs = since.elapsed().as_secs_f64();
                if category.expected() {
                    info!(worker = pid, client = c.client_id, peer_pid = c.pid, uid = c.uid,
                          gid = c.gid, listener = %c.listener, secs, commands = s.commands,
                          resources = s.resources_created, "worker finished: {text}");
                } else {
                    warn!(worker = pid, client = c.client_id, peer_pid = c.pid, uid = c.uid,
                          gid = c.gid, listener = %c.listener, secs, commands = s.commands,
                          "client ended: {text}");
                }
                Some(ExitRecord {
                    client_id: c.client_id,
                    listener: c.listener.clone(),
                    worker_pid: pid,
                    peer_pid: c.pid,
                    uid: c.uid,
                    gid: c.gid,
                    category: category.clone(),
                    reason: text.clone(),
                    secs_ago: 0.0,
                    stats: w.stats.clone(),
                })
            }
        };
        Some(Ended {
            listener: w.listener,
            became_ready,
            record,
            category,
            text,
            cgroup: w.cgroup,
            ended_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;
    use vtest_control::ExitReason;

    use super::*;
    use crate::status::Syscall;

    const PID: Pid = Pid::from_raw(4242);

    fn exited(code: i32) -> WaitStatus {
        WaitStatus::Exited(PID, code)
    }

    fn killed_by(signal: Signal) -> WaitStatus {
        WaitStatus::Signaled(PID, signal, false)
    }

    fn finished(reason: ExitReason) -> LastWord {
        LastWord::Finished(reason)
    }

    fn socket() -> Syscall {
        Syscall {
            number: 41,
            name: "socket".into(),
        }
    }

    #[test]
    fn a_reported_end_is_the_workers_reason() {
        let (c, text) = ending(
            None,
            Some(&finished(ExitReason::ClientDisconnected)),
            exited(0),
        );
        assert_eq!(
            (c, text.as_str()),
            (ExitCategory::Clean, "client disconnected")
        );
        let limit = finished(ExitReason::LimitExceeded {
            limit: "max_resources".into(),
            value: 5,
            max: 4,
        });
        let (c, text) = ending(None, Some(&limit), exited(3));
        assert_eq!(c, ExitCategory::LimitExceeded);
        assert_eq!(text, "limit exceeded: max_resources 5 > 4");
    }

    #[test]
    fn an_exit_without_a_report_is_unknown() {
        let (c, text) = ending(None, None, exited(7));
        assert_eq!(c, ExitCategory::Unknown);
        assert_eq!(text, "worker exited with code 7 without a reason");
        let (c, text) = ending(None, None, WaitStatus::StillAlive);
        assert_eq!(
            (c, text.as_str()),
            (ExitCategory::Unknown, "worker ended: StillAlive")
        );
    }

    #[test]
    fn a_signal_from_elsewhere_wins_over_a_report() {
        let last = finished(ExitReason::ClientDisconnected);
        let (c, text) = ending(None, Some(&last), killed_by(Signal::SIGSEGV));
        assert_eq!(c, ExitCategory::Signal);
        assert_eq!(text, "worker killed by SIGSEGV");
    }

    #[test]
    fn seccomp_kills_carry_the_reported_syscall() {
        let reported = LastWord::SeccompViolation(socket());
        let (c, text) = ending(None, Some(&reported), killed_by(Signal::SIGSYS));
        assert_eq!(
            c,
            ExitCategory::SeccompViolation {
                syscall: Some(socket())
            }
        );
        assert_eq!(
            text,
            "protocol error: seccomp violation: socket (41); worker killed by SIGSYS"
        );
        // Reported, whatever else ended the process.
        let (c, _) = ending(None, Some(&reported), exited(1));
        assert_eq!(c.name(), "seccomp_violation");
        // SIGSYS without a report.
        let (c, text) = ending(None, None, killed_by(Signal::SIGSYS));
        assert_eq!(c, ExitCategory::SeccompViolation { syscall: None });
        assert_eq!(text, "worker killed by SIGSYS");
        let io = finished(ExitReason::IoError { reason: "x".into() });
        let (c, text) = ending(None, Some(&io), killed_by(Signal::SIGSYS));
        assert_eq!(c, ExitCategory::SeccompViolation { syscall: None });
        assert_eq!(text, "I/O error: x; worker killed by SIGSYS");
    }

    #[test]
    fn a_reason_that_only_reads_like_seccomp_is_what_it_says() {
        let forged = finished(ExitReason::ProtocolError {
            reason: "seccomp violation: socket (41)".into(),
        });
        let (c, _) = ending(None, Some(&forged), exited(2));
        assert_eq!(c, ExitCategory::ProtocolError);
    }

    #[test]
    fn the_brokers_own_reason_comes_first() {
        let hang = Kill {
            category: ExitCategory::Hang,
            text: "killed by the hang watchdog",
        };
        let reported = LastWord::SeccompViolation(socket());
        let (c, text) = ending(Some(&hang), Some(&reported), killed_by(Signal::SIGSYS));
        assert_eq!(
            (c, text.as_str()),
            (ExitCategory::Hang, "killed by the hang watchdog")
        );
    }

    #[test]
    fn a_reaped_client_worker_leaves_an_exit_record() {
        use vtest_control::ClientInfo;

        use crate::workers::{Worker, WorkerId};

        let mut t = Workers::default();
        let client = ClientInfo {
            client_id: 5,
            pid: 6,
            uid: 1000,
            gid: 1001,
            listener: "a".into(),
        };
        let since = Instant::now();
        let mut w = Worker::new(4242, "a", None, None, Role::Serving { client, since });
        w.last = Some(LastWord::Finished(ExitReason::ClientDisconnected));
        t.by_id.insert(WorkerId(1), w);
        t.by_pid.insert(4242, WorkerId(1));
        let pool = Worker::new(4243, "a", None, None, Role::Pool { ready: true });
        t.by_id.insert(WorkerId(2), pool);
        t.by_pid.insert(4243, WorkerId(2));

        assert!(t.reaped(WaitStatus::Exited(Pid::from_raw(99), 0)).is_none());
        let ended = t.reaped(exited(0)).unwrap();
        assert_eq!(
            (ended.category.clone(), ended.text.as_str()),
            (ExitCategory::Clean, "client disconnected")
        );
        let r = ended.record.unwrap();
        assert_eq!(
            (r.client_id, r.worker_pid, r.peer_pid, r.uid, r.gid),
            (5, 4242, 6, 1000, 1001)
        );
        assert_eq!(
            (r.category, r.listener.as_str()),
            (ExitCategory::Clean, "a")
        );
        assert!(t.reaped(exited(0)).is_none(), "reaped once");

        let ended = t.reaped(WaitStatus::Signaled(
            Pid::from_raw(4243),
            Signal::SIGKILL,
            false,
        ));
        let ended = ended.unwrap();
        assert!(ended.record.is_none() && ended.became_ready);
        assert_eq!(ended.category, ExitCategory::Signal);
        assert_eq!(t.len(), 0);
    }
}
