//! The command handlers: every client value is checked here before it reaches
//! the renderer. This module holds the per-client state and routes each
//! request; the handlers live in one submodule per kind of object.

use std::os::fd::BorrowedFd;

use vtest_control::SessionStats;
use vtest_protocol::{param, CommandId, Reply, Request, MAX_TIMELINE_COUNT};

use crate::conn::Output;
use crate::resources::Resources;
use crate::syncs::Syncs;
use crate::{Backend, SessionError, SessionLimits};

mod context;
mod resource;
mod submit;
mod sync;
mod transfer;

/// The only renderer context of a worker.
pub const CTX_ID: u32 = 1;
/// Capability sets answered by `GET_CAPS` and `GET_CAPS2`.
const CAPSET_VIRGL: u32 = 1;
pub const CAPSET_VIRGL2: u32 = 2;
/// Bytes of the client's name shown in logs.
const MAX_NAME_SHOWN: usize = 64;

/// The renderer context is created lazily (`docs/PROTOCOL.md` §2.17).
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

/// `value` may not pass the limit `limit`, `max`.
fn within(limit: &'static str, value: u64, max: u64) -> Result<()> {
    if value > max {
        return Err(SessionError::LimitExceeded { limit, value, max });
    }
    Ok(())
}

/// The client's name up to its first NUL (C clients send it terminated).
fn until_nul(name: &[u8]) -> &[u8] {
    name.split(|b| *b == 0).next().unwrap_or_default()
}

/// The client's name as logs show it: up to its first NUL, at most
/// [`MAX_NAME_SHOWN`] bytes, invalid UTF-8 replaced.
fn printable_name(name: &[u8]) -> String {
    let name = until_nul(name);
    String::from_utf8_lossy(&name[..name.len().min(MAX_NAME_SHOWN)]).into_owned()
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
        printable_name(self.name.as_deref().unwrap_or_default())
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

    pub(crate) fn liveness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.backend.liveness_fd()
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
            Request::GetCaps => self.get_caps(command, CAPSET_VIRGL),
            Request::GetCaps2 => self.get_caps(command, CAPSET_VIRGL2),
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
                self.resource_unref(handle);
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
            Request::SyncRead { id } => self.sync_read(id),
            Request::SyncWrite { id, value } => self.sync_write(id, value),
            Request::SyncWait(wait) => self.sync_wait(wait),
            Request::SubmitCmd2(submit) => self.submit_cmd2(submit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_allow_their_maximum_only() {
        assert!(within("max_syncs", 4, 4).is_ok());
        assert!(within("max_syncs", 0, 0).is_ok());
        match within("max_syncs", 5, 4) {
            Err(SessionError::LimitExceeded { limit, value, max }) => {
                assert_eq!((limit, value, max), ("max_syncs", 5, 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_stop_at_nul_and_are_shortened_for_logs() {
        assert_eq!(until_nul(b"glmark2\0junk"), b"glmark2");
        assert_eq!(until_nul(b"\0"), b"");
        assert_eq!(until_nul(b""), b"");
        assert_eq!(printable_name(b"mesa\0x"), "mesa");
        assert_eq!(printable_name(&[b'a'; 100]), "a".repeat(MAX_NAME_SHOWN));
        assert_eq!(printable_name(b"\xff\0"), "\u{fffd}");
    }
}
