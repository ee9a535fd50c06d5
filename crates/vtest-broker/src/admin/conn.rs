//! Admin connections, driven by the broker's event loop without ever
//! blocking it: each reads its request as it arrives, gets its answer
//! written as the socket takes it, and is closed when done or at its
//! deadline. At most [`MAX_OPEN`] at once; more are closed at accept, with
//! one log line per streak, so that silent or slow admin peers cost the
//! broker a few fds and nothing else.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use tracing::{debug, info, warn};

use super::access::Peer;
use super::STATUS_REQUEST;

/// Admin connections open at once.
pub(crate) const MAX_OPEN: usize = 16;
/// The longest request line (the one there is, `status`, fits many times).
const MAX_REQUEST: usize = 64;
/// From accept to a full request.
const REQUEST_TIME: Duration = Duration::from_millis(500);
/// From the request to the last byte of the answer taken by the socket.
const REPLY_TIME: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("closed before a full request")]
    ClosedEarly,
    #[error("admin connection I/O")]
    Io(#[from] std::io::Error),
    #[error("the answer was not taken within {} s", REPLY_TIME.as_secs())]
    ReplyTimeout,
    #[error("no full request within {} ms", REQUEST_TIME.as_millis())]
    RequestTimeout,
    #[error("a request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("unknown admin request {0:?}")]
    Unknown(String),
}

enum State {
    Reading(Vec<u8>),
    /// A full request: the broker owes it an answer.
    Requested,
    Writing {
        reply: Vec<u8>,
        at: usize,
    },
    Done,
}

struct Connection {
    id: u64,
    stream: UnixStream,
    peer: Peer,
    state: State,
    deadline: Instant,
}

impl Connection {
    fn read(&mut self) -> Result<(), ConnError> {
        let State::Reading(line) = &mut self.state else {
            return Ok(());
        };
        let mut chunk = [0u8; MAX_REQUEST + 1];
        let eof = loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    line.extend_from_slice(&chunk[..n]);
                    if line.contains(&b'\n') || line.len() > MAX_REQUEST {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        // A request is a line, or what came before the peer's end of writing.
        let end = match line.iter().position(|&b| b == b'\n') {
            Some(n) if n <= MAX_REQUEST => n,
            None if line.len() <= MAX_REQUEST => match (eof, line.is_empty()) {
                (false, _) => return Ok(()),
                (true, true) => return Err(ConnError::ClosedEarly),
                (true, false) => line.len(),
            },
            _ => return Err(ConnError::TooLong),
        };
        let request = String::from_utf8_lossy(&line[..end]).trim().to_string();
        if request != STATUS_REQUEST {
            return Err(ConnError::Unknown(request));
        }
        self.state = State::Requested;
        Ok(())
    }

    fn write(&mut self) -> Result<(), ConnError> {
        let State::Writing { reply, at } = &mut self.state else {
            return Ok(());
        };
        while *at < reply.len() {
            match self.stream.write(&reply[*at..]) {
                Ok(n) => *at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.state = State::Done;
        Ok(())
    }

    fn fail(&mut self, e: &ConnError) {
        let mut error = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            error = format!("{error}: {s}");
            source = s.source();
        }
        debug!(
            peer_pid = self.peer.pid,
            uid = self.peer.uid,
            error,
            "admin connection closed"
        );
        self.state = State::Done;
    }
}

/// The open admin connections, each named by an id of its own.
#[derive(Default)]
pub(crate) struct Connections {
    open: Vec<Connection>,
    next_id: u64,
    /// Connections closed at accept since the last one kept.
    refused: u64,
}

impl Connections {
    /// Keeps an admitted peer's connection, or closes it at once when
    /// [`MAX_OPEN`] are open.
    pub(crate) fn add(&mut self, stream: UnixStream, peer: Peer, now: Instant) {
        if self.open.len() >= MAX_OPEN {
            if self.refused == 0 {
                warn!(
                    open = MAX_OPEN,
                    peer_pid = peer.pid,
                    uid = peer.uid,
                    "admin connections at their limit; closing new ones until one ends"
                );
            }
            self.refused += 1;
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            debug!(error = %e, "admin connection");
            return;
        }
        if self.refused > 0 {
            info!(
                refused = self.refused,
                "admin connections below their limit again"
            );
            self.refused = 0;
        }
        self.next_id += 1;
        self.open.push(Connection {
            id: self.next_id,
            stream,
            peer,
            state: State::Reading(Vec::new()),
            deadline: now + REQUEST_TIME,
        });
    }

    /// Each connection's id, fd and what it waits for.
    pub(crate) fn poll_fds(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>, PollFlags)> {
        self.open.iter().filter_map(|c| {
            let flags = match c.state {
                State::Reading(_) => PollFlags::POLLIN,
                State::Writing { .. } => PollFlags::POLLOUT,
                State::Requested | State::Done => return None,
            };
            Some((c.id, c.stream.as_fd(), flags))
        })
    }

    /// Works on connection `id` after poll; true when it now holds a full
    /// request, to be given its answer with [`Connections::answer`].
    pub(crate) fn ready(&mut self, id: u64) -> bool {
        let Some(c) = self.open.iter_mut().find(|c| c.id == id) else {
            return false;
        };
        let done = match c.state {
            State::Reading(_) => c.read(),
            State::Writing { .. } => c.write(),
            State::Requested | State::Done => Ok(()),
        };
        if let Err(e) = done {
            c.fail(&e);
        }
        matches!(c.state, State::Requested)
    }

    /// Starts writing `reply` to connection `id`, as much as the socket takes.
    pub(crate) fn answer(&mut self, id: u64, reply: Vec<u8>, now: Instant) {
        let Some(c) = self.open.iter_mut().find(|c| c.id == id) else {
            return;
        };
        c.state = State::Writing { reply, at: 0 };
        c.deadline = now + REPLY_TIME;
        if let Err(e) = c.write() {
            c.fail(&e);
        }
    }

    /// When the next connection runs out of time.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.open.iter().map(|c| c.deadline).min()
    }

    /// Closes finished connections and those past their deadline.
    pub(crate) fn sweep(&mut self, now: Instant) {
        for c in &mut self.open {
            if now >= c.deadline {
                let e = match c.state {
                    State::Reading(_) => ConnError::RequestTimeout,
                    State::Writing { .. } | State::Requested => ConnError::ReplyTimeout,
                    State::Done => continue,
                };
                c.fail(&e);
            }
        }
        self.open.retain(|c| !matches!(c.state, State::Done));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            pid: 1,
            uid: 0,
            gid: 0,
        }
    }

