//! Syncs: creating, reading and writing them, and `SYNC_WAIT`, whose pending
//! waits expire on their deadlines.

use std::os::fd::AsFd;
use std::time::Instant;

use vtest_protocol::{CommandId, Reply, SyncPoint, SyncWait, SYNC_WAIT_FLAG_ANY};

use super::{io, within, Dispatcher, Result};
use crate::{Backend, SessionError};

impl<B: Backend> Dispatcher<B> {
    pub(super) fn sync_create(&mut self, value: u64) -> Result<()> {
        self.ensure_context()?;
        let live = self.syncs.len() as u64 + 1;
        within("max_syncs", live, u64::from(self.limits.max_syncs))?;
        let id = self.syncs.create(value);
        self.out.queue(&Reply::Id {
            command: CommandId::SyncCreate,
            id,
        });
        Ok(())
    }

    pub(super) fn sync_read(&mut self, id: u32) -> Result<()> {
        let command = CommandId::SyncRead;
        let value = self
            .syncs
            .read(id)
            .ok_or(SessionError::UnknownSync { command, id })?;
        self.out.queue(&Reply::SyncValue(value));
        Ok(())
    }

    pub(super) fn sync_write(&mut self, id: u32, value: u64) -> Result<()> {
        if self.syncs.write(id, value) {
            Ok(())
        } else {
            Err(SessionError::UnknownSync {
                command: CommandId::SyncWrite,
                id,
            })
        }
    }

    pub(super) fn check_syncs(&self, command: CommandId, points: &[SyncPoint]) -> Result<()> {
        match points.iter().find(|p| !self.syncs.contains(p.id)) {
            Some(p) => Err(SessionError::UnknownSync { command, id: p.id }),
            None => Ok(()),
        }
    }

    pub(super) fn sync_wait(&mut self, wait: SyncWait<'_>) -> Result<()> {
        let command = CommandId::SyncWait;
        self.ensure_context()?;
        let points: Vec<SyncPoint> = wait.points().collect();
        self.check_syncs(command, &points)?;
        let pending = self.syncs.waits() as u64 + 1;
        within("max_waits", pending, u64::from(self.limits.max_waits))?;
        let any = wait.flags & SYNC_WAIT_FLAG_ANY != 0;
        let fd = self
            .syncs
            .wait(points, any, wait.timeout_ms)
            .map_err(|e| SessionError::system(command, e))?;
        self.out.queue(&Reply::SyncWait);
        self.out.send_fd(fd.as_fd()).map_err(io)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.syncs.next_deadline()
    }

    pub(crate) fn expire_waits(&mut self, now: Instant) {
        if self.syncs.waits() > 0 {
            self.syncs.check_waits(now);
        }
    }
}
