//! vtest-shm: the sealed memfd shared memory that backs resources and is
//! handed to clients.
//!
//! It is its own crate so that the pure parts of a session (dispatch, the
//! null backend, the fuzz targets) can create and copy resource backings
//! without linking virglrenderer. Like the FFI crate it needs `unsafe`
//! (`mmap`, `munmap` and the volatile copies); every block says why it is
//! sound, and nothing else in it is.

mod error;
mod memory;

pub use error::ShmError;
pub use memory::SharedMemory;
