//! The event loop: listeners, silent clients waiting for their first byte,
//! worker pools, the admin socket, signals, the hang watchdog.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, recv, sockopt::PeerCredentials, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};
use vtest_control::{BrokerMsg, Channel, ClientInfo};

use crate::cgroup::{self, Cgroups};
use crate::config::{parse_mode, Backend, Config, LimitsProfile, ListenerConfig, ServerConfig};
use crate::listener::{resolve_gid, Listener, SocketPerms};
use crate::notify::Notifier;
use crate::procfs::MemoryCache;
use crate::status::{ClientStatus, Counters, ExitRecord, ListenerStatus, Status};
use crate::workers::{Role, Workers};
use crate::{admin, BrokerError, WorkerCommand};

/// Recent client ends kept for `vtestd status`.
const RECENT_EXITS: usize = 64;
/// What bounds a worker without a delegated cgroup v2.
const PER_RESOURCE_ONLY: &str = "memory bounded only per resource (max_resource_mib, \
    max_shm_mib, RLIMIT_DATA, RLIMIT_FSIZE per memfd), threads only by the service's TasksMax";

/// How long the start-up probe waits for a listener's first worker.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// After a pool worker fails to start, wait this long before the next.
const POOL_BACKOFF: Duration = Duration::from_secs(2);
/// After the grace period, workers get SIGTERM and then this long.
const KILL_AFTER: Duration = Duration::from_secs(2);

/// After a failed accept (EMFILE: the connection stays in the backlog and
/// the socket stays readable), the socket is left alone this long.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

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
    /// Stop accepting after this many clients and exit when they are done.
    pub max_clients: Option<u64>,
}

struct ListenerState {
    /// Stable for the broker's life (a reload can remove or reorder
    /// listeners; an index collected before it would name another).
    id: u64,
    config: ListenerConfig,
    socket: Option<Listener>,
    command: WorkerCommand,
    limits: vtest_control::Limits,
    backoff_until: Option<Instant>,
    accept: AcceptPause,
}

/// Accepting on a socket paused after failures, so that a broker out of fds
/// neither spins on a readable socket nor floods the log: one line when it
/// starts failing, one when it accepts again.
#[derive(Default)]
struct AcceptPause {
    until: Option<Instant>,
    failures: u64,
    since: Option<Instant>,
}

impl AcceptPause {
    fn paused(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    fn failed(&mut self, socket: &str, e: &std::io::Error) {
        let now = Instant::now();
        if self.failures == 0 {
            error!(socket, error = %e, pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                   "accept failed; new connections wait in the backlog");
            self.since = Some(now);
        }
        self.failures += 1;
        self.until = Some(now + ACCEPT_PAUSE);
    }

    fn succeeded(&mut self, socket: &str) {
        if self.failures > 0 {
            let secs = self.since.map_or(0.0, |t| t.elapsed().as_secs_f64());
            info!(socket, failures = self.failures, secs, "accepting again");
        }
        *self = AcceptPause::default();
    }
}

/// A client that has not sent a byte yet: it costs no worker.
struct Waiting {
    stream: UnixStream,
    client: ClientInfo,
    since: Instant,
}

/// Refused connections are logged once per streak: the first with the
/// peer's identity, the rest as one count when the streak ends (a second
/// without one) or every [`REFUSAL_SUMMARY`] while it lasts, so that a
/// flood of refused connections cannot bury other lines under the
/// journal's rate limit.
#[derive(Default)]
struct Refusals {
    /// reason → (started, last refusal, refusals not yet logged).
    streaks: std::collections::BTreeMap<&'static str, (Instant, Instant, u64)>,
}

const REFUSAL_STREAK_GAP: Duration = Duration::from_secs(1);
const REFUSAL_SUMMARY: Duration = Duration::from_secs(10);

impl Refusals {
    /// Records one refusal; true when it starts a streak (log it in full).
    fn first(&mut self, reason: &'static str, now: Instant) -> bool {
        match self.streaks.get_mut(reason) {
            Some((_, last, n)) => {
                *last = now;
                *n += 1;
                false
            }
            None => {
                self.streaks.insert(reason, (now, now, 0));
                true
            }
        }
    }

