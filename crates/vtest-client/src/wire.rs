//! Wire constants and pure request encoders (no I/O), written from docs/PROTOCOL.md.
//!
//! Every request is `[LEN, CMD_ID]` + payload, host-native (little-endian) `u32`s.
//! `LEN` is in dwords except where docs/PROTOCOL.md §1.3 says otherwise.

/// Command ids (docs/PROTOCOL.md §2).
pub mod cmd {
    pub const GET_CAPS: u32 = 1;
    pub const RESOURCE_CREATE: u32 = 2;
    pub const RESOURCE_UNREF: u32 = 3;
    pub const TRANSFER_GET: u32 = 4;
    pub const TRANSFER_PUT: u32 = 5;
    pub const SUBMIT_CMD: u32 = 6;
    pub const RESOURCE_BUSY_WAIT: u32 = 7;
    pub const CREATE_RENDERER: u32 = 8;
    pub const GET_CAPS2: u32 = 9;
    pub const PING_PROTOCOL_VERSION: u32 = 10;
    pub const PROTOCOL_VERSION: u32 = 11;
    pub const RESOURCE_CREATE2: u32 = 12;
    pub const TRANSFER_GET2: u32 = 13;
    pub const TRANSFER_PUT2: u32 = 14;
    pub const GET_PARAM: u32 = 15;
    pub const GET_CAPSET: u32 = 16;
    pub const CONTEXT_INIT: u32 = 17;
    pub const RESOURCE_CREATE_BLOB: u32 = 18;
    pub const SYNC_CREATE: u32 = 19;
    pub const SYNC_UNREF: u32 = 20;
    pub const SYNC_READ: u32 = 21;
    pub const SYNC_WRITE: u32 = 22;
    pub const SYNC_WAIT: u32 = 23;
    pub const SUBMIT_CMD2: u32 = 24;
}

/// Reply id of the GET_CAPS reply (the caps-set number).
pub const CAPS_REPLY_V1: u32 = 1;
/// Reply id of the GET_CAPS2 reply (the caps-set number, same value as RESOURCE_CREATE).
pub const CAPS_REPLY_V2: u32 = 2;

/// `RESOURCE_BUSY_WAIT` flag: block until idle.
pub const BUSY_WAIT_FLAG_WAIT: u32 = 1;
/// `CREATE_RENDERER` name limit of the reference server (bytes).
pub const CREATE_RENDERER_MAX_LEN: u32 = 1 << 20;

/// GET_PARAM params.
pub const PARAM_MAX_TIMELINE_COUNT: u32 = 1;
pub const PARAM_HAS_TIMELINE_SYNCOBJ: u32 = 2;

/// Capset ids.
pub const CAPSET_VIRGL: u32 = 1;
pub const CAPSET_VIRGL2: u32 = 2;
pub const CAPSET_VENUS: u32 = 4;
pub const CAPSET_DRM: u32 = 6;

/// Blob memory types.
pub const BLOB_MEM_GUEST: u32 = 1;
pub const BLOB_MEM_HOST3D: u32 = 2;
pub const BLOB_MEM_HOST3D_GUEST: u32 = 3;
/// Blob flags.
pub const BLOB_FLAG_MAPPABLE: u32 = 1;
pub const BLOB_FLAG_SHAREABLE: u32 = 2;
pub const BLOB_FLAG_CROSS_DEVICE: u32 = 4;

/// SYNC_WAIT flag: any (instead of all) of the syncs.
pub const SYNC_WAIT_FLAG_ANY: u32 = 1;
/// SUBMIT_CMD2 batch flag: signal the syncs through a fence on `ring_idx`.
pub const SUBMIT_CMD2_FLAG_RING_IDX: u32 = 1;
/// SUBMIT_CMD2 batch header stride in dwords as the reference server reads
/// them and Mesa 25.2 writes them (docs/PROTOCOL.md §2.24).
pub const SUBMIT_CMD2_BATCH_DWORDS: u32 = 8;
/// The stride of Mesa 25.0's 6-field `struct vcmd_submit_cmd2_batch` (flags …
/// ring_idx): vtestd infers it, the reference 0.10.4 misreads it.
pub const SUBMIT_CMD2_BATCH_DWORDS_6: u32 = 6;

