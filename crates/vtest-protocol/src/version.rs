//! Protocol version negotiation (`docs/PROTOCOL.md` §3).

/// The highest protocol version vtestd serves (v4 needs DRM native contexts).
pub const MAX_VERSION: u32 = 3;

/// The version a server answers to a client asking for `requested`.
///
/// `min(requested, server_max)`; version 1 is deprecated and maps to 0.
pub fn negotiate(requested: u32, server_max: u32) -> u32 {
    match requested.min(server_max) {
        1 => 0,
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_matches_the_reference() {
        assert_eq!(negotiate(99, MAX_VERSION), 3);
        assert_eq!(negotiate(2, MAX_VERSION), 2);
        assert_eq!(negotiate(1, MAX_VERSION), 0);
        assert_eq!(negotiate(0, MAX_VERSION), 0);
        assert_eq!(negotiate(3, 1), 0);
    }
}
