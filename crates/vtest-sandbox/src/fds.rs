//! File descriptors: a confined worker holds only the ones it was meant to.
//!
//! Whatever started the worker may have leaked descriptors into it (an fd
//! opened without close-on-exec by the broker's process, its supervisor or a
//! library): a compromised worker could use any of them, and nothing in the
//! later layers takes back a descriptor already open. They are closed before
//! anything else is confined.

use std::os::fd::RawFd;

use crate::SandboxError;

/// Closes every descriptor except stdin, stdout, stderr and `keep`.
///
/// Whoever holds one of the closed descriptors (an `OwnedFd`, a `File`) must
/// not use or drop it afterwards: list it in `keep` instead.
pub fn close_unexpected_fds(keep: &[RawFd]) -> Result<(), SandboxError> {
    let kept = kept(keep);
    for (first, last) in gaps(&kept) {
        // SAFETY: closes descriptors only; the caller's contract is that none
        // of them is in use (every fd in use is 0, 1, 2 or in `keep`).
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        if r < 0 {
            let errno = nix::errno::Errno::last();
            if errno == nix::errno::Errno::ENOSYS {
                // Before Linux 5.9: one by one, from the list of open ones.
                return close_listed(&kept);
            }
            return Err(SandboxError::CloseFds(errno));
        }
    }
    Ok(())
}

/// 0, 1, 2 and `keep`, sorted, without duplicates or negative numbers.
fn kept(keep: &[RawFd]) -> Vec<u32> {
    let mut kept: Vec<u32> = [0, 1, 2]
        .iter()
        .chain(keep)
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    kept.sort_unstable();
    kept.dedup();
    kept
}

/// The inclusive ranges of descriptor numbers between the kept ones, up to
/// the largest possible.
fn gaps(kept: &[u32]) -> Vec<(u32, u32)> {
    let mut gaps = Vec::new();
    let mut next = 0u32;
    for &fd in kept {
        if fd > next {
            gaps.push((next, fd - 1));
        }
        next = fd.saturating_add(1);
    }
    if next < u32::MAX {
        gaps.push((next, u32::MAX));
    }
    gaps
}

fn close_listed(kept: &[u32]) -> Result<(), SandboxError> {
    let open: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|source| SandboxError::Io {
            what: "list open fds",
            path: "/proc/self/fd".into(),
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open.into_iter().filter(|fd| !kept.contains(fd)) {
        // SAFETY: as above; the directory's own fd, listed too, is already
        // closed (EBADF, ignored).
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_skip_exactly_the_kept_fds() {
        assert_eq!(gaps(&kept(&[])), vec![(3, u32::MAX)]);
        assert_eq!(gaps(&kept(&[3])), vec![(4, u32::MAX)]);
        assert_eq!(
            gaps(&kept(&[7, 5, 5, -1])),
            vec![(3, 4), (6, 6), (8, u32::MAX)]
        );
        assert_eq!(
            gaps(&kept(&[i32::MAX])),
            vec![(3, i32::MAX as u32 - 1), (i32::MAX as u32 + 1, u32::MAX)]
        );
    }
}
