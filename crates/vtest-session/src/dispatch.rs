//! The command handlers: every client value is checked here before it reaches
//! the renderer.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, warn};
use vtest_control::SessionStats;
use vtest_protocol::{
    negotiate, param, BlobType, CommandId, Reply, Request, ResourceCreate, ResourceCreateBlob,
    SubmitCmd2, SyncPoint, SyncWait, Transfer, Transfer2, TransferArgs, BUSY_WAIT_FLAG_WAIT,
    MAX_TIMELINE_COUNT, MAX_VERSION, SYNC_WAIT_FLAG_ANY,
};
use vtest_shm::SharedMemory;

use crate::conn::Output;
use crate::resources::Resources;
use crate::syncs::Syncs;
use crate::{Backend, SessionError, SessionLimits};

/// The only renderer context of a worker.
const CTX_ID: u32 = 1;
/// Capability sets answered by `GET_CAPS` and `GET_CAPS2`.
const CAPSET_VIRGL: u32 = 1;
const CAPSET_VIRGL2: u32 = 2;

/// The renderer context is created lazily (`PROTOCOL.md` §2.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    None,
    Ready,
    Failed,
}

pub(crate) struct Dispatcher<B: Backend> {
    backend: B,
    out: Output,
    limits: SessionLimits,
    name: Option<Vec<u8>>,
    version: u32,
    capset: Option<u32>,
    context: Context,
    /// The command that created the renderer context, and with it the first
    /// object the client holds; from then on the version is fixed.
    objects_since: Option<CommandId>,
    resources: Resources,
    syncs: Syncs,
    /// Implicit fences created, one per `SUBMIT_CMD`.
    submitted: u32,
    next_ring_fence: u64,
    commands: u64,
    /// Aligned copy of a command stream for the renderer.
    scratch: Vec<u32>,
}

type Result<T> = std::result::Result<T, SessionError>;

fn invalid(command: CommandId, reason: impl Into<String>) -> SessionError {
    SessionError::InvalidArgument {
        command,
        reason: reason.into(),
    }
}

/// An allocation for `command` failed (the worker is at its memory limit).
fn out_of_memory(command: CommandId) -> SessionError {
    SessionError::system(command, nix::errno::Errno::ENOMEM.into())
}

fn io(e: std::io::Error) -> SessionError {
    SessionError::Io(e)
}

