//! The broker's view of its workers: pool workers waiting for a client and
//! workers serving one.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tracing::{debug, info, warn};
use vtest_control::{Channel, ClientInfo, ExitReason, SessionStats, WorkerMsg};

use crate::status::ExitRecord;

/// What a worker is doing.
pub(crate) enum Role {
    /// Started for a listener's pool; not yet ready, or ready and idle.
    Pool { ready: bool },
    /// Serving a client.
    Serving { client: ClientInfo, since: Instant },
}

pub(crate) struct Worker {
    pub(crate) listener: String,
    pub(crate) channel: Option<Channel>,
    pub(crate) role: Role,
    pub(crate) stats: SessionStats,
    reason: Option<ExitReason>,
    /// Last time the GPU work made progress (or there was none pending).
    progress_at: Instant,
    /// Why the broker killed it: (category, text).
    killed_for: Option<(&'static str, &'static str)>,
    pub(crate) cgroup: Option<std::path::PathBuf>,
    /// Control messages in the current one-second window.
    window: (Instant, u32),
    /// The read end of the worker's stderr; `None` after EOF.
    log: Option<WorkerLog>,
}

/// A worker's stderr, relayed line by line into the broker's log.
struct WorkerLog {
    fd: OwnedFd,
    /// The start of a line not yet complete.
    partial: Vec<u8>,
    /// Bytes relayed in the current one-second window.
    window: (Instant, usize),
}

/// Bytes of a worker's stderr relayed per second; past it the pipe is left
/// alone until the next second (the worker blocks on its own writes).
const MAX_LOG_BYTES_PER_SEC: usize = 64 << 10;
/// Longer lines are cut into pieces of this size.
const MAX_LOG_LINE: usize = 2048;

/// A worker sends a handful of messages in its life plus one `Stats` a
/// second; one sending more than this in a second is treated as
/// compromised (a flood would keep the broker from everything else).
const MAX_MESSAGES_PER_SEC: u32 = 64;

/// How a worker ended, for counting.
pub(crate) struct Ended {
    pub(crate) listener: String,
    pub(crate) became_ready: bool,
    pub(crate) record: Option<ExitRecord>,
    pub(crate) category: &'static str,
    /// Why, in words (what the exit record or log line says).
    pub(crate) text: String,
    pub(crate) cgroup: Option<std::path::PathBuf>,
    pub(crate) ended_at: Instant,
}

#[derive(Default)]
pub(crate) struct Workers {
    by_pid: HashMap<u32, Worker>,
    /// Pool workers that reported Ready, per listener, oldest first.
    ready: HashMap<String, VecDeque<u32>>,
}

impl Workers {
    pub(crate) fn insert(
        &mut self,
        pid: u32,
        listener: &str,
        channel: Channel,
        log: OwnedFd,
        role: Role,
    ) {
        self.by_pid.insert(
            pid,
            Worker {
                listener: listener.to_string(),
                channel: Some(channel),
                role,
                stats: SessionStats::default(),
                reason: None,
                progress_at: Instant::now(),
                killed_for: None,
                cgroup: None,
                window: (Instant::now(), 0),
                log: Some(WorkerLog {
                    fd: log,
                    partial: Vec::new(),
                    window: (Instant::now(), 0),
                }),
            },
        );
    }

    /// Marks worker `pid` as serving `client` from now on.
    pub(crate) fn attach(&mut self, pid: u32, client: ClientInfo, since: Instant) {
        if let Some(w) = self.by_pid.get_mut(&pid) {
            w.role = Role::Serving { client, since };
            // The hang clock starts with the client, not at spawn.
            w.progress_at = Instant::now();
        }
    }

