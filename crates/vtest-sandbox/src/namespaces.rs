//! Namespaces: a user namespace (so the rest can be set up without host
//! privileges), an empty network namespace, a private IPC namespace, and a
//! mount namespace whose root is a read-only tmpfs holding only read-only
//! binds of what rendering needs.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, getegid, geteuid, pivot_root};

use crate::{Layer, Outcome, SandboxError};

/// Where the new root is assembled (in our private mount namespace only).
const NEW_ROOT: &str = "/tmp";
const OLD_ROOT: &str = "oldroot";

/// What the worker may see of the host filesystem.
#[derive(Debug, Clone, Default)]
pub struct RootFs {
    /// Directories bound read-only (library and driver trees, sysfs paths).
    pub read_only_dirs: Vec<PathBuf>,
    /// Single files bound read-only (the loader cache, device nodes like /dev/null).
    pub read_only_files: Vec<PathBuf>,
    /// Device nodes bound read-write (render nodes).
    pub devices: Vec<PathBuf>,
    /// Directories bound read-write (the opt-in shader cache).
    pub writable_dirs: Vec<PathBuf>,
    /// Directories inside `read_only_dirs` shown empty (an empty read-only
    /// tmpfs over each): a worker's is [`crate::DRIRC_DIR`].
    pub hidden_dirs: Vec<PathBuf>,
    /// Files that may be executed (Landlock's execute right), each inside
    /// one of `read_only_dirs`: the render server and the dynamic loader
    /// for the render-server box; none for a worker, whose seccomp filter
    /// forbids `execve` anyway.
    pub executables: Vec<PathBuf>,
}

/// Enters new user, network and IPC namespaces, then the mount namespace
/// with the minimal root. Each step that the host forbids is skipped and
/// reported.
pub(crate) fn enter(
    root: &RootFs,
    profile: crate::Profile,
    report: &mut Vec<(Layer, Outcome)>,
) -> Result<(), SandboxError> {
    let uid = geteuid();
    let gid = getegid();
    match unshare(CloneFlags::CLONE_NEWUSER) {
        Ok(()) => {
            write_id_maps(uid.as_raw(), gid.as_raw())?;
            report.push((Layer::UserNamespace, Outcome::Applied));
        }
        Err(e) => report.push((Layer::UserNamespace, Outcome::Unavailable(e.to_string()))),
    }
    for (flag, layer) in [
        (CloneFlags::CLONE_NEWNET, Layer::NetworkNamespace),
        (CloneFlags::CLONE_NEWIPC, Layer::IpcNamespace),
    ] {
        let outcome = match unshare(flag) {
            Ok(()) => Outcome::Applied,
            Err(e) => Outcome::Unavailable(e.to_string()),
        };
        report.push((layer, outcome));
    }
    let outcome = match unshare(CloneFlags::CLONE_NEWNS) {
        Ok(()) => match minimal_root(root)? {
            Root::Built => Outcome::Applied,
            Root::NotAMountPoint => Outcome::Unavailable(
                "the root directory is not a mount point (entered with chroot?)".into(),
            ),
        },
        Err(e) => Outcome::Unavailable(e.to_string()),
    };
    report.push((Layer::MountNamespace, outcome));
    let outcome = match unshare(CloneFlags::CLONE_NEWPID) {
        Ok(()) => {
            crate::pid::enter(profile)?;
            Outcome::Applied
        }
        Err(e) => Outcome::Unavailable(e.to_string()),
    };
    report.push((Layer::PidNamespace, outcome));
    Ok(())
}

