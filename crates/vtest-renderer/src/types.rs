//! Plain argument and result types of the safe API that mirror C structs
//! (transfers and fences use `vtest-protocol`'s plain types).

/// Options for [`crate::Renderer::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RendererOptions {
    /// `VIRGL_RENDERER_USE_SURFACELESS`: EGL without a window system (Mesa
    /// llvmpipe on a machine without a GPU).
    pub surfaceless: bool,
    /// `VIRGL_RENDERER_USE_GLES`: use GLES instead of desktop GL.
    pub gles: bool,
    /// A DRM render node (`/dev/dri/renderD*`) handed to virglrenderer
    /// through the `get_drm_fd` callback. It is opened by
    /// [`crate::Renderer::new`], so a bad path is reported as an error instead
    /// of silently falling back to another device.
    pub render_node: Option<std::path::PathBuf>,
    /// `VIRGL_RENDERER_VENUS | VIRGL_RENDERER_RENDER_SERVER`: serve Vulkan
    /// (capset 4) through a render server whose socket is handed over with
    /// [`crate::Renderer::with_render_server`].
    pub venus: bool,
    /// `VIRGL_RENDERER_NO_VIRGL`: no OpenGL (a Vulkan-only renderer).
    pub no_virgl: bool,
}

/// `struct virgl_renderer_resource_create_args`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceCreateArgs {
    /// Resource handle (global in virglrenderer; must be non-zero and unused).
    pub handle: u32,
    /// `enum pipe_texture_target` (0 = buffer, 2 = 2D texture, ...).
    pub target: u32,
    /// `enum virgl_formats`.
    pub format: u32,
    /// `VIRGL_BIND_*` flags.
    pub bind: u32,
    /// Width in pixels (bytes for buffers).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Depth in pixels.
    pub depth: u32,
    /// Number of array layers.
    pub array_size: u32,
    /// Highest mip level.
    pub last_level: u32,
    /// Sample count.
    pub nr_samples: u32,
    /// `VIRGL_RESOURCE_FLAG_*`.
    pub flags: u32,
}

/// `struct virgl_renderer_resource_create_blob_args` (without the iovecs,
/// which come from the backing passed alongside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobArgs {
    /// Resource handle.
    pub res_handle: u32,
    /// Owning context (must have been created through this renderer).
    pub ctx_id: u32,
    /// `VIRGL_RENDERER_BLOB_MEM_*` (GUEST 1, HOST3D 2, HOST3D_GUEST 3).
    pub blob_mem: u32,
    /// `VIRGL_RENDERER_BLOB_FLAG_USE_*`.
    pub blob_flags: u32,
    /// Blob id (for HOST3D: the id of the object created in the command
    /// stream).
    pub blob_id: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Blob memory kinds (`VIRGL_RENDERER_BLOB_MEM_*`).
pub mod blob_mem {
    /// Guest memory only.
    pub const GUEST: u32 = virglrenderer_sys::VIRGL_RENDERER_BLOB_MEM_GUEST;
    /// Host memory only.
    pub const HOST3D: u32 = virglrenderer_sys::VIRGL_RENDERER_BLOB_MEM_HOST3D;
    /// Host memory with a guest shadow.
    pub const HOST3D_GUEST: u32 = virglrenderer_sys::VIRGL_RENDERER_BLOB_MEM_HOST3D_GUEST;
}

/// Kind of fd returned by [`crate::Renderer::resource_export_blob`]
/// (`VIRGL_RENDERER_BLOB_FD_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum BlobFdType {
    /// A dma-buf.
    Dmabuf = 1,
    /// An opaque (Vulkan) handle.
    Opaque = 2,
    /// A shared-memory fd.
    Shm = 3,
}

impl BlobFdType {
    /// Maps the C value, `None` for unknown types.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            virglrenderer_sys::VIRGL_RENDERER_BLOB_FD_TYPE_DMABUF => Some(Self::Dmabuf),
            virglrenderer_sys::VIRGL_RENDERER_BLOB_FD_TYPE_OPAQUE => Some(Self::Opaque),
            virglrenderer_sys::VIRGL_RENDERER_BLOB_FD_TYPE_SHM => Some(Self::Shm),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_fd_type_round_trip() {
        for t in [BlobFdType::Dmabuf, BlobFdType::Opaque, BlobFdType::Shm] {
            assert_eq!(BlobFdType::from_raw(t as u32), Some(t));
        }
        assert_eq!(BlobFdType::from_raw(0), None);
        assert_eq!(BlobFdType::from_raw(4), None);
    }
}
