//! Resource limits of a worker.

use nix::sys::resource::{setrlimit, Resource};

use crate::SandboxError;

/// Limits set on every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// Open files (fds).
    pub open_files: u64,
    /// Data segment plus private writable mappings, in bytes.
    pub data_bytes: u64,
    /// The largest file, in bytes: RLIMIT_FSIZE, which also bounds each
    /// memfd (`ftruncate` beyond it fails with EFBIG), whose pages
    /// RLIMIT_DATA does not count.
    pub file_bytes: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            open_files: 1024,
            data_bytes: 8 << 30,
            file_bytes: 1 << 30,
        }
    }
}

/// No core dumps: a crashing worker holds a client's data, and dumping it
/// would also delay its end.
pub fn no_core_dumps() -> nix::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
}

/// Applies `limits` (soft = hard, so they cannot be raised again).
pub fn apply(limits: &Rlimits) -> Result<(), SandboxError> {
    let set = |resource, value| {
        setrlimit(resource, value, value).map_err(|source| SandboxError::Rlimit {
            resource: format!("{resource:?}"),
            source,
        })
    };
    no_core_dumps().map_err(|source| SandboxError::Rlimit {
        resource: "RLIMIT_CORE".into(),
        source,
    })?;
    set(Resource::RLIMIT_NOFILE, limits.open_files)?;
    set(Resource::RLIMIT_DATA, limits.data_bytes)?;
    // Past RLIMIT_FSIZE the kernel also sends SIGXFSZ, whose default action
    // kills: ignored, so the call fails with EFBIG and the worker reports it.
    // SAFETY: SIG_IGN installs no handler code.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .map_err(|source| SandboxError::Rlimit {
        resource: "SIGXFSZ".into(),
        source,
    })?;
    set(Resource::RLIMIT_FSIZE, limits.file_bytes)
}
