//! vtest-renderer: the only crate of vtestd that calls virglrenderer.
//!
//! It wraps the process-global virglrenderer instance in a safe, single-owner
//! [`Renderer`]. Resource backings are `vtest_shm::SharedMemory`, which the
//! renderer keeps alive while C points into them.
//!
//! All FFI goes through `virglrenderer-sys` (bindgen over the system header
//! with `VIRGL_RENDERER_UNSTABLE_APIS`). `struct iovec` and `struct
//! virgl_box` are opaque there; their real layouts live in the private `ffi`
//! module.
//!
//! # Behaviour of virglrenderer 0.10.4 (Debian 12), as observed by the tests
//!
//! With EGL surfaceless on Mesa llvmpipe (`tests/real_renderer.rs` runs this
//! sequence):
//!
//! * Capsets: `get_cap_set(1)` = (1, 308 bytes), `get_cap_set(2)` = (2,
//!   1376 bytes); both work before `virgl_renderer_init`. Unknown sets give
//!   (0, 0).
//! * Return codes are mixed: transfers, `submit_cmd`, `context_create*` and
//!   `export_blob` fail with a *positive* `EINVAL` (22);
//!   `context_create_fence` and `resource_create_blob` with `-EINVAL`. This
//!   crate treats every non-zero value as failure.
//! * A rejected transfer or command stream only logs a "context error"; the
//!   context keeps working.
//! * Per-context fences on a virgl (vrend) context: only ring 0 is accepted
//!   (ring 1 gives `-EINVAL`). `virgl_renderer_context_get_poll_fd` returns
//!   the *same* eventfd as `virgl_renderer_get_poll_fd`, and both
//!   `virgl_renderer_context_poll(ctx)` and `virgl_renderer_poll()` deliver
//!   `write_context_fence`. So one poll fd serves both kinds of fences.
//! * `virgl_renderer_cleanup` really resets the global state: a new
//!   [`Renderer`] can be created after the previous one is dropped, also with
//!   different flags (GLES).
//! * HOST3D blobs (from `VIRGL_CCMD_PIPE_RESOURCE_CREATE`) can be created but
//!   not exported on llvmpipe (no GBM / dma-buf: `EINVAL`). GUEST blobs never
//!   have a host fd to export.
//!
//! # Hardening in front of C
//!
//! Ids of contexts and resources must have been created through the
//! [`Renderer`]; transfer boxes must not wrap `u32`; offsets must lie inside
//! the guest data; explicit strides must not wrap the 32-bit arithmetic of
//! 0.10.4's `check_iov_bounds`; blob backings must cover the blob size; all
//! lengths are converted with checks. A backing is sealed against resizing
//! (by `vtest-shm`) before its fd can reach a client.

mod callbacks;
mod checks;
mod error;
mod ffi;
mod messages;
mod renderer;
mod types;

pub use error::RendererError;
pub use renderer::Renderer;
pub use types::{blob_mem, BlobArgs, BlobFdType, RendererOptions, ResourceCreateArgs};
