//! What a transfer request asks the renderer to copy: its box, and the
//! arguments common to every transfer whichever command carried it.

use crate::request::{Transfer, Transfer2};
use crate::wire::dword;

/// A box in texels (bytes for buffers): origin and size. Untrusted: its end
/// may wrap `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferBox {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}

impl TransferBox {
    pub(crate) fn parse(p: &[u8], first: usize) -> Self {
        TransferBox {
            x: dword(p, first),
            y: dword(p, first + 1),
            z: dword(p, first + 2),
            w: dword(p, first + 3),
            h: dword(p, first + 4),
            d: dword(p, first + 5),
        }
    }

    pub(crate) fn fields(&self) -> [u32; 6] {
        [self.x, self.y, self.z, self.w, self.h, self.d]
    }
}

/// A transfer as the renderer performs it (the arguments of
/// `virgl_renderer_transfer_{read,write}_iov`), whichever request carried it:
/// `TRANSFER_GET`/`TRANSFER_PUT` give strides and copy at offset 0 of the
/// data on the socket ([`From<&Transfer>`]); `TRANSFER_GET2`/`TRANSFER_PUT2`
/// give an offset into the resource's shared memory and no strides
/// ([`From<&Transfer2>`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferArgs {
    /// Resource handle.
    pub handle: u32,
    /// Mip level.
    pub level: u32,
    /// Bytes from one row of the guest data to the next; 0: the row size of
    /// the resource at `level`, as virglrenderer derives it from the format.
    pub stride: u32,
    /// Bytes from one layer of the guest data to the next; 0: the stride
    /// times the height of the resource at `level`.
    pub layer_stride: u32,
    /// Region of the resource.
    pub bx: TransferBox,
    /// Byte offset into the guest data (the resource's backing, or the
    /// buffer passed with the transfer).
    pub offset: u64,
}

impl From<&Transfer> for TransferArgs {
    fn from(t: &Transfer) -> Self {
        TransferArgs {
            handle: t.handle,
            level: t.level,
            stride: t.stride,
            layer_stride: t.layer_stride,
            bx: t.bx,
            offset: 0,
        }
    }
}

impl From<&Transfer2> for TransferArgs {
    fn from(t: &Transfer2) -> Self {
        TransferArgs {
            handle: t.handle,
            level: t.level,
            stride: 0,
            layer_stride: 0,
            bx: t.bx,
            offset: u64::from(t.offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BX: TransferBox = TransferBox {
        x: 1,
        y: 2,
        z: 3,
        w: 4,
        h: 5,
        d: 6,
    };

    #[test]
    fn v0_transfers_keep_strides_and_copy_at_offset_0() {
        let t = Transfer {
            handle: 7,
            level: 2,
            stride: 64,
            layer_stride: 4096,
            bx: BX,
            data_size: 999,
        };
        assert_eq!(
            TransferArgs::from(&t),
            TransferArgs {
                handle: 7,
                level: 2,
                stride: 64,
                layer_stride: 4096,
                bx: BX,
                offset: 0,
            }
        );
    }

    #[test]
    fn v2_transfers_take_the_offset_and_no_strides() {
        let t = Transfer2 {
            handle: 7,
            level: 1,
            bx: BX,
            data_size: 999,
            offset: u32::MAX,
        };
        assert_eq!(
            TransferArgs::from(&t),
            TransferArgs {
                handle: 7,
                level: 1,
                stride: 0,
                layer_stride: 0,
                bx: BX,
                offset: u64::from(u32::MAX),
            }
        );
    }

    #[test]
    fn box_fields_are_in_wire_order() {
        let p: Vec<u8> = (10u32..16).flat_map(u32::to_ne_bytes).collect();
        let b = TransferBox::parse(&p, 0);
        assert_eq!(b.fields(), [10, 11, 12, 13, 14, 15]);
        assert_eq!((b.x, b.w, b.d), (10, 13, 15));
    }
}
