//! Starting a worker: fork+exec of our own binary with a clean environment.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::shader_cache::{self, ShaderCache};

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

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The vtestd binary.
    pub program: PathBuf,
    /// Arguments, e.g. `["worker", "--use-gles"]`.
    pub args: Vec<OsString>,
    /// Mesa's on-disk shader cache of the listener (per client uid where
    /// its scope says so); `None` disables it.
    pub shader_cache: Option<ShaderCache>,
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
            if passed_to_workers(&key, &value) {
                cmd.env(&key, &value);
            }
        }
        // A cache that cannot be prepared costs speed, not service.
        let cache_dir = self
            .shader_cache
            .as_ref()
            .and_then(|cache| cache.prepare_or_warn(client_uid));
        let max_bytes = self.shader_cache.as_ref().map_or(0, |c| c.max_bytes);
        for (var, value) in shader_cache::worker_env(cache_dir.as_deref(), max_bytes) {
            match value {
                Some(v) => cmd.env(var, v),
                None => cmd.env_remove(var),
            };
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

/// Whether the broker's variable `key` reaches workers: Mesa's and
/// logging's knobs do, the end-to-end tests' `VTESTD_TEST_*` hooks only in
/// a build with the `test-hooks` feature (never a package's), nothing else.
fn passed_to_workers(key: &OsStr, value: &OsStr) -> bool {
    let Some(name) = key.to_str() else {
        return false;
    };
    let test_hook = cfg!(feature = "test-hooks") && name.starts_with("VTESTD_TEST_");
    let passed = test_hook || PASSED_PREFIXES.iter().any(|p| name.starts_with(p));
    // A server started from a client's shell must not render through itself.
    let loops = name == "GALLIUM_DRIVER" && value == "virpipe";
    passed && !loops
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    fn passed(key: &str, value: &str) -> bool {
        passed_to_workers(OsStr::new(key), OsStr::new(value))
    }

    #[test]
    fn only_mesa_and_logging_variables_reach_workers() {
        for key in [
            "MESA_DEBUG",
            "LIBGL_ALWAYS_SOFTWARE",
            "GALLIUM_HUD",
            "LP_NUM_THREADS",
            "EGL_PLATFORM",
            "__EGL_VENDOR_LIBRARY_DIRS",
            "VIRGL_DEBUG",
            "RUST_LOG",
            "LD_LIBRARY_PATH",
        ] {
            assert!(passed(key, "1"), "{key}");
        }
        for key in [
            "HOME",
            "PATH",
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "SSH_AUTH_SOCK",
            "DISPLAY",
            "XDG_RUNTIME_DIR",
            "mesa_debug",
        ] {
            assert!(!passed(key, "1"), "{key}");
        }
        assert!(!passed_to_workers(
            OsStr::from_bytes(b"MESA_\xff"),
            OsStr::new("1")
        ));
    }

    #[test]
    fn a_server_never_renders_through_itself() {
        assert!(!passed("GALLIUM_DRIVER", "virpipe"));
        assert!(passed("GALLIUM_DRIVER", "llvmpipe"));
    }

    #[test]
    fn test_hooks_pass_only_in_a_test_hooks_build() {
        let hooks = passed("VTESTD_TEST_FAKE_HANG", "1");
        assert_eq!(hooks, cfg!(feature = "test-hooks"));
    }
}
