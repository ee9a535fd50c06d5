//! Command ids (`docs/PROTOCOL.md` §2).

/// Every command id a vtest client may send (1..=38).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CommandId {
    GetCaps = 1,
    ResourceCreate = 2,
    ResourceUnref = 3,
    TransferGet = 4,
    TransferPut = 5,
    SubmitCmd = 6,
    ResourceBusyWait = 7,
    CreateRenderer = 8,
    GetCaps2 = 9,
    PingProtocolVersion = 10,
    ProtocolVersion = 11,
    ResourceCreate2 = 12,
    TransferGet2 = 13,
    TransferPut2 = 14,
    GetParam = 15,
    GetCapset = 16,
    ContextInit = 17,
    ResourceCreateBlob = 18,
    SyncCreate = 19,
    SyncUnref = 20,
    SyncRead = 21,
    SyncWrite = 22,
    SyncWait = 23,
    SubmitCmd2 = 24,
    DrmSyncCreate = 25,
    DrmSyncDestroy = 26,
    DrmSyncHandleToFd = 27,
    DrmSyncFdToHandle = 28,
    DrmSyncImportSyncFile = 29,
    DrmSyncExportSyncFile = 30,
    DrmSyncWait = 31,
    DrmSyncReset = 32,
    DrmSyncSignal = 33,
    DrmSyncTimelineSignal = 34,
    DrmSyncTimelineWait = 35,
    DrmSyncQuery = 36,
    DrmSyncTransfer = 37,
    ResourceExportFd = 38,
}

impl CommandId {
    const ALL: [CommandId; 38] = [
        CommandId::GetCaps,
        CommandId::ResourceCreate,
        CommandId::ResourceUnref,
        CommandId::TransferGet,
        CommandId::TransferPut,
        CommandId::SubmitCmd,
        CommandId::ResourceBusyWait,
        CommandId::CreateRenderer,
        CommandId::GetCaps2,
        CommandId::PingProtocolVersion,
        CommandId::ProtocolVersion,
        CommandId::ResourceCreate2,
        CommandId::TransferGet2,
        CommandId::TransferPut2,
        CommandId::GetParam,
        CommandId::GetCapset,
        CommandId::ContextInit,
        CommandId::ResourceCreateBlob,
        CommandId::SyncCreate,
        CommandId::SyncUnref,
        CommandId::SyncRead,
        CommandId::SyncWrite,
        CommandId::SyncWait,
        CommandId::SubmitCmd2,
        CommandId::DrmSyncCreate,
        CommandId::DrmSyncDestroy,
        CommandId::DrmSyncHandleToFd,
        CommandId::DrmSyncFdToHandle,
        CommandId::DrmSyncImportSyncFile,
        CommandId::DrmSyncExportSyncFile,
        CommandId::DrmSyncWait,
        CommandId::DrmSyncReset,
        CommandId::DrmSyncSignal,
        CommandId::DrmSyncTimelineSignal,
        CommandId::DrmSyncTimelineWait,
        CommandId::DrmSyncQuery,
        CommandId::DrmSyncTransfer,
        CommandId::ResourceExportFd,
    ];

    /// The command with wire id `id`, if there is one.
    pub fn from_u32(id: u32) -> Option<CommandId> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        Self::ALL.get(index).copied()
    }

    /// The wire id.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The payload size in bytes for commands whose size is fixed by their id.
    pub(crate) fn fixed_payload_bytes(self) -> Option<usize> {
        use CommandId::*;
        let dwords = match self {
            GetCaps | GetCaps2 | PingProtocolVersion => 0,
            ResourceUnref | ProtocolVersion | GetParam | ContextInit | SyncUnref | SyncRead => 1,
            ResourceBusyWait | GetCapset | SyncCreate => 2,
            SyncWrite => 3,
            ResourceCreateBlob => 6,
            ResourceCreate | TransferGet2 | TransferPut2 => 10,
            TransferGet | ResourceCreate2 => 11,
            _ => return None,
        };
        Some(dwords * 4)
    }

    /// Whether this is a version-4 (DRM native context) command vtestd does not serve.
    pub(crate) fn is_v4(self) -> bool {
        self.as_u32() >= CommandId::DrmSyncCreate.as_u32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in 1..=38 {
            assert_eq!(CommandId::from_u32(id).unwrap().as_u32(), id);
        }
        assert_eq!(CommandId::from_u32(0), None);
        assert_eq!(CommandId::from_u32(39), None);
        assert_eq!(CommandId::from_u32(u32::MAX), None);
    }
}
