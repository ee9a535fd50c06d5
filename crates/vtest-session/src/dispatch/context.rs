//! The client's renderer and its context: `CREATE_RENDERER`, version
//! negotiation, capability sets and `CONTEXT_INIT`.

use tracing::warn;
use vtest_protocol::{negotiate, CommandId, Reply, MAX_VERSION};

use super::{invalid, until_nul, Context, Dispatcher, Result, CTX_ID};
use crate::{Backend, SessionError};

impl<B: Backend> Dispatcher<B> {
    pub(super) fn create_renderer(&mut self, name: &[u8]) -> Result<()> {
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
    pub(super) fn protocol_version(&mut self, requested: u32) -> Result<()> {
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
    pub(super) fn ensure_context(&mut self) -> Result<()> {
        match self.context {
            Context::Ready => Ok(()),
            Context::Failed => Err(SessionError::ContextFailed),
            Context::None => {
                let name = until_nul(self.name.as_deref().unwrap_or_default());
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

    pub(super) fn get_caps(&mut self, command: CommandId, set: u32) -> Result<()> {
        let (_, size) = self.backend.capset_info(set);
        if size == 0 {
            return Err(invalid(command, format!("renderer has no caps set {set}")));
        }
        let caps = self.backend.fill_caps(set, 1);
        self.out.queue(&Reply::Caps { set, caps: &caps });
        Ok(())
    }

    pub(super) fn get_capset(&mut self, id: u32, version: u32) -> Result<()> {
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

    pub(super) fn context_init(&mut self, capset: u32) -> Result<()> {
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
}
