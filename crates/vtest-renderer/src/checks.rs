//! Validation done in Rust before arguments reach virglrenderer.

use std::ffi::c_int;

use vtest_protocol::{TransferArgs, TransferBox};

use crate::error::RendererError;
use crate::ffi::VirglBox;

/// Several C prototypes take ids as `int` and convert them back to
/// `uint32_t` internally (modular conversion), so the faithful way to pass a
/// `u32` id is a bit-for-bit reinterpretation.
pub(crate) fn c_id(id: u32) -> c_int {
    c_int::from_ne_bytes(id.to_ne_bytes())
}

/// Rejects boxes whose end coordinates overflow `u32` (virglrenderer 0.10.4
/// had integer-overflow bugs in its own box checks).
pub(crate) fn check_box(b: &TransferBox) -> Result<VirglBox, RendererError> {
    let fits = b.x.checked_add(b.w).is_some()
        && b.y.checked_add(b.h).is_some()
        && b.z.checked_add(b.d).is_some();
    if !fits {
        return Err(RendererError::InvalidArgument("transfer box overflows"));
    }
    Ok(VirglBox {
        x: b.x,
        y: b.y,
        z: b.z,
        w: b.w,
        h: b.h,
        d: b.d,
    })
}

/// Every check of a transfer that needs no C state, in the order they fail:
/// the box (returned as C's), then the offset and the strides against the
/// guest data. That is `buffer_len` bytes when the caller passes a buffer,
/// else the `backing_len` bytes of the resource's attached backing (0 without
/// one).
pub(crate) fn check_transfer(
    t: &TransferArgs,
    buffer_len: Option<usize>,
    backing_len: usize,
) -> Result<VirglBox, RendererError> {
    let bx = check_box(&t.bx)?;
    let avail = buffer_len.unwrap_or(backing_len);
    check_offset(t.offset, avail)?;
    check_strides(t, avail)?;
    Ok(bx)
}

/// `virgl_renderer_transfer_write_iov` takes the mip level as `int` (the read
/// takes `uint32_t`): a level that does not fit is refused, not wrapped.
pub(crate) fn c_level(level: u32) -> Result<c_int, RendererError> {
    c_int::try_from(level).map_err(|_| RendererError::InvalidArgument("mip level out of range"))
}

/// Checks that `offset` lies within `avail` bytes of guest data.
pub(crate) fn check_offset(offset: u64, avail: usize) -> Result<(), RendererError> {
    let avail =
        u64::try_from(avail).map_err(|_| RendererError::InvalidArgument("buffer too large"))?;
    if offset > avail {
        return Err(RendererError::InvalidArgument(
            "transfer offset beyond guest data",
        ));
    }
    Ok(())
}

