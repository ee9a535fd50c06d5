//! Serving one client: the event loop around the dispatcher.

use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vtest_control::SessionStats;
use vtest_protocol::{decode, Decoded};

use crate::conn::{split, Fill, Input};
use crate::dispatch::Dispatcher;
use crate::{Backend, SessionError, SessionLimits};

/// One client, from its first byte to its disconnect.
pub struct Session<B: Backend> {
    input: Input,
    dispatcher: Dispatcher<B>,
}

impl<B: Backend> Session<B> {
    /// A session for the client on `stream`.
    pub fn new(backend: B, stream: UnixStream, limits: SessionLimits) -> std::io::Result<Self> {
        let (input, output) = split(stream)?;
        Ok(Session {
            input,
            dispatcher: Dispatcher::new(backend, output, limits),
        })
    }

    /// Counters for the broker.
    pub fn stats(&self) -> SessionStats {
        self.dispatcher.stats(self.input.bytes_in)
    }

    /// The name the client gave in `CREATE_RENDERER`, for logs.
    pub fn client_name(&self) -> String {
        self.dispatcher.client_name()
    }

    /// Serves the client until it disconnects (`Ok`) or misbehaves (`Err`).
    pub fn run(&mut self) -> Result<(), SessionError> {
        loop {
            self.dispatcher.flush()?;
            let timeout = self.poll_timeout();
            let (client_ready, fence_ready) = self.wait_for_events(timeout)?;
            // Without a poll fd the backend retires fences synchronously.
            if fence_ready || self.dispatcher.fence_fd().is_none() {
                self.dispatcher.retire_fences();
            }
            self.dispatcher.expire_waits(Instant::now());
            if client_ready && !self.read_and_dispatch()? {
                return Ok(());
            }
            if self.dispatcher.fence_fd().is_none() {
                self.dispatcher.retire_fences();
            }
        }
    }

    fn poll_timeout(&self) -> PollTimeout {
        match self.dispatcher.next_deadline() {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let ms = deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    + 1;
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    /// Blocks until the client or the renderer's fence fd is readable.
    fn wait_for_events(&self, timeout: PollTimeout) -> Result<(bool, bool), SessionError> {
        let mut fds = vec![PollFd::new(self.input.as_fd(), PollFlags::POLLIN)];
        if let Some(fd) = self.dispatcher.fence_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((false, false)),
            Err(e) => return Err(SessionError::Io(e.into())),
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        Ok((ready(&fds[0]), fds.get(1).is_some_and(ready)))
    }

    /// Reads what arrived and runs every complete request. False on EOF.
    fn read_and_dispatch(&mut self) -> Result<bool, SessionError> {
        let mut want = 0;
        loop {
            match self.input.fill(want).map_err(SessionError::Io)? {
                Fill::Eof => return Ok(false),
                Fill::WouldBlock => return Ok(true),
                Fill::Data => {}
            }
            want = self.dispatch_buffered()?;
        }
    }

    /// Runs every complete request in the input buffer; returns the bytes the
    /// next incomplete one needs in all.
    fn dispatch_buffered(&mut self) -> Result<usize, SessionError> {
        let limits = self.dispatcher.limits().protocol;
        loop {
            match decode(self.input.pending(), &limits)? {
                Decoded::NeedMore(n) => return Ok(n),
                Decoded::Request(request, used) => {
                    self.dispatcher.handle(request)?;
                    self.input.consume(used);
                }
            }
        }
    }
}

impl<B: Backend> Drop for Session<B> {
    fn drop(&mut self) {
        self.dispatcher.teardown();
    }
}
