//! The client-facing socket.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::BrokerError;

/// A bound, non-blocking listener that removes its socket file on drop.
pub(crate) struct Listener {
    pub(crate) socket: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path`, replacing a stale socket file but never a live server's.
    pub(crate) fn bind(path: &Path) -> Result<Listener, BrokerError> {
        if let Ok(meta) = fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                if UnixStream::connect(path).is_ok() {
                    return Err(BrokerError::AddressInUse(path.to_owned()));
                }
                let _ = fs::remove_file(path);
            }
        }
        let bind_error = |source| BrokerError::Bind {
            path: path.to_owned(),
            source,
        };
        let socket = UnixListener::bind(path).map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        Ok(Listener {
            socket,
            path: path.to_owned(),
        })
    }

    /// The next pending connection, if any.
    pub(crate) fn accept(&self) -> std::io::Result<Option<UnixStream>> {
        match self.socket.accept() {
            Ok((stream, _)) => {
                // Workers read with their own readiness loop; the stream
                // must be blocking for their reply writes.
                stream.set_nonblocking(false)?;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
