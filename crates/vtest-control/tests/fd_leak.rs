//! Received fds are never leaked, whatever the packet.
//!
//! These tests count this process's open fds, so they run one at a time
//! (under `SERIAL`) and in their own test binary.

mod common;

use std::sync::Mutex;

use vtest_control::{BrokerMsg, Channel, ControlError, Envelope, WorkerMsg, MAX_FDS, MAX_MESSAGE};

use common::{borrow_all, count_fds, open_fds, raw_send};

static SERIAL: Mutex<()> = Mutex::new(());

/// Sends `bytes` with `nfds` fds, closes the sender's copies, receives, and
/// checks that the receive leaves the fd count unchanged.
fn recv_leaves_no_fds(bytes: &[u8], nfds: usize) -> ControlError {
    let (a, b) = Channel::pair().unwrap();
    let fds = open_fds(nfds);
    raw_send(&a, bytes, &borrow_all(&fds));
    drop(fds);

    let before = count_fds();
    let err = b.recv::<BrokerMsg>().expect_err("bad packet accepted");
    assert_eq!(count_fds(), before, "fds leaked on {err:?}");

    // The channel still works after a refused packet.
    a.send(&BrokerMsg::CgroupJoined, &[]).unwrap();
    assert_eq!(b.recv::<BrokerMsg>().unwrap().0, BrokerMsg::CgroupJoined);
    err
}

fn shutdown_bytes() -> Vec<u8> {
    postcard::to_stdvec(&Envelope {
        version: vtest_control::PROTOCOL_VERSION,
        msg: BrokerMsg::CgroupJoined,
    })
    .unwrap()
}

#[test]
fn more_than_max_fds_is_refused_and_closed() {
    let _serial = SERIAL.lock().unwrap();
    let start = count_fds();
    for nfds in [MAX_FDS + 1, 2 * MAX_FDS, 64] {
        let err = recv_leaves_no_fds(&shutdown_bytes(), nfds);
        assert!(
            matches!(err, ControlError::Truncated),
            "{nfds} fds: {err:?}"
        );
    }
    assert_eq!(count_fds(), start);
}

#[test]
fn fds_of_bad_packets_are_closed() {
    let _serial = SERIAL.lock().unwrap();
    let start = count_fds();

    let err = recv_leaves_no_fds(&vec![0u8; MAX_MESSAGE + 100], 2);
    assert!(matches!(err, ControlError::Truncated), "{err:?}");

    let err = recv_leaves_no_fds(&[0xff; 8], MAX_FDS);
    assert!(matches!(err, ControlError::Decode(_)), "{err:?}");

    let wrong_version = postcard::to_stdvec(&Envelope {
        version: 0,
        msg: BrokerMsg::CgroupJoined,
    })
    .unwrap();
    let err = recv_leaves_no_fds(&wrong_version, 1);
    assert!(
        matches!(err, ControlError::VersionMismatch { got: 0, .. }),
        "{err:?}"
    );

    // A worker message where a broker message is expected.
    let worker_msg = postcard::to_stdvec(&Envelope {
        version: vtest_control::PROTOCOL_VERSION,
        msg: WorkerMsg::SeccompViolation { syscall: 1 << 40 },
    })
    .unwrap();
    let err = recv_leaves_no_fds(&worker_msg, 1);
    assert!(
        matches!(
            err,
            ControlError::Decode(_) | ControlError::TrailingBytes(_)
        ),
        "{err:?}"
    );

    assert_eq!(count_fds(), start);
}

#[test]
fn accepted_fds_are_the_only_new_ones() {
    let _serial = SERIAL.lock().unwrap();
    let (a, b) = Channel::pair().unwrap();
    let fds = open_fds(MAX_FDS);
    a.send(&BrokerMsg::CgroupJoined, &borrow_all(&fds)).unwrap();
    drop(fds);

    let before = count_fds();
    let (_, received) = b.recv::<BrokerMsg>().unwrap();
    assert_eq!(received.len(), MAX_FDS);
    assert_eq!(count_fds(), before + MAX_FDS);
    drop(received);
    assert_eq!(count_fds(), before);
}
