//! Debian 12 root filesystems for the packaging tests, made with
//! `debootstrap --variant=minbase` and cached under
//! `target/packaging-cache/` so that a machine pays for them once:
//!
//! - `bookworm-minbase/`: the pristine root; each test that installs
//!   something works on a fresh copy of it ([`fresh_root`]);
//! - `bookworm-mesa-client/`: the same plus Mesa's clients (`mesa-utils`,
//!   `libgl1-mesa-dri`), for a client in its own root ([`client_root`]);
//! - `bookworm-systemd/`: the same plus systemd, vtestd's dependencies and
//!   Xvfb, booted (copies of it) with systemd-nspawn ([`systemd_root`]);
//! - `apt-archives/`: downloaded .debs, shared by every chroot's apt.
//!
//! Each is built in a temporary directory and renamed into place, under an
//! exclusive lock (other test threads and processes wait for it).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// The Debian release of the test roots: this platform's (the Debian 13
/// stage of `scripts/debian13.sh` sets `VTESTD_PLATFORM=debian13`).
pub fn suite() -> &'static str {
    match std::env::var("VTESTD_PLATFORM").as_deref() {
        Ok("debian13") => "trixie",
        _ => "bookworm",
    }
}

/// The Debian mirror of the test roots.
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// Mesa's client side, installed in the client root.
const CLIENT_PACKAGES: &[&str] = &["mesa-utils", "libgl1-mesa-dri", "libegl-mesa0"];

/// A bootable root: systemd, vtestd's runtime dependencies (so that the
/// .deb installs with `dpkg -i` alone), an X server and Mesa's clients.
const SYSTEMD_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "libvirglrenderer1",
    "libegl1",
    "libegl-mesa0",
    "libgl1-mesa-dri",
    "mesa-utils",
    "xvfb",
];

/// The workspace root (crates/vtestd/../..).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `target/packaging-cache/`.
pub fn cache_dir() -> PathBuf {
    let dir = workspace().join("target/packaging-cache");
    fs::create_dir_all(&dir).expect("create target/packaging-cache");
    dir
}

/// Serialises cache building between threads (flock is per open file, so
/// threads of one process need this too) and processes.
fn with_cache_lock<T>(f: impl FnOnce() -> T) -> T {
    static THREADS: Mutex<()> = Mutex::new(());
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let file = fs::File::create(cache_dir().join(".lock")).expect("create cache lock");
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the packaging cache");
    f()
}

/// Runs `cmd`, panicking with its output unless it succeeds.
pub fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout)),
            tail(&String::from_utf8_lossy(&out.stderr)),
        );
    }
    out
}

