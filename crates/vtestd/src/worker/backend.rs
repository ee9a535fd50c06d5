//! The worker's session backend: the session's [`Backend`] calls on
//! virglrenderer through `vtest-renderer`. It lives here, not in
//! `vtest-session`, so that the session's dispatch logic, its null backend and
//! its fuzz target link no virglrenderer.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use vtest_protocol::{ContextFence, ResourceCreate, ResourceCreateBlob, TransferArgs};
use vtest_renderer::{BlobArgs, BlobFdType, Renderer, RendererError, ResourceCreateArgs};
use vtest_shm::SharedMemory;

use vtest_session::{Backend, BackendError};

/// virglrenderer, initialised once in this worker process.
pub struct VirglBackend {
    renderer: Renderer,
    context: Option<u32>,
    /// The context is a Venus one: its fences retire through its own poll
    /// fd (the render server's eventfd), not the GL renderer's.
    venus: bool,
    /// The worker's copy of its render server connection, watched for a
    /// hang-up (Venus workers only).
    render_server: Option<OwnedFd>,
    /// A context the worker created before the client came (with the
    /// default capset), which serves the client's first context of that id
    /// and capset instead of a new one.
    prepared: Option<u32>,
}

/// `VIRGL_RENDERER_CAPSET_VIRGL2`, what a context without a capset gets.
const CAPSET_VIRGL2: u32 = 2;
/// `VIRGL_RENDERER_CAPSET_VENUS`.
const CAPSET_VENUS: u32 = 4;

impl VirglBackend {
    /// Wraps an initialised renderer; `prepared` names a context already
    /// created on it with the default capset (VIRGL2); `render_server` is a
    /// Venus worker's copy of its render server connection.
    pub fn new(renderer: Renderer, prepared: Option<u32>, render_server: Option<OwnedFd>) -> Self {
        VirglBackend {
            renderer,
            context: None,
            venus: false,
            render_server,
            prepared,
        }
    }
}

fn err(operation: &'static str) -> impl FnOnce(RendererError) -> BackendError {
    move |e| BackendError::new(operation, e)
}

/// `fd` (a memfd) with its size sealed: the client can neither shrink it
/// under a mapping of the worker or the render server nor grow it, nor
/// undo that. virglrenderer seals what its proxy receives; this makes sure.
fn sealed(fd: OwnedFd) -> Result<OwnedFd, BackendError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let want = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    let refused = |e: nix::Error| {
        BackendError::new(
            "resource_export_blob",
            format!("a shared-memory blob that cannot be sealed is not shared: {e}"),
        )
    };
    let has = SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(refused)?);
    if !has.contains(want) {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(want - has)).map_err(refused)?;
    }
    Ok(fd)
}

impl Backend for VirglBackend {
    fn capset_info(&self, set: u32) -> (u32, u32) {
        Renderer::capset_info(set)
    }

