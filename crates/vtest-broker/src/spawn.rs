//! Starting a worker: fork+exec of our own binary with a clean environment.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// Environment variables passed through to workers (Mesa and logging knobs);
/// everything else is dropped.
const PASSED_PREFIXES: &[&str] = &[
    "MESA_",
    "LIBGL_",
    "GALLIUM_",
    "LP_",
    "EGL_",
    "__EGL_",
    "VIRGL_",
    "RUST_LOG",
    "LD_LIBRARY_PATH",
];

/// Mesa's variables that point its disk caches at a directory.
const SHADER_CACHE_VARS: &[&str] = &[
    "MESA_SHADER_CACHE_DIR",
    "MESA_GLSL_CACHE_DIR",
    "MESA_SHADER_CACHE_MAX_SIZE",
    "MESA_DISK_CACHE_SINGLE_FILE",
    "MESA_DISK_CACHE_MULTI_FILE",
    "MESA_DISK_CACHE_DATABASE",
];

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The vtestd binary.
    pub program: PathBuf,
    /// Arguments, e.g. `["worker", "--use-gles"]`.
    pub args: Vec<OsString>,
    /// Mesa's on-disk shader cache, opted in: each client uid gets its own
    /// subdirectory, so tenants with different uids never share entries.
    /// `None` (the default) disables the cache.
    pub shader_cache_dir: Option<PathBuf>,
}

impl WorkerCommand {
    /// Starts a worker whose stdin is its end of the control channel.
    ///
    /// stdin is the one inherited fd, which avoids passing fd numbers
    /// around; stdout is /dev/null; stderr is a pipe whose read end is
    /// returned (non-blocking): the broker relays the worker's log lines,
    /// escaped, so that a compromised worker cannot write into the
    /// broker's log (or journal stream) as the broker.
    pub(crate) fn spawn(
        &self,
        control: OwnedFd,
        client_uid: u32,
    ) -> std::io::Result<(u32, OwnedFd)> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .stdin(Stdio::from(control))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in std::env::vars_os() {
            let Some(name) = key.to_str() else { continue };
            // Test hooks exist only in debug builds (never in packages).
            let test_hook = cfg!(debug_assertions) && name.starts_with("VTESTD_TEST_");
            let passed = test_hook || PASSED_PREFIXES.iter().any(|p| name.starts_with(p));
            // A server started from a client's shell must not render through itself.
            let loops = name == "GALLIUM_DRIVER" && value == "virpipe";
            if passed && !loops {
                cmd.env(&key, &value);
            }
        }
        // Mesa's on-disk shader cache is state shared between the processes
        // that use it: off unless opted in, and then one directory per uid.
        match &self.shader_cache_dir {
            Some(base) => {
                let dir = base.join(format!("uid-{client_uid}"));
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)?;
                for var in SHADER_CACHE_VARS {
                    cmd.env_remove(var);
                }
                cmd.env_remove("MESA_SHADER_CACHE_DISABLE");
                cmd.env("MESA_SHADER_CACHE_DIR", dir);
                // One file, opened while the worker initialises (files
                // cannot be opened once it serves): Mesa 22.3 and 25 both
                // have this mode.
                cmd.env("MESA_DISK_CACHE_SINGLE_FILE", "1");
            }
            None => {
                // Whatever the broker's own environment says: a cache
                // directory there would be shared by every client (and
                // bound writable into each worker's sandbox).
                for var in SHADER_CACHE_VARS {
                    cmd.env_remove(var);
                }
                cmd.env("MESA_SHADER_CACHE_DISABLE", "true");
            }
        }
        let mut child = cmd.spawn()?;
        let log = OwnedFd::from(
            child
                .stderr
                .take()
                .ok_or_else(|| std::io::Error::other("no stderr pipe for the worker"))?,
        );
        let flags = fcntl(&log, FcntlArg::F_GETFL)?;
        fcntl(
            &log,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )?;
        // Reaped through SIGCHLD by pid; dropping `Child` neither waits nor kills.
        Ok((child.id(), log))
    }
}
