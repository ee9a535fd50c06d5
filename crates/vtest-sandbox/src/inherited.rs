//! File descriptors passed by systemd socket activation (`LISTEN_FDS`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first passed fd (`SD_LISTEN_FDS_START`).
const FIRST: i32 = 3;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the sockets systemd passed to this process, with their
/// `FileDescriptorName`s, and removes the variables so that no child
/// inherits them. Empty unless `LISTEN_PID` is this process. Only the first
/// call returns anything.
pub fn listen_fds() -> Vec<(OwnedFd, Option<String>)> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if !ours || !(1..=64).contains(&count) {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            let raw = FIRST + i;
            // Only fds that are really open are adopted, close-on-exec.
            // SAFETY: F_GETFD/F_SETFD on an fd number touch no memory.
            if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return None;
            }
            // SAFETY: systemd passed fds FIRST..FIRST+count to this process
            // (LISTEN_PID matched), the fd is open (F_GETFD succeeded), and
            // TAKEN guarantees each is adopted once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            Some((fd, names.get(i as usize).cloned().filter(|n| !n.is_empty())))
        })
        .collect()
}
