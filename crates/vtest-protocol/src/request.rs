//! Decoded requests. Values are as the client sent them: every id, size and
//! box is still untrusted and is checked by the session against its tables.

use crate::wire::{dword, join64};
use crate::{CommandId, ProtocolError, TransferBox, MAX_TIMELINE_COUNT};

/// `RESOURCE_BUSY_WAIT` flag: block until idle.
pub const BUSY_WAIT_FLAG_WAIT: u32 = 1;
/// `SYNC_WAIT` flag: any of the points, not all.
pub const SYNC_WAIT_FLAG_ANY: u32 = 1;
/// `SUBMIT_CMD2` batch flag: signal the syncs through a fence on `ring_idx`.
pub const SUBMIT_CMD2_FLAG_RING_IDX: u32 = 1;
/// v4 fence-fd flags, not served.
const SUBMIT_CMD2_FLAGS_V4: u32 = 0b110;
/// Dwords per `SUBMIT_CMD2` batch header as the reference server indexes them
/// (and Mesa 25.2 writes them): flags … ring_idx, then two v4 words.
pub const SUBMIT_CMD2_STRIDE_8: u32 = 8;
/// Dwords per batch header of Mesa 25.0's 6-field `struct vcmd_submit_cmd2_batch`.
pub const SUBMIT_CMD2_STRIDE_6: u32 = 6;
/// The header fields both strides share, at the same offsets.
const BATCH_FIELDS: u64 = 6;

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    GetCaps,
    ResourceCreate(ResourceCreate),
    ResourceUnref {
        handle: u32,
    },
    TransferGet(Transfer),
    TransferPut {
        transfer: Transfer,
        data: &'a [u8],
    },
    SubmitCmd {
        commands: &'a [u8],
    },
    ResourceBusyWait {
        handle: u32,
        flags: u32,
    },
    CreateRenderer {
        name: &'a [u8],
    },
    GetCaps2,
    PingProtocolVersion,
    ProtocolVersion {
        version: u32,
    },
    ResourceCreate2 {
        args: ResourceCreate,
        data_size: u32,
    },
    TransferGet2(Transfer2),
    TransferPut2(Transfer2),
    GetParam {
        param: u32,
    },
    GetCapset {
        id: u32,
        version: u32,
    },
    ContextInit {
        capset: u32,
    },
    ResourceCreateBlob(ResourceCreateBlob),
    SyncCreate {
        value: u64,
    },
    SyncUnref {
        id: u32,
    },
    SyncRead {
        id: u32,
    },
    SyncWrite {
        id: u32,
        value: u64,
    },
    SyncWait(SyncWait<'a>),
    SubmitCmd2(SubmitCmd2<'a>),
}

impl Request<'_> {
    /// The command id this request was sent with.
    pub fn command(&self) -> CommandId {
        use CommandId as C;
        match self {
            Request::GetCaps => C::GetCaps,
            Request::ResourceCreate(_) => C::ResourceCreate,
            Request::ResourceUnref { .. } => C::ResourceUnref,
            Request::TransferGet(_) => C::TransferGet,
            Request::TransferPut { .. } => C::TransferPut,
            Request::SubmitCmd { .. } => C::SubmitCmd,
            Request::ResourceBusyWait { .. } => C::ResourceBusyWait,
            Request::CreateRenderer { .. } => C::CreateRenderer,
            Request::GetCaps2 => C::GetCaps2,
            Request::PingProtocolVersion => C::PingProtocolVersion,
            Request::ProtocolVersion { .. } => C::ProtocolVersion,
            Request::ResourceCreate2 { .. } => C::ResourceCreate2,
            Request::TransferGet2(_) => C::TransferGet2,
            Request::TransferPut2(_) => C::TransferPut2,
            Request::GetParam { .. } => C::GetParam,
            Request::GetCapset { .. } => C::GetCapset,
            Request::ContextInit { .. } => C::ContextInit,
            Request::ResourceCreateBlob(_) => C::ResourceCreateBlob,
            Request::SyncCreate { .. } => C::SyncCreate,
            Request::SyncUnref { .. } => C::SyncUnref,
            Request::SyncRead { .. } => C::SyncRead,
            Request::SyncWrite { .. } => C::SyncWrite,
            Request::SyncWait(_) => C::SyncWait,
            Request::SubmitCmd2(_) => C::SubmitCmd2,
        }
    }
}