    pub(crate) fn get_mut(&mut self, pid: u32) -> Option<&mut Worker> {
        self.by_pid.get_mut(&pid)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Worker)> {
        self.by_pid.iter().map(|(p, w)| (*p, w))
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

    /// Pool workers of `listener`: (ready, starting).
    pub(crate) fn pool_counts(&self, listener: &str) -> (u32, u32) {
        let mut ready = 0;
        let mut starting = 0;
        for w in self.by_pid.values().filter(|w| w.listener == listener) {
            match w.role {
                Role::Pool { ready: true } => ready += 1,
                Role::Pool { ready: false } => starting += 1,
                Role::Serving { .. } => {}
            }
        }
        (ready, starting)
    }

    /// Serving workers of `listener`.
    pub(crate) fn serving_count(&self, listener: &str) -> u32 {
        self.by_pid
            .values()
            .filter(|w| w.listener == listener && matches!(w.role, Role::Serving { .. }))
            .count() as u32
    }

    /// Clients being served, in all, and of `uid`.
    pub(crate) fn serving_counts(&self, uid: u32) -> (u32, u32) {
        let mut all = 0;
        let mut of_uid = 0;
        for w in self.by_pid.values() {
            if let Role::Serving { client, .. } = &w.role {
                all += 1;
                if client.uid == uid {
                    of_uid += 1;
                }
            }
        }
        (all, of_uid)
    }

    /// Takes the oldest ready pool worker of `listener`.
    pub(crate) fn take_ready(&mut self, listener: &str) -> Option<u32> {
        let queue = self.ready.get_mut(listener)?;
        while let Some(pid) = queue.pop_front() {
            if let Some(w) = self.by_pid.get(&pid) {
                // Not one the broker is ending (a reload's old pool, the
                // start-up probe): it would take the client down with it.
                let usable = w.channel.is_some() && w.killed_for.is_none();
                if usable && matches!(w.role, Role::Pool { ready: true }) {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// (pid, stderr) of workers whose log pipe is open and within its budget.
    pub(crate) fn logs(&self, now: Instant) -> impl Iterator<Item = (u32, BorrowedFd<'_>)> {
        self.by_pid.iter().filter_map(move |(pid, w)| {
            let log = w.log.as_ref()?;
            let (start, bytes) = log.window;
            let over = bytes >= MAX_LOG_BYTES_PER_SEC
                && now.duration_since(start) < Duration::from_secs(1);
            (!over).then(|| (*pid, log.fd.as_fd()))
        })
    }

    /// Relays what worker `pid` wrote to its stderr: each complete line goes
    /// into the broker's log with `worker=PID`, control characters escaped.
    pub(crate) fn relay_log(&mut self, pid: u32) {
        let Some(w) = self.by_pid.get_mut(&pid) else {
            return;
        };
        let Some(log) = w.log.as_mut() else { return };
        let mut buf = [0u8; 16 << 10];
        loop {
            if log.window.0.elapsed() >= Duration::from_secs(1) {
                log.window = (Instant::now(), 0);
            }
            if log.window.1 >= MAX_LOG_BYTES_PER_SEC {
                return;
            }
            match nix::unistd::read(&log.fd, &mut buf) {
                Ok(0) => {
                    let rest = std::mem::take(&mut log.partial);
                    relay_line(pid, &rest);
                    w.log = None;
                    return;
                }
                Ok(n) => {
                    log.window.1 += n;
                    log.partial.extend_from_slice(&buf[..n]);
                    while let Some(end) = log.partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = log.partial.drain(..=end).collect();
                        relay_line(pid, &line);
                    }
                    while log.partial.len() >= MAX_LOG_LINE {
                        let piece: Vec<u8> = log.partial.drain(..MAX_LOG_LINE).collect();
                        relay_line(pid, &piece);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return, // EAGAIN: all read for now.
            }
        }
    }

    /// Ends worker `pid` with `signal` on the broker's behalf; its end is
    /// then counted and logged as `category` with `text`, not as a signal.
    pub(crate) fn end(
        &mut self,
        pid: u32,
        signal: Signal,
        category: &'static str,
        text: &'static str,
    ) {
        if let Some(w) = self.by_pid.get_mut(&pid) {
            w.killed_for.get_or_insert((category, text));
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Ends the pool workers of `listener` (of every listener: `None`) with
    /// SIGTERM, counted as a shutdown.
    pub(crate) fn end_pool(&mut self, listener: Option<&str>, text: &'static str) {
        let pool: Vec<u32> = self
            .by_pid
            .iter()
            .filter(|(_, w)| matches!(w.role, Role::Pool { .. }))
            .filter(|(_, w)| listener.is_none_or(|l| w.listener == l))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pool {
            self.end(pid, Signal::SIGTERM, "shutdown", text);
        }
    }

    /// Whether pool worker `pid` has reported Ready.
    pub(crate) fn is_ready(&self, pid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .is_some_and(|w| matches!(w.role, Role::Pool { ready: true }))
    }

    /// Pool workers are being stopped: none may be handed a client.
    pub(crate) fn forget_ready(&mut self) {
        self.ready.clear();
    }

    /// Reads every queued message from worker `pid`.
    pub(crate) fn drain(&mut self, pid: u32) {
        let Some(worker) = self.by_pid.get_mut(&pid) else {
            return;
        };
        while let Some(channel) = worker.channel.as_ref() {
            match channel.try_recv::<WorkerMsg>() {
                Ok(Some(_)) if worker.flooding() => {
                    warn!(
                        worker = pid,
                        limit = MAX_MESSAGES_PER_SEC,
                        "control channel flooded; killing worker"
                    );
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    worker.channel = None;
                    worker.killed_for = Some((
                        "protocol_error",
                        "control channel flooded (a compromised worker?); killed",
                    ));
                }
                Ok(Some((msg, _fds))) => {
                    if worker.record(pid, msg) {
                        self.ready
                            .entry(worker.listener.clone())
                            .or_default()
                            .push_back(pid);
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
    pub(crate) fn watchdog(&mut self, timeout: Duration) {
        for (pid, w) in self.by_pid.iter_mut() {
            let Role::Serving { client, .. } = &w.role else {
                continue;
            };
            let pending = w.stats.fences_submitted > w.stats.fences_completed;
            if w.killed_for.is_some() || !pending || w.progress_at.elapsed() < timeout {
                continue;
            }
            warn!(
                worker = pid,
                client = client.client_id,
                peer_pid = client.pid,
                uid = client.uid,
                submitted = w.stats.fences_submitted,
                completed = w.stats.fences_completed,
                "GPU work made no progress for {} s; killing worker",
                timeout.as_secs()
            );
            w.killed_for = Some(("hang", "killed by the hang watchdog"));
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }

    /// A worker process ended: log why, with its client's identity.
    pub(crate) fn reaped(&mut self, status: WaitStatus) -> Option<Ended> {
        let pid = status.pid()?;
        let pid_u = pid.as_raw() as u32;
        self.drain(pid_u);
        // Its last lines are in the pipe: before the line saying it ended.
        if let Some(log) = self.by_pid.get_mut(&pid_u).and_then(|w| w.log.as_mut()) {
            log.window = (Instant::now(), 0);
        }
        self.relay_log(pid_u);
        if let Some(rest) = self
            .by_pid
            .get_mut(&pid_u)
            .and_then(|w| w.log.take())
            .map(|l| l.partial)
        {
            relay_line(pid_u, &rest);
        }
        let w = self.by_pid.remove(&pid_u)?;
        let (category, text) = w.ending(status);
        let ended_at = Instant::now();
        let became_ready = matches!(w.role, Role::Pool { ready: true });
        let record = match &w.role {
            Role::Pool { .. } => {
                if category == "shutdown" || category == "clean" {
                    debug!(worker = pid_u, listener = %w.listener, "pool worker ended: {text}");
                } else {
                    warn!(worker = pid_u, listener = %w.listener, "pool worker ended: {text}");
                }
                None
            }
            Role::Serving { client: c, since } => {
                let s = &w.stats;
                let secs = since.elapsed().as_secs_f64();
                if category == "clean" || category == "shutdown" {
                    info!(worker = pid_u, client = c.client_id, peer_pid = c.pid, uid = c.uid,
                          gid = c.gid, listener = %c.listener, secs, commands = s.commands,
                          resources = s.resources_created, "worker finished: {text}");
                } else {
                    warn!(worker = pid_u, client = c.client_id, peer_pid = c.pid, uid = c.uid,
                          gid = c.gid, listener = %c.listener, secs, commands = s.commands,
                          "client ended: {text}");
                }
                Some(ExitRecord {
                    client_id: c.client_id,
                    listener: c.listener.clone(),
                    worker_pid: pid_u,
                    peer_pid: c.pid,
                    uid: c.uid,
                    gid: c.gid,
                    category: category.to_string(),
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

impl Worker {
    /// Counts one more message; true past [`MAX_MESSAGES_PER_SEC`].
    fn flooding(&mut self) -> bool {
        let (start, n) = &mut self.window;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *n = 0;
        }
        *n += 1;
        *n > MAX_MESSAGES_PER_SEC
    }

    /// Records a message; true when a pool worker just became ready.
    fn record(&mut self, pid: u32, msg: WorkerMsg) -> bool {
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
            WorkerMsg::Stats(stats) => self.update(stats),
            WorkerMsg::Finished { stats, reason } => {
                self.update(stats);
                self.reason = Some(reason.printable());
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
                self.reason = Some(ExitReason::ProtocolError {
                    reason: format!("seccomp violation: {name} ({syscall})"),
                });
            }
        }
        false
    }

    fn update(&mut self, stats: SessionStats) {
        let progressed = stats.fences_completed != self.stats.fences_completed
            || stats.fences_completed >= stats.fences_submitted;
        if progressed {
            self.progress_at = Instant::now();
        }
        self.stats = stats;
    }

    /// The category and text of how this worker ended.
    fn ending(&self, status: WaitStatus) -> (&'static str, String) {
        if let Some((category, text)) = self.killed_for {
            return (category, text.into());
        }
        let reported = matches!(&self.reason, Some(ExitReason::ProtocolError { reason })
            if reason.starts_with("seccomp violation"));
        let by_sigsys = matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _));
        if reported || by_sigsys {
            let text = match &self.reason {
                Some(r) => format!("{r}; worker killed by SIGSYS"),
                None => "worker killed by SIGSYS".into(),
            };
            return ("seccomp_violation", text);
        }
        match (status, &self.reason) {
            (WaitStatus::Exited(..), Some(reason)) => (category(reason), reason.to_string()),
            (WaitStatus::Exited(_, code), None) => (
                "unknown",
                format!("worker exited with code {code} without a reason"),
            ),
            (WaitStatus::Signaled(_, signal, _), _) => {
                ("signal", format!("worker killed by {signal}"))
            }
            (other, _) => ("unknown", format!("worker ended: {other:?}")),
        }
    }
}

fn category(reason: &ExitReason) -> &'static str {
    match reason {
        ExitReason::ClientDisconnected => "clean",
        ExitReason::ProtocolError { .. } => "protocol_error",
        ExitReason::RendererError { .. } => "renderer_error",
        ExitReason::LimitExceeded { .. } => "limit_exceeded",
        ExitReason::IoError { .. } => "io_error",
        ExitReason::WorkerExhausted { .. } => "worker_exhausted",
        ExitReason::Shutdown => "shutdown",
        ExitReason::InitFailed { .. } => "init_failed",
    }
}

/// One line of a worker's stderr into the broker's log.
fn relay_line(pid: u32, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if !text.is_empty() {
        info!(worker = pid, "| {}", vtest_control::printable(text));
    }
}
