//! Transfers between a resource and guest data (the resource's attached
//! backing or a caller's buffer): one checked path for both directions.

use virglrenderer_sys as sys;
use vtest_protocol::TransferArgs;
use vtest_shm::SharedMemory;

use super::Renderer;
use crate::checks::{c_level, check_transfer};
use crate::error::RendererError;
use crate::ffi::IoVec;

/// Which way a transfer copies, with the caller's buffer when the guest data
/// is not the resource's attached backing.
#[derive(Debug)]
enum Direction<'a> {
    /// Host → guest (`virgl_renderer_transfer_read_iov`): C writes the data.
    ToGuest(Option<&'a mut [u8]>),
    /// Guest → host (`virgl_renderer_transfer_write_iov`): C only reads it.
    ToHost(Option<&'a [u8]>),
}

impl Direction<'_> {
    /// The caller's buffer as the one `iovec` C takes (non-const in both
    /// prototypes, though writes only read it).
    fn iov(&mut self) -> Option<IoVec> {
        match self {
            Direction::ToGuest(buf) => buf.as_deref_mut().map(|b| IoVec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            }),
            Direction::ToHost(buf) => buf.map(|b| IoVec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            }),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Direction::ToGuest(_) => "transfer_read",
            Direction::ToHost(_) => "transfer_write",
        }
    }
}

impl Renderer {
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
        self.transfer(ctx_id, t, Direction::ToGuest(data))
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
        self.transfer(ctx_id, t, Direction::ToHost(data))
    }

    /// Checks everything Rust can (context, resource, box, offset, strides,
    /// level), then copies in `dir`.
    fn transfer(
        &mut self,
        ctx_id: u32,
        t: &TransferArgs,
        mut dir: Direction<'_>,
    ) -> Result<(), RendererError> {
        self.check_context(ctx_id)?;
        let backing_len = self
            .resources
            .get(&t.handle)
            .ok_or(RendererError::UnknownResource(t.handle))?
            .backing
            .as_ref()
            .map_or(0, SharedMemory::len);
        let mut iov = dir.iov();
        let mut bx = check_transfer(t, iov.as_ref().map(|v| v.iov_len), backing_len)?;
        let (iov_ptr, n) = match iov.as_mut() {
            Some(v) => (v.as_sys(), 1u8),
            None => (std::ptr::null_mut(), 0),
        };
        let ret = match dir {
            // SAFETY: `bx` is a valid box on our stack; `iov_ptr` is NULL (C
            // uses the attached backing, alive in `self.resources`) or one
            // iovec over the caller's buffer, exclusively borrowed for this
            // call (`dir` holds the borrow), which C writes within its bounds
            // (it checks the transfer against the iovec size).
            Direction::ToGuest(_) => unsafe {
                sys::virgl_renderer_transfer_read_iov(
                    t.handle,
                    ctx_id,
                    t.level,
                    t.stride,
                    t.layer_stride,
                    bx.as_sys(),
                    t.offset,
                    iov_ptr,
                    n.into(),
                )
            },
            Direction::ToHost(_) => {
                let level = c_level(t.level)?;
                // SAFETY: as for reads; for writes C only reads the guest
                // data, so an iovec over a shared borrow is sound.
                unsafe {
                    sys::virgl_renderer_transfer_write_iov(
                        t.handle,
                        ctx_id,
                        level,
                        t.stride,
                        t.layer_stride,
                        bx.as_sys(),
                        t.offset,
                        iov_ptr,
                        n.into(),
                    )
                }
            }
        };
        if ret != 0 {
            tracing::debug!(handle = t.handle, code = ret, "{} failed", dir.name());
            return Err(RendererError::Transfer(ret));
        }
        Ok(())
    }
}
