//! Error type of the renderer wrapper.

/// Everything that can go wrong while talking to virglrenderer.
///
/// Codes carried by the variants are the raw return values of the C
/// functions. virglrenderer 0.10.4 mixes positive and negative errnos (for
/// example `virgl_renderer_context_create_with_flags` returns `EINVAL`, while
/// `virgl_renderer_resource_create_blob` returns `-EINVAL`), so callers must
/// treat the code as informational only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RendererError {
    /// `virgl_renderer_init` keeps one global state per process; a second
    /// [`crate::Renderer`] cannot be created while one is alive.
    #[error("virglrenderer is already initialised in this process")]
    AlreadyInitialized,
    /// `virgl_renderer_init` failed.
    #[error("virgl_renderer_init failed with code {0}")]
    Init(i32),
    /// The configured render node could not be opened.
    #[error("cannot open render node {path}: {source}")]
    RenderNode {
        /// The render node path.
        path: std::path::PathBuf,
        /// Why opening failed.
        source: nix::Error,
    },
    /// A context with this id was already created through this renderer.
    #[error("context {0} already exists")]
    ContextExists(u32),
    /// The context id was not created through this renderer.
    #[error("unknown context {0}")]
    UnknownContext(u32),
    /// Context creation was rejected by virglrenderer.
    #[error("creating context {ctx_id} failed with code {code}")]
    ContextCreate {
        /// The requested context id.
        ctx_id: u32,
        /// The C return value.
        code: i32,
    },
    /// A resource with this handle already exists.
    #[error("resource {0} already exists")]
    ResourceExists(u32),
    /// The resource handle was not created through this renderer.
    #[error("unknown resource {0}")]
    UnknownResource(u32),
    /// Resource creation (plain or blob) was rejected by virglrenderer.
    #[error("creating resource {handle} failed with code {code}")]
    ResourceCreate {
        /// The requested resource handle.
        handle: u32,
        /// The C return value.
        code: i32,
    },
    /// Attaching the shared-memory backing failed.
    #[error("attaching backing to resource {handle} failed with code {code}")]
    AttachBacking {
        /// The resource handle.
        handle: u32,
        /// The C return value.
        code: i32,
    },
    /// A transfer was rejected by virglrenderer.
    #[error("transfer failed with code {0}")]
    Transfer(i32),
    /// A command stream was rejected by virglrenderer.
    #[error("command submission failed with code {0}")]
    Submit(i32),
    /// Fence creation failed.
    #[error("fence creation failed with code {0}")]
    Fence(i32),
    /// Exporting a blob resource failed.
    #[error("exporting resource {handle} failed with code {code}")]
    ExportBlob {
        /// The resource handle.
        handle: u32,
        /// The C return value.
        code: i32,
    },
    /// virglrenderer returned an fd type this crate does not know.
    #[error("unknown blob fd type {0}")]
    UnknownFdType(u32),
    /// An argument failed validation before reaching C (size, offset, range).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}
