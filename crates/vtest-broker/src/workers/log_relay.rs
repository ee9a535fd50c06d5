//! A worker's stderr relayed into the broker's log: line by line, long
//! lines cut, control characters escaped, at most
//! [`MAX_LOG_BYTES_PER_SEC`] a second (past it the pipe is left alone and
//! the worker blocks on its own writes), so that a compromised worker can
//! neither forge broker lines nor flood the log.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use tracing::info;

/// Bytes of a worker's stderr relayed per second.
pub(crate) const MAX_LOG_BYTES_PER_SEC: usize = 64 << 10;
/// Longer lines are cut into pieces of this size.
pub(crate) const MAX_LOG_LINE: usize = 2048;

/// The read end of a worker's stderr (non-blocking).
pub(crate) struct WorkerLog {
    fd: OwnedFd,
    lines: LineSplitter,
    budget: ByteBudget,
}

/// What [`WorkerLog::relay`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// All there was for now, or the second's budget is spent.
    More,
    /// The worker closed its stderr: everything was relayed.
    Closed,
}

impl WorkerLog {
    pub(crate) fn new(fd: OwnedFd, now: Instant) -> WorkerLog {
        WorkerLog {
            fd,
            lines: LineSplitter::default(),
            budget: ByteBudget::new(now),
        }
    }

    /// The fd to poll, unless this second's budget is spent.
    pub(crate) fn pollable(&self, now: Instant) -> Option<BorrowedFd<'_>> {
        (!self.budget.exhausted(now)).then(|| self.fd.as_fd())
    }

    /// A fresh budget: the worker ended, and its last lines come before
    /// the line that says so.
    pub(crate) fn unthrottle(&mut self, now: Instant) {
        self.budget = ByteBudget::new(now);
    }

    /// Relays what worker `pid` wrote, within the budget.
    pub(crate) fn relay(&mut self, pid: u32) -> Relayed {
        let mut buf = [0u8; 16 << 10];
        loop {
            let now = Instant::now();
            self.budget.refresh(now);
            if self.budget.exhausted(now) {
                return Relayed::More;
            }
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    self.finish(pid);
                    return Relayed::Closed;
                }
                Ok(n) => {
                    self.budget.spend(n);
                    self.lines.push(&buf[..n], |line| relay_line(pid, line));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Relayed::More, // EAGAIN: all read for now.
            }
        }
    }

    /// Relays the start of a line the worker never finished.
    pub(crate) fn finish(&mut self, pid: u32) {
        relay_line(pid, &self.lines.take_rest());
    }
}

/// Cuts a byte stream into lines (with their `\n`) and pieces of at most
/// [`MAX_LOG_LINE`] bytes.
#[derive(Default)]
pub(crate) struct LineSplitter {
    /// The start of a line not yet complete.
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Adds `bytes`; `line` gets each complete line, then each full piece.
    pub(crate) fn push(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=end).collect();
            line(&complete);
        }
        while self.partial.len() >= MAX_LOG_LINE {
            let piece: Vec<u8> = self.partial.drain(..MAX_LOG_LINE).collect();
            line(&piece);
        }
    }

    /// What is left of an unfinished line.
    pub(crate) fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }
}

/// Bytes allowed per one-second window.
pub(crate) struct ByteBudget {
    start: Instant,
    used: usize,
}

impl ByteBudget {
    pub(crate) fn new(now: Instant) -> ByteBudget {
        ByteBudget {
            start: now,
            used: 0,
        }
    }

    /// Whether no bytes are left at `now` (a window lasts a second).
    pub(crate) fn exhausted(&self, now: Instant) -> bool {
        self.used >= MAX_LOG_BYTES_PER_SEC
            && now.duration_since(self.start) < Duration::from_secs(1)
    }

    /// Starts a new window once the last one is over.
    pub(crate) fn refresh(&mut self, now: Instant) {
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            *self = ByteBudget::new(now);
        }
    }

    pub(crate) fn spend(&mut self, bytes: usize) {
        self.used += bytes;
    }
}

/// One line of a worker's stderr as the broker logs it: trimmed, control
/// characters escaped; `None` for a blank line.
pub(crate) fn relay_text(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    (!text.is_empty()).then(|| vtest_control::printable(text))
}

