//! Serving one client: the event loop around the dispatcher.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vtest_control::SessionStats;
use vtest_protocol::{decode, CommandId, Decoded};

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
        self.run_with_ticks(|_| {})
    }

    /// Like [`Session::run`], calling `tick` with the current counters about
    /// once per `TICK` (a second) while the client is active (for the broker's status
    /// and hang watchdog).
    pub fn run_with_ticks(
        &mut self,
        mut tick: impl FnMut(SessionStats),
    ) -> Result<(), SessionError> {
        let idle = self.dispatcher.limits().idle_timeout;
        let mut last_request = Instant::now();
        let mut next_tick = Instant::now() + TICK;
        let mut reported = self.stats();
        loop {
            self.dispatcher.flush()?;
            let now = Instant::now();
            if now >= next_tick {
                let stats = self.stats();
                if stats != reported {
                    tick(stats.clone());
                    reported = stats;
                }
                next_tick = now + TICK;
            }
            if let Some(idle) = idle {
                let quiet = now.saturating_duration_since(last_request);
                if quiet >= idle {
                    return Err(SessionError::LimitExceeded {
                        limit: "idle_timeout_ms",
                        value: quiet.as_millis() as u64,
                        max: idle.as_millis() as u64,
                    });
                }
            }
            let mut deadline = next_tick;
            if let Some(idle) = idle {
                deadline = deadline.min(last_request + idle);
            }
            if let Some(wait) = self.dispatcher.next_deadline() {
                deadline = deadline.min(wait);
            }
            let timeout = poll_timeout(deadline);
            let (client_ready, fence_ready) = self.wait_for_events(timeout)?;
            if client_ready {
                last_request = Instant::now();
            }
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

    /// Blocks until the client or the renderer's fence fd is readable.
    fn wait_for_events(&self, timeout: PollTimeout) -> Result<(bool, bool), SessionError> {
        // Nothing is asked of the liveness fd (poll reports POLLHUP and POLLERR
        // whatever is asked): its traffic belongs to the renderer.
        let mut fds = Vec::with_capacity(3);
        let alive_at = self.dispatcher.liveness_fd().map(|fd| {
            fds.push(PollFd::new(fd, PollFlags::empty()));
            fds.len() - 1
        });
        fds.push(PollFd::new(self.input.as_fd(), PollFlags::POLLIN));
        let client_at = fds.len() - 1;
        if let Some(fd) = self.dispatcher.fence_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((false, false)),
            Err(e) => return Err(SessionError::Io(e.into())),
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if alive_at.is_some_and(|i| ready(&fds[i])) {
            return Err(SessionError::BackendGone);
        }
        Ok((
            ready(&fds[client_at]),
            fds.get(client_at + 1).is_some_and(ready),
        ))
    }

    /// Reads what arrived and runs every complete request. False on EOF.
    fn read_and_dispatch(&mut self) -> Result<bool, SessionError> {
        let mut want = 0;
        loop {
            let filled = self.input.fill(want).map_err(|e| {
                // Growing the buffer for the pending request can fail at the
                // memory limit: blame that request, not the socket.
                match command_of(self.input.pending()) {
                    Some(command) if e.raw_os_error() == Some(nix::libc::ENOMEM) => {
                        SessionError::system(command, e)
                    }
                    _ => SessionError::Io(e),
                }
            })?;
            match filled {
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
                    self.dispatcher.flush_over(MAX_QUEUED_REPLIES)?;
                }
            }
        }
    }
}

/// Replies queued before they are written out within one batch of requests.
const MAX_QUEUED_REPLIES: usize = 64 << 10;

/// How often [`Session::run_with_ticks`] reports.
pub const TICK: Duration = Duration::from_secs(1);

fn poll_timeout(deadline: Instant) -> PollTimeout {
    let ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        + 1;
    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
}

impl<B: Backend> Drop for Session<B> {
    fn drop(&mut self) {
        self.dispatcher.teardown();
    }
}

/// The command id in the header at the start of `pending`, if complete.
fn command_of(pending: &[u8]) -> Option<CommandId> {
    let id = pending.get(4..8)?;
    CommandId::from_u32(u32::from_le_bytes([id[0], id[1], id[2], id[3]]))
}
