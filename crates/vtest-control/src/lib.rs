//! The broker <-> worker control channel.
//!
//! A `SOCK_SEQPACKET` AF_UNIX socketpair carrying one postcard-encoded,
//! versioned message per packet, with up to [`MAX_FDS`] file descriptors
//! alongside via `SCM_RIGHTS` (received close-on-exec).
//!
//! - [`messages`]: what is said ([`BrokerMsg`], [`WorkerMsg`]); no I/O.
//! - [`codec`]: how a message becomes a packet ([`Envelope`], version check,
//!   the SIGSYS handler's packet made in advance).
//! - [`channel`]: the socket ([`Channel`]).

#![forbid(unsafe_code)]

pub mod channel;
pub mod codec;
pub mod error;
pub mod messages;

pub use channel::{expect_one_fd, Channel, MAX_FDS};
pub use codec::{Envelope, MAX_MESSAGE, PROTOCOL_VERSION};
pub use error::ControlError;
pub use messages::{printable, BrokerMsg, ClientInfo, ExitReason, Limits, SessionStats, WorkerMsg};
