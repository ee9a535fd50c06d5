//! Dispatch logic over a real socketpair with the null backend: handshake,
//! reply framing, handle rules, limits, syncs, and every way a client is
//! disconnected.

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use vtest_protocol::{CommandId, Request, ResourceCreate, SyncWait, Transfer2, TransferBox};
use vtest_session::{NullBackend, Session, SessionError, SessionLimits};

struct Peer {
    stream: UnixStream,
    server: Option<JoinHandle<Result<(), SessionError>>>,
}

fn start(limits: SessionLimits) -> Peer {
    start_with(NullBackend::default(), limits)
}

fn start_with(backend: NullBackend, limits: SessionLimits) -> Peer {
    let (client, server) = UnixStream::pair().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let handle = std::thread::spawn(move || {
        let mut session = Session::new(backend, server, limits).map_err(SessionError::Io)?;
        session.run()
    });
    Peer {
        stream: client,
        server: Some(handle),
    }
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

impl Peer {
    fn send(&mut self, r: Request<'_>) {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        self.stream.write_all(&buf).unwrap();
    }

    fn read_words(&mut self, n: usize) -> Vec<u32> {
        let mut buf = vec![0u8; n * 4];
        self.stream.read_exact(&mut buf).unwrap();
        buf.chunks(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn recv_fd(&mut self) -> OwnedFd {
        let mut byte = [0u8; 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let r = rustix::net::recvmsg(&self.stream, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)
            .unwrap();
        assert_eq!(r.bytes, 1, "fd message carries one byte");
        let mut fds = Vec::new();
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(iter) = msg {
                fds.extend(iter);
            }
        }
        assert_eq!(fds.len(), 1, "exactly one fd");
        fds.pop().unwrap()
    }

    fn handshake(&mut self, version: u32) {
        self.send(Request::CreateRenderer { name: b"test\0" });
        self.send(Request::PingProtocolVersion);
        self.send(Request::ResourceBusyWait {
            handle: 0,
            flags: 0,
        });
        assert_eq!(self.read_words(5), [0, 10, 1, 7, 0]);
        self.send(Request::ProtocolVersion { version });
        let expected = if version == 1 { 0 } else { version.min(3) };
        assert_eq!(self.read_words(3), [1, 11, expected]);
    }

    /// Sends `r` and hangs up: a session that does not refuse `r` then ends
    /// with `Ok` at the EOF instead of waiting for more.
    fn send_last(&mut self, r: Request<'_>) {
        self.send(r);
        self.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }

    /// Closes the client side and returns how the session ended.
    fn finish(mut self) -> Result<(), SessionError> {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.server.take().unwrap().join().unwrap()
    }

    /// The session must end with an error on its own (the client keeps its socket).
    fn expect_error(mut self) -> SessionError {
        let result = self.server.take().unwrap().join().unwrap();
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
        result.expect_err("session should have failed")
    }
}

fn texture(handle: u32) -> ResourceCreate {
    ResourceCreate {
        handle,
        target: 2,
        format: 1,
        bind: 0x8a,
        width: 16,
        height: 16,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
    }
}

#[test]
fn handshake_and_caps_have_reference_framing() {
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.send(Request::GetCaps2);
    p.send(Request::GetCaps);
    let h = p.read_words(2);
    assert_eq!(h, [1377, 2]);
    let mut caps = vec![0; 1376];
    p.stream.read_exact(&mut caps).unwrap();
    assert_eq!(p.read_words(2), [309, 1]);
    let mut caps1 = vec![0; 308];
    p.stream.read_exact(&mut caps1).unwrap();
    assert!(caps1.iter().all(|b| *b == 1));
    p.finish().unwrap();
}

#[test]
fn version_one_maps_to_zero_and_99_to_3() {
    let mut p = start(SessionLimits::default());
    p.handshake(1);
    p.send(Request::ProtocolVersion { version: 99 });
    assert_eq!(p.read_words(3), [1, 11, 3]);
    p.finish().unwrap();
}

#[test]
fn first_command_must_be_create_renderer() {
    let mut p = start(SessionLimits::default());
    p.send(Request::PingProtocolVersion);
    assert!(matches!(p.expect_error(), SessionError::ContextMissing(_)));
}

#[test]
fn second_create_renderer_is_rejected() {
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.send(Request::CreateRenderer { name: b"again" });
    assert!(matches!(
        p.expect_error(),
        SessionError::UnexpectedCommand(_)
    ));
}

#[test]
fn unknown_command_id_disconnects() {
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.stream.write_all(&words(&[0, 99])).unwrap();
    assert!(matches!(p.expect_error(), SessionError::Protocol(_)));
}

#[test]
fn v2_resource_gets_a_sealed_memfd_and_duplicates_are_rejected() {
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.send(Request::ResourceCreate2 {
        args: texture(5),
        data_size: 1024,
    });
    let fd = p.recv_fd();
    let stat = rustix::fs::fstat(&fd).unwrap();
    assert_eq!(stat.st_size, 1024);
    let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
    assert!(seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW));
    assert!(
        rustix::fs::ftruncate(&fd, 0).is_err(),
        "client cannot shrink"
    );
    // data_size 0: nothing on the wire before v3.
    p.send(Request::ResourceCreate2 {
        args: texture(6),
        data_size: 0,
    });
    p.send(Request::PingProtocolVersion);
    assert_eq!(p.read_words(2), [0, 10]);
    p.send(Request::ResourceCreate2 {
        args: texture(5),
        data_size: 16,
    });
    assert!(matches!(p.expect_error(), SessionError::ResourceExists(5)));
}

#[test]
fn v3_ids_are_server_allocated() {
    let mut p = start(SessionLimits::default());
    p.handshake(3);
    p.send(Request::ResourceCreate2 {
        args: texture(0),
        data_size: 64,
    });
    let [len, cmd, id] = p.read_words(3)[..] else {
        panic!()
    };
    assert_eq!((len, cmd), (1, 12));
    assert!(id > 0);
    let _fd = p.recv_fd();
    p.send(Request::ResourceCreate(texture(0)));
    let second = p.read_words(3);
    assert_eq!(&second[..2], &[1, 2]);
    assert_ne!(second[2], id);
    p.send(Request::ResourceCreate(texture(7)));
    assert!(matches!(
        p.expect_error(),
        SessionError::InvalidArgument { .. }
    ));
}

#[test]
fn transfer2_round_trip_through_shared_memory() {
    use std::os::unix::fs::FileExt;
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.send(Request::ResourceCreate2 {
        args: texture(1),
        data_size: 256,
    });
    let file = std::fs::File::from(p.recv_fd());
    let pattern: Vec<u8> = (0..64u8).collect();
    file.write_all_at(&pattern, 0).unwrap();
    let t = Transfer2 {
        handle: 1,
        level: 0,
        bx: TransferBox {
            w: 64,
            h: 1,
            d: 1,
            ..TransferBox::default()
        },
        data_size: 64,
        offset: 0,
    };
    p.send(Request::TransferPut2(t));
    // Transfers have no reply: a ping orders them before we touch the memory.
    p.send(Request::PingProtocolVersion);
    assert_eq!(p.read_words(2), [0, 10]);
    file.write_all_at(&[0; 64], 0).unwrap();
    p.send(Request::TransferGet2(t));
    p.send(Request::ResourceBusyWait {
        handle: 1,
        flags: 1,
    });
    assert_eq!(p.read_words(3), [1, 7, 0]);
    let mut back = vec![0; 64];
    file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, pattern);
    // An offset past the shared memory closes the connection.
    p.send(Request::TransferGet2(Transfer2 { offset: 256, ..t }));
    assert!(matches!(
        p.expect_error(),
        SessionError::InvalidArgument { .. }
    ));
}

#[test]
fn unknown_handles_close_but_unknown_unref_is_ignored() {
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.send(Request::ResourceUnref { handle: 42 });
    p.send(Request::PingProtocolVersion);
    assert_eq!(p.read_words(2), [0, 10]);
    p.send(Request::TransferGet2(Transfer2 {
        handle: 42,
        ..Transfer2::default()
    }));
    assert!(matches!(
        p.expect_error(),
        SessionError::UnknownResource { handle: 42, .. }
    ));
}

#[test]
fn resource_limits_end_the_client() {
    let limits = SessionLimits {
        max_resources: 2,
        ..SessionLimits::default()
    };
    let mut p = start(limits);
    p.handshake(2);
    for h in 1..=2 {
        p.send(Request::ResourceCreate(texture(h)));
    }
    p.send(Request::ResourceCreate(texture(3)));
    match p.expect_error() {
        SessionError::LimitExceeded { limit, value, max } => {
            assert_eq!((limit, value, max), ("max_resources", 3, 2));
        }
        other => panic!("{other:?}"),
    }

    let limits = SessionLimits {
        max_resource_bytes: 4096,
        ..SessionLimits::default()
    };
    let mut p = start(limits);
    p.handshake(2);
    p.send(Request::ResourceCreate2 {
        args: texture(1),
        data_size: 4097,
    });
    assert!(matches!(
        p.expect_error(),
        SessionError::LimitExceeded {
            limit: "max_resource_bytes",
            ..
        }
    ));

    let limits = SessionLimits {
        max_shm_bytes: 8192,
        ..SessionLimits::default()
    };
    let mut p = start(limits);
    p.handshake(2);
    for h in 1..=2 {
        p.send(Request::ResourceCreate2 {
            args: texture(h),
            data_size: 4096,
        });
        let _ = p.recv_fd();
    }
    // Freed memory counts no more.
    p.send(Request::ResourceUnref { handle: 1 });
    p.send(Request::ResourceCreate2 {
        args: texture(3),
        data_size: 4096,
    });
    let _ = p.recv_fd();
    p.send(Request::ResourceCreate2 {
        args: texture(4),
        data_size: 1,
    });
    assert!(matches!(
        p.expect_error(),
        SessionError::LimitExceeded {
            limit: "max_shm_bytes",
            ..
        }
    ));
}

/// The renderer carries on after a failed allocation; the session ends the
/// client, naming what ran out, on the request that hit it.
#[test]
fn renderer_out_of_memory_ends_the_client() {
    let backend = NullBackend::with_memory_limit(3 * 4096);
    let mut p = start_with(backend, SessionLimits::default());
    p.handshake(2);
    for h in 1..=3 {
        p.send(Request::ResourceCreate2 {
            args: texture(h),
            data_size: 4096,
        });
        drop(p.recv_fd());
    }
    p.send(Request::ResourceCreate2 {
        args: texture(4),
        data_size: 4096,
    });
    match p.expect_error() {
        SessionError::WorkerExhausted {
            command, resource, ..
        } => {
            assert_eq!(command, vtest_protocol::CommandId::ResourceCreate2);
            assert_eq!(resource, vtest_session::WorkerResource::Memory);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_command_stream_disconnects() {
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.send(Request::SubmitCmd { commands: &[] });
    p.send(Request::ResourceBusyWait {
        handle: 0,
        flags: 1,
    });
    assert_eq!(p.read_words(3), [1, 7, 0]);
    let bad = words(&[vtest_session::NULL_BAD_COMMAND]);
    p.send(Request::SubmitCmd { commands: &bad });
    assert!(matches!(p.expect_error(), SessionError::Renderer { .. }));
}

#[test]
fn syncs_waits_and_submit_cmd2() {
    let mut p = start(SessionLimits::default());
    p.handshake(3);
    p.send(Request::SyncCreate { value: 5 });
    let [_, _, id] = p.read_words(3)[..] else {
        panic!()
    };
    p.send(Request::SyncRead { id });
    assert_eq!(p.read_words(4), [2, 21, 5, 0]);
    p.send(Request::SyncWrite { id, value: 3 });
    p.send(Request::SyncRead { id });
    assert_eq!(
        p.read_words(4),
        [2, 21, 3, 0],
        "a lower value is written too"
    );

    // A wait on value 10 with a long timeout: not signalled yet.
    let points = words(&[id, 10, 0]);
    p.send(Request::SyncWait(SyncWait::new(0, 60_000, &points)));
    assert_eq!(p.read_words(2), [0, 23]);
    let wait_fd = p.recv_fd();
    let mut value = [0u8; 8];
    assert!(rustix::io::read(&wait_fd, &mut value).is_err(), "not ready");

    // SUBMIT_CMD2 on ring 0 signals the sync when its fence retires.
    let payload = words(&[1, 1, 9, 0, 9, 1, 0, 0, 0, id, 10, 0]);
    let mut framed = words(&[payload.len() as u32 / 4, 24]);
    framed.extend_from_slice(&payload);
    let vtest_protocol::Decoded::Request(r, _) =
        vtest_protocol::decode(&framed, &Default::default()).unwrap()
    else {
        panic!("SUBMIT_CMD2 does not decode")
    };
    p.send(r);
    let mut pfd = [rustix::event::PollFd::new(
        &wait_fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut pfd, Some(&ts)).unwrap(), 1);
    assert_eq!(rustix::io::read(&wait_fd, &mut value).unwrap(), 8);
    assert_eq!(u64::from_ne_bytes(value), 1);
    p.send(Request::SyncRead { id });
    assert_eq!(p.read_words(4), [2, 21, 10, 0]);

    // Unknown sync ids close the connection.
    p.send(Request::SyncRead { id: 999 });
    assert!(matches!(
        p.expect_error(),
        SessionError::UnknownSync { id: 999, .. }
    ));
}

#[test]
fn wait_limit_ends_the_client() {
    let limits = SessionLimits {
        max_waits: 1,
        ..SessionLimits::default()
    };
    let mut p = start(limits);
    p.handshake(3);
    p.send(Request::SyncCreate { value: 0 });
    let [_, _, id] = p.read_words(3)[..] else {
        panic!()
    };
    let points = words(&[id, 1, 0]);
    p.send(Request::SyncWait(SyncWait::new(0, u32::MAX, &points)));
    assert_eq!(p.read_words(2), [0, 23]);
    let _fd = p.recv_fd();
    p.send(Request::SyncWait(SyncWait::new(0, u32::MAX, &points)));
    assert!(matches!(
        p.expect_error(),
        SessionError::LimitExceeded {
            limit: "max_waits",
            ..
        }
    ));
}

#[test]
fn clean_disconnect_is_ok() {
    let mut p = start(SessionLimits::default());
    p.handshake(2);
    p.finish().expect("EOF is a normal end");
}

#[test]
fn pipelined_and_fragmented_requests_are_framed() {
    let mut p = start(SessionLimits::default());
    let mut all = Vec::new();
    Request::CreateRenderer { name: b"frag\0" }.encode(&mut all);
    for _ in 0..100 {
        Request::PingProtocolVersion.encode(&mut all);
    }
    // One byte at a time for the first part, then the rest in one go.
    for b in &all[..40] {
        p.stream.write_all(&[*b]).unwrap();
    }
    p.stream.write_all(&all[40..]).unwrap();
    let replies = p.read_words(200);
    assert!(replies.chunks(2).all(|c| c == [0, 10]));
    p.finish().unwrap();
}

#[test]
fn renegotiation_is_allowed_until_the_first_object() {
    // Mesa 25 virpipe: v3, the caps, then v2 again on the same connection.
    let mut p = start(SessionLimits::default());
    p.handshake(3);
    p.send(Request::GetCaps2);
    p.send(Request::GetCaps);
    let [len, _] = p.read_words(2)[..] else {
        panic!()
    };
    let mut caps = vec![0; len as usize - 1];
    p.stream.read_exact(&mut caps).unwrap();
    let [len, _] = p.read_words(2)[..] else {
        panic!()
    };
    let mut caps = vec![0; len as usize - 1];
    p.stream.read_exact(&mut caps).unwrap();
    p.send(Request::PingProtocolVersion);
    p.send(Request::ResourceBusyWait {
        handle: 0,
        flags: 0,
    });
    assert_eq!(p.read_words(5), [0, 10, 1, 7, 0]);
    p.send(Request::ProtocolVersion { version: 2 });
    assert_eq!(p.read_words(3), [1, 11, 2]);
    // v2 rules now: the client's handle, no reply header, just the memfd.
    p.send(Request::ResourceCreate2 {
        args: texture(1),
        data_size: 64,
    });
    let _fd = p.recv_fd();
    // PING is still fine; PROTOCOL_VERSION is not, whatever it asks for.
    p.send(Request::PingProtocolVersion);
    assert_eq!(p.read_words(2), [0, 10]);
    p.send_last(Request::ProtocolVersion { version: 2 });
    let e = p.expect_error();
    assert!(
        matches!(
            e,
            SessionError::Renegotiation {
                requested: 2,
                version: 2,
                since: CommandId::ResourceCreate2,
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("PROTOCOL_VERSION 2 refused"), "{e}");
}

#[test]
fn renegotiation_after_a_sync_or_context_ends_the_client() {
    let cases: [(Request<'static>, usize, CommandId); 3] = [
        (Request::SyncCreate { value: 0 }, 3, CommandId::SyncCreate),
        (
            Request::ContextInit { capset: 2 },
            0,
            CommandId::ContextInit,
        ),
        // The context a command stream creates holds its fences.
        (
            Request::SubmitCmd { commands: &[] },
            0,
            CommandId::SubmitCmd,
        ),
    ];
    for (first, reply_words, command) in cases {
        let mut p = start(SessionLimits::default());
        p.handshake(3);
        p.send(first);
        p.read_words(reply_words);
        p.send_last(Request::ProtocolVersion { version: 2 });
        match p.expect_error() {
            SessionError::Renegotiation {
                requested: 2,
                version: 3,
                since,
            } => assert_eq!(since, command),
            other => panic!("{command:?}: {other:?}"),
        }
    }
}

#[test]
fn submit_cmd2_at_stride_6_signals_both_batches() {
    let mut p = start(SessionLimits::default());
    p.handshake(3);
    let mut ids = Vec::new();
    for _ in 0..2 {
        p.send(Request::SyncCreate { value: 0 });
        ids.push(p.read_words(3)[2]);
    }
    // Mesa 25.0's layout: 6-dword headers, the commands, then the syncs.
    #[rustfmt::skip]
    let payload = words(&[
        2,
        0, 13, 1, 14, 1, 0, // batch 0: 1 command dword at 13, sync at 14
        0, 14, 0, 17, 1, 0, // batch 1: no commands, sync at 17
        0,                  // VIRGL_CCMD_NOP
        ids[0], 7, 0,
        ids[1], 9, 1,
    ]);
    let mut framed = words(&[payload.len() as u32 / 4, 24]);
    framed.extend_from_slice(&payload);
    let vtest_protocol::Decoded::Request(r, _) =
        vtest_protocol::decode(&framed, &Default::default()).unwrap()
    else {
        panic!("SUBMIT_CMD2 does not decode")
    };
    p.send(r);
    p.send(Request::SyncRead { id: ids[0] });
    assert_eq!(p.read_words(4), [2, 21, 7, 0]);
    p.send(Request::SyncRead { id: ids[1] });
    assert_eq!(p.read_words(4), [2, 21, 9, 1]);
    p.finish().unwrap();
}

/// A Venus worker's render server that dies: the session ends with the
/// reason at once, not at the client's next request (which may never come:
/// Mesa's Venus waits on shared memory).
#[test]
fn a_backend_that_hangs_up_ends_the_session() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut peer = start_with(
        NullBackend::with_liveness_fd(OwnedFd::from(ours)),
        SessionLimits::default(),
    );
    peer.handshake(3);
    // Traffic on the liveness fd is the renderer's, not a hang-up.
    (&theirs).write_all(b"renderer traffic").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!peer.server.as_ref().unwrap().is_finished());
    drop(theirs);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !peer.server.as_ref().unwrap().is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        peer.server.as_ref().unwrap().is_finished(),
        "the session outlived its renderer"
    );
    let err = peer.expect_error();
    assert!(matches!(err, SessionError::BackendGone), "{err:?}");
}

/// Host blobs (Venus device memory, exported to the client) count against
/// the per-resource and total limits as guest memory does.
#[test]
fn host_blobs_count_against_the_resource_limits() {
    let limits = SessionLimits {
        max_resource_bytes: 1 << 20,
        max_shm_bytes: 3 << 19,
        ..SessionLimits::default()
    };
    let blob = |blob_type, size| {
        Request::ResourceCreateBlob(vtest_protocol::ResourceCreateBlob {
            blob_type,
            flags: 1,
            size,
            blob_id: u64::from(blob_type == 2),
        })
    };
    let mut p = start(limits);
    p.handshake(3);
    p.send(Request::ContextInit { capset: 2 });
    p.send(blob(2, (1 << 20) + 1));
    match p.expect_error() {
        SessionError::LimitExceeded { limit, .. } => assert_eq!(limit, "max_resource_bytes"),
        other => panic!("{other:?}"),
    }
    let mut p = start(limits);
    p.handshake(3);
    p.send(Request::ContextInit { capset: 2 });
    // 1 MiB of guest memory, then half a MiB and a byte of host memory.
    p.send(blob(1, 1 << 20));
    assert_eq!(p.read_words(3)[1], CommandId::ResourceCreateBlob as u32);
    p.send(blob(2, (1 << 19) + 1));
    match p.expect_error() {
        SessionError::LimitExceeded { limit, .. } => assert_eq!(limit, "max_shm_bytes"),
        other => panic!("{other:?}"),
    }
}