/// Byte offsets in `struct virgl_caps_v2` (virglrenderer `src/virgl_hw.h`),
/// the GET_CAPS2 reply.
pub const CAPS_V2_CAPABILITY_BITS: usize = 392;
pub const CAPS_V2_HOST_FEATURE_CHECK_VERSION: usize = 556;
/// `capability_bits`: the host maps buffers persistently (GL_ARB_buffer_storage),
/// so Mesa virpipe makes persistent and coherent buffers as blobs.
pub const VIRGL_CAP_ARB_BUFFER_STORAGE: u32 = 1 << 31;
/// Mesa virpipe re-negotiates protocol version 2 when the caps'
/// `host_feature_check_version` is below this (docs/PROTOCOL.md §3.1).
pub const HOST_FEATURE_CHECK_VERSION_V3_IDS: u32 = 23;

/// The dword at byte `offset` of a caps reply, if the reply is that long.
pub fn caps_dword(caps: &[u8], offset: usize) -> Option<u32> {
    let b = caps.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Gallium / virgl enums used by the helpers.
pub const PIPE_BUFFER: u32 = 0;
pub const PIPE_TEXTURE_2D: u32 = 2;
pub const VIRGL_FORMAT_B8G8R8A8_UNORM: u32 = 1;
pub const VIRGL_FORMAT_R8_UNORM: u32 = 64;
pub const VIRGL_BIND_RENDER_TARGET: u32 = 1 << 1;
pub const VIRGL_BIND_SAMPLER_VIEW: u32 = 1 << 3;
pub const VIRGL_BIND_VERTEX_BUFFER: u32 = 1 << 4;
pub const VIRGL_BIND_DISPLAY_TARGET: u32 = 1 << 7;
pub const VIRGL_BIND_CUSTOM: u32 = 1 << 17;

/// The 10 RESOURCE_CREATE fields (RESOURCE_CREATE2 adds `data_size`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceArgs {
    /// Client-chosen handle before v3; must be 0 at v3.
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

impl ResourceArgs {
    /// A 2D B8G8R8A8_UNORM texture as Mesa's display target
    /// (bind DISPLAY_TARGET | SAMPLER_VIEW | RENDER_TARGET = 0x8a), handle 0.
    pub fn texture_2d(width: u32, height: u32) -> Self {
        ResourceArgs {
            handle: 0,
            target: PIPE_TEXTURE_2D,
            format: VIRGL_FORMAT_B8G8R8A8_UNORM,
            bind: VIRGL_BIND_DISPLAY_TARGET | VIRGL_BIND_SAMPLER_VIEW | VIRGL_BIND_RENDER_TARGET,
            width,
            height,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
        }
    }

    /// A GL-backed R8_UNORM buffer of `bytes` bytes (bind VERTEX_BUFFER), handle 0.
    pub fn buffer(bytes: u32) -> Self {
        ResourceArgs {
            handle: 0,
            target: PIPE_BUFFER,
            format: VIRGL_FORMAT_R8_UNORM,
            bind: VIRGL_BIND_VERTEX_BUFFER,
            width: bytes,
            height: 1,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
        }
    }

    /// Mesa virpipe's fence buffer: 8 bytes, bind CUSTOM, array_size 0 (docs/PROTOCOL.md §4).
    pub fn fence_buffer() -> Self {
        ResourceArgs {
            bind: VIRGL_BIND_CUSTOM,
            array_size: 0,
            ..Self::buffer(8)
        }
    }

    /// The same arguments with another handle.
    pub fn with_handle(self, handle: u32) -> Self {
        ResourceArgs { handle, ..self }
    }

    /// The 10 payload dwords.
    pub fn dwords(&self) -> [u32; 10] {
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

/// A 3D box (x, y, z, width, height, depth).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Box3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
}

impl Box3 {
    /// The box `(0,0,0) .. (w,h,1)`.
    pub fn rect(width: u32, height: u32) -> Self {
        Box3 {
            x: 0,
            y: 0,
            z: 0,
            width,
            height,
            depth: 1,
        }
    }
}

/// TRANSFER_GET / TRANSFER_PUT (v0) header: 11 dwords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferArgs {
    pub handle: u32,
    pub level: u32,
    pub stride: u32,
    pub layer_stride: u32,
    pub bx: Box3,
    /// Bytes of pixel data (follows a PUT / makes up a GET reply).
    pub data_size: u32,
}

impl TransferArgs {
    pub fn dwords(&self) -> [u32; 11] {
        [
            self.handle,
            self.level,
            self.stride,
            self.layer_stride,
            self.bx.x,
            self.bx.y,
            self.bx.z,
            self.bx.width,
            self.bx.height,
            self.bx.depth,
            self.data_size,
        ]
    }
}

/// TRANSFER_GET2 / TRANSFER_PUT2 (v2) header: 10 dwords.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer2Args {
    pub handle: u32,
    pub level: u32,
    pub bx: Box3,
    /// Bytes (ignored by the reference server).
    pub data_size: u32,
    /// Byte offset into the resource's shared memory.
    pub offset: u32,
}

