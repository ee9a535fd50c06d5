//! Arbitrary bytes through `vtest_protocol::decode`, frame after frame, as the
//! session frames a client's stream.
//!
//! Checked for every frame, under two sets of limits (small ones, so that
//! the limit paths are reached, and the defaults, so that real Mesa traffic
//! in the corpus parses far):
//! - no panic;
//! - `NeedMore(n)` asks for more than the buffer holds and never more than
//!   `Limits::max_frame_bytes()`;
//! - a request uses between 8 bytes and the whole buffer;
//! - every proper prefix of a complete request asks for more (never errors,
//!   never yields a different request);
//! - the small limits only ever add limit errors: otherwise they decode
//!   exactly what the defaults decode;
//! - re-encoding a request gives the same payload bytes, and decodes to the
//!   same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vtest_protocol::{decode, Decoded, Limits, ProtocolError, HEADER_BYTES};

/// Small enough that mutated headers hit them often.
const SMALL: Limits = Limits {
    max_command_bytes: 256,
    max_transfer_bytes: 128,
    max_name_bytes: 32,
};

fuzz_target!(|data: &[u8]| {
    let big = Limits::default();
    frames(data, &SMALL, Some(&big));
    frames(data, &big, None);
});

/// Decodes `data` frame after frame with `limits`, comparing each frame with
/// the result under `wider` (limits at least as large) when given.
fn frames(data: &[u8], limits: &Limits, wider: Option<&Limits>) {
    let max = limits.max_frame_bytes();
    let mut rest = data;
    loop {
        let result = decode(rest, limits);
        if let Some(wider) = wider {
            let other = decode(rest, wider);
            match (&result, &other) {
                (Err(e), _) if is_limit(e) => {}
                (a, b) => assert_eq!(a, b, "small limits changed more than limit errors"),
            }
        }
        match result {
            Err(_) => return,
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > rest.len(), "NeedMore({n}) with {} bytes", rest.len());
                assert!(n <= max, "NeedMore({n}) over max_frame_bytes {max}");
                return;
            }
            Ok(Decoded::Request(request, used)) => {
                assert!(used >= HEADER_BYTES && used <= rest.len());
                let frame = &rest[..used];
                for cut in [HEADER_BYTES.min(used - 1), used / 2, used - 1] {
                    match decode(&frame[..cut], limits) {
                        Ok(Decoded::NeedMore(n)) => assert!(n > cut && n <= used),
                        other => panic!("prefix {cut} of a {used}-byte frame: {other:?}"),
                    }
                }
                let mut encoded = Vec::new();
                request.encode(&mut encoded);
                assert_eq!(
                    &encoded[HEADER_BYTES..],
                    &frame[HEADER_BYTES..],
                    "re-encoded payload differs"
                );
                assert_eq!(
                    &encoded[4..8],
                    &frame[4..8],
                    "re-encoded command id differs"
                );
                match decode(&encoded, limits) {
                    Ok(Decoded::Request(again, n)) => {
                        assert_eq!(again, request);
                        assert_eq!(n, encoded.len());
                    }
                    other => panic!("re-encoded request does not decode: {other:?}"),
                }
                rest = &rest[used..];
            }
        }
    }
}

fn is_limit(e: &ProtocolError) -> bool {
    matches!(
        e,
        ProtocolError::CommandTooLarge { .. }
            | ProtocolError::NameTooLong { .. }
            | ProtocolError::TransferTooLarge { .. }
    )
}
