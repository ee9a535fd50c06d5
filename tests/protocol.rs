//! End-to-end tests (protocol).
//!
//! Protocol-level tests against the server under test (vtestd, or the reference
//! `virgl_test_server` with `VTESTD_TEST_SERVER=reference`), driven by the
//! independent `vtest-client` crate. Every test starts its own server. Every read
//! has a timeout, so a broken server fails a test instead of hanging it.
//!
//! Tests that check where vtestd must be *stricter* than the reference (sealed
//! memfds, ...) return early when the server is the reference.

mod common;

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::procs::eventually;
use common::server::{Server, ServerKind};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vtest_client::wire::{self, cmd};
use vtest_client::{virgl, Batch, Box3, Client, Error, ResourceArgs, Transfer2Args, TransferArgs};

/// How long a test waits for the server to close a connection it must close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of every test client.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Helpers

fn start() -> Server {
    Server::start(ServerKind::under_test())
}

fn is_reference(server: &Server) -> bool {
    server.kind == ServerKind::Reference
}

fn skip_on_reference(server: &Server, what: &str) -> bool {
    if is_reference(server) {
        eprintln!("skipped on the reference server (it does not {what})");
        true
    } else {
        false
    }
}

/// Connects to the server. `Server::start` returns once the socket file exists,
/// which is after bind() but possibly before listen(): retry ECONNREFUSED briefly.
fn connect_stream(server: &Server) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(server.socket_path()) {
            Ok(s) => return s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect to {}: {e}", server.socket_path().display()),
        }
    }
}

fn client(server: &Server) -> Client {
    let c = Client::from_stream(connect_stream(server)).expect("client");
    c.set_timeout(Some(IO_TIMEOUT)).expect("timeouts");
    c
}

/// A client after CREATE_RENDERER + PING/probe + PROTOCOL_VERSION(`version`).
fn connect_v(server: &Server, version: u32) -> Client {
    let mut c = client(server);
    let got = c.handshake("vtest-e2e", version).expect("handshake");
    assert_eq!(got, version, "negotiated version");
    c
}

/// A deterministic, position-dependent byte pattern.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(seed as u32 * 7 + (i as u32 >> 8)) as u8
        })
        .collect()
}

fn shm_file(fd: &OwnedFd) -> File {
    File::from(fd.try_clone().expect("dup shm fd"))
}

fn shm_write(fd: &OwnedFd, offset: u64, data: &[u8]) {
    shm_file(fd).write_all_at(data, offset).expect("write shm");
}

fn shm_read(fd: &OwnedFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    shm_file(fd)
        .read_exact_at(&mut buf, offset)
        .expect("read shm");
    buf
}

fn fd_size(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).expect("fstat").st_size as u64
}

fn fd_target(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("readlink fd")
        .to_string_lossy()
        .into_owned()
}

fn assert_memfd(fd: &OwnedFd, size: u64) {
    let target = fd_target(fd);
    assert!(target.starts_with("/memfd:"), "not a memfd: {target}");
    assert_eq!(fd_size(fd), size, "memfd size");
}

/// Polls `fd` for POLLIN for up to `ms` milliseconds.
fn readable_within(fd: &OwnedFd, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(ms)).expect("poll");
    n == 1
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

fn read_eventfd(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    let n = nix::unistd::read(fd, &mut b).expect("read eventfd");
    assert_eq!(n, 8, "eventfd read size");
    u64::from_ne_bytes(b)
}

