//! Starting a vtest server under test on a private socket.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// Our `vtestd serve`, built by cargo for this test run.
    Vtestd,
    /// The reference `virgl_test_server --use-egl-surfaceless` (Debian's virgl-server).
    Reference,
}

impl ServerKind {
    /// The server the suite exercises: vtestd, unless `VTESTD_TEST_SERVER=reference`
    /// asks for the reference server (used to check the tests themselves).
    pub fn under_test() -> ServerKind {
        match std::env::var("VTESTD_TEST_SERVER").as_deref() {
            Ok("reference") => ServerKind::Reference,
            _ => ServerKind::Vtestd,
        }
    }
}

/// The renderer backend both servers use: `VTESTD_TEST_BACKEND` =
/// `surfaceless` (the default), `gles` or `render-node` (the first
/// `/dev/dri/renderD*`, or `VTESTD_TEST_RENDER_NODE`), so that every suite
/// can run on each backend.
pub fn backend_args() -> Vec<String> {
    match std::env::var("VTESTD_TEST_BACKEND").as_deref() {
        Ok("gles") => vec!["--use-gles".into()],
        Ok("render-node") => {
            let node = std::env::var("VTESTD_TEST_RENDER_NODE")
                .unwrap_or_else(|_| "/dev/dri/renderD128".into());
            vec![format!("--rendernode={node}")]
        }
        Ok("surfaceless") | Err(_) => Vec::new(),
        Ok(other) => panic!("VTESTD_TEST_BACKEND={other}: surfaceless, gles or render-node"),
    }
}

/// Path of the vtestd binary cargo built for the integration tests.
pub fn vtestd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vtestd"))
}

