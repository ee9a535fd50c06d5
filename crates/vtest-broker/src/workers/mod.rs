//! The broker's table of its workers: pool workers waiting for a client and
//! workers serving one, each under a [`WorkerId`] that is never reused.
//! What they say is in [`control`], their stderr in [`log_relay`], how they
//! ended in [`ending`].

mod control;
mod ending;
mod log_relay;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vtest_control::{Channel, ClientInfo, SessionStats};

pub(crate) use ending::Kill;

use crate::status::ExitCategory;
use control::{LastWord, MessageWindow};
use log_relay::{Relayed, WorkerLog};

/// A worker's key: handed out once for the broker's life (pids are reused
/// once reaped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WorkerId(u64);

/// What a worker is doing.
pub(crate) enum Role {
    /// Started for a listener's pool; not yet ready, or ready and idle.
    Pool { ready: bool },
    /// Serving a client.
    Serving { client: ClientInfo, since: Instant },
}

pub(crate) struct Worker {
    pub(crate) pid: u32,
    pub(crate) listener: String,
    pub(crate) channel: Option<Channel>,
    pub(crate) role: Role,
    pub(crate) stats: SessionStats,
    last: Option<LastWord>,
    /// Last time the GPU work made progress (or there was none pending).
    progress_at: Instant,
    /// Why the broker ended it, if it did.
    killed_for: Option<Kill>,
    pub(crate) cgroup: Option<PathBuf>,
    /// Control messages in the current second.
    messages: MessageWindow,
    /// The read end of the worker's stderr; `None` after EOF.
    log: Option<WorkerLog>,
    spawned_at: Instant,
    /// Whether it has said Ready (whatever its role by then).
    reported_ready: bool,
    /// The listener's worker arguments, when it was started to make the
    /// check context (its Ready says they passed it).
    pub(crate) checks: Option<Vec<OsString>>,
}