impl<B: Backend> Dispatcher<B> {
    pub(crate) fn new(backend: B, out: Output, limits: SessionLimits) -> Self {
        Dispatcher {
            backend,
            out,
            limits,
            name: None,
            version: 0,
            capset: None,
            context: Context::None,
            objects_since: None,
            resources: Resources::default(),
            syncs: Syncs::default(),
            submitted: 0,
            next_ring_fence: 0,
            commands: 0,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub(crate) fn stats(&self, bytes_in: u64) -> SessionStats {
        SessionStats {
            commands: self.commands,
            bytes_in,
            bytes_out: self.out.bytes_out,
            resources_created: self.resources.created,
            live_resources: self.resources.len() as u64,
            shm_bytes: self.resources.shm_bytes(),
            fences_submitted: u64::from(self.submitted),
            fences_completed: u64::from(self.backend.last_completed_fence()),
            fds_sent: self.out.fds_sent,
        }
    }

    pub(crate) fn client_name(&self) -> String {
        let name = self.name.as_deref().unwrap_or_default();
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned()
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(io)
    }

    /// Writes the queued replies once they pass `bytes` (a client that
    /// pipelines without reading then blocks its own worker, not its memory).
    pub(crate) fn flush_over(&mut self, bytes: usize) -> Result<()> {
        if self.out.queued() > bytes {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn fence_fd(&self) -> Option<BorrowedFd<'_>> {
        self.backend.poll_fd()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.syncs.next_deadline()
    }

    pub(crate) fn expire_waits(&mut self, now: Instant) {
        if self.syncs.waits() > 0 {
            self.syncs.check_waits(now);
        }
    }

    /// Lets the renderer retire fences and signals the syncs waiting on them.
    pub(crate) fn retire_fences(&mut self) {
        self.backend.poll();
        for fence in self.backend.take_context_fences() {
            self.syncs.retire(fence.ring_idx, fence.fence_id);
        }
    }

    /// Releases everything the client still holds.
    pub(crate) fn teardown(&mut self) {
        for handle in self.resources.handles() {
            self.backend.resource_unref(handle);
            self.resources.remove(handle);
        }
    }

    /// Runs one request.
    pub(crate) fn handle(&mut self, request: Request<'_>) -> Result<()> {
        self.commands += 1;
        let command = request.command();
        match (&self.name, &request) {
            (None, Request::CreateRenderer { .. }) | (Some(_), _) => {}
            (None, _) => return Err(SessionError::ContextMissing(command)),
        }
        self.dispatch(command, request)?;
        if self.objects_since.is_none() && self.context != Context::None {
            self.objects_since = Some(command);
        }
        if self.backend.take_out_of_memory() {
            // The renderer carries on after a failed allocation, but the
            // client's rendering is incomplete from here: end it, saying why.
            return Err(SessionError::WorkerExhausted {
                command,
                resource: crate::WorkerResource::Memory,
                source: std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    "the renderer reported GL_OUT_OF_MEMORY",
                ),
            });
        }
        Ok(())
    }

    fn dispatch(&mut self, command: CommandId, request: Request<'_>) -> Result<()> {
        match request {
            Request::CreateRenderer { name } => self.create_renderer(name),
            Request::GetCaps => self.get_caps(CAPSET_VIRGL),
            Request::GetCaps2 => self.get_caps(CAPSET_VIRGL2),
            Request::PingProtocolVersion => {
                self.out.queue(&Reply::Ping);
                Ok(())
            }
            Request::ProtocolVersion { version } => self.protocol_version(version),
            Request::ResourceBusyWait { flags, .. } => self.busy_wait(flags),
            Request::ResourceCreate(args) => self.resource_create(command, args, 0),
            Request::ResourceCreate2 { args, data_size } => {
                self.resource_create(command, args, data_size)
            }
            Request::ResourceUnref { handle } => {
                if self.resources.remove(handle) {
                    self.backend.resource_unref(handle);
                }
                Ok(())
            }
            Request::TransferGet(t) => self.transfer_get(t),
            Request::TransferPut { transfer, data } => self.transfer_put(transfer, data),
            Request::TransferGet2(t) => self.transfer2(command, t),
            Request::TransferPut2(t) => self.transfer2(command, t),
            Request::SubmitCmd { commands } => self.submit_cmd(command, commands),
            Request::GetParam { param } => {
                let (valid, value) = match param {
                    param::MAX_TIMELINE_COUNT => (true, MAX_TIMELINE_COUNT),
                    _ => (false, 0),
                };
                self.out.queue(&Reply::Param { valid, value });
                Ok(())
            }
            Request::GetCapset { id, version } => self.get_capset(id, version),
            Request::ContextInit { capset } => self.context_init(capset),
            Request::ResourceCreateBlob(blob) => self.resource_create_blob(blob),
            Request::SyncCreate { value } => self.sync_create(value),
            Request::SyncUnref { id } => {
                self.syncs.unref(id);
                Ok(())
            }
            Request::SyncRead { id } => {
                let value = self
                    .syncs
                    .read(id)
                    .ok_or(SessionError::UnknownSync { command, id })?;
                self.out.queue(&Reply::SyncValue(value));
                Ok(())
            }
            Request::SyncWrite { id, value } => {
                if self.syncs.write(id, value) {
                    Ok(())
                } else {
                    Err(SessionError::UnknownSync { command, id })
                }
            }
            Request::SyncWait(wait) => self.sync_wait(wait),
            Request::SubmitCmd2(submit) => self.submit_cmd2(submit),
        }
    }

    fn create_renderer(&mut self, name: &[u8]) -> Result<()> {
        if self.name.is_some() {
            return Err(SessionError::UnexpectedCommand(CommandId::CreateRenderer));
        }
        self.name = Some(name.to_vec());
        self.version = 0;
        Ok(())
    }

    /// Negotiates the version; again as often as the client likes (Mesa 25
    /// asks for 3, reads the caps, then asks for 2), but only until it has
    /// objects: resources, syncs and fences made under one version's rules
    /// (who picks handles, which replies carry headers) cannot switch to
    /// another's, so a late PROTOCOL_VERSION ends the client, whatever it asks.
    fn protocol_version(&mut self, requested: u32) -> Result<()> {
        if let Some(since) = self.objects_since {
            return Err(SessionError::Renegotiation {
                requested,
                version: self.version,
                since,
            });
        }
        self.version = negotiate(requested, MAX_VERSION);
        self.out.queue(&Reply::ProtocolVersion {
            version: self.version,
        });
        Ok(())
    }

    /// Creates the renderer context on first use.
    fn ensure_context(&mut self) -> Result<()> {
        match self.context {
            Context::Ready => Ok(()),
            Context::Failed => Err(SessionError::ContextFailed),
            Context::None => {
                let name = self.name.as_deref().unwrap_or_default();
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                match self.backend.context_create(CTX_ID, self.capset, name) {
                    Ok(()) => {
                        self.context = Context::Ready;
                        Ok(())
                    }
                    Err(e) => {
                        warn!(error = %e, "renderer context creation failed");
                        self.context = Context::Failed;
                        Err(SessionError::ContextFailed)
                    }
                }
            }
        }
    }

    fn get_caps(&mut self, set: u32) -> Result<()> {
        let (_, size) = self.backend.capset_info(set);
        if size == 0 {
            return Err(invalid(CommandId::GetCaps2, "renderer has no caps set 2"));
        }
        let caps = self.backend.fill_caps(set, 1);
        self.out.queue(&Reply::Caps { set, caps: &caps });
        Ok(())
    }

    fn get_capset(&mut self, id: u32, version: u32) -> Result<()> {
        let (max_version, max_size) = self.backend.capset_info(id);
        if (max_version == 0 && max_size == 0) || version > max_version {
            self.out.queue(&Reply::Capset(None));
            return Ok(());
        }
        if max_size % 4 != 0 {
            return Err(invalid(CommandId::GetCapset, "caps size not in dwords"));
        }
        let caps = self.backend.fill_caps(id, version);
        self.out.queue(&Reply::Capset(Some(&caps)));
        Ok(())
    }

    fn context_init(&mut self, capset: u32) -> Result<()> {
        let command = CommandId::ContextInit;
        if capset == 0 {
            return Err(invalid(command, "capset 0"));
        }
        match (self.context, self.capset) {
            (Context::None, _) => {
                self.capset = Some(capset);
                // A failure surfaces at the next command that needs the
                // context, as with the reference (CONTEXT_INIT has no reply).
                let _ = self.ensure_context();
                Ok(())
            }
            (_, Some(current)) if current == capset => Ok(()),
            _ => Err(invalid(command, format!("context exists; capset {capset}"))),
        }
    }

    /// "Busy" means some `SUBMIT_CMD` of this client has not completed; the
    /// handle is ignored (Mesa passes a fresh fence buffer).
    fn busy_wait(&mut self, flags: u32) -> Result<()> {
        self.backend.poll();
        let mut busy = self.busy();
        if busy && flags & BUSY_WAIT_FLAG_WAIT != 0 {
            self.out.flush().map_err(io)?;
            while busy {
                self.wait_fence_fd()?;
                self.retire_fences();
                busy = self.busy();
            }
        }
        self.out.queue(&Reply::BusyWait { busy });
        Ok(())
    }

    fn busy(&self) -> bool {
        self.backend.last_completed_fence() != self.submitted
    }

    /// Blocks until the renderer's fence fd is readable.
    fn wait_fence_fd(&self) -> Result<()> {
        let Some(fd) = self.backend.poll_fd() else {
            // Without a poll fd the renderer retires fences synchronously.
            return Ok(());
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(SessionError::Io(e.into())),
        }
    }

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
        let limits = &self.limits;
        let live = self.resources.len() as u64 + 1;
        if live > u64::from(limits.max_resources) {
            return Err(SessionError::LimitExceeded {
                limit: "max_resources",
                value: live,
                max: u64::from(limits.max_resources),
            });
        }
        if shm_bytes > limits.max_resource_bytes {
            return Err(SessionError::LimitExceeded {
                limit: "max_resource_bytes",
                value: shm_bytes,
                max: limits.max_resource_bytes,
            });
        }
        let total = self.resources.shm_bytes().saturating_add(shm_bytes);
        if total > limits.max_shm_bytes {
            return Err(SessionError::LimitExceeded {
                limit: "max_shm_bytes",
                value: total,
                max: limits.max_shm_bytes,
            });
        }
        Ok(())
    }

    fn shared_memory(&self, command: CommandId, handle: u32, len: u64) -> Result<SharedMemory> {
        let len = usize::try_from(len).map_err(|_| invalid(command, "size"))?;
        SharedMemory::new(&format!("vtest-res-{handle}"), len).map_err(|e| match e.errno() {
            Some(errno) => SessionError::system(command, errno.into()),
            None => SessionError::Io(std::io::Error::other(format!("shared memory: {e}"))),
        })
    }

    fn resource_create(
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

    fn resource_create_blob(&mut self, blob: ResourceCreateBlob) -> Result<()> {
        let command = CommandId::ResourceCreateBlob;
        self.ensure_context()?;
        let blob_type = BlobType::from_u32(blob.blob_type)
            .ok_or_else(|| invalid(command, format!("blob type {}", blob.blob_type)))?;
        let guest_backed = blob_type != BlobType::Host3d;
        let shm_bytes = if guest_backed { blob.size } else { 0 };
        if guest_backed && blob.size == 0 {
            return Err(invalid(command, "empty guest blob"));
        }
        self.check_new_resource(shm_bytes)?;
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
        self.resources.insert(handle, shm_bytes);
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

    fn known(&self, command: CommandId, handle: u32) -> Result<()> {
        if self.resources.contains(handle) {
            Ok(())
        } else {
            Err(SessionError::UnknownResource { command, handle })
        }
    }

    fn transfer_get(&mut self, t: Transfer) -> Result<()> {
        let command = CommandId::TransferGet;
        self.ensure_context()?;
        self.known(command, t.handle)?;
        // Zeroed, so a failed read sends zeros, never stale heap contents.
        let len = t.data_size as usize;
        let mut data = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|_| out_of_memory(command))?;
        data.resize(len, 0);
        // The reply's header and data are copied into the output buffer.
        self.out
            .reserve(len + vtest_protocol::HEADER_BYTES)
            .map_err(|e| SessionError::system(command, e))?;
        if let Err(e) = self
            .backend
            .transfer_read(CTX_ID, &TransferArgs::from(&t), Some(&mut data))
        {
            debug!(error = %e, "TRANSFER_GET failed; sending zeros");
        }
        self.out.queue(&Reply::TransferData(&data));
        Ok(())
    }

    fn transfer_put(&mut self, t: Transfer, data: &[u8]) -> Result<()> {
        let command = CommandId::TransferPut;
        self.ensure_context()?;
        self.known(command, t.handle)?;
        if let Err(e) = self
            .backend
            .transfer_write(CTX_ID, &TransferArgs::from(&t), Some(data))
        {
            debug!(error = %e, "TRANSFER_PUT failed");
        }
        Ok(())
    }

    fn transfer2(&mut self, command: CommandId, t: Transfer2) -> Result<()> {
        self.ensure_context()?;
        let shm_len = self
            .resources
            .shm_len(t.handle)
            .ok_or(SessionError::UnknownResource {
                command,
                handle: t.handle,
            })?;
        if u64::from(t.offset) >= shm_len {
            return Err(invalid(
                command,
                format!("offset {} past {shm_len} bytes of shared memory", t.offset),
            ));
        }
        let args = TransferArgs::from(&t);
        let result = if command == CommandId::TransferGet2 {
            self.backend.transfer_read(CTX_ID, &args, None)
        } else {
            self.backend.transfer_write(CTX_ID, &args, None)
        };
        if let Err(e) = result {
            debug!(error = %e, ?command, "transfer failed");
        }
        Ok(())
    }

    fn submit(&mut self, command: CommandId, commands: &[u8]) -> Result<()> {
        self.scratch.clear();
        self.scratch
            .try_reserve(commands.len() / 4)
            .map_err(|_| out_of_memory(command))?;
        self.scratch.extend(
            commands
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
        );
        self.backend
            .submit_cmd(CTX_ID, &self.scratch)
            .map_err(|source| SessionError::Renderer { command, source })
    }

    fn submit_cmd(&mut self, command: CommandId, commands: &[u8]) -> Result<()> {
        self.ensure_context()?;
        self.submit(command, commands)?;
        self.submitted = self.submitted.wrapping_add(1);
        self.backend
            .create_fence(self.submitted)
            .map_err(|source| SessionError::Renderer { command, source })
    }

    fn sync_create(&mut self, value: u64) -> Result<()> {
        self.ensure_context()?;
        let live = self.syncs.len() as u64 + 1;
        if live > u64::from(self.limits.max_syncs) {
            return Err(SessionError::LimitExceeded {
                limit: "max_syncs",
                value: live,
                max: u64::from(self.limits.max_syncs),
            });
        }
        let id = self.syncs.create(value);
        self.out.queue(&Reply::Id {
            command: CommandId::SyncCreate,
            id,
        });
        Ok(())
    }

    fn check_syncs(&self, command: CommandId, points: &[SyncPoint]) -> Result<()> {
        match points.iter().find(|p| !self.syncs.contains(p.id)) {
            Some(p) => Err(SessionError::UnknownSync { command, id: p.id }),
            None => Ok(()),
        }
    }

    fn sync_wait(&mut self, wait: SyncWait<'_>) -> Result<()> {
        let command = CommandId::SyncWait;
        self.ensure_context()?;
        let points: Vec<SyncPoint> = wait.points().collect();
        self.check_syncs(command, &points)?;
        let pending = self.syncs.waits() as u64 + 1;
        if pending > u64::from(self.limits.max_waits) {
            return Err(SessionError::LimitExceeded {
                limit: "max_waits",
                value: pending,
                max: u64::from(self.limits.max_waits),
            });
        }
        let any = wait.flags & SYNC_WAIT_FLAG_ANY != 0;
        let fd = self
            .syncs
            .wait(points, any, wait.timeout_ms)
            .map_err(|e| SessionError::system(command, e))?;
        self.out.queue(&Reply::SyncWait);
        self.out.send_fd(fd.as_fd()).map_err(io)
    }

    fn submit_cmd2(&mut self, submit: SubmitCmd2<'_>) -> Result<()> {
        let command = CommandId::SubmitCmd2;
        self.ensure_context()?;
        for batch in submit.batches() {
            let points: Vec<SyncPoint> = submit.syncs(batch).collect();
            self.check_syncs(command, &points)?;
            self.submit(command, submit.commands(batch))?;
            if points.is_empty() {
                continue;
            }
            if !batch.uses_ring() {
                self.syncs.signal(&points);
                continue;
            }
            let pending = self.syncs.pending_submits() as u64 + 1;
            if pending > u64::from(self.limits.max_pending_fences) {
                return Err(SessionError::LimitExceeded {
                    limit: "max_pending_fences",
                    value: pending,
                    max: u64::from(self.limits.max_pending_fences),
                });
            }
            self.next_ring_fence += 1;
            let fence_id = self.next_ring_fence;
            self.syncs.queue_submit(batch.ring_idx, fence_id, points);
            self.backend
                .context_create_fence(CTX_ID, batch.ring_idx, fence_id)
                .map_err(|source| SessionError::Renderer { command, source })?;
        }
        Ok(())
    }
}
