//! The C callbacks handed to `virgl_renderer_init` and the state they write.
//!
//! Callbacks run synchronously inside our own calls into virglrenderer (we do
//! not set `VIRGL_RENDERER_ASYNC_FENCE_CB`), typically `virgl_renderer_poll`
//! and `virgl_renderer_context_poll`; the state is nonetheless made of atomics
//! and a mutex so that it would stay sound if they ran on virglrenderer's
//! sync thread. None of them may unwind into C: every body is wrapped in
//! `catch_unwind` and aborts the process on a panic.

use std::ffi::{c_int, c_void};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use virglrenderer_sys as sys;
use vtest_protocol::ContextFence;

/// The state behind the `cookie` pointer. It is heap-allocated, leaked into
/// the `Renderer` and freed only after `virgl_renderer_cleanup`.
#[derive(Debug, Default)]
pub(crate) struct CallbackState {
    /// Id of the most recently retired ctx0 fence (they retire in order).
    pub(crate) last_fence: AtomicU32,
    /// Retired per-context fences not yet taken by the owner.
    pub(crate) context_fences: Mutex<Vec<ContextFence>>,
    /// The opened render node, handed over (once) by `get_drm_fd`.
    pub(crate) drm_fd: Mutex<Option<OwnedFd>>,
    /// This worker's render server connection (a SOCK_SEQPACKET socket),
    /// handed over (once) by `get_server_fd`.
    pub(crate) server_fd: Mutex<Option<OwnedFd>>,
}

impl CallbackState {
    /// Drains the context fence queue.
    pub(crate) fn take_context_fences(&self) -> Vec<ContextFence> {
        let mut q = self
            .context_fences
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *q)
    }
}

/// Runs `f`, aborting the process instead of unwinding across the C frame.
pub(crate) fn no_unwind<R>(what: &str, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            // Unwinding into C is undefined behaviour; abort instead.
            eprintln!("vtest-renderer: panic in virglrenderer callback {what}, aborting");
            std::process::abort()
        }
    }
}

/// Reborrows the cookie.
///
/// # Safety
/// `cookie` must be the pointer passed to `virgl_renderer_init`, i.e. a live
/// `CallbackState` that is only freed after `virgl_renderer_cleanup`.
unsafe fn state<'a>(cookie: *mut c_void) -> Option<&'a CallbackState> {
    // SAFETY: guaranteed by the caller; a null cookie yields `None`.
    unsafe { cookie.cast::<CallbackState>().as_ref() }
}

/// `write_fence(cookie, fence)`: a ctx0 fence retired.
unsafe extern "C" fn write_fence(cookie: *mut c_void, fence: u32) {
    no_unwind("write_fence", || {
        // SAFETY: virglrenderer passes back the cookie given to init, which
        // outlives the renderer (freed after virgl_renderer_cleanup).
        if let Some(st) = unsafe { state(cookie) } {
            // ctx0 fences retire in submission order, so the latest callback
            // carries the highest id; a plain store also stays correct if the
            // caller's u32 counter wraps.
            st.last_fence.store(fence, Ordering::Release);
        }
    })
}

/// `write_context_fence(cookie, ctx_id, ring_idx, fence_id)`.
unsafe extern "C" fn write_context_fence(
    cookie: *mut c_void,
    ctx_id: u32,
    ring_idx: u32,
    fence_id: u64,
) {
    no_unwind("write_context_fence", || {
        // SAFETY: as in `write_fence`.
        if let Some(st) = unsafe { state(cookie) } {
            st.context_fences
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(ContextFence {
                    ctx_id,
                    ring_idx,
                    fence_id,
                });
        }
    })
}

/// Gives C the fd in `slot` (once; -1 after, or without one): C owns it.
fn hand_over(slot: &Mutex<Option<OwnedFd>>) -> c_int {
    let fd = slot
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    fd.map_or(-1, IntoRawFd::into_raw_fd)
}

