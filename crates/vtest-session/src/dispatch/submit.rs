//! Submissions and their fences: `SUBMIT_CMD` (an implicit fence each),
//! `SUBMIT_CMD2` (batches that signal syncs, through ring fences), and
//! `RESOURCE_BUSY_WAIT`, which waits for the implicit fences.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vtest_protocol::{CommandId, Reply, SubmitCmd2, SyncPoint, BUSY_WAIT_FLAG_WAIT};

use super::{io, out_of_memory, within, Dispatcher, Result, CTX_ID};
use crate::{Backend, SessionError};

impl<B: Backend> Dispatcher<B> {
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

    pub(super) fn submit_cmd(&mut self, command: CommandId, commands: &[u8]) -> Result<()> {
        self.ensure_context()?;
        self.submit(command, commands)?;
        self.submitted = self.submitted.wrapping_add(1);
        self.backend
            .create_fence(self.submitted)
            .map_err(|source| SessionError::Renderer { command, source })
    }

    pub(super) fn submit_cmd2(&mut self, submit: SubmitCmd2<'_>) -> Result<()> {
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
            within(
                "max_pending_fences",
                pending,
                u64::from(self.limits.max_pending_fences),
            )?;
            self.next_ring_fence += 1;
            let fence_id = self.next_ring_fence;
            self.syncs.queue_submit(batch.ring_idx, fence_id, points);
            self.backend
                .context_create_fence(CTX_ID, batch.ring_idx, fence_id)
                .map_err(|source| SessionError::Renderer { command, source })?;
        }
        Ok(())
    }

    /// Lets the renderer retire fences and signals the syncs waiting on them.
    pub(crate) fn retire_fences(&mut self) {
        self.backend.poll();
        for fence in self.backend.take_context_fences() {
            self.syncs.retire(fence.ring_idx, fence.fence_id);
        }
    }

    /// "Busy" means some `SUBMIT_CMD` of this client has not completed; the
    /// handle is ignored (Mesa passes a fresh fence buffer).
    pub(super) fn busy_wait(&mut self, flags: u32) -> Result<()> {
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
}
