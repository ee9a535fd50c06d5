//! vtest-client: a small blocking client for the vtest protocol (virglrenderer's
//! `virgl_test_server` socket protocol), used by the end-to-end tests.
//!
//! Written from `docs/PROTOCOL.md` only, deliberately independent of the server's own
//! protocol crate, so that it can catch mistakes there. It reads exactly the bytes
//! each reply should have (no buffering), receives fds the way Mesa does (plain
//! reads for the header, then `recvmsg` of exactly one byte with an `SCM_RIGHTS`
//! control message), and maps EOF / ECONNRESET / EPIPE to [`Error::Disconnected`].
//!
//! Every read has a timeout ([`DEFAULT_TIMEOUT`] unless changed), so a broken
//! server makes a test fail instead of hang.

#![forbid(unsafe_code)]

pub mod virgl;
pub mod wire;

use std::io::{self, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};

pub use wire::{Batch, Box3, ResourceArgs, Transfer2Args, TransferArgs};

/// Read and write timeout set on every new client.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound on a reply payload this client is willing to allocate.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server closed the connection (EOF, ECONNRESET or EPIPE).
    #[error("server closed the connection")]
    Disconnected,
    /// The server did not answer within the read (or write) timeout.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server sent something this client did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Any other I/O error.
    #[error("I/O error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Error::Disconnected,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            _ => Error::Io(e),
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::from(io::Error::from(e))
    }
}

impl Error {
    /// Whether this is [`Error::Disconnected`].
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn protocol<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Protocol(msg.into()))
}

/// A vtest connection.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    version: u32,
}