/// `RESOURCE_CREATE` arguments (gallium/virgl enums, unchecked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceCreate {
    pub handle: u32,
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
}

impl ResourceCreate {
    pub(crate) fn parse(p: &[u8]) -> Self {
        ResourceCreate {
            handle: dword(p, 0),
            target: dword(p, 1),
            format: dword(p, 2),
            bind: dword(p, 3),
            width: dword(p, 4),
            height: dword(p, 5),
            depth: dword(p, 6),
            array_size: dword(p, 7),
            last_level: dword(p, 8),
            nr_samples: dword(p, 9),
        }
    }

    pub(crate) fn fields(&self) -> [u32; 10] {
        [
            self.handle,
            self.target,
            self.format,
            self.bind,
            self.width,
            self.height,
            self.depth,
            self.array_size,
            self.last_level,
            self.nr_samples,
        ]
    }
}

/// `TRANSFER_GET` / `TRANSFER_PUT` (v0: data on the socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer {
    pub handle: u32,
    pub level: u32,
    pub stride: u32,
    pub layer_stride: u32,
    pub bx: TransferBox,
    /// Bytes of pixel data.
    pub data_size: u32,
}

impl Transfer {
    pub(crate) fn parse(p: &[u8]) -> Self {
        Transfer {
            handle: dword(p, 0),
            level: dword(p, 1),
            stride: dword(p, 2),
            layer_stride: dword(p, 3),
            bx: TransferBox::parse(p, 4),
            data_size: dword(p, 10),
        }
    }
}

/// `TRANSFER_GET2` / `TRANSFER_PUT2` (v2: data in the resource's shared memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer2 {
    pub handle: u32,
    pub level: u32,
    pub bx: TransferBox,
    /// Ignored by servers (the reference too).
    pub data_size: u32,
    /// Byte offset into the shared memory.
    pub offset: u32,
}

impl Transfer2 {
    pub(crate) fn parse(p: &[u8]) -> Self {
        Transfer2 {
            handle: dword(p, 0),
            level: dword(p, 1),
            bx: TransferBox::parse(p, 2),
            data_size: dword(p, 8),
            offset: dword(p, 9),
        }
    }
}

/// Blob memory types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobType {
    Guest,
    Host3d,
    Host3dGuest,
}

impl BlobType {
    /// The type for wire value `v`.
    pub fn from_u32(v: u32) -> Option<BlobType> {
        match v {
            1 => Some(BlobType::Guest),
            2 => Some(BlobType::Host3d),
            3 => Some(BlobType::Host3dGuest),
            _ => None,
        }
    }

    /// The wire (and virglrenderer `blob_mem`) value.
    pub fn as_u32(self) -> u32 {
        match self {
            BlobType::Guest => 1,
            BlobType::Host3d => 2,
            BlobType::Host3dGuest => 3,
        }
    }
}

/// `RESOURCE_CREATE_BLOB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceCreateBlob {
    /// Raw type; see [`BlobType::from_u32`].
    pub blob_type: u32,
    pub flags: u32,
    pub size: u64,
    pub blob_id: u64,
}

/// A (sync id, value) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPoint {
    pub id: u32,
    pub value: u64,
}

fn sync_points(p: &[u8]) -> impl Iterator<Item = SyncPoint> + '_ {
    p.chunks_exact(12).map(|c| SyncPoint {
        id: dword(c, 0),
        value: join64(dword(c, 1), dword(c, 2)),
    })
}

/// `SYNC_WAIT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncWait<'a> {
    pub flags: u32,
    /// Milliseconds; above `i32::MAX` means forever; 0 means poll.
    pub timeout_ms: u32,
    points: &'a [u8],
}

