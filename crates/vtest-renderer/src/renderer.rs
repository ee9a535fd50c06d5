//! The safe wrapper around the process-global virglrenderer instance.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{c_int, c_void};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use virglrenderer_sys as sys;
use vtest_protocol::{ContextFence, TransferArgs};
use vtest_shm::SharedMemory;

use crate::callbacks::{callback_table, CallbackState};
use crate::checks::{c_id, check_box, check_offset, check_strides};
use crate::error::RendererError;
use crate::ffi::{IoVec, PinnedIov, VirglBox};
use crate::types::{BlobArgs, BlobFdType, RendererOptions, ResourceCreateArgs};

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
/// [`RendererError::AlreadyInitialized`]). It is neither `Send` nor `Sync`:
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
    /// Initialises virglrenderer with
    /// `USE_EGL | THREAD_SYNC | USE_EXTERNAL_BLOB [| USE_SURFACELESS] [| USE_GLES]`.
    ///
    /// When `opts.render_node` is set it is opened here (`O_RDWR |
    /// O_CLOEXEC`) and handed to virglrenderer through the `get_drm_fd`
    /// callback.
    pub fn new(opts: &RendererOptions) -> Result<Self, RendererError> {
        if INITIALIZED
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(RendererError::AlreadyInitialized);
        }
        let r = Self::init(opts);
        if r.is_err() {
            INITIALIZED.store(false, Ordering::Release);
        }
        r
    }

    fn init(opts: &RendererOptions) -> Result<Self, RendererError> {
        let drm_fd = match &opts.render_node {
            Some(path) => Some(
                nix::fcntl::open(
                    path.as_path(),
                    OFlag::O_RDWR | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|source| RendererError::RenderNode {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let state = CallbackState {
            drm_fd: Mutex::new(drm_fd),
            ..CallbackState::default()
        };
        let cookie = NonNull::from(Box::leak(Box::new(state)));
        let callbacks = NonNull::from(Box::leak(Box::new(callback_table())));

        let mut flags = sys::VIRGL_RENDERER_USE_EGL
            | sys::VIRGL_RENDERER_THREAD_SYNC
            | sys::VIRGL_RENDERER_USE_EXTERNAL_BLOB;
        if opts.surfaceless {
            flags |= sys::VIRGL_RENDERER_USE_SURFACELESS;
        }
        if opts.gles {
            flags |= sys::VIRGL_RENDERER_USE_GLES;
        }
        let flags = c_int::try_from(flags).map_err(|_| RendererError::InvalidArgument("flags"))?;

        crate::messages::install();
        // SAFETY: cookie and callbacks are valid heap objects that stay alive
        // (and at the same address) until after virgl_renderer_cleanup in
        // Drop; no other virglrenderer instance exists (INITIALIZED).
        let ret =
            unsafe { sys::virgl_renderer_init(cookie.as_ptr().cast(), flags, callbacks.as_ptr()) };
        if ret != 0 {
            // virgl_renderer_init runs virgl_renderer_cleanup on its own
            // failure path, so C holds no pointer to either allocation now.
            // SAFETY: both came from Box::leak above and are freed once.
            unsafe {
                drop(Box::from_raw(callbacks.as_ptr()));
                drop(Box::from_raw(cookie.as_ptr()));
            }
            tracing::error!(code = ret, "virgl_renderer_init failed");
            return Err(RendererError::Init(ret));
        }
        tracing::debug!(
            surfaceless = opts.surfaceless,
            gles = opts.gles,
            render_node = ?opts.render_node,
            "virglrenderer initialised"
        );
        Ok(Self {
            cookie,
            callbacks,
            contexts: BTreeSet::new(),
            resources: HashMap::new(),
        })
    }

    fn state(&self) -> &CallbackState {
        // SAFETY: the cookie is a live `CallbackState` for the whole lifetime
        // of `self` (freed only in Drop); only shared references are made.
        unsafe { self.cookie.as_ref() }
    }

    /// `virgl_renderer_get_cap_set`: `(max_version, max_size_bytes)` of a
    /// capset, `(0, 0)` when unsupported. Works before initialisation (it
    /// only reports compile-time sizes).
    pub fn capset_info(set: u32) -> (u32, u32) {
        let mut max_ver = 0u32;
        let mut max_size = 0u32;
        // SAFETY: two valid out-pointers; the function only writes them.
        unsafe { sys::virgl_renderer_get_cap_set(set, &mut max_ver, &mut max_size) };
        (max_ver, max_size)
    }

    /// `virgl_renderer_fill_caps`: the capset bytes, exactly `max_size` long
    /// (zero-filled first; empty for an unsupported set).
    ///
    /// This is a method, not an associated function, because on an
    /// initialised renderer it queries GL and so must run on the renderer's
    /// thread.
    pub fn fill_caps(&self, set: u32, version: u32) -> Vec<u8> {
        let (_, max_size) = Self::capset_info(set);
        let Ok(len) = usize::try_from(max_size) else {
            return Vec::new();
        };
        let mut buf = vec![0u8; len];
        if len > 0 {
            // SAFETY: `buf` has `max_size` writable bytes, the size
            // virglrenderer reports it writes for this set.
            unsafe { sys::virgl_renderer_fill_caps(set, version, buf.as_mut_ptr().cast()) };
        }
        buf
    }

    fn check_new_context(&self, ctx_id: u32, name: &[u8]) -> Result<u32, RendererError> {
        if self.contexts.contains(&ctx_id) {
            return Err(RendererError::ContextExists(ctx_id));
        }
        u32::try_from(name.len()).map_err(|_| RendererError::InvalidArgument("name too long"))
    }

    fn check_context(&self, ctx_id: u32) -> Result<(), RendererError> {
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

    /// Attaches a newly created resource to its context and records it.
    fn finish_resource(&mut self, handle: u32, res: Resource) {
        // SAFETY: plain ids; C ignores unknown ones.
        unsafe { sys::virgl_renderer_ctx_attach_resource(c_id(res.ctx_id), c_id(handle)) };
        tracing::debug!(handle, ctx_id = res.ctx_id, "resource created");
        self.resources.insert(handle, res);
    }

    /// `virgl_renderer_resource_create(args, NULL, 0)`, then attaches
    /// `backing` as a single `iovec` (kept alive until
    /// [`Renderer::resource_unref`]) and attaches the resource to `ctx_id`.
    pub fn resource_create(
        &mut self,
        ctx_id: u32,
        args: &ResourceCreateArgs,
        backing: Option<SharedMemory>,
    ) -> Result<(), RendererError> {
        self.check_context(ctx_id)?;
        let handle = args.handle;
        if self.resources.contains_key(&handle) {
            return Err(RendererError::ResourceExists(handle));
        }
        // SAFETY: an all-u32 C struct, for which zero is valid; every field
        // the header defines today is set below.
        let mut c_args: sys::virgl_renderer_resource_create_args = unsafe { std::mem::zeroed() };
        c_args.handle = handle;
        c_args.target = args.target;
        c_args.format = args.format;
        c_args.bind = args.bind;
        c_args.width = args.width;
        c_args.height = args.height;
        c_args.depth = args.depth;
        c_args.array_size = args.array_size;
        c_args.last_level = args.last_level;
        c_args.nr_samples = args.nr_samples;
        c_args.flags = args.flags;
        // SAFETY: `c_args` is a valid struct; no iovecs are passed.
        let ret =
            unsafe { sys::virgl_renderer_resource_create(&mut c_args, std::ptr::null_mut(), 0) };
        if ret != 0 {
            tracing::warn!(handle, code = ret, "resource creation failed");
            return Err(RendererError::ResourceCreate { handle, code: ret });
        }
        let mut res = Resource {
            ctx_id,
            iov: None,
            backing: None,
        };
        if let Some(shm) = backing {
            let iov = PinnedIov::new(shm.as_ptr(), shm.len());
            // SAFETY: `iov` describes `shm`'s live mapping; both are stored in
            // `res` and outlive the attachment (dropped only after unref).
            let ret =
                unsafe { sys::virgl_renderer_resource_attach_iov(c_id(handle), iov.as_sys(), 1) };
            if ret != 0 {
                // SAFETY: the resource was created above; unref also detaches
                // whatever was attached before `iov`/`shm` are dropped.
                unsafe { sys::virgl_renderer_resource_unref(handle) };
                tracing::warn!(handle, code = ret, "attaching backing failed");
                return Err(RendererError::AttachBacking { handle, code: ret });
            }
            res.iov = Some(iov);
            res.backing = Some(shm);
        }
        self.finish_resource(handle, res);
        Ok(())
    }

    /// `virgl_renderer_resource_create_blob`. A `backing` (for GUEST and
    /// HOST3D_GUEST blobs; it must cover `args.size`) is passed as one
    /// `iovec` and kept alive like in [`Renderer::resource_create`]. The
    /// resource is then attached to `args.ctx_id`.
    pub fn resource_create_blob(
        &mut self,
        args: &BlobArgs,
        backing: Option<SharedMemory>,
    ) -> Result<(), RendererError> {
        self.check_context(args.ctx_id)?;
        let handle = args.res_handle;
        if self.resources.contains_key(&handle) {
            return Err(RendererError::ResourceExists(handle));
        }
        let iov = match &backing {
            Some(shm) => {
                let len = u64::try_from(shm.len())
                    .map_err(|_| RendererError::InvalidArgument("backing too large"))?;
                if len < args.size {
                    return Err(RendererError::InvalidArgument(
                        "blob backing smaller than blob size",
                    ));
                }
                Some(PinnedIov::new(shm.as_ptr(), shm.len()))
            }
            None => None,
        };
        // SAFETY: integers and one pointer, for which all-zero (NULL) is
        // valid; every field the header defines today is set below.
        let mut c_args: sys::virgl_renderer_resource_create_blob_args =
            unsafe { std::mem::zeroed() };
        c_args.res_handle = handle;
        c_args.ctx_id = args.ctx_id;
        c_args.blob_mem = args.blob_mem;
        c_args.blob_flags = args.blob_flags;
        c_args.blob_id = args.blob_id;
        c_args.size = args.size;
        if let Some(iov) = &iov {
            c_args.iovecs = iov.as_sys();
            c_args.num_iovs = 1;
        }
        // SAFETY: `c_args` is valid; its iovec (if any) describes `backing`,
        // and both are kept in the resource until it is unreferenced.
        let ret = unsafe { sys::virgl_renderer_resource_create_blob(&c_args) };
        if ret != 0 {
            tracing::warn!(handle, code = ret, "blob creation failed");
            return Err(RendererError::ResourceCreate { handle, code: ret });
        }
        let res = Resource {
            ctx_id: args.ctx_id,
            iov,
            backing,
        };
        self.finish_resource(handle, res);
        Ok(())
    }

    /// `virgl_renderer_resource_unref` (which also detaches it from every
    /// context and from its backing), then unmaps the backing. Unknown
    /// handles are ignored.
    pub fn resource_unref(&mut self, handle: u32) {
        if let Some(res) = self.resources.remove(&handle) {
            // SAFETY: the resource exists; after this C holds no pointer to
            // `res.iov`/`res.backing`, which are dropped next.
            unsafe { sys::virgl_renderer_resource_unref(handle) };
            drop(res);
            tracing::debug!(handle, "resource unreferenced");
        }
    }

    /// Whether `handle` was created here and not yet unreferenced.
    pub fn has_resource(&self, handle: u32) -> bool {
        self.resources.contains_key(&handle)
    }

    /// The shared-memory backing of a resource, if it has one.
    pub fn resource_backing(&self, handle: u32) -> Option<&SharedMemory> {
        self.resources.get(&handle)?.backing.as_ref()
    }

    /// Validates a transfer and returns the C box and the bytes available
    /// at the guest side when no explicit buffer is given.
    fn prepare_transfer(
        &self,
        ctx_id: u32,
        t: &TransferArgs,
    ) -> Result<(VirglBox, usize), RendererError> {
        self.check_context(ctx_id)?;
        let res = self
            .resources
            .get(&t.handle)
            .ok_or(RendererError::UnknownResource(t.handle))?;
        let bx = check_box(&t.bx)?;
        Ok((bx, res.backing.as_ref().map_or(0, SharedMemory::len)))
    }

    /// `virgl_renderer_transfer_read_iov` (host → guest). `data: None` reads
    /// into the attached backing (at `t.offset`); `Some(buf)` into `buf`.
    /// Any non-zero C return (0.10.4 returns both positive and negative
    /// errnos) is [`RendererError::Transfer`].
    pub fn transfer_read(
        &mut self,
        ctx_id: u32,
        t: &TransferArgs,
        data: Option<&mut [u8]>,
    ) -> Result<(), RendererError> {
        let (mut bx, backing_len) = self.prepare_transfer(ctx_id, t)?;
        let mut iov = data.map(|buf| IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        });
        let avail = iov.as_ref().map_or(backing_len, |v| v.iov_len);
        check_offset(t.offset, avail)?;
        check_strides(t, avail)?;
        let (iov_ptr, n) = match iov.as_mut() {
            Some(v) => (v.as_sys(), 1),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: `bx` is a valid box on our stack; `iov_ptr` is NULL (C uses
        // the attached backing, alive in `self.resources`) or one iovec over
        // the caller's exclusively borrowed buffer, which C writes within its
        // bounds (it checks the transfer against the iovec size).
        let ret = unsafe {
            sys::virgl_renderer_transfer_read_iov(
                t.handle,
                ctx_id,
                t.level,
                t.stride,
                t.layer_stride,
                bx.as_sys(),
                t.offset,
                iov_ptr,
                n,
            )
        };
        if ret != 0 {
            tracing::debug!(handle = t.handle, code = ret, "transfer_read failed");
            return Err(RendererError::Transfer(ret));
        }
        Ok(())
    }

    /// `virgl_renderer_transfer_write_iov` (guest → host). `data: None`
    /// writes from the attached backing (at `t.offset`); `Some(buf)` from
    /// `buf`. Errors as in [`Renderer::transfer_read`].
    pub fn transfer_write(
        &mut self,
        ctx_id: u32,
        t: &TransferArgs,
        data: Option<&[u8]>,
    ) -> Result<(), RendererError> {
        let (mut bx, backing_len) = self.prepare_transfer(ctx_id, t)?;
        let level = t
            .level
            .try_into()
            .map_err(|_| RendererError::InvalidArgument("mip level out of range"))?;
        let mut iov = data.map(|buf| IoVec {
            // C takes a non-const iovec but only reads from it on writes.
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        });
        let avail = iov.as_ref().map_or(backing_len, |v| v.iov_len);
        check_offset(t.offset, avail)?;
        check_strides(t, avail)?;
        let (iov_ptr, n) = match iov.as_mut() {
            Some(v) => (v.as_sys(), 1),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: as in `transfer_read`; for writes C only reads the guest
        // data, so pointing the iovec at a shared slice is sound.
        let ret = unsafe {
            sys::virgl_renderer_transfer_write_iov(
                t.handle,
                ctx_id,
                level,
                t.stride,
                t.layer_stride,
                bx.as_sys(),
                t.offset,
                iov_ptr,
                n,
            )
        };
        if ret != 0 {
            tracing::debug!(handle = t.handle, code = ret, "transfer_write failed");
            return Err(RendererError::Transfer(ret));
        }
        Ok(())
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

    /// Whether the renderer reported `GL_OUT_OF_MEMORY` since the last call:
    /// an allocation failed, typically at the worker's memory limit.
    pub fn take_out_of_memory(&mut self) -> bool {
        crate::messages::take_out_of_memory()
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

    /// The host GL's `GL_RENDERER` string (e.g. `llvmpipe (LLVM 15.0.6, 256
    /// bits)` or a GPU's name), read through libepoxy, which virglrenderer
    /// loads and which keeps virglrenderer's context current on this
    /// thread. `None` when it cannot be read (no current context).
    pub fn gl_renderer(&self) -> Option<String> {
        const GL_RENDERER: u32 = 0x1F01;
        type GetString = unsafe extern "C" fn(u32) -> *const std::ffi::c_char;
        // SAFETY: looks up a symbol by a valid C name; nothing is called.
        let slot = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"epoxy_glGetString".as_ptr()) };
        if slot.is_null() {
            return None;
        }
        // SAFETY: libepoxy exports `epoxy_glGetString` as a variable holding
        // a `PFNGLGETSTRINGPROC` (initialised to its resolver), so the symbol
        // is the address of a function pointer; it is read once.
        let get: Option<GetString> = unsafe { *slot.cast::<Option<GetString>>() };
        // SAFETY: glGetString(GL_RENDERER) on the thread that holds the
        // renderer's context (Renderer is neither Send nor Sync); it returns
        // NULL or a static NUL-terminated string owned by the driver.
        let text = unsafe { get?(GL_RENDERER) };
        if text.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, valid while the context lives;
        // copied at once.
        let text = unsafe { std::ffi::CStr::from_ptr(text) };
        Some(text.to_string_lossy().into_owned())
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

    /// `virgl_renderer_resource_export_blob`: the fd of a blob resource and
    /// its kind.
    pub fn resource_export_blob(
        &mut self,
        handle: u32,
    ) -> Result<(BlobFdType, OwnedFd), RendererError> {
        if !self.resources.contains_key(&handle) {
            return Err(RendererError::UnknownResource(handle));
        }
        let mut fd_type = 0u32;
        let mut raw_fd: c_int = -1;
        // SAFETY: two valid out-pointers; the resource exists.
        let ret =
            unsafe { sys::virgl_renderer_resource_export_blob(handle, &mut fd_type, &mut raw_fd) };
        let fd = (raw_fd >= 0).then(|| {
            // SAFETY: a non-negative fd written by C is a new fd owned by the
            // caller (virgl_resource_export_fd dups it).
            unsafe { OwnedFd::from_raw_fd(raw_fd) }
        });
        if ret != 0 {
            return Err(RendererError::ExportBlob { handle, code: ret });
        }
        let fd = fd.ok_or(RendererError::ExportBlob {
            handle,
            code: -libc::EBADF,
        })?;
        let kind = BlobFdType::from_raw(fd_type).ok_or(RendererError::UnknownFdType(fd_type))?;
        Ok((kind, fd))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capset_info_works_before_init() {
        let (_, size) = Renderer::capset_info(1);
        assert!(size > 0);
        assert_eq!(Renderer::capset_info(0xdead), (0, 0));
    }
}