impl Client {
    /// Connects to the server socket at `path` (with [`DEFAULT_TIMEOUT`]).
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let stream = UnixStream::connect(path)?;
        Client::from_stream(stream)
    }

    /// Wraps an already-connected stream and sets [`DEFAULT_TIMEOUT`] on it.
    pub fn from_stream(stream: UnixStream) -> Result<Client> {
        let client = Client { stream, version: 0 };
        client.set_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(client)
    }

    /// Sets the read and write timeouts (`None` = block forever; avoid in tests).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Gives back the underlying stream.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The protocol version this client believes is in effect (0 until
    /// [`Client::protocol_version`] succeeds). It decides whether RESOURCE_CREATE(2)
    /// expect a reply header.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Overrides the version the client assumes (for hostile tests).
    pub fn set_version(&mut self, version: u32) {
        self.version = version;
    }

    // ----------------------------------------------------------------------
    // Raw access

    /// Writes `bytes` as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Writes `[len, id]` + payload with an explicit (possibly wrong) `LEN`.
    pub fn send_message(&mut self, len: u32, id: u32, payload: &[u32]) -> Result<()> {
        self.send_raw(&wire::message_with_len(len, id, payload))
    }

    /// Reads exactly `n` bytes with plain reads.
    pub fn read_raw(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads exactly `n` dwords.
    pub fn read_dwords(&mut self, n: usize) -> Result<Vec<u32>> {
        Ok(wire::dwords_from_bytes(&self.read_raw(n * 4)?))
    }

    /// Reads one reply header `(LEN, CMD_ID)`.
    pub fn read_header(&mut self) -> Result<(u32, u32)> {
        let d = self.read_dwords(2)?;
        Ok((d[0], d[1]))
    }

    /// Reads a header, checks it is exactly `[len, id]`, and returns the `len` payload dwords.
    pub fn expect_reply(&mut self, id: u32, len: u32) -> Result<Vec<u32>> {
        let (l, i) = self.read_header()?;
        if (l, i) != (len, id) {
            return protocol(format!(
                "expected reply header [{len}, {id}], got [{l}, {i}]"
            ));
        }
        self.read_dwords(len as usize)
    }

    /// Receives one fd: `recvmsg` of exactly one byte carrying one `SCM_RIGHTS` fd
    /// (received with `MSG_CMSG_CLOEXEC`).
    pub fn recv_fd(&mut self) -> Result<OwnedFd> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let msg = loop {
            match rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r?,
            }
        };
        if msg.bytes == 0 {
            return Err(Error::Disconnected);
        }
        let truncated = msg.flags.contains(ReturnFlags::CTRUNC);
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if truncated {
            return protocol("control message truncated (more than one fd?)");
        }
        match fds.len() {
            1 => Ok(fds.pop().expect("one fd")),
            0 => protocol(format!(
                "expected an fd byte with SCM_RIGHTS, got byte {:#04x} without fds",
                byte[0]
            )),
            n => protocol(format!("expected one fd, got {n}")),
        }
    }

    /// Closes the write half of the connection.
    pub fn shutdown_write(&self) -> Result<()> {
        self.stream.shutdown(Shutdown::Write)?;
        Ok(())
    }

    /// Waits up to `timeout` for the server to close the connection (EOF or
    /// ECONNRESET), discarding anything it sends first. Returns the number of
    /// discarded bytes; [`Error::Timeout`] if the connection stays open.
    pub fn expect_disconnect(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut discarded = 0usize;
        let mut buf = [0u8; 4096];
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(Error::Timeout);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => break Ok(discarded),
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => match Error::from(e) {
                    Error::Disconnected => break Ok(discarded),
                    other => break Err(other),
                },
            }
        };
        self.stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        result
    }

    // ----------------------------------------------------------------------
    // Handshake (docs/PROTOCOL.md §3.1)

    /// CREATE_RENDERER with `name` + NUL (`LEN` in bytes). No reply.
    pub fn create_renderer(&mut self, name: &str) -> Result<()> {
        self.send_raw(&wire::create_renderer(name))
    }

    /// PING_PROTOCOL_VERSION plus the BUSY_WAIT(0, 0) probe, sent together as Mesa
    /// does; expects `[0,10]` then `[1,7,busy]`. A server that answers the probe
    /// first (one that ignores PING) is a protocol error here.
    pub fn ping(&mut self) -> Result<()> {
        self.send_raw(&wire::ping_probe())?;
        let (len, id) = self.read_header()?;
        match (len, id) {
            (0, wire::cmd::PING_PROTOCOL_VERSION) => {}
            (1, wire::cmd::RESOURCE_BUSY_WAIT) => {
                return protocol("server answered the BUSY_WAIT probe without a PING reply")
            }
            _ => return protocol(format!("expected PING reply [0, 10], got [{len}, {id}]")),
        }
        let busy = self.expect_reply(wire::cmd::RESOURCE_BUSY_WAIT, 1)?;
        if busy[0] > 1 {
            return protocol(format!("BUSY_WAIT probe returned busy = {}", busy[0]));
        }
        Ok(())
    }

    /// PROTOCOL_VERSION(`version`) → the negotiated version, which the client
    /// then assumes.
    pub fn protocol_version(&mut self, version: u32) -> Result<u32> {
        self.send_raw(&wire::protocol_version(version))?;
        let v = self.expect_reply(wire::cmd::PROTOCOL_VERSION, 1)?[0];
        self.version = v;
        Ok(v)
    }

    /// CREATE_RENDERER + PING/probe + PROTOCOL_VERSION(`version`).
    pub fn handshake(&mut self, name: &str, version: u32) -> Result<u32> {
        self.create_renderer(name)?;
        self.ping()?;
        self.protocol_version(version)
    }

    // ----------------------------------------------------------------------
    // Caps

    fn read_caps_reply(&mut self, want_id: u32) -> Result<Vec<u8>> {
        let (len, id) = self.read_header()?;
        if id != want_id {
            return protocol(format!(
                "expected caps reply id {want_id}, got [{len}, {id}]"
            ));
        }
        if len == 0 {
            return protocol("caps reply LEN 0 (must be bytes + 1)");
        }
        let n = (len - 1) as usize;
        if n > MAX_REPLY_BYTES {
            return protocol(format!("caps reply of {n} bytes"));
        }
        self.read_raw(n)
    }

    /// GET_CAPS2 → virgl caps v2 (reply `[bytes+1, 2]` + bytes).
    pub fn get_caps2(&mut self) -> Result<Vec<u8>> {
        self.send_raw(&wire::get_caps2())?;
        self.read_caps_reply(wire::CAPS_REPLY_V2)
    }

    /// GET_CAPS → virgl caps v1 (reply `[bytes+1, 1]` + exactly `LEN-1` bytes).
    pub fn get_caps(&mut self) -> Result<Vec<u8>> {
        self.send_raw(&wire::get_caps())?;
        self.read_caps_reply(wire::CAPS_REPLY_V1)
    }

    /// GET_CAPS2 and GET_CAPS sent back-to-back (as Mesa does), then both replies.
    pub fn get_caps2_and_caps(&mut self) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut b = wire::get_caps2();
        b.extend(wire::get_caps());
        self.send_raw(&b)?;
        let v2 = self.read_caps_reply(wire::CAPS_REPLY_V2)?;
        let v1 = self.read_caps_reply(wire::CAPS_REPLY_V1)?;
        Ok((v2, v1))
    }

    // ----------------------------------------------------------------------
    // Resources and transfers

    /// RESOURCE_CREATE. Before v3 there is no reply and the client's handle
    /// (`args.handle`) is returned; at v≥3 the reply `[1,2,id]` is read and the
    /// server's id returned.
    pub fn resource_create(&mut self, args: &ResourceArgs) -> Result<u32> {
        self.send_raw(&wire::resource_create(args))?;
        if self.version >= 3 {
            Ok(self.expect_reply(wire::cmd::RESOURCE_CREATE, 1)?[0])
        } else {
            Ok(args.handle)
        }
    }

    /// RESOURCE_CREATE2. The header `[1,12,id]` is read only at v≥3 (else the id
    /// is `args.handle`); the memfd is received only if `data_size > 0`.
    pub fn resource_create2(
        &mut self,
        args: &ResourceArgs,
        data_size: u32,
    ) -> Result<(u32, Option<OwnedFd>)> {
        self.send_raw(&wire::resource_create2(args, data_size))?;
        let id = if self.version >= 3 {
            self.expect_reply(wire::cmd::RESOURCE_CREATE2, 1)?[0]
        } else {
            args.handle
        };
        let fd = if data_size > 0 {
            Some(self.recv_fd()?)
        } else {
            None
        };
        Ok((id, fd))
    }

    /// RESOURCE_UNREF. No reply.
    pub fn resource_unref(&mut self, handle: u32) -> Result<()> {
        self.send_raw(&wire::resource_unref(handle))
    }

    /// TRANSFER_PUT (v0): header + exactly `data.len()` bytes (`data_size` is set to it).
    pub fn transfer_put(&mut self, args: &TransferArgs, data: &[u8]) -> Result<()> {
        self.send_raw(&wire::transfer_put(args, data))
    }

    /// TRANSFER_GET (v0): the reply is `args.data_size` raw bytes, no header.
    pub fn transfer_get(&mut self, args: &TransferArgs) -> Result<Vec<u8>> {
        if args.data_size as usize > MAX_REPLY_BYTES {
            return protocol("TRANSFER_GET data_size too large for this client");
        }
        self.send_raw(&wire::transfer_get(args))?;
        self.read_raw(args.data_size as usize)
    }

    /// TRANSFER_PUT2 (shm → resource). No reply.
    pub fn transfer_put2(&mut self, args: &Transfer2Args) -> Result<()> {
        self.send_raw(&wire::transfer_put2(args))
    }

    /// TRANSFER_GET2 (resource → shm). No reply; follow with `busy_wait(h, true)`.
    pub fn transfer_get2(&mut self, args: &Transfer2Args) -> Result<()> {
        self.send_raw(&wire::transfer_get2(args))
    }

    /// SUBMIT_CMD with a virgl command stream. No reply.
    pub fn submit_cmd(&mut self, cmds: &[u32]) -> Result<()> {
        self.send_raw(&wire::submit_cmd(cmds))
    }

    /// RESOURCE_BUSY_WAIT(handle, WAIT or 0) → busy.
    pub fn busy_wait(&mut self, handle: u32, wait: bool) -> Result<bool> {
        let flags = if wait { wire::BUSY_WAIT_FLAG_WAIT } else { 0 };
        self.busy_wait_flags(handle, flags)
    }

    /// RESOURCE_BUSY_WAIT with raw flags → busy.
    pub fn busy_wait_flags(&mut self, handle: u32, flags: u32) -> Result<bool> {
        self.send_raw(&wire::busy_wait(handle, flags))?;
        match self.expect_reply(wire::cmd::RESOURCE_BUSY_WAIT, 1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => protocol(format!("BUSY_WAIT returned busy = {b}")),
        }
    }

    // ----------------------------------------------------------------------
    // Version 3

    /// GET_PARAM → (valid, value).
    pub fn get_param(&mut self, param: u32) -> Result<(bool, u32)> {
        self.send_raw(&wire::get_param(param))?;
        let r = self.expect_reply(wire::cmd::GET_PARAM, 2)?;
        match r[0] {
            0 | 1 => Ok((r[0] == 1, r[1])),
            v => protocol(format!("GET_PARAM valid = {v}")),
        }
    }

    /// GET_CAPSET → `Some(caps)` (`[1+n,16,1,caps[n]]`) or `None` (`[1,16,0]`).
    pub fn get_capset(&mut self, id: u32, version: u32) -> Result<Option<Vec<u8>>> {
        self.send_raw(&wire::get_capset(id, version))?;
        let (len, rid) = self.read_header()?;
        if rid != wire::cmd::GET_CAPSET || len == 0 {
            return protocol(format!("expected GET_CAPSET reply, got [{len}, {rid}]"));
        }
        let valid = self.read_dwords(1)?[0];
        match (valid, len) {
            (0, 1) => Ok(None),
            (0, _) => protocol(format!("invalid capset reply with LEN {len}")),
            (1, _) => {
                let n = (len - 1) as usize * 4;
                if n > MAX_REPLY_BYTES {
                    return protocol(format!("capset of {n} bytes"));
                }
                Ok(Some(self.read_raw(n)?))
            }
            (v, _) => protocol(format!("GET_CAPSET valid = {v}")),
        }
    }

    /// CONTEXT_INIT(capset). No reply.
    pub fn context_init(&mut self, capset: u32) -> Result<()> {
        self.send_raw(&wire::context_init(capset))
    }

    /// RESOURCE_CREATE_BLOB → (server id, fd). The fd always follows `[1,18,id]`.
    pub fn resource_create_blob(
        &mut self,
        blob_type: u32,
        flags: u32,
        size: u64,
        blob_id: u64,
    ) -> Result<(u32, OwnedFd)> {
        self.send_raw(&wire::resource_create_blob(blob_type, flags, size, blob_id))?;
        let id = self.expect_reply(wire::cmd::RESOURCE_CREATE_BLOB, 1)?[0];
        let fd = self.recv_fd()?;
        Ok((id, fd))
    }

    /// SYNC_CREATE(initial value) → sync id.
    pub fn sync_create(&mut self, value: u64) -> Result<u32> {
        self.send_raw(&wire::sync_create(value))?;
        Ok(self.expect_reply(wire::cmd::SYNC_CREATE, 1)?[0])
    }

    /// SYNC_UNREF. No reply.
    pub fn sync_unref(&mut self, id: u32) -> Result<()> {
        self.send_raw(&wire::sync_unref(id))
    }

    /// SYNC_READ → value.
    pub fn sync_read(&mut self, id: u32) -> Result<u64> {
        self.send_raw(&wire::sync_read(id))?;
        let r = self.expect_reply(wire::cmd::SYNC_READ, 2)?;
        Ok(u64::from(r[0]) | (u64::from(r[1]) << 32))
    }

    /// SYNC_WRITE. No reply.
    pub fn sync_write(&mut self, id: u32, value: u64) -> Result<()> {
        self.send_raw(&wire::sync_write(id, value))
    }

    /// SYNC_WAIT → an eventfd that becomes readable when the wait is satisfied.
    pub fn sync_wait(
        &mut self,
        flags: u32,
        timeout_ms: u32,
        syncs: &[(u32, u64)],
    ) -> Result<OwnedFd> {
        self.send_raw(&wire::sync_wait(flags, timeout_ms, syncs))?;
        self.expect_reply(wire::cmd::SYNC_WAIT, 0)?;
        self.recv_fd()
    }

    /// SUBMIT_CMD2 with batch headers at a stride of 8 dwords. No reply.
    pub fn submit_cmd2(&mut self, batches: &[Batch]) -> Result<()> {
        self.send_raw(&wire::submit_cmd2(batches))
    }

    /// SUBMIT_CMD2 with batch headers `stride` dwords apart (6: Mesa 25.0). No reply.
    pub fn submit_cmd2_with_stride(&mut self, batches: &[Batch], stride: u32) -> Result<()> {
        self.send_raw(&wire::submit_cmd2_with_stride(batches, stride))
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted fake server on a socketpair.

    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    fn pair() -> (Client, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (Client::from_stream(a).unwrap(), b)
    }

    fn dw(words: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        wire::push_dwords(&mut v, words);
        v
    }

    fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    /// Sends one fd the way the server does: one 0 byte + SCM_RIGHTS.
    fn send_fd(s: &UnixStream, fd: impl AsFd) {
        let fds = [fd.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let n = rustix::net::sendmsg(s, &[IoSlice::new(&[0])], &mut control, SendFlags::empty())
            .unwrap();
        assert_eq!(n, 1);
    }

    fn temp_file(size: u64) -> std::fs::File {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("vtest-client-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn handshake_sends_mesa_bytes_and_reads_replies() {
        let (mut c, mut s) = pair();
        let server = std::thread::spawn(move || {
            let got = read_n(&mut s, 16 + 8 + 16);
            let mut want = wire::create_renderer("glmark2");
            want.extend(wire::ping_probe());
            assert_eq!(got, want);
            s.write_all(&dw(&[0, 10, 1, 7, 0])).unwrap();
            assert_eq!(read_n(&mut s, 12), wire::protocol_version(2));
            s.write_all(&dw(&[1, 11, 2])).unwrap();
            s
        });
        assert_eq!(c.handshake("glmark2", 2).unwrap(), 2);
        assert_eq!(c.version(), 2);
        drop(server.join().unwrap());
    }

    #[test]
    fn caps_replies_use_bytes_plus_one_and_caps_set_ids() {
        let (mut c, mut s) = pair();
        let server = std::thread::spawn(move || {
            assert_eq!(
                read_n(&mut s, 16),
                [wire::get_caps2(), wire::get_caps()].concat()
            );
            let mut r = dw(&[7, 2]);
            r.extend([1, 2, 3, 4, 5, 6]);
            r.extend(dw(&[4, 1]));
            r.extend([9, 8, 7]);
            s.write_all(&r).unwrap();
            s
        });
        let (v2, v1) = c.get_caps2_and_caps().unwrap();
        assert_eq!(v2, [1, 2, 3, 4, 5, 6]);
        assert_eq!(v1, [9, 8, 7]);
        drop(server.join().unwrap());
    }

    #[test]
    fn resource_create2_v3_header_then_fd() {
        let (mut c, mut s) = pair();
        c.set_version(3);
        let server = std::thread::spawn(move || {
            read_n(&mut s, 8 + 44);
            let f = temp_file(4096);
            f.write_all_at(b"shm!", 10).unwrap();
            s.write_all(&dw(&[1, 12, 42])).unwrap();
            send_fd(&s, &f);
            // data_size 0: header only.
            read_n(&mut s, 8 + 44);
            s.write_all(&dw(&[1, 12, 43])).unwrap();
            s
        });
        let (id, fd) = c
            .resource_create2(&ResourceArgs::texture_2d(4, 4), 4096)
            .unwrap();
        assert_eq!(id, 42);
        let f = std::fs::File::from(fd.unwrap());
        assert_eq!(f.metadata().unwrap().len(), 4096);
        let mut b = [0; 4];
        f.read_exact_at(&mut b, 10).unwrap();
        assert_eq!(&b, b"shm!");
        let (id, fd) = c
            .resource_create2(&ResourceArgs::texture_2d(4, 4), 0)
            .unwrap();
        assert_eq!((id, fd.is_none()), (43, true));
        drop(server.join().unwrap());
    }

    #[test]
    fn resource_create2_v2_fd_only() {
        let (mut c, mut s) = pair();
        c.set_version(2);
        let server = std::thread::spawn(move || {
            read_n(&mut s, 8 + 44);
            send_fd(&s, temp_file(64));
            s
        });
        let (id, fd) = c
            .resource_create2(&ResourceArgs::buffer(64).with_handle(5), 64)
            .unwrap();
        assert_eq!(id, 5);
        assert!(fd.is_some());
        drop(server.join().unwrap());
    }

    #[test]
    fn fd_byte_without_fd_is_a_protocol_error() {
        let (mut c, mut s) = pair();
        s.write_all(&[0]).unwrap();
        assert!(matches!(c.recv_fd(), Err(Error::Protocol(_))));
    }

    #[test]
    fn v3_replies() {
        let (mut c, mut s) = pair();
        c.set_version(3);
        s.write_all(&dw(&[2, 15, 1, 64])).unwrap();
        assert_eq!(c.get_param(1).unwrap(), (true, 64));
        s.write_all(&dw(&[1, 16, 0])).unwrap();
        assert_eq!(c.get_capset(3, 0).unwrap(), None);
        s.write_all(&dw(&[3, 16, 1, 0x0403_0201, 0x0807_0605]))
            .unwrap();
        assert_eq!(
            c.get_capset(2, 0).unwrap(),
            Some(vec![1, 2, 3, 4, 5, 6, 7, 8])
        );
        s.write_all(&dw(&[2, 21, 1, 2])).unwrap();
        assert_eq!(c.sync_read(1).unwrap(), (2 << 32) | 1);
        s.write_all(&dw(&[1, 19, 6])).unwrap();
        assert_eq!(c.sync_create(0).unwrap(), 6);
        s.write_all(&dw(&[0, 23])).unwrap();
        send_fd(&s, temp_file(1));
        c.sync_wait(0, 0, &[(6, 1)]).unwrap();
        // The requests, in order.
        let mut want = wire::get_param(1);
        want.extend(wire::get_capset(3, 0));
        want.extend(wire::get_capset(2, 0));
        want.extend(wire::sync_read(1));
        want.extend(wire::sync_create(0));
        want.extend(wire::sync_wait(0, 0, &[(6, 1)]));
        assert_eq!(read_n(&mut s, want.len()), want);
    }

    #[test]
    fn wrong_reply_header_is_a_protocol_error() {
        let (mut c, mut s) = pair();
        s.write_all(&dw(&[1, 7, 0])).unwrap();
        assert!(matches!(c.ping(), Err(Error::Protocol(_))));
        let (mut c, mut s) = pair();
        s.write_all(&dw(&[2, 11, 3, 3])).unwrap();
        assert!(matches!(c.protocol_version(3), Err(Error::Protocol(_))));
    }

    #[test]
    fn eof_and_reset_are_disconnected() {
        let (mut c, s) = pair();
        drop(s);
        assert!(c.read_header().unwrap_err().is_disconnected());
        assert!(c.recv_fd().unwrap_err().is_disconnected());
        assert_eq!(c.expect_disconnect(Duration::from_secs(1)).unwrap(), 0);
        // Writing to a closed peer: EPIPE, not a signal.
        assert!(c.send_raw(&[0; 8]).unwrap_err().is_disconnected());
        // Unread data at close → ECONNRESET on our read.
        let (mut c, s) = pair();
        c.send_raw(&[1, 2, 3, 4]).unwrap();
        drop(s);
        assert!(c.read_raw(4).unwrap_err().is_disconnected());
    }

    #[test]
    fn timeouts_do_not_hang() {
        let (mut c, _s) = pair();
        c.set_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(matches!(c.read_header(), Err(Error::Timeout)));
        assert!(matches!(c.recv_fd(), Err(Error::Timeout)));
        assert!(matches!(
            c.expect_disconnect(Duration::from_millis(50)),
            Err(Error::Timeout)
        ));
    }
}
