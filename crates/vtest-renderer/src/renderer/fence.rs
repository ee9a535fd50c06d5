//! Fences: implicit ctx0 fences, per-context fences on rings, and polling for
//! their retirement (and for the renderer's out-of-memory reports).

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;

use virglrenderer_sys as sys;
use vtest_protocol::ContextFence;

use super::Renderer;
use crate::checks::c_id;
use crate::error::RendererError;

impl Renderer {
    /// `virgl_renderer_create_fence(fence_id, 0)`: an implicit ctx0 fence,
    /// reported through [`Renderer::last_completed_fence`] after
    /// [`Renderer::poll`].
    pub fn create_fence(&mut self, fence_id: u32) -> Result<(), RendererError> {
        // SAFETY: plain integers (C converts the int back to uint32_t).
        let ret = unsafe { sys::virgl_renderer_create_fence(c_id(fence_id), 0) };
        if ret != 0 {
            return Err(RendererError::Fence(ret));
        }
        Ok(())
    }

    /// `virgl_renderer_poll()`: retires finished fences, calling the
    /// `write_fence` and `write_context_fence` callbacks.
    pub fn poll(&mut self) {
        // SAFETY: no arguments; callbacks only touch the live cookie.
        unsafe { sys::virgl_renderer_poll() };
    }

    /// `virgl_renderer_get_poll_fd()`: an eventfd that becomes readable when
    /// fences may have retired (`THREAD_SYNC`). `None` when unavailable.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: no arguments.
        let fd = unsafe { sys::virgl_renderer_get_poll_fd() };
        if fd < 0 {
            return None;
        }
        // SAFETY: the fd is owned by virglrenderer and stays open until
        // virgl_renderer_cleanup, which runs in Drop and so cannot happen
        // while this borrow of `self` lives.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Id of the most recently retired ctx0 fence (0 before any).
    pub fn last_completed_fence(&self) -> u32 {
        self.state().last_fence.load(Ordering::Acquire)
    }

    /// `virgl_renderer_context_create_fence(ctx_id, MERGEABLE, ring_idx,
    /// fence_id)`. Its retirement shows up in
    /// [`Renderer::take_context_fences`] after [`Renderer::context_poll`] or
    /// [`Renderer::poll`].
    ///
    /// On virglrenderer 0.10.4 with virgl (vrend) contexts, only ring 0 is
    /// accepted, and the context poll fd is the same eventfd as
    /// [`Renderer::poll_fd`]; see the crate docs for what was observed.
    pub fn context_create_fence(
        &mut self,
        ctx_id: u32,
        ring_idx: u32,
        fence_id: u64,
    ) -> Result<(), RendererError> {
        self.check_context(ctx_id)?;
        // `uint32_t ring_idx` in 0.10.4; newer headers widen it.
        #[allow(clippy::useless_conversion)]
        let ring = ring_idx.into();
        // SAFETY: plain integers; the context exists; the callback table has
        // write_context_fence set (version >= 3), which C asserts.
        let ret = unsafe {
            sys::virgl_renderer_context_create_fence(
                ctx_id,
                sys::VIRGL_RENDERER_FENCE_FLAG_MERGEABLE,
                ring,
                fence_id,
            )
        };
        if ret != 0 {
            return Err(RendererError::Fence(ret));
        }
        Ok(())
    }

    /// `virgl_renderer_context_poll(ctx_id)` for a context created here.
    pub fn context_poll(&mut self, ctx_id: u32) {
        if self.contexts.contains(&ctx_id) {
            // SAFETY: the context exists.
            unsafe { sys::virgl_renderer_context_poll(ctx_id) };
        }
    }

    /// `virgl_renderer_context_get_poll_fd(ctx_id)`; `None` for unknown
    /// contexts or when the context has no fd.
    pub fn context_poll_fd(&self, ctx_id: u32) -> Option<BorrowedFd<'_>> {
        if !self.contexts.contains(&ctx_id) {
            return None;
        }
        // SAFETY: the context exists.
        let fd = unsafe { sys::virgl_renderer_context_get_poll_fd(ctx_id) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the fd belongs to the context (or to the renderer) and
        // stays open until context_destroy or cleanup, both of which need
        // `&mut self` or `self` and so cannot run while this borrow lives.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Drains the per-context fences retired so far.
    pub fn take_context_fences(&mut self) -> Vec<ContextFence> {
        self.state().take_context_fences()
    }

    /// Whether the renderer reported `GL_OUT_OF_MEMORY` since the last call:
    /// an allocation failed, typically at the worker's memory limit.
    pub fn take_out_of_memory(&mut self) -> bool {
        crate::messages::take_out_of_memory()
    }
}
