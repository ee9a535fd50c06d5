//! Packaging tests: vtestd as a system service.
//!
//! 1. `packaging/build-packages.sh` builds the .deb (cargo-deb) and the .rpm
//!    (cargo-generate-rpm) from the release binary; their contents,
//!    dependencies and scripts are checked, and lintian and rpmlint must
//!    report no errors.
//! 2. The .deb goes into a fresh Debian 12 root (debootstrap minbase, cached
//!    under target/packaging-cache/) with `dpkg -i` + `apt-get -f install`:
//!    installed files, conffile, user and groups (the same as sysusers.d
//!    would make), the socket enabled but nothing started, and the installed
//!    binary checks the installed configuration. Then purge. The .rpm's
//!    scripts run in another fresh root too.
//! 3. `systemd-socket-activate` starts vtestd on the socket it passes, when
//!    the first Mesa client (glxinfo) connects; the client is served and
//!    READY/STATUS/WATCHDOG/STOPPING arrive on a test notify socket.
//! 4. A Mesa client in its own root filesystem (the cached Debian root with
//!    mesa-utils) and its own mount, network, IPC, UTS and PID namespaces,
//!    as an unprivileged user in the socket's group, reaches vtestd through
//!    the socket directory bind-mounted at /run/vtestd (the container
//!    recipe of the README) and renders. The same root given the mounts of
//!    `vtestd cdi`, applied as a runtime would: its root cannot replace the
//!    socket (read-only mounts), the admin socket is not there, and a client
//!    renders.
//! 5. `systemd-analyze verify` and `systemd-analyze security --offline=yes`
//!    on the packaged units: clean, and an exposure of at most 1.5; the
//!    Kubernetes manifests' structure.
//! 6. A Debian 12 root with systemd and the .deb boots in systemd-nspawn:
//!    socket activation, notify, watchdog, journald, hardening, the worker
//!    sandbox and a restart with a client connected and another arriving,
//!    checked from inside the running system.
//!
//! They need root (chroot, namespaces) and the tools of
//! scripts/install-deps.sh; run them one at a time:
//! `cargo test -p vtestd --test packaging -- --test-threads=1`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::mesa::{run_client, tail, ClientOutput};
use common::rootfs::{self, chroot_run, fresh_root, remove_tree, run, workspace};
use common::server::{unique_dir, vtestd_bin};
use common::xvfb::Xvfb;

/// The exposure `systemd-analyze security --offline=yes` may report at most.
const EXPOSURE_TARGET: f64 = 1.5;

/// Files the .deb must install (and the .rpm, at its own paths).
const DEB_FILES: &[&str] = &[
    "usr/bin/vtestd",
    "etc/vtestd/vtestd.toml",
    "usr/lib/systemd/system/vtestd.socket",
    "usr/lib/systemd/system/vtestd.service",
    "usr/lib/sysusers.d/vtestd.conf",
    "usr/lib/tmpfiles.d/vtestd.conf",
    "usr/share/man/man1/vtestd.1.gz",
    "usr/share/man/man1/vtestd-serve.1.gz",
    "usr/share/man/man1/vtestd-check-config.1.gz",
    "usr/share/man/man1/vtestd-status.1.gz",
    "usr/share/bash-completion/completions/vtestd",
    "usr/share/zsh/vendor-completions/_vtestd",
    "usr/share/fish/vendor_completions.d/vtestd.fish",
    "usr/share/doc/vtestd/copyright",
    "usr/share/doc/vtestd/changelog.Debian.gz",
];

const RPM_FILES: &[&str] = &[
    "/usr/bin/vtestd",
    "/etc/vtestd/vtestd.toml",
    "/usr/lib/systemd/system/vtestd.socket",
    "/usr/lib/systemd/system/vtestd.service",
    "/usr/lib/sysusers.d/vtestd.conf",
    "/usr/lib/tmpfiles.d/vtestd.conf",
    "/usr/share/man/man1/vtestd.1.gz",
    "/usr/share/man/man1/vtestd-serve.1.gz",
    "/usr/share/man/man1/vtestd-check-config.1.gz",
    "/usr/share/man/man1/vtestd-status.1.gz",
    "/usr/share/bash-completion/completions/vtestd",
    "/usr/share/zsh/site-functions/_vtestd",
    "/usr/share/fish/vendor_completions.d/vtestd.fish",
];

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
}

/// Builds both packages once per test process (packaging/build-packages.sh).
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let start = Instant::now();
        run(
            Command::new("timeout")
                .arg("1800")
                .arg(workspace().join("packaging/build-packages.sh"))
                .current_dir(workspace()),
            "packaging/build-packages.sh",
        );
        eprintln!("packages built in {:.1} s", start.elapsed().as_secs_f64());
        let dir = workspace().join("target/packages");
        let find = |suffix: &str| -> PathBuf {
            let mut found: Vec<PathBuf> = fs::read_dir(&dir)
                .expect("target/packages")
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with("vtestd") && !name.contains("dbgsym") && name.ends_with(suffix)
                })
                .collect();
            assert_eq!(found.len(), 1, "one vtestd*{suffix} in {}", dir.display());
            found.remove(0)
        };
        Packages {
            deb: find(".deb"),
            rpm: find(".rpm"),
        }
    })
}

fn stdout(cmd: &mut Command, what: &str) -> String {
    String::from_utf8_lossy(&run(cmd, what).stdout).into_owned()
}

/// A directory of this test's own under target/packaging-test/.
fn test_dir(name: &str) -> PathBuf {
    let dir = workspace().join("target/packaging-test").join(name);
    remove_tree(&dir);
    fs::create_dir_all(&dir).expect("create test dir");
    dir
}

// ---------------------------------------------------------------- 1 ----

/// A listing line naming a shared library (`*.so`, `*.so.N`).
fn is_shared_object(line: &str) -> bool {
    line.ends_with(".so") || line.contains(".so.")
}