/// `get_drm_fd(cookie)`: virglrenderer takes ownership of the returned fd.
unsafe extern "C" fn get_drm_fd(cookie: *mut c_void) -> c_int {
    no_unwind("get_drm_fd", || {
        // SAFETY: as in `write_fence`.
        unsafe { state(cookie) }.map_or(-1, |st| hand_over(&st.drm_fd))
    })
}

/// `get_server_fd(cookie, version)`: the render server's socket, instead of
/// virglrenderer starting one itself (fork+exec, which the worker's sandbox
/// forbids). virglrenderer takes ownership of the returned fd.
unsafe extern "C" fn get_server_fd(cookie: *mut c_void, version: u32) -> c_int {
    no_unwind("get_server_fd", || {
        // SAFETY: as in `write_fence`.
        let fd = unsafe { state(cookie) }.map_or(-1, |st| hand_over(&st.server_fd));
        tracing::debug!(version, handed_over = fd >= 0, "render server fd");
        fd
    })
}

/// Builds the callback table. Unused entries stay NULL.
pub(crate) fn callback_table() -> sys::virgl_renderer_callbacks {
    // SAFETY: the struct is an `int` followed by `Option<unsafe extern "C"
    // fn>` fields (whatever the installed header adds), for which all-zero
    // bytes are valid (0 and `None`).
    let mut cbs: sys::virgl_renderer_callbacks = unsafe { std::mem::zeroed() };
    // The highest version the header offers (4 on 0.10.4 with unstable APIs).
    cbs.version = sys::VIRGL_RENDERER_CALLBACKS_VERSION as c_int;
    cbs.write_fence = Some(write_fence);
    cbs.get_drm_fd = Some(get_drm_fd);
    cbs.write_context_fence = Some(write_context_fence);
    cbs.get_server_fd = Some(get_server_fd);
    cbs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_record_state() {
        let st = Box::new(CallbackState::default());
        let cookie = (&*st as *const CallbackState).cast_mut().cast::<c_void>();
        let cbs = callback_table();
        assert!(cbs.version >= 3);
        // SAFETY: `cookie` points at the live `st`.
        unsafe {
            (cbs.write_fence.unwrap())(cookie, 5);
            (cbs.write_context_fence.unwrap())(cookie, 3, 1, 1 << 40);
            assert_eq!((cbs.get_drm_fd.unwrap())(cookie), -1);
            assert_eq!((cbs.get_server_fd.unwrap())(cookie, 0), -1);
            // A null cookie is ignored rather than dereferenced.
            (cbs.write_fence.unwrap())(std::ptr::null_mut(), 9);
        }
        assert_eq!(st.last_fence.load(Ordering::Acquire), 5);
        assert_eq!(
            st.take_context_fences(),
            vec![ContextFence {
                ctx_id: 3,
                ring_idx: 1,
                fence_id: 1 << 40
            }]
        );
        assert!(st.take_context_fences().is_empty());
    }

    #[test]
    fn get_drm_fd_hands_over_once() {
        let st = Box::new(CallbackState::default());
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        *st.drm_fd.lock().unwrap() = Some(fd);
        let cookie = (&*st as *const CallbackState).cast_mut().cast::<c_void>();
        let cbs = callback_table();
        // SAFETY: `cookie` points at the live `st`.
        let raw = unsafe { (cbs.get_drm_fd.unwrap())(cookie) };
        assert!(raw >= 0);
        // SAFETY: the callback transferred ownership of `raw` to us.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        // SAFETY: as above.
        assert_eq!(unsafe { (cbs.get_drm_fd.unwrap())(cookie) }, -1);
        // The render server's connection, the same way.
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        *st.server_fd.lock().unwrap() = Some(fd);
        // SAFETY: as above.
        let raw = unsafe { (cbs.get_server_fd.unwrap())(cookie, 0) };
        assert!(raw >= 0);
        // SAFETY: ownership of `raw` came to us.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        // SAFETY: as above.
        assert_eq!(unsafe { (cbs.get_server_fd.unwrap())(cookie, 0) }, -1);
    }
}
