//! The broker's event loop and its state: listeners, silent clients waiting
//! for their first byte, worker pools, the admin socket, signals and the
//! timers (the hang watchdog, idle limits, the stop). Each responsibility
//! has its room: [`events`] (one poll round), [`admission`], [`lifecycle`]
//! (workers), [`reload`], [`stop`], [`report`] (status).

mod accept_pause;
mod admin_socket;
mod admission;
mod demand;
mod events;
mod fd_limit;
mod lifecycle;
mod listeners;
mod queue;
mod refusals;
mod reload;
mod report;
mod stop;
mod waiting;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{info, warn};

use crate::cgroup::Cgroups;
use crate::config::Config;
use crate::listener::Listener;
use crate::notify::Notifier;
use crate::procfs::MemoryCache;
use crate::status::Counters;
use crate::workers::Workers;
use crate::{admin, BrokerError};
use accept_pause::AcceptPause;
use events::Event;
use listeners::Listeners;
use queue::StartQueue;
use refusals::Refusals;
use report::RecentExits;
use stop::StopSequence;
use waiting::WaitingClients;

/// What bounds a worker without a delegated cgroup v2.
const PER_RESOURCE_ONLY: &str = "memory bounded only per resource (max_resource_mib, \
    max_shm_mib, RLIMIT_DATA, RLIMIT_FSIZE per memfd), threads only by the service's TasksMax";

/// Rewrites a loaded configuration (command-line flags over the file).
pub type Overrides = Box<dyn Fn(&mut Config)>;

/// What the broker serves and how it starts workers.
pub struct BrokerConfig {
    pub config: Config,
    /// Re-read on SIGHUP (None: the defaults).
    pub config_path: Option<PathBuf>,
    /// Applied to the file's settings at start and on every reload.
    pub overrides: Overrides,
    /// The vtestd binary (workers are `vtestd worker`).
    pub program: PathBuf,
    /// A budget of clients over the broker's life: after accepting this
    /// many it stops accepting, and exits once they are done
    /// (`--no-loop-or-fork`: 1). Not the number served at once, which is
    /// the configuration's `max_clients`. `None`: no budget.
    pub serve_total: Option<u64>,
}

/// A running broker.
pub struct Broker {
    settings: BrokerConfig,
    listeners: Listeners,
    admin: Option<Listener>,
    admin_accept: AcceptPause,
    admin_access: admin::Access,
    admin_conns: admin::Connections,
    /// Workers' memory for `vtestd status`, read at most once a second.
    worker_memory: MemoryCache,
    signals: SignalFd,
    workers: Workers,
    waiting: WaitingClients,
    /// Clients that spoke while every core was starting a worker.
    queued: StartQueue,
    next_client_id: u64,
    refusals: Refusals,
    counters: Counters,
    recent: RecentExits,
    started: Instant,
    cgroups: Option<Cgroups>,
    /// How a worker's memory and threads are bounded, for status and logs.
    memory_limits: String,
    /// Sockets passed by systemd and not yet matched to a listener.
    activated: Vec<(Listener, Option<String>)>,
    notifier: Option<Notifier>,
    /// Serving clients as last told to systemd.
    reported_clients: Option<u32>,
    /// Set by SIGTERM or SIGINT.
    stop: Option<StopSequence>,
    /// How many workers may start at once (see `lifecycle::start_slots`),
    /// read once: std reads the cgroup's CPU quota from /proc and /sys on
    /// every call, which cost the broker half its CPU per client.
    start_slots: u32,
}

