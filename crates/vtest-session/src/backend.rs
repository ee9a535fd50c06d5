//! What a session needs from a renderer.

use std::os::fd::{BorrowedFd, OwnedFd};

use vtest_protocol::{ContextFence, ResourceCreate, TransferArgs};
use vtest_shm::SharedMemory;

/// A renderer call failed: which one, and the renderer's own error as text
/// (its codes are informational only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed: {reason}")]
pub struct BackendError {
    /// The [`Backend`] method that failed.
    pub operation: &'static str,
    /// Why, as the renderer put it.
    pub reason: String,
}

impl BackendError {
    /// An error for `operation` with a displayable reason.
    pub fn new(operation: &'static str, reason: impl ToString) -> Self {
        BackendError {
            operation,
            reason: reason.to_string(),
        }
    }
}

/// The renderer operations a session uses. One client, one context.
pub trait Backend {
    /// `(max_version, max_size)` of a capability set; `(0, 0)` if unknown.
    fn capset_info(&self, set: u32) -> (u32, u32);
    /// The capability set's bytes at `version` (`max_size` of them).
    fn fill_caps(&self, set: u32, version: u32) -> Vec<u8>;
    /// Creates the client's context; `capset` None means the default (VIRGL2).
    fn context_create(
        &mut self,
        ctx_id: u32,
        capset: Option<u32>,
        name: &[u8],
    ) -> Result<(), BackendError>;
    /// Creates a resource (attached to `ctx_id`), backed by `backing` if given.
    fn resource_create(
        &mut self,
        ctx_id: u32,
        args: &ResourceCreate,
        backing: Option<SharedMemory>,
    ) -> Result<(), BackendError>;
    /// Creates a blob resource.
    fn resource_create_blob(
        &mut self,
        ctx_id: u32,
        handle: u32,
        blob: &vtest_protocol::ResourceCreateBlob,
        backing: Option<SharedMemory>,
    ) -> Result<(), BackendError>;
    /// An fd for a host blob (dma-buf or shm only).
    fn resource_export_blob(&mut self, handle: u32) -> Result<OwnedFd, BackendError>;
    /// Drops a resource and its backing.
    fn resource_unref(&mut self, handle: u32);
    /// Copies from the resource into `data`, or into its backing when `None`.
    fn transfer_read(
        &mut self,
        ctx_id: u32,
        t: &TransferArgs,
        data: Option<&mut [u8]>,
    ) -> Result<(), BackendError>;
    /// Copies into the resource from `data`, or from its backing when `None`.
    fn transfer_write(
        &mut self,
        ctx_id: u32,
        t: &TransferArgs,
        data: Option<&[u8]>,
    ) -> Result<(), BackendError>;
    /// Decodes and runs a virgl command stream.
    fn submit_cmd(&mut self, ctx_id: u32, commands: &[u32]) -> Result<(), BackendError>;
    /// Queues an implicit fence after all work so far.
    fn create_fence(&mut self, fence_id: u32) -> Result<(), BackendError>;
    /// Queues a fence on a context timeline.
    fn context_create_fence(
        &mut self,
        ctx_id: u32,
        ring_idx: u32,
        fence_id: u64,
    ) -> Result<(), BackendError>;
    /// Retires finished fences (calls into the renderer's callbacks).
    fn poll(&mut self);
    /// The highest implicit fence id that has completed.
    fn last_completed_fence(&self) -> u32;
    /// Context fences retired since the last call.
    fn take_context_fences(&mut self) -> Vec<ContextFence>;
    /// An fd that becomes readable when fences may have retired.
    fn poll_fd(&self) -> Option<BorrowedFd<'_>>;
    /// An fd whose hang-up (`POLLHUP`) means the renderer is gone (a Venus
    /// worker's render server connection): the session then ends.
    fn liveness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Whether an allocation of the renderer failed since the last call.
    fn take_out_of_memory(&mut self) -> bool {
        false
    }
}
