//! The event loop.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::{error, info, warn};
use vtest_control::{BrokerMsg, Channel, ClientInfo};

use crate::listener::Listener;
use crate::workers::Workers;
use crate::{BrokerError, WorkerCommand};

/// How long workers get to finish after SIGTERM before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the broker serves.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The listening socket's path.
    pub socket_path: PathBuf,
    /// Listener name reported to workers and in logs.
    pub listener_name: String,
    /// How workers are started.
    pub worker: WorkerCommand,
    /// Stop accepting after this many clients and exit when they are done
    /// (the reference's `--no-loop-or-fork` serves one client).
    pub max_clients: Option<u64>,
}

/// A running broker.
pub struct Broker {
    config: BrokerConfig,
    listener: Option<Listener>,
    signals: SignalFd,
    workers: Workers,
    next_client_id: u64,
}

enum Event {
    Signal,
    Accept,
    Worker(u32),
}

impl Broker {
    /// Binds the socket and sets up signal handling (SIGINT, SIGTERM and
    /// SIGCHLD arrive through a signalfd).
    pub fn new(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
            mask.add(s);
        }
        mask.thread_block().map_err(BrokerError::Signals)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(BrokerError::Signals)?;
        let listener = Listener::bind(&config.socket_path)?;
        info!(socket = %listener.path().display(), "listening");
        Ok(Broker {
            config,
            listener: Some(listener),
            signals,
            workers: Workers::default(),
            next_client_id: 1,
        })
    }

    /// Serves until SIGINT/SIGTERM (or the client budget is used up), then
    /// ends every worker and removes the socket.
    pub fn run(mut self) -> Result<(), BrokerError> {
        loop {
            for event in self.wait()? {
                match event {
                    Event::Signal => {
                        if self.handle_signals() {
                            self.shutdown();
                            return Ok(());
                        }
                    }
                    Event::Accept => self.accept_all(),
                    Event::Worker(pid) => self.workers.drain(pid),
                }
            }
            if self.listener.is_none() && self.workers.len() == 0 {
                info!("client budget used; exiting");
                return Ok(());
            }
        }
    }

    fn wait(&self) -> Result<Vec<Event>, BrokerError> {
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let mut events = vec![Event::Signal];
        if let Some(l) = &self.listener {
            fds.push(PollFd::new(l.socket.as_fd(), PollFlags::POLLIN));
            events.push(Event::Accept);
        }
        for (pid, channel) in self.workers.channels() {
            fds.push(PollFd::new(channel.as_fd(), PollFlags::POLLIN));
            events.push(Event::Worker(pid));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
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

    /// Reaps children; true when asked to stop.
    fn handle_signals(&mut self) -> bool {
        let mut stop = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                Ok(s @ (Signal::SIGINT | Signal::SIGTERM)) => {
                    info!(signal = %s, "stopping");
                    stop = true;
                }
                _ => {}
            }
        }
        stop
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => self.workers.reaped(status),
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok(Some(stream)) => self.start_worker(stream),
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next event.
                    error!(error = %e, "accept failed");
                    return;
                }
            }
            if let Some(max) = self.config.max_clients {
                if self.next_client_id > max {
                    self.listener = None;
                }
            }
        }
    }

    fn start_worker(&mut self, stream: std::os::unix::net::UnixStream) {
        let client_id = self.next_client_id;
        self.next_client_id += 1;
        let (pid, uid, gid) = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => (c.pid(), c.uid(), c.gid()),
            Err(e) => {
                warn!(client = client_id, error = %e, "no peer credentials; closing");
                return;
            }
        };
        let client = ClientInfo {
            client_id,
            pid,
            uid,
            gid,
            listener: self.config.listener_name.clone(),
        };
        let (ours, theirs) = match Channel::pair() {
            Ok(pair) => pair,
            Err(e) => {
                error!(client = client_id, error = %e, "control channel; closing client");
                return;
            }
        };
        let worker_pid = match self.config.worker.spawn(theirs.into_fd(), uid) {
            Ok(p) => p,
            Err(e) => {
                error!(client = client_id, error = %e, "cannot start worker; closing client");
                return;
            }
        };
        // Queued in the channel; the worker reads it once initialised.
        let attach = BrokerMsg::Attach {
            client: client.clone(),
        };
        if let Err(e) = ours.send(&attach, &[stream.as_fd()]) {
            error!(client = client_id, worker = worker_pid, error = %e, "cannot hand over client");
            let _ = kill(Pid::from_raw(worker_pid as i32), Signal::SIGKILL);
        }
        info!(
            client = client_id,
            worker = worker_pid,
            peer_pid = pid,
            uid,
            gid,
            "client accepted"
        );
        self.workers.insert(worker_pid, ours, client);
    }

    /// Stops accepting, asks workers to stop, kills the stragglers.
    fn shutdown(&mut self) {
        self.listener = None;
        for pid in self.workers.pids() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.workers.len() > 0 && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in self.workers.pids() {
            warn!(worker = pid, "worker did not stop in time; killing");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        while self.workers.len() > 0 {
            match waitpid(None::<Pid>, None) {
                Ok(status) => self.workers.reaped(status),
                Err(_) => break,
            }
        }
        info!("stopped");
    }
}