impl Broker {
    /// Binds every listener and the admin socket, and sets up signals
    /// (SIGINT, SIGTERM, SIGHUP and SIGCHLD arrive through a signalfd).
    pub fn new(mut settings: BrokerConfig) -> Result<Broker, BrokerError> {
        fd_limit::raise_fd_limit(&settings.config)?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(BrokerError::Signals)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(BrokerError::Signals)?;
        (settings.overrides)(&mut settings.config);
        let server = settings.config.server.clone();
        let mut broker = Broker {
            listeners: Listeners::default(),
            admin: None,
            admin_accept: AcceptPause::default(),
            admin_access: admin::Access {
                ours: nix::unistd::geteuid().as_raw(),
                admin_gid: None,
            },
            admin_conns: admin::Connections::default(),
            worker_memory: MemoryCache::default(),
            signals,
            workers: Workers::default(),
            waiting: WaitingClients::default(),
            queued: StartQueue::default(),
            next_client_id: 1,
            refusals: Refusals::default(),
            counters: Counters::default(),
            recent: RecentExits::default(),
            started: Instant::now(),
            cgroups: None,
            memory_limits: format!("{PER_RESOURCE_ONLY} (cgroups = false)"),
            activated: Vec::new(),
            notifier: Notifier::from_env(),
            reported_clients: None,
            stop: None,
            start_slots: lifecycle::start_slots(),
            settings,
        };
        for (fd, name) in crate::activation::listen_fds() {
            match Listener::adopt(fd) {
                Ok(l) => {
                    info!(socket = %l.path().display(), name = name.as_deref().unwrap_or("-"),
                          "socket passed by systemd");
                    broker.activated.push((l, name));
                }
                Err(e) => {
                    warn!(error = %e, "ignoring a passed fd that is not a listening unix socket")
                }
            }
        }
        broker.apply_listeners()?;
        for (l, _) in broker.activated.drain(..) {
            warn!(socket = %l.path().display(), "passed socket matches no listener; closing it");
        }
        broker.bind_admin(&server.admin_socket, server.admin_group.as_deref());
        if server.cgroups {
            match Cgroups::detect(server.worker_memory_mib << 20, server.worker_pids) {
                Ok(c) => {
                    info!(
                        "per-worker cgroup limits: memory.max {} MiB, pids.max {}",
                        server.worker_memory_mib, server.worker_pids
                    );
                    broker.cgroups = Some(c);
                    broker.memory_limits = format!(
                        "per-worker cgroup: memory.max {} MiB, pids.max {}",
                        server.worker_memory_mib, server.worker_pids
                    );
                }
                Err(why) => {
                    broker.memory_limits = format!("{PER_RESOURCE_ONLY} (cgroups: {why})");
                    info!("per-worker cgroup limits skipped: {}", broker.memory_limits);
                }
            }
        }
        Ok(broker)
    }

    /// Serves until SIGINT/SIGTERM (or the client budget is used up), then
    /// lets clients finish for the grace period, ends every worker and
    /// removes the sockets.
    pub fn run(mut self) -> Result<(), BrokerError> {
        self.probe_listeners()?;
        if let Some(n) = &self.notifier {
            n.send("READY=1\nSTATUS=serving 0 clients");
            self.reported_clients = Some(0);
        }
        loop {
            // Clients first: a worker that became ready, or a core that
            // became free, goes to the oldest queued client.
            self.serve_queued();
            self.replenish_pools();
            for event in self.wait()? {
                self.dispatch(event);
            }
            self.admin_conns.sweep(Instant::now());
            self.periodic(Instant::now());
            self.notify_status();
            if self.finished() {
                info!("stopped");
                return Ok(());
            }
        }
    }

    /// Runs the handler of one event. Each looks its object up by its
    /// token, which may be gone by now (a worker reaped, a listener removed).
    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Signal => self.handle_signals(),
            Event::Accept(id) => self.accept_all(id),
            Event::Admin => self.accept_admin(),
            Event::AdminConn(id) => self.serve_admin(id),
            Event::Worker(id) => self.workers.drain(id),
            Event::WorkerLog(id) => self.workers.relay_log(id),
            Event::Waiting(client_id) => self.check_waiting(client_id),
        }
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(s @ (Signal::SIGINT | Signal::SIGTERM)) => self.begin_stop(s),
                _ => {}
            }
        }
    }

    /// Timers: refusal summaries, the hang watchdog, silent clients' idle
    /// limit, the stop sequence.
    fn periodic(&mut self, now: Instant) {
        for (reason, n, secs) in self.refusals.ended(now) {
            warn!(
                count = n,
                secs, "client refused: {reason}: {n} more in {secs:.1} s"
            );
        }
        let hang = Duration::from_secs(self.settings.config.server.hang_timeout_secs);
        if !hang.is_zero() {
            self.workers.watchdog(hang, Instant::now());
        }
        let listeners = &self.listeners;
        let expired = self
            .waiting
            .expire(now, |name| listeners.idle_timeout_ms(name));
        for w in &expired {
            warn!(
                client = w.client.client_id,
                peer_pid = w.client.pid,
                uid = w.client.uid,
                "limit idle_timeout_ms exceeded before the first byte; closing"
            );
        }
        if !expired.is_empty() {
            let n = expired.len() as u64;
            self.counters.refused("idle before first byte", n);
        }
        self.continue_stop(now);
    }

    fn finished(&self) -> bool {
        !self.listeners.accepting()
            && self.waiting.is_empty()
            && self.queued.is_empty()
            && self.workers.len() == 0
    }
}
