//! Sealed, memfd-backed shared memory handed to clients.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::error::RendererError;

/// A memfd of fixed size, sealed against resizing and mapped read/write
/// `MAP_SHARED` into this process.
///
/// The fd is meant to be sent to a client, which maps it too. The seals
/// (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) are applied before the fd
/// leaves this process, so a client can never truncate the file under our
/// mapping (which would make our accesses fault with `SIGBUS`) nor remove the
/// seals.
///
/// # Concurrent access
///
/// The client may write to the memory at any time, including while a slice
/// returned by [`SharedMemory::as_slice`] or [`SharedMemory::as_mut_slice`]
/// is alive. The contents are plain bytes with no validity invariant, so the
/// worst a racing client can cause is torn or unexpected values; callers must
/// treat every byte read from it as untrusted and may not rely on values being
/// stable between two reads. This is the same contract as the reference
/// `virgl_test_server` and as virglrenderer itself, which reads and writes
/// the mapping through the attached `iovec`.
#[derive(Debug)]
pub struct SharedMemory {
    /// The memfd, until it is handed to the client ([`SharedMemory::take_fd`]):
    /// the mapping does not need it, and a worker with thousands of live
    /// resources must not hold thousands of fds.
    fd: Option<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `SharedMemory` exclusively owns its fd and its mapping (like a
// `Vec<u8>` owns its buffer); nothing in it is tied to the creating thread,
// and the mapping is only unmapped in `Drop`.
unsafe impl Send for SharedMemory {}

impl SharedMemory {
    /// Creates a sealed shared mapping of `len` bytes.
    ///
    /// `name` is only a debugging label (visible in `/proc/*/fd`); it must not
    /// contain NUL bytes. `len` must be non-zero and fit in `off_t`.
    pub fn new(name: &str, len: usize) -> Result<Self, RendererError> {
        let nz_len =
            NonZeroUsize::new(len).ok_or(RendererError::InvalidArgument("shared memory size 0"))?;
        let off_len = libc::off_t::try_from(len)
            .map_err(|_| RendererError::InvalidArgument("shared memory size too large"))?;

        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(RendererError::Shm)?;
        nix::unistd::ftruncate(&fd, off_len).map_err(RendererError::Shm)?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(RendererError::Shm)?;

        // SAFETY: a fresh shared mapping of a file we own; it does not alias
        // any Rust object, and the file is sealed at exactly `len` bytes so
        // every page of the mapping stays backed for its whole lifetime.
        let ptr = unsafe {
            mmap(
                None,
                nz_len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(RendererError::Shm)?;

        Ok(Self {
            fd: Some(fd),
            ptr: ptr.cast(),
            len,
        })
    }

    /// The memfd, to be sent to the client.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Takes the memfd out (to send it to the client and close it); the
    /// mapping stays valid.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// Size of the mapping in bytes (never 0).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a zero-sized mapping cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the mapping, for building the `iovec` handed to virglrenderer.
    pub(crate) fn as_ptr(&self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }

    /// The mapping as bytes. See the type docs about concurrent client writes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes owned by
        // `self`; the borrow of `self` keeps it mapped. Other writers are only
        // the client process and virglrenderer (see the type docs: plain
        // bytes, same contract as the reference server).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapping as mutable bytes. See the type docs about concurrent
    /// client writes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and the mapping is writable; `&mut self`
        // guarantees no other Rust reference into it exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `new`,
        // which is unmapped only here; no slice can outlive `self`.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::warn!(error = %e, len = self.len, "munmap of shared memory failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;
    use nix::sys::uio::pread;

    #[test]
    fn zero_length_is_rejected() {
        assert!(matches!(
            SharedMemory::new("zero", 0),
            Err(RendererError::InvalidArgument(_))
        ));
    }

    #[test]
    fn name_with_nul_is_rejected() {
        assert!(SharedMemory::new("a\0b", 16).is_err());
    }

    #[test]
    fn is_sealed_against_resize_and_unsealing() {
        let shm = SharedMemory::new("sealed", 4096).unwrap();
        let seals = fcntl(shm.fd().unwrap(), FcntlArg::F_GET_SEALS).unwrap();
        let want = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        assert_eq!(seals & want.bits(), want.bits(), "seals = {seals:#x}");
        assert_eq!(
            nix::unistd::ftruncate(shm.fd().unwrap(), 0),
            Err(Errno::EPERM),
            "shrinking must be refused"
        );
        assert_eq!(
            nix::unistd::ftruncate(shm.fd().unwrap(), 8192),
            Err(Errno::EPERM),
            "growing must be refused"
        );
        assert_eq!(
            fcntl(
                shm.fd().unwrap(),
                FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)
            ),
            Err(Errno::EPERM),
            "no further seals may be added"
        );
        let st = nix::sys::stat::fstat(shm.fd().unwrap()).unwrap();
        assert_eq!(st.st_size, 4096);
    }

    #[test]
    fn fd_is_cloexec() {
        let shm = SharedMemory::new("cloexec", 64).unwrap();
        let flags = fcntl(shm.fd().unwrap(), FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn writes_are_visible_through_the_fd() {
        let mut shm = SharedMemory::new("visible", 8192).unwrap();
        assert_eq!(shm.len(), 8192);
        assert!(!shm.is_empty());
        assert!(shm.as_slice().iter().all(|&b| b == 0));
        for (i, b) in shm.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let mut buf = vec![0u8; 8192];
        assert_eq!(pread(shm.fd().unwrap(), &mut buf, 0).unwrap(), 8192);
        assert_eq!(buf, shm.as_slice());

        // A second, independent mapping of the same fd sees the same bytes,
        // and writes through it are visible through ours (what a client does).
        let len = NonZeroUsize::new(8192).unwrap();
        // SAFETY: a fresh shared mapping of the sealed memfd, unmapped below.
        let other = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                shm.fd().unwrap(),
                0,
            )
        }
        .unwrap();
        // SAFETY: `other` maps 8192 readable and writable bytes.
        let other_slice =
            unsafe { std::slice::from_raw_parts_mut(other.as_ptr().cast::<u8>(), 8192) };
        assert_eq!(other_slice, shm.as_slice());
        other_slice[100] = 0xAB;
        assert_eq!(shm.as_slice()[100], 0xAB);
        // SAFETY: unmapping the mapping created above; `other_slice` is dead.
        unsafe { munmap(other, 8192) }.unwrap();
    }

    #[test]
    fn can_move_to_another_thread() {
        let mut shm = SharedMemory::new("send", 16).unwrap();
        shm.as_mut_slice()[0] = 7;
        let v = std::thread::spawn(move || shm.as_slice()[0])
            .join()
            .unwrap();
        assert_eq!(v, 7);
    }
}
