//! [`SharedMemory`]: a sealed memfd mapping, copied in and out with volatile
//! accesses only.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::error::ShmError;

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
/// The client may write to the memory at any time. A Rust reference (`&[u8]`
/// or `&mut [u8]`) into memory that another process writes concurrently is
/// undefined behaviour by Rust's rules (the compiler may assume it does not
/// change), so none is ever made: Rust code reaches the bytes only through
/// [`SharedMemory::read_at`] and [`SharedMemory::write_at`], which copy with
/// volatile accesses (as `vm-memory`'s `VolatileSlice` does). Every byte
/// read is untrusted and may differ between two reads. C code
/// (virglrenderer) reaches the mapping through [`SharedMemory::as_ptr`].
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
    pub fn new(name: &str, len: usize) -> Result<Self, ShmError> {
        let nz_len = NonZeroUsize::new(len).ok_or(ShmError::ZeroSize)?;
        let off_len = nix::libc::off_t::try_from(len).map_err(|_| ShmError::TooLarge(len))?;

        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(system("memfd_create"))?;
        nix::unistd::ftruncate(&fd, off_len).map_err(system("ftruncate"))?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(system("F_ADD_SEALS"))?;

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
        .map_err(system("mmap"))?;

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

    /// Start of the mapping (`len` bytes), for the `iovec` handed to C
    /// (virglrenderer). Never make a Rust reference from it: the client
    /// writes the memory while we hold it.
    pub fn as_ptr(&self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }

    /// The byte range `at..at + n`, if it lies inside the mapping.
    fn range(&self, at: usize, n: usize) -> Result<*mut u8, ShmError> {
        match at.checked_add(n) {
            Some(end) if end <= self.len => {
                // SAFETY: `at <= len`, so the offset stays inside (or one
                // past the end of) the mapping.
                Ok(unsafe { self.ptr.as_ptr().add(at) })
            }
            _ => Err(ShmError::OutOfRange {
                at,
                len: n,
                size: self.len,
            }),
        }
    }

    /// Copies `dst.len()` bytes from offset `at` of the mapping, with
    /// volatile reads (the client may be writing them at the same time).
    pub fn read_at(&self, at: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        let src = self.range(at, dst.len())?;
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: `src + i` lies inside the live mapping (checked by
            // `range`); a volatile read of a plain byte has no validity
            // requirement and makes no reference into shared memory.
            *d = unsafe { src.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copies `src` to offset `at` of the mapping, with volatile writes.
    pub fn write_at(&self, at: usize, src: &[u8]) -> Result<(), ShmError> {
        let dst = self.range(at, src.len())?;
        for (i, s) in src.iter().enumerate() {
            // SAFETY: as in `read_at`; the mapping is writable (PROT_WRITE).
            unsafe { dst.add(i).write_volatile(*s) };
        }
        Ok(())
    }

    /// The whole mapping, copied out (tests, small resources).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // The whole mapping is always in range.
        let _ = self.read_at(0, &mut v);
        v
    }
}

/// Maps the error of the system call `call`.
fn system(call: &'static str) -> impl FnOnce(nix::Error) -> ShmError {
    move |source| ShmError::System { call, source }
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
            Err(ShmError::ZeroSize)
        ));
    }

    #[test]
    fn name_with_nul_is_rejected() {
        let e = SharedMemory::new("a\0b", 16).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EINVAL), "{e:?}");
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
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn writes_are_visible_through_the_fd() {
        let shm = SharedMemory::new("visible", 8192).unwrap();
        assert_eq!(shm.len(), 8192);
        assert!(!shm.is_empty());
        assert!(shm.to_vec().iter().all(|&b| b == 0));
        let pattern: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
        shm.write_at(0, &pattern).unwrap();
        let mut buf = vec![0u8; 8192];
        assert_eq!(pread(shm.fd().unwrap(), &mut buf, 0).unwrap(), 8192);
        assert_eq!(buf, shm.to_vec());
        // Out of range, or wrapping, is refused; the last byte is in range.
        assert!(matches!(
            shm.write_at(8190, &[1, 2, 3]),
            Err(ShmError::OutOfRange {
                at: 8190,
                len: 3,
                size: 8192
            })
        ));
        assert!(shm.read_at(usize::MAX, &mut [0u8; 2]).is_err());
        shm.write_at(8191, &[9]).unwrap();

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
        let other_byte = |i: usize| other.as_ptr().cast::<u8>().wrapping_add(i);
        // SAFETY: `other` maps 8192 readable and writable bytes; volatile
        // accesses, as a client's writes are concurrent in real use.
        unsafe { other_byte(100).write_volatile(0xAB) };
        let mut b = [0u8; 1];
        shm.read_at(100, &mut b).unwrap();
        assert_eq!(b[0], 0xAB);
        shm.write_at(200, &[0xCD]).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { other_byte(200).read_volatile() }, 0xCD);
        // SAFETY: unmapping the mapping created above; no pointer into it is used again.
        unsafe { munmap(other, 8192) }.unwrap();
    }

    #[test]
    fn can_move_to_another_thread() {
        let shm = SharedMemory::new("send", 16).unwrap();
        shm.write_at(0, &[7]).unwrap();
        let v = std::thread::spawn(move || shm.to_vec()[0]).join().unwrap();
        assert_eq!(v, 7);
    }
}
