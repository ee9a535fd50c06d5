//! systemd's notification protocol (`sd_notify`): READY, STATUS, WATCHDOG,
//! STOPPING over the datagram socket named by `NOTIFY_SOCKET`.
//!
//! `sd-notify` reads the watchdog settings and spells the watchdog ping.
//! The socket is ours: `sd_notify::notify` sends blocking, takes no
//! abstract (`@`) address and reads `NOTIFY_SOCKET` at every call, which
//! would have to stay in the environment that workers are started from.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::debug;

pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `WATCHDOG_USEC`, when systemd watches us.
    watchdog: Option<Duration>,
    last_ping: Instant,
}

impl Notifier {
    /// From the environment, which it then clears (no child inherits it).
    pub(crate) fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET");
        // WATCHDOG_USEC, unless WATCHDOG_PID names another process.
        let watchdog = sd_notify::watchdog_enabled();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        let path = path?;
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name).ok()?,
            None => SocketAddr::from_pathname(std::path::Path::new(&path)).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        // systemd always reads, but a stuck reader must never block the broker.
        socket.set_nonblocking(true).ok()?;
        let watchdog = watchdog.map(|period| (period / 2).max(Duration::from_millis(100)));
        Some(Notifier {
            socket,
            addr,
            watchdog,
            last_ping: Instant::now(),
        })
    }

    pub(crate) fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            debug!(error = %e, "sd_notify");
        }
    }

    /// How often the event loop must wake up for the watchdog.
    pub(crate) fn interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Pings the watchdog when half its period has passed.
    pub(crate) fn ping_if_due(&mut self) {
        if let Some(every) = self.watchdog {
            if self.last_ping.elapsed() >= every {
                self.send(&NotifyState::Watchdog.to_string());
                self.last_ping = Instant::now();
            }
        }
    }
}
