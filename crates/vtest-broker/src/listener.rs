//! Client-facing and admin sockets.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{umask, Mode};
use nix::unistd::{geteuid, Gid, Group, Uid, User};

use crate::BrokerError;

/// A bound, non-blocking listener that removes its socket file on drop.
#[derive(Debug)]
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
    /// Binds `path`, replacing a stale socket of ours but never a live
    /// server's nor anybody else's, then applies `perms`.
    ///
    /// The path must be safe to create a socket in: its directory is owned
    /// by root or by us and, if others may write to it, sticky (like /tmp),
    /// so nobody else can swap the socket for theirs; no symlink is ever
    /// followed (a symlink at the path is refused, and the mode and owner
    /// are set only after checking the path is our socket).
    pub(crate) fn bind(path: &Path, perms: &SocketPerms) -> Result<Listener, BrokerError> {
        let unsafe_path = |why: String| BrokerError::UnsafeSocketPath {
            path: path.to_owned(),
            why,
        };
        let bind_error = |source| BrokerError::Bind {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(bind_error)?;
            }
            check_directory(parent).map_err(unsafe_path)?;
        }
        if let Ok(meta) = fs::symlink_metadata(path) {
            let kind = meta.file_type();
            if kind.is_symlink() {
                return Err(unsafe_path(
                    "it is a symbolic link; refusing to follow it".into(),
                ));
            }
            if !kind.is_socket() {
                return Err(unsafe_path(
                    "something that is not a socket is there".into(),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(BrokerError::AddressInUse(path.to_owned()));
            }
            if meta.uid() != geteuid().as_raw() {
                return Err(unsafe_path(format!(
                    "a stale socket of uid {} is there; not removing somebody else's socket",
                    meta.uid()
                )));
            }
            let _ = fs::remove_file(path);
        }
        // Created unreachable for others (0600); opened up below once the
        // path is checked to be this socket.
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let socket = bound.map_err(bind_error)?;
        let listener = Listener {
            socket,
            path: path.to_owned(),
            ours: true,
        };
        listener.socket.set_nonblocking(true).map_err(bind_error)?;
        if !is_our_socket(path) {
            return Err(unsafe_path(
                "the socket was replaced right after bind".into(),
            ));
        }
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
        // Only our socket: never what a symlink there points to.
        if self.ours && is_our_socket(&self.path) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `path` (not following a symlink) is a socket owned by us.
fn is_our_socket(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_socket() && m.uid() == geteuid().as_raw())
}

/// A directory in which only root and we can replace entries: owned by one
/// of them, and sticky if others may write to it.
fn check_directory(dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let owner = meta.uid();
    if owner != 0 && owner != geteuid().as_raw() {
        return Err(format!(
            "its directory {} belongs to uid {owner}, who could replace the socket",
            dir.display()
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "its directory {} is writable by others (mode {:o}) and not sticky",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
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

/// Owner, group and mode of our socket at `path`, never through a symlink.
fn apply_perms(path: &Path, perms: &SocketPerms) -> std::io::Result<()> {
    use nix::fcntl::AtFlags;
    let uid = perms.owner.as_deref().map(resolve_uid).transpose()?;
    let gid = perms.group.as_deref().map(resolve_gid).transpose()?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchownat(AT_FDCWD, path, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(std::io::Error::from)?;
    }
    let mode = perms.mode.unwrap_or(0o777 & !current_umask());
    nix::sys::stat::fchmodat(
        AT_FDCWD,
        path,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

/// The process umask (read by setting it and back).
fn current_umask() -> u32 {
    let old = umask(Mode::from_bits_truncate(0o022));
    umask(old);
    old.bits()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    use super::*;

    /// Binding sets the process's umask for a moment: tests that bind or
    /// read it take turns.
    static UMASK: Mutex<()> = Mutex::new(());

    /// A fresh directory of ours under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vtest-broker-listener-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_socket_is_bound_with_its_mode_and_removed_on_drop() {
        let _umask = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = scratch("bind");
        let path = dir.join("s.sock");
        let perms = SocketPerms {
            mode: Some(0o660),
            ..SocketPerms::default()
        };
        let l = Listener::bind(&path, &perms).unwrap();
        assert!(is_our_socket(&path));
        assert_eq!(mode_of(&path), 0o660);
        assert_eq!(l.path(), path);
        assert!(
            l.accept().unwrap().is_none(),
            "non-blocking, nobody waiting"
        );
        let _peer = UnixStream::connect(&path).unwrap();
        assert!(l.accept().unwrap().is_some());
        // A live server's socket is never replaced.
        assert!(matches!(
            Listener::bind(&path, &perms),
            Err(BrokerError::AddressInUse(_))
        ));
        drop(l);
        assert!(!path.exists(), "removed on drop");
        // A stale socket of ours is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let l = Listener::bind(&path, &SocketPerms::default()).unwrap();
        assert_eq!(mode_of(&path), 0o777 & !current_umask());
        drop(l);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn symlinks_and_other_files_at_the_path_are_refused() {
        let _umask = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = scratch("refuse");
        let target = dir.join("victim");
        fs::write(&target, "x").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = Listener::bind(&link, &SocketPerms::default()).unwrap_err();
        assert!(e.to_string().contains("refusing the socket path"), "{e}");
        assert!(
            matches!(&e, BrokerError::UnsafeSocketPath { why, .. } if why.contains("symbolic link"))
        );
        assert_eq!(mode_of(&target), 0o600, "the target is untouched");
        let e = Listener::bind(&target, &SocketPerms::default()).unwrap_err();
        assert!(
            matches!(&e, BrokerError::UnsafeSocketPath { why, .. } if why.contains("not a socket"))
        );
        assert!(!is_our_socket(&target) && !is_our_socket(&link));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_directories_nobody_else_can_swap_sockets_in_are_used() {
        let dir = scratch("dirs");
        assert_eq!(check_directory(&dir), Ok(()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_directory(&dir).unwrap_err();
        assert!(
            e.contains("writable by others (mode 777) and not sticky"),
            "{e}"
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(check_directory(&dir), Ok(()), "sticky, like /tmp");
        let file = dir.join("f");
        fs::write(&file, "").unwrap();
        assert!(check_directory(&file)
            .unwrap_err()
            .contains("is not a directory"));
        if geteuid().is_root() {
            let theirs = dir.join("theirs");
            fs::create_dir(&theirs).unwrap();
            nix::unistd::chown(&theirs, Some(Uid::from_raw(65534)), None).unwrap();
            let e = check_directory(&theirs).unwrap_err();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn users_and_groups_by_name_or_number() {
        assert_eq!(resolve_uid("0").unwrap(), Uid::from_raw(0));
        assert_eq!(resolve_uid("root").unwrap(), Uid::from_raw(0));
        assert_eq!(resolve_uid("4242").unwrap(), Uid::from_raw(4242));
        assert!(resolve_uid("no-such-user-vtestd").is_err());
        assert_eq!(resolve_gid("0").unwrap(), Gid::from_raw(0));
        assert_eq!(resolve_gid("root").unwrap(), Gid::from_raw(0));
        assert!(resolve_gid("no-such-group-vtestd").is_err());
    }
}
