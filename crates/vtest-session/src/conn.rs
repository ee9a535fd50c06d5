//! The client's socket: buffered input for framing, batched replies, fd passing.

use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags};
use vtest_protocol::Reply;

const INITIAL_BUFFER: usize = 64 << 10;

/// Outcome of reading what the client has sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Some bytes arrived.
    Data,
    /// Nothing to read right now.
    WouldBlock,
    /// The client closed its end.
    Eof,
}

/// What the client sent and the worker has not handled yet.
pub(crate) struct Input {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub(crate) bytes_in: u64,
}

/// Replies on their way to the client.
pub(crate) struct Output {
    stream: UnixStream,
    out: Vec<u8>,
    pub(crate) bytes_out: u64,
    pub(crate) fds_sent: u64,
}

/// The two halves of one client socket.
pub(crate) fn split(stream: UnixStream) -> std::io::Result<(Input, Output)> {
    let writer = stream.try_clone()?;
    Ok((
        Input {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            bytes_in: 0,
        },
        Output {
            stream: writer,
            out: Vec::with_capacity(4096),
            bytes_out: 0,
            fds_sent: 0,
        },
    ))
}

impl Input {
    /// Unconsumed input.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` bytes of input as used.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > INITIAL_BUFFER * 16 {
                // A large command came and went: give the memory back.
                self.buf = vec![0; INITIAL_BUFFER];
            }
        }
    }

    /// Reads what is available without blocking, making room for at least
    /// `want` unconsumed bytes (bounded by the caller's framing limits).
    pub(crate) fn fill(&mut self, want: usize) -> io::Result<Fill> {
        if self.start > 0 && self.buf.len() - self.end < want.saturating_sub(self.end - self.start)
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            // Fallible: a large (allowed) request at the worker's memory
            // limit ends the client, not the worker.
            self.buf
                .try_reserve_exact(want - self.buf.len())
                .map_err(|_| io::Error::from(Errno::ENOMEM))?;
            self.buf.resize(want, 0);
        }
        if self.end == self.buf.len() {
            // Full of complete requests: let them be handled first. The
            // buffer only ever grows to fit one request (`want`, bounded by
            // the framing limits), so a flooding client cannot grow it.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                return Ok(Fill::Data);
            }
        }
        loop {
            match recv(
                self.stream.as_raw_fd(),
                &mut self.buf[self.end..],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.end += n;
                    self.bytes_in += n as u64;
                    return Ok(Fill::Data);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(Fill::WouldBlock),
                Err(Errno::ECONNRESET) => return Ok(Fill::Eof),
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Output {
    /// Queues a reply; it is written by the next [`Conn::flush`] or fd send.
    pub(crate) fn queue(&mut self, reply: &Reply<'_>) {
        reply.encode(&mut self.out);
    }

    /// Makes room for `n` more bytes of replies, failing (ENOMEM) instead of
    /// aborting when memory is short.
    pub(crate) fn reserve(&mut self, n: usize) -> io::Result<()> {
        self.out
            .try_reserve(n)
            .map_err(|_| io::Error::from(Errno::ENOMEM))
    }

    /// Bytes of replies queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes every queued reply (blocking).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.out)?;
        self.bytes_out += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Sends one fd as one zero byte with `SCM_RIGHTS`, after the queued replies.
    pub(crate) fn send_fd(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.flush()?;
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(&[0u8])];
        loop {
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.bytes_out += 1;
        self.fds_sent += 1;
        Ok(())
    }
}