impl Transfer2Args {
    pub fn dwords(&self) -> [u32; 10] {
        [
            self.handle,
            self.level,
            self.bx.x,
            self.bx.y,
            self.bx.z,
            self.bx.width,
            self.bx.height,
            self.bx.depth,
            self.data_size,
            self.offset,
        ]
    }
}

/// One SUBMIT_CMD2 batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// `SUBMIT_CMD2_FLAG_RING_IDX` or 0.
    pub flags: u32,
    /// virgl command stream dwords.
    pub cmd: Vec<u32>,
    /// (sync id, value) pairs signalled when the batch completes.
    pub syncs: Vec<(u32, u64)>,
    pub ring_idx: u32,
}

/// `ceil(bytes / 4)`.
pub fn dwords_for(bytes: usize) -> u32 {
    bytes.div_ceil(4) as u32
}

/// Appends `words` as native-endian bytes.
pub fn push_dwords(out: &mut Vec<u8>, words: &[u32]) {
    for w in words {
        out.extend_from_slice(&w.to_ne_bytes());
    }
}

/// `[len, id]` + payload, with `len` given explicitly.
pub fn message_with_len(len: u32, id: u32, payload: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len() * 4);
    push_dwords(&mut out, &[len, id]);
    push_dwords(&mut out, payload);
    out
}

/// `[payload.len(), id]` + payload.
pub fn message(id: u32, payload: &[u32]) -> Vec<u8> {
    message_with_len(payload.len() as u32, id, payload)
}

/// Decodes native-endian dwords (`bytes.len()` must be a multiple of 4).
pub fn dwords_from_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// CREATE_RENDERER: `LEN` = bytes of `name` + its NUL terminator, as Mesa sends it.
pub fn create_renderer(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    create_renderer_raw(&bytes)
}

/// CREATE_RENDERER with exactly these name bytes (`LEN` = `name.len()`).
pub fn create_renderer_raw(name: &[u8]) -> Vec<u8> {
    let mut out = message_with_len(name.len() as u32, cmd::CREATE_RENDERER, &[]);
    out.extend_from_slice(name);
    out
}

/// PING_PROTOCOL_VERSION followed by the BUSY_WAIT(0, 0) probe (docs/PROTOCOL.md §3.1).
pub fn ping_probe() -> Vec<u8> {
    let mut out = message(cmd::PING_PROTOCOL_VERSION, &[]);
    out.extend(busy_wait(0, 0));
    out
}

pub fn protocol_version(version: u32) -> Vec<u8> {
    message(cmd::PROTOCOL_VERSION, &[version])
}

pub fn get_caps() -> Vec<u8> {
    message(cmd::GET_CAPS, &[])
}

pub fn get_caps2() -> Vec<u8> {
    message(cmd::GET_CAPS2, &[])
}

pub fn resource_create(args: &ResourceArgs) -> Vec<u8> {
    message(cmd::RESOURCE_CREATE, &args.dwords())
}

pub fn resource_create2(args: &ResourceArgs, data_size: u32) -> Vec<u8> {
    let mut payload = args.dwords().to_vec();
    payload.push(data_size);
    message(cmd::RESOURCE_CREATE2, &payload)
}

pub fn resource_unref(handle: u32) -> Vec<u8> {
    message(cmd::RESOURCE_UNREF, &[handle])
}

