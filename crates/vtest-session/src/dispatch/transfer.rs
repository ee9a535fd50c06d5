//! Transfers: `TRANSFER_GET`/`PUT` with the data on the socket, and
//! `TRANSFER_GET2`/`PUT2` through the resource's shared memory. A transfer the
//! renderer refuses is logged, not fatal, as with the reference.

use tracing::debug;
use vtest_protocol::{CommandId, Reply, Transfer, Transfer2, TransferArgs};

use super::{invalid, out_of_memory, Dispatcher, Result, CTX_ID};
use crate::{Backend, SessionError};

/// A v2 transfer's offset must lie inside the resource's `shm_len` bytes of
/// shared memory (so a resource without any takes none).
fn check_shm_offset(command: CommandId, offset: u32, shm_len: u64) -> Result<()> {
    if u64::from(offset) >= shm_len {
        return Err(invalid(
            command,
            format!("offset {offset} past {shm_len} bytes of shared memory"),
        ));
    }
    Ok(())
}

impl<B: Backend> Dispatcher<B> {
    pub(super) fn transfer_get(&mut self, t: Transfer) -> Result<()> {
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

    pub(super) fn transfer_put(&mut self, t: Transfer, data: &[u8]) -> Result<()> {
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

    pub(super) fn transfer2(&mut self, command: CommandId, t: Transfer2) -> Result<()> {
        self.ensure_context()?;
        let shm_len = self
            .resources
            .shm_len(t.handle)
            .ok_or(SessionError::UnknownResource {
                command,
                handle: t.handle,
            })?;
        check_shm_offset(command, t.offset, shm_len)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_offsets_must_lie_inside_the_shared_memory() {
        let put = CommandId::TransferPut2;
        assert!(check_shm_offset(put, 0, 1).is_ok());
        assert!(check_shm_offset(put, 4095, 4096).is_ok());
        assert!(check_shm_offset(put, 4096, 4096).is_err());
        assert!(check_shm_offset(put, 0, 0).is_err());
        match check_shm_offset(put, u32::MAX, u64::from(u32::MAX)) {
            Err(SessionError::InvalidArgument { command, reason }) => {
                assert_eq!(command, put);
                assert!(reason.contains("4294967295"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(check_shm_offset(put, u32::MAX, 1 << 32).is_ok());
    }
}
