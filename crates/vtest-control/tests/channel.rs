//! The channel over a real socketpair: messages, fds, and each error.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;

use rustix::io::{fcntl_getfd, FdFlags};
use vtest_control::{
    expect_one_fd, BrokerMsg, Channel, ClientInfo, ControlError, Envelope, ExitReason, Limits,
    SessionStats, WorkerMsg, MAX_FDS, MAX_MESSAGE, PROTOCOL_VERSION,
};

use common::{borrow_all, open_fds, raw_send};

fn client_info() -> ClientInfo {
    ClientInfo {
        client_id: 42,
        pid: 1234,
        uid: 1000,
        gid: 100,
        listener: "/tmp/.virgl_test".into(),
    }
}

fn limits() -> Limits {
    Limits {
        max_resources: 10,
        max_resource_bytes: 1 << 20,
        max_shm_bytes: 1 << 30,
        max_command_bytes: 4096,
        max_syncs: 3,
        max_waits: 2,
        idle_timeout_ms: 5000,
    }
}

fn stats() -> SessionStats {
    SessionStats {
        commands: 1,
        bytes_in: 2,
        bytes_out: 3,
        resources_created: 4,
        live_resources: 5,
        shm_bytes: 6,
        fences_submitted: 7,
        fences_completed: 8,
        fds_sent: u64::MAX,
    }
}

fn every_worker_msg() -> Vec<WorkerMsg> {
    let reasons = [
        ExitReason::ClientDisconnected,
        ExitReason::ProtocolError {
            reason: "unknown command id 99".into(),
        },
        ExitReason::RendererError {
            reason: "virgl_renderer_submit_cmd failed".into(),
        },
        ExitReason::LimitExceeded {
            limit: "resources".into(),
            value: 4097,
            max: 4096,
        },
        ExitReason::IoError {
            reason: "connection reset".into(),
        },
        ExitReason::InitFailed {
            reason: "no EGL display".into(),
        },
    ];
    let mut msgs = vec![
        WorkerMsg::Ready { pid: 77 },
        WorkerMsg::Attached { client_id: 42 },
        WorkerMsg::Stats(stats()),
        WorkerMsg::Stats(SessionStats::default()),
        WorkerMsg::SeccompViolation { syscall: 41 },
        WorkerMsg::SeccompViolation { syscall: -1 },
    ];
    msgs.extend(reasons.into_iter().map(|reason| WorkerMsg::Finished {
        stats: stats(),
        reason,
    }));
    msgs
}

#[test]
fn every_worker_msg_round_trips() {
    let (broker, worker) = Channel::pair().unwrap();
    for msg in every_worker_msg() {
        worker.send(&msg, &[]).unwrap();
        let (got, fds) = broker.recv::<WorkerMsg>().unwrap();
        assert_eq!(got, msg);
        assert!(fds.is_empty());
    }
}

#[test]
fn every_broker_msg_round_trips() {
    let (broker, worker) = Channel::pair().unwrap();
    let (client, _peer) = UnixStream::pair().unwrap();

    broker
        .send(
            &BrokerMsg::Attach {
                client: client_info(),
                limits: limits(),
            },
            &[client.as_fd()],
        )
        .unwrap();
    let (got, fds) = worker.recv::<BrokerMsg>().unwrap();
    assert_eq!(
        got,
        BrokerMsg::Attach {
            client: client_info(),
            limits: limits(),
        }
    );
    assert_eq!(fds.len(), 1);

    broker.send(&BrokerMsg::CgroupJoined, &[]).unwrap();
    let (got, fds) = worker.recv::<BrokerMsg>().unwrap();
    assert_eq!(got, BrokerMsg::CgroupJoined);
    assert!(fds.is_empty());
}