#[test]
#[cfg_attr(
    not(vtestd_packaging_tools),
    ignore = "needs the package builders and linters (packaging/install-tools.sh, lintian, rpmlint)"
)]
fn packages_build_with_their_files_dependencies_and_no_lint_errors() {
    let p = packages();

    // .deb: fields, files, conffile, scripts.
    let field = |name: &str| {
        stdout(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(&p.deb)
                .arg(name),
            "dpkg-deb --field",
        )
    };
    let depends = field("Depends");
    for dep in ["libvirglrenderer1", "libegl1", "libc6"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    // At least the virglrenderer this build saw (1.1.0 on Debian 13).
    let built_against = stdout(
        Command::new("pkg-config").args(["--modversion", "virglrenderer"]),
        "pkg-config",
    );
    let bound = format!("libvirglrenderer1 (>= {})", built_against.trim());
    assert!(depends.contains(&bound), "Depends lacks {bound}: {depends}");
    let contents = stdout(
        Command::new("dpkg-deb").arg("--contents").arg(&p.deb),
        "dpkg-deb --contents",
    );
    for f in DEB_FILES {
        assert!(
            contents.contains(&format!("./{f}\n")),
            "the .deb lacks /{f}:\n{contents}"
        );
    }
    assert!(
        !contents.contains("libvirglrenderer") && !contents.lines().any(is_shared_object),
        "the .deb must not vendor libraries:\n{contents}"
    );
    let control = test_dir("deb-control");
    run(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(&p.deb)
            .arg(&control),
        "dpkg-deb --control",
    );
    let conffiles = fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/vtestd/vtestd.toml");
    let postinst = fs::read_to_string(control.join("postinst")).expect("postinst");
    for needle in [
        "systemd-sysusers",
        "useradd",
        "deb-systemd-helper enable vtestd.socket",
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle}");
    }

    // .rpm: files, config, requirements, scripts.
    let rpm_q = |args: &[&str]| {
        stdout(
            Command::new("rpm").arg("-qp").args(args).arg(&p.rpm),
            "rpm -qp",
        )
    };
    let files = rpm_q(&["--list"]);
    for f in RPM_FILES {
        assert!(
            files.lines().any(|l| l == *f),
            "the .rpm lacks {f}:\n{files}"
        );
    }
    assert!(
        !files.lines().any(is_shared_object),
        "the .rpm must not vendor libraries:\n{files}"
    );
    assert_eq!(rpm_q(&["--configfiles"]).trim(), "/etc/vtestd/vtestd.toml");
    let requires = rpm_q(&["--requires"]);
    for dep in [
        "virglrenderer",
        "libvirglrenderer.so.1()(64bit)",
        "mesa-libEGL",
    ] {
        assert!(requires.contains(dep), "Requires lacks {dep}:\n{requires}");
    }
    let scripts = rpm_q(&["--scripts"]);
    for needle in [
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
        "systemd-sysusers",
        "enable vtestd.socket",
    ] {
        assert!(
            scripts.contains(needle),
            "rpm scripts lack {needle}:\n{scripts}"
        );
    }

    // The man page and completions were generated from the CLI.
    let gen = workspace().join("target/release/packaging-gen");
    let man = fs::read_to_string(gen.join("man/vtestd.1")).expect("man page");
    assert!(man.contains(".TH vtestd 1") && man.contains("check\\-config"));
    // Every page the main one refers to exists (and no hidden `worker`).
    let pages: BTreeSet<String> = fs::read_dir(gen.join("man"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".1"))
        .collect();
    for line in man.lines().filter(|l| l.starts_with("vtestd\\-")) {
        let page = line.replace("\\-", "-").replace("(1)", ".1");
        assert!(
            pages.contains(&page),
            "{line} refers to a missing page: {pages:?}"
        );
    }
    assert!(pages.contains("vtestd-serve.1") && !pages.contains("vtestd-worker.1"));
    let serve = fs::read_to_string(gen.join("man/vtestd-serve.1")).unwrap();
    assert!(
        serve.contains("socket\\-path"),
        "vtestd-serve.1 lacks --socket-path"
    );
    for (file, needle) in [
        ("vtestd.bash", "complete"),
        ("_vtestd", "#compdef vtestd"),
        ("vtestd.fish", "complete -c vtestd"),
    ] {
        let text = fs::read_to_string(gen.join(file)).expect("completion");
        assert!(text.contains(needle), "{file} lacks {needle}");
        assert!(
            text.contains("check-config"),
            "{file} lacks the subcommands"
        );
    }

    // lintian: no errors (warnings are explained in the README).
    let lintian = Command::new("lintian")
        .arg(&p.deb)
        .output()
        .expect("run lintian");
    let text = String::from_utf8_lossy(&lintian.stdout).into_owned()
        + &String::from_utf8_lossy(&lintian.stderr);
    println!("lintian:\n{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(lintian.status.success(), "lintian failed:\n{text}");
    let allowed = ["initial-upload-closes-no-bugs"];
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("W:") && !allowed.iter().any(|a| l.contains(a)))
        .collect();
    assert!(
        warnings.is_empty(),
        "lintian warnings not explained in the README:\n{}",
        warnings.join("\n")
    );

    // rpmlint: no errors.
    let rpmlint = Command::new("rpmlint")
        // Filters one rpmlint version needs are unused in another.
        .arg("--ignore-unused-rpmlintrc")
        .arg("--config")
        .arg(workspace().join("packaging/rpm/rpmlint.toml"))
        .arg("--rpmlintrc")
        .arg(workspace().join("packaging/rpm/vtestd.rpmlintrc"))
        .arg(&p.rpm)
        .output()
        .expect("run rpmlint");
    let text = String::from_utf8_lossy(&rpmlint.stdout).into_owned()
        + &String::from_utf8_lossy(&rpmlint.stderr);
    println!("rpmlint:\n{text}");
    let summary = text
        .lines()
        .find(|l| l.contains("errors") && l.contains("warnings"))
        .unwrap_or_else(|| panic!("no rpmlint summary:\n{text}"));
    assert!(
        summary.contains(" 0 errors"),
        "rpmlint reports errors:\n{text}"
    );
    let _ = fs::remove_dir_all(&control);
}

// ---------------------------------------------------------------- 2 ----