    /// Streaks that ended or ran long: (reason, unlogged count, seconds).
    fn ended(&mut self, now: Instant) -> Vec<(&'static str, u64, f64)> {
        let mut out = Vec::new();
        self.streaks.retain(|reason, (start, last, n)| {
            let over = now.duration_since(*last) >= REFUSAL_STREAK_GAP;
            let long = now.duration_since(*start) >= REFUSAL_SUMMARY;
            if (over || long) && *n > 0 {
                out.push((*reason, *n, now.duration_since(*start).as_secs_f64()));
                *n = 0;
                *start = now;
            }
            !over
        });
        out
    }
}

/// What poll found ready, by stable ids (listener id, worker pid, client
/// id): a handler that runs first (a reload, a stop, a hand-over) may
/// change the tables, so nothing is named by its position in them.
enum Event {
    Signal,
    Accept(u64),
    Admin,
    AdminConn(u64),
    Worker(u32),
    WorkerLog(u32),
    Waiting(u64),
}

/// A running broker.
pub struct Broker {
    settings: BrokerConfig,
    listeners: Vec<ListenerState>,
    admin: Option<Listener>,
    admin_accept: AcceptPause,
    admin_access: admin::Access,
    admin_conns: admin::Connections,
    /// Workers' memory for `vtestd status`, read at most once a second.
    worker_memory: MemoryCache,
    signals: SignalFd,
    workers: Workers,
    waiting: Vec<Waiting>,
    next_client_id: u64,
    next_listener_id: u64,
    refusals: Refusals,
    counters: Counters,
    recent: VecDeque<(Instant, ExitRecord)>,
    started: Instant,
    cgroups: Option<Cgroups>,
    /// How a worker's memory and threads are bounded, for status and logs.
    memory_limits: String,
    /// Sockets passed by systemd and not yet matched to a listener.
    activated: Vec<(Listener, Option<String>)>,
    notifier: Option<Notifier>,
    /// Serving clients as last told to systemd.
    reported_clients: Option<u32>,
    /// Set by SIGTERM: when serving workers are told to stop.
    stopping: Option<Instant>,
    terminated_at: Option<Instant>,
}

fn worker_command(
    program: &std::path::Path,
    server: &ServerConfig,
    l: &ListenerConfig,
    profile: &LimitsProfile,
) -> WorkerCommand {
    let mut args: Vec<std::ffi::OsString> = vec![
        "worker".into(),
        format!("--max-open-files={}", server.worker_open_files).into(),
        format!("--max-data-mib={}", server.worker_memory_mib).into(),
    ];
    match l.backend {
        Backend::Surfaceless => args.push("--use-egl-surfaceless".into()),
        Backend::Gles => {
            args.push("--use-egl-surfaceless".into());
            args.push("--use-gles".into());
        }
        Backend::RenderNode => {}
    }
    if let Some(node) = &l.render_node {
        args.push("--rendernode".into());
        args.push(node.clone().into_os_string());
    }
    if !l.sandbox {
        args.push("--sandbox=off".into());
    }
    if !l.sandbox_allow_missing.is_empty() {
        args.push(
            format!(
                "--sandbox-allow-missing={}",
                l.sandbox_allow_missing.join(",")
            )
            .into(),
        );
    }
    // RLIMIT_FSIZE bounds each memfd: the largest resource, plus 1 MiB.
    args.push(
        format!(
            "--max-file-mib={}",
            profile.max_resource_mib.saturating_add(1)
        )
        .into(),
    );
    WorkerCommand {
        program: program.to_owned(),
        args,
        shader_cache_dir: l.shader_cache_dir.clone(),
    }
}

/// The broker holds one fd per connection and per worker: the soft limit
/// goes up to the hard one (the event loop uses poll, not select), and a
/// configuration that may need more is named at start.
fn raise_fd_limit(config: &Config) -> Result<(), BrokerError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    check_worker_fd_limit(config)?;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    let mut limit = soft;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        debug!(from = soft, to = hard, "open files limit raised");
        limit = hard;
    }
    // Per worker: its control channel and its stderr pipe.
    let pools: u64 = config.listeners.iter().map(|l| u64::from(l.pool)).sum();
    let needed = 2 * (u64::from(config.server.max_clients) + pools) + 64;
    if needed > limit {
        warn!(
            limit,
            needed,
            max_clients = config.server.max_clients,
            "the open files limit may not hold max_clients; connections beyond it \
               wait in the backlog"
        );
    }
    Ok(())
}

