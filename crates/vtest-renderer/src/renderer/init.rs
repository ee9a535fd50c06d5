//! Initialising virglrenderer, and what it reports about itself: capability
//! sets and the host GL renderer.

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_int;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use virglrenderer_sys as sys;

use super::{Renderer, INITIALIZED};
use crate::callbacks::{callback_table, CallbackState};
use crate::error::RendererError;
use crate::types::RendererOptions;

impl Renderer {
    /// Initialises virglrenderer with
    /// `USE_EGL | THREAD_SYNC | USE_EXTERNAL_BLOB [| USE_SURFACELESS] [| USE_GLES]`.
    ///
    /// When `opts.render_node` is set it is opened here (`O_RDWR |
    /// O_CLOEXEC`) and handed to virglrenderer through the `get_drm_fd`
    /// callback.
    pub fn new(opts: &RendererOptions) -> Result<Self, RendererError> {
        Self::with_render_server(opts, None)
    }

    /// [`Renderer::new`] with this worker's render server connection
    /// (`opts.venus`): virglrenderer receives it through the
    /// `get_server_fd` callback instead of starting a render server itself.
    pub fn with_render_server(
        opts: &RendererOptions,
        server: Option<OwnedFd>,
    ) -> Result<Self, RendererError> {
        if opts.venus && server.is_none() {
            return Err(RendererError::InvalidArgument(
                "Venus needs a render server connection",
            ));
        }
        if INITIALIZED
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(RendererError::AlreadyInitialized);
        }
        let r = Self::init(opts, server);
        if r.is_err() {
            INITIALIZED.store(false, Ordering::Release);
        }
        r
    }

    fn init(opts: &RendererOptions, server: Option<OwnedFd>) -> Result<Self, RendererError> {
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
            server_fd: Mutex::new(server),
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
        if opts.venus {
            flags |= sys::VIRGL_RENDERER_VENUS | sys::VIRGL_RENDERER_RENDER_SERVER;
        }
        if opts.no_virgl {
            flags |= sys::VIRGL_RENDERER_NO_VIRGL;
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
            venus = opts.venus,
            no_virgl = opts.no_virgl,
            "virglrenderer initialised"
        );
        Ok(Self {
            cookie,
            callbacks,
            contexts: BTreeSet::new(),
            resources: HashMap::new(),
        })
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