/// Lines of `/etc/group` in `root`, as name → members.
fn groups(root: &Path) -> Vec<(String, Vec<String>)> {
    fs::read_to_string(root.join("etc/group"))
        .expect("etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 4).then(|| {
                (
                    f[0].to_string(),
                    f[3].split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            })
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients, vtestd_packaging_tools)),
    ignore = "needs root, Mesa, the Mesa clients and the package builders"
)]
fn deb_installs_into_a_fresh_debian_root() {
    let p = packages();
    let dir = test_dir("deb-install");
    let root = fresh_root(&dir.join("root"));
    assert!(
        !root.join("run/systemd/system").exists(),
        "the test root must not look like a running systemd"
    );
    fs::copy(&p.deb, root.join("tmp/vtestd.deb")).expect("copy the .deb");

    let start = Instant::now();
    let out = chroot_run(
        &root,
        "set -e; apt-get update -q >/dev/null; \
         if dpkg -i /tmp/vtestd.deb; then echo 'dpkg -i: no dependency was missing'; fi; \
         DEBIAN_FRONTEND=noninteractive apt-get -f install -y -q; \
         dpkg-query -W -f='${Status} ${Version}\\n' vtestd",
        "dpkg -i + apt-get -f install",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("installed in {:.1} s", start.elapsed().as_secs_f64());
    assert!(
        text.contains("install ok installed 0.1.0-1"),
        "vtestd not installed:\n{text}"
    );
    assert!(
        text.contains("libvirglrenderer1"),
        "apt did not pull the system virglrenderer:\n{text}"
    );

    // Files, and the configuration as a conffile.
    for f in DEB_FILES {
        assert!(root.join(f).exists(), "/{f} not installed");
    }
    let mode = fs::metadata(root.join("usr/bin/vtestd"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    let conffiles = stdout(
        &mut rootfs::chroot_command(&root, "dpkg-query -W -f='${Conffiles}\\n' vtestd"),
        "dpkg-query Conffiles",
    );
    assert!(
        conffiles.contains("/etc/vtestd/vtestd.toml"),
        "not a conffile: {conffiles}"
    );
    let libs = stdout(
        &mut rootfs::chroot_command(&root, "ldd /usr/bin/vtestd"),
        "ldd",
    );
    assert!(
        libs.contains("libvirglrenderer.so.1 => /lib/x86_64-linux-gnu/")
            || libs.contains("libvirglrenderer.so.1 => /usr/lib/x86_64-linux-gnu/"),
        "vtestd must use the system virglrenderer:\n{libs}"
    );

    // The user and groups (no systemd in this root: the useradd fallback).
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("vtestd:"))
        .unwrap_or_else(|| panic!("no vtestd user:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system uid: {user}");
    assert!(fields[6].ends_with("nologin"), "vtestd can log in: {user}");
    let groups = groups(&root);
    for g in ["vtestd", "vtestd-clients", "vtestd-admin", "render"] {
        assert!(groups.iter().any(|(n, _)| n == g), "no group {g}");
    }
    for g in ["render", "vtestd-admin"] {
        let members = &groups.iter().find(|(n, _)| n == g).unwrap().1;
        assert!(members.iter().any(|m| m == "vtestd"), "vtestd not in {g}");
    }
    // The fallback made what sysusers.d asks for: systemd-sysusers (the
    // host's, on the root) finds nothing to create.
    let sysusers = run(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.display()))
            .arg("--dry-run")
            .arg("vtestd.conf"),
        "systemd-sysusers --dry-run",
    );
    let text = String::from_utf8_lossy(&sysusers.stdout).into_owned()
        + &String::from_utf8_lossy(&sysusers.stderr);
    assert!(
        !text.contains("Creating"),
        "sysusers.d wants accounts the fallback did not make:\n{text}"
    );

    // Enabled (symlink), nothing started: no systemd runs here.
    let wants = root.join("etc/systemd/system/sockets.target.wants/vtestd.socket");
    let target = fs::read_link(&wants).unwrap_or_default();
    assert!(
        target.ends_with("systemd/system/vtestd.socket"),
        "vtestd.socket not enabled: {target:?}"
    );
    assert!(!root.join("run/vtestd").exists(), "something was started");

    // The installed binary checks the installed configuration, as the
    // service user; the effective settings are the packaged ones.
    let check = stdout(
        &mut rootfs::chroot_command(
            &root,
            "runuser -u vtestd -- /usr/bin/vtestd check-config --config /etc/vtestd/vtestd.toml \
             && /usr/bin/vtestd check-config",
        ),
        "vtestd check-config in the root",
    );
    for needle in [
        "path = \"/run/vtestd/vtest.sock\"",
        "name = \"default\"",
        "admin_socket = \"/run/vtestd-admin/admin.sock\"",
        "group = \"vtestd-clients\"",
    ] {
        assert!(
            check.contains(needle),
            "check-config lacks {needle}:\n{check}"
        );
    }
    // Its CDI spec names the packaged socket directory.
    let cdi = stdout(
        &mut rootfs::chroot_command(&root, "/usr/bin/vtestd cdi"),
        "vtestd cdi",
    );
    let spec: serde_json::Value = serde_json::from_str(&cdi).expect("CDI JSON");
    assert_eq!(spec["kind"], "vtestd.dev/gpu");
    let mounts = &spec["devices"][0]["containerEdits"]["mounts"];
    assert_eq!(mounts[0]["hostPath"], "/run/vtestd");
    for m in mounts.as_array().unwrap() {
        let options = m["options"].as_array().unwrap();
        assert!(
            options.contains(&"ro".into()) && !options.contains(&"rw".into()),
            "a mount given to containers is not read-only: {m}"
        );
    }

    // Removal and purge work without systemd, and keep the accounts.
    chroot_run(
        &root,
        "dpkg --remove vtestd && dpkg --purge vtestd",
        "dpkg --purge",
    );
    assert!(!root.join("usr/bin/vtestd").exists());
    assert!(!root.join("etc/vtestd/vtestd.toml").exists());
    assert!(!wants.exists(), "the enable symlink outlived the purge");
    assert!(fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .contains("vtestd:"));

    remove_tree(&dir);
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients, vtestd_packaging_tools)),
    ignore = "needs root, Mesa, the Mesa clients and the package builders"
)]
fn rpm_scripts_run_in_a_root_without_systemd() {
    let p = packages();
    let dir = test_dir("rpm-install");
    let root = fresh_root(&dir.join("root"));
    let rpm = |args: &[&str]| {
        let mut c = Command::new("rpm");
        c.arg(format!("--root={}", root.display()))
            .args(["--dbpath", "/var/lib/rpm"])
            .args(args);
        c
    };
    run(&mut rpm(&["--initdb"]), "rpm --initdb");
    // --nodeps: the Debian root has no rpm database of its libraries.
    run(
        rpm(&["-i", "--nodeps"]).arg(&p.rpm),
        "rpm -i (scripts run chrooted)",
    );
    for f in RPM_FILES {
        assert!(root.join(&f[1..]).exists(), "{f} not installed");
    }
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("vtestd:"), "%post made no user:\n{passwd}");
    assert!(
        groups(&root)
            .iter()
            .any(|(n, m)| n == "render" && m.iter().any(|u| u == "vtestd")),
        "vtestd not in render"
    );
    assert!(!root.join("run/vtestd").exists(), "something was started");
    run(&mut rpm(&["-e", "vtestd"]), "rpm -e");
    assert!(!root.join("usr/bin/vtestd").exists());
    remove_tree(&dir);
}

// ---------------------------------------------------------------- 3 ----

