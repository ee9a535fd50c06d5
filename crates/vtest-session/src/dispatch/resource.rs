//! Resources: handles, the limits on them, their shared memory, creation and
//! release.

use std::os::fd::AsFd;

use vtest_protocol::{BlobType, CommandId, Reply, ResourceCreate, ResourceCreateBlob};
use vtest_shm::SharedMemory;

use super::{invalid, io, within, Dispatcher, Result, CTX_ID};
use crate::resources::Resources;
use crate::{Backend, SessionError, SessionLimits};

/// Whether one more resource with `shm_bytes` of shared memory stays within
/// `limits`, given the live `resources`.
fn check_new_resource(resources: &Resources, limits: &SessionLimits, shm_bytes: u64) -> Result<()> {
    let live = resources.len() as u64 + 1;
    within("max_resources", live, u64::from(limits.max_resources))?;
    within("max_resource_bytes", shm_bytes, limits.max_resource_bytes)?;
    let total = resources.shm_bytes().saturating_add(shm_bytes);
    within("max_shm_bytes", total, limits.max_shm_bytes)
}

impl<B: Backend> Dispatcher<B> {
    /// The handle for a new resource: client-chosen before v3, server-chosen
    /// from v3 (and for handle 0).
    fn new_handle(&mut self, command: CommandId, requested: u32) -> Result<u32> {
        if self.version >= 3 && requested != 0 {
            return Err(invalid(command, "handle must be 0 from protocol version 3"));
        }
        if requested == 0 {
            return Ok(self.resources.allocate_id());
        }
        if self.resources.contains(requested) {
            return Err(SessionError::ResourceExists(requested));
        }
        Ok(requested)
    }

    fn check_new_resource(&self, shm_bytes: u64) -> Result<()> {
        check_new_resource(&self.resources, &self.limits, shm_bytes)
    }

    fn shared_memory(&self, command: CommandId, handle: u32, len: u64) -> Result<SharedMemory> {
        let len = usize::try_from(len).map_err(|_| invalid(command, "size"))?;
        SharedMemory::new(&format!("vtest-res-{handle}"), len).map_err(|e| match e.errno() {
            Some(errno) => SessionError::system(command, errno.into()),
            None => SessionError::Io(std::io::Error::other(format!("shared memory: {e}"))),
        })
    }

    pub(super) fn resource_create(
        &mut self,
        command: CommandId,
        mut args: ResourceCreate,
        data_size: u32,
    ) -> Result<()> {
        self.ensure_context()?;
        let handle = self.new_handle(command, args.handle)?;
        self.check_new_resource(u64::from(data_size))?;
        args.handle = handle;
        let mut backing = match data_size {
            0 => None,
            n => Some(self.shared_memory(command, handle, u64::from(n))?),
        };
        let client_fd = backing.as_mut().and_then(SharedMemory::take_fd);
        self.backend
            .resource_create(CTX_ID, &args, backing)
            .map_err(|source| SessionError::Renderer { command, source })?;
        self.resources.insert(handle, u64::from(data_size));
        if self.version >= 3 {
            self.out.queue(&Reply::Id {
                command,
                id: handle,
            });
        }
        if let Some(fd) = client_fd {
            self.out.send_fd(fd.as_fd()).map_err(io)?;
        }
        Ok(())
    }

    pub(super) fn resource_create_blob(&mut self, blob: ResourceCreateBlob) -> Result<()> {
        let command = CommandId::ResourceCreateBlob;
        self.ensure_context()?;
        let blob_type = BlobType::from_u32(blob.blob_type)
            .ok_or_else(|| invalid(command, format!("blob type {}", blob.blob_type)))?;
        let guest_backed = blob_type != BlobType::Host3d;
        if guest_backed && blob.size == 0 {
            return Err(invalid(command, "empty guest blob"));
        }
        // Host memory (Venus device memory exported to the client) counts
        // as guest memory does: per resource and in the client's total.
        let bytes = blob.size;
        self.check_new_resource(bytes)?;
        let handle = self.resources.allocate_id();
        let mut backing = if guest_backed {
            Some(self.shared_memory(command, handle, blob.size)?)
        } else {
            None
        };
        let guest_fd = backing.as_mut().and_then(SharedMemory::take_fd);
        self.backend
            .resource_create_blob(CTX_ID, handle, &blob, backing)
            .map_err(|source| SessionError::Renderer { command, source })?;
        self.resources.insert(handle, bytes);
        let fd = match guest_fd {
            Some(fd) => fd,
            None => self
                .backend
                .resource_export_blob(handle)
                .map_err(|source| SessionError::Renderer { command, source })?,
        };
        self.out.queue(&Reply::Id {
            command,
            id: handle,
        });
        self.out.send_fd(fd.as_fd()).map_err(io)
    }

    /// `RESOURCE_UNREF`: unknown handles are ignored.
    pub(super) fn resource_unref(&mut self, handle: u32) {
        if self.resources.remove(handle) {
            self.backend.resource_unref(handle);
        }
    }

    pub(super) fn known(&self, command: CommandId, handle: u32) -> Result<()> {
        if self.resources.contains(handle) {
            Ok(())
        } else {
            Err(SessionError::UnknownResource { command, handle })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exceeded(r: Result<()>) -> &'static str {
        match r {
            Err(SessionError::LimitExceeded { limit, .. }) => limit,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn new_resources_are_checked_against_every_limit() {
        let limits = SessionLimits {
            max_resources: 2,
            max_resource_bytes: 100,
            max_shm_bytes: 150,
            ..SessionLimits::default()
        };
        let mut live = Resources::default();
        assert!(check_new_resource(&live, &limits, 100).is_ok());
        assert_eq!(
            exceeded(check_new_resource(&live, &limits, 101)),
            "max_resource_bytes"
        );
        live.insert(1, 100);
        assert!(check_new_resource(&live, &limits, 50).is_ok());
        assert_eq!(
            exceeded(check_new_resource(&live, &limits, 51)),
            "max_shm_bytes"
        );
        live.insert(2, 0);
        assert_eq!(
            exceeded(check_new_resource(&live, &limits, 0)),
            "max_resources"
        );
        live.remove(1);
        assert!(check_new_resource(&live, &limits, 100).is_ok());
    }
}
