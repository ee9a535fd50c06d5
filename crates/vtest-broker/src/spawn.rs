//! Starting a worker: fork+exec of our own binary with a clean environment.

use std::ffi::{OsStr, OsString};
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
            if passed_to_workers(&key, &value) {
                cmd.env(&key, &value);
            }
        }
        let cache_dir = match &self.shader_cache_dir {
            Some(base) => {
                let dir = base.join(format!("uid-{client_uid}"));
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)?;
                Some(dir)
            }
            None => None,
        };
        for (var, value) in shader_cache_env(cache_dir) {
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

/// Mesa's on-disk shader cache is state shared between the processes that
/// use it: off unless opted in, and then in the client uid's own directory
/// `dir`. What to set (`Some`) and remove (`None`), in order, whatever the
/// broker's own environment says (a cache directory there would be shared
/// by every client, and bound writable into each worker's sandbox).
fn shader_cache_env(dir: Option<PathBuf>) -> Vec<(&'static str, Option<OsString>)> {
    let mut env: Vec<(&'static str, Option<OsString>)> =
        SHADER_CACHE_VARS.iter().map(|var| (*var, None)).collect();
    match dir {
        Some(dir) => {
            env.push(("MESA_SHADER_CACHE_DISABLE", None));
            env.push(("MESA_SHADER_CACHE_DIR", Some(dir.into_os_string())));
            // One file, opened while the worker initialises (files cannot
            // be opened once it serves): Mesa 22.3 and 25 both have this mode.
            env.push(("MESA_DISK_CACHE_SINGLE_FILE", Some("1".into())));
        }
        None => env.push(("MESA_SHADER_CACHE_DISABLE", Some("true".into()))),
    }
    env
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

    #[test]
    fn the_shader_cache_is_off_unless_a_directory_is_given() {
        let off = shader_cache_env(None);
        assert!(SHADER_CACHE_VARS.iter().all(|v| off.contains(&(*v, None))));
        assert_eq!(
            off.last(),
            Some(&("MESA_SHADER_CACHE_DISABLE", Some("true".into())))
        );
        let on = shader_cache_env(Some(PathBuf::from("/var/cache/vtestd/uid-1000")));
        let set: Vec<_> = on.iter().filter(|(_, v)| v.is_some()).collect();
        assert_eq!(
            set,
            [
                &(
                    "MESA_SHADER_CACHE_DIR",
                    Some("/var/cache/vtestd/uid-1000".into())
                ),
                &("MESA_DISK_CACHE_SINGLE_FILE", Some("1".into())),
            ]
        );
        assert!(on.contains(&("MESA_SHADER_CACHE_DISABLE", None)));
        // Removed before set: the broker's own MESA_SHADER_CACHE_DIR never wins.
        let removed = on
            .iter()
            .position(|e| e == &("MESA_SHADER_CACHE_DIR", None));
        let set = on
            .iter()
            .position(|(k, v)| *k == "MESA_SHADER_CACHE_DIR" && v.is_some());
        assert!(removed < set);
    }
}
