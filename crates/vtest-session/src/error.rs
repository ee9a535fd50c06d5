//! Why a session ended badly. Every variant closes the client's connection.

use vtest_protocol::{CommandId, ProtocolError};

use crate::BackendError;

/// A process limit of the worker that a client's requests can exhaust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerResource {
    /// RLIMIT_NOFILE (`worker_open_files`).
    FileDescriptors,
    /// RLIMIT_DATA (`worker_memory_mib`).
    Memory,
}

impl std::fmt::Display for WorkerResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerResource::FileDescriptors => "file descriptors",
            WorkerResource::Memory => "memory",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("renderer context could not be created")]
    ContextFailed,
    #[error("first command was {0:?}, not CREATE_RENDERER")]
    ContextMissing(CommandId),
    #[error("invalid {command:?}: {reason}")]
    InvalidArgument { command: CommandId, reason: String },
    #[error("I/O error on the client socket")]
    Io(#[source] std::io::Error),
    /// The worker process ran out of something its rlimits bound (fds,
    /// memory) while serving `command`: the client's demand, not the socket.
    #[error("{command:?}: the worker ran out of {resource}")]
    WorkerExhausted {
        command: CommandId,
        resource: WorkerResource,
        #[source]
        source: std::io::Error,
    },
    #[error("limit {limit} exceeded: {value} > {max}")]
    LimitExceeded {
        limit: &'static str,
        value: u64,
        max: u64,
    },
    #[error("malformed request")]
    Protocol(#[from] ProtocolError),
    #[error("{command:?}")]
    Renderer {
        command: CommandId,
        #[source]
        source: BackendError,
    },
    /// `PROTOCOL_VERSION` after the client's first object: the renderer
    /// context, made by `since` (CONTEXT_INIT, or the first resource, sync or
    /// submission).
    #[error(
        "PROTOCOL_VERSION {requested} refused: version {version} is fixed since {since:?} \
         created the client's first objects (re-negotiation is allowed only before that)"
    )]
    Renegotiation {
        requested: u32,
        version: u32,
        since: CommandId,
    },
    #[error("resource handle {0} already exists")]
    ResourceExists(u32),
    #[error("{command:?} on unknown resource {handle}")]
    UnknownResource { command: CommandId, handle: u32 },
    #[error("{command:?} on unknown sync {id}")]
    UnknownSync { command: CommandId, id: u32 },
    #[error("unexpected {0:?}")]
    UnexpectedCommand(CommandId),
    /// The backend's process went away under the client (a Venus render
    /// server that crashed or was killed).
    #[error("the renderer ended: its render server connection hung up")]
    BackendGone,
}

impl SessionError {
    /// An error of a system call made for `command`: running out of fds or
    /// memory is the worker's limit being hit, anything else is I/O.
    pub fn system(command: CommandId, source: std::io::Error) -> SessionError {
        use nix::errno::Errno;
        let resource = match source.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EMFILE | Errno::ENFILE) => WorkerResource::FileDescriptors,
            Some(Errno::ENOMEM) => WorkerResource::Memory,
            _ => return SessionError::Io(source),
        };
        SessionError::WorkerExhausted {
            command,
            resource,
            source,
        }
    }

    /// The full reason, with every source in the chain.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn running_out_is_told_apart_from_io() {
        let kind = |errno: Errno| match SessionError::system(CommandId::SyncWait, errno.into()) {
            SessionError::WorkerExhausted { resource, .. } => resource.to_string(),
            SessionError::Io(_) => "io".to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(Errno::EMFILE), "file descriptors");
        assert_eq!(kind(Errno::ENFILE), "file descriptors");
        assert_eq!(kind(Errno::ENOMEM), "memory");
        assert_eq!(kind(Errno::EPIPE), "io");
        let e = SessionError::system(CommandId::SyncWait, Errno::EMFILE.into());
        assert!(
            e.chain()
                .starts_with("SyncWait: the worker ran out of file descriptors: "),
            "{}",
            e.chain()
        );
    }
}
