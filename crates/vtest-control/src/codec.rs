//! One message <-> one packet payload: a versioned postcard envelope.
//!
//! Pure functions, so the wire format can be tested and fuzzed without a
//! socket.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ControlError;
use crate::messages::WorkerMsg;

/// Version of the control protocol; both ends of a channel must agree.
/// 2: `SeccompViolation`'s syscall number is 8 little-endian bytes, no
/// longer a varint.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest packet payload, in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// What every packet carries: the protocol version, then the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u16,
    pub msg: T,
}

/// Encodes `msg` in an envelope of [`PROTOCOL_VERSION`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ControlError> {
    let envelope = Envelope {
        version: PROTOCOL_VERSION,
        msg,
    };
    let bytes = postcard::to_stdvec(&envelope).map_err(ControlError::Encode)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(ControlError::MessageTooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE,
        });
    }
    Ok(bytes)
}

/// Decodes one packet payload.
///
/// The version is read and checked first, so that a peer of another version
/// is reported as such rather than as a malformed message. The message must
/// use every byte of the payload.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ControlError> {
    // postcard encodes a struct as its fields in order, so an `Envelope<T>`
    // is exactly a `u16` followed by a `T`.
    let (version, rest) = postcard::take_from_bytes::<u16>(bytes).map_err(ControlError::Decode)?;
    if version != PROTOCOL_VERSION {
        return Err(ControlError::VersionMismatch {
            expected: PROTOCOL_VERSION,
            got: version,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(rest).map_err(ControlError::Decode)?;
    if !rest.is_empty() {
        return Err(ControlError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// The packet of [`WorkerMsg::SeccompViolation`], made in advance for a
/// SIGSYS handler (which may neither allocate nor run serde): the packet of
/// syscall 0 and where in it the syscall number's 8 little-endian bytes go.
/// Any number written there gives that number's packet.
pub fn seccomp_violation_template() -> (Vec<u8>, usize) {
    let packet = encode(&WorkerMsg::SeccompViolation { syscall: 0 })
        .expect("a fixed-size message always encodes");
    let syscall_at = packet.len() - std::mem::size_of::<i64>();
    (packet, syscall_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{BrokerMsg, ExitReason, SessionStats, WorkerMsg};

    proptest::proptest! {
        #[test]
        fn violation_template_gives_every_number_its_packet(syscall: i64) {
            let (mut packet, at) = seccomp_violation_template();
            packet[at..at + 8].copy_from_slice(&syscall.to_le_bytes());
            let msg = WorkerMsg::SeccompViolation { syscall };
            proptest::prop_assert_eq!(&packet, &encode(&msg).unwrap());
            proptest::prop_assert_eq!(decode::<WorkerMsg>(&packet).unwrap(), msg);
        }
    }

    #[test]
    fn decode_reads_what_an_envelope_serialises_to() {
        let msg = WorkerMsg::Attached { client_id: 7 };
        let bytes = postcard::to_stdvec(&Envelope {
            version: PROTOCOL_VERSION,
            msg: msg.clone(),
        })
        .unwrap();
        assert_eq!(bytes, encode(&msg).unwrap());
        assert_eq!(decode::<WorkerMsg>(&bytes).unwrap(), msg);
    }

    #[test]
    fn other_version_is_mismatch_even_if_body_is_garbage() {
        let bytes = postcard::to_stdvec(&Envelope {
            version: PROTOCOL_VERSION + 1,
            msg: [0xffu8; 8],
        })
        .unwrap();
        match decode::<BrokerMsg>(&bytes) {
            Err(ControlError::VersionMismatch { expected, got }) => {
                assert_eq!(expected, PROTOCOL_VERSION);
                assert_eq!(got, PROTOCOL_VERSION + 1);
            }
            other => panic!("expected VersionMismatch, got {other:?}"),
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&BrokerMsg::CgroupJoined).unwrap();
        bytes.extend_from_slice(&[0, 0]);
        assert!(matches!(
            decode::<BrokerMsg>(&bytes),
            Err(ControlError::TrailingBytes(2))
        ));
    }

    #[test]
    fn empty_and_unknown_variant_are_decode_errors() {
        assert!(matches!(
            decode::<BrokerMsg>(&[]),
            Err(ControlError::Decode(_))
        ));
        // Right version, variant index 9 of a two-variant enum.
        let bytes = [PROTOCOL_VERSION as u8, 9];
        assert!(matches!(
            decode::<BrokerMsg>(&bytes),
            Err(ControlError::Decode(_))
        ));
    }

    #[test]
    fn oversized_message_is_rejected() {
        let msg = WorkerMsg::Finished {
            stats: SessionStats::default(),
            reason: ExitReason::ProtocolError {
                reason: "x".repeat(MAX_MESSAGE),
            },
        };
        assert!(matches!(
            encode(&msg),
            Err(ControlError::MessageTooLarge {
                max: MAX_MESSAGE,
                ..
            })
        ));
    }

    #[test]
    fn largest_fixed_size_message_fits_easily() {
        let stats = SessionStats {
            commands: u64::MAX,
            bytes_in: u64::MAX,
            bytes_out: u64::MAX,
            resources_created: u64::MAX,
            live_resources: u64::MAX,
            shm_bytes: u64::MAX,
            fences_submitted: u64::MAX,
            fences_completed: u64::MAX,
            fds_sent: u64::MAX,
        };
        let len = encode(&WorkerMsg::Stats(stats)).unwrap().len();
        assert!(len < MAX_MESSAGE / 16, "stats message is {len} bytes");
    }
}
