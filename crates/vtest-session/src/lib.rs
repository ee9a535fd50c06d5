//! One vtest client session, served inside a worker process.
//!
//! [`Session`] owns the client's socket and every table the client can name
//! into (resources, syncs, waits, fence timelines); each id, size and offset it
//! receives is checked against them and against [`SessionLimits`] before it
//! reaches the [`Backend`]. The real backend, virglrenderer, is the worker's
//! (in `vtestd`), so this crate links no virglrenderer; [`NullBackend`]
//! exercises the dispatch logic in tests and the fuzz target.
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

pub use backend::{Backend, BackendError};
/// The id of the client's renderer context, and the capset a context has
/// unless the client's `CONTEXT_INIT` names another.
pub use dispatch::{CAPSET_VIRGL2, CTX_ID as CLIENT_CTX_ID};
pub use error::{SessionError, WorkerResource};
pub use limits::SessionLimits;
pub use null::{NullBackend, NULL_BAD_COMMAND};
pub use session::Session;
