//! A private Xvfb display for the Mesa end-to-end tests.
//!
//! Mesa clients run in a private mount namespace whose /tmp is the server's
//! directory, so `/tmp/.X11-unix/X<n>` is not visible to them. That is fine:
//! on Linux Xlib/xcb connect to the *abstract* socket `@/tmp/.X11-unix/X<n>`
//! first, and abstract sockets belong to the network namespace, which the
//! clients share with us.

use std::fs;
use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A running `Xvfb :N`; killed by PID on drop.
pub struct Xvfb {
    display: u32,
    child: Option<Child>,
    log: PathBuf,
}

/// First display number tried; a few tries per process id spread parallel runs.
const FIRST_DISPLAY: u32 = 100;
const DISPLAY_RANGE: u32 = 400;

impl Xvfb {
    /// Starts `Xvfb :N -noreset -nolisten tcp -screen 0 1024x768x24` on a free
    /// display number and waits until it accepts connections.
    pub fn start() -> Xvfb {
        let mut errors = String::new();
        let base = std::process::id() % DISPLAY_RANGE;
        for i in 0..DISPLAY_RANGE {
            let n = FIRST_DISPLAY + (base + i * 7) % DISPLAY_RANGE;
            if display_in_use(n) {
                continue;
            }
            match Self::try_start(n) {
                Ok(x) => return x,
                Err(e) => {
                    errors.push_str(&format!(":{n}: {e}\n"));
                    if errors.len() > 8000 {
                        break;
                    }
                }
            }
        }
        panic!("could not start Xvfb on any display:\n{errors}");
    }

    fn try_start(n: u32) -> Result<Xvfb, String> {
        let log = std::env::temp_dir().join(format!("vtestd-xvfb-{}-{n}.log", std::process::id()));
        let child = Command::new("Xvfb")
            .arg(format!(":{n}"))
            .args([
                "-noreset",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "1024x768x24",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?,
            ))
            .spawn()
            .map_err(|e| format!("spawn Xvfb: {e}"))?;
        let mut x = Xvfb {
            display: n,
            child: Some(child),
            log,
        };
        let pid = x.pid();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = x.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // Most likely lost a race for the display number.
                let text = x.log_text();
                x.child = None;
                return Err(format!("Xvfb exited ({status}): {}", text.trim()));
            }
            // Ready once the lock file names our process and the socket answers.
            if lock_pid(n) == Some(pid) && connect_abstract(n).is_ok() {
                return Ok(x);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Xvfb :{n} not ready after 15 s; log: {}",
                    x.log_text().trim()
                ));
                // (drop kills it)
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// The display number N.
    pub fn number(&self) -> u32 {
        self.display
    }

    /// The value for `DISPLAY`, `:N`.
    pub fn display(&self) -> String {
        format!(":{}", self.display)
    }

    /// Xvfb's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Xvfb's stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether Xvfb is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// Whether something already holds display `n` (a lock file or a socket).
fn display_in_use(n: u32) -> bool {
    PathBuf::from(format!("/tmp/.X{n}-lock")).exists()
        || PathBuf::from(format!("/tmp/.X11-unix/X{n}")).exists()
        || match connect_abstract(n) {
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::ConnectionRefused && e.kind() != ErrorKind::NotFound,
        }
}

/// The pid written in `/tmp/.X<n>-lock`, if any.
fn lock_pid(n: u32) -> Option<u32> {
    fs::read_to_string(format!("/tmp/.X{n}-lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Connects to the abstract X socket `@/tmp/.X11-unix/X<n>`.
pub fn connect_abstract(n: u32) -> std::io::Result<UnixStream> {
    let addr = SocketAddr::from_abstract_name(format!("/tmp/.X11-unix/X{n}"))?;
    UnixStream::connect_addr(&addr)
}