/// Collects sd_notify datagrams on a thread of its own, as systemd does: a
/// notify socket nobody reads fills up, and then blocks its sender.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let messages = Arc::clone(&messages);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    match socket.recv(&mut buf) {
                        Ok(n) => messages
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => panic!("notify socket: {e}"),
                    }
                }
            })
        };
        NotifySocket {
            path: path.to_owned(),
            messages,
            stop,
            thread: Some(thread),
        }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.contains(needle))
            .count()
    }

    /// Waits until `n` messages contain `needle`, at most `limit`.
    fn wait_for_n(&self, needle: &str, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.count(needle) >= n {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        self.wait_for_n(needle, 1, limit)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A directory under /tmp removed on drop, even when the test fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child killed (SIGTERM, then SIGKILL) on drop.
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, then waits; SIGKILL after `limit`.
    fn stop(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

fn exe_of(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

fn wait_for_path(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    false
}

/// `glxinfo -B` as a Mesa virpipe client, in a private mount namespace whose
/// /tmp is `dir` (Mesa 22.3 only knows /tmp/.virgl_test).
fn glxinfo_in(dir: &Path, xvfb: &Xvfb) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /tmp && exec \"$@\"")
        .arg(dir)
        .args(["glxinfo", "-B"]);
    c.env("DISPLAY", xvfb.display())
        .env("GALLIUM_DRIVER", "virpipe")
        .env("SWRAST_NO_PRESENT", "1")
        .env("MESA_SHADER_CACHE_DISABLE", "true")
        .env_remove("LIBGL_ALWAYS_SOFTWARE")
        .env_remove("VTEST_SOCKET_NAME");
    c
}

fn renderer(out: &ClientOutput) -> Option<String> {
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("OpenGL renderer string:"))
        .map(|r| r.trim().to_string())
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients, vtestd_packaging_tools)),
    ignore = "needs root, Mesa, the Mesa clients and the package builders"
)]
fn socket_activation_serves_a_mesa_client_and_notifies() {
    let dir = unique_dir("activate");
    let _cleanup = RemoveOnDrop(dir.clone());
    let socket = dir.join(".virgl_test");
    let notify = NotifySocket::bind(&dir.join("notify.sock"));
    // The listener is found by its name (FileDescriptorName=default), not
    // by its path: vtestd must not bind the configured path itself.
    let config = dir.join("vtestd.toml");
    fs::write(
        &config,
        format!(
            "[server]\nadmin_socket = \"{admin}\"\ncgroups = false\n\n\
             [[listener]]\nname = \"default\"\npath = \"{unused}\"\npool = 0\n",
            admin = dir.join("admin.sock").display(),
            unused = dir.join("not-bound.sock").display(),
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let mut server = Guard(Some(
        Command::new("systemd-socket-activate")
            .arg("--listen")
            .arg(&socket)
            .arg("--fdname=default")
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.path.display()))
            .arg("--setenv=WATCHDOG_USEC=400000")
            .arg("--setenv=RUST_LOG=info")
            .arg(vtestd_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn systemd-socket-activate"),
    ));
    let pid = server.pid();
    assert!(
        wait_for_path(&socket, Duration::from_secs(10)),
        "systemd-socket-activate never listened"
    );
    // Nothing is started before the first client.
    assert!(!notify.wait_for("READY=1", Duration::from_millis(300)));
    assert_ne!(exe_of(pid), Some(vtestd_bin()), "vtestd started early");

    let xvfb = Xvfb::start();
    let work = common::mesa::work_dir("activated-glxinfo");
    let out = run_client(
        glxinfo_in(&dir, &xvfb),
        &work,
        "glxinfo",
        Duration::from_secs(90),
    );
    let server_log = || tail(&fs::read_to_string(&log).unwrap_or_default(), 8000).to_string();
    assert!(
        out.success(),
        "glxinfo through the activated socket failed\n{}--- server log ---\n{}",
        out.describe(),
        server_log()
    );
    let r = renderer(&out).unwrap_or_default();
    assert!(r.contains("virgl"), "renderer {r:?}, not virgl");
    println!("socket-activated: OpenGL renderer string: {r}");
    // systemd-socket-activate exec'd vtestd in place (LISTEN_PID is ours).
    assert_eq!(exe_of(pid), Some(vtestd_bin()));
    assert!(
        server_log().contains("socket passed by systemd"),
        "{}",
        server_log()
    );
    assert!(
        !dir.join("not-bound.sock").exists(),
        "vtestd bound its own socket"
    );

    // sd_notify: READY with a status, the client count, watchdog pings.
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(5)),
        "no READY=1: {:?}",
        notify.messages()
    );
    assert!(
        notify.wait_for("STATUS=serving 1 clients", Duration::from_secs(5)),
        "no STATUS with the client: {:?}",
        notify.messages()
    );
    assert!(notify.wait_for("STATUS=serving 0 clients", Duration::from_secs(5)));
    assert!(
        notify.wait_for_n("WATCHDOG=1", 3, Duration::from_secs(5)),
        "watchdog pings (WATCHDOG_USEC=400000): {:?}",
        notify.messages()
    );

    // SIGTERM: STOPPING=1, a clean exit, and the passed socket (systemd's)
    // is left in place.
    let status = server.stop(Duration::from_secs(20)).expect("exit status");
    assert!(
        status.success(),
        "vtestd exited with {status}\n{}",
        server_log()
    );
    assert!(
        notify.wait_for("STOPPING=1", Duration::from_secs(2)),
        "no STOPPING=1: {:?}",
        notify.messages()
    );
    assert!(
        socket.exists(),
        "vtestd removed the socket systemd passed it"
    );
    println!("notify messages: {:?}", notify.messages());
    drop(xvfb);
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- 4 ----

/// The group that may connect, an unprivileged client uid, and the uid of
/// the connect probes (kept apart from the client's in `vtestd status`).
const CLIENT_GID: u32 = 64_123;
const CLIENT_UID: u32 = 64_124;
const PROBE_UID: u32 = 64_125;

/// vtestd on the host with the packaged layout under `dir`: the client
/// socket alone in `run/vtestd/` (mode 0660, group [`CLIENT_GID`]), which is
/// what containers get, and the admin socket in `run/vtestd-admin/`, which
/// they never get.
struct HostVtestd {
    _server: Guard,
    config: PathBuf,
    socket: PathBuf,
    admin: PathBuf,
    log: PathBuf,
}

