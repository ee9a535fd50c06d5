//! The broker's view of its workers.

use std::collections::HashMap;
use std::time::Instant;

use nix::sys::wait::WaitStatus;
use tracing::{info, warn};
use vtest_control::{Channel, ClientInfo, ExitReason, SessionStats, WorkerMsg};

/// One worker process and what it has told us.
pub(crate) struct Worker {
    pub(crate) channel: Option<Channel>,
    pub(crate) client: ClientInfo,
    started: Instant,
    stats: SessionStats,
    reason: Option<ExitReason>,
}

/// Every live worker, by pid.
#[derive(Default)]
pub(crate) struct Workers {
    by_pid: HashMap<u32, Worker>,
    pub(crate) total_started: u64,
}

impl Workers {
    pub(crate) fn insert(&mut self, pid: u32, channel: Channel, client: ClientInfo) {
        self.total_started += 1;
        self.by_pid.insert(
            pid,
            Worker {
                channel: Some(channel),
                client,
                started: Instant::now(),
                stats: SessionStats::default(),
                reason: None,
            },
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.by_pid.keys().copied().collect()
    }

    /// (pid, channel) of workers whose channel is still open.
    pub(crate) fn channels(&self) -> impl Iterator<Item = (u32, &Channel)> {
        self.by_pid
            .iter()
            .filter_map(|(pid, w)| w.channel.as_ref().map(|c| (*pid, c)))
    }

    /// Reads every queued message from worker `pid`.
    pub(crate) fn drain(&mut self, pid: u32) {
        let Some(worker) = self.by_pid.get_mut(&pid) else {
            return;
        };
        while let Some(channel) = worker.channel.as_ref() {
            match channel.try_recv::<WorkerMsg>() {
                Ok(Some((msg, _fds))) => worker.record(pid, msg),
                Ok(None) => break,
                Err(vtest_control::ControlError::Disconnected) => worker.channel = None,
                Err(e) => {
                    // A worker that speaks garbage is treated as compromised.
                    warn!(worker = pid, error = %e, "bad control message; killing worker");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    worker.channel = None;
                }
            }
        }
    }

    /// A worker process ended: log why, with its client's identity.
    pub(crate) fn reaped(&mut self, status: WaitStatus) {
        let Some(pid) = status.pid() else { return };
        let pid_u = pid.as_raw() as u32;
        self.drain(pid_u);
        let Some(w) = self.by_pid.remove(&pid_u) else {
            return;
        };
        let c = &w.client;
        let secs = w.started.elapsed().as_secs_f64();
        let s = &w.stats;
        match (status, &w.reason) {
            (WaitStatus::Exited(_, code), Some(reason)) => {
                let fields = (c.client_id, c.pid, c.uid, c.gid);
                match reason {
                    ExitReason::ClientDisconnected | ExitReason::Shutdown => info!(
                        worker = pid_u,
                        client = fields.0,
                        peer_pid = fields.1,
                        uid = fields.2,
                        gid = fields.3,
                        code,
                        secs,
                        commands = s.commands,
                        resources = s.resources_created,
                        "worker finished: {reason}"
                    ),
                    _ => warn!(
                        worker = pid_u,
                        client = fields.0,
                        peer_pid = fields.1,
                        uid = fields.2,
                        gid = fields.3,
                        code,
                        secs,
                        commands = s.commands,
                        "client ended: {reason}"
                    ),
                }
            }
            (WaitStatus::Exited(_, code), None) => warn!(
                worker = pid_u,
                client = c.client_id,
                peer_pid = c.pid,
                uid = c.uid,
                code,
                "worker exited without reporting a reason"
            ),
            (WaitStatus::Signaled(_, signal, core), _) => warn!(
                worker = pid_u, client = c.client_id, peer_pid = c.pid, uid = c.uid,
                signal = %signal, core, secs, commands = s.commands,
                "worker killed by {signal}"
            ),
            (other, _) => warn!(worker = pid_u, status = ?other, "worker ended"),
        }
    }
}

impl Worker {
    fn record(&mut self, pid: u32, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Ready { .. } => {}
            WorkerMsg::Attached { client_id } => {
                tracing::debug!(worker = pid, client = client_id, "worker attached");
            }
            WorkerMsg::Stats(stats) => self.stats = stats,
            WorkerMsg::Finished { stats, reason } => {
                self.stats = stats;
                self.reason = Some(reason);
            }
            WorkerMsg::SeccompViolation { syscall } => {
                let name = vtest_sandbox::seccomp::syscall_name(syscall).unwrap_or("unknown");
                let c = &self.client;
                warn!(
                    worker = pid,
                    client = c.client_id,
                    peer_pid = c.pid,
                    uid = c.uid,
                    gid = c.gid,
                    syscall,
                    "seccomp violation: {name}"
                );
                self.reason = Some(ExitReason::ProtocolError {
                    reason: format!("seccomp violation: {name} ({syscall})"),
                });
            }
        }
    }
}
