//! A renderer that renders nothing: for tests of the dispatch logic only.
//!
//! Resources keep their backing so transfers can copy between the backing
//! and a per-resource byte store; fences complete at once.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};

use vtest_protocol::{ContextFence, ResourceCreate, ResourceCreateBlob, TransferArgs};
use vtest_shm::SharedMemory;

use crate::{Backend, BackendError};

/// Caps bytes the null backend reports: the sizes virglrenderer 0.10.4 uses.
const CAPS_V1_BYTES: u32 = 308;
const CAPS_V2_BYTES: u32 = 1376;
/// A command dword the null backend rejects, to test error paths.
pub const NULL_BAD_COMMAND: u32 = 0xdead_beef;

struct NullResource {
    backing: Option<SharedMemory>,
    contents: Vec<u8>,
}

/// See the module documentation.
#[derive(Default)]
pub struct NullBackend {
    resources: HashMap<u32, NullResource>,
    contexts: Vec<u32>,
    completed: u32,
    ring_fences: Vec<ContextFence>,
    /// Every command dword submitted, for assertions.
    pub submitted_dwords: usize,
    memory_limit: Option<usize>,
    out_of_memory: bool,
    liveness: Option<OwnedFd>,
}

impl NullBackend {
    /// A backend with `bytes` of renderer memory, behaving as virglrenderer
    /// at a worker's memory limit: a resource past it is still created, and
    /// an out-of-memory report waits for [`Backend::take_out_of_memory`].
    pub fn with_memory_limit(bytes: usize) -> Self {
        NullBackend {
            memory_limit: Some(bytes),
            ..NullBackend::default()
        }
    }

    /// A backend whose renderer lives as long as `fd`'s peer (as a Venus
    /// worker's render server connection).
    pub fn with_liveness_fd(fd: OwnedFd) -> Self {
        NullBackend {
            liveness: Some(fd),
            ..NullBackend::default()
        }
    }

    fn resource(&mut self, handle: u32) -> Result<&mut NullResource, BackendError> {
        self.resources
            .get_mut(&handle)
            .ok_or_else(|| BackendError::new("transfer", format!("no resource {handle}")))
    }

    /// Live resources (to check that a session released them).
    pub fn live_resources(&self) -> usize {
        self.resources.len()
    }

    /// Accounts `size` more bytes against `memory_limit`.
    fn charge(&mut self, size: usize) {
        let used: usize = self.resources.values().map(|r| r.contents.len()).sum();
        if self.memory_limit.is_some_and(|limit| used + size > limit) {
            self.out_of_memory = true;
        }
    }
}

fn byte_range(t: &TransferArgs, len: usize) -> Result<std::ops::Range<usize>, BackendError> {
    let start = usize::try_from(t.offset).map_err(|e| BackendError::new("transfer", e))?;
    let size = (t.bx.w as usize).saturating_mul(t.bx.h.max(1) as usize);
    let end = start.saturating_add(size);
    if end > len {
        return Err(BackendError::new("transfer", "out of bounds"));
    }
    Ok(start..end)
}

impl Backend for NullBackend {
    fn capset_info(&self, set: u32) -> (u32, u32) {
        match set {
            1 => (1, CAPS_V1_BYTES),
            2 => (2, CAPS_V2_BYTES),
            _ => (0, 0),
        }
    }

