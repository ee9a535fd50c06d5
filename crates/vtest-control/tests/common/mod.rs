//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::fs::File;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{self, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use vtest_control::Channel;

/// Sends `bytes` and `fds` as one packet, bypassing `Channel::send`'s checks.
pub fn raw_send(channel: &Channel, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len())) + 8];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(cmsg.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = net::sendmsg(
        channel,
        &[IoSlice::new(bytes)],
        &mut cmsg,
        SendFlags::NOSIGNAL,
    )
    .expect("raw sendmsg");
    assert_eq!(sent, bytes.len());
}

/// `n` fresh fds (on /dev/null).
pub fn open_fds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| File::open("/dev/null").expect("open /dev/null").into())
        .collect()
}

pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}

/// Open fds of this process.
pub fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}