#[test]
fn attached_client_fd_is_a_working_cloexec_socket() {
    let (broker, worker) = Channel::pair().unwrap();
    let (client, mut far_end) = UnixStream::pair().unwrap();

    broker
        .send(
            &BrokerMsg::Attach {
                client: client_info(),
                limits: limits(),
            },
            &[client.as_fd()],
        )
        .unwrap();
    // The broker's copy goes away; the worker's must stand on its own.
    drop(client);

    let (_, fds) = worker.recv::<BrokerMsg>().unwrap();
    let fd = expect_one_fd(fds).unwrap();
    assert!(
        fcntl_getfd(&fd).unwrap().contains(FdFlags::CLOEXEC),
        "received fd lacks FD_CLOEXEC"
    );

    let mut received = UnixStream::from(fd);
    far_end.write_all(b"vtest").unwrap();
    let mut buf = [0u8; 5];
    received.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"vtest");

    received.write_all(b"back").unwrap();
    let mut buf = [0u8; 4];
    far_end.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"back");
}

#[test]
fn channel_ends_are_cloexec() {
    let (a, b) = Channel::pair().unwrap();
    for end in [&a, &b] {
        assert!(fcntl_getfd(end).unwrap().contains(FdFlags::CLOEXEC));
    }
}

#[test]
fn garbage_packet_is_decode_error_and_channel_stays_usable() {
    let (a, b) = Channel::pair().unwrap();
    // 0xff.. is an overlong varint for the u16 version.
    raw_send(&a, &[0xff; 16], &[]);
    assert!(matches!(
        b.recv::<BrokerMsg>(),
        Err(ControlError::Decode(_))
    ));
    // Right version, then a variant index BrokerMsg does not have.
    raw_send(&a, &[PROTOCOL_VERSION as u8, 3], &[]);
    assert!(matches!(
        b.recv::<BrokerMsg>(),
        Err(ControlError::Decode(_))
    ));
    // The bad packets were consumed whole.
    a.send(&BrokerMsg::CgroupJoined, &[]).unwrap();
    assert_eq!(b.recv::<BrokerMsg>().unwrap().0, BrokerMsg::CgroupJoined);
}