impl Worker {
    fn new(
        pid: u32,
        listener: &str,
        channel: Option<Channel>,
        log: Option<OwnedFd>,
        role: Role,
    ) -> Worker {
        let now = Instant::now();
        Worker {
            pid,
            listener: listener.to_string(),
            channel,
            role,
            stats: SessionStats::default(),
            last: None,
            progress_at: now,
            killed_for: None,
            cgroup: None,
            messages: MessageWindow::new(now),
            log: log.map(|fd| WorkerLog::new(fd, now)),
            spawned_at: now,
            reported_ready: false,
            checks: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test(role: Role) -> Worker {
        Worker::new(1, "default", None, None, role)
    }
}

#[derive(Default)]
pub(crate) struct Workers {
    by_id: BTreeMap<WorkerId, Worker>,
    by_pid: HashMap<u32, WorkerId>,
    /// Pool workers that reported Ready, per listener, oldest first.
    ready: HashMap<String, VecDeque<WorkerId>>,
    /// How long workers took from spawn to Ready, per listener, since the
    /// broker last asked ([`Workers::take_start_times`]).
    start_times: Vec<(String, Duration)>,
    /// Listeners and the worker arguments that passed the check context,
    /// since the broker last asked ([`Workers::take_checked`]).
    checked: Vec<(String, Vec<OsString>)>,
    next_id: u64,
}

impl Workers {
    pub(crate) fn insert(
        &mut self,
        pid: u32,
        listener: &str,
        channel: Channel,
        log: OwnedFd,
        role: Role,
    ) -> WorkerId {
        self.next_id += 1;
        let id = WorkerId(self.next_id);
        let worker = Worker::new(pid, listener, Some(channel), Some(log), role);
        self.by_id.insert(id, worker);
        self.by_pid.insert(pid, id);
        id
    }

    /// Marks worker `id` as serving `client` from now on.
    pub(crate) fn attach(&mut self, id: WorkerId, client: ClientInfo, since: Instant) {
        if let Some(w) = self.by_id.get_mut(&id) {
            w.role = Role::Serving { client, since };
            // The hang clock starts with the client, not at spawn.
            w.progress_at = Instant::now();
        }
    }

    pub(crate) fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.by_id.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.by_id.get_mut(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (WorkerId, &Worker)> {
        self.by_id.iter().map(|(id, w)| (*id, w))
    }

    pub(crate) fn ids(&self) -> Vec<WorkerId> {
        self.by_id.keys().copied().collect()
    }

    /// Workers whose control channel is still open.
    pub(crate) fn channels(&self) -> impl Iterator<Item = (WorkerId, &Channel)> {
        self.iter()
            .filter_map(|(id, w)| w.channel.as_ref().map(|c| (id, c)))
    }

    /// Workers whose log pipe is open and within its budget at `now`.
    pub(crate) fn logs(&self, now: Instant) -> impl Iterator<Item = (WorkerId, BorrowedFd<'_>)> {
        self.iter()
            .filter_map(move |(id, w)| Some((id, w.log.as_ref()?.pollable(now)?)))
    }

    /// Relays what worker `id` wrote to its stderr into the broker's log.
    pub(crate) fn relay_log(&mut self, id: WorkerId) {
        let Some(w) = self.by_id.get_mut(&id) else {
            return;
        };
        if let Some(log) = w.log.as_mut() {
            if log.relay(w.pid) == Relayed::Closed {
                w.log = None;
            }
        }
    }

    /// Pool workers of `listener`: (ready, starting).
    pub(crate) fn pool_counts(&self, listener: &str) -> (u32, u32) {
        let mut ready = 0;
        let mut starting = 0;
        for w in self.by_id.values().filter(|w| w.listener == listener) {
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
        self.by_id
            .values()
            .filter(|w| w.listener == listener && matches!(w.role, Role::Serving { .. }))
            .count() as u32
    }

    /// Clients being served, in all, and of `uid`.
    pub(crate) fn serving_counts(&self, uid: u32) -> (u32, u32) {
        let mut all = 0;
        let mut of_uid = 0;
        for w in self.by_id.values() {
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
    pub(crate) fn take_ready(&mut self, listener: &str) -> Option<WorkerId> {
        let queue = self.ready.get_mut(listener)?;
        while let Some(id) = queue.pop_front() {
            if let Some(w) = self.by_id.get(&id) {
                // Not one the broker is ending (a reload's old pool, the
                // start-up probe): it would take the client down with it.
                let usable = w.channel.is_some() && w.killed_for.is_none();
                if usable && matches!(w.role, Role::Pool { ready: true }) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Takes the oldest pool worker of `listener` that is still starting:
    /// its client waits less than for a worker started now.
    pub(crate) fn take_starting(&mut self, listener: &str) -> Option<WorkerId> {
        self.by_id
            .iter()
            .find(|(_, w)| {
                w.listener == listener
                    && w.channel.is_some()
                    && w.killed_for.is_none()
                    && matches!(w.role, Role::Pool { ready: false })
            })
            .map(|(id, _)| *id)
    }

    /// Start-up times measured since the last call, oldest first.
    pub(crate) fn take_start_times(&mut self) -> Vec<(String, Duration)> {
        std::mem::take(&mut self.start_times)
    }

    /// Listeners whose worker arguments passed the check context since the
    /// last call, with those arguments.
    pub(crate) fn take_checked(&mut self) -> Vec<(String, Vec<OsString>)> {
        std::mem::take(&mut self.checked)
    }

    /// Workers of every listener still starting.
    pub(crate) fn starting(&self) -> u32 {
        self.by_id
            .values()
            .filter(|w| !w.reported_ready && w.channel.is_some())
            .count() as u32
    }

    /// Ends worker `id` with `signal` on the broker's behalf; its end is
    /// then counted and logged as `why`, not as a signal.
    pub(crate) fn end(&mut self, id: WorkerId, signal: Signal, why: Kill) {
        if let Some(w) = self.by_id.get_mut(&id) {
            w.killed_for.get_or_insert(why);
            let _ = kill(Pid::from_raw(w.pid as i32), signal);
        }
    }

    /// Ends the pool workers of `listener` (of every listener: `None`) with
    /// SIGTERM, counted as a shutdown.
    pub(crate) fn end_pool(&mut self, listener: Option<&str>, text: &'static str) {
        let pool: Vec<WorkerId> = self
            .iter()
            .filter(|(_, w)| matches!(w.role, Role::Pool { .. }))
            .filter(|(_, w)| listener.is_none_or(|l| w.listener == l))
            .map(|(id, _)| id)
            .collect();
        for id in pool {
            let why = Kill {
                category: ExitCategory::Shutdown,
                text,
            };
            self.end(id, Signal::SIGTERM, why);
        }
    }

    /// Whether pool worker `id` has reported Ready.
    pub(crate) fn is_ready(&self, id: WorkerId) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|w| matches!(w.role, Role::Pool { ready: true }))
    }

    /// Pool workers are being stopped: none may be handed a client.
    pub(crate) fn forget_ready(&mut self) {
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(client_id: u64, uid: u32) -> ClientInfo {
        ClientInfo {
            client_id,
            pid: 1,
            uid,
            gid: uid,
            listener: "a".into(),
        }
    }

    /// A table of workers without processes behind them.
    fn table(workers: Vec<(&str, Role)>) -> (Workers, Vec<WorkerId>) {
        let mut t = Workers::default();
        let mut ids = Vec::new();
        for (i, (listener, role)) in workers.into_iter().enumerate() {
            let pid = 1_000_000 + i as u32;
            let mut w = Worker::new(pid, listener, None, None, role);
            if let Role::Pool { ready: true } = w.role {
                let (ours, _theirs) = Channel::pair().unwrap();
                w.channel = Some(ours);
            }
            t.next_id += 1;
            let id = WorkerId(t.next_id);
            if let Role::Pool { ready: true } = w.role {
                t.ready.entry(listener.into()).or_default().push_back(id);
            }
            t.by_id.insert(id, w);
            t.by_pid.insert(pid, id);
            ids.push(id);
        }
        (t, ids)
    }

    #[test]
    fn pools_and_clients_are_counted_per_listener_and_uid() {
        let now = Instant::now();
        let (t, _) = table(vec![
            ("a", Role::Pool { ready: true }),
            ("a", Role::Pool { ready: false }),
            ("a", Role::Pool { ready: false }),
            ("b", Role::Pool { ready: true }),
            (
                "a",
                Role::Serving {
                    client: client(1, 1000),
                    since: now,
                },
            ),
            (
                "b",
                Role::Serving {
                    client: client(2, 1000),
                    since: now,
                },
            ),
            (
                "b",
                Role::Serving {
                    client: client(3, 0),
                    since: now,
                },
            ),
        ]);
        assert_eq!(t.pool_counts("a"), (1, 2));
        assert_eq!(t.pool_counts("b"), (1, 0));
        assert_eq!(t.pool_counts("c"), (0, 0));
        assert_eq!((t.serving_count("a"), t.serving_count("b")), (1, 2));
        assert_eq!(t.serving_counts(1000), (3, 2));
        assert_eq!(t.serving_counts(5), (3, 0));
        assert_eq!(t.len(), 7);
    }

    #[test]
    fn a_ready_worker_is_taken_once_oldest_first_and_never_one_being_ended() {
        let (mut t, ids) = table(vec![
            ("a", Role::Pool { ready: true }),
            ("a", Role::Pool { ready: true }),
            ("a", Role::Pool { ready: true }),
        ]);
        // The oldest is being ended (a reload's old pool): skipped.
        t.by_id.get_mut(&ids[0]).unwrap().killed_for = Some(Kill {
            category: ExitCategory::Shutdown,
            text: "replaced after a reload",
        });
        assert_eq!(t.take_ready("a"), Some(ids[1]));
        t.attach(ids[1], client(1, 0), Instant::now());
        assert!(!t.is_ready(ids[1]), "serving now");
        assert_eq!(t.take_ready("a"), Some(ids[2]));
        assert_eq!(t.take_ready("a"), None);
        assert_eq!(t.take_ready("b"), None);
    }

    #[test]
    fn a_stop_forgets_the_ready_queue() {
        let (mut t, ids) = table(vec![("a", Role::Pool { ready: true })]);
        assert!(t.is_ready(ids[0]));
        t.forget_ready();
        assert_eq!(t.take_ready("a"), None);
    }

    #[test]
    fn ids_are_never_reused() {
        let mut t = Workers::default();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (ours, _theirs) = Channel::pair().unwrap();
            let (log, _w) = nix::unistd::pipe().unwrap();
            // The same pid each time, as after reaping and reuse.
            let id = t.insert(77, "a", ours, log, Role::Pool { ready: false });
            assert!(seen.insert(id));
            assert_eq!(t.get(id).map(|w| w.pid), Some(77));
            let gone = t.by_pid.remove(&77).unwrap();
            t.by_id.remove(&gone);
        }
    }
}
