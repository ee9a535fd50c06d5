//! Little helpers over native-endian dwords.

/// Bytes in a message header (`LEN`, `CMD_ID`).
pub const HEADER_BYTES: usize = 8;

/// Reads dword `index` of `buf`. The caller has checked the length.
pub(crate) fn dword(buf: &[u8], index: usize) -> u32 {
    let at = index * 4;
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Joins a `LO`, `HI` dword pair.
pub(crate) fn join64(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

pub(crate) fn put(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_ne_bytes());
}

pub(crate) fn put64(out: &mut Vec<u8>, value: u64) {
    put(out, value as u32);
    put(out, (value >> 32) as u32);
}