    fn fill_caps(&self, set: u32, version: u32) -> Vec<u8> {
        self.renderer.fill_caps(set, version)
    }

    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: Option<u32>,
        name: &[u8],
    ) -> Result<(), BackendError> {
        if let Some(prepared) = self.prepared.take() {
            if prepared == ctx_id && capset.unwrap_or(CAPSET_VIRGL2) == CAPSET_VIRGL2 {
                tracing::debug!(ctx_id, "the client's context was made at start-up");
                self.context = Some(ctx_id);
                return Ok(());
            }
            // Another capset (Venus) or id: the client's own context.
            self.renderer.context_destroy(prepared);
        }
        match capset {
            None => self.renderer.context_create(ctx_id, name),
            Some(c) => self.renderer.context_create_with_capset(ctx_id, c, name),
        }
        .map_err(err("context_create"))?;
        self.context = Some(ctx_id);
        self.venus = capset == Some(CAPSET_VENUS);
        Ok(())
    }

    fn resource_create(
        &mut self,
        ctx_id: u32,
        a: &ResourceCreate,
        backing: Option<SharedMemory>,
    ) -> Result<(), BackendError> {
        let args = ResourceCreateArgs {
            handle: a.handle,
            target: a.target,
            format: a.format,
            bind: a.bind,
            width: a.width,
            height: a.height,
            depth: a.depth,
            array_size: a.array_size,
            last_level: a.last_level,
            nr_samples: a.nr_samples,
            flags: 0,
        };
        self.renderer
            .resource_create(ctx_id, &args, backing)
            .map_err(err("resource_create"))
    }

    fn resource_create_blob(
        &mut self,
        ctx_id: u32,
        handle: u32,
        blob: &ResourceCreateBlob,
        backing: Option<SharedMemory>,
    ) -> Result<(), BackendError> {
        let args = BlobArgs {
            res_handle: handle,
            ctx_id,
            blob_mem: blob.blob_type,
            blob_flags: blob.flags,
            blob_id: blob.blob_id,
            size: blob.size,
        };
        self.renderer
            .resource_create_blob(&args, backing)
            .map_err(err("resource_create_blob"))
    }

    fn resource_export_blob(&mut self, handle: u32) -> Result<OwnedFd, BackendError> {
        let (kind, fd) = self
            .renderer
            .resource_export_blob(handle)
            .map_err(err("resource_export_blob"))?;
        match kind {
            BlobFdType::Dmabuf => Ok(fd),
            // The render server's memory (Venus rings, device memory):
            // sealed before the client gets it, as ours are.
            BlobFdType::Shm => sealed(fd),
            BlobFdType::Opaque => Err(BackendError::new(
                "resource_export_blob",
                "opaque fds cannot be shared with a client",
            )),
        }
    }

    fn resource_unref(&mut self, handle: u32) {
        self.renderer.resource_unref(handle);
    }

    fn transfer_read(
        &mut self,
        ctx_id: u32,
        t: &TransferArgs,
        data: Option<&mut [u8]>,
    ) -> Result<(), BackendError> {
        self.renderer
            .transfer_read(ctx_id, t, data)
            .map_err(err("transfer_read"))
    }

    fn transfer_write(
        &mut self,
        ctx_id: u32,
        t: &TransferArgs,
        data: Option<&[u8]>,
    ) -> Result<(), BackendError> {
        self.renderer
            .transfer_write(ctx_id, t, data)
            .map_err(err("transfer_write"))
    }

    fn submit_cmd(&mut self, ctx_id: u32, commands: &[u32]) -> Result<(), BackendError> {
        self.renderer
            .submit_cmd(ctx_id, commands)
            .map_err(err("submit_cmd"))
    }

    fn create_fence(&mut self, fence_id: u32) -> Result<(), BackendError> {
        self.renderer
            .create_fence(fence_id)
            .map_err(err("create_fence"))
    }

    fn context_create_fence(
        &mut self,
        ctx_id: u32,
        ring_idx: u32,
        fence_id: u64,
    ) -> Result<(), BackendError> {
        self.renderer
            .context_create_fence(ctx_id, ring_idx, fence_id)
            .map_err(err("context_create_fence"))
    }

    fn take_out_of_memory(&mut self) -> bool {
        self.renderer.take_out_of_memory()
    }

    fn poll(&mut self) {
        self.renderer.poll();
        if let Some(ctx) = self.context {
            self.renderer.context_poll(ctx);
        }
    }

    fn last_completed_fence(&self) -> u32 {
        self.renderer.last_completed_fence()
    }

    fn take_context_fences(&mut self) -> Vec<ContextFence> {
        self.renderer.take_context_fences()
    }

    fn liveness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.render_server.as_ref().map(AsFd::as_fd)
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match self.context {
            Some(ctx) if self.venus => self.renderer.context_poll_fd(ctx),
            _ => self.renderer.poll_fd(),
        }
    }
}
