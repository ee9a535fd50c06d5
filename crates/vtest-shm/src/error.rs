//! Why shared memory could not be created or accessed.

/// An error of [`crate::SharedMemory`].
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A copy would reach outside the mapping (or its end wraps `usize`).
    #[error("{len} bytes at offset {at} lie outside {size} bytes of shared memory")]
    OutOfRange {
        /// Offset of the copy.
        at: usize,
        /// Length of the copy.
        len: usize,
        /// Size of the mapping.
        size: usize,
    },
    /// A system call failed; the errno says whether a limit was hit.
    #[error("{call} failed")]
    System {
        /// The failing call (`memfd_create`, `ftruncate`, ...).
        call: &'static str,
        /// Its error.
        #[source]
        source: nix::Error,
    },
    /// The size does not fit in `off_t`.
    #[error("shared memory size {0} too large")]
    TooLarge(usize),
    /// A mapping of zero bytes was asked for.
    #[error("shared memory size 0")]
    ZeroSize,
}

impl ShmError {
    /// The errno of a failed system call, `None` for the other errors.
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            ShmError::System { source, .. } => Some(*source),
            _ => None,
        }
    }
}
