//! The worker sandbox, seen from outside: a worker serving a real client is
//! confined (seccomp filter mode, no_new_privs, no capabilities, its own
//! namespaces), a violation is reported by name, and real Mesa clients
//! render as well confined as not.

mod common;

use std::fs;
use std::time::Duration;

use common::mesa::{run_piglit, PIGLIT_PROFILE};
use common::procs::{eventually, wait_for_children};
use common::server::{Server, ServerKind};
use common::xvfb::Xvfb;
use vtest_client::{Client, ResourceArgs};

fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("worker status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn namespace(pid: u32, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .display()
        .to_string()
}

/// A client with one resource, and the worker serving it.
fn connected(server: &Server) -> (Client, u32) {
    let mut client = Client::connect(server.socket_path()).unwrap();
    client.handshake("sandbox-test", 2).unwrap();
    let args = ResourceArgs::texture_2d(16, 16).with_handle(1);
    let (_, fd) = client.resource_create2(&args, 1024).unwrap();
    assert!(fd.is_some());
    let workers = wait_for_children(server.pid(), 1);
    assert_eq!(workers.len(), 1, "one worker");
    (client, workers[0])
}

#[test]
fn a_serving_worker_is_confined() {
    let server = Server::start(ServerKind::Vtestd);
    let (_client, reaper) = connected(&server);
    let broker = server.pid();
    // The broker's child waits for the real worker, PID 1 of its own namespace.
    let inner = common::procs::children(reaper);
    assert_eq!(inner.len(), 1, "one worker inside the reaper");
    let worker = inner[0];
    for pid in [reaper, worker] {
        assert_eq!(
            status_field(pid, "Seccomp"),
            "2",
            "seccomp filter mode ({pid})"
        );
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(pid, set), "0000000000000000", "{set} ({pid})");
        }
    }
    assert_eq!(
        status_field(worker, "NSpid").split_whitespace().last(),
        Some("1"),
        "the worker is PID 1 of its namespace"
    );
    for ns in ["net", "user", "mnt", "ipc", "pid"] {
        assert_ne!(
            namespace(worker, ns),
            namespace(broker, ns),
            "worker has its own {ns} namespace"
        );
    }
    let reaper_fds = fs::read_dir(format!("/proc/{reaper}/fd")).unwrap().count();
    assert!(
        reaper_fds <= 1,
        "the reaper keeps only stderr: {reaper_fds}"
    );
    // Only the fds it needs: stdio (control channel on stdin), the client
    // socket and its renderer's; nothing inherited from the broker.
    let fds = fs::read_dir(format!("/proc/{worker}/fd")).unwrap().count();
    assert!(fds < 32, "worker holds {fds} fds");
    let log = server.log_text();
    assert!(
        log.contains("worker sandbox applied"),
        "every layer applied on this host; log:\n{log}"
    );
}

#[test]
fn sandbox_off_is_loud_and_unconfined() {
    let server = Server::start_with(ServerKind::Vtestd, &["--sandbox=off"]);
    let (_client, worker) = connected(&server);
    assert_eq!(status_field(worker, "Seccomp"), "0");
    assert!(server.log_text().contains("UNCONFINED"));
}

#[test]
fn a_seccomp_violation_is_reported_by_name() {
    let mut server = Server::start_with_env(
        ServerKind::Vtestd,
        &[],
        &[("VTESTD_TEST_FORBIDDEN_SYSCALL", "socket")],
    );
    let mut client = Client::connect(server.socket_path()).unwrap();
    // The worker dies as soon as it takes the client.
    let _ = client.handshake("violator", 2);
    client
        .expect_disconnect(Duration::from_secs(10))
        .expect("the violating worker's client is disconnected");
    assert!(
        eventually(10, || server.log_text().contains("worker killed by SIGSYS")),
        "log:\n{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(
        log.contains("seccomp violation: socket"),
        "broker names the syscall; log:\n{log}"
    );
    assert!(log.contains("uid="), "with the client's identity");
    assert!(server.is_alive());
}

#[test]
fn piglit_passes_as_well_confined_as_not() {
    let xvfb = Xvfb::start();
    let limit = Duration::from_secs(240);
    let confined = {
        let server = Server::start(ServerKind::Vtestd);
        run_piglit(&server, &xvfb, PIGLIT_PROFILE, limit).unwrap_or_else(|e| panic!("{e}"))
    };
    let unconfined = {
        let server = Server::start_with(ServerKind::Vtestd, &["--sandbox=off"]);
        run_piglit(&server, &xvfb, PIGLIT_PROFILE, limit).unwrap_or_else(|e| panic!("{e}"))
    };
    println!("sandbox on:  {}", confined.summary());
    println!("sandbox off: {}", unconfined.summary());
    assert!(unconfined.count("pass") > 0);
    assert_eq!(confined.count("pass"), unconfined.count("pass"));
    assert_eq!(confined.failures(), unconfined.failures());
}

