//! Resources: plain and blob resources with the shared memory that backs
//! them, their release, and exporting a blob's fd.

use std::ffi::c_int;
use std::os::fd::{FromRawFd, OwnedFd};

use virglrenderer_sys as sys;
use vtest_shm::SharedMemory;

use super::{Renderer, Resource};
use crate::checks::c_id;
use crate::error::RendererError;
use crate::ffi::PinnedIov;
use crate::types::{BlobArgs, BlobFdType, ResourceCreateArgs};

impl Renderer {
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
