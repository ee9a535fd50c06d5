//! Socket activation without systemd: a supervisor that owns the listening
//! socket, as a `.socket` unit does, and starts brokers on it one after the
//! other (`LISTEN_FDS=1`, `LISTEN_FDNAMES=default`, fd 3), so that a test
//! can restart or kill the broker while clients are connected and queued.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::server::{unique_dir, vtestd_bin};

/// The listening socket and the configuration brokers start with.
pub struct Activation {
    pub dir: PathBuf,
    pub socket: PathBuf,
    listener: UnixListener,
    config: PathBuf,
}

/// One broker started on the activation socket.
pub struct Broker {
    child: Option<Child>,
    pub log: PathBuf,
    pub admin: PathBuf,
}

impl Activation {
    /// Binds the socket; brokers get `server` appended to `[server]` and
    /// one listener named `default` with `pool` workers.
    pub fn new(server: &str, pool: u32) -> Activation {
        let dir = unique_dir("activation");
        let socket = dir.join(".virgl_test");
        let listener = UnixListener::bind(&socket).expect("bind the activation socket");
        let config = dir.join("vtestd.toml");
        fs::write(
            &config,
            format!(
                "[server]\nadmin_socket = \"{admin}\"\ncgroups = false\n{server}\n\n\
                 [[listener]]\nname = \"default\"\npath = \"{unused}\"\npool = {pool}\n",
                admin = dir.join("admin.sock").display(),
                unused = dir.join("not-bound.sock").display(),
            ),
        )
        .unwrap();
        Activation {
            dir,
            socket,
            listener,
            config,
        }
    }

    /// Starts a broker on the socket and waits until it serves it.
    pub fn start_broker(&self, tag: &str) -> Broker {
        let log = self.dir.join(format!("broker-{tag}.log"));
        let fd = self.listener.as_raw_fd();
        // The socket reaches the shell (not close-on-exec for this one
        // spawn: the tests run on one thread), which moves it to fd 3.
        fcntl(&self.listener, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let moved = if fd == 3 {
            String::new()
        } else {
            format!("exec 3<&{fd} {fd}<&-; ")
        };
        let script = format!(
            "{moved}export LISTEN_FDS=1 LISTEN_FDNAMES=default LISTEN_PID=$$; exec \"$0\" \"$@\""
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(vtestd_bin())
            .arg("serve")
            .arg(format!("--config={}", self.config.display()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn();
        fcntl(&self.listener, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        let broker = Broker {
            child: Some(child.expect("start a broker")),
            log,
            admin: self.dir.join("admin.sock"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !broker.log_text().contains("socket passed by systemd") {
            assert!(
                Instant::now() < deadline,
                "broker {tag} did not take the socket:\n{}",
                broker.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal the broker");
    }

    /// Waits up to `limit` for the broker to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `vtestd status --json` of this broker.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(vtestd_bin())
            .args(["status", "--json"])
            .arg(format!("--admin-socket={}", self.admin.display()))
            .output()
            .expect("vtestd status");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