/// TRANSFER_PUT: 11 dwords + exactly `data.len()` bytes (no padding), `LEN` =
/// `11 + ceil(len/4)` as Mesa sends it. `args.data_size` is replaced by `data.len()`.
pub fn transfer_put(args: &TransferArgs, data: &[u8]) -> Vec<u8> {
    let args = TransferArgs {
        data_size: data.len() as u32,
        ..*args
    };
    let mut out = message_with_len(
        11 + dwords_for(data.len()),
        cmd::TRANSFER_PUT,
        &args.dwords(),
    );
    out.extend_from_slice(data);
    out
}

pub fn transfer_get(args: &TransferArgs) -> Vec<u8> {
    message(cmd::TRANSFER_GET, &args.dwords())
}

/// TRANSFER_PUT2: 10 dwords, `LEN` = `10 + ceil(data_size/4)` as Mesa sends it; no data.
pub fn transfer_put2(args: &Transfer2Args) -> Vec<u8> {
    message_with_len(
        10 + dwords_for(args.data_size as usize),
        cmd::TRANSFER_PUT2,
        &args.dwords(),
    )
}

/// TRANSFER_GET2: 10 dwords, `LEN` 10.
pub fn transfer_get2(args: &Transfer2Args) -> Vec<u8> {
    message(cmd::TRANSFER_GET2, &args.dwords())
}

pub fn submit_cmd(cmds: &[u32]) -> Vec<u8> {
    message(cmd::SUBMIT_CMD, cmds)
}

pub fn busy_wait(handle: u32, flags: u32) -> Vec<u8> {
    message(cmd::RESOURCE_BUSY_WAIT, &[handle, flags])
}

pub fn get_param(param: u32) -> Vec<u8> {
    message(cmd::GET_PARAM, &[param])
}

pub fn get_capset(id: u32, version: u32) -> Vec<u8> {
    message(cmd::GET_CAPSET, &[id, version])
}

pub fn context_init(capset: u32) -> Vec<u8> {
    message(cmd::CONTEXT_INIT, &[capset])
}

fn lo(v: u64) -> u32 {
    v as u32
}

fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

pub fn resource_create_blob(blob_type: u32, flags: u32, size: u64, blob_id: u64) -> Vec<u8> {
    message(
        cmd::RESOURCE_CREATE_BLOB,
        &[
            blob_type,
            flags,
            lo(size),
            hi(size),
            lo(blob_id),
            hi(blob_id),
        ],
    )
}

pub fn sync_create(value: u64) -> Vec<u8> {
    message(cmd::SYNC_CREATE, &[lo(value), hi(value)])
}

pub fn sync_unref(id: u32) -> Vec<u8> {
    message(cmd::SYNC_UNREF, &[id])
}

pub fn sync_read(id: u32) -> Vec<u8> {
    message(cmd::SYNC_READ, &[id])
}

pub fn sync_write(id: u32, value: u64) -> Vec<u8> {
    message(cmd::SYNC_WRITE, &[id, lo(value), hi(value)])
}

/// SYNC_WAIT: `LEN` = 2 + 3n: flags, timeout (ms), n × (id, lo, hi).
pub fn sync_wait(flags: u32, timeout_ms: u32, syncs: &[(u32, u64)]) -> Vec<u8> {
    let mut payload = vec![flags, timeout_ms];
    for &(id, v) in syncs {
        payload.extend([id, lo(v), hi(v)]);
    }
    message(cmd::SYNC_WAIT, &payload)
}

/// The SUBMIT_CMD2 payload: batch_count, headers at a stride of 8 dwords, then for
/// each batch its command dwords followed by its sync triplets. Offsets are dword
/// indices from the start of the payload.
pub fn submit_cmd2_payload(batches: &[Batch]) -> Vec<u32> {
    submit_cmd2_payload_with_stride(batches, SUBMIT_CMD2_BATCH_DWORDS)
}