impl HostVtestd {
    fn start(dir: &Path) -> HostVtestd {
        let socket = dir.join("run/vtestd/vtest.sock");
        let admin = dir.join("run/vtestd-admin/admin.sock");
        for d in [
            dir,
            &dir.join("run"),
            socket.parent().unwrap(),
            admin.parent().unwrap(),
        ] {
            fs::create_dir_all(d).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = dir.join("vtestd.toml");
        fs::write(
            &config,
            format!(
                "[server]\nadmin_socket = \"{admin}\"\ncgroups = false\n\n\
                 [[listener]]\nname = \"default\"\npath = \"{socket}\"\n\
                 mode = \"0660\"\ngroup = \"{CLIENT_GID}\"\npool = 0\n",
                admin = admin.display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let log = dir.join("server.log");
        let server = Guard(Some(
            Command::new(vtestd_bin())
                .args(["serve", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(fs::File::create(&log).unwrap()))
                .spawn()
                .expect("spawn vtestd"),
        ));
        assert!(wait_for_path(&socket, Duration::from_secs(20)), "no socket");
        assert!(
            wait_for_path(&admin, Duration::from_secs(5)),
            "no admin socket"
        );
        HostVtestd {
            _server: server,
            config,
            socket,
            admin,
            log,
        }
    }

    fn log_tail(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 8000).to_string()
    }

    fn status(&self) -> serde_json::Value {
        let out = run(
            Command::new(vtestd_bin())
                .args(["status", "--json", "--admin-socket"])
                .arg(&self.admin),
            "vtestd status",
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients, vtestd_packaging_tools)),
    ignore = "needs root, Mesa, the Mesa clients and the package builders"
)]
fn a_client_in_its_own_root_renders_through_the_bind_mounted_directory() {
    let client_root = rootfs::client_root();
    let dir = unique_dir("container");
    let _cleanup = RemoveOnDrop(dir.clone());
    let host = HostVtestd::start(&dir);
    let socket = host.socket.clone();
    let server_log = || host.log_tail();

    // Outside the group, the socket's mode keeps a peer out.
    let probe = |groups: &str| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={PROBE_UID}"),
                &format!("--regid={PROBE_UID}"),
                groups,
                "/usr/bin/python3",
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            ])
            .arg(&socket)
            .output()
            .expect("run the connect probe")
    };
    let denied = probe("--clear-groups");
    assert!(
        !denied.status.success(),
        "a peer outside the group connected"
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PermissionError"));
    assert!(probe(&format!("--groups={CLIENT_GID}")).status.success());

    // The client: its own root (Debian 12 + Mesa), mount/net/IPC/UTS/PID
    // namespaces, the socket DIRECTORY bound at /run/vtestd and
    // /tmp/.virgl_test -> /run/vtestd/vtest.sock, as in the README's
    // container recipe. Its network namespace is empty, so X is reached
    // through the filesystem socket /tmp/.X11-unix/X<n>.
    let xvfb = Xvfb::start();
    let script = r#"
        set -e
        r="$1"; sockdir="$2"; display="$3"; ids="$4"; groups="$5"
        mount -t tmpfs -o mode=0755 tmpfs "$r/run"
        mkdir "$r/run/vtestd"
        mount --bind -o ro "$sockdir" "$r/run/vtestd"
        mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
        ln -s /run/vtestd/vtest.sock "$r/tmp/.virgl_test"
        mkdir "$r/tmp/.X11-unix"
        mount --bind /tmp/.X11-unix "$r/tmp/.X11-unix"
        mount -t proc proc "$r/proc"
        mount -t tmpfs -o mode=0755 tmpfs "$r/dev"
        for d in null zero urandom; do touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
        hostname vtestd-client
        exec chroot "$r" setpriv --reuid="$ids" --regid="$ids" --groups="$groups" \
            env -i PATH=/usr/bin:/bin HOME=/tmp DISPLAY="$display" \
            GALLIUM_DRIVER=virpipe SWRAST_NO_PRESENT=1 MESA_SHADER_CACHE_DISABLE=true \
            sh -c 'echo "ns: $(hostname) uid=$(id -u) groups=$(id -G) pid=$$"; exec glxinfo -B'
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--net",
        "--ipc",
        "--uts",
        "--pid",
        "--fork",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "client",
    ])
    .arg(&client_root)
    .arg(socket.parent().unwrap())
    .arg(xvfb.display())
    .arg(CLIENT_UID.to_string())
    .arg(CLIENT_GID.to_string());
    let work = common::mesa::work_dir("container-glxinfo");
    let out = run_client(cmd, &work, "glxinfo", Duration::from_secs(90));
    assert!(
        out.success(),
        "glxinfo in its own root failed\n{}--- server log ---\n{}",
        out.describe(),
        server_log()
    );
    assert!(
        out.stdout.contains(&format!(
            "ns: vtestd-client uid={CLIENT_UID} groups={CLIENT_UID} {CLIENT_GID} pid=1"
        )),
        "not in its own namespaces:\n{}",
        out.stdout
    );
    let r = renderer(&out).unwrap_or_default();
    assert!(
        r.contains("virgl"),
        "renderer {r:?}, not virgl\n{}",
        out.describe()
    );
    println!("client in its own root: OpenGL renderer string: {r}");

    // The broker saw the client's real identity (its end is recorded once
    // the worker has reported and been reaped).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = host.status();
        let ends = status["recent_exits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if ends
            .iter()
            .any(|e| e["uid"] == CLIENT_UID && e["gid"] == CLIENT_UID)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no client end with uid {CLIENT_UID}: {status:#}"
        );
        sleep(Duration::from_millis(100));
    }
    drop(host);
    drop(xvfb);
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(&dir);
}

