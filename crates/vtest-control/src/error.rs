//! Errors of the control channel.

use std::io;

use thiserror::Error;

/// Everything that can go wrong sending or receiving a control message.
///
/// Any error on receive means the peer is broken or hostile: the packet has
/// been consumed and any fds that came with it have been closed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The packet's payload is not a valid message.
    #[error("malformed control message")]
    Decode(#[source] postcard::Error),
    /// The peer closed its end (or sent an empty packet, which looks the same).
    #[error("control channel peer disconnected")]
    Disconnected,
    /// The message could not be serialised.
    #[error("cannot encode control message")]
    Encode(#[source] postcard::Error),
    /// The encoded message does not fit in one packet.
    #[error("control message of {len} bytes exceeds the {max}-byte limit")]
    MessageTooLarge { len: usize, max: usize },
    /// `recvmsg` on the control socket failed.
    #[error("cannot receive on control channel")]
    Recv(#[source] io::Error),
    /// `sendmsg` on the control socket failed.
    #[error("cannot send on control channel")]
    Send(#[source] io::Error),
    /// Creating the socketpair failed.
    #[error("cannot create control socketpair")]
    Socketpair(#[source] io::Error),
    /// More fds than one message may carry.
    #[error("{got} fds in one control message, at most {max} allowed")]
    TooManyFds { got: usize, max: usize },
    /// The message decoded but bytes were left over.
    #[error("malformed control message: {0} trailing bytes")]
    TrailingBytes(usize),
    /// The kernel cut the packet (payload over the size limit) or its fds
    /// (more than fit, or the fd limit was reached).
    #[error("control packet truncated (payload over the size limit or too many fds)")]
    Truncated,
    /// Ancillary data other than `SCM_RIGHTS`.
    #[error("unexpected ancillary data on control channel")]
    UnexpectedControlMessage,
    /// The peer speaks another protocol version.
    #[error("control protocol version mismatch: peer has {got}, we have {expected}")]
    VersionMismatch { expected: u16, got: u16 },
    /// A message arrived with the wrong number of fds for its kind.
    #[error("expected {expected} fds with control message, got {got}")]
    WrongFdCount { expected: usize, got: usize },
}