/// Maps our uid and gid to themselves-as-root inside the namespace, which
/// gives capabilities there (to mount) and none on the host.
fn write_id_maps(uid: u32, gid: u32) -> Result<(), SandboxError> {
    let write = |path: &str, text: String| {
        fs::write(path, text).map_err(|source| SandboxError::Io {
            what: "id map",
            path: path.into(),
            source,
        })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1"))
}

fn sys(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> SandboxError {
    let path = path.to_owned();
    move |source| SandboxError::Sys { what, path, source }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_owned();
    move |source| SandboxError::Io { what, path, source }
}

/// What [`minimal_root`] could do.
enum Root {
    Built,
    /// `/` is a directory inside a mount, not a mount itself: the process
    /// was started under plain `chroot` (or a proot-like host). Nothing can
    /// be made private or pivoted there, so nothing was changed.
    NotAMountPoint,
}

/// Builds the root: a tmpfs with read-only binds, pivots into it, detaches
/// the host's root, and makes the new root read-only.
fn minimal_root(root: &RootFs) -> Result<Root, SandboxError> {
    let new_root = Path::new(NEW_ROOT);
    let none: Option<&str> = None;
    match mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none) {
        Ok(()) => {}
        // The kernel's answer for a target that is not a mount point.
        Err(nix::errno::Errno::EINVAL) => return Ok(Root::NotAMountPoint),
        Err(e) => return Err(sys("make / private", Path::new("/"))(e)),
    }
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(sys("mount tmpfs", new_root))?;

    for top in ["lib", "lib64", "lib32", "bin", "sbin"] {
        let host = Path::new("/").join(top);
        if let Ok(target) = fs::read_link(&host) {
            // Merged /usr: keep the symlink.
            symlink(&target, new_root.join(top)).map_err(io("symlink", &host))?;
        }
    }
    for dir in &root.read_only_dirs {
        bind(dir, Bind::ReadOnlyDir)?;
    }
    for dir in &root.hidden_dirs {
        hide(dir)?;
    }
    for dir in &root.writable_dirs {
        bind(dir, Bind::WritableDir)?;
    }
    for file in &root.read_only_files {
        bind(file, Bind::ReadOnlyFile)?;
    }
    for dev in &root.devices {
        bind(dev, Bind::Device)?;
    }

    let old = new_root.join(OLD_ROOT);
    fs::create_dir(&old).map_err(io("create", &old))?;
    pivot_root(new_root, &old).map_err(sys("pivot_root", new_root))?;
    chdir("/").map_err(sys("chdir", Path::new("/")))?;
    let old = Path::new("/").join(OLD_ROOT);
    umount2(&old, MntFlags::MNT_DETACH).map_err(sys("detach old root", &old))?;
    fs::remove_dir(&old).map_err(io("remove", &old))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        none,
    )
    .map_err(sys("remount / read-only", Path::new("/")))?;
    Ok(Root::Built)
}

/// Covers `path` under the new root, where a read-only bind already shows
/// it, with an empty read-only tmpfs. A path the host lacks is skipped.
fn hide(path: &Path) -> Result<(), SandboxError> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let target = Path::new(NEW_ROOT).join(relative);
    if !target.is_dir() {
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0555,size=4k"),
    )
    .map_err(sys("hide", path))
}

/// The flags of the mount at `target` that a remount must keep.
fn locked_flags(target: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(target) else {
        return MsFlags::empty();
    };
    let have = st.flags();
    [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| have.contains(*st))
    .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bind {
    ReadOnlyDir,
    WritableDir,
    /// Read-only, device nodes allowed (/dev/null and friends).
    ReadOnlyFile,
    Device,
}

/// Binds host `path` at the same place under the new root. Missing host
/// paths are skipped (not every machine has every driver tree).
fn bind(path: &Path, kind: Bind) -> Result<(), SandboxError> {
    let is_file = matches!(kind, Bind::ReadOnlyFile | Bind::Device);
    if !path.exists() {
        return Ok(());
    }
    let relative = path.strip_prefix("/").unwrap_or(path);
    let target = Path::new(NEW_ROOT).join(relative);
    if is_file {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        fs::write(&target, b"").map_err(io("create", &target))?;
    } else {
        fs::create_dir_all(&target).map_err(io("create", &target))?;
    }
    let none: Option<&str> = None;
    mount(
        Some(path),
        &target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(sys("bind", path))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    match kind {
        Bind::ReadOnlyDir => flags |= MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        Bind::WritableDir => flags |= MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Bind::ReadOnlyFile => flags |= MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC,
        Bind::Device => flags |= MsFlags::MS_NOEXEC,
    }
    // In a user namespace the source mount's flags are locked: a remount
    // that drops one (e.g. systemd's noexec on /sys) fails with EPERM.
    flags |= locked_flags(&target);
    mount(none, &target, none, flags, none).map_err(sys("remount bind", path))?;
    Ok(())
}
