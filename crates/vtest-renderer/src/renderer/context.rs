//! Contexts: creating and destroying them, and submitting command streams to
//! them.

use std::ffi::{c_int, c_void};

use virglrenderer_sys as sys;

use super::Renderer;
use crate::checks::c_id;
use crate::error::RendererError;

impl Renderer {
    fn check_new_context(&self, ctx_id: u32, name: &[u8]) -> Result<u32, RendererError> {
        if self.contexts.contains(&ctx_id) {
            return Err(RendererError::ContextExists(ctx_id));
        }
        u32::try_from(name.len()).map_err(|_| RendererError::InvalidArgument("name too long"))
    }

    pub(super) fn check_context(&self, ctx_id: u32) -> Result<(), RendererError> {
        if self.contexts.contains(&ctx_id) {
            Ok(())
        } else {
            Err(RendererError::UnknownContext(ctx_id))
        }
    }

    /// `virgl_renderer_context_create`: a context with the default capset
    /// (VIRGL2).
    pub fn context_create(&mut self, ctx_id: u32, name: &[u8]) -> Result<(), RendererError> {
        let nlen = self.check_new_context(ctx_id, name)?;
        // SAFETY: `name` is valid for `nlen` bytes; C copies at most that.
        let ret = unsafe { sys::virgl_renderer_context_create(ctx_id, nlen, name.as_ptr().cast()) };
        self.finish_context_create(ctx_id, ret)
    }

    /// `virgl_renderer_context_create_with_flags(ctx_id, capset, ...)`.
    /// Any non-zero return (0.10.4 returns a *positive* errno) is an error.
    pub fn context_create_with_capset(
        &mut self,
        ctx_id: u32,
        capset: u32,
        name: &[u8],
    ) -> Result<(), RendererError> {
        let nlen = self.check_new_context(ctx_id, name)?;
        if capset & !sys::VIRGL_RENDERER_CONTEXT_FLAG_CAPSET_ID_MASK != 0 {
            return Err(RendererError::InvalidArgument("capset id out of range"));
        }
        // SAFETY: as in `context_create`.
        let ret = unsafe {
            sys::virgl_renderer_context_create_with_flags(
                ctx_id,
                capset,
                nlen,
                name.as_ptr().cast(),
            )
        };
        self.finish_context_create(ctx_id, ret)
    }

    fn finish_context_create(&mut self, ctx_id: u32, ret: c_int) -> Result<(), RendererError> {
        if ret != 0 {
            tracing::warn!(ctx_id, code = ret, "context creation failed");
            return Err(RendererError::ContextCreate { ctx_id, code: ret });
        }
        self.contexts.insert(ctx_id);
        tracing::debug!(ctx_id, "context created");
        Ok(())
    }

    /// `virgl_renderer_context_destroy` for a context created here; unknown
    /// ids are ignored. Resources created with it stay alive until
    /// [`Renderer::resource_unref`] (virglrenderer detaches them).
    pub fn context_destroy(&mut self, ctx_id: u32) {
        if self.contexts.remove(&ctx_id) {
            // SAFETY: the context exists (we created it and had not destroyed it).
            unsafe { sys::virgl_renderer_context_destroy(ctx_id) };
            tracing::debug!(ctx_id, "context destroyed");
        }
    }

    /// `virgl_renderer_submit_cmd(cmd, ctx_id, cmd.len())`. An empty stream
    /// is accepted. A malformed stream is rejected with
    /// [`RendererError::Submit`].
    pub fn submit_cmd(&mut self, ctx_id: u32, cmd: &[u32]) -> Result<(), RendererError> {
        self.check_context(ctx_id)?;
        let ndw = c_int::try_from(cmd.len())
            .map_err(|_| RendererError::InvalidArgument("command stream too long"))?;
        // SAFETY: `cmd` is valid and 4-byte aligned for `ndw` dwords; the
        // decoder takes it as `const void *` internally and only reads it.
        let ret = unsafe {
            sys::virgl_renderer_submit_cmd(
                cmd.as_ptr().cast_mut().cast::<c_void>(),
                c_id(ctx_id),
                ndw,
            )
        };
        if ret != 0 {
            tracing::debug!(ctx_id, code = ret, "submit_cmd rejected");
            return Err(RendererError::Submit(ret));
        }
        Ok(())
    }
}
