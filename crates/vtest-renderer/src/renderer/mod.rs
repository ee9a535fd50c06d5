//! The safe wrapper around the process-global virglrenderer instance: the
//! [`Renderer`] that owns it and what C points into, and its teardown. Its
//! calls are grouped by what they act on, one module each.

use std::collections::{BTreeSet, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use virglrenderer_sys as sys;
use vtest_shm::SharedMemory;

use crate::callbacks::CallbackState;
use crate::ffi::PinnedIov;

mod context;
mod fence;
mod init;
mod resource;
mod transfer;

/// Set while a [`Renderer`] exists: `virgl_renderer_init` is process-global.
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// A resource created through the [`Renderer`], with the memory C points to.
#[derive(Debug)]
struct Resource {
    /// The context it was attached to at creation.
    ctx_id: u32,
    /// The `iovec` virglrenderer keeps a pointer to. Declared before
    /// `backing` only for readability; both are dropped after the C unref.
    iov: Option<PinnedIov>,
    /// The shared memory the `iovec` describes.
    backing: Option<SharedMemory>,
}

/// The process's virglrenderer instance.
///
/// At most one exists per process (a second [`Renderer::new`] fails with
/// [`crate::RendererError::AlreadyInitialized`]). It is neither `Send` nor `Sync`:
/// virglrenderer keeps a GL context current on the thread that initialised
/// it, and every call must come from that thread.
///
/// Resource handles and context ids are global in virglrenderer; this type
/// tracks the ones it created and refuses to operate on others.
#[derive(Debug)]
pub struct Renderer {
    /// The `cookie`: leaked `Box<CallbackState>`, freed in `Drop` after
    /// `virgl_renderer_cleanup`.
    cookie: NonNull<CallbackState>,
    /// virglrenderer keeps the callbacks *pointer*, so the table lives on the
    /// heap as long as the cookie.
    callbacks: NonNull<sys::virgl_renderer_callbacks>,
    contexts: BTreeSet<u32>,
    resources: HashMap<u32, Resource>,
}

impl Renderer {
    fn state(&self) -> &CallbackState {
        // SAFETY: the cookie is a live `CallbackState` for the whole lifetime
        // of `self` (freed only in Drop); only shared references are made.
        unsafe { self.cookie.as_ref() }
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        for (&handle, _) in self.resources.iter() {
            // SAFETY: each tracked resource exists; its memory is freed below,
            // after C forgot it.
            unsafe { sys::virgl_renderer_resource_unref(handle) };
        }
        for &ctx_id in &self.contexts {
            // SAFETY: each tracked context exists.
            unsafe { sys::virgl_renderer_context_destroy(ctx_id) };
        }
        // SAFETY: the instance was initialised by `new`; the cookie is still
        // valid during cleanup and freed only afterwards.
        unsafe { sys::virgl_renderer_cleanup(self.cookie.as_ptr().cast()) };
        self.resources.clear();
        self.contexts.clear();
        // SAFETY: both came from Box::leak in `init`; C no longer references
        // them after virgl_renderer_cleanup, and they are freed exactly once.
        unsafe {
            drop(Box::from_raw(self.callbacks.as_ptr()));
            drop(Box::from_raw(self.cookie.as_ptr()));
        }
        INITIALIZED.store(false, Ordering::Release);
        tracing::debug!("virglrenderer cleaned up");
    }
}