/// A fresh, empty directory under /tmp, removed by [`Server`]'s drop.
pub fn unique_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(format!("/tmp/vtestd-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// A fresh shader cache directory for one server, outside /tmp.
pub fn shader_cache_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir =
        super::mesa::outputs_root().join(format!("shader-cache-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// A running server; killed (SIGTERM, then SIGKILL) and its directory removed on drop.
pub struct Server {
    pub kind: ServerKind,
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// More directories to remove on drop (a configuration file's).
    extra_dirs: Vec<PathBuf>,
}

impl Server {
    /// Starts a server of `kind` with default options on `<dir>/.virgl_test`.
    pub fn start(kind: ServerKind) -> Server {
        Self::start_with(kind, &[])
    }

    /// Starts a server with extra arguments (after the socket path).
    pub fn start_with(kind: ServerKind, extra: &[&str]) -> Server {
        Self::start_with_env(kind, extra, &[])
    }

    /// Starts vtestd with a configuration file holding `toml` (written into
    /// the server's private directory) and extra arguments.
    pub fn start_with_config(toml: &str, extra: &[&str]) -> Server {
        let dir = unique_dir("config");
        let path = dir.join("vtestd.toml");
        fs::write(&path, toml).expect("write config");
        let arg = format!("--config={}", path.display());
        let mut args = vec![arg.as_str()];
        args.extend_from_slice(extra);
        let mut server = Self::start_with_env(ServerKind::Vtestd, &args, &[]);
        server.extra_dirs.push(dir);
        server
    }

    /// Starts a server with extra arguments and environment variables.
    pub fn start_with_env(kind: ServerKind, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let tag = match kind {
            ServerKind::Vtestd => "vtestd",
            ServerKind::Reference => "ref",
        };
        let dir = unique_dir(tag);
        let socket = dir.join(".virgl_test");
        let log = dir.join("server.log");
        let mut cache_dir = None;
        let mut cmd = match kind {
            ServerKind::Vtestd => {
                let mut c = Command::new(vtestd_bin());
                c.arg("serve");
                // A private admin socket; no pre-started workers unless the
                // test asks (so a server's children are its clients' workers).
                c.arg(format!(
                    "--admin-socket={}",
                    dir.join("admin.sock").display()
                ));
                if !extra.iter().any(|a| a.starts_with("--pool")) {
                    c.arg("--pool=0");
                }
                // The shader cache as in production, but this server's own
                // (outside /tmp, which workers cannot bind), so tests do not
                // share compiled shaders with each other or with earlier runs.
                if !extra.iter().any(|a| a.starts_with("--shader-cache")) {
                    let cache = shader_cache_dir(tag);
                    c.arg(format!("--shader-cache-dir={}", cache.display()));
                    cache_dir = Some(cache);
                }
                c.env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                );
                c
            }
            ServerKind::Reference => {
                let mut c = Command::new("virgl_test_server");
                c.arg("--use-egl-surfaceless");
                c
            }
        };
        cmd.arg(format!("--socket-path={}", socket.display()));
        cmd.args(backend_args());
        cmd.args(extra);
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null());
        cmd.stdout(Stdio::from(
            fs::File::create(dir.join("server.stdout")).unwrap(),
        ));
        cmd.stderr(Stdio::from(fs::File::create(&log).unwrap()));
        let child = cmd.spawn().expect("spawn server");
        let mut server = Server {
            kind,
            child: Some(child),
            dir,
            socket,
            log,
            extra_dirs: cache_dir.into_iter().collect(),
        };
        server.wait_ready();
        if kind == ServerKind::Vtestd {
            server.wait_probed(!extra.iter().any(|a| a.starts_with("--pool")));
        }
        server
    }

    /// vtestd starts one worker per listener before it serves anyone (its
    /// start-up probe). Waits for it, and without a pool for its end, so
    /// that a test's view of the broker's children is its clients' workers.
    fn wait_probed(&mut self, no_pool: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .log_text()
            .contains("a worker started with this listener's configuration")
        {
            if Instant::now() > deadline || !self.is_alive() {
                panic!(
                    "vtestd's start-up probe did not finish; log:\n{}",
                    self.log_text()
                );
            }
            sleep(Duration::from_millis(10));
        }
        if no_pool {
            let pid = self.pid();
            let until = Instant::now() + Duration::from_secs(5);
            while !super::procs::children(pid).is_empty() && Instant::now() < until {
                sleep(Duration::from_millis(10));
            }
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // vtestd binds and listens in one step; the reference's socket
            // file appears at bind(), before listen(), so it is probed.
            let ready = match self.kind {
                ServerKind::Vtestd => self.socket.exists(),
                ServerKind::Reference => UnixStream::connect(&self.socket).is_ok(),
            };
            if ready {
                return;
            }
            // Fail at once (not after 20 s) when the server has already exited.
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "server exited ({status}) before its socket {} appeared; log:\n{}",
                    self.socket.display(),
                    self.log_text()
                );
            }
            sleep(Duration::from_millis(20));
        }
        panic!(
            "server socket {} never appeared; log:\n{}",
            self.socket.display(),
            self.log_text()
        );
    }

    /// The socket the server listens on.
    /// Removes `dir` (a test's own files) together with the server's.
    pub fn also_remove(&mut self, dir: PathBuf) {
        self.extra_dirs.push(dir);
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The private directory holding the socket (bind it over /tmp for Mesa clients).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's (broker's) pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the server has written to stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `vtestd status --json` of this server.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(vtestd_bin())
            .args(["status", "--json", "--admin-socket"])
            .arg(self.dir.join("admin.sock"))
            .output()
            .expect("run vtestd status");
        assert!(
            out.status.success(),
            "vtestd status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Whether the server process is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Connects a raw stream to the server.
    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket).expect("connect to server")
    }

    /// A command that runs `program args...` in a private mount namespace where
    /// this server's directory is bind-mounted over /tmp, so Mesa's fixed
    /// `/tmp/.virgl_test` is this server's socket.
    pub fn client_command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /tmp && exec \"$@\"")
            .arg(&self.dir)
            .arg(program)
            .args(args);
        c.env("GALLIUM_DRIVER", "virpipe");
        c
    }

    /// Sends SIGTERM and waits for the server to exit; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- server log ({:?}) ---\n{}", self.kind, self.log_text());
        }
        let _ = fs::remove_dir_all(&self.dir);
        for dir in &self.extra_dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