    fn fill_caps(&self, set: u32, _version: u32) -> Vec<u8> {
        vec![set as u8; self.capset_info(set).1 as usize]
    }

    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: Option<u32>,
        _name: &[u8],
    ) -> Result<(), BackendError> {
        if matches!(capset, Some(c) if c > 2) {
            return Err(BackendError::new("context_create", "capset not enabled"));
        }
        self.contexts.push(ctx_id);
        Ok(())
    }

    fn resource_create(
        &mut self,
        _ctx_id: u32,
        args: &ResourceCreate,
        backing: Option<SharedMemory>,
    ) -> Result<(), BackendError> {
        if args.width == 0 {
            return Err(BackendError::new("resource_create", "zero width"));
        }
        let size = backing.as_ref().map_or(64, |b| b.len());
        self.charge(size);
        self.resources.insert(
            args.handle,
            NullResource {
                backing,
                contents: vec![0; size],
            },
        );
        Ok(())
    }

    fn resource_create_blob(
        &mut self,
        _ctx_id: u32,
        handle: u32,
        _blob: &ResourceCreateBlob,
        backing: Option<SharedMemory>,
    ) -> Result<(), BackendError> {
        if backing.is_none() {
            return Err(BackendError::new("resource_create_blob", "no host blobs"));
        }
        let size = backing.as_ref().map_or(0, |b| b.len());
        self.resources.insert(
            handle,
            NullResource {
                backing,
                contents: vec![0; size],
            },
        );
        Ok(())
    }

    fn resource_export_blob(&mut self, _handle: u32) -> Result<OwnedFd, BackendError> {
        Err(BackendError::new("resource_export_blob", "unsupported"))
    }

    fn take_out_of_memory(&mut self) -> bool {
        std::mem::take(&mut self.out_of_memory)
    }

    fn resource_unref(&mut self, handle: u32) {
        self.resources.remove(&handle);
    }

    fn transfer_read(
        &mut self,
        _ctx_id: u32,
        t: &TransferArgs,
        data: Option<&mut [u8]>,
    ) -> Result<(), BackendError> {
        let r = self.resource(t.handle)?;
        let range = byte_range(t, r.contents.len())?;
        let src = &r.contents[range.clone()];
        match data {
            Some(dst) => {
                let n = dst.len().min(src.len());
                dst[..n].copy_from_slice(&src[..n]);
            }
            None => match &mut r.backing {
                Some(b) if b.len() >= range.end => b
                    .write_at(range.start, src)
                    .map_err(|e| BackendError::new("transfer", e.to_string()))?,
                _ => return Err(BackendError::new("transfer", "no backing")),
            },
        }
        Ok(())
    }

    fn transfer_write(
        &mut self,
        _ctx_id: u32,
        t: &TransferArgs,
        data: Option<&[u8]>,
    ) -> Result<(), BackendError> {
        let r = self.resource(t.handle)?;
        let range = byte_range(t, r.contents.len())?;
        match data {
            Some(src) => {
                let n = src.len().min(range.len());
                r.contents[range.start..range.start + n].copy_from_slice(&src[..n]);
            }
            None => match &r.backing {
                Some(b) if b.len() >= range.end => b
                    .read_at(range.start, &mut r.contents[range.clone()])
                    .map_err(|e| BackendError::new("transfer", e.to_string()))?,
                _ => return Err(BackendError::new("transfer", "no backing")),
            },
        }
        Ok(())
    }

    fn submit_cmd(&mut self, _ctx_id: u32, commands: &[u32]) -> Result<(), BackendError> {
        if commands.contains(&NULL_BAD_COMMAND) {
            return Err(BackendError::new("submit_cmd", "bad command"));
        }
        self.submitted_dwords += commands.len();
        Ok(())
    }

    fn create_fence(&mut self, fence_id: u32) -> Result<(), BackendError> {
        self.completed = fence_id;
        Ok(())
    }

    fn context_create_fence(
        &mut self,
        ctx_id: u32,
        ring_idx: u32,
        fence_id: u64,
    ) -> Result<(), BackendError> {
        if ring_idx != 0 {
            return Err(BackendError::new(
                "context_create_fence",
                "virgl uses ring 0",
            ));
        }
        self.ring_fences.push(ContextFence {
            ctx_id,
            ring_idx,
            fence_id,
        });
        Ok(())
    }

    fn poll(&mut self) {}

    fn last_completed_fence(&self) -> u32 {
        self.completed
    }

    fn take_context_fences(&mut self) -> Vec<ContextFence> {
        std::mem::take(&mut self.ring_fences)
    }

    fn liveness_fd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.liveness.as_ref().map(AsFd::as_fd)
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}