#[test]
fn wrong_envelope_version_is_version_mismatch() {
    let (a, b) = Channel::pair().unwrap();
    let bytes = postcard::to_stdvec(&Envelope {
        version: PROTOCOL_VERSION + 1,
        msg: WorkerMsg::Ready { pid: 1 },
    })
    .unwrap();
    raw_send(&a, &bytes, &[]);
    match b.recv::<WorkerMsg>() {
        Err(ControlError::VersionMismatch { expected, got }) => {
            assert_eq!((expected, got), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[test]
fn dropped_peer_is_disconnected() {
    let (a, b) = Channel::pair().unwrap();
    // Queued packets are still delivered before the EOF.
    a.send(&WorkerMsg::Ready { pid: 1 }, &[]).unwrap();
    drop(a);
    assert_eq!(
        b.recv::<WorkerMsg>().unwrap().0,
        WorkerMsg::Ready { pid: 1 }
    );
    assert!(matches!(
        b.recv::<WorkerMsg>(),
        Err(ControlError::Disconnected)
    ));
    assert!(matches!(
        b.try_recv::<WorkerMsg>(),
        Err(ControlError::Disconnected)
    ));
    assert!(matches!(
        b.send(&BrokerMsg::CgroupJoined, &[]),
        Err(ControlError::Disconnected)
    ));
}

#[test]
fn empty_packet_reads_as_disconnected() {
    let (a, b) = Channel::pair().unwrap();
    raw_send(&a, &[], &[]);
    assert!(matches!(
        b.recv::<WorkerMsg>(),
        Err(ControlError::Disconnected)
    ));
}

#[test]
fn try_recv_is_none_when_empty_and_drains_in_order() {
    let (a, b) = Channel::pair().unwrap();
    assert!(b.try_recv::<WorkerMsg>().unwrap().is_none());

    let msgs = every_worker_msg();
    for msg in &msgs {
        a.send(msg, &[]).unwrap();
    }
    let mut got = Vec::new();
    while let Some((msg, fds)) = b.try_recv::<WorkerMsg>().unwrap() {
        assert!(fds.is_empty());
        got.push(msg);
    }
    assert_eq!(got, msgs);
    assert!(b.try_recv::<WorkerMsg>().unwrap().is_none());
}

#[test]
fn send_rejects_more_than_max_fds() {
    let (a, b) = Channel::pair().unwrap();
    let fds = open_fds(MAX_FDS + 1);
    match a.send(&BrokerMsg::CgroupJoined, &borrow_all(&fds)) {
        Err(ControlError::TooManyFds { got, max }) => {
            assert_eq!((got, max), (MAX_FDS + 1, MAX_FDS));
        }
        other => panic!("expected TooManyFds, got {other:?}"),
    }
    // Nothing was sent.
    assert!(b.try_recv::<BrokerMsg>().unwrap().is_none());

    // MAX_FDS itself is fine.
    a.send(&BrokerMsg::CgroupJoined, &borrow_all(&fds[..MAX_FDS]))
        .unwrap();
    assert_eq!(b.recv::<BrokerMsg>().unwrap().1.len(), MAX_FDS);
}

#[test]
fn send_rejects_oversized_message() {
    let (a, b) = Channel::pair().unwrap();
    let msg = WorkerMsg::Finished {
        stats: SessionStats::default(),
        reason: ExitReason::ProtocolError {
            reason: "x".repeat(MAX_MESSAGE),
        },
    };
    assert!(matches!(
        a.send(&msg, &[]),
        Err(ControlError::MessageTooLarge {
            max: MAX_MESSAGE,
            ..
        })
    ));
    assert!(b.try_recv::<WorkerMsg>().unwrap().is_none());
}

#[test]
fn oversized_packet_is_truncated() {
    let (a, b) = Channel::pair().unwrap();
    raw_send(&a, &vec![0u8; MAX_MESSAGE + 1], &[]);
    assert!(matches!(
        b.recv::<WorkerMsg>(),
        Err(ControlError::Truncated)
    ));
    // Exactly MAX_MESSAGE bytes is not truncated (but is not a message).
    raw_send(&a, &vec![0u8; MAX_MESSAGE], &[]);
    assert!(matches!(
        b.recv::<WorkerMsg>(),
        Err(ControlError::VersionMismatch { got: 0, .. })
    ));
}

#[test]
fn expect_one_fd_wants_exactly_one() {
    assert!(matches!(
        expect_one_fd(Vec::new()),
        Err(ControlError::WrongFdCount {
            expected: 1,
            got: 0
        })
    ));
    assert!(expect_one_fd(open_fds(1)).is_ok());
    assert!(matches!(
        expect_one_fd(open_fds(2)),
        Err(ControlError::WrongFdCount {
            expected: 1,
            got: 2
        })
    ));
}

#[test]
fn send_in_one_thread_receive_in_another() {
    const COUNT: u64 = 500;
    let (broker, worker) = Channel::pair().unwrap();

    let sender = thread::spawn(move || {
        let fds = open_fds(2);
        for i in 0..COUNT {
            let msg = WorkerMsg::Attached { client_id: i };
            let with: &[OwnedFd] = if i % 10 == 0 { &fds } else { &[] };
            worker.send(&msg, &borrow_all(with)).unwrap();
        }
        worker.send(&WorkerMsg::Stats(stats()), &[]).unwrap();
        // Dropping `worker` here ends the stream.
    });

    for i in 0..COUNT {
        let (msg, fds) = broker.recv::<WorkerMsg>().unwrap();
        assert_eq!(msg, WorkerMsg::Attached { client_id: i });
        assert_eq!(fds.len(), if i % 10 == 0 { 2 } else { 0 });
    }
    assert_eq!(
        broker.recv::<WorkerMsg>().unwrap().0,
        WorkerMsg::Stats(stats())
    );
    sender.join().unwrap();
    assert!(matches!(
        broker.recv::<WorkerMsg>(),
        Err(ControlError::Disconnected)
    ));
}

#[test]
fn from_fd_and_into_fd_round_trip() {
    let (a, b) = Channel::pair().unwrap();
    let b = Channel::from_fd(b.into_fd());
    a.send(&BrokerMsg::CgroupJoined, &[]).unwrap();
    assert_eq!(b.recv::<BrokerMsg>().unwrap().0, BrokerMsg::CgroupJoined);
}