/// Asserts the server closes `c` (EOF or ECONNRESET) without sending anything first.
fn assert_closed(c: &mut Client, what: &str) {
    match c.expect_disconnect(CLOSE_TIMEOUT) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: server sent {n} unexpected bytes before closing"),
        Err(Error::Timeout) => panic!("{what}: server did not close the connection"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// TRANSFER_PUT2 + TRANSFER_GET2 round trip through the shm of a fresh 16×16
/// texture on a fresh v2 client: proves the server still serves new clients.
fn assert_server_serves(server: &Server) {
    let mut c = connect_v(server, 2);
    assert_v2_round_trip(&mut c, 1);
}

/// On a client at v2: a 16×16 texture with the client's `handle`, its pixels
/// through the shm to the host and back (TRANSFER_PUT2, TRANSFER_GET2).
fn assert_v2_round_trip(c: &mut Client, handle: u32) {
    let (w, h) = (16, 16);
    let size = w * h * 4;
    let args = ResourceArgs::texture_2d(w, h).with_handle(handle);
    let (id, fd) = c.resource_create2(&args, size).expect("create2");
    assert_eq!(id, handle);
    let fd = fd.expect("memfd");
    assert_memfd(&fd, u64::from(size));
    let t = Transfer2Args {
        handle,
        level: 0,
        bx: Box3::rect(w, h),
        data_size: size,
        offset: 0,
    };
    assert_shm_round_trip(c, &fd, &t, 0x5a);
}

/// Writes a pattern into the shm, TRANSFER_PUT2s it into the resource, zeroes
/// the shm, TRANSFER_GET2s it back and checks the pattern returned.
fn assert_shm_round_trip(c: &mut Client, fd: &OwnedFd, t: &Transfer2Args, seed: u8) {
    let size = t.data_size as usize;
    let data = pattern(size, seed);
    shm_write(fd, u64::from(t.offset), &data);
    c.transfer_put2(t).expect("put2");
    // PUT2 has no reply: a round trip proves the server has consumed the shm.
    c.ping().expect("ping after put2");
    shm_write(fd, u64::from(t.offset), &vec![0u8; size]);
    c.transfer_get2(t).expect("get2");
    assert!(!c.busy_wait(t.handle, true).expect("busy wait"));
    let back = shm_read(fd, u64::from(t.offset), size);
    let first_difference = back.iter().zip(&data).position(|(a, b)| a != b);
    assert!(
        first_difference.is_none(),
        "round trip through the shm of resource {}: bytes differ from offset {:?}",
        t.handle,
        first_difference
    );
}

/// Waits for the server's log to contain `text`.
fn assert_logged(server: &Server, text: &str) {
    assert!(
        eventually(10, || server.log_text().contains(text)),
        "not logged: {text:?}\nlog:\n{}",
        server.log_text()
    );
}

// ---------------------------------------------------------------------------
// Handshakes and caps

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn handshake_v0_without_protocol_version() {
    let server = start();
    let mut c = client(&server);
    c.create_renderer("vtest-e2e").unwrap();
    c.ping().unwrap();
    assert_eq!(c.version(), 0);
    // A v0 client works with the v0 command set: caps, create (no reply), busy wait.
    let (v2, v1) = c.get_caps2_and_caps().unwrap();
    assert!(!v2.is_empty());
    assert_eq!(v1.len(), 308);
    assert_eq!(
        c.resource_create(&ResourceArgs::texture_2d(4, 4).with_handle(3))
            .unwrap(),
        3
    );
    assert!(!c.busy_wait(3, true).unwrap());
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn handshake_v2() {
    let server = start();
    let mut c = client(&server);
    assert_eq!(c.handshake("vtest-e2e", 2).unwrap(), 2);
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn handshake_v3() {
    let server = start();
    let mut c = client(&server);
    assert_eq!(c.handshake("vtest-e2e", 3).unwrap(), 3);
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn handshake_v99_is_clamped() {
    let server = start();
    let mut c = client(&server);
    let v = c.handshake("vtest-e2e", 99).unwrap();
    if is_reference(&server) {
        assert_eq!(v, 3);
    } else {
        assert!((3..99).contains(&v), "asked 99, got {v}");
    }
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn handshake_v1_maps_to_0() {
    let server = start();
    let mut c = client(&server);
    assert_eq!(c.handshake("vtest-e2e", 1).unwrap(), 0);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn renegotiation_v3_then_v2_as_mesa_25_does() {
    // Mesa 25 virpipe asks for 3, reads the caps and, because the host's
    // host_feature_check_version is below 23, sends PING + the BUSY_WAIT probe
    // + PROTOCOL_VERSION(2) again on the same connection (docs/PROTOCOL.md §3.1).
    let server = start();
    let mut c = client(&server);
    c.create_renderer("vtest-e2e").unwrap();
    c.ping().unwrap();
    assert_eq!(c.protocol_version(3).unwrap(), 3);
    let (caps2, caps1) = c.get_caps2_and_caps().unwrap();
    assert_eq!(caps1.len(), 308);
    let check = wire::caps_dword(&caps2, wire::CAPS_V2_HOST_FEATURE_CHECK_VERSION)
        .expect("caps v2 carry host_feature_check_version");
    eprintln!("host_feature_check_version {check}");
    assert!(
        check > 0 && check < wire::HOST_FEATURE_CHECK_VERSION_V3_IDS,
        "host_feature_check_version {check}: Mesa 25 would not re-negotiate"
    );
    c.ping().unwrap();
    assert_eq!(c.protocol_version(2).unwrap(), 2);
    // v2 rules from here: client-chosen handles, memfds without a reply header.
    assert_v2_round_trip(&mut c, 1);
    assert_v2_round_trip(&mut c, 2);
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn strict_renegotiation_after_objects_closes() {
    let server = start();
    if skip_on_reference(&server, "fix the version once objects exist") {
        return;
    }
    // A v2 resource, then v3 asked for.
    let mut c = connect_v(&server, 2);
    c.resource_create2(&ResourceArgs::buffer(64).with_handle(1), 64)
        .unwrap();
    c.ping().unwrap();
    c.send_raw(&wire::protocol_version(3)).unwrap();
    assert_closed(&mut c, "PROTOCOL_VERSION(3) after a v2 resource");
    assert_logged(
        &server,
        "PROTOCOL_VERSION 3 refused: version 2 is fixed since ResourceCreate2",
    );
    // A v3 sync, then v2.
    let mut c = connect_v(&server, 3);
    c.sync_create(0).unwrap();
    c.send_raw(&wire::protocol_version(2)).unwrap();
    assert_closed(&mut c, "PROTOCOL_VERSION(2) after a v3 sync");
    assert_logged(
        &server,
        "PROTOCOL_VERSION 2 refused: version 3 is fixed since SyncCreate",
    );
    // CONTEXT_INIT, then the same version again: refused too.
    let mut c = connect_v(&server, 3);
    c.context_init(wire::CAPSET_VIRGL2).unwrap();
    c.send_raw(&wire::protocol_version(3)).unwrap();
    assert_closed(&mut c, "PROTOCOL_VERSION(3) after CONTEXT_INIT");
    assert_logged(
        &server,
        "PROTOCOL_VERSION 3 refused: version 3 is fixed since ContextInit",
    );
    assert_server_serves(&server);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn handshake_byte_by_byte() {
    // The server must not assume a command arrives in one read.
    let server = start();
    let mut c = client(&server);
    let mut bytes = wire::create_renderer("slow-client");
    bytes.extend(wire::ping_probe());
    for b in &bytes {
        c.send_raw(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        c.expect_reply(cmd::PING_PROTOCOL_VERSION, 0).unwrap(),
        Vec::<u32>::new()
    );
    assert_eq!(c.expect_reply(cmd::RESOURCE_BUSY_WAIT, 1).unwrap(), vec![0]);
    let v = wire::protocol_version(2);
    c.send_raw(&v[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&v[5..]).unwrap();
    assert_eq!(c.expect_reply(cmd::PROTOCOL_VERSION, 1).unwrap(), vec![2]);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn pipelined_burst_is_answered_in_order() {
    let server = start();
    let mut c = client(&server);
    let mut burst = wire::create_renderer("burst");
    burst.extend(wire::ping_probe());
    burst.extend(wire::protocol_version(3));
    burst.extend(wire::get_param(wire::PARAM_MAX_TIMELINE_COUNT));
    burst.extend(wire::sync_create(11));
    burst.extend(wire::get_caps2());
    burst.extend(wire::get_caps());
    burst.extend(wire::get_param(999));
    burst.extend(wire::busy_wait(0, wire::BUSY_WAIT_FLAG_WAIT));
    c.send_raw(&burst).unwrap();
    c.expect_reply(cmd::PING_PROTOCOL_VERSION, 0).unwrap();
    assert_eq!(c.expect_reply(cmd::RESOURCE_BUSY_WAIT, 1).unwrap(), vec![0]);
    assert_eq!(c.expect_reply(cmd::PROTOCOL_VERSION, 1).unwrap(), vec![3]);
    assert_eq!(c.expect_reply(cmd::GET_PARAM, 2).unwrap(), vec![1, 64]);
    let sync = c.expect_reply(cmd::SYNC_CREATE, 1).unwrap()[0];
    assert!(sync > 0);
    let (len, id) = c.read_header().unwrap();
    assert_eq!(id, wire::CAPS_REPLY_V2);
    c.read_raw(len as usize - 1).unwrap();
    assert_eq!(c.read_header().unwrap(), (309, wire::CAPS_REPLY_V1));
    c.read_raw(308).unwrap();
    assert_eq!(c.expect_reply(cmd::GET_PARAM, 2).unwrap(), vec![0, 0]);
    assert_eq!(c.expect_reply(cmd::RESOURCE_BUSY_WAIT, 1).unwrap(), vec![0]);
    c.set_version(3);
    assert_eq!(c.sync_read(sync).unwrap(), 11);
}

/// `sizeof(struct virgl_caps_v2)` of the system virglrenderer, as the
/// library reports it (`virgl_renderer_get_cap_set`).
fn caps_v2_size() -> usize {
    vtest_renderer::Renderer::capset_info(wire::CAPSET_VIRGL2).1 as usize
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn caps2_then_caps_pipelined() {
    let server = start();
    let mut c = connect_v(&server, 2);
    let (v2, v1) = c.get_caps2_and_caps().unwrap();
    // The same system virglrenderer behind both servers: its struct
    // virgl_caps_v2 (1376 bytes in 0.10.4, 1384 in 1.1) and _v1.
    assert_eq!(v2.len(), caps_v2_size(), "caps v2 size");
    assert_eq!(v1.len(), 308, "caps v1 size (Mesa reads exactly sizeof v1)");
    // Both start with max_version.
    assert_eq!(wire::dwords_from_bytes(&v1[..4])[0], 1);
    assert_eq!(wire::dwords_from_bytes(&v2[..4])[0], 2);
    // Separately, they are the same.
    assert_eq!(c.get_caps2().unwrap(), v2);
    assert_eq!(c.get_caps().unwrap(), v1);
    c.ping().unwrap();
}

// ---------------------------------------------------------------------------
// Resources with shared memory

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn resource_create2_v2_returns_memfd() {
    let server = start();
    let mut c = connect_v(&server, 2);
    let args = ResourceArgs::texture_2d(64, 64).with_handle(5);
    let (id, fd) = c.resource_create2(&args, 16384).unwrap();
    assert_eq!(id, 5);
    let fd = fd.expect("an fd for data_size > 0");
    assert_memfd(&fd, 16384);
    // Read-write: what we write we read back.
    shm_write(&fd, 100, b"hello");
    assert_eq!(shm_read(&fd, 100, 5), b"hello");
    // data_size 0 (Mesa's multisample case): nothing at all on the wire at v2.
    let (id, fd) = c
        .resource_create2(&ResourceArgs::texture_2d(8, 8).with_handle(6), 0)
        .unwrap();
    assert_eq!(id, 6);
    assert!(fd.is_none());
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn resource_create2_v3_returns_id_then_fd() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let args = ResourceArgs::texture_2d(32, 32);
    c.send_raw(&wire::resource_create2(&args, 4096)).unwrap();
    let reply = c.expect_reply(cmd::RESOURCE_CREATE2, 1).unwrap();
    let id = reply[0];
    assert!(id > 0, "server-allocated id");
    assert_memfd(&c.recv_fd().unwrap(), 4096);
    // A second resource gets another id.
    let (id2, fd2) = c.resource_create2(&args, 8192).unwrap();
    assert!(id2 > 0 && id2 != id, "ids {id} and {id2}");
    assert_memfd(&fd2.unwrap(), 8192);
    // data_size 0 at v3: the header only, no fd byte (the PING reply follows directly).
    let (id3, fd3) = c.resource_create2(&args, 0).unwrap();
    assert!(id3 > 0 && id3 != id && id3 != id2);
    assert!(fd3.is_none());
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn resource_create_v3_returns_id() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let a = c.resource_create(&ResourceArgs::texture_2d(8, 8)).unwrap();
    let b = c.resource_create(&ResourceArgs::buffer(64)).unwrap();
    assert!(a > 0 && b > 0 && a != b, "ids {a} {b}");
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn transfer2_round_trip_texture() {
    let server = start();
    let mut c = connect_v(&server, 2);
    let (w, h) = (32u32, 16u32);
    let size = w * h * 4;
    let (_, fd) = c
        .resource_create2(&ResourceArgs::texture_2d(w, h).with_handle(1), size)
        .unwrap();
    let fd = fd.unwrap();
    let data = pattern(size as usize, 1);
    shm_write(&fd, 0, &data);
    let t = Transfer2Args {
        handle: 1,
        level: 0,
        bx: Box3::rect(w, h),
        data_size: size,
        offset: 0,
    };
    c.transfer_put2(&t).unwrap();
    c.ping().unwrap(); // PUT2 has no reply; make sure the server has consumed the shm
    shm_write(&fd, 0, &vec![0u8; size as usize]);
    assert_eq!(shm_read(&fd, 0, 16), vec![0u8; 16]);
    c.transfer_get2(&t).unwrap();
    assert!(
        !c.busy_wait(1, true).unwrap(),
        "BUSY_WAIT(WAIT) returns busy = 0"
    );
    assert_eq!(shm_read(&fd, 0, size as usize), data);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn transfer2_round_trip_buffer_subrange_v3() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let size = 256u32;
    let (id, fd) = c
        .resource_create2(&ResourceArgs::buffer(size), size)
        .unwrap();
    let fd = fd.unwrap();
    let data = pattern(size as usize, 2);
    shm_write(&fd, 0, &data);
    let whole = Transfer2Args {
        handle: id,
        level: 0,
        bx: Box3::rect(size, 1),
        data_size: size,
        offset: 0,
    };
    c.transfer_put2(&whole).unwrap();
    c.ping().unwrap();
    shm_write(&fd, 0, &vec![0u8; size as usize]);
    // Read back bytes 40..72 of the buffer into the shm at the same offset.
    let part = Transfer2Args {
        bx: Box3 {
            x: 40,
            width: 32,
            ..Box3::rect(32, 1)
        },
        data_size: 32,
        offset: 40,
        ..whole
    };
    c.transfer_get2(&part).unwrap();
    assert!(!c.busy_wait(id, true).unwrap());
    let back = shm_read(&fd, 0, size as usize);
    assert_eq!(&back[40..72], &data[40..72], "the transferred range");
    assert!(
        back[..40].iter().all(|&b| b == 0),
        "before the range untouched"
    );
    assert!(
        back[72..].iter().all(|&b| b == 0),
        "after the range untouched"
    );
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn unknown_unref_is_ignored() {
    let server = start();
    let mut c = connect_v(&server, 2);
    c.resource_unref(12345).unwrap();
    c.ping().unwrap();
    // A handle may be reused after unref at v2 (client-chosen handles).
    let args = ResourceArgs::texture_2d(4, 4).with_handle(2);
    c.resource_create2(&args, 64).unwrap();
    c.resource_unref(2).unwrap();
    c.resource_unref(2).unwrap();
    let (_, fd) = c.resource_create2(&args, 64).unwrap();
    assert_memfd(&fd.unwrap(), 64);
    c.ping().unwrap();
}

// ---------------------------------------------------------------------------
// Version 0 data path (pixels through the socket)

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn transfer_v0_inline_round_trip() {
    let server = start();
    let mut c = client(&server);
    c.create_renderer("vtest-e2e").unwrap();
    c.ping().unwrap();
    let (w, h) = (8u32, 8u32);
    let h1 = c
        .resource_create(&ResourceArgs::texture_2d(w, h).with_handle(1))
        .unwrap();
    assert_eq!(h1, 1);
    let data = pattern((w * h * 4) as usize, 3);
    let t = TransferArgs {
        handle: 1,
        level: 0,
        stride: w * 4,
        layer_stride: 0,
        bx: Box3::rect(w, h),
        data_size: w * h * 4,
    };
    c.transfer_put(&t, &data).unwrap();
    assert_eq!(c.transfer_get(&t).unwrap(), data);
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn transfer_v0_odd_size_keeps_framing() {
    let server = start();
    let mut c = client(&server);
    c.create_renderer("vtest-e2e").unwrap();
    c.ping().unwrap();
    c.resource_create(&ResourceArgs::buffer(16).with_handle(2))
        .unwrap();
    let at = |x: u32, width: u32| TransferArgs {
        handle: 2,
        level: 0,
        stride: 0,
        layer_stride: 0,
        bx: Box3 {
            x,
            width,
            ..Box3::rect(width, 1)
        },
        data_size: width,
    };
    // 3 bytes with LEN = 11 + 1: exactly 3 data bytes follow, then the next command.
    c.transfer_put(&at(0, 3), &[0xa1, 0xa2, 0xa3]).unwrap();
    c.ping().unwrap();
    c.transfer_put(&at(3, 5), &[0xb1, 0xb2, 0xb3, 0xb4, 0xb5])
        .unwrap();
    c.ping().unwrap();
    assert_eq!(c.transfer_get(&at(0, 3)).unwrap(), [0xa1, 0xa2, 0xa3]);
    assert_eq!(
        c.transfer_get(&at(0, 8)).unwrap(),
        [0xa1, 0xa2, 0xa3, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5]
    );
    c.ping().unwrap();
}

// ---------------------------------------------------------------------------
// Command streams and busy-wait

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn submit_cmd_then_busy_wait() {
    let server = start();
    let mut c = connect_v(&server, 2);
    c.submit_cmd(&[]).unwrap();
    assert!(!c.busy_wait(0, true).unwrap());
    // VIRGL_CCMD_NOP packets (vrend_decode_dummy), with and without payload.
    let mut stream = virgl::nop(&[]);
    stream.extend(virgl::nop(&[1, 2, 3]));
    stream.extend(virgl::nop(&[]));
    c.submit_cmd(&stream).unwrap();
    c.submit_cmd(&virgl::nop(&[0xdead_beef; 100])).unwrap();
    assert!(!c.busy_wait(0, true).unwrap());
    // The fence-buffer pattern of Mesa virpipe (docs/PROTOCOL.md §4).
    let (_, fd) = c
        .resource_create2(&ResourceArgs::fence_buffer().with_handle(40), 8)
        .unwrap();
    assert_memfd(&fd.unwrap(), 8);
    c.submit_cmd(&virgl::nop(&[])).unwrap();
    assert!(!c.busy_wait(40, true).unwrap());
    // Without WAIT: eventually idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.busy_wait(40, false).unwrap() {
        assert!(Instant::now() < deadline, "never idle");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.resource_unref(40).unwrap();
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn submit_cmd_large_stream() {
    let server = start();
    let mut c = connect_v(&server, 2);
    // 64 Ki dwords: many NOP packets with payload.
    let mut stream = Vec::new();
    while stream.len() < 65536 {
        stream.extend(virgl::nop(&[7; 255]));
    }
    c.submit_cmd(&stream).unwrap();
    assert!(!c.busy_wait(0, true).unwrap());
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn submit_cmd_inline_write_reaches_resource() {
    // A non-empty, effectful command stream: VIRGL_CCMD_RESOURCE_INLINE_WRITE
    // into a GL buffer, read back with TRANSFER_GET2.
    let server = start();
    let mut c = connect_v(&server, 2);
    let size = 64u32;
    let (_, fd) = c
        .resource_create2(&ResourceArgs::buffer(size).with_handle(3), size)
        .unwrap();
    let fd = fd.unwrap();
    let data = pattern(size as usize, 4);
    c.submit_cmd(&virgl::resource_inline_write(
        3,
        0,
        0,
        0,
        Box3::rect(size, 1),
        &data,
    ))
    .unwrap();
    assert!(!c.busy_wait(3, true).unwrap());
    c.transfer_get2(&Transfer2Args {
        handle: 3,
        level: 0,
        bx: Box3::rect(size, 1),
        data_size: size,
        offset: 0,
    })
    .unwrap();
    assert!(!c.busy_wait(3, true).unwrap());
    assert_eq!(shm_read(&fd, 0, size as usize), data);
}

// ---------------------------------------------------------------------------
// Version 3

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_get_param() {
    let server = start();
    let mut c = connect_v(&server, 3);
    assert_eq!(
        c.get_param(wire::PARAM_MAX_TIMELINE_COUNT).unwrap(),
        (true, 64)
    );
    assert_eq!(c.get_param(999).unwrap(), (false, 0));
    assert_eq!(c.get_param(0).unwrap(), (false, 0));
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_get_capset() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let v2 = c
        .get_capset(wire::CAPSET_VIRGL2, 0)
        .unwrap()
        .expect("VIRGL2 v0 valid");
    assert_eq!(v2.len(), caps_v2_size());
    assert_eq!(
        c.get_capset(wire::CAPSET_VIRGL2, 2)
            .unwrap()
            .map(|v| v.len()),
        Some(caps_v2_size())
    );
    assert_eq!(
        c.get_capset(wire::CAPSET_VIRGL2, 3).unwrap(),
        None,
        "VIRGL2 v3"
    );
    assert_eq!(
        c.get_capset(wire::CAPSET_VIRGL, 0)
            .unwrap()
            .map(|v| v.len()),
        Some(308)
    );
    assert_eq!(
        c.get_capset(wire::CAPSET_VIRGL, 2).unwrap(),
        None,
        "VIRGL v2"
    );
    assert_eq!(c.get_capset(3, 0).unwrap(), None, "gfxstream");
    assert_eq!(c.get_capset(5, 0).unwrap(), None, "cross-domain");
    assert_eq!(c.get_capset(77, 0).unwrap(), None, "unknown");
    // GET_CAPS2 fills set 2 at version 1, GET_CAPS set 1 at version 1.
    let caps2 = c.get_caps2().unwrap();
    let caps1 = c.get_caps().unwrap();
    assert_eq!(c.get_capset(wire::CAPSET_VIRGL2, 1).unwrap(), Some(caps2));
    assert_eq!(c.get_capset(wire::CAPSET_VIRGL, 1).unwrap(), Some(caps1));
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_context_init_and_guest_blob() {
    let server = start();
    let mut c = connect_v(&server, 3);
    assert!(c.get_capset(wire::CAPSET_VIRGL2, 0).unwrap().is_some());
    c.context_init(wire::CAPSET_VIRGL2).unwrap();
    // The same capset again is fine.
    c.context_init(wire::CAPSET_VIRGL2).unwrap();
    let (id, fd) = c
        .resource_create_blob(wire::BLOB_MEM_GUEST, wire::BLOB_FLAG_MAPPABLE, 4096, 0)
        .unwrap();
    assert!(id > 0);
    assert_memfd(&fd, 4096);
    shm_write(&fd, 4000, b"blob");
    assert_eq!(shm_read(&fd, 4000, 4), b"blob");
    let (id2, fd2) = c
        .resource_create_blob(wire::BLOB_MEM_GUEST, wire::BLOB_FLAG_MAPPABLE, 8192, 0)
        .unwrap();
    assert!(id2 > 0 && id2 != id);
    assert_memfd(&fd2, 8192);
    c.resource_unref(id).unwrap();
    c.resource_unref(id2).unwrap();
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_blob_as_virpipe_makes_it() {
    // Mesa 25 virpipe makes persistent or coherent buffers as blobs when the
    // caps advertise buffer storage: VIRGL_CCMD_PIPE_RESOURCE_CREATE with a
    // blob id, then RESOURCE_CREATE_BLOB(HOST3D, MAPPABLE) of a page-aligned
    // size, and it maps the fd it gets.
    let server = start();
    let mut c = connect_v(&server, 3);
    let (caps2, _) = c.get_caps2_and_caps().unwrap();
    let bits = wire::caps_dword(&caps2, wire::CAPS_V2_CAPABILITY_BITS).unwrap();
    let buffer_storage = bits & wire::VIRGL_CAP_ARB_BUFFER_STORAGE != 0;
    let size = 4096u32;
    let flags = virgl::VIRGL_RESOURCE_FLAG_MAP_PERSISTENT | virgl::VIRGL_RESOURCE_FLAG_MAP_COHERENT;
    c.submit_cmd(&virgl::pipe_resource_create(
        &ResourceArgs::buffer(size),
        flags,
        1,
    ))
    .unwrap();
    if !buffer_storage {
        // Without host buffer storage (both servers hide it: USE_EXTERNAL_BLOB)
        // virpipe never gets here; llvmpipe without GBM has no fd to export.
        // The reference then neither answers nor closes (the export's positive
        // EINVAL is not an error to it), so give it little time.
        c.set_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    c.send_raw(&wire::resource_create_blob(
        wire::BLOB_MEM_HOST3D,
        wire::BLOB_FLAG_MAPPABLE,
        u64::from(size),
        1,
    ))
    .unwrap();
    let got = c
        .expect_reply(cmd::RESOURCE_CREATE_BLOB, 1)
        .and_then(|id| Ok((id[0], c.recv_fd()?)));
    match got {
        Ok((id, fd)) => {
            // Host memory exported as a dma-buf or shm fd (a real GPU).
            assert!(id > 0);
            let end = nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekEnd).expect("lseek");
            assert!(end >= i64::from(size), "blob fd of {end} bytes");
            eprintln!("HOST3D blob {id}: {} ({end} bytes)", fd_target(&fd));
            c.set_timeout(Some(IO_TIMEOUT)).unwrap();
            c.resource_unref(id).unwrap();
            c.ping().unwrap();
        }
        Err(e) => {
            eprintln!("HOST3D blob not served ({e}); caps bits {bits:#x}");
            assert!(
                !buffer_storage,
                "the caps advertise buffer storage, but the HOST3D blob was refused: {e}"
            );
            match e {
                Error::Disconnected => {}
                Error::Timeout if is_reference(&server) => {}
                other => panic!("HOST3D blob without an fd to export: {other}"),
            }
            drop(c);
            assert_server_serves(&server);
        }
    }
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_host3d_guest_blob_has_shm_and_host_storage() {
    // A host buffer (picked up by its blob id) with guest memory: the client
    // gets a memfd, the host keeps the buffer. virglrenderer 0.10.4 does not
    // back the host buffer with that memory, so data reaches the host through
    // the v0 transfers, not TRANSFER_PUT2/GET2.
    let server = start();
    let mut c = connect_v(&server, 3);
    let size = 4096u32;
    c.submit_cmd(&virgl::pipe_resource_create(
        &ResourceArgs::buffer(size),
        0,
        2,
    ))
    .unwrap();
    let (id, fd) = c
        .resource_create_blob(
            wire::BLOB_MEM_HOST3D_GUEST,
            wire::BLOB_FLAG_MAPPABLE,
            u64::from(size),
            2,
        )
        .unwrap();
    assert!(id > 0);
    assert_memfd(&fd, u64::from(size));
    let in_shm = pattern(size as usize, 0x3c);
    shm_write(&fd, 0, &in_shm);
    assert_eq!(shm_read(&fd, 0, size as usize), in_shm);
    // Host storage: inline data in and out.
    let at = |x: u32, width: u32| TransferArgs {
        handle: id,
        bx: Box3 {
            x,
            ..Box3::rect(width, 1)
        },
        data_size: width,
        ..Default::default()
    };
    let on_host = pattern(512, 0x3d);
    c.transfer_put(&at(1024, 512), &on_host).unwrap();
    assert_eq!(c.transfer_get(&at(1024, 512)).unwrap(), on_host);
    // TRANSFER_GET2 is refused by the renderer (logged, ignored): the
    // connection stays, and the shm keeps what the client wrote.
    c.transfer_get2(&Transfer2Args {
        handle: id,
        level: 0,
        bx: Box3::rect(size, 1),
        data_size: size,
        offset: 0,
    })
    .unwrap();
    assert!(!c.busy_wait(id, true).unwrap());
    assert_eq!(shm_read(&fd, 0, size as usize), in_shm);
    c.resource_unref(id).unwrap();
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_sync_create_read_write() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let s = c.sync_create(5).unwrap();
    assert!(s > 0);
    assert_eq!(c.sync_read(s).unwrap(), 5);
    c.sync_write(s, 7).unwrap();
    assert_eq!(c.sync_read(s).unwrap(), 7);
    // Full 64-bit values.
    let big = (1u64 << 40) + 3;
    c.sync_write(s, big).unwrap();
    assert_eq!(c.sync_read(s).unwrap(), big);
    let t = c.sync_create(u64::MAX - 1).unwrap();
    assert!(t != s);
    assert_eq!(c.sync_read(t).unwrap(), u64::MAX - 1);
    assert_eq!(c.sync_read(s).unwrap(), big);
    c.sync_unref(t).unwrap();
    c.sync_unref(t).unwrap(); // double unref is harmless
    c.sync_unref(4242).unwrap(); // unknown id ignored
    c.ping().unwrap();
    assert_eq!(c.sync_read(s).unwrap(), big);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_sync_wait_reached_is_readable() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let s = c.sync_create(5).unwrap();
    let efd = c.sync_wait(0, 1000, &[(s, 5)]).unwrap();
    assert!(
        readable_within(&efd, 2000),
        "already-reached wait must be readable"
    );
    assert!(read_eventfd(&efd) > 0);
    // Lower target: also reached.
    let efd = c.sync_wait(0, 0, &[(s, 1)]).unwrap();
    assert!(readable_within(&efd, 2000));
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_sync_wait_pending_then_signalled() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let s = c.sync_create(1).unwrap();
    let efd = c.sync_wait(0, 60_000, &[(s, 6)]).unwrap();
    assert!(!readable_within(&efd, 200), "wait for 6 while at 1");
    c.sync_write(s, 4).unwrap();
    c.ping().unwrap();
    assert!(!readable_within(&efd, 200), "wait for 6 while at 4");
    c.sync_write(s, 6).unwrap();
    assert!(readable_within(&efd, 5000), "signalled at 6");
    assert!(read_eventfd(&efd) > 0);
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_sync_wait_all_and_any() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let a = c.sync_create(10).unwrap();
    let b = c.sync_create(0).unwrap();
    let all = c.sync_wait(0, 60_000, &[(a, 10), (b, 2)]).unwrap();
    let any = c
        .sync_wait(wire::SYNC_WAIT_FLAG_ANY, 60_000, &[(a, 10), (b, 2)])
        .unwrap();
    assert!(readable_within(&any, 2000), "ANY with one reached");
    assert!(!readable_within(&all, 200), "ALL with one pending");
    c.sync_write(b, 2).unwrap();
    assert!(readable_within(&all, 5000), "ALL once both reached");
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_sync_wait_timeout_zero_is_a_poll() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let s = c.sync_create(0).unwrap();
    let efd = c.sync_wait(0, 0, &[(s, 1)]).unwrap();
    assert!(
        !readable_within(&efd, 300),
        "unsatisfied poll must not be readable"
    );
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_submit_cmd2_signals_sync() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let s = c.sync_create(0).unwrap();
    c.submit_cmd2(&[Batch {
        flags: 0,
        cmd: vec![],
        syncs: vec![(s, 9)],
        ring_idx: 0,
    }])
    .unwrap();
    assert_eq!(c.sync_read(s).unwrap(), 9);
    // With a (NOP) command stream too.
    c.submit_cmd2(&[Batch {
        flags: 0,
        cmd: virgl::nop(&[1, 2]),
        syncs: vec![(s, 10)],
        ring_idx: 0,
    }])
    .unwrap();
    assert_eq!(c.sync_read(s).unwrap(), 10);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_submit_cmd2_ring_fence_signals_sync() {
    let server = start();
    let mut c = connect_v(&server, 3);
    c.context_init(wire::CAPSET_VIRGL2).unwrap();
    let s = c.sync_create(0).unwrap();
    let efd = c.sync_wait(0, 60_000, &[(s, 3)]).unwrap();
    c.submit_cmd2(&[Batch {
        flags: wire::SUBMIT_CMD2_FLAG_RING_IDX,
        cmd: virgl::nop(&[]),
        syncs: vec![(s, 3)],
        ring_idx: 0,
    }])
    .unwrap();
    assert!(
        readable_within(&efd, 10_000),
        "ring-0 fence signalled the sync"
    );
    assert_eq!(c.sync_read(s).unwrap(), 3);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_submit_cmd2_two_batches_stride_8() {
    let server = start();
    let mut c = connect_v(&server, 3);
    let a = c.sync_create(0).unwrap();
    let b = c.sync_create(0).unwrap();
    c.submit_cmd2(&[
        Batch {
            flags: 0,
            cmd: virgl::nop(&[5]),
            syncs: vec![(a, 21)],
            ring_idx: 0,
        },
        Batch {
            flags: 0,
            cmd: vec![],
            syncs: vec![(b, 1 << 33)],
            ring_idx: 0,
        },
    ])
    .unwrap();
    assert_eq!(c.sync_read(a).unwrap(), 21);
    assert_eq!(c.sync_read(b).unwrap(), 1 << 33);
}

/// Two batches at `stride`: the first signals sync a at once, the second
/// signals sync b through a ring-0 fence; both must be signalled.
fn submit_cmd2_two_batches(c: &mut Client, stride: u32) {
    c.context_init(wire::CAPSET_VIRGL2).unwrap();
    let a = c.sync_create(0).unwrap();
    let b = c.sync_create(0).unwrap();
    let both = c
        .sync_wait(0, 60_000, &[(a, 21), (b, (1 << 33) + 5)])
        .unwrap();
    c.submit_cmd2_with_stride(
        &[
            Batch {
                flags: 0,
                cmd: virgl::nop(&[5, 6]),
                syncs: vec![(a, 21)],
                ring_idx: 0,
            },
            Batch {
                flags: wire::SUBMIT_CMD2_FLAG_RING_IDX,
                cmd: virgl::nop(&[]),
                syncs: vec![(b, (1 << 33) + 5)],
                ring_idx: 0,
            },
        ],
        stride,
    )
    .unwrap();
    assert!(
        readable_within(&both, 10_000),
        "stride {stride}: both batches' syncs signalled"
    );
    assert_eq!(c.sync_read(a).unwrap(), 21);
    assert_eq!(c.sync_read(b).unwrap(), (1 << 33) + 5);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_submit_cmd2_two_batches_with_ring_stride_8() {
    let server = start();
    let mut c = connect_v(&server, 3);
    submit_cmd2_two_batches(&mut c, wire::SUBMIT_CMD2_BATCH_DWORDS);
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn lenient_submit_cmd2_two_batches_stride_6() {
    // Mesa 25.0's venus and vpipe write 6-dword batch headers; vtestd infers
    // the stride from the first batch's cmd_offset (docs/PROTOCOL.md §2.24).
    let server = start();
    if skip_on_reference(&server, "read 6-dword batch headers (0.10.4 reads 8)") {
        return;
    }
    let mut c = connect_v(&server, 3);
    submit_cmd2_two_batches(&mut c, wire::SUBMIT_CMD2_BATCH_DWORDS_6);
    // Stride 6 from the first batch, but the second batch's commands lie
    // inside the headers: refused, not guessed.
    let s = c.sync_create(0).unwrap();
    let mut payload = wire::submit_cmd2_payload_with_stride(
        &[
            Batch {
                flags: 0,
                cmd: virgl::nop(&[]),
                syncs: vec![(s, 1)],
                ring_idx: 0,
            },
            Batch {
                flags: 0,
                cmd: virgl::nop(&[]),
                syncs: vec![],
                ring_idx: 0,
            },
        ],
        wire::SUBMIT_CMD2_BATCH_DWORDS_6,
    );
    assert_eq!(
        payload[2], 13,
        "first batch's commands follow 6-dword headers"
    );
    payload[7 + 1] = 3;
    c.send_raw(&wire::message(cmd::SUBMIT_CMD2, &payload))
        .unwrap();
    assert_closed(&mut c, "SUBMIT_CMD2 batch 1 inside the 6-dword headers");
    assert_logged(
        &server,
        "batch 1: command stream overlaps the batch headers",
    );
    assert_server_serves(&server);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn v3_submit_cmd2_zero_batches_is_a_noop() {
    let server = start();
    let mut c = connect_v(&server, 3);
    c.submit_cmd2(&[]).unwrap();
    c.ping().unwrap();
}

// ---------------------------------------------------------------------------
// Malformed input: the connection is closed, the server keeps serving

/// One malformed request: how to get a client to the point where it sends it,
/// and the request itself. The server must close that connection without
/// sending anything and go on serving others.
struct Malformed {
    what: &'static str,
    /// Where vtestd is stricter than the reference: why the reference is not
    /// held to it (the case is skipped there).
    strict: Option<&'static str>,
    send: fn(&Server) -> Client,
}

/// Sends `msg` as is on a fresh v`version` client.
fn raw_at(server: &Server, version: u32, msg: &[u8]) -> Client {
    let mut c = connect_v(server, version);
    c.send_raw(msg).unwrap();
    c
}

/// A client after CREATE_RENDERER and one round trip, at version 0.
fn renderer_only(server: &Server, name: &str) -> Client {
    let mut c = client(server);
    c.create_renderer(name).unwrap();
    c.ping().unwrap();
    c
}

const MALFORMED: &[Malformed] = &[
    Malformed {
        what: "PING before CREATE_RENDERER",
        strict: None,
        send: |s| {
            let mut c = client(s);
            c.send_raw(&wire::ping_probe()).unwrap();
            c
        },
    },
    Malformed {
        what: "unknown command id 99",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            c.send_message(0, 99, &[]).unwrap();
            c
        },
    },
    Malformed {
        what: "unknown command id 0",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            c.send_message(0, 0, &[]).unwrap();
            c
        },
    },
    Malformed {
        what: "unknown command id 25 (a version 4 command)",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            c.send_message(0, 25, &[]).unwrap();
            c
        },
    },
    Malformed {
        what: "unknown command id 2^32-1",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            c.send_message(0, 0xffff_ffff, &[]).unwrap();
            c
        },
    },
    Malformed {
        what: "second CREATE_RENDERER",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            c.create_renderer("again").unwrap();
            c
        },
    },
    Malformed {
        // Only the header: LEN > 1 MiB is refused without reading the name.
        what: "CREATE_RENDERER LEN 1 MiB + 1",
        strict: None,
        send: |s| {
            let mut c = client(s);
            c.send_message(wire::CREATE_RENDERER_MAX_LEN + 1, cmd::CREATE_RENDERER, &[])
                .unwrap();
            c
        },
    },
    Malformed {
        what: "CREATE_RENDERER LEN 4 GiB",
        strict: None,
        send: |s| {
            let mut c = client(s);
            c.send_message(0xffff_ffff, cmd::CREATE_RENDERER, &[])
                .unwrap();
            c
        },
    },
    Malformed {
        what: "SUBMIT_CMD 0xdeadbeef at v0",
        strict: None,
        send: |s| {
            let mut c = renderer_only(s, "garbage");
            c.submit_cmd(&[0xdead_beef]).unwrap();
            c
        },
    },
    Malformed {
        what: "SUBMIT_CMD 0xdeadbeef at v2",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            c.submit_cmd(&[0xdead_beef]).unwrap();
            c
        },
    },
    Malformed {
        what: "RESOURCE_CREATE with handle 7 at v3",
        strict: None,
        send: |s| {
            raw_at(
                s,
                3,
                &wire::resource_create(&ResourceArgs::texture_2d(8, 8).with_handle(7)),
            )
        },
    },
    Malformed {
        what: "RESOURCE_CREATE2 with a handle in use",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            let args = ResourceArgs::texture_2d(8, 8).with_handle(5);
            c.resource_create2(&args, 256).unwrap();
            c.send_raw(&wire::resource_create2(&args, 256)).unwrap();
            c
        },
    },
    Malformed {
        what: "TRANSFER_GET2 at offset == shm size",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            c.resource_create2(&ResourceArgs::buffer(64).with_handle(1), 64)
                .unwrap();
            c.transfer_get2(&Transfer2Args {
                handle: 1,
                level: 0,
                bx: Box3::rect(16, 1),
                data_size: 16,
                offset: 64,
            })
            .unwrap();
            c
        },
    },
    Malformed {
        what: "TRANSFER_GET2 of an unref'd handle",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 2);
            let (_, fd) = c
                .resource_create2(&ResourceArgs::texture_2d(8, 8).with_handle(1), 256)
                .unwrap();
            assert!(fd.is_some());
            c.resource_unref(1).unwrap();
            c.ping().unwrap();
            c.transfer_get2(&Transfer2Args {
                handle: 1,
                level: 0,
                bx: Box3::rect(8, 8),
                data_size: 256,
                offset: 0,
            })
            .unwrap();
            c
        },
    },
    Malformed {
        what: "TRANSFER_GET of an unknown handle",
        strict: None,
        send: |s| {
            let mut c = renderer_only(s, "vtest-e2e");
            c.send_raw(&wire::transfer_get(&TransferArgs {
                handle: 77,
                bx: Box3::rect(4, 1),
                data_size: 4,
                ..Default::default()
            }))
            .unwrap();
            c
        },
    },
    Malformed {
        what: "TRANSFER_GET data_size 4 GiB",
        strict: Some("cap data_size (it would malloc and send 4 GiB)"),
        send: |s| {
            let mut c = renderer_only(s, "huge");
            c.resource_create(&ResourceArgs::buffer(64).with_handle(1))
                .unwrap();
            c.send_raw(&wire::transfer_get(&TransferArgs {
                handle: 1,
                bx: Box3::rect(64, 1),
                data_size: u32::MAX,
                ..Default::default()
            }))
            .unwrap();
            c
        },
    },
    Malformed {
        what: "TRANSFER_PUT data_size 4 GiB (header only, the data never comes)",
        strict: Some("cap data_size (it would wait for 4 GiB)"),
        send: |s| {
            let mut c = renderer_only(s, "huge");
            c.resource_create(&ResourceArgs::buffer(64).with_handle(1))
                .unwrap();
            let args = TransferArgs {
                handle: 1,
                bx: Box3::rect(64, 1),
                data_size: u32::MAX,
                ..Default::default()
            };
            c.send_message(11 + (u32::MAX / 4 + 1), cmd::TRANSFER_PUT, &args.dwords())
                .unwrap();
            c
        },
    },
    Malformed {
        what: "SUBMIT_CMD LEN 2^32-1 dwords (header only)",
        strict: Some("cap SUBMIT_CMD LEN (it would wait for 16 GiB)"),
        send: |s| {
            let mut c = connect_v(s, 2);
            c.send_message(u32::MAX, cmd::SUBMIT_CMD, &[]).unwrap();
            c
        },
    },
    Malformed {
        what: "CONTEXT_INIT 1 then 2",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 3);
            c.context_init(wire::CAPSET_VIRGL).unwrap();
            c.ping().unwrap();
            c.context_init(wire::CAPSET_VIRGL2).unwrap();
            c
        },
    },
    Malformed {
        what: "CONTEXT_INIT 0",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 3);
            c.context_init(0).unwrap();
            c
        },
    },
    Malformed {
        what: "blob type 7",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 3);
            c.context_init(wire::CAPSET_VIRGL2).unwrap();
            c.send_raw(&wire::resource_create_blob(7, 0, 4096, 0))
                .unwrap();
            c
        },
    },
    Malformed {
        what: "1 EiB guest blob",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 3);
            c.context_init(wire::CAPSET_VIRGL2).unwrap();
            c.send_raw(&wire::resource_create_blob(
                wire::BLOB_MEM_GUEST,
                wire::BLOB_FLAG_MAPPABLE,
                1 << 60,
                0,
            ))
            .unwrap();
            c
        },
    },
    Malformed {
        what: "SYNC_READ of an unknown id",
        strict: None,
        send: |s| raw_at(s, 3, &wire::sync_read(4242)),
    },
    Malformed {
        what: "SYNC_WAIT LEN 4 (not 2 + 3n)",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 3);
            let sync = c.sync_create(0).unwrap();
            c.send_message(4, cmd::SYNC_WAIT, &[0, 0, sync, 1]).unwrap();
            c
        },
    },
    Malformed {
        what: "SUBMIT_CMD2 on ring 1 of a virgl context",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 3);
            let sync = c.sync_create(0).unwrap();
            c.submit_cmd2(&[Batch {
                flags: wire::SUBMIT_CMD2_FLAG_RING_IDX,
                cmd: vec![],
                syncs: vec![(sync, 1)],
                ring_idx: 1,
            }])
            .unwrap();
            c
        },
    },
    Malformed {
        // One batch whose command range runs past LEN (9 dwords).
        what: "SUBMIT_CMD2 cmd range past LEN",
        strict: None,
        send: |s| {
            raw_at(
                s,
                3,
                &wire::message(cmd::SUBMIT_CMD2, &[1, 0, 5, 10, 9, 0, 0, 0, 0]),
            )
        },
    },
    Malformed {
        // cmd_offset + cmd_size wraps around u32 to 1 (docs/PROTOCOL.md §5.7 item 4).
        what: "SUBMIT_CMD2 wrapping cmd_offset",
        strict: None,
        send: |s| {
            raw_at(
                s,
                3,
                &wire::message(cmd::SUBMIT_CMD2, &[1, 0, 0xffff_ffff, 2, 9, 0, 0, 0, 0]),
            )
        },
    },
    Malformed {
        what: "SUBMIT_CMD2 with an unknown sync",
        strict: None,
        send: |s| {
            let mut c = connect_v(s, 3);
            c.submit_cmd2(&[Batch {
                flags: 0,
                cmd: vec![],
                syncs: vec![(999, 1)],
                ring_idx: 0,
            }])
            .unwrap();
            c
        },
    },
];

/// Whether the server closed `c` without sending anything first.
fn closed_silently(c: &mut Client) -> Result<(), String> {
    match c.expect_disconnect(CLOSE_TIMEOUT) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("sent {n} unexpected bytes before closing")),
        Err(Error::Timeout) => Err("did not close the connection".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Every malformed request of [`MALFORMED`], each on its own connection to one
/// server: each connection is closed, and after each the server still serves a
/// fresh client. All failures are reported together.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn malformed_requests_close_only_their_connection() {
    let server = start();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in MALFORMED {
        if let Some(why) = case.strict {
            if skip_on_reference(&server, why) {
                continue;
            }
        }
        ran += 1;
        let mut c = (case.send)(&server);
        if let Err(e) = closed_silently(&mut c) {
            failures.push(format!("{}: {e}", case.what));
        }
        assert_server_serves(&server);
    }
    assert!(ran > 0, "no case ran");
    assert!(
        failures.is_empty(),
        "{} of {ran} malformed requests were not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn client_disconnects_mid_command() {
    let server = start();
    // Header promising 100 dwords, 10 sent, then EOF.
    let mut c = connect_v(&server, 2);
    let mut b = wire::message_with_len(100, cmd::SUBMIT_CMD, &[0; 10]);
    b.truncate(8 + 40);
    c.send_raw(&b).unwrap();
    c.shutdown_write().unwrap();
    assert_closed(&mut c, "EOF inside SUBMIT_CMD");
    // Half a header, then EOF.
    let mut c = connect_v(&server, 2);
    c.send_raw(&[1, 0, 0]).unwrap();
    c.shutdown_write().unwrap();
    assert_closed(&mut c, "EOF inside a header");
    // EOF inside TRANSFER_PUT data.
    let mut c = client(&server);
    c.create_renderer("eof").unwrap();
    c.ping().unwrap();
    c.resource_create(&ResourceArgs::buffer(64).with_handle(1))
        .unwrap();
    let put = wire::transfer_put(
        &TransferArgs {
            handle: 1,
            bx: Box3::rect(64, 1),
            ..Default::default()
        },
        &[9u8; 64],
    );
    c.send_raw(&put[..put.len() - 30]).unwrap();
    c.shutdown_write().unwrap();
    assert_closed(&mut c, "EOF inside TRANSFER_PUT data");
    // Just connect and hang up.
    drop(client(&server));
    assert_server_serves(&server);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn concurrent_clients_are_independent() {
    let server = start();
    let mut a = connect_v(&server, 2);
    let mut b = connect_v(&server, 2);
    let size = 8 * 8 * 4;
    let args = ResourceArgs::texture_2d(8, 8).with_handle(1);
    // Both use client handle 1: per-client tables.
    let (_, fa) = a.resource_create2(&args, size).unwrap();
    let (_, fb) = b.resource_create2(&args, size).unwrap();
    let (fa, fb) = (fa.unwrap(), fb.unwrap());
    let (da, db) = (pattern(size as usize, 10), pattern(size as usize, 20));
    shm_write(&fa, 0, &da);
    shm_write(&fb, 0, &db);
    let t = Transfer2Args {
        handle: 1,
        level: 0,
        bx: Box3::rect(8, 8),
        data_size: size,
        offset: 0,
    };
    a.transfer_put2(&t).unwrap();
    b.transfer_put2(&t).unwrap();
    a.ping().unwrap();
    b.ping().unwrap();
    shm_write(&fa, 0, &vec![0; size as usize]);
    shm_write(&fb, 0, &vec![0; size as usize]);
    b.transfer_get2(&t).unwrap();
    a.transfer_get2(&t).unwrap();
    assert!(!a.busy_wait(1, true).unwrap());
    assert!(!b.busy_wait(1, true).unwrap());
    assert_eq!(shm_read(&fa, 0, size as usize), da);
    assert_eq!(shm_read(&fb, 0, size as usize), db);
    // One client failing does not disturb the other.
    a.submit_cmd(&[0xdead_beef]).unwrap();
    assert_closed(&mut a, "garbage on client a");
    b.ping().unwrap();
    b.resource_unref(1).unwrap();
    b.ping().unwrap();
}

// ---------------------------------------------------------------------------
// Shared-memory robustness

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn shrunk_shm_does_not_kill_the_server() {
    // The reference (unsealed memfd) takes SIGBUS in its per-client child here;
    // vtestd should refuse the ftruncate (sealed). Either way new clients work.
    let server = start();
    let mut c = connect_v(&server, 2);
    let size = 64 * 64 * 4;
    let (_, fd) = c
        .resource_create2(&ResourceArgs::texture_2d(64, 64).with_handle(1), size)
        .unwrap();
    let fd = fd.unwrap();
    let _ = nix::unistd::ftruncate(&fd, 0);
    c.transfer_put2(&Transfer2Args {
        handle: 1,
        level: 0,
        bx: Box3::rect(64, 64),
        data_size: size,
        offset: 0,
    })
    .unwrap();
    // The connection may survive (sealed) or be lost; it must not hang.
    match c.busy_wait(1, true) {
        Ok(busy) => assert!(!busy),
        Err(e) => assert!(e.is_disconnected(), "unexpected error {e}"),
    }
    drop(c);
    assert_server_serves(&server);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn strict_resource_memfd_is_sealed() {
    let server = start();
    if skip_on_reference(&server, "seal its memfds") {
        return;
    }
    let mut c = connect_v(&server, 2);
    let (_, fd) = c
        .resource_create2(&ResourceArgs::texture_2d(16, 16).with_handle(1), 1024)
        .unwrap();
    let fd = fd.unwrap();
    let seals =
        SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS).expect("F_GET_SEALS"));
    assert!(
        seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
        "seals {seals:?}"
    );
    assert!(nix::unistd::ftruncate(&fd, 0).is_err(), "shrink must fail");
    assert!(nix::unistd::ftruncate(&fd, 4096).is_err(), "grow must fail");
    assert_eq!(fd_size(&fd), 1024);
    // Still writable through the fd.
    shm_write(&fd, 0, b"ok");
    c.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn strict_blob_memfd_is_sealed() {
    let server = start();
    if skip_on_reference(&server, "seal its memfds") {
        return;
    }
    let mut c = connect_v(&server, 3);
    c.context_init(wire::CAPSET_VIRGL2).unwrap();
    let (_, fd) = c
        .resource_create_blob(wire::BLOB_MEM_GUEST, wire::BLOB_FLAG_MAPPABLE, 4096, 0)
        .unwrap();
    let seals =
        SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS).expect("F_GET_SEALS"));
    assert!(
        seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
        "seals {seals:?}"
    );
    assert!(nix::unistd::ftruncate(&fd, 0).is_err(), "shrink must fail");
    assert_eq!(fd_size(&fd), 4096);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn busy_wait_alongside_another_client() {
    // BUSY_WAIT(WAIT) answers for its own client while another client is active
    // (docs/PROTOCOL.md §7.7; the reference forks per client, so this holds there too).
    let server = start();
    let mut a = connect_v(&server, 2);
    let mut b = connect_v(&server, 2);
    let mut stream = Vec::new();
    while stream.len() < 16384 {
        stream.extend(virgl::nop(&[0; 255]));
    }
    a.submit_cmd(&stream).unwrap();
    a.send_raw(&wire::busy_wait(0, wire::BUSY_WAIT_FLAG_WAIT))
        .unwrap();
    b.ping().unwrap();
    assert_eq!(a.expect_reply(cmd::RESOURCE_BUSY_WAIT, 1).unwrap(), vec![0]);
    // A client hanging up is answered by the server closing its end.
    a.shutdown_write().unwrap();
    assert_closed(&mut a, "client a after shutdown");
    b.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn transfer_get_out_of_bounds_leaks_nothing() {
    // The reference sends its malloc buffer even when the read fails (docs/PROTOCOL.md
    // §2.4, a potential heap leak). Acceptable: close the connection, or send
    // exactly data_size zero bytes and stay usable.
    let server = start();
    let mut c = client(&server);
    c.create_renderer("oob").unwrap();
    c.ping().unwrap();
    c.resource_create(&ResourceArgs::buffer(256).with_handle(1))
        .unwrap();
    // Leave a recognisable pattern in any freed server-side transfer buffer.
    let put = TransferArgs {
        handle: 1,
        bx: Box3::rect(200, 1),
        ..Default::default()
    };
    c.transfer_put(&put, &[0x77u8; 200]).unwrap();
    c.ping().unwrap();
    let oob = TransferArgs {
        handle: 1,
        bx: Box3 {
            x: 1000,
            ..Box3::rect(200, 1)
        },
        data_size: 200,
        ..Default::default()
    };
    c.send_raw(&wire::transfer_get(&oob)).unwrap();
    match c.read_raw(200) {
        Ok(d) => {
            assert!(
                d.iter().all(|&b| b == 0),
                "out-of-bounds read returned {d:?}"
            );
            c.ping().unwrap();
        }
        Err(Error::Disconnected) => {}
        Err(e) => panic!("out-of-bounds TRANSFER_GET: {e}"),
    }
    drop(c);
    assert_server_serves(&server);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn thousands_of_live_resources_do_not_exhaust_worker_fds() {
    // glmark2's bump scene keeps more than 1024 resources alive; each one's
    // memfd goes to the client and must not stay open in the worker (whose
    // fd limit is 1024), only its mapping.
    let server = start();
    let mut c = connect_v(&server, 2);
    for handle in 1..=1500 {
        let args = ResourceArgs::buffer(4096).with_handle(handle);
        let (_, fd) = c.resource_create2(&args, 4096).unwrap();
        drop(fd.expect("memfd"));
    }
    c.ping().unwrap();
    let args = ResourceArgs::buffer(4096).with_handle(1501);
    let (_, fd) = c.resource_create2(&args, 4096).unwrap();
    assert!(fd.is_some());
}
