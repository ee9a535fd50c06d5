//! One vtest client session, served inside a worker process.
//!
//! [`Session`] owns the client's socket and every table the client can name
//! into (resources, syncs, waits, fence timelines); each id, size and offset it
//! receives is checked against them and against [`SessionLimits`] before it
//! reaches the [`Backend`]. The real backend is virglrenderer
//! ([`VirglBackend`]); [`NullBackend`] exercises the dispatch logic in tests.
#![forbid(unsafe_code)]

mod backend;
mod conn;
mod dispatch;
mod error;
mod limits;
mod null;
mod resources;
mod session;
mod syncs;
mod virgl;

pub use backend::{Backend, BackendError, ContextFence};
pub use error::{SessionError, WorkerResource};
pub use limits::SessionLimits;
pub use null::{NullBackend, NULL_BAD_COMMAND};
pub use session::Session;
pub use virgl::VirglBackend;