fn tail(s: &str) -> &str {
    let max = 12_000;
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The pristine minbase root, made once.
pub fn base_root() -> PathBuf {
    let root = cache_dir().join(format!("{}-minbase", suite()));
    with_cache_lock(|| {
        if root.join("usr/bin/apt-get").exists() {
            return;
        }
        let tmp = cache_dir().join(format!("{}-minbase.tmp", suite()));
        remove_tree(&tmp);
        eprintln!(
            "debootstrap --variant=minbase {} (once; cached in {})",
            suite(),
            root.display()
        );
        run(
            Command::new("debootstrap")
                .args(["--variant=minbase", suite()])
                .arg(&tmp)
                .arg(MIRROR),
            "debootstrap",
        );
        // The .debs debootstrap used are not part of the root.
        clear_dir(&tmp.join("var/cache/apt/archives"), &["lock", "partial"]);
        remove_tree(&root);
        fs::rename(&tmp, &root).expect("rename the new root into place");
    });
    root
}

/// A fresh copy of the minbase root at `dest` (replaced if it exists).
pub fn fresh_root(dest: &Path) -> PathBuf {
    copy_root(&base_root(), dest)
}

/// The minbase root plus Mesa's clients, made once. Tests only read it
/// (they bind things over it in private mount namespaces).
pub fn client_root() -> PathBuf {
    derived_root("mesa-client", CLIENT_PACKAGES, "usr/bin/glxinfo")
}

/// The minbase root plus systemd, vtestd's dependencies, Xvfb and Mesa's
/// clients, made once; tests boot copies of it ([`copy_root`]).
pub fn systemd_root() -> PathBuf {
    derived_root("systemd", SYSTEMD_PACKAGES, "usr/bin/Xvfb")
}

/// A copy of `root` at `dest` (replaced if it exists).
pub fn copy_root(root: &Path, dest: &Path) -> PathBuf {
    remove_tree(dest);
    fs::create_dir_all(dest.parent().expect("parent")).expect("create parent");
    run(
        Command::new("cp").arg("-a").arg(root).arg(dest),
        "copy a cached root",
    );
    dest.to_owned()
}

/// `target/packaging-cache/<suite>-<name>`: the minbase root plus
/// `packages`, made once (`marker` says it is complete).
fn derived_root(name: &str, packages: &[&str], marker: &str) -> PathBuf {
    let root = cache_dir().join(format!("{}-{name}", suite()));
    let marker = root.join(marker);
    let base = base_root();
    with_cache_lock(|| {
        if marker.exists() {
            return;
        }
        let tmp = cache_dir().join(format!("{}-{name}.tmp", suite()));
        remove_tree(&tmp);
        eprintln!("installing {packages:?} into {} (once)", root.display());
        run(
            Command::new("cp").arg("-a").arg(&base).arg(&tmp),
            "copy the minbase root",
        );
        let mut script = String::from(
            "set -e; apt-get update -q; \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends",
        );
        for p in packages {
            script.push(' ');
            script.push_str(p);
        }
        run(&mut chroot_command(&tmp, &script), "install packages");
        clear_dir(&tmp.join("var/lib/apt/lists"), &["lock", "partial"]);
        remove_tree(&root);
        fs::rename(&tmp, &root).expect("rename the root into place");
    });
    root
}

/// `sh -c script` chrooted into `root`, in a private mount namespace with
/// /dev, /proc and /sys, the host's resolv.conf (for apt), and the shared
/// apt archive cache; nothing stays mounted when it exits.
pub fn chroot_command(root: &Path, script: &str) -> Command {
    let archives = cache_dir().join("apt-archives");
    fs::create_dir_all(archives.join("partial")).expect("create apt-archives");
    let _ = fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"));
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; r=\"$1\"; a=\"$2\"; shift 2; \
             mount --rbind /dev \"$r/dev\"; \
             mount -t proc proc \"$r/proc\"; \
             mount -t sysfs sysfs \"$r/sys\"; \
             mount --bind \"$a\" \"$r/var/cache/apt/archives\"; \
             exec chroot \"$r\" /usr/bin/env -i \
               PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
               HOME=/root LANG=C.UTF-8 sh -c \"$1\"",
        )
        .arg("chroot-run")
        .arg(root)
        .arg(&archives)
        .arg(script);
    c
}

/// Runs `script` in `root` (see [`chroot_command`]) and returns its output;
/// panics unless it succeeds.
pub fn chroot_run(root: &Path, script: &str, what: &str) -> Output {
    run(&mut chroot_command(root, script), what)
}

/// Removes a directory tree, if it exists; refuses anything outside the
/// cache and the test's own directories under target/.
pub fn remove_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    let target = workspace().join("target");
    assert!(
        path.starts_with(&target),
        "refusing to remove {} (outside target/)",
        path.display()
    );
    // Nothing is mounted under our roots outside the private namespaces,
    // but never follow a leftover mount into the host: one file system only.
    run(
        Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(path),
        "remove a test root",
    );
}

/// Empties `dir` except the names in `keep`.
fn clear_dir(dir: &Path, keep: &[&str]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if keep.iter().any(|k| e.file_name() == *k) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            let _ = fs::remove_dir_all(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Makes `path` (a file in a root) executable.
pub fn make_executable(path: &Path) {
    let mut perms = fs::metadata(path).expect("stat").permissions();
    perms.set_mode(0o755);
    fs::set_permissions(path, perms).expect("chmod");
}
