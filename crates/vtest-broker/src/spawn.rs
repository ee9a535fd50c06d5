//! Starting a worker: fork+exec of our own binary with a clean environment.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
}

impl WorkerCommand {
    /// Starts a worker whose stdin is its end of the control channel.
    ///
    /// stdin is the one inherited fd (besides stderr for logs), which avoids
    /// passing fd numbers around; stdout is /dev/null.
    pub(crate) fn spawn(&self, control: OwnedFd) -> std::io::Result<u32> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .stdin(Stdio::from(control))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in std::env::vars_os() {
            let Some(name) = key.to_str() else { continue };
            let passed = PASSED_PREFIXES.iter().any(|p| name.starts_with(p));
            // A server started from a client's shell must not render through itself.
            let loops = name == "GALLIUM_DRIVER" && value == "virpipe";
            if passed && !loops {
                cmd.env(&key, &value);
            }
        }
        // Mesa's on-disk shader cache is shared state between tenants.
        cmd.env("MESA_SHADER_CACHE_DISABLE", "true");
        let child = cmd.spawn()?;
        // Reaped through SIGCHLD by pid; dropping `Child` neither waits nor kills.
        Ok(child.id())
    }
}