impl<'a> SyncWait<'a> {
    pub(crate) fn parse(p: &'a [u8]) -> Result<Self, ProtocolError> {
        let dwords = (p.len() / 4) as u32;
        if dwords < 2 || !(dwords - 2).is_multiple_of(3) {
            return Err(ProtocolError::MalformedPayload {
                command: CommandId::SyncWait,
                dwords,
                reason: "expected 2 + 3n dwords",
            });
        }
        Ok(SyncWait {
            flags: dword(p, 0),
            timeout_ms: dword(p, 1),
            points: &p[8..],
        })
    }

    /// Builds a wait (for encoding).
    pub fn new(flags: u32, timeout_ms: u32, points: &'a [u8]) -> Self {
        SyncWait {
            flags,
            timeout_ms,
            points,
        }
    }

    /// The points to wait for.
    pub fn points(&self) -> impl Iterator<Item = SyncPoint> + 'a {
        sync_points(self.points)
    }

    /// How many points there are.
    pub fn len(&self) -> usize {
        self.points.len() / 12
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub(crate) fn raw_points(&self) -> &'a [u8] {
        self.points
    }
}

/// One validated `SUBMIT_CMD2` batch: every range lies inside the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub flags: u32,
    pub cmd_offset: u32,
    pub cmd_size: u32,
    pub sync_offset: u32,
    pub sync_count: u32,
    pub ring_idx: u32,
}

impl Batch {
    /// Whether the syncs are signalled through a fence on `ring_idx`.
    pub fn uses_ring(&self) -> bool {
        self.flags & SUBMIT_CMD2_FLAG_RING_IDX != 0
    }

    /// The header at dword `at` (the caller has checked it fits).
    fn read(p: &[u8], at: usize) -> Self {
        Batch {
            flags: dword(p, at),
            cmd_offset: dword(p, at + 1),
            cmd_size: dword(p, at + 2),
            sync_offset: dword(p, at + 3),
            sync_count: dword(p, at + 4),
            ring_idx: dword(p, at + 5),
        }
    }
}

/// `SUBMIT_CMD2`: batches of command stream with syncs to signal.
///
/// The batch headers come in two strides (`docs/PROTOCOL.md` §2.24): 8 dwords (the
/// reference server, Mesa 25.2) and 6 (Mesa 25.0's venus and vpipe). Every
/// client packs its data right after the headers, so the stride is read off
/// the first batch (its 6 fields sit at the same offsets in both layouts):
///
/// 1. its `cmd_offset` is `1 + 8·N` → 8, or `1 + 6·N` → 6 (`N` = batch count;
///    Mesa writes this even for an empty command range);
/// 2. otherwise, if it has commands, they follow neither layout's headers:
///    refused ([`ProtocolError::BatchStrideUnknown`]), since reading headers at a
///    guessed stride could run another batch's fields as commands;
/// 3. otherwise (no commands, so its `cmd_offset` means nothing) its syncs
///    decide the same way, when it has any at `1 + 8·N` or `1 + 6·N`;
/// 4. otherwise 8, the reference's stride.
///
/// Then, at that stride, all `N` headers must lie inside the payload, every
/// range inside `LEN` (64-bit sums, no wrap-around), and no non-empty range may
/// start inside the headers: a batch that does was written with the other
/// stride, or is hostile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitCmd2<'a> {
    payload: &'a [u8],
    stride: u32,
    batches: Vec<Batch>,
}

impl<'a> SubmitCmd2<'a> {
    pub(crate) fn parse(p: &'a [u8]) -> Result<Self, ProtocolError> {
        let dwords = (p.len() / 4) as u64;
        let malformed = |reason| ProtocolError::MalformedPayload {
            command: CommandId::SubmitCmd2,
            dwords: dwords as u32,
            reason,
        };
        if dwords == 0 {
            return Err(malformed("missing batch count"));
        }
        let count = u64::from(dword(p, 0));
        if count == 0 {
            return Ok(SubmitCmd2 {
                payload: p,
                stride: SUBMIT_CMD2_STRIDE_8,
                batches: Vec::new(),
            });
        }
        if 1 + BATCH_FIELDS > dwords {
            return Err(malformed("batch headers past the payload"));
        }
        let stride = infer_stride(count, &Batch::read(p, 1))?;
        let headers_end = 1 + count * u64::from(stride);
        if headers_end > dwords {
            return Err(malformed("batch headers past the payload"));
        }
        // Bounded by the payload size: at most LEN / 6 batches.
        let mut batches = Vec::with_capacity(count as usize);
        for i in 0..count {
            let b = Batch::read(p, (1 + i * u64::from(stride)) as usize);
            check_batch(&b, i as u32, dwords, headers_end, stride)?;
            batches.push(b);
        }
        Ok(SubmitCmd2 {
            payload: p,
            stride,
            batches,
        })
    }

