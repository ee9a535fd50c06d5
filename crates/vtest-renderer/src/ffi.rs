//! Real C layouts for the types `virglrenderer-sys` binds as opaque.
//!
//! bindgen only sees forward declarations of `struct iovec` and
//! `struct virgl_box` in `virglrenderer.h`, so it emits zero-sized opaque
//! structs. We define the real layouts here and cast pointers to the opaque
//! types at the single place that calls C.

use std::ffi::c_void;

/// `struct iovec` from `<sys/uio.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct IoVec {
    pub(crate) iov_base: *mut c_void,
    pub(crate) iov_len: usize,
}

/// `struct virgl_box` from `virgl_hw.h`: six `uint32_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VirglBox {
    pub(crate) x: u32,
    pub(crate) y: u32,
    pub(crate) z: u32,
    pub(crate) w: u32,
    pub(crate) h: u32,
    pub(crate) d: u32,
}

// The layouts must match the C ABI exactly.
const _: () = {
    assert!(std::mem::size_of::<IoVec>() == std::mem::size_of::<libc::iovec>());
    assert!(std::mem::align_of::<IoVec>() == std::mem::align_of::<libc::iovec>());
    assert!(std::mem::size_of::<VirglBox>() == 24);
    assert!(std::mem::align_of::<VirglBox>() == 4);
};

impl IoVec {
    /// Casts to the opaque bindgen type expected by the C prototypes.
    pub(crate) fn as_sys(&mut self) -> *mut virglrenderer_sys::iovec {
        (self as *mut IoVec).cast()
    }
}

impl VirglBox {
    /// Casts to the opaque bindgen type expected by the C prototypes.
    pub(crate) fn as_sys(&mut self) -> *mut virglrenderer_sys::virgl_box {
        (self as *mut VirglBox).cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iovec_field_offsets_match_libc() {
        let mut ours = IoVec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let base = std::ptr::addr_of!(ours) as usize;
        assert_eq!(std::ptr::addr_of!(ours.iov_base) as usize - base, 0);
        assert_eq!(
            std::ptr::addr_of!(ours.iov_len) as usize - base,
            std::mem::size_of::<*mut c_void>()
        );
        let _ = ours.as_sys();
    }

    #[test]
    fn box_is_six_packed_u32() {
        let b = VirglBox {
            x: 1,
            y: 2,
            z: 3,
            w: 4,
            h: 5,
            d: 6,
        };
        let base = std::ptr::addr_of!(b) as usize;
        assert_eq!(std::ptr::addr_of!(b.d) as usize - base, 20);
    }
}

/// A heap-allocated `iovec` at a stable address, for virglrenderer to keep.
///
/// `virgl_renderer_resource_attach_iov`, `virgl_renderer_resource_create`
/// and `virgl_renderer_resource_create_blob` store the `iovec` *pointer* (not
/// a copy) in the resource, so it must stay valid until the resource is
/// unreferenced. It is kept as a raw pointer (not a `Box`) so that moving the
/// owner around never asserts uniqueness over memory C still points to.
#[derive(Debug)]
pub(crate) struct PinnedIov(std::ptr::NonNull<IoVec>);

impl PinnedIov {
    /// Allocates an `iovec` describing `len` bytes at `base`.
    pub(crate) fn new(base: *mut c_void, len: usize) -> Self {
        let b = Box::new(IoVec {
            iov_base: base,
            iov_len: len,
        });
        Self(std::ptr::NonNull::from(Box::leak(b)))
    }

    /// The pointer handed to C.
    pub(crate) fn as_sys(&self) -> *mut virglrenderer_sys::iovec {
        self.0.as_ptr().cast()
    }
}

impl Drop for PinnedIov {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `new` and is freed only
        // here; owners drop it only after C has forgotten it (resource unref
        // or a failed create).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}