/// [`submit_cmd2_payload`] with headers `stride` dwords apart: the 6 fields
/// flags, cmd_offset, cmd_size, sync_offset, sync_count, ring_idx, then zeros
/// (cut short when `stride` < 6, for hostile tests). The data still follows
/// the headers, as every client packs it.
pub fn submit_cmd2_payload_with_stride(batches: &[Batch], stride: u32) -> Vec<u32> {
    let stride = stride as usize;
    let header_dwords = 1 + stride * batches.len();
    let mut headers = vec![0u32; header_dwords];
    headers[0] = batches.len() as u32;
    let mut data: Vec<u32> = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let cmd_offset = (header_dwords + data.len()) as u32;
        data.extend_from_slice(&b.cmd);
        let sync_offset = (header_dwords + data.len()) as u32;
        for &(id, v) in &b.syncs {
            data.extend([id, lo(v), hi(v)]);
        }
        let fields = [
            b.flags,
            cmd_offset,
            b.cmd.len() as u32,
            sync_offset,
            b.syncs.len() as u32,
            b.ring_idx,
        ];
        let n = stride.min(fields.len());
        let h = 1 + stride * i;
        headers[h..h + n].copy_from_slice(&fields[..n]);
    }
    headers.extend(data);
    headers
}

pub fn submit_cmd2(batches: &[Batch]) -> Vec<u8> {
    message(cmd::SUBMIT_CMD2, &submit_cmd2_payload(batches))
}

