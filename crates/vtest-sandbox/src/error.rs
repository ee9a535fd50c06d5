//! Sandbox errors: a layer that should have applied did not.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("capabilities: {0}")]
    Capabilities(String),
    #[error("close inherited fds")]
    CloseFds(#[source] nix::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fork into the PID namespace")]
    Fork(#[source] nix::Error),
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    #[error("rlimit {resource}")]
    Rlimit {
        resource: String,
        #[source]
        source: nix::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("signal handler")]
    SignalHandler(#[source] nix::Error),
    #[error("{what} {path}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("a violation record of {len} bytes with the syscall number at {syscall_at} (at most {max} bytes, the number's 8 inside)", max = crate::violation::MAX_RECORD)]
    ViolationRecord { len: usize, syscall_at: usize },
}
