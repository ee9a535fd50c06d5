//! Arbitrary bytes through the control channel's packet decoder, as the broker
//! (`WorkerMsg`) and a worker (`BrokerMsg`) decode a packet.
//!
//! Checked: no panic; whatever decodes re-encodes (within `MAX_MESSAGE`, as
//! a packet holds at most that much) and decodes back to the same message.
//! (Bytes need not round-trip: postcard accepts overlong varints such as
//! `81 00` for 1, and re-encodes them canonically.)
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vtest_control::codec::{decode, encode};
use vtest_control::{BrokerMsg, ControlError, WorkerMsg, MAX_MESSAGE, PROTOCOL_VERSION};

fuzz_target!(|data: &[u8]| {
    check::<WorkerMsg>(data);
    check::<BrokerMsg>(data);
});

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let msg = match decode::<T>(data) {
        Ok(msg) => msg,
        Err(ControlError::VersionMismatch { expected, got }) => {
            assert_eq!(expected, PROTOCOL_VERSION);
            assert_ne!(got, PROTOCOL_VERSION);
            return;
        }
        Err(_) => return,
    };
    match encode(&msg) {
        Ok(bytes) => {
            assert!(bytes.len() <= MAX_MESSAGE);
            assert!(bytes.len() <= data.len(), "re-encoding grew the message");
            assert_eq!(decode::<T>(&bytes).expect("re-encoded message"), msg);
        }
        // Only a packet larger than any the channel carries can decode to
        // a message too large to send.
        Err(ControlError::MessageTooLarge { .. }) => assert!(data.len() > MAX_MESSAGE),
        Err(e) => panic!("decoded message does not encode: {e:?}"),
    }
}
