//! Property tests: hostile packets never panic; every message round-trips.

mod common;

use proptest::prelude::*;
use vtest_control::codec;
use vtest_control::{
    BrokerMsg, Channel, ClientInfo, ControlError, ExitReason, Limits, SessionStats, WorkerMsg,
    MAX_MESSAGE, PROTOCOL_VERSION,
};

use common::raw_send;

fn short_string() -> impl Strategy<Value = String> {
    ".{0,64}"
}

fn session_stats() -> impl Strategy<Value = SessionStats> {
    (any::<[u64; 9]>()).prop_map(|v| SessionStats {
        commands: v[0],
        bytes_in: v[1],
        bytes_out: v[2],
        resources_created: v[3],
        live_resources: v[4],
        shm_bytes: v[5],
        fences_submitted: v[6],
        fences_completed: v[7],
        fds_sent: v[8],
    })
}

fn exit_reason() -> impl Strategy<Value = ExitReason> {
    prop_oneof![
        Just(ExitReason::ClientDisconnected),
        short_string().prop_map(|reason| ExitReason::ProtocolError { reason }),
        short_string().prop_map(|reason| ExitReason::RendererError { reason }),
        (short_string(), any::<u64>(), any::<u64>())
            .prop_map(|(limit, value, max)| ExitReason::LimitExceeded { limit, value, max }),
        short_string().prop_map(|reason| ExitReason::IoError { reason }),
        short_string().prop_map(|reason| ExitReason::InitFailed { reason }),
    ]
}

fn worker_msg() -> impl Strategy<Value = WorkerMsg> {
    prop_oneof![
        any::<u32>().prop_map(|pid| WorkerMsg::Ready { pid }),
        any::<u64>().prop_map(|client_id| WorkerMsg::Attached { client_id }),
        session_stats().prop_map(WorkerMsg::Stats),
        (session_stats(), exit_reason())
            .prop_map(|(stats, reason)| WorkerMsg::Finished { stats, reason }),
        any::<i64>().prop_map(|syscall| WorkerMsg::SeccompViolation { syscall }),
    ]
}

fn broker_msg() -> impl Strategy<Value = BrokerMsg> {
    let client = (
        any::<u64>(),
        any::<i32>(),
        any::<u32>(),
        any::<u32>(),
        short_string(),
    )
        .prop_map(|(client_id, pid, uid, gid, listener)| ClientInfo {
            client_id,
            pid,
            uid,
            gid,
            listener,
        });
    prop_oneof![
        (client, any::<[u32; 4]>(), any::<[u64; 3]>()).prop_map(|(client, a, b)| {
            BrokerMsg::Attach {
                client,
                limits: Limits {
                    max_resources: a[0],
                    max_command_bytes: a[1],
                    max_syncs: a[2],
                    max_waits: a[3],
                    max_resource_bytes: b[0],
                    max_shm_bytes: b[1],
                    idle_timeout_ms: b[2],
                },
            }
        }),
        Just(BrokerMsg::CgroupJoined),
    ]
}

/// Packet payloads: fully random, or with a valid version prefix so that
/// the message decoder itself is exercised.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=MAX_MESSAGE + 64),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut tail| {
            tail.insert(0, PROTOCOL_VERSION as u8);
            tail
        }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_packets_never_panic(bytes in packet()) {
        let (a, b) = Channel::pair().unwrap();
        raw_send(&a, &bytes, &[]);
        raw_send(&a, &bytes, &[]);
        let as_broker = b.recv::<BrokerMsg>();
        let as_worker = b.recv::<WorkerMsg>();
        for result in [as_broker.map(drop), as_worker.map(drop)] {
            match result {
                Err(ControlError::Disconnected) => prop_assert!(bytes.is_empty()),
                Err(ControlError::Truncated) => prop_assert!(bytes.len() > MAX_MESSAGE),
                Ok(()) => prop_assert!(!bytes.is_empty() && bytes.len() <= MAX_MESSAGE),
                Err(_) => {}
            }
        }
        // Every packet was consumed, good or bad.
        prop_assert!(b.try_recv::<WorkerMsg>().unwrap().is_none());
    }

    #[test]
    fn arbitrary_payloads_never_panic_the_decoder(bytes in packet()) {
        let _ = codec::decode::<BrokerMsg>(&bytes);
        let _ = codec::decode::<WorkerMsg>(&bytes);
    }

    #[test]
    fn worker_messages_round_trip(msg in worker_msg()) {
        let (a, b) = Channel::pair().unwrap();
        a.send(&msg, &[]).unwrap();
        prop_assert_eq!(b.recv::<WorkerMsg>().unwrap().0, msg);
    }

    #[test]
    fn broker_messages_round_trip(msg in broker_msg()) {
        let (a, b) = Channel::pair().unwrap();
        a.send(&msg, &[]).unwrap();
        prop_assert_eq!(b.recv::<BrokerMsg>().unwrap().0, msg);
    }
}
