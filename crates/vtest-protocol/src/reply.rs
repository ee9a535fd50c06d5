//! Replies, with the framing quirks of `docs/PROTOCOL.md` §1.4.

use crate::wire::{put, put64};
use crate::CommandId;

/// A reply to encode. Fds that go with a reply are sent separately, after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `GET_CAPS` (set 1) or `GET_CAPS2` (set 2): `LEN` is bytes + 1 and the id
    /// is the caps-set number.
    Caps { set: u32, caps: &'a [u8] },
    /// `TRANSFER_GET` (v0): raw bytes with no header.
    TransferData(&'a [u8]),
    /// `[1, cmd, id]`: `RESOURCE_CREATE`/`CREATE2` (v3+), `CREATE_BLOB`, `SYNC_CREATE`.
    Id { command: CommandId, id: u32 },
    /// `[1, 7, busy]`.
    BusyWait { busy: bool },
    /// `[0, 10]`.
    Ping,
    /// `[1, 11, version]`.
    ProtocolVersion { version: u32 },
    /// `[2, 15, valid, value]`.
    Param { valid: bool, value: u32 },
    /// `[1, 16, 0]` or `[1 + n, 16, 1, caps[n]]` (caps a whole number of dwords).
    Capset(Option<&'a [u8]>),
    /// `[2, 21, lo, hi]`.
    SyncValue(u64),
    /// `[0, 23]`, followed by the eventfd.
    SyncWait,
}

impl Reply<'_> {
    /// Appends the reply's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Caps { set, caps } => {
                put(out, caps.len() as u32 + 1);
                put(out, *set);
                out.extend_from_slice(caps);
            }
            Reply::TransferData(data) => out.extend_from_slice(data),
            Reply::Id { command, id } => words(out, command.as_u32(), &[*id]),
            Reply::BusyWait { busy } => words(out, 7, &[u32::from(*busy)]),
            Reply::Ping => words(out, 10, &[]),
            Reply::ProtocolVersion { version } => words(out, 11, &[*version]),
            Reply::Param { valid, value } => words(out, 15, &[u32::from(*valid), *value]),
            Reply::Capset(None) => words(out, 16, &[0]),
            Reply::Capset(Some(caps)) => {
                put(out, 1 + (caps.len() / 4) as u32);
                put(out, 16);
                put(out, 1);
                out.extend_from_slice(caps);
            }
            Reply::SyncValue(v) => {
                put(out, 2);
                put(out, 21);
                put64(out, *v);
            }
            Reply::SyncWait => words(out, 23, &[]),
        }
    }
}

fn words(out: &mut Vec<u8>, id: u32, body: &[u32]) {
    put(out, body.len() as u32);
    put(out, id);
    body.iter().for_each(|v| put(out, *v));
}