fn relay_line(pid: u32, line: &[u8]) {
    if let Some(text) = relay_text(line) {
        info!(worker = pid, "| {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(splitter: &mut LineSplitter, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        splitter.push(bytes, |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_relayed_when_complete() {
        let mut s = LineSplitter::default();
        assert!(split(&mut s, b"first li").is_empty());
        assert_eq!(
            split(&mut s, b"ne\nsecond\nthi"),
            [b"first line\n".to_vec(), b"second\n".to_vec()]
        );
        assert_eq!(split(&mut s, b"rd\n"), [b"third\n".to_vec()]);
        assert!(s.take_rest().is_empty());
        split(&mut s, b"unfinished");
        assert_eq!(s.take_rest(), b"unfinished");
        assert!(s.take_rest().is_empty());
    }

    #[test]
    fn long_lines_are_cut_into_pieces() {
        let mut s = LineSplitter::default();
        let long = vec![b'a'; 2 * MAX_LOG_LINE + 10];
        let pieces = split(&mut s, &long);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() == MAX_LOG_LINE));
        assert_eq!(s.take_rest().len(), 10);
        // A line break within a long write is honoured first.
        let mut bytes = b"short\n".to_vec();
        bytes.extend(vec![b'b'; MAX_LOG_LINE]);
        let pieces = split(&mut s, &bytes);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0], b"short\n");
        assert_eq!(pieces[1].len(), MAX_LOG_LINE);
    }

    #[test]
    fn relayed_text_cannot_forge_or_colour_lines() {
        assert_eq!(
            relay_text(b"2001-01-01T00:00:00Z  INFO stopped\x1b[2J\r\n").as_deref(),
            Some("2001-01-01T00:00:00Z  INFO stopped\\u{1b}[2J")
        );
        assert_eq!(relay_text(b"a\x00b\tc").as_deref(), Some("a\\u{0}b\\tc"));
        assert_eq!(relay_text(b"  \n").as_deref(), None);
        assert_eq!(
            relay_text(b"bad \xff utf-8").as_deref(),
            Some("bad \u{fffd} utf-8")
        );
    }

    #[test]
    fn the_budget_is_per_second() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut b = ByteBudget::new(t0);
        assert!(!b.exhausted(t0));
        b.spend(MAX_LOG_BYTES_PER_SEC - 1);
        assert!(!b.exhausted(ms(10)));
        b.spend(1);
        assert!(b.exhausted(ms(20)));
        b.refresh(ms(999));
        assert!(b.exhausted(ms(999)));
        // Over when the second is, even before a refresh.
        assert!(!b.exhausted(ms(1000)));
        b.refresh(ms(1000));
        assert!(!b.exhausted(ms(1000)));
        b.spend(10 * MAX_LOG_BYTES_PER_SEC);
        assert!(b.exhausted(ms(1500)));
        b.refresh(ms(1999));
        assert!(b.exhausted(ms(1999)));
        b.refresh(ms(2000));
        assert!(!b.exhausted(ms(2000)));
    }

    #[test]
    fn a_pipe_is_relayed_until_its_writer_closes_it() {
        let (read, write) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut log = WorkerLog::new(read, Instant::now());
        assert!(log.pollable(Instant::now()).is_some());
        nix::unistd::write(&write, b"one\ntw").unwrap();
        assert_eq!(log.relay(1), Relayed::More);
        assert_eq!(log.lines.partial, b"tw");
        drop(write);
        assert_eq!(log.relay(1), Relayed::Closed);
        assert!(log.lines.partial.is_empty());
    }

    #[test]
    fn a_worker_over_its_budget_is_not_polled_until_the_next_second() {
        let (read, write) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let t0 = Instant::now();
        let mut log = WorkerLog::new(read, t0);
        log.budget.spend(MAX_LOG_BYTES_PER_SEC);
        assert!(log.pollable(t0).is_none());
        nix::unistd::write(&write, b"late\n").unwrap();
        assert_eq!(log.relay(1), Relayed::More);
        assert!(log.lines.partial.is_empty(), "nothing read over budget");
        log.unthrottle(Instant::now());
        assert!(log.pollable(Instant::now()).is_some());
    }
}