    /// The validated batches, in order.
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// The batch header stride the client used (8 when there are no batches).
    pub fn stride(&self) -> u32 {
        self.stride
    }

    /// The command stream of `batch` (bytes, a multiple of 4).
    pub fn commands(&self, batch: &Batch) -> &'a [u8] {
        let start = batch.cmd_offset as usize * 4;
        &self.payload[start..start + batch.cmd_size as usize * 4]
    }

    /// The syncs `batch` signals.
    pub fn syncs(&self, batch: &Batch) -> impl Iterator<Item = SyncPoint> + 'a {
        let start = batch.sync_offset as usize * 4;
        sync_points(&self.payload[start..start + batch.sync_count as usize * 12])
    }

    /// The whole payload, as sent.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// The header stride of a request with `count` batches, from its first batch
/// (the rules are on [`SubmitCmd2`]).
fn infer_stride(count: u64, first: &Batch) -> Result<u32, ProtocolError> {
    let after_headers = |offset: u32| {
        [SUBMIT_CMD2_STRIDE_8, SUBMIT_CMD2_STRIDE_6]
            .into_iter()
            .find(|&s| u64::from(offset) == 1 + count * u64::from(s))
    };
    if let Some(stride) = after_headers(first.cmd_offset) {
        return Ok(stride);
    }
    if first.cmd_size != 0 {
        return Err(ProtocolError::BatchStrideUnknown {
            command: CommandId::SubmitCmd2,
            batch_count: count as u32,
            cmd_offset: first.cmd_offset,
        });
    }
    let by_syncs = if first.sync_count != 0 {
        after_headers(first.sync_offset)
    } else {
        None
    };
    Ok(by_syncs.unwrap_or(SUBMIT_CMD2_STRIDE_8))
}

/// Checks batch `index` against a payload of `dwords` whose headers end at
/// `headers_end`.
fn check_batch(
    b: &Batch,
    index: u32,
    dwords: u64,
    headers_end: u64,
    stride: u32,
) -> Result<(), ProtocolError> {
    let command = CommandId::SubmitCmd2;
    if b.flags & SUBMIT_CMD2_FLAGS_V4 != 0 {
        return Err(ProtocolError::MalformedPayload {
            command,
            dwords: dwords as u32,
            reason: "fence-fd flags need protocol version 4",
        });
    }
    let ranges = [
        ("command stream", b.cmd_offset, u64::from(b.cmd_size)),
        ("sync list", b.sync_offset, 3 * u64::from(b.sync_count)),
    ];
    for (what, offset, len) in ranges {
        let offset = u64::from(offset);
        if offset + len > dwords {
            return Err(ProtocolError::BatchOutOfBounds {
                command,
                batch: index,
                what,
            });
        }
        if len != 0 && offset < headers_end {
            return Err(ProtocolError::BatchOverlapsHeaders {
                command,
                batch: index,
                what,
                stride,
            });
        }
    }
    if b.uses_ring() && b.ring_idx >= MAX_TIMELINE_COUNT {
        return Err(ProtocolError::BatchOutOfBounds {
            command,
            batch: index,
            what: "ring index",
        });
    }
    Ok(())
}

pub(crate) fn blob(p: &[u8]) -> ResourceCreateBlob {
    ResourceCreateBlob {
        blob_type: dword(p, 0),
        flags: dword(p, 1),
        size: join64(dword(p, 2), dword(p, 3)),
        blob_id: join64(dword(p, 4), dword(p, 5)),
    }
}
