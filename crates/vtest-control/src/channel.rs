//! The transport: one message per `SOCK_SEQPACKET` packet, fds alongside.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{align_of, size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::io::Errno;
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, MAX_MESSAGE};
use crate::error::ControlError;

/// Most fds one message may carry.
pub const MAX_FDS: usize = 4;

/// `CMSG_SPACE` for exactly [`MAX_FDS`] fds: a `struct cmsghdr` (a `size_t`
/// and two ints) and the fds, each rounded up to a multiple of `long`.
/// Receiving with no more room than this means the kernel never installs more
/// than `MAX_FDS` fds from a peer: it discards the rest and reports
/// `MSG_CTRUNC`. (`rustix::cmsg_space!` adds alignment slack, which would let
/// a fifth fd in.)
const CMSG_SPACE: usize = cmsg_align(size_of::<usize>() + 2 * size_of::<i32>())
    + cmsg_align(MAX_FDS * size_of::<RawFd>());
/// Stack buffer large enough to hold a `cmsghdr`-aligned window of
/// `CMSG_SPACE` bytes wherever it lands.
const CMSG_BUF: usize = CMSG_SPACE + align_of::<usize>();

/// One end of a control socketpair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair, both ends close-on-exec (the broker clears that on
    /// the worker's end when it spawns the worker).
    pub fn pair() -> Result<(Channel, Channel), ControlError> {
        let (a, b) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| ControlError::Socketpair(e.into()))?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an inherited end. The fd must be a connected `SOCK_SEQPACKET`
    /// unix socket; this is not checked.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Channel { fd }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends `msg` and `fds` as one packet.
    ///
    /// Blocks while the peer's receive queue is full. A peer that has gone
    /// is [`ControlError::Disconnected`] (never `SIGPIPE`).
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ControlError> {
        let too_many = ControlError::TooManyFds {
            got: fds.len(),
            max: MAX_FDS,
        };
        if fds.len() > MAX_FDS {
            return Err(too_many);
        }
        let bytes = codec::encode(msg)?;
        let mut space = [MaybeUninit::uninit(); CMSG_BUF];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(too_many);
        }
        loop {
            match net::sendmsg(
                &self.fd,
                &[IoSlice::new(&bytes)],
                &mut cmsg,
                SendFlags::NOSIGNAL,
            ) {
                // A seqpacket send is all or nothing.
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => return Err(ControlError::Send(io::ErrorKind::WriteZero.into())),
                Err(Errno::INTR) => {}
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(ControlError::Disconnected),
                Err(e) => return Err(ControlError::Send(e.into())),
            }
        }
    }

    /// Blocks until one packet arrives and decodes it.
    ///
    /// Received fds are close-on-exec. On any error the packet is consumed
    /// and its fds are closed.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<(T, Vec<OwnedFd>), ControlError> {
        self.recv_with(RecvFlags::empty())?
            // Only if someone made the socket non-blocking.
            .ok_or_else(|| ControlError::Recv(io::ErrorKind::WouldBlock.into()))
    }

    /// Like [`Channel::recv`], but `Ok(None)` when no packet is queued.
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<Option<(T, Vec<OwnedFd>)>, ControlError> {
        self.recv_with(RecvFlags::DONTWAIT)
    }

    fn recv_with<T: DeserializeOwned>(
        &self,
        flags: RecvFlags,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, ControlError> {
        let mut payload = [0u8; MAX_MESSAGE];
        let mut space = [MaybeUninit::uninit(); CMSG_BUF];
        let mut cmsg = RecvAncillaryBuffer::new(cmsg_window(&mut space));
        let received = loop {
            let mut iov = [IoSliceMut::new(&mut payload)];
            match net::recvmsg(
                &self.fd,
                &mut iov,
                &mut cmsg,
                flags | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(received) => break received,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::CONNRESET) => return Err(ControlError::Disconnected),
                Err(e) => return Err(ControlError::Recv(e.into())),
            }
        };

        // Own every fd before judging the packet, so that each error below
        // closes them.
        let mut fds = Vec::new();
        let mut unexpected = false;
        for message in cmsg.drain() {
            match message {
                RecvAncillaryMessage::ScmRights(received_fds) => fds.extend(received_fds),
                _ => unexpected = true,
            }
        }

        if received
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        {
            return Err(ControlError::Truncated);
        }
        if unexpected {
            return Err(ControlError::UnexpectedControlMessage);
        }
        // EOF; a (hostile) empty packet reads the same and is treated alike.
        if received.bytes == 0 {
            return Err(ControlError::Disconnected);
        }
        if fds.len() > MAX_FDS {
            return Err(ControlError::TooManyFds {
                got: fds.len(),
                max: MAX_FDS,
            });
        }
        let msg = codec::decode(&payload[..received.bytes])?;
        Ok(Some((msg, fds)))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The single fd of a message that carries exactly one (e.g.
/// [`BrokerMsg::Attach`](crate::BrokerMsg::Attach)). Extra fds are closed.
pub fn expect_one_fd(fds: Vec<OwnedFd>) -> Result<OwnedFd, ControlError> {
    let got = fds.len();
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next()) {
        (Some(fd), None) => Ok(fd),
        _ => Err(ControlError::WrongFdCount { expected: 1, got }),
    }
}

const fn cmsg_align(len: usize) -> usize {
    len.next_multiple_of(size_of::<usize>())
}

/// The `cmsghdr`-aligned `CMSG_SPACE` bytes of `buf`, so that the receive
/// buffer's usable size is exactly `CMSG_SPACE` wherever the stack put it.
fn cmsg_window(buf: &mut [MaybeUninit<u8>; CMSG_BUF]) -> &mut [MaybeUninit<u8>] {
    let align = align_of::<usize>();
    let start = (align - buf.as_ptr() as usize % align) % align;
    &mut buf[start..start + CMSG_SPACE]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmsg_space_is_exactly_max_fds() {
        // rustix's own figure, less the alignment slack it adds.
        assert_eq!(CMSG_SPACE, rustix::cmsg_aligned_space!(ScmRights(MAX_FDS)));
        assert!(rustix::cmsg_aligned_space!(ScmRights(MAX_FDS + 1)) > CMSG_SPACE);
    }

    #[test]
    fn cmsg_window_is_aligned_and_exact() {
        let mut space = [MaybeUninit::uninit(); CMSG_BUF];
        let window = cmsg_window(&mut space);
        assert_eq!(window.len(), CMSG_SPACE);
        assert_eq!(window.as_ptr() as usize % align_of::<usize>(), 0);
    }
}