#[test]
fn glmark2_runs_as_well_confined_as_not() {
    use common::mesa::{glmark2_score, mesa_command, run_client, work_dir};
    let xvfb = Xvfb::start();
    let mut scores = Vec::new();
    for extra in [&[][..], &["--sandbox=off"][..]] {
        let server = Server::start_with(ServerKind::Vtestd, extra);
        let dir = work_dir("glmark2-sandbox");
        let args = [
            "--off-screen",
            "-b",
            "build:duration=2",
            "-b",
            "shading:duration=2",
        ];
        let cmd = mesa_command(&server, &xvfb, "glmark2", &args);
        let out = run_client(cmd, &dir, "glmark2", Duration::from_secs(120));
        assert!(out.success(), "glmark2 {extra:?}: {}", out.describe());
        let score = glmark2_score(&out.stdout).expect("a score");
        assert!(score > 0);
        scores.push(score);
    }
    println!("glmark2 score: sandbox on {}, off {}", scores[0], scores[1]);
}

/// Started under plain `chroot` (its root a directory, not a mount point,
/// where the kernel also refuses user namespaces: proot- and Termux-like
/// hosts, build chroots), a worker cannot pivot into a private root. It
/// reports the layers it could not have and keeps the others, instead of
/// failing every client at `make / private`.
#[test]
fn a_worker_under_plain_chroot_serves_with_the_layers_it_can_have() {
    let dir = common::server::unique_dir("chroot");
    let root = dir.join("root");
    fs::create_dir_all(root.join("tmp")).unwrap();
    let bin = common::server::vtestd_bin();
    let bin_dir = bin.parent().unwrap();
    let socket = root.join("tmp/sock");
    // A root of binds (the directory itself stays a plain directory), the
    // server started in it with chroot(8), all in a private mount namespace.
    let script = r#"
        set -e
        R="$0"; B="$1"
        for d in usr etc dev proc sys vtestd; do mkdir -p "$R/$d"; done
        mount --bind /usr "$R/usr"
        for l in lib lib64 bin sbin; do [ -L "/$l" ] && ln -s "$(readlink "/$l")" "$R/$l"; done
        cp /etc/ld.so.cache "$R/etc/"; [ -e /etc/drirc ] && cp /etc/drirc "$R/etc/"
        mount --rbind /dev "$R/dev"; mount -t proc proc "$R/proc"; mount --rbind /sys "$R/sys"
        mount --bind "$B" "$R/vtestd"
        exec chroot "$R" /vtestd/vtestd serve --socket-path=/tmp/sock --admin-socket=/tmp/admin.sock --pool=0
    "#;
    let log = dir.join("server.log");
    let mut server = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(&root)
        .arg(bin_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start vtestd under chroot");
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(30, || log_text().contains("a worker started")),
        "vtestd under chroot did not start a worker:\n{}",
        log_text()
    );
    let mut client = Client::connect(&socket).expect("connect");
    assert_eq!(client.handshake("chroot-test", 2).unwrap(), 2);
    let args = ResourceArgs::texture_2d(16, 16).with_handle(1);
    let (_, fd) = client.resource_create2(&args, 16 * 16 * 4).unwrap();
    assert!(fd.is_some(), "a shared-memory resource under chroot");
    assert!(client.busy_wait(1, true).is_ok());
    drop(client);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
    let text = log_text();
    assert!(
        text.contains("MountNamespace unavailable (the root directory is not a mount point"),
        "the missing layer is named:\n{text}"
    );
    assert!(
        text.contains("worker finished: client disconnected"),
        "{text}"
    );
    assert!(!text.contains("worker initialisation failed"), "{text}");
    let _ = fs::remove_dir_all(&dir);
}

/// A render node that gives Mesa no hardware driver (here /dev/null; on
/// real hosts NVIDIA's proprietary driver) makes Mesa fall back to
/// llvmpipe, whose JIT needs executable memory that the GPU profile
/// forbids once serving: the worker notices and serves with the llvmpipe
/// profile instead of dying at the client's first shader.
#[test]
fn a_render_node_without_a_hardware_renderer_is_served_with_the_llvmpipe_profile() {
    let xvfb = Xvfb::start();
    let server = Server::start_with(ServerKind::Vtestd, &["--rendernode=/dev/null"]);
    let dir = common::mesa::work_dir("glmark2-fallback");
    let cmd = common::mesa::mesa_command(
        &server,
        &xvfb,
        "glmark2",
        &["--off-screen", "-b", "shading:duration=1"],
    );
    let out = common::mesa::run_client(cmd, &dir, "glmark2", Duration::from_secs(120));
    assert!(
        out.success() && common::mesa::glmark2_score(&out.stdout).unwrap_or(0) > 0,
        "{}",
        common::mesa::failure("glmark2 on the fallback renderer", &out, &server, &xvfb)
    );
    let log = server.log_text();
    assert!(log.contains("Mesa fell back to software"), "{log}");
    assert!(!log.contains("seccomp violation"), "{log}");
    let _ = fs::remove_dir_all(&dir);
}
