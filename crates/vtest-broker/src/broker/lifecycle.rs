//! Workers' lives as the broker runs them: the start-up probe of each
//! listener, pools kept at their size (with a back-off after failures),
//! starting a worker (in its own cgroup where there are per-worker
//! cgroups), and reaping.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};
use vtest_control::{BrokerMsg, Channel};

use super::listeners::ListenerId;
use super::Broker;
use crate::cgroup;
use crate::status::ExitCategory;
use crate::workers::{Kill, Role, WorkerId};
use crate::BrokerError;

/// How long the start-up probe waits for a listener's first worker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a pool worker fails to start, wait this long before the next.
const POOL_BACKOFF: Duration = Duration::from_secs(2);

/// How many workers start at once, at most, for pools and for clients
/// alike: one per core (starts are CPU-bound: more would only slow each
/// other down, and hold every one's memory at once), as far as the CPU
/// affinity and a cgroup's CPU quota allow. Read once, at the broker's
/// start (the broker keeps it as `Broker::start_slots`).
pub(super) fn start_slots() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
}

impl Broker {
    /// Before anyone is served, one worker per listener starts with the
    /// listener's backend and sandbox, initialises its renderer (a
    /// throwaway context included, see `vtestd worker`) and reports Ready.
    /// A configuration whose workers cannot do that (a backend the host
    /// lacks, a sandbox layer the renderer trips over) is refused here with
    /// the worker's own reason, instead of ending every client. The probe
    /// becomes the listener's first pool worker, or ends when the listener
    /// keeps no pool.
    pub(super) fn probe_listeners(&mut self) -> Result<(), BrokerError> {
        for li in self.listeners.ids() {
            let Some(l) = self.listeners.get(li).filter(|l| l.socket.is_some()) else {
                continue;
            };
            let name = l.config.name.clone();
            let cannot = |reason: String| BrokerError::WorkerCannotStart {
                listener: name.clone(),
                reason,
            };
            // Started like a pool worker (no client's uid yet).
            let id = self
                .spawn(li, Role::Pool { ready: false }, 0)
                .ok_or_else(|| cannot("the worker process could not be started".into()))?;
            let pid = self.workers.get(id).map_or(0, |w| w.pid);
            let started = Instant::now();
            while !self.workers.is_ready(id) {
                match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(status) => {
                        let text = self.workers.reaped(status).map(|e| e.text);
                        return Err(cannot(text.unwrap_or_else(|| "it ended".into())));
                    }
                    Err(e) => return Err(cannot(format!("waitpid: {e}"))),
                }
                if started.elapsed() > PROBE_TIMEOUT {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    let secs = PROBE_TIMEOUT.as_secs();
                    return Err(cannot(format!("not ready after {secs} s")));
                }
                std::thread::sleep(Duration::from_millis(5));
                self.workers.drain(id);
                self.workers.relay_log(id);
            }
            info!(listener = %name, worker = pid, ms = started.elapsed().as_millis() as u64,
                  "a worker started with this listener's configuration");
            let Some(config) = self.listeners.get(li).map(|l| &l.config) else {
                continue;
            };
            if !config.has_pool() {
                self.workers.end_pool(Some(&name), "start-up probe done");
            }
        }
        Ok(())
    }

    /// Keeps each listener's pool at its size: its floor (`pool`), plus
    /// the clients expected during one start-up at the recent arrival rate,
    /// at most `pool_max`; no more workers start at once than there are
    /// cores (beyond that they only slow each other down).
    pub(super) fn replenish_pools(&mut self) {
        for (listener, took) in self.workers.take_start_times() {
            if let Some(l) = self.listeners.named(&listener) {
                if let Some(l) = self.listeners.get_mut(l) {
                    l.demand.started(took);
                }
            }
        }
        for (listener, args) in self.workers.take_checked() {
            let l = self.listeners.named(&listener);
            if let Some(l) = l.and_then(|l| self.listeners.get_mut(l)) {
                // A check of arguments a reload has since replaced counts not.
                if l.command.args == args {
                    l.checked = Some(args);
                }
            }
        }
        if self.stop.is_some() {
            return;
        }
        let cores = self.start_slots;
        for li in self.listeners.ids() {
            let Some(l) = self.listeners.get_mut(li) else {
                continue;
            };
            if l.socket.is_none() || !l.config.has_pool() {
                continue;
            }
            if let Some(until) = l.backoff_until {
                if Instant::now() < until {
                    continue;
                }
                l.backoff_until = None;
            }
            let now = Instant::now();
            let target = l.pool_target(now);
            let (ready, starting) = self.workers.pool_counts(&l.config.name);
            if l.demand.quiet(now) && ready > l.config.pool {
                // Grown for a burst that is over: back to the floor (an
                // idle worker holds tens of MiB).
                let name = l.config.name.clone();
                for _ in l.config.pool..ready {
                    if let Some(id) = self.workers.take_ready(&name) {
                        let why = Kill {
                            category: ExitCategory::Shutdown,
                            text: "pool shrunk: the burst of clients is over",
                        };
                        self.workers.end(id, Signal::SIGTERM, why);
                    }
                }
                continue;
            }
            let room = cores.saturating_sub(self.workers.starting());
            // The floor always starts (as before); growth waits for a core.
            let wanted = target.saturating_sub(ready + starting);
            let floor_missing = l.config.pool.saturating_sub(ready + starting);
            for _ in 0..wanted.min(room.max(floor_missing)) {
                if self.spawn(li, Role::Pool { ready: false }, 0).is_none() {
                    self.back_off(li);
                    break;
                }
            }
        }
    }

    /// No pool worker of listener `li` starts for a while.
    fn back_off(&mut self, li: ListenerId) {
        if let Some(l) = self.listeners.get_mut(li) {
            l.backoff_until = Some(Instant::now() + POOL_BACKOFF);
        }
    }

    /// Starts a worker of listener `li` for a client of `uid` (0: a pool
    /// worker, for no client yet).
    pub(super) fn spawn(&mut self, li: ListenerId, role: Role, uid: u32) -> Option<WorkerId> {
        let l = self.listeners.get(li)?;
        let (ours, theirs) = match Channel::pair() {
            Ok(pair) => pair,
            Err(e) => {
                error!(error = %e, "control channel");
                return None;
            }
        };
        // With per-worker cgroups, the worker waits until it is in its
        // cgroup before its sandbox forks the PID-namespace child, which
        // would otherwise race the move and start outside the limits.
        let mut command = l.command.clone();
        if self.cgroups.is_some() {
            command.args.push("--wait-for-cgroup".into());
        }
        let check = l.needs_check().then(|| l.command.args.clone());
        if check.is_some() {
            command.args.push("--check-context".into());
        }
        let (pid, log) = match command.spawn(theirs.into_fd(), uid) {
            Ok(spawned) => spawned,
            Err(e) => {
                error!(listener = %l.config.name, error = %e, "cannot start a worker");
                return None;
            }
        };
        let name = l.config.name.clone();
        self.counters.workers_started += 1;
        let mut cgroup = None;
        if let Some(cg) = &self.cgroups {
            match cg.add(pid) {
                Ok(dir) => cgroup = Some(dir),
                Err(e) => warn!(worker = pid, error = %e, "cgroup limits not applied"),
            }
            if let Err(e) = ours.send(&BrokerMsg::CgroupJoined, &[]) {
                warn!(worker = pid, error = %e, "control channel");
            }
        }
        let id = self.workers.insert(pid, &name, ours, log, role);
        if let Some(w) = self.workers.get_mut(id) {
            w.cgroup = cgroup;
            w.checks = check;
        }
        debug!(worker = pid, listener = %name, "worker started");
        Some(id)
    }

    /// Reaps every worker that ended, and counts how.
    pub(super) fn reap(&mut self) {
        loop {
            // WUNTRACED: a stopped worker (SIGSTOP from outside, or a reaper
            // made to stop itself) would otherwise hold its slot unseen.
            let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED;
            match waitpid(None::<Pid>, Some(flags)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(WaitStatus::Stopped(pid, signal)) => {
                    // Ended like any other: its death is reaped next.
                    warn!(
                        worker = pid.as_raw(),
                        "worker stopped by {signal}: killing it"
                    );
                    let _ = kill(pid, Signal::SIGKILL);
                }
                Ok(status) => {
                    let Some(ended) = self.workers.reaped(status) else {
                        continue;
                    };
                    if let Some(dir) = &ended.cgroup {
                        cgroup::remove(dir);
                    }
                    self.counters.worker_exits.add(&ended.category);
                    if let Some(record) = ended.record {
                        self.recent.push(ended.ended_at, record);
                    } else if !ended.became_ready && self.stop.is_none() {
                        // A pool worker died before it was ready: back off.
                        if let Some(li) = self.listeners.named(&ended.listener) {
                            self.back_off(li);
                        }
                    }
                }
            }
        }
    }
}