/// Probes run inside the container as its root (uid 0 with Docker's default
/// capabilities, so no `CAP_SYS_ADMIN`): each prints `PROBE name=errno`
/// (0: it worked).
const CONTAINER_ROOT_PROBE: &str = r#"
use strict; use warnings; use Socket;
my ($sock, $admin) = @ARGV;
(my $dir = $sock) =~ s{/[^/]+$}{};
sub probe { my ($name, $ok) = @_; print "PROBE $name=", ($ok ? 0 : $! + 0), "\n"; }
probe("unlink", unlink($sock));
probe("rename", rename($sock, "$dir/moved.sock"));
socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
probe("bind", bind($s, pack_sockaddr_un("$dir/vtest.sock.new")));
probe("create", open(my $f, ">", "$dir/planted"));
probe("unlink-virgl-test", unlink("/tmp/.virgl_test"));
socket(my $c, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
probe("connect", connect($c, pack_sockaddr_un($sock)));
socket(my $a, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
probe("connect-admin", connect($a, pack_sockaddr_un($admin)));
opendir(my $d, $dir) or die "opendir: $!";
print "PROBE entries=", join(",", sort grep { !/^\.\.?$/ } readdir $d), "\n";
"#;

/// Docker's default capabilities: what root in a rootful container has.
const DOCKER_CAPS: &str = "-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,+setuid,\
                           +setpcap,+net_bind_service,+net_raw,+sys_chroot,+mknod,\
                           +audit_write,+setfcap";

/// A container given what `vtestd cdi` writes, its mounts applied the way
/// runc applies a bind mount (bind, then remount with the spec's flags):
/// its root cannot unlink or rename the socket, nor bind a socket of its
/// own in the directory (EROFS), nor reach the admin socket, which is not
/// there; a client in it still renders through the socket.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients, vtestd_packaging_tools)),
    ignore = "needs root, Mesa, the Mesa clients and the package builders"
)]
fn a_container_given_the_cdi_mounts_cannot_replace_the_socket_and_renders() {
    let client_root = rootfs::client_root();
    let dir = unique_dir("cdi");
    let _cleanup = RemoveOnDrop(dir.clone());
    let host = HostVtestd::start(&dir);
    let out = run(
        Command::new(vtestd_bin())
            .args(["cdi", "--config"])
            .arg(&host.config),
        "vtestd cdi",
    );
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("CDI JSON");
    let edits = &spec["devices"][0]["containerEdits"];
    let mut mounts = Vec::new();
    for m in edits["mounts"].as_array().expect("mounts") {
        let options: Vec<&str> = m["options"]
            .as_array()
            .expect("options")
            .iter()
            .map(|o| o.as_str().unwrap())
            .filter(|o| !["bind", "rbind"].contains(o))
            .collect();
        for key in ["hostPath", "containerPath"] {
            mounts.push(m[key].as_str().expect(key).to_string());
        }
        mounts.push(options.join(","));
    }
    let env: Vec<String> = edits["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    let socket = env
        .iter()
        .find_map(|e| e.strip_prefix("VTEST_SOCKET_NAME="))
        .expect("VTEST_SOCKET_NAME")
        .to_string();
    assert_eq!(Path::new(&socket), host.socket);

    let xvfb = Xvfb::start();
    let script = r#"
        set -e
        r="$1"; display="$2"; ids="$3"; groups="$4"; socket="$5"; admin="$6"
        probe="$7"; caps="$8"; shift 8
        mount -t tmpfs -o mode=0755 tmpfs "$r/run"
        mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
        while [ "$1" != -- ]; do
            host="$1"; target="$r$2"; flags="$3"; shift 3
            if [ -d "$host" ]; then
                mkdir -p "$target"
            else
                mkdir -p "$(dirname "$target")"; : > "$target"
            fi
            mount --bind "$host" "$target"
            mount -o "remount,bind,$flags" "$target"
        done
        shift
        mkdir "$r/tmp/.X11-unix"
        mount --bind /tmp/.X11-unix "$r/tmp/.X11-unix"
        mount -t proc proc "$r/proc"
        mount -t tmpfs -o mode=0755 tmpfs "$r/dev"
        for d in null zero urandom; do touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
        hostname vtestd-client
        chroot "$r" setpriv --bounding-set="$caps" perl -e "$probe" "$socket" "$admin"
        if chroot "$r" setpriv --bounding-set="$caps" \
            mount -o remount,bind,rw "$(dirname "$socket")" 2>/dev/null; then
            echo "PROBE remount-rw=0"
        else
            echo "PROBE remount-rw=refused"
        fi
        exec chroot "$r" setpriv --reuid="$ids" --regid="$ids" --groups="$groups" \
            env -i PATH=/usr/bin:/bin HOME=/tmp DISPLAY="$display" \
            SWRAST_NO_PRESENT=1 MESA_SHADER_CACHE_DISABLE=true "$@" glxinfo -B
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--net",
        "--ipc",
        "--uts",
        "--pid",
        "--fork",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "container",
    ])
    .arg(&client_root)
    .arg(xvfb.display())
    .arg(CLIENT_UID.to_string())
    .arg(CLIENT_GID.to_string())
    .arg(&socket)
    .arg(&host.admin)
    .arg(CONTAINER_ROOT_PROBE)
    .arg(DOCKER_CAPS)
    .args(&mounts)
    .arg("--")
    .args(&env);
    let work = common::mesa::work_dir("cdi-glxinfo");
    let out = run_client(cmd, &work, "glxinfo", Duration::from_secs(90));
    let context = || format!("{}--- server log ---\n{}", out.describe(), host.log_tail());
    let probes: std::collections::BTreeMap<&str, &str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PROBE "))
        .filter_map(|l| l.split_once('='))
        .collect();
    let erofs = (nix::errno::Errno::EROFS as i32).to_string();
    for name in ["unlink", "rename", "bind", "create"] {
        assert_eq!(
            probes.get(name).copied(),
            Some(erofs.as_str()),
            "{name} in the socket's directory, as the container's root\n{}",
            context()
        );
    }
    assert!(
        probes.get("unlink-virgl-test").is_some_and(|e| *e != "0"),
        "the container's root removed /tmp/.virgl_test\n{}",
        context()
    );
    assert_eq!(
        probes.get("remount-rw").copied(),
        Some("refused"),
        "{}",
        context()
    );
    assert_eq!(probes.get("connect").copied(), Some("0"), "{}", context());
    let enoent = (nix::errno::Errno::ENOENT as i32).to_string();
    assert_eq!(
        probes.get("connect-admin").copied(),
        Some(enoent.as_str()),
        "the admin socket in the container\n{}",
        context()
    );
    assert_eq!(
        probes.get("entries").copied(),
        Some("vtest.sock"),
        "the directory holds the client socket only\n{}",
        context()
    );
    assert!(host.socket.exists(), "the host's socket is gone");
    assert!(
        out.success(),
        "glxinfo in the container failed\n{}",
        context()
    );
    let r = renderer(&out).unwrap_or_default();
    assert!(
        r.contains("virgl"),
        "renderer {r:?}, not virgl\n{}",
        context()
    );
    println!("client given the CDI mounts: OpenGL renderer string: {r}");
    drop(host);
    drop(xvfb);
    let _ = fs::remove_dir_all(&work);
}

// ---------------------------------------------------------------- 5 ----

fn units_dir() -> PathBuf {
    workspace().join("packaging/systemd")
}

/// Structure of packaging/kubernetes/*.yaml (python3-yaml).
const K8S_CHECK: &str = r#"
import sys, yaml, pathlib
d = pathlib.Path(sys.argv[1])
docs = {}
for f in sorted(d.glob("*.yaml")):
    for doc in yaml.safe_load_all(f.read_text()):
        docs.setdefault(doc["kind"], []).append(doc)
ds = docs["DaemonSet"][0]
spec = ds["spec"]["template"]["spec"]
assert spec["serviceAccountName"] == "vtestd"
assert spec["automountServiceAccountToken"] is False
assert docs["ServiceAccount"][0]["automountServiceAccountToken"] is False
assert spec["securityContext"]["runAsNonRoot"] is True
vols = {v["name"]: v for v in spec["volumes"]}
assert vols["run-vtestd"]["hostPath"]["path"] == "/run/vtestd"
# The admin socket is the pod's own (an emptyDir), never in the node's
# /run/vtestd that client pods mount.
assert "emptyDir" in vols["admin"]
mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
assert mounts["admin"] == "/run/vtestd-admin"
probe = spec["containers"][0]["livenessProbe"]["exec"]["command"]
assert probe[-1] == "/run/vtestd-admin/admin.sock", probe
c = spec["containers"][0]
sc = c["securityContext"]
assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
assert sc["readOnlyRootFilesystem"] is True
assert any(m["mountPath"] == "/run/vtestd" for m in c["volumeMounts"])
cfg = docs["ConfigMap"][0]["data"]["vtestd.toml"]
assert 'path = "/run/vtestd/vtest.sock"' in cfg
assert 'admin_socket = "/run/vtestd-admin/admin.sock"' in cfg
pod = docs["Pod"][0]["spec"]
assert pod["volumes"][0]["hostPath"]["path"] == "/run/vtestd"
assert all(m["readOnly"] is True for m in pod["containers"][0]["volumeMounts"])
env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
assert env["GALLIUM_DRIVER"] == "virpipe"
assert 10500 in pod["securityContext"]["supplementalGroups"]
assert docs["RoleBinding"][0]["subjects"][0]["name"] == "vtestd"
print("ok")
"#;

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients, vtestd_packaging_tools)),
    ignore = "needs root, Mesa, the Mesa clients and the package builders"
)]
fn systemd_units_verify_clean_and_meet_the_exposure_target() {
    // security --offline=yes: the score, and the threshold as exit status.
    let service = units_dir().join("vtestd.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={}", (EXPOSURE_TARGET * 10.0) as u32))
        .arg(&service)
        .output()
        .expect("run systemd-analyze security");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for vtestd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{text}"));
    println!("systemd-analyze security --offline=yes: exposure {exposure}");
    assert!(
        exposure <= EXPOSURE_TARGET && out.status.success(),
        "exposure {exposure} > {EXPOSURE_TARGET}:\n{text}"
    );

    // verify: the units as packaged, with /usr/bin/vtestd and its man page
    // present (overlays in a private mount namespace; the host is not
    // touched). Any output is a finding.
    let dir = test_dir("verify");
    let bin_up = dir.join("bin-up");
    let man_up = dir.join("man-up");
    for d in ["bin-up", "bin-work", "man-up", "man-work"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy(vtestd_bin(), bin_up.join("vtestd")).unwrap();
    let man = run(Command::new(vtestd_bin()).arg("man"), "vtestd man").stdout;
    fs::write(man_up.join("vtestd.1"), man).unwrap();
    let script = r#"
        set -e
        d="$1"; shift
        mount -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$d/bin-up,workdir=$d/bin-work" /usr/bin
        mount -t overlay overlay -o "lowerdir=/usr/share/man/man1,upperdir=$d/man-up,workdir=$d/man-work" /usr/share/man/man1
        exec systemd-analyze verify "$@"
    "#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "verify",
        ])
        .arg(&dir)
        .arg(units_dir().join("vtestd.socket"))
        .arg(units_dir().join("vtestd.service"))
        .output()
        .expect("run systemd-analyze verify");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify is not clean ({}):\n{text}",
        out.status
    );

    // The unit's promises, as the README states them.
    let socket_unit = fs::read_to_string(units_dir().join("vtestd.socket")).unwrap();
    let service_unit = fs::read_to_string(service).unwrap();
    let directives = |text: &str| -> BTreeSet<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(str::to_string)
            .collect()
    };
    let s = directives(&socket_unit);
    for d in [
        "ListenStream=/run/vtestd/vtest.sock",
        "FileDescriptorName=default",
        "SocketGroup=vtestd-clients",
        "SocketMode=0660",
    ] {
        assert!(s.contains(d), "vtestd.socket lacks {d}");
    }
    let s = directives(&service_unit);
    for d in [
        "Type=notify",
        "User=vtestd",
        "SupplementaryGroups=render vtestd-admin",
        "DeviceAllow=char-drm rw",
        "NoNewPrivileges=yes",
        "RestrictNamespaces=user mnt net ipc pid",
        "ProtectSystem=strict",
        "RuntimeDirectoryPreserve=yes",
        "RuntimeDirectory=vtestd vtestd-admin",
    ] {
        assert!(s.contains(d), "vtestd.service lacks {d}");
    }
    assert!(s.iter().any(|l| l.starts_with("WatchdogSec=")));

    // The Kubernetes manifests parse, and say what the README says.
    let manifests = stdout(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(K8S_CHECK)
            .arg(workspace().join("packaging/kubernetes")),
        "check the Kubernetes manifests",
    );
    assert!(manifests.contains("ok"), "{manifests}");

    // The packaged configuration is valid, and names the activated socket.
    let config = workspace().join("packaging/vtestd.toml");
    let check = stdout(
        Command::new(vtestd_bin())
            .arg("check-config")
            .arg("--config")
            .arg(&config),
        "vtestd check-config packaging/vtestd.toml",
    );
    assert!(
        check.contains("path = \"/run/vtestd/vtest.sock\""),
        "{check}"
    );
    remove_tree(&dir);
}

