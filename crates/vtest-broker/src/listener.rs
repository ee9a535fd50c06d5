//! Client-facing and admin sockets.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

use crate::BrokerError;

/// A bound, non-blocking listener that removes its socket file on drop.
pub(crate) struct Listener {
    pub(crate) socket: UnixListener,
    path: PathBuf,
    /// Bound by us (removed on drop), or passed by systemd (kept: it
    /// outlives the service).
    ours: bool,
}

/// Ownership and mode of a socket file.
#[derive(Debug, Clone, Default)]
pub(crate) struct SocketPerms {
    pub(crate) mode: Option<u32>,
    pub(crate) owner: Option<String>,
    pub(crate) group: Option<String>,
}

impl Listener {
    /// Binds `path`, replacing a stale socket file but never a live server's,
    /// then applies `perms`.
    pub(crate) fn bind(path: &Path, perms: &SocketPerms) -> Result<Listener, BrokerError> {
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
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() && !parent.exists() {
                fs::create_dir_all(parent).map_err(bind_error)?;
            }
        }
        let socket = UnixListener::bind(path).map_err(bind_error)?;
        let listener = Listener {
            socket,
            path: path.to_owned(),
            ours: true,
        };
        listener.socket.set_nonblocking(true).map_err(bind_error)?;
        apply_perms(path, perms).map_err(bind_error)?;
        Ok(listener)
    }

    /// A listening socket passed by systemd; returns it with its path.
    pub(crate) fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<Listener> {
        let socket = UnixListener::from(fd);
        socket.set_nonblocking(true)?;
        let path = socket
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .ok_or_else(|| std::io::Error::other("passed socket has no path"))?;
        Ok(Listener {
            socket,
            path,
            ours: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next pending connection, if any.
    pub(crate) fn accept(&self) -> std::io::Result<Option<UnixStream>> {
        match self.socket.accept() {
            Ok((stream, _)) => Ok(Some(stream)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A user name or number.
pub(crate) fn resolve_uid(name: &str) -> std::io::Result<Uid> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Uid::from_raw(n));
    }
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid),
        _ => Err(std::io::Error::other(format!("no user {name:?}"))),
    }
}

/// A group name or number.
pub(crate) fn resolve_gid(name: &str) -> std::io::Result<Gid> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(std::io::Error::other(format!("no group {name:?}"))),
    }
}

fn apply_perms(path: &Path, perms: &SocketPerms) -> std::io::Result<()> {
    let uid = perms.owner.as_deref().map(resolve_uid).transpose()?;
    let gid = perms.group.as_deref().map(resolve_gid).transpose()?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid, gid).map_err(std::io::Error::from)?;
    }
    if let Some(mode) = perms.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
