//! Framing: one request out of a byte buffer, by command id.

use crate::request::{blob, ResourceCreate, SubmitCmd2, SyncWait, Transfer, Transfer2};
use crate::wire::{dword, join64, HEADER_BYTES};
use crate::{CommandId, ProtocolError, Request};

/// Caps on what one request may make the server buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `SUBMIT_CMD`, `SUBMIT_CMD2` or `SYNC_WAIT` payload, in bytes.
    pub max_command_bytes: u32,
    /// Largest inline `TRANSFER_PUT`/`TRANSFER_GET` data, in bytes.
    pub max_transfer_bytes: u32,
    /// Largest `CREATE_RENDERER` name, in bytes (the reference allows 1 MiB).
    pub max_name_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_command_bytes: 64 << 20,
            max_transfer_bytes: 64 << 20,
            max_name_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// The most bytes [`decode`] can ever ask for with these limits.
    pub fn max_frame_bytes(&self) -> usize {
        let fixed = 11 * 4;
        let largest = (self.max_command_bytes as usize)
            .max(self.max_transfer_bytes as usize + fixed)
            .max(self.max_name_bytes as usize);
        HEADER_BYTES + largest
    }
}

/// The outcome of looking at a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete request, and how many bytes of the buffer it used.
    Request(Request<'a>, usize),
    /// The buffer holds only part of a request: it needs at least this many
    /// bytes in all (never more than [`Limits::max_frame_bytes`]).
    NeedMore(usize),
}

/// Decodes the request at the start of `buf`.
///
/// Pure and allocation-free except for `SUBMIT_CMD2` batch headers, whose count
/// is bounded by the payload size. `LEN` is used only where the command's
/// payload is variable (`docs/PROTOCOL.md` §1.3).
pub fn decode<'a>(buf: &'a [u8], limits: &Limits) -> Result<Decoded<'a>, ProtocolError> {
    if buf.len() < HEADER_BYTES {
        return Ok(Decoded::NeedMore(HEADER_BYTES));
    }
    let len = dword(buf, 0);
    let raw_id = dword(buf, 1);
    let command = CommandId::from_u32(raw_id).ok_or(ProtocolError::UnknownCommand(raw_id))?;
    if command.is_v4() {
        return Err(ProtocolError::Unsupported(command));
    }
    let payload_bytes = match command.fixed_payload_bytes() {
        Some(n) => n,
        None => variable_payload_bytes(command, len, limits)?,
    };
    let Some(payload_bytes) = payload_bytes_or_more(command, payload_bytes, buf, limits)? else {
        return Ok(Decoded::NeedMore(HEADER_BYTES + 11 * 4));
    };
    let total = HEADER_BYTES + payload_bytes;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    let p = &buf[HEADER_BYTES..total];
    Ok(Decoded::Request(parse(command, p, limits)?, total))
}

/// Payload size of commands framed by `LEN`.
fn variable_payload_bytes(
    command: CommandId,
    len: u32,
    limits: &Limits,
) -> Result<usize, ProtocolError> {
    match command {
        CommandId::CreateRenderer => {
            if len > limits.max_name_bytes {
                return Err(ProtocolError::NameTooLong {
                    bytes: len,
                    max: limits.max_name_bytes,
                });
            }
            Ok(len as usize)
        }
        CommandId::SubmitCmd | CommandId::SubmitCmd2 | CommandId::SyncWait => {
            let bytes = u64::from(len) * 4;
            if bytes > u64::from(limits.max_command_bytes) {
                return Err(ProtocolError::CommandTooLarge {
                    command,
                    bytes,
                    max: u64::from(limits.max_command_bytes),
                });
            }
            Ok(bytes as usize)
        }
        // TRANSFER_PUT: the fixed part first; see `payload_bytes_or_more`.
        CommandId::TransferPut => Ok(11 * 4),
        _ => Err(ProtocolError::Unsupported(command)),
    }
}

/// `TRANSFER_PUT` carries exactly `data_size` bytes after its 11 dwords,
/// whatever `LEN` says. `None` means the fixed part is not here yet.
fn payload_bytes_or_more(
    command: CommandId,
    payload_bytes: usize,
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<usize>, ProtocolError> {
    if command != CommandId::TransferPut {
        return Ok(Some(payload_bytes));
    }
    if buf.len() < HEADER_BYTES + payload_bytes {
        return Ok(None);
    }
    let data_size = dword(&buf[HEADER_BYTES..], 10);
    check_transfer(data_size, limits)?;
    Ok(Some(payload_bytes + data_size as usize))
}

fn check_transfer(data_size: u32, limits: &Limits) -> Result<(), ProtocolError> {
    if data_size > limits.max_transfer_bytes {
        return Err(ProtocolError::TransferTooLarge {
            bytes: data_size,
            max: limits.max_transfer_bytes,
        });
    }
    Ok(())
}

fn parse<'a>(
    command: CommandId,
    p: &'a [u8],
    limits: &Limits,
) -> Result<Request<'a>, ProtocolError> {
    use CommandId as C;
    let request = match command {
        C::GetCaps => Request::GetCaps,
        C::ResourceCreate => Request::ResourceCreate(ResourceCreate::parse(p)),
        C::ResourceUnref => Request::ResourceUnref {
            handle: dword(p, 0),
        },
        C::TransferGet => Request::TransferGet(Transfer::parse(p)),
        C::TransferPut => Request::TransferPut {
            transfer: Transfer::parse(p),
            data: &p[44..],
        },
        C::SubmitCmd => Request::SubmitCmd { commands: p },
        C::ResourceBusyWait => Request::ResourceBusyWait {
            handle: dword(p, 0),
            flags: dword(p, 1),
        },
        C::CreateRenderer => Request::CreateRenderer { name: p },
        C::GetCaps2 => Request::GetCaps2,
        C::PingProtocolVersion => Request::PingProtocolVersion,
        C::ProtocolVersion => Request::ProtocolVersion {
            version: dword(p, 0),
        },
        C::ResourceCreate2 => Request::ResourceCreate2 {
            args: ResourceCreate::parse(p),
            data_size: dword(p, 10),
        },
        C::TransferGet2 => Request::TransferGet2(Transfer2::parse(p)),
        C::TransferPut2 => Request::TransferPut2(Transfer2::parse(p)),
        C::GetParam => Request::GetParam { param: dword(p, 0) },
        C::GetCapset => Request::GetCapset {
            id: dword(p, 0),
            version: dword(p, 1),
        },
        C::ContextInit => Request::ContextInit {
            capset: dword(p, 0),
        },
        C::ResourceCreateBlob => Request::ResourceCreateBlob(blob(p)),
        C::SyncCreate => Request::SyncCreate {
            value: join64(dword(p, 0), dword(p, 1)),
        },
        C::SyncUnref => Request::SyncUnref { id: dword(p, 0) },
        C::SyncRead => Request::SyncRead { id: dword(p, 0) },
        C::SyncWrite => Request::SyncWrite {
            id: dword(p, 0),
            value: join64(dword(p, 1), dword(p, 2)),
        },
        C::SyncWait => Request::SyncWait(SyncWait::parse(p)?),
        C::SubmitCmd2 => Request::SubmitCmd2(SubmitCmd2::parse(p)?),
        other => return Err(ProtocolError::Unsupported(other)),
    };
    if let Request::TransferGet(t) = &request {
        // The reply carries `data_size` bytes that the server must allocate.
        check_transfer(t.data_size, limits)?;
    }
    Ok(request)
}
