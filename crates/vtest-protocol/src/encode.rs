//! Encoding requests (the client side), used by tests and test clients.

use crate::wire::{put, put64, HEADER_BYTES};
use crate::{CommandId, Request};

impl Request<'_> {
    /// Appends this request as a client sends it, `LEN` included as Mesa
    /// computes it (bytes for `CREATE_RENDERER`; `TRANSFER_PUT*` count their
    /// data in `LEN` even though `TRANSFER_PUT2` sends none).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put(out, 0);
        put(out, self.command().as_u32());
        match self {
            Request::GetCaps | Request::GetCaps2 | Request::PingProtocolVersion => {}
            Request::ResourceCreate(a) => a.fields().iter().for_each(|v| put(out, *v)),
            Request::ResourceUnref { handle } => put(out, *handle),
            Request::TransferGet(t) | Request::TransferPut { transfer: t, .. } => {
                for v in [t.handle, t.level, t.stride, t.layer_stride] {
                    put(out, v);
                }
                t.bx.fields().iter().for_each(|v| put(out, *v));
                put(out, t.data_size);
                if let Request::TransferPut { data, .. } = self {
                    out.extend_from_slice(data);
                }
            }
            Request::SubmitCmd { commands } => out.extend_from_slice(commands),
            Request::ResourceBusyWait { handle, flags } => {
                put(out, *handle);
                put(out, *flags);
            }
            Request::CreateRenderer { name } => out.extend_from_slice(name),
            Request::ProtocolVersion { version } => put(out, *version),
            Request::ResourceCreate2 { args, data_size } => {
                args.fields().iter().for_each(|v| put(out, *v));
                put(out, *data_size);
            }
            Request::TransferGet2(t) | Request::TransferPut2(t) => {
                put(out, t.handle);
                put(out, t.level);
                t.bx.fields().iter().for_each(|v| put(out, *v));
                put(out, t.data_size);
                put(out, t.offset);
            }
            Request::GetParam { param } => put(out, *param),
            Request::GetCapset { id, version } => {
                put(out, *id);
                put(out, *version);
            }
            Request::ContextInit { capset } => put(out, *capset),
            Request::ResourceCreateBlob(b) => {
                put(out, b.blob_type);
                put(out, b.flags);
                put64(out, b.size);
                put64(out, b.blob_id);
            }
            Request::SyncCreate { value } => put64(out, *value),
            Request::SyncUnref { id } | Request::SyncRead { id } => put(out, *id),
            Request::SyncWrite { id, value } => {
                put(out, *id);
                put64(out, *value);
            }
            Request::SyncWait(w) => {
                put(out, w.flags);
                put(out, w.timeout_ms);
                out.extend_from_slice(w.raw_points());
            }
            Request::SubmitCmd2(s) => out.extend_from_slice(s.payload()),
        }
        let payload = out.len() - start - HEADER_BYTES;
        let len = match self {
            Request::CreateRenderer { .. } => payload as u32,
            Request::TransferPut2(t) => 10 + t.data_size.div_ceil(4),
            _ => payload.div_ceil(4) as u32,
        };
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// The header of a request with `command` and `len`.
pub fn header(command: CommandId, len: u32) -> [u8; HEADER_BYTES] {
    let mut h = [0; HEADER_BYTES];
    h[..4].copy_from_slice(&len.to_ne_bytes());
    h[4..].copy_from_slice(&command.as_u32().to_ne_bytes());
    h
}