/// Workers set their fd limit (soft = hard) under the broker's hard limit,
/// which they inherit: above it, none could start.
fn check_worker_fd_limit(config: &Config) -> Result<(), BrokerError> {
    use nix::sys::resource::{getrlimit, Resource};
    let wanted = config.server.worker_open_files;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if wanted > hard => Err(BrokerError::WorkerFdLimit { wanted, hard }),
        _ => Ok(()),
    }
}

impl Broker {
    /// Binds every listener and the admin socket, and sets up signals
    /// (SIGINT, SIGTERM, SIGHUP and SIGCHLD arrive through a signalfd).
    pub fn new(mut settings: BrokerConfig) -> Result<Broker, BrokerError> {
        raise_fd_limit(&settings.config)?;
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
            listeners: Vec::new(),
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
            waiting: Vec::new(),
            next_client_id: 1,
            next_listener_id: 0,
            refusals: Refusals::default(),
            counters: Counters::default(),
            recent: VecDeque::new(),
            started: Instant::now(),
            cgroups: None,
            memory_limits: format!("{PER_RESOURCE_ONLY} (cgroups = false)"),
            activated: Vec::new(),
            notifier: Notifier::from_env(),
            reported_clients: None,
            stopping: None,
            terminated_at: None,
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

    /// Binds listeners that are new in the configuration, updates the
    /// settings of existing ones (by name) and closes removed ones.
    fn apply_listeners(&mut self) -> Result<(), BrokerError> {
        let config = self.settings.config.clone();
        self.listeners.retain(|l| {
            let keep = config
                .listeners
                .iter()
                .any(|c| c.name == l.config.name && c.path == l.config.path);
            if !keep {
                info!(listener = %l.config.name, "listener removed");
            }
            keep
        });
        for lc in &config.listeners {
            let limits = config.limits[&lc.limits].to_wire();
            let profile = &config.limits[&lc.limits];
            let command = worker_command(&self.settings.program, &config.server, lc, profile);
            if let Some(existing) = self.listeners.iter_mut().find(|l| l.config.name == lc.name) {
                if existing.command.args != command.args {
                    // New backend: the pool's workers were started for the old one.
                    self.workers
                        .end_pool(Some(&lc.name), "replaced after a reload");
                }
                existing.config = lc.clone();
                existing.command = command;
                existing.limits = limits;
                continue;
            }
            let passed = self.activated.iter().position(|(l, name)| {
                name.as_deref() == Some(lc.name.as_str()) || l.path() == lc.path
            });
            let socket = match passed {
                Some(i) => self.activated.swap_remove(i).0,
                None => {
                    let perms = SocketPerms {
                        mode: lc.mode.as_deref().and_then(|m| parse_mode(m).ok()),
                        owner: lc.owner.clone(),
                        group: lc.group.clone(),
                    };
                    Listener::bind(&lc.path, &perms)?
                }
            };
            info!(listener = %lc.name, socket = %socket.path().display(), backend = ?lc.backend,
                  pool = lc.pool, sandbox = lc.sandbox, "listening");
            if lc.shader_cache_dir.is_some() && lc.pool > 0 {
                info!(listener = %lc.name,
                      "no pre-started workers: the shader cache is per client uid");
            }
            self.next_listener_id += 1;
            self.listeners.push(ListenerState {
                id: self.next_listener_id,
                config: lc.clone(),
                socket: Some(socket),
                command,
                limits,
                backoff_until: None,
                accept: AcceptPause::default(),
            });
        }
        Ok(())
    }

    fn bind_admin(&mut self, path: &std::path::Path, group: Option<&str>) {
        let admin_gid = group.and_then(|g| match resolve_gid(g) {
            Ok(gid) => Some(gid.as_raw()),
            Err(e) => {
                warn!(group = g, error = %e, "admin group unknown; admin socket is root-only");
                None
            }
        });
        self.admin_access.admin_gid = admin_gid;
        // Containers are given client sockets' directories: one holding the
        // admin socket would let a container's root replace it.
        if let Some(l) = self
            .listeners
            .iter()
            .find(|l| l.config.path.parent() == path.parent())
        {
            info!(socket = %path.display(), listener = %l.config.name,
                  "the admin socket shares its directory with a client socket; do not give \
                   that directory to containers, or move admin_socket \
                   (e.g. /run/vtestd-admin/admin.sock)");
        }
        let perms = SocketPerms {
            mode: Some(if admin_gid.is_some() { 0o660 } else { 0o600 }),
            owner: None,
            group: admin_gid.map(|g| g.to_string()),
        };
        match Listener::bind(path, &perms) {
            Ok(l) => {
                info!(socket = %path.display(), "admin socket");
                self.admin = Some(l);
            }
            Err(e) => warn!(socket = %path.display(), error = %e, "no admin socket"),
        }
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
            self.replenish_pools();
            for event in self.wait()? {
                match event {
                    Event::Signal => self.handle_signals(),
                    Event::Accept(id) => {
                        if let Some(i) = self.listeners.iter().position(|l| l.id == id) {
                            self.accept_all(i);
                        }
                    }
                    Event::Admin => self.accept_admin(),
                    Event::AdminConn(id) => self.serve_admin(id),
                    Event::Worker(pid) => self.workers.drain(pid),
                    Event::WorkerLog(pid) => self.workers.relay_log(pid),
                    Event::Waiting(id) => {
                        if let Some(i) = self.waiting.iter().position(|w| w.client.client_id == id)
                        {
                            self.check_waiting(i);
                        }
                    }
                }
            }
            self.admin_conns.sweep(Instant::now());
            self.periodic();
            self.notify_status();
            if self.finished() {
                info!("stopped");
                return Ok(());
            }
        }
    }