// ---------------------------------------------------------------- 6 ----

/// Runs inside the booted container (as e2e.service, after
/// multi-user.target) and prints `CHECK key=value` lines for the test.
const IN_CONTAINER: &str = r#"#!/bin/sh
exec > /var/log/vtestd-e2e.txt 2>&1
check() { echo "CHECK $1=$2"; }
set -x
useradd --create-home --groups vtestd-clients alice
useradd --create-home bob
check socket-enabled "$(systemctl is-enabled vtestd.socket)"
check socket-active "$(systemctl is-active vtestd.socket)"
check service-before-client "$(systemctl is-active vtestd.service)"
check run-dir "$(stat -c '%U:%G:%a' /run/vtestd)"
check client-socket "$(stat -c '%U:%G:%a' /run/vtestd/vtest.sock)"
check admin-dir-at-boot "$(stat -c '%U:%G:%a' /run/vtestd-admin)"
# A watchdog short enough to fire during the test unless vtestd pings it.
mkdir -p /run/systemd/system/vtestd.service.d
printf '[Service]\nWatchdogSec=2s\n' > /run/systemd/system/vtestd.service.d/watchdog.conf
systemctl daemon-reload
Xvfb :5 -nolisten tcp >/dev/null 2>&1 &
sleep 1
client() {
    runuser -u "$1" -- env DISPLAY=:5 GALLIUM_DRIVER=virpipe SWRAST_NO_PRESENT=1 \
        MESA_SHADER_CACHE_DISABLE=true sh -c \
        'ln -sf /run/vtestd/vtest.sock /tmp/.virgl_test; glxinfo -B' 2>&1 |
        sed -n 's/^OpenGL renderer string: //p'
}
check alice-renderer "$(client alice)"
check bob-renderer "$(client bob)"
check service-after-client "$(systemctl is-active vtestd.service)"
check status-text "$(systemctl show -p StatusText --value vtestd.service)"
main=$(systemctl show -p MainPID --value vtestd.service)
check main-user "$(stat -c %U /proc/$main)"
check main-caps "$(sed -n 's/^CapEff:\t//p' /proc/$main/status)"
check main-nnp "$(sed -n 's/^NoNewPrivs:\t//p' /proc/$main/status)"
check main-seccomp "$(sed -n 's/^Seccomp:\t//p' /proc/$main/status)"
sleep 6
check restarts-after-watchdog-period "$(systemctl show -p NRestarts --value vtestd.service)"
check main-after-watchdog-period "$(systemctl show -p MainPID --value vtestd.service)"
sg vtestd-admin -c 'vtestd status --json' > /tmp/status.json
check admin-status "$(head -c 20 /tmp/status.json)"
# What containers get holds the client socket only; the admin socket is apart.
check run-dir-entries "$(ls -A /run/vtestd | tr '\n' ' ')"
check admin-socket "$(stat -c '%U:%G:%a' /run/vtestd-admin/admin.sock)"
useradd --no-create-home --groups vtestd-admin carol
check carol-status "$(runuser -u carol -- sg vtestd-admin -c 'vtestd status --json' | head -c 1)"
# ProtectProc=invisible hides carol's processes from the broker: by her
# supplementary group alone she is refused (README: use sg).
check carol-supplementary "$(runuser -u carol -- vtestd status --json 2>&1 | grep -c 'without an answer')"
check sandbox-applied "$(journalctl -b -u vtestd.service -o cat | grep -c 'worker sandbox applied')"
check sandbox-weakened "$(journalctl -b -u vtestd.service -o cat | grep -c 'sandbox weakened\|initialisation failed')"
check journal-fields "$(journalctl -b -u vtestd.service -o verbose MESSAGE='socket passed by systemd' | grep -c -e SYSLOG_IDENTIFIER=vtestd -e NAME=default)"
check security "$(systemd-analyze security vtestd.service | sed -n 's/.*Overall exposure level for vtestd.service: \([0-9.]*\).*/\1/p')"
# A client connected across the restart: glxgears renders until the old
# broker ends its worker after shutdown_grace_secs (10 s).
runuser -u alice -- env DISPLAY=:5 GALLIUM_DRIVER=virpipe MESA_SHADER_CACHE_DISABLE=true \
    sh -c 'ln -sf /run/vtestd/vtest.sock /tmp/.virgl_test; exec glxgears' >/dev/null 2>&1 &
