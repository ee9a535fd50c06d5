//! Decoding errors: every way a client's bytes can be rejected.

use crate::CommandId;

/// Why a request was rejected. The connection is closed after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{command:?} batch {batch}: {what} out of bounds")]
    BatchOutOfBounds {
        command: CommandId,
        batch: u32,
        what: &'static str,
    },
    #[error("{command:?} batch {batch}: {what} overlaps the batch headers ({stride} dwords each)")]
    BatchOverlapsHeaders {
        command: CommandId,
        batch: u32,
        what: &'static str,
        stride: u32,
    },
    #[error(
        "{command:?}: the first batch's commands (dword {cmd_offset}) follow neither \
         {batch_count} batch headers of 8 dwords nor of 6"
    )]
    BatchStrideUnknown {
        command: CommandId,
        batch_count: u32,
        cmd_offset: u32,
    },
    #[error("{command:?} payload of {bytes} bytes exceeds the limit of {max}")]
    CommandTooLarge {
        command: CommandId,
        bytes: u64,
        max: u64,
    },
    #[error("{command:?} payload of {dwords} dwords is malformed: {reason}")]
    MalformedPayload {
        command: CommandId,
        dwords: u32,
        reason: &'static str,
    },
    #[error("renderer name of {bytes} bytes exceeds the limit of {max}")]
    NameTooLong { bytes: u32, max: u32 },
    #[error("transfer of {bytes} bytes exceeds the limit of {max}")]
    TransferTooLarge { bytes: u32, max: u32 },
    #[error("unknown command id {0}")]
    UnknownCommand(u32),
    #[error("{0:?} is not supported (protocol version 4)")]
    Unsupported(CommandId),
}