    /// Before anyone is served, one worker per listener starts with the
    /// listener's backend and sandbox, initialises its renderer (a
    /// throwaway context included, see `vtestd worker`) and reports Ready.
    /// A configuration whose workers cannot do that (a backend the host
    /// lacks, a sandbox layer the renderer trips over) is refused here with
    /// the worker's own reason, instead of ending every client. The probe
    /// becomes the listener's first pool worker, or ends when the listener
    /// keeps no pool.
    fn probe_listeners(&mut self) -> Result<(), BrokerError> {
        // Started like a pool worker (no client's uid yet).
        let uid = 0;
        for i in 0..self.listeners.len() {
            if self.listeners[i].socket.is_none() {
                continue;
            }
            let name = self.listeners[i].config.name.clone();
            let cannot = |reason: String| BrokerError::WorkerCannotStart {
                listener: name.clone(),
                reason,
            };
            let pid = self
                .spawn(i, Role::Pool { ready: false }, uid)
                .ok_or_else(|| cannot("the worker process could not be started".into()))?;
            let started = Instant::now();
            while !self.workers.is_ready(pid) {
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
                    return Err(cannot(format!(
                        "not ready after {} s",
                        PROBE_TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
                self.workers.drain(pid);
                self.workers.relay_log(pid);
            }
            let config = &self.listeners[i].config;
            info!(listener = %name, worker = pid, ms = started.elapsed().as_millis() as u64,
                  "a worker started with this listener's configuration");
            if config.pool == 0 || config.shader_cache_dir.is_some() {
                self.workers.end_pool(Some(&name), "start-up probe done");
            }
        }
        Ok(())
    }

    /// Tells systemd the client count when it changes, and pings its watchdog.
    fn notify_status(&mut self) {
        let Some(n) = &mut self.notifier else { return };
        n.ping_if_due();
        let serving = self.workers.serving_counts(u32::MAX).0;
        if self.reported_clients != Some(serving) {
            n.send(&format!("STATUS=serving {serving} clients"));
            self.reported_clients = Some(serving);
        }
    }

    fn finished(&self) -> bool {
        let accepting = self.listeners.iter().any(|l| l.socket.is_some());
        !accepting && self.waiting.is_empty() && self.workers.len() == 0
    }

    fn wait(&self) -> Result<Vec<Event>, BrokerError> {
        let now = Instant::now();
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let mut events = vec![Event::Signal];
        for l in &self.listeners {
            if let Some(s) = l.socket.as_ref().filter(|_| !l.accept.paused(now)) {
                fds.push(PollFd::new(s.socket.as_fd(), PollFlags::POLLIN));
                events.push(Event::Accept(l.id));
            }
        }
        if let Some(a) = self
            .admin
            .as_ref()
            .filter(|_| !self.admin_accept.paused(now))
        {
            fds.push(PollFd::new(a.socket.as_fd(), PollFlags::POLLIN));
            events.push(Event::Admin);
        }
        for (id, fd, flags) in self.admin_conns.poll_fds() {
            fds.push(PollFd::new(fd, flags));
            events.push(Event::AdminConn(id));
        }
        let paused =
            self.listeners.iter().any(|l| l.accept.paused(now)) || self.admin_accept.paused(now);
        for (pid, channel) in self.workers.channels() {
            fds.push(PollFd::new(channel.as_fd(), PollFlags::POLLIN));
            events.push(Event::Worker(pid));
        }
        for (pid, log) in self.workers.logs(now) {
            fds.push(PollFd::new(log, PollFlags::POLLIN));
            events.push(Event::WorkerLog(pid));
        }
        for w in &self.waiting {
            fds.push(PollFd::new(w.stream.as_fd(), PollFlags::POLLIN));
            events.push(Event::Waiting(w.client.client_id));
        }
        let timers = self
            .notifier
            .as_ref()
            .is_some_and(|n| n.interval().is_some())
            || self.workers.len() > 0
            || !self.waiting.is_empty()
            || !self.refusals.streaks.is_empty()
            || self.listeners.iter().any(|l| l.backoff_until.is_some());
        let tick = self
            .notifier
            .as_ref()
            .and_then(Notifier::interval)
            .map_or(1000, |i| i.as_millis().clamp(50, 1000) as u16);
        let mut timeout_ms = if paused {
            Some(ACCEPT_PAUSE.as_millis().min(u128::from(tick)) as u16)
        } else if timers {
            Some(tick)
        } else {
            None
        };
        // Admin connections are closed at their deadline (rounded up).
        if let Some(deadline) = self.admin_conns.next_deadline() {
            let ms = deadline.saturating_duration_since(now).as_millis() + 1;
            let ms = ms.min(u128::from(timeout_ms.unwrap_or(u16::MAX))) as u16;
            timeout_ms = Some(ms);
        }
        let timeout = timeout_ms.map_or(PollTimeout::NONE, PollTimeout::from);
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(BrokerError::EventLoop(e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        Ok(events
            .into_iter()
            .zip(ready)
            .filter_map(|(e, r)| r.then_some(e))
            .collect())
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

    fn reload(&mut self) {
        let loaded = Config::load_or_default(self.settings.config_path.as_deref());
        let loaded = loaded.map_err(|e| e.to_string()).and_then(|mut config| {
            (self.settings.overrides)(&mut config);
            check_worker_fd_limit(&config).map_err(|e| e.to_string())?;
            Ok(config)
        });
        match loaded {
            Ok(config) => {
                self.settings.config = config;
                match self.apply_listeners() {
                    Ok(()) => info!("configuration reloaded (applies to new connections)"),
                    Err(e) => error!(error = %e, "reload: cannot bind a new listener"),
                }
            }
            Err(e) => error!(error = %e, "reload failed; keeping the running configuration"),
        }
    }

    /// Stops accepting; serving clients get the grace period.
    fn begin_stop(&mut self, signal: Signal) {
        if self.stopping.is_some() {
            info!(signal = %signal, "second stop signal: ending every worker now");
            self.stopping = Some(Instant::now());
            return;
        }
        let grace = Duration::from_secs(self.settings.config.server.shutdown_grace_secs);
        info!(signal = %signal, grace_secs = grace.as_secs(), "stopping: no new clients");
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1");
        }
        for l in &mut self.listeners {
            l.socket = None;
        }
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
        self.stopping = Some(Instant::now() + grace);
    }

    fn reap(&mut self) {
        loop {
            // WUNTRACED: a stopped worker (SIGSTOP from outside, or a reaper
            // made to stop itself) would otherwise hold its slot unseen.
            match waitpid(
                None::<Pid>,
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED),
            ) {
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
                    *self
                        .counters
                        .worker_exits
                        .entry(ended.category.to_string())
                        .or_default() += 1;
                    if let Some(record) = ended.record {
                        self.recent.push_front((ended.ended_at, record));
                        self.recent.truncate(RECENT_EXITS);
                    } else if !ended.became_ready && self.stopping.is_none() {
                        // A pool worker died before it was ready: back off.
                        if let Some(l) = self
                            .listeners
                            .iter_mut()
                            .find(|l| l.config.name == ended.listener)
                        {
                            l.backoff_until = Some(Instant::now() + POOL_BACKOFF);
                        }
                    }
                }
            }
        }
    }

    /// Keeps each listener's pool at its size.
    fn replenish_pools(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if l.socket.is_none() || l.config.shader_cache_dir.is_some() {
                continue;
            }
            if let Some(until) = l.backoff_until {
                if Instant::now() < until {
                    continue;
                }
                l.backoff_until = None;
            }
            let (ready, starting) = self.workers.pool_counts(&l.config.name);
            for _ in (ready + starting)..l.config.pool {
                if self.spawn(i, Role::Pool { ready: false }, 0).is_none() {
                    self.listeners[i].backoff_until = Some(Instant::now() + POOL_BACKOFF);
                    break;
                }
            }
        }
    }

    fn spawn(&mut self, listener: usize, role: Role, uid: u32) -> Option<u32> {
        let l = &self.listeners[listener];
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
        self.workers.insert(pid, &name, ours, log, role);
        if let Some(w) = self.workers.get_mut(pid) {
            w.cgroup = cgroup;
        }
        debug!(worker = pid, listener = %name, "worker started");
        Some(pid)
    }

    fn accept_all(&mut self, i: usize) {
        loop {
            let Some(socket) = &self.listeners[i].socket else {
                return;
            };
            match socket.accept() {
                Ok(Some(stream)) => {
                    let l = &mut self.listeners[i];
                    l.accept.succeeded(&l.config.name);
                    self.admit(i, stream);
                }
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued.
                    let l = &mut self.listeners[i];
                    l.accept.failed(&l.config.name, &e);
                    return;
                }
            }
            if let Some(max) = self.settings.max_clients {
                if self.counters.clients_accepted >= max {
                    info!("client budget used: no new clients");
                    for l in &mut self.listeners {
                        l.socket = None;
                    }
                    return;
                }
            }
        }
    }

    fn refuse(&mut self, reason: &'static str, client: &ClientInfo) {
        if self.refusals.first(reason, Instant::now()) {
            warn!(listener = %client.listener, peer_pid = client.pid, uid = client.uid,
                  gid = client.gid, "client refused: {reason}");
        }
        *self
            .counters
            .clients_refused
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// Checks a new connection against the listener's peers and the caps,
    /// then keeps it until its first byte.
    fn admit(&mut self, i: usize, stream: UnixStream) {
        let l = &self.listeners[i];
        let (pid, uid, gid) = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => (c.pid(), c.uid(), c.gid()),
            Err(e) => {
                warn!(listener = %l.config.name, error = %e, "no peer credentials; closing");
                return;
            }
        };
        let client = ClientInfo {
            client_id: self.next_client_id,
            pid,
            uid,
            gid,
            listener: l.config.name.clone(),
        };
        self.next_client_id += 1;
        let cfg = &l.config;
        let restricted = !cfg.allowed_uids.is_empty() || !cfg.allowed_gids.is_empty();
        if restricted && !cfg.allowed_uids.contains(&uid) && !cfg.allowed_gids.contains(&gid) {
            return self.refuse("peer not allowed", &client);
        }
        let server = &self.settings.config.server;
        let (serving, serving_uid) = self.workers.serving_counts(uid);
        let waiting_uid = self.waiting.iter().filter(|w| w.client.uid == uid).count() as u32;
        let total = serving + self.waiting.len() as u32;
        if total >= server.max_clients {
            return self.refuse("max_clients reached", &client);
        }
        if serving_uid + waiting_uid >= server.max_clients_per_uid {
            return self.refuse("max_clients_per_uid reached", &client);
        }
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(error = %e, "client socket");
            return;
        }
        self.counters.clients_accepted += 1;
        debug!(
            client = client.client_id,
            peer_pid = pid,
            uid,
            gid,
            "client waiting for its first byte"
        );
        self.waiting.push(Waiting {
            stream,
            client,
            since: Instant::now(),
        });
    }