/// Format-independent hardening of a transfer against the 32-bit size
/// arithmetic in virglrenderer 0.10.4's `check_iov_bounds` (`stride * h`,
/// `layer_stride * d` in `GLuint`; fixed upstream after 0.10.4). A caller
/// chosen stride whose products wrap would pass that check and make
/// virglrenderer copy rows far outside the guest data. Mirrors C: a stride is
/// only used for boxes with `h > 1`, a layer stride for `d > 1`.
///
/// Conditions that every valid transfer meets anyway are enforced: the
/// products fit in 32 bits, and the last row/layer starts inside the
/// `avail` bytes of guest data. Transfers with stride 0 use sizes derived by
/// C from the resource's format and the box (bounded by the resource size);
/// those are left to virglrenderer.
pub(crate) fn check_strides(t: &TransferArgs, avail: usize) -> Result<(), RendererError> {
    const LIMIT: u64 = u32::MAX as u64;
    let avail =
        u64::try_from(avail).map_err(|_| RendererError::InvalidArgument("buffer too large"))?;
    let (h, d) = (u64::from(t.bx.h), u64::from(t.bx.d));
    let (stride, layer) = (u64::from(t.stride), u64::from(t.layer_stride));
    // Each product of two u32 values fits in a u64.
    let starts_inside = |step: u64, n: u64| {
        t.offset
            .checked_add(step * (n - 1))
            .is_some_and(|e| e <= avail)
    };
    if stride != 0 && h > 1 {
        let per_layer = stride * h;
        if per_layer > LIMIT || (layer == 0 && per_layer.saturating_mul(d) > LIMIT) {
            return Err(RendererError::InvalidArgument("transfer stride too large"));
        }
        if !starts_inside(stride, h) {
            return Err(RendererError::InvalidArgument(
                "transfer rows exceed guest data",
            ));
        }
    }
    if layer != 0 && d > 1 {
        if layer * d > LIMIT {
            return Err(RendererError::InvalidArgument(
                "transfer layer stride too large",
            ));
        }
        if !starts_inside(layer, d) {
            return Err(RendererError::InvalidArgument(
                "transfer layers exceed guest data",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_overflow_is_rejected() {
        let ok = TransferBox {
            x: 1,
            y: 2,
            z: 0,
            w: 16,
            h: 16,
            d: 1,
        };
        assert!(check_box(&ok).is_ok());
        for bad in [
            TransferBox {
                x: u32::MAX,
                w: 1,
                ..ok
            },
            TransferBox {
                y: 1,
                h: u32::MAX,
                ..ok
            },
            TransferBox {
                z: u32::MAX,
                d: u32::MAX,
                ..ok
            },
        ] {
            assert!(matches!(
                check_box(&bad),
                Err(RendererError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn offset_must_be_within_data() {
        assert!(check_offset(0, 0).is_ok());
        assert!(check_offset(16, 16).is_ok());
        assert!(check_offset(17, 16).is_err());
        assert!(check_offset(u64::MAX, usize::MAX - 1).is_err());
    }

    fn transfer(stride: u32, layer_stride: u32, h: u32, d: u32, offset: u64) -> TransferArgs {
        TransferArgs {
            handle: 1,
            level: 0,
            stride,
            layer_stride,
            bx: TransferBox {
                x: 0,
                y: 0,
                z: 0,
                w: 4,
                h,
                d,
            },
            offset,
        }
    }

    #[test]
    fn strides_are_checked() {
        // Packed (stride 0) transfers are left to C.
        assert!(check_strides(&transfer(0, 0, 16, 1, 0), 1024).is_ok());
        // A normal explicit stride.
        assert!(check_strides(&transfer(64, 0, 16, 1, 0), 1024).is_ok());
        assert!(check_strides(&transfer(64, 1024, 16, 4, 0), 4096).is_ok());
        // Stride ignored by C for a single row / layer stride for one layer.
        assert!(check_strides(&transfer(u32::MAX, 0, 1, 1, 0), 16).is_ok());
        assert!(check_strides(&transfer(0, u32::MAX, 4, 1, 0), 16).is_ok());
        // stride * h wraps in 32 bits: 0x4000_0000 * 4 == 2^32.
        assert!(check_strides(&transfer(0x4000_0000, 0, 4, 1, 0), usize::MAX).is_err());
        // stride * h * d wraps without a layer stride.
        assert!(check_strides(&transfer(0x1000_0000, 0, 4, 4, 0), usize::MAX).is_err());
        // layer_stride * d wraps.
        assert!(check_strides(&transfer(0, 0x8000_0000, 4, 2, 0), usize::MAX).is_err());
        // The last row / layer must start inside the data.
        assert!(check_strides(&transfer(64, 0, 16, 1, 0), 64 * 15).is_ok());
        assert!(check_strides(&transfer(64, 0, 16, 1, 1), 64 * 15).is_err());
        assert!(check_strides(&transfer(0, 1024, 16, 4, 0), 3 * 1024 - 1).is_err());
        assert!(check_strides(&transfer(64, 0, 16, 1, u64::MAX), usize::MAX).is_err());
    }

    #[test]
    fn transfers_are_checked_against_the_buffer_else_the_backing() {
        let at = |offset| TransferArgs {
            offset,
            ..transfer(0, 0, 1, 1, 0)
        };
        // Without a buffer, the backing's length bounds the offset...
        assert!(check_transfer(&at(100), None, 4096).is_ok());
        assert!(check_transfer(&at(100), None, 99).is_err());
        // ... and without a backing, only offset 0 passes (C then fails).
        assert!(check_transfer(&at(0), None, 0).is_ok());
        assert!(check_transfer(&at(1), None, 0).is_err());
        // A buffer replaces the backing, smaller or larger.
        assert!(check_transfer(&at(100), Some(64), 4096).is_err());
        assert!(check_transfer(&at(100), Some(128), 0).is_ok());
        assert!(check_transfer(&at(128), Some(128), 0).is_ok());
        assert!(check_transfer(&at(129), Some(128), 0).is_err());
    }

    #[test]
    fn transfer_strides_use_the_same_guest_length() {
        // 16 rows of 64 bytes: the last row starts at 960.
        let t = transfer(64, 0, 16, 1, 0);
        assert!(check_transfer(&t, Some(64 * 15), 0).is_ok());
        assert!(check_transfer(&t, Some(64 * 15 - 1), 1 << 20).is_err());
        assert!(check_transfer(&t, None, 64 * 15).is_ok());
        assert!(check_transfer(&t, None, 64 * 15 - 1).is_err());
        // 4 layers of 1024 bytes.
        let t = transfer(0, 1024, 1, 4, 0);
        assert!(check_transfer(&t, Some(3 * 1024), 0).is_ok());
        assert!(check_transfer(&t, Some(3 * 1024 - 1), 0).is_err());
    }

    #[test]
    fn transfer_box_is_checked_first_and_handed_to_c_unchanged() {
        let mut t = transfer(0, 0, 3, 1, 0);
        t.bx = TransferBox {
            x: 1,
            y: 2,
            z: 3,
            w: 4,
            h: 5,
            d: 6,
        };
        assert_eq!(
            check_transfer(&t, Some(0), 0).unwrap(),
            VirglBox {
                x: 1,
                y: 2,
                z: 3,
                w: 4,
                h: 5,
                d: 6
            }
        );
        // A wrapping box fails even where the offset would fail too.
        t.bx.x = u32::MAX;
        t.offset = 1;
        assert!(matches!(
            check_transfer(&t, Some(0), 0),
            Err(RendererError::InvalidArgument("transfer box overflows"))
        ));
    }

    #[test]
    fn write_levels_must_fit_in_int() {
        assert_eq!(c_level(0).unwrap(), 0);
        assert_eq!(c_level(i32::MAX as u32).unwrap(), i32::MAX);
        assert!(c_level(i32::MAX as u32 + 1).is_err());
        assert!(c_level(u32::MAX).is_err());
    }

    #[test]
    fn ids_are_reinterpreted_bitwise() {
        assert_eq!(c_id(0), 0);
        assert_eq!(c_id(5), 5);
        assert_eq!(c_id(u32::MAX), -1);
        assert_eq!(c_id(0x8000_0000), i32::MIN);
    }
}
