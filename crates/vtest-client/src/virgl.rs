//! A few virgl command-stream packets (virglrenderer `src/virgl_protocol.h`,
//! 0.10.4) for SUBMIT_CMD / SUBMIT_CMD2 tests.

use crate::wire::{Box3, ResourceArgs};

pub const VIRGL_CCMD_NOP: u32 = 0;
pub const VIRGL_CCMD_RESOURCE_INLINE_WRITE: u32 = 9;
pub const VIRGL_CCMD_PIPE_RESOURCE_CREATE: u32 = 48;

/// `VIRGL_RESOURCE_FLAG_MAP_PERSISTENT` / `_MAP_COHERENT` (`virgl_hw.h`): Mesa
/// virpipe makes resources with either flag as blobs.
pub const VIRGL_RESOURCE_FLAG_MAP_PERSISTENT: u32 = 1 << 1;
pub const VIRGL_RESOURCE_FLAG_MAP_COHERENT: u32 = 1 << 2;

/// `VIRGL_CMD0(cmd, obj, len)`: the packet header; `len` counts the dwords after it.
pub fn cmd0(cmd: u32, obj: u32, len: u32) -> u32 {
    cmd | (obj << 8) | (len << 16)
}

/// A `VIRGL_CCMD_NOP` packet with `payload` dwords after its header (decoded by
/// `vrend_decode_dummy`, which accepts anything).
pub fn nop(payload: &[u32]) -> Vec<u32> {
    let mut out = vec![cmd0(VIRGL_CCMD_NOP, 0, payload.len() as u32)];
    out.extend_from_slice(payload);
    out
}

/// `VIRGL_CCMD_RESOURCE_INLINE_WRITE`: handle, level, usage, stride, layer_stride,
/// box, then the data (padded with zeros to whole dwords). The resource must be
/// attached to the client's context (every vtest-created resource is).
pub fn resource_inline_write(
    handle: u32,
    level: u32,
    stride: u32,
    layer_stride: u32,
    bx: Box3,
    data: &[u8],
) -> Vec<u32> {
    let mut padded = data.to_vec();
    padded.resize(data.len().div_ceil(4) * 4, 0);
    let words = crate::wire::dwords_from_bytes(&padded);
    let mut out = vec![
        cmd0(VIRGL_CCMD_RESOURCE_INLINE_WRITE, 0, 11 + words.len() as u32),
        handle,
        level,
        0, // usage
        stride,
        layer_stride,
        bx.x,
        bx.y,
        bx.z,
        bx.width,
        bx.height,
        bx.depth,
    ];
    out.extend(words);
    out
}

/// `VIRGL_CCMD_PIPE_RESOURCE_CREATE` (11 dwords): a host resource that a
/// following RESOURCE_CREATE_BLOB (HOST3D or HOST3D_GUEST) with the same
/// `blob_id` turns into a blob, as Mesa virpipe sends it (`args.handle` unused).
pub fn pipe_resource_create(args: &ResourceArgs, flags: u32, blob_id: u32) -> Vec<u32> {
    vec![
        cmd0(VIRGL_CCMD_PIPE_RESOURCE_CREATE, 0, 11),
        args.target,
        args.format,
        args.bind,
        args.width,
        args.height,
        args.depth,
        args.array_size,
        args.last_level,
        args.nr_samples,
        flags,
        blob_id,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets() {
        assert_eq!(cmd0(9, 0, 12), 0x000c_0009);
        assert_eq!(nop(&[]), [0]);
        assert_eq!(nop(&[1, 2]), [0x0002_0000, 1, 2]);
        let w = resource_inline_write(5, 0, 0, 0, Box3::rect(5, 1), &[1, 2, 3, 4, 5]);
        assert_eq!(w.len(), 1 + 11 + 2);
        assert_eq!(w[0], cmd0(9, 0, 13));
        assert_eq!(w[1], 5);
        assert_eq!(&w[6..12], &[0, 0, 0, 5, 1, 1]);
        assert_eq!(w[12], u32::from_ne_bytes([1, 2, 3, 4]));
        assert_eq!(w[13], u32::from_ne_bytes([5, 0, 0, 0]));
        let p = pipe_resource_create(&ResourceArgs::buffer(4096), 6, 9);
        assert_eq!(p.len(), 12);
        assert_eq!(p[0], cmd0(48, 0, 11));
        assert_eq!(&p[1..5], &[0, 64, 1 << 4, 4096]);
        assert_eq!(&p[10..], &[6, 9]);
    }
}