    /// A waiting client became readable: hand it to a worker, or drop it if
    /// it only hung up.
    fn check_waiting(&mut self, i: usize) {
        let mut byte = [0u8; 1];
        let fd = self.waiting[i].stream.as_raw_fd();
        match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Ok(0) | Err(_) => {
                let w = self.waiting.swap_remove(i);
                self.counters.closed_before_first_byte += 1;
                debug!(client = w.client.client_id, "closed before its first byte");
            }
            Ok(_) => {
                let w = self.waiting.swap_remove(i);
                self.hand_over(w);
            }
        }
    }

    fn hand_over(&mut self, w: Waiting) {
        let Some(li) = self
            .listeners
            .iter()
            .position(|l| l.config.name == w.client.listener)
        else {
            return self.refuse("listener removed", &w.client);
        };
        let from_pool = self.workers.take_ready(&w.client.listener);
        let pid =
            match from_pool.or_else(|| self.spawn(li, Role::Pool { ready: false }, w.client.uid)) {
                Some(pid) => pid,
                None => return self.refuse("no worker could be started", &w.client),
            };
        if let Err(e) = w.stream.set_nonblocking(false) {
            warn!(error = %e, "client socket");
        }
        let limits = self.listeners[li].limits;
        let attach = BrokerMsg::Attach {
            client: w.client.clone(),
            limits,
        };
        let Some(worker) = self.workers.get_mut(pid) else {
            return;
        };
        let sent = worker
            .channel
            .as_ref()
            .map(|c| c.send(&attach, &[w.stream.as_fd()]));
        if !matches!(sent, Some(Ok(()))) {
            error!(
                client = w.client.client_id,
                worker = pid,
                "cannot hand over client"
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            return;
        }
        let c = &w.client;
        info!(client = c.client_id, worker = pid, peer_pid = c.pid, uid = c.uid, gid = c.gid,
              listener = %c.listener, pooled = from_pool.is_some(), "client accepted");
        self.workers.attach(pid, w.client, w.since);
    }

    /// Accepts admin connections, refusing peers outside root, our user
    /// and the admin group; what is admitted is served by [`Self::serve_admin`].
    fn accept_admin(&mut self) {
        // Bounded, so that a flood of connections cannot hold the loop.
        for _ in 0..64 {
            let Some(admin) = &self.admin else { return };
            let stream = match admin.accept() {
                Ok(Some(s)) => {
                    self.admin_accept.succeeded("admin");
                    s
                }
                Ok(None) => return,
                Err(e) => return self.admin_accept.failed("admin", &e),
            };
            let peer = match admin::Peer::of(&stream) {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "admin connection without peer credentials; closed");
                    continue;
                }
            };
            match self.admin_access.check(&peer, crate::procfs::process_ids) {
                Ok(why) => {
                    debug!(peer_pid = peer.pid, uid = peer.uid, gid = peer.gid, admitted = ?why,
                           "admin connection");
                    self.admin_conns.add(stream, peer, Instant::now());
                }
                Err(e) => {
                    if self
                        .refusals
                        .first("admin request from outside the admin group", Instant::now())
                    {
                        warn!(
                            peer_pid = peer.pid,
                            uid = peer.uid,
                            gid = peer.gid,
                            "admin request refused (root, the broker's user and the admin \
                               group only): {e}"
                        );
                    }
                }
            }
        }
    }

    /// An admin connection is ready: read its request, or write its answer.
    fn serve_admin(&mut self, id: u64) {
        if !self.admin_conns.ready(id) {
            return;
        }
        let now = Instant::now();
        let serving = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.role, Role::Serving { .. }))
            .map(|(pid, _)| pid)
            .collect::<Vec<_>>();
        self.worker_memory.refresh(serving, now);
        let mut reply = match serde_json::to_vec(&self.status()) {
            Ok(json) => json,
            Err(e) => {
                error!(error = %e, "status as JSON");
                Vec::new()
            }
        };
        reply.push(b'\n');
        self.admin_conns.answer(id, reply, now);
    }

    /// The broker's state for `vtestd status` (workers' memory as last
    /// read for an admin request).
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                let (ready, starting) = self.workers.pool_counts(&l.config.name);
                ListenerStatus {
                    name: l.config.name.clone(),
                    path: l.config.path.display().to_string(),
                    backend: format!("{:?}", l.config.backend).to_lowercase(),
                    pool_target: l.config.pool,
                    pool_ready: ready,
                    pool_starting: starting,
                    clients: self.workers.serving_count(&l.config.name),
                    waiting: self
                        .waiting
                        .iter()
                        .filter(|w| w.client.listener == l.config.name)
                        .count() as u32,
                }
            })
            .collect();
        let mut clients: Vec<ClientStatus> = self
            .waiting
            .iter()
            .map(|w| client_status(&w.client, "waiting", None, w.since, Default::default()))
            .collect();
        for (pid, w) in self.workers.iter() {
            if let Role::Serving { client, since } = &w.role {
                let mut c = client_status(client, "serving", Some(pid), *since, w.stats.clone());
                c.memory = self.worker_memory.get(pid);
                clients.push(c);
            }
        }
        clients.sort_by_key(|c| c.client_id);
        let recent_exits = self
            .recent
            .iter()
            .map(|(at, r)| ExitRecord {
                secs_ago: now.duration_since(*at).as_secs_f64(),
                ..r.clone()
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            listeners,
            clients,
            recent_exits,
            counters: self.counters.clone(),
            memory_limits: self.memory_limits.clone(),
        }
    }

    /// Timers: hang watchdog, silent clients' idle limit, the stop sequence.
    fn periodic(&mut self) {
        for (reason, n, secs) in self.refusals.ended(Instant::now()) {
            warn!(
                count = n,
                secs, "client refused: {reason}: {n} more in {secs:.1} s"
            );
        }
        let hang = Duration::from_secs(self.settings.config.server.hang_timeout_secs);
        if !hang.is_zero() {
            self.workers.watchdog(hang);
        }
        let now = Instant::now();
        let listeners = &self.listeners;
        let before = self.waiting.len();
        self.waiting.retain(|w| {
            let idle_ms = listeners
                .iter()
                .find(|l| l.config.name == w.client.listener)
                .map_or(0, |l| l.limits.idle_timeout_ms);
            let keep = idle_ms == 0 || now.duration_since(w.since) < Duration::from_millis(idle_ms);
            if !keep {
                warn!(
                    client = w.client.client_id,
                    peer_pid = w.client.pid,
                    uid = w.client.uid,
                    "limit idle_timeout_ms exceeded before the first byte; closing"
                );
            }
            keep
        });
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            *self
                .counters
                .clients_refused
                .entry("idle before first byte".into())
                .or_default() += dropped as u64;
        }
        if let Some(deadline) = self.stopping {
            if now >= deadline && self.terminated_at.is_none() {
                if !self.waiting.is_empty() {
                    info!(
                        connections = self.waiting.len(),
                        "grace period over: closing connections that never sent a byte"
                    );
                    self.counters.closed_before_first_byte += self.waiting.len() as u64;
                    self.waiting.clear();
                }
                let serving = self.workers.pids();
                if !serving.is_empty() {
                    info!(workers = serving.len(), "grace period over: ending workers");
                }
                for pid in serving {
                    self.workers.end(
                        pid,
                        Signal::SIGTERM,
                        "shutdown",
                        "ended by the broker's stop after the grace period",
                    );
                }
                self.terminated_at = Some(now);
            }
            if let Some(t) = self.terminated_at {
                if now.duration_since(t) >= KILL_AFTER {
                    for pid in self.workers.pids() {
                        warn!(worker = pid, "worker did not stop; killing");
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                    self.terminated_at = Some(now);
                }
            }
        }
    }
}