    fn pair(conns: &mut Connections, now: Instant) -> UnixStream {
        let (ours, theirs) = UnixStream::pair().unwrap();
        conns.add(ours, peer(), now);
        theirs
    }

    #[test]
    fn a_request_in_pieces_is_answered_in_full() {
        let now = Instant::now();
        let mut conns = Connections::default();
        let mut client = pair(&mut conns, now);
        client.write_all(b"sta").unwrap();
        assert!(!conns.ready(1));
        client.write_all(b"tus\n").unwrap();
        assert!(conns.ready(1));
        // Larger than a socket buffer: written as the peer reads.
        let reply = vec![b'x'; 4 << 20];
        conns.answer(1, reply.clone(), now);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        while conns.len() > 0 {
            conns.ready(1);
            conns.sweep(now);
        }
        assert!(reader.join().unwrap() == reply);
    }

    #[test]
    fn silent_unknown_and_long_requests_are_closed() {
        let now = Instant::now();
        let mut conns = Connections::default();
        let _silent = pair(&mut conns, now);
        let mut unknown = pair(&mut conns, now);
        let mut long = pair(&mut conns, now);
        let mut half = pair(&mut conns, now);
        unknown.write_all(b"shutdown\n").unwrap();
        long.write_all(&[b's'; 100]).unwrap();
        half.write_all(b"status").unwrap();
        half.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!conns.ready(1) && !conns.ready(2) && !conns.ready(3));
        assert!(conns.ready(4), "a request ended by the peer's shutdown");
        conns.sweep(now);
        assert_eq!(conns.len(), 2, "unknown and overlong requests closed");
        // An answer the peer does not read: more than its socket takes.
        conns.answer(4, vec![b'x'; 4 << 20], now);
        conns.sweep(now + REQUEST_TIME);
        assert_eq!(conns.len(), 1, "the silent one closed at its deadline");
        conns.sweep(now + REPLY_TIME);
        assert_eq!(conns.len(), 0, "the unread answer closed at its deadline");
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_at_once() {
        let now = Instant::now();
        let mut conns = Connections::default();
        let held: Vec<UnixStream> = (0..MAX_OPEN + 3).map(|_| pair(&mut conns, now)).collect();
        assert_eq!(conns.len(), MAX_OPEN);
        assert_eq!(conns.refused, 3);
        let mut byte = [0u8; 1];
        assert_eq!((&held[MAX_OPEN]).read(&mut byte).unwrap(), 0, "closed");
        conns.sweep(now + REQUEST_TIME);
        let _again = pair(&mut conns, now);
        assert_eq!((conns.len(), conns.refused), (1, 0));
    }
}
