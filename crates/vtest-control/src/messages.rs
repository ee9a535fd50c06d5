//! The control messages, one enum per direction. No I/O here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Broker -> worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMsg {
    /// Carries exactly one fd: the accepted client socket.
    Attach { client: ClientInfo, limits: Limits },
    /// The worker is in its cgroup: it may confine itself now (the sandbox
    /// forks its PID-namespace child, which must start inside the cgroup).
    /// Sent only to workers started with `--wait-for-cgroup`.
    CgroupJoined,
}

/// Who the attached client is, as the broker saw it on accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Broker-assigned, unique for the broker's lifetime.
    pub client_id: u64,
    /// Peer credentials from `SO_PEERCRED`.
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Name (or path) of the listener the client connected to.
    pub listener: String,
}

/// Per-client limits, enforced by the worker (the listener's profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Live resources at once.
    pub max_resources: u32,
    /// Shared memory of one resource, bytes.
    pub max_resource_bytes: u64,
    /// Shared memory of all live resources, bytes.
    pub max_shm_bytes: u64,
    /// One command's payload, bytes.
    pub max_command_bytes: u32,
    /// Live syncs.
    pub max_syncs: u32,
    /// Pending `SYNC_WAIT`s.
    pub max_waits: u32,
    /// Time without any request before the client is dropped (0: never), ms.
    pub idle_timeout_ms: u64,
}

/// Worker -> broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Initialised (EGL + renderer), waiting for a client.
    Ready { pid: u32 },
    /// The worker took the client and starts serving it.
    Attached { client_id: u64 },
    /// Periodic statistics.
    Stats(SessionStats),
    /// The client session ended (the worker exits right after).
    Finished {
        stats: SessionStats,
        reason: ExitReason,
    },
    /// Sent from the SIGSYS handler before the worker dies. The number is
    /// fixed-width on the wire, so that the handler can send a packet made
    /// in advance ([`crate::codec::seccomp_violation_template`]).
    SeccompViolation {
        #[serde(with = "postcard::fixint::le")]
        syscall: i64,
    },
}

/// Counters of one client session, cumulative since attach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    pub commands: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub resources_created: u64,
    pub live_resources: u64,
    pub shm_bytes: u64,
    pub fences_submitted: u64,
    pub fences_completed: u64,
    pub fds_sent: u64,
}

/// Why a client session ended.
///
/// Reasons travel in one packet: keep the strings short (a `Finished` over
/// `MAX_MESSAGE` bytes cannot be sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Normal EOF from the client.
    ClientDisconnected,
    /// Malformed or unsupported request.
    ProtocolError {
        reason: String,
    },
    RendererError {
        reason: String,
    },
    LimitExceeded {
        limit: String,
        value: u64,
        max: u64,
    },
    IoError {
        reason: String,
    },
    /// The worker hit one of its process limits (`resource`: "file
    /// descriptors", "memory") serving the client's requests.
    WorkerExhausted {
        resource: String,
        reason: String,
    },
    InitFailed {
        reason: String,
    },
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), so that a
/// string from a worker cannot forge or colour log lines.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl ExitReason {
    /// The same reason with every string [`printable`]: what a worker says
    /// is logged by the broker, and a compromised worker could say anything.
    pub fn printable(self) -> ExitReason {
        match self {
            Self::ProtocolError { reason } => Self::ProtocolError {
                reason: printable(&reason),
            },
            Self::RendererError { reason } => Self::RendererError {
                reason: printable(&reason),
            },
            Self::LimitExceeded { limit, value, max } => Self::LimitExceeded {
                limit: printable(&limit),
                value,
                max,
            },
            Self::IoError { reason } => Self::IoError {
                reason: printable(&reason),
            },
            Self::WorkerExhausted { resource, reason } => Self::WorkerExhausted {
                resource: printable(&resource),
                reason: printable(&reason),
            },
            Self::InitFailed { reason } => Self::InitFailed {
                reason: printable(&reason),
            },
            Self::ClientDisconnected => self,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientDisconnected => f.write_str("client disconnected"),
            Self::ProtocolError { reason } => write!(f, "protocol error: {reason}"),
            Self::RendererError { reason } => write!(f, "renderer error: {reason}"),
            Self::LimitExceeded { limit, value, max } => {
                write!(f, "limit exceeded: {limit} {value} > {max}")
            }
            Self::IoError { reason } => write!(f, "I/O error: {reason}"),
            Self::WorkerExhausted { reason, .. } => f.write_str(reason),
            Self::InitFailed { reason } => write!(f, "initialisation failed: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_a_worker_cannot_forge_log_lines() {
        let forged = ExitReason::ProtocolError {
            reason: "x\n2001-01-01T00:00:00Z  INFO forged\u{1b}[31m".into(),
        }
        .printable()
        .to_string();
        assert!(
            !forged.contains('\n') && !forged.contains('\u{1b}'),
            "{forged}"
        );
        assert!(
            forged.contains("x\\n2001") && forged.contains("\\u{1b}[31m"),
            "{forged}"
        );
        assert_eq!(printable("plain text: ok"), "plain text: ok");
    }

    #[test]
    fn exit_reason_display_is_short_and_specific() {
        let cases = [
            (ExitReason::ClientDisconnected, "client disconnected"),
            (
                ExitReason::ProtocolError {
                    reason: "unknown command id 99".into(),
                },
                "protocol error: unknown command id 99",
            ),
            (
                ExitReason::RendererError {
                    reason: "context creation failed".into(),
                },
                "renderer error: context creation failed",
            ),
            (
                ExitReason::LimitExceeded {
                    limit: "resources".into(),
                    value: 4097,
                    max: 4096,
                },
                "limit exceeded: resources 4097 > 4096",
            ),
            (
                ExitReason::IoError {
                    reason: "broken pipe".into(),
                },
                "I/O error: broken pipe",
            ),
            (
                ExitReason::InitFailed {
                    reason: "no EGL display".into(),
                },
                "initialisation failed: no EGL display",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }
}