fn client_status(
    c: &ClientInfo,
    state: &str,
    worker: Option<u32>,
    since: Instant,
    stats: vtest_control::SessionStats,
) -> ClientStatus {
    ClientStatus {
        client_id: c.client_id,
        listener: c.listener.clone(),
        peer_pid: c.pid,
        uid: c.uid,
        gid: c.gid,
        state: state.to_string(),
        worker_pid: worker,
        connected_secs: since.elapsed().as_secs_f64(),
        stats,
        memory: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_streak_with_a_count() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert!(r.first("peer not allowed", t0));
        for i in 1..=99 {
            assert!(!r.first("peer not allowed", t0 + Duration::from_millis(i)));
        }
        // Another reason has its own streak.
        assert!(r.first("max_clients reached", t0));
        assert!(r.ended(t0 + Duration::from_millis(500)).is_empty());
        let ended = r.ended(t0 + Duration::from_millis(1200));
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!((ended[0].0, ended[0].1), ("peer not allowed", 99));
        // Both streaks are over: the next refusal is logged in full again.
        assert!(r.first("peer not allowed", t0 + Duration::from_secs(2)));
        assert!(r.first("max_clients reached", t0 + Duration::from_secs(2)));
        // A long streak is summarised every REFUSAL_SUMMARY while it lasts.
        let mut t = t0 + Duration::from_secs(2);
        let mut summaries = 0;
        for _ in 0..300 {
            t += Duration::from_millis(100);
            r.first("peer not allowed", t);
            summaries += r.ended(t).len();
        }
        assert_eq!(summaries, 3, "30 s of refusals: one summary per 10 s");
    }
}