/// SUBMIT_CMD2 with batch headers `stride` dwords apart.
pub fn submit_cmd2_with_stride(batches: &[Batch], stride: u32) -> Vec<u8> {
    message(
        cmd::SUBMIT_CMD2,
        &submit_cmd2_payload_with_stride(batches, stride),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(4)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn appendix_a_handshake() {
        assert_eq!(
            hex(&create_renderer("glmark2")),
            "08000000 08000000 676c6d61 726b3200"
        );
        assert_eq!(
            hex(&ping_probe()),
            "00000000 0a000000 02000000 07000000 00000000 00000000"
        );
        assert_eq!(hex(&protocol_version(2)), "01000000 0b000000 02000000");
        assert_eq!(hex(&get_caps2()), "00000000 09000000");
        assert_eq!(hex(&get_caps()), "00000000 01000000");
    }

    #[test]
    fn appendix_a_resource_create2() {
        let args = ResourceArgs::texture_2d(800, 600).with_handle(1);
        assert_eq!(
            hex(&resource_create2(&args, 1_920_000)),
            "0b000000 0c000000 01000000 02000000 01000000 8a000000 20030000 58020000 \
             01000000 01000000 00000000 00000000 004c1d00"
        );
    }

    #[test]
    fn mesa_fence_buffer_and_get2() {
        let f = ResourceArgs::fence_buffer().with_handle(7);
        assert_eq!(f.dwords(), [7, 0, 64, 0x20000, 8, 1, 1, 0, 0, 0]);
        // §4: TRANSFER_GET2(handle 1, level 0, box 0,0,0 800×600×1, 1920000, offset 0), LEN 10.
        let g = Transfer2Args {
            handle: 1,
            level: 0,
            bx: Box3::rect(800, 600),
            data_size: 1_920_000,
            offset: 0,
        };
        let b = transfer_get2(&g);
        assert_eq!(
            dwords_from_bytes(&b),
            [10, 13, 1, 0, 0, 0, 0, 800, 600, 1, 1_920_000, 0]
        );
    }

    #[test]
    fn transfer_put_len_and_exact_data() {
        let args = TransferArgs {
            handle: 3,
            bx: Box3::rect(3, 1),
            data_size: 999, // replaced by data.len()
            ..Default::default()
        };
        let b = transfer_put(&args, &[0xaa, 0xbb, 0xcc]);
        // 2 header + 11 dwords + 3 bytes, LEN = 11 + ceil(3/4) = 12.
        assert_eq!(b.len(), 8 + 44 + 3);
        let d = dwords_from_bytes(&b[..52]);
        assert_eq!(d[0], 12);
        assert_eq!(d[1], cmd::TRANSFER_PUT);
        assert_eq!(d[2], 3);
        assert_eq!(d[12], 3);
        assert_eq!(&b[52..], &[0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn transfer_put2_overstates_len() {
        let args = Transfer2Args {
            handle: 1,
            bx: Box3::rect(4, 4),
            data_size: 64,
            ..Default::default()
        };
        let b = transfer_put2(&args);
        assert_eq!(b.len(), 8 + 40);
        assert_eq!(dwords_from_bytes(&b[..8]), [10 + 16, 14]);
    }

    #[test]
    fn v3_encoders() {
        assert_eq!(dwords_from_bytes(&get_param(1)), [1, 15, 1]);
        assert_eq!(dwords_from_bytes(&get_capset(2, 0)), [2, 16, 2, 0]);
        assert_eq!(dwords_from_bytes(&context_init(2)), [1, 17, 2]);
        assert_eq!(
            dwords_from_bytes(&resource_create_blob(1, 3, 0x1_0000_1000, 0x2_0000_0005)),
            [6, 18, 1, 3, 0x1000, 1, 5, 2]
        );
        assert_eq!(dwords_from_bytes(&sync_create(5)), [2, 19, 5, 0]);
        assert_eq!(dwords_from_bytes(&sync_unref(4)), [1, 20, 4]);
        assert_eq!(dwords_from_bytes(&sync_read(4)), [1, 21, 4]);
        assert_eq!(
            dwords_from_bytes(&sync_write(4, 0x7_0000_0001)),
            [3, 22, 4, 1, 7]
        );
        assert_eq!(
            dwords_from_bytes(&sync_wait(1, 100, &[(1, 5), (2, 1 << 32)])),
            [8, 23, 1, 100, 1, 5, 0, 2, 0, 1]
        );
    }

    #[test]
    fn submit_cmd2_layout_stride_8() {
        let one = submit_cmd2_payload(&[Batch {
            flags: 0,
            cmd: vec![],
            syncs: vec![(3, 9)],
            ring_idx: 0,
        }]);
        assert_eq!(one, [1, 0, 9, 0, 9, 1, 0, 0, 0, 3, 9, 0]);

        let two = submit_cmd2_payload(&[
            Batch {
                flags: SUBMIT_CMD2_FLAG_RING_IDX,
                cmd: vec![0xabcd],
                syncs: vec![(1, 2)],
                ring_idx: 0,
            },
            Batch {
                flags: 0,
                cmd: vec![],
                syncs: vec![(2, 1 << 33)],
                ring_idx: 0,
            },
        ]);
        assert_eq!(two[0], 2);
        // batch 0 at dword 1, batch 1 at dword 9, data from dword 17
        assert_eq!(&two[1..9], &[1, 17, 1, 18, 1, 0, 0, 0]);
        assert_eq!(&two[9..17], &[0, 21, 0, 21, 1, 0, 0, 0]);
        assert_eq!(&two[17..], &[0xabcd, 1, 2, 0, 2, 0, 2]);
        let msg = submit_cmd2(&[]);
        assert_eq!(dwords_from_bytes(&msg), [1, 24, 0]);
    }

    #[test]
    fn submit_cmd2_layout_stride_6() {
        let batches = [
            Batch {
                flags: SUBMIT_CMD2_FLAG_RING_IDX,
                cmd: vec![0xabcd],
                syncs: vec![(1, 2)],
                ring_idx: 0,
            },
            Batch {
                flags: 0,
                cmd: vec![],
                syncs: vec![(2, 1 << 33)],
                ring_idx: 0,
            },
        ];
        let two = submit_cmd2_payload_with_stride(&batches, SUBMIT_CMD2_BATCH_DWORDS_6);
        assert_eq!(two[0], 2);
        // batch 0 at dword 1, batch 1 at dword 7, data from dword 13 (1 + 6·2)
        assert_eq!(&two[1..7], &[1, 13, 1, 14, 1, 0]);
        assert_eq!(&two[7..13], &[0, 17, 0, 17, 1, 0]);
        assert_eq!(&two[13..], &[0xabcd, 1, 2, 0, 2, 0, 2]);
        assert_eq!(
            submit_cmd2_payload_with_stride(&batches, SUBMIT_CMD2_BATCH_DWORDS),
            submit_cmd2_payload(&batches)
        );
        let msg = submit_cmd2_with_stride(&batches, SUBMIT_CMD2_BATCH_DWORDS_6);
        assert_eq!(dwords_from_bytes(&msg[..8]), [20, 24]);
    }

    #[test]
    fn create_renderer_raw_len_in_bytes() {
        let b = create_renderer_raw(b"abc");
        assert_eq!(b.len(), 11);
        assert_eq!(dwords_from_bytes(&b[..8]), [3, 8]);
    }
}
