//! The vtest wire protocol, without I/O.
//!
//! Requests are framed by command id, never by the header's `LEN` (see
//! `docs/PROTOCOL.md` §1.3): [`decode`] looks at a byte buffer and either returns one
//! complete [`Request`] borrowing from it, or says how many bytes it needs.
//! Replies are built with [`Reply::encode`], which applies the reply quirks of
//! §1.4 (caps lengths in bytes plus one, replies without headers).
//!
//! It also holds the plain data a session hands its renderer for requests
//! ([`TransferArgs`], [`TransferBox`], [`ContextFence`]): this is the one
//! crate both depend on, so neither needs the other.
#![forbid(unsafe_code)]

mod command;
mod decode;
mod encode;
mod error;
mod fence;
mod reply;
mod request;
mod transfer;
mod version;
mod wire;

pub use command::CommandId;
pub use decode::{decode, Decoded, Limits};
pub use encode::header;
pub use error::ProtocolError;
pub use fence::ContextFence;
pub use reply::Reply;
pub use request::{
    Batch, BlobType, Request, ResourceCreate, ResourceCreateBlob, SubmitCmd2, SyncPoint, SyncWait,
    Transfer, Transfer2, BUSY_WAIT_FLAG_WAIT, SUBMIT_CMD2_FLAG_RING_IDX, SUBMIT_CMD2_STRIDE_6,
    SUBMIT_CMD2_STRIDE_8, SYNC_WAIT_FLAG_ANY,
};
pub use transfer::{TransferArgs, TransferBox};
pub use version::{negotiate, MAX_VERSION};
pub use wire::HEADER_BYTES;

/// `GET_PARAM` parameter ids.
pub mod param {
    /// Number of sync timelines (rings) the server supports.
    pub const MAX_TIMELINE_COUNT: u32 = 1;
    /// v4: timeline syncobj support (never valid here).
    pub const HAS_TIMELINE_SYNCOBJ: u32 = 2;
}

/// The number of timelines (`ring_idx` values) a context may use.
pub const MAX_TIMELINE_COUNT: u32 = 64;