gears=$!
sleep 3
main=$(systemctl show -p MainPID --value vtestd.service)
old_workers=$(cat /proc/$main/task/*/children)
check workers-before-restart "$(echo $old_workers | wc -w)"
check gears-before-restart "$(kill -0 $gears 2>/dev/null && echo running || echo ended)"
# Its worker's memory, as the broker reads it through ProtectProc=invisible.
sg vtestd-admin -c 'vtestd status --json' > /tmp/status-gears.json
check gears-memory "$(tr -d ' \n' < /tmp/status-gears.json | grep -o '"rss_kib":[0-9]*' | head -1 | cut -d: -f2)"
inode=$(stat -c %i /run/vtestd/vtest.sock)
# A client arriving while the old broker winds down: queued, then served.
(sleep 1; client alice > /tmp/during-restart.txt) &
during=$!
systemctl restart vtestd.service
check service-after-restart "$(systemctl is-active vtestd.service)"
check socket-kept "$([ "$(stat -c %i /run/vtestd/vtest.sock)" = "$inode" ] && echo yes || echo no)"
left=0
for p in $old_workers; do [ -d /proc/$p ] && left=$((left + 1)); done
check old-workers-left "$left"
sleep 1
check gears-after-restart "$(kill -0 $gears 2>/dev/null && echo running || echo ended)"
kill $gears 2>/dev/null
wait $during
check alice-during-restart "$(cat /tmp/during-restart.txt)"
check grace-logged "$(journalctl -b -u vtestd.service -o cat | grep -c 'grace period over: ending workers')"
check alice-after-restart "$(client alice)"
journalctl --no-pager -u vtestd.service | tail -40
check done yes
systemctl poweroff || kill -38 1  # SIGRTMIN+4: poweroff
"#;

fn checks(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("CHECK "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients, vtestd_packaging_tools)),
    ignore = "needs root, Mesa, the Mesa clients and the package builders"
)]
fn the_packaged_service_runs_under_systemd_in_a_booted_container() {
    let p = packages();
    let cached = rootfs::systemd_root();
    let dir = test_dir("booted");
    let root = rootfs::copy_root(&cached, &dir.join("root"));
    fs::copy(&p.deb, root.join("tmp/vtestd.deb")).expect("copy the .deb");
    // Installed in the chroot, where no systemd runs: enabled, not started.
    chroot_run(&root, "dpkg -i /tmp/vtestd.deb", "dpkg -i vtestd.deb");
    fs::write(root.join("usr/local/bin/vtestd-e2e"), IN_CONTAINER).unwrap();
    rootfs::make_executable(&root.join("usr/local/bin/vtestd-e2e"));
    fs::write(
        root.join("etc/systemd/system/vtestd-e2e.service"),
        "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\n\
         ExecStart=/usr/local/bin/vtestd-e2e\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/vtestd-e2e.service",
        root.join("etc/systemd/system/multi-user.target.wants/vtestd-e2e.service"),
    )
    .unwrap();

    // Boot it. nspawn's own seccomp filter lacks Landlock's calls (the
    // workers would run without that layer): allow them, as on a host.
    let start = Instant::now();
    let out = Command::new("timeout")
        .args(["240", "systemd-nspawn", "--quiet", "--boot"])
        .arg(format!("--directory={}", root.display()))
        .args([
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--system-call-filter=landlock_create_ruleset landlock_add_rule landlock_restrict_self",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-nspawn");
    let console =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let log = fs::read_to_string(root.join("var/log/vtestd-e2e.txt")).unwrap_or_default();
    eprintln!(
        "booted, tested and powered off in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let c = checks(&log);
    eprintln!("checks in the container: {c:?}");
    let context = || {
        format!(
            "--- in the container ---\n{}\n--- console ---\n{}",
            tail(&log, 12_000),
            tail(&console, 4000)
        )
    };
    assert_eq!(
        c.get("done").map(String::as_str),
        Some("yes"),
        "the in-container script did not finish\n{}",
        context()
    );
    let expect = |key: &str, want: &str| {
        assert_eq!(
            c.get(key).map(String::as_str),
            Some(want),
            "{key}\n{}",
            context()
        );
    };
    // A worker that cannot bind a path from a mount with locked flags
    // (here the container's /sys: ro,nosuid,nodev,noexec, as /sys is on
    // hosts booted by systemd) cannot build its sandbox at all.
    assert!(
        !log.contains("remount bind"),
        "workers cannot build their sandbox on this /sys (a bind remount must keep the \
         source mount's locked nosuid/nodev/noexec/ro/atime flags)\n{}",
        context()
    );
    expect("socket-enabled", "enabled");
    expect("socket-active", "active");
    expect("service-before-client", "inactive");
    expect("run-dir", "vtestd:vtestd:755");
    expect("client-socket", "root:vtestd-clients:660");
    assert!(
        c["alice-renderer"].contains("virgl"),
        "alice: {}\n{}",
        c["alice-renderer"],
        context()
    );
    assert!(
        !c["bob-renderer"].contains("virgl"),
        "bob, outside vtestd-clients, was served\n{}",
        context()
    );
    expect("service-after-client", "active");
    assert!(c["status-text"].starts_with("serving "), "{}", context());
    expect("main-user", "vtestd");
    expect("main-caps", "0000000000000000");
    expect("main-nnp", "1");
    expect("main-seccomp", "2");
    expect("restarts-after-watchdog-period", "0");
    assert!(c["admin-status"].starts_with('{'), "{}", context());
    expect("admin-dir-at-boot", "vtestd:vtestd:755");
    expect("run-dir-entries", "vtest.sock");
    expect("admin-socket", "vtestd:vtestd-admin:660");
    expect("carol-status", "{");
    expect("carol-supplementary", "1");
    assert!(
        c["sandbox-applied"].parse::<u32>().unwrap_or(0) >= 1,
        "{}",
        context()
    );
    expect("sandbox-weakened", "0");
    expect("journal-fields", "2");
    let exposure: f64 = c["security"].parse().unwrap_or(99.0);
    assert!(
        exposure <= EXPOSURE_TARGET,
        "online exposure {exposure}\n{}",
        context()
    );
    // Restart with a client connected (README, "Restarts"): its worker
    // ended with the old broker, nothing of it is left, and a client that
    // arrived meanwhile was served by the new one.
    expect("gears-before-restart", "running");
    assert!(
        c["workers-before-restart"].parse::<u32>().unwrap_or(0) >= 1,
        "{}",
        context()
    );
    expect("old-workers-left", "0");
    assert!(
        c["gears-memory"].parse::<u64>().unwrap_or(0) > 10 << 10,
        "status shows no memory for the glxgears worker\n{}",
        context()
    );
    expect("grace-logged", "1");
    assert!(
        c["alice-during-restart"].contains("virgl"),
        "a client arriving during the restart was not served\n{}",
        context()
    );
    expect("service-after-restart", "active");
    expect("socket-kept", "yes");
    assert!(c["alice-after-restart"].contains("virgl"), "{}", context());
    remove_tree(&dir);
}
