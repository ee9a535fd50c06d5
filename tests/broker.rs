//! The broker as a multi-tenant service: per-client limits (each ends only
//! the offending client), peer checks, caps, pre-started pools, silent
//! connections that cost no worker, the hang watchdog, status, reload.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::procs::{children, eventually, wait_for_children};
use common::server::Server;
use common::tenant::Tenant;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vtest_client::{virgl, Client, ResourceArgs};

/// A config with a `[limits.default]` of `limits` (TOML lines).
fn with_limits(limits: &str) -> String {
    format!("[limits.default]\n{limits}\n")
}

fn limit_ends_only_the_offender(limits: &str, name: &str, offend: impl FnOnce(&mut Client)) {
    let server = Server::start_with_config(&with_limits(limits), &[]);
    let mut good = Tenant::connect(&server, "good");
    let mut bad = Client::connect(server.socket_path()).unwrap();
    bad.handshake("bad", 3).unwrap();
    offend(&mut bad);
    bad.expect_disconnect(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{name}: offender not disconnected: {e}"));
    good.round_trip(7);
    let log = server.log_text();
    assert!(
        eventually(5, || server
            .log_text()
            .contains(&format!("limit {name} exceeded"))),
        "{name} not logged:\n{log}"
    );
    good.round_trip(8);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn live_resources_limit() {
    limit_ends_only_the_offender("max_resources = 4", "max_resources", |c| {
        for _ in 0..5 {
            let _ = c.resource_create(&ResourceArgs::buffer(64));
        }
    });
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn single_resource_size_limit() {
    limit_ends_only_the_offender("max_resource_mib = 1", "max_resource_bytes", |c| {
        let _ = c.resource_create2(&ResourceArgs::buffer(4 << 20), 2 << 20);
    });
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn total_shared_memory_limit() {
    limit_ends_only_the_offender("max_shm_mib = 2", "max_shm_bytes", |c| {
        for _ in 0..3 {
            let _ = c.resource_create2(&ResourceArgs::buffer(1 << 20), 1 << 20);
        }
    });
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn largest_command_limit() {
    let server = Server::start_with_config(&with_limits("max_command_mib = 1"), &[]);
    let mut good = Tenant::connect(&server, "good");
    let mut bad = Client::connect(server.socket_path()).unwrap();
    bad.handshake("bad", 2).unwrap();
    // A header announcing 2 MiB is refused before the payload is buffered.
    let _ = bad.send_raw(&vtest_client::wire::message_with_len(512 << 10, 6, &[]));
    bad.expect_disconnect(Duration::from_secs(10)).unwrap();
    good.round_trip(1);
    // Just under the limit is served.
    let mut ok = Client::connect(server.socket_path()).unwrap();
    ok.handshake("ok", 2).unwrap();
    let mut stream = Vec::new();
    while stream.len() < 200_000 {
        stream.extend(virgl::nop(&[0; 255]));
    }
    ok.submit_cmd(&stream).unwrap();
    assert!(!ok.busy_wait(0, true).unwrap());
    assert!(
        server.log_text().contains("exceeds the limit"),
        "{}",
        server.log_text()
    );
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn syncs_limit() {
    limit_ends_only_the_offender("max_syncs = 2", "max_syncs", |c| {
        for _ in 0..3 {
            let _ = c.sync_create(0);
        }
    });
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn pending_waits_limit() {
    limit_ends_only_the_offender("max_waits = 1", "max_waits", |c| {
        let id = c.sync_create(0).unwrap();
        let _first = c.sync_wait(0, u32::MAX, &[(id, 1)]).unwrap();
        let _ = c.sync_wait(0, u32::MAX, &[(id, 1)]);
    });
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn idle_time_limit() {
    let server = Server::start_with_config(&with_limits("idle_timeout_secs = 1"), &[]);
    let mut good = Tenant::connect(&server, "good");
    let mut idle = Client::connect(server.socket_path()).unwrap();
    idle.handshake("idle", 2).unwrap();
    // The good client keeps talking; the idle one says nothing.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1800) {
        good.client.ping().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    idle.expect_disconnect(Duration::from_secs(5)).unwrap();
    good.round_trip(5);
    assert!(eventually(5, || server
        .log_text()
        .contains("limit idle_timeout_ms exceeded")));
}

#[test]
#[cfg_attr(not(all(vtestd_root, vtestd_mesa)), ignore = "needs root and Mesa")]
fn peers_outside_the_allowed_uids_are_refused() {
    let config = "[[listener]]\nname = \"default\"\nmode = \"0666\"\nallowed_uids = [0]\n";
    let server = Server::start_with_config(config, &[]);
    // An allowed peer (root, this test) is served.
    let mut t = Tenant::connect(&server, "root");
    t.round_trip(1);
    // uid 65534 may reach the socket (mode 0666) but is not allowed.
    let probe = format!(
        "import socket,struct,sys\n\
         s=socket.socket(socket.AF_UNIX); s.connect('{}'); s.settimeout(10)\n\
         try:\n s.sendall(struct.pack('<II',0,10)); closed = s.recv(8)==b''\n\
         except (BrokenPipeError, ConnectionResetError): closed = True\n\
         sys.exit(0 if closed else 1)",
        server.socket_path().display()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(&probe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "refused peer must see the connection closed: {out:?}"
    );
    assert!(eventually(5, || server
        .log_text()
        .contains("peer not allowed")));
    assert!(server.log_text().contains("uid=65534"));
    t.round_trip(2);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn global_and_per_uid_caps() {
    let config = "[server]\nmax_clients = 2\nmax_clients_per_uid = 2\n";
    let server = Server::start_with_config(config, &[]);
    let mut a = Tenant::connect(&server, "a");
    let _b = Tenant::connect(&server, "b");
    let mut c = Client::connect(server.socket_path()).unwrap();
    let _ = c.send_raw(&vtest_client::wire::create_renderer("c"));
    c.expect_disconnect(Duration::from_secs(5)).unwrap();
    assert!(eventually(5, || server
        .log_text()
        .contains("max_clients reached")));
    a.round_trip(3);
    let config = "[server]\nmax_clients_per_uid = 1\n";
    let server = Server::start_with_config(config, &[]);
    let _a = Tenant::connect(&server, "a");
    let mut b = Client::connect(server.socket_path()).unwrap();
    let _ = b.send_raw(&vtest_client::wire::create_renderer("b"));
    b.expect_disconnect(Duration::from_secs(5)).unwrap();
    assert!(eventually(5, || server
        .log_text()
        .contains("max_clients_per_uid reached")));
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn pool_serves_at_once_and_silent_connections_cost_no_worker() {
    let server = Server::start_with(common::server::ServerKind::Vtestd, &["--pool=2"]);
    let broker = server.pid();
    assert_eq!(
        wait_for_children(broker, 2).len(),
        2,
        "two pre-started workers"
    );
    let status = server.status();
    assert!(
        eventually(10, || server.status()["listeners"][0]["pool_ready"] == 2),
        "{status}"
    );
    // Silent connections: no worker, but visible as waiting.
    let silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(server.socket_path()).unwrap())
        .collect();
    assert!(eventually(5, || server.status()["listeners"][0]["waiting"] == 8));
    assert_eq!(children(broker).len(), 2, "silent clients cost no worker");
    // A real client gets a pre-started worker, which is replaced.
    let before = Instant::now();
    let mut t = Tenant::connect(&server, "pooled");
    let took = before.elapsed();
    t.round_trip(4);
    assert!(
        eventually(10, || children(broker).len() == 3),
        "pool refilled"
    );
    assert!(server.log_text().contains("pooled=true"));
    println!("first round trip through a pooled worker: {took:?}");
    drop(silent);
    assert!(eventually(5, || server.status()["listeners"][0]["waiting"] == 0));
    assert!(
        server.status()["counters"]["closed_before_first_byte"]
            .as_u64()
            .unwrap()
            >= 8
    );
}

#[test]
#[cfg_attr(not(all(vtestd_root, vtestd_mesa)), ignore = "needs root and Mesa")]
fn status_reflects_a_client_and_then_its_exit_reason() {
    let server = Server::start(common::server::ServerKind::Vtestd);
    let mut c = Client::connect(server.socket_path()).unwrap();
    c.handshake("observed", 2).unwrap();
    for h in 1..=3 {
        let (_, fd) = c
            .resource_create2(&ResourceArgs::buffer(4096).with_handle(h), 4096)
            .unwrap();
        drop(fd);
    }
    c.ping().unwrap();
    let shows_resources = || {
        let s = server.status();
        let client = &s["clients"][0];
        client["state"] == "serving"
            && client["stats"]["live_resources"] == 3
            && client["stats"]["shm_bytes"] == 3 * 4096
            && client["worker_pid"].as_u64().is_some()
            && client["uid"] == 0
            // The worker's memory, read from /proc: Mesa alone is tens of MiB.
            && client["memory"]["rss_kib"].as_u64().is_some_and(|k| k > 10 << 10)
            && client["memory"]["data_kib"].as_u64().is_some_and(|k| k > 1 << 10)
    };
    assert!(eventually(10, shows_resources), "{}", server.status());
    // What bounds a worker: here (no delegated cgroup v2) only per resource.
    let limits = server.status()["memory_limits"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert!(
        limits.starts_with("memory bounded only per resource")
            || (v2 && limits.starts_with("per-worker cgroup")),
        "{limits}"
    );
    // A bad request ends it; status tells why.
    c.send_raw(&vtest_client::wire::message(99, &[])).unwrap();
    c.expect_disconnect(Duration::from_secs(5)).unwrap();
    let ended = || {
        let s = server.status();
        s["clients"].as_array().is_some_and(|a| a.is_empty())
            && s["recent_exits"][0]["category"] == "protocol_error"
            && s["recent_exits"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("unknown command id 99"))
    };
    assert!(eventually(10, ended), "{}", server.status());
    let metrics = Command::new(common::server::vtestd_bin())
        .args(["metrics", "--admin-socket"])
        .arg(server.dir().join("admin.sock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("vtestd_worker_exits_total{reason=\"protocol_error\"} 1"),
        "{text}"
    );
}

#[test]
#[cfg_attr(
    not(all(feature = "test-hooks", vtestd_mesa)),
    ignore = "needs --features test-hooks and Mesa"
)]
fn the_hang_watchdog_kills_a_worker_without_progress() {
    let config = "[server]\nhang_timeout_secs = 2\n";
    let dir = common::server::unique_dir("hang");
    let path = dir.join("vtestd.toml");
    fs::write(&path, config).unwrap();
    let mut server = Server::start_with_env(
        common::server::ServerKind::Vtestd,
        &[&format!("--config={}", path.display())],
        &[("VTESTD_TEST_FAKE_HANG", "1")],
    );
    server.also_remove(dir);
    let mut c = Client::connect(server.socket_path()).unwrap();
    c.handshake("stuck", 2).unwrap();
    c.submit_cmd(&[]).unwrap();
    c.expect_disconnect(Duration::from_secs(15))
        .expect("killed by the watchdog");
    assert!(eventually(5, || server
        .log_text()
        .contains("made no progress")));
    assert!(eventually(5, || server.status()["recent_exits"][0]
        ["category"]
        == "hang"));
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn sighup_reloads_limits_for_new_connections() {
    let dir = common::server::unique_dir("reload");
    let path = dir.join("vtestd.toml");
    fs::write(&path, with_limits("max_resources = 100")).unwrap();
    let mut server = Server::start_with(
        common::server::ServerKind::Vtestd,
        &[&format!("--config={}", path.display())],
    );
    server.also_remove(dir);
    let mut before = Client::connect(server.socket_path()).unwrap();
    before.handshake("before", 2).unwrap();
    fs::write(&path, with_limits("max_resources = 2")).unwrap();
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGHUP).unwrap();
    assert!(eventually(5, || server
        .log_text()
        .contains("configuration reloaded")));
    let mut after = Client::connect(server.socket_path()).unwrap();
    after.handshake("after", 2).unwrap();
    for h in 1..=3 {
        let _ = after.resource_create(&ResourceArgs::buffer(64).with_handle(h));
    }
    after.expect_disconnect(Duration::from_secs(5)).unwrap();
    // The earlier client keeps the limits it was accepted with.
    for h in 1..=3 {
        before
            .resource_create(&ResourceArgs::buffer(64).with_handle(h))
            .unwrap();
    }
    before.ping().unwrap();
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn check_config_validates_and_prints() {
    let dir = common::server::unique_dir("check");
    let good = dir.join("good.toml");
    fs::write(&good, "[server]\nmax_clients = 3\n").unwrap();
    let out = Command::new(common::server::vtestd_bin())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_clients = 3"));
    let bad = dir.join("bad.toml");
    fs::write(&bad, "[server]\nmax_clients = 3\nsurprise = true\n").unwrap();
    let out = Command::new(common::server::vtestd_bin())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("surprise"));
    let _ = fs::remove_dir_all(dir);
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A broker out of fds (here: its limit lowered to 40 while 60 clients
/// connect and stay silent) neither spins on the readable socket nor floods
/// the log: accepting pauses, with one log line, the connections wait in
/// the backlog, and once fds are free they are accepted and served.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn a_broker_out_of_fds_pauses_accepting_and_catches_up() {
    let config = "[server]\nmax_clients = 200\nmax_clients_per_uid = 200\n";
    let server = Server::start_with_config(config, &[]);
    let pid = server.pid();
    let lowered = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg("--nofile=40:4096")
        .status()
        .expect("run prlimit");
    assert!(lowered.success());
    let mut silent: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(server.socket_path()).expect("connect: backlog"))
        .collect();
    assert!(eventually(5, || server
        .log_text()
        .contains("accept failed")));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - before;
    assert!(spent < 30, "the broker spun: {spent} ticks of CPU in 2 s");
    let log = server.log_text();
    assert_eq!(
        log.matches("accept failed").count(),
        1,
        "one line per streak of failures:\n{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    // Fds come back as silent clients leave; the backlog is worked off.
    silent.truncate(10);
    let mut fresh = Client::connect(server.socket_path()).unwrap();
    fresh.set_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        fresh.handshake("fresh", 2).expect("served after the pause"),
        2
    );
    fresh.ping().unwrap();
    assert!(eventually(5, || server
        .log_text()
        .contains("accepting again")));
    assert!(server.status()["listeners"][0]["waiting"].as_u64() <= Some(10));
}

/// Workers inherit the broker's hard fd limit: a `worker_open_files` above
/// it would make every worker fail, so the broker refuses to start.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn worker_open_files_above_the_hard_limit_is_refused_at_start() {
    let dir = common::server::unique_dir("hard-limit");
    let out = Command::new("prlimit")
        .arg("--nofile=512:512")
        .arg(common::server::vtestd_bin())
        .arg("serve")
        .arg(format!("--socket-path={}", dir.join("s").display()))
        .arg(format!("--admin-socket={}", dir.join("a").display()))
        .arg("--pool=0")
        .output()
        .expect("run vtestd under prlimit");
    let _ = fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with 1024 > 512: {err}");
    assert!(
        err.contains("worker_open_files 1024 is above this process's hard open files limit 512"),
        "{err}"
    );
}

/// A listener whose workers cannot start (here a render node the host does
/// not have) is refused at start with the worker's reason, rather than
/// accepted and failing every client.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn a_listener_whose_workers_cannot_start_is_refused_at_start() {
    let dir = common::server::unique_dir("probe");
    let socket = dir.join("s");
    let mut child = Command::new(common::server::vtestd_bin())
        .arg("serve")
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--admin-socket={}", dir.join("a").display()))
        .arg("--pool=0")
        .arg("--rendernode=/nonexistent/renderD128")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vtestd");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "vtestd still running with an unusable render node"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("listener default: its workers cannot start with this configuration"),
        "{err}"
    );
    assert!(err.contains("cannot open render node"), "{err}");
    assert!(!socket.exists(), "the refused socket is removed");
}

/// Runs `vtestd serve` on `socket` until it is ready or exits (10 s);
/// returns (still running, stderr so far) and stops it.
fn serve_briefly(socket: &std::path::Path, admin: &std::path::Path) -> (bool, String) {
    let log = admin.with_extension("log");
    let mut child = Command::new(common::server::vtestd_bin())
        .arg("serve")
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--admin-socket={}", admin.display()))
        .arg("--pool=0")
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("run vtestd");
    let text = || fs::read_to_string(&log).unwrap_or_default();
    let running = common::procs::eventually(10, || {
        text().contains("a worker started") || matches!(child.try_wait(), Ok(Some(_)))
    }) && matches!(child.try_wait(), Ok(None));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    (running, text())
}

/// The socket path is never a way to make vtestd follow a symlink, chmod
/// somebody else's file, remove somebody else's socket, or serve from a
/// directory where others could swap the socket for theirs.
#[test]
#[cfg_attr(not(all(vtestd_root, vtestd_mesa)), ignore = "needs root and Mesa")]
fn unsafe_socket_paths_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::server::unique_dir("socket-path");
    let admin = dir.join("admin.sock");
    // A symlink planted where the socket goes: refused, its target untouched.
    let target = dir.join("victim");
    fs::write(&target, "x").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (running, log) = serve_briefly(&link, &admin);
    assert!(!running && log.contains("symbolic link"), "{log}");
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // A directory anyone may write to, without the sticky bit.
    let open = dir.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let (running, log) = serve_briefly(&open.join("s"), &admin);
    assert!(!running && log.contains("writable by others"), "{log}");
    // A directory of another user.
    let theirs = dir.join("theirs");
    fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let (running, log) = serve_briefly(&theirs.join("s"), &admin);
    assert!(!running && log.contains("belongs to uid 65534"), "{log}");
    // A stale socket of another user: not removed.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &stale,
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let (running, log) = serve_briefly(&stale, &admin);
    assert!(
        !running && log.contains("stale socket of uid 65534"),
        "{log}"
    );
    assert!(stale.exists(), "somebody else's socket was removed");
    // Controls: a sticky world-writable directory (like /tmp) and a stale
    // socket of ours are fine.
    let sticky = dir.join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    let ours = sticky.join("s");
    drop(std::os::unix::net::UnixListener::bind(&ours).unwrap());
    let (running, log) = serve_briefly(&ours, &admin);
    assert!(running, "{log}");
    let _ = fs::remove_dir_all(&dir);
}

/// A reload that removes a listener, handled in the same poll round as a
/// connection on a listener after it: the connection is accepted by the
/// listener it came to (events name listeners by stable id, not by their
/// position before the reload, which would be out of range here).
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn a_reload_removing_a_listener_does_not_misroute_ready_connections() {
    let dir = common::server::unique_dir("reload-ids");
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    let listener = |name: &str, path: &std::path::Path| {
        format!(
            "[[listener]]\nname = \"{name}\"\npath = \"{}\"\npool = 0\n",
            path.display()
        )
    };
    let config = dir.join("vtestd.toml");
    fs::write(&config, listener("a", &a) + &listener("b", &b)).unwrap();
    let log = dir.join("log");
    let mut child = Command::new(common::server::vtestd_bin())
        .arg("serve")
        .arg(format!("--config={}", config.display()))
        .arg(format!(
            "--admin-socket={}",
            dir.join("admin.sock").display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let text = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(20, || text().matches("a worker started").count() == 2),
        "{}",
        text()
    );
    // Both the reload and the connection wait for one poll round.
    kill(pid, Signal::SIGSTOP).unwrap();
    let mut client = Client::connect(&b).unwrap();
    fs::write(&config, listener("b", &b)).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    let served = client.handshake("after-reload", 2);
    let alive = matches!(child.try_wait(), Ok(None));
    drop(client);
    let _ = kill(pid, Signal::SIGTERM);
    let _ = child.wait();
    let log = text();
    let _ = fs::remove_dir_all(&dir);
    assert!(served.is_ok() && alive, "{served:?}\n{log}");
    assert!(log.contains("listener removed"), "{log}");
    assert!(log.contains("listener=b"), "{log}");
}

/// A flood of refused connections is logged once per streak, then as one
/// count: it cannot bury other lines under the journal's rate limit.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn refused_connections_are_logged_once_per_streak() {
    let config = "[[listener]]\nname = \"default\"\nallowed_uids = [12345]\n";
    let server = Server::start_with_config(config, &[]);
    for _ in 0..100 {
        let mut s = UnixStream::connect(server.socket_path()).expect("connect");
        let mut b = [0u8; 1];
        let _ = std::io::Read::read(&mut s, &mut b);
    }
    assert!(
        eventually(5, || server
            .log_text()
            .contains("peer not allowed: 99 more")),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    assert_eq!(
        log.matches("client refused: peer not allowed").count(),
        2,
        "{log}"
    );
}

/// `vtestd status` against `server`'s admin socket as `uid`, with primary
/// group `gid` and supplementary `groups` (none: `--clear-groups`).
fn status_as(server: &Server, uid: u32, gid: u32, groups: Option<u32>) -> std::process::Output {
    let groups = groups.map_or("--clear-groups".to_string(), |g| format!("--groups={g}"));
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .arg(common::server::vtestd_bin())
        .args(["status", "--json", "--admin-socket"])
        .arg(server.dir().join("admin.sock"))
        .output()
        .expect("run vtestd status under setpriv")
}

/// With `admin_group` set, the admin socket admits root, the broker's user
/// and members of that group, by their primary or a supplementary group
/// (read from /proc: SO_PEERCRED has the primary one only), and refuses
/// everyone else with a log line. The socket is made 0666 first, so that
/// the broker's check decides, not the socket's mode.
#[test]
#[cfg_attr(not(all(vtestd_root, vtestd_mesa)), ignore = "needs root and Mesa")]
fn the_admin_socket_admits_only_members_of_the_admin_group() {
    const ADMIN_GID: u32 = 64_310;
    const MEMBER: u32 = 64_311;
    const OUTSIDER: u32 = 64_312;
    const PRIMARY: u32 = 64_313;
    let server =
        Server::start_with_config(&format!("[server]\nadmin_group = \"{ADMIN_GID}\"\n"), &[]);
    let admin = server.dir().join("admin.sock");
    let meta = fs::metadata(&admin).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::gid(&meta),
            meta.permissions().mode() & 0o777
        ),
        (ADMIN_GID, 0o660),
        "the admin socket's group and mode"
    );
    fs::set_permissions(&admin, fs::Permissions::from_mode(0o666)).unwrap();

    let member = status_as(&server, MEMBER, MEMBER, Some(ADMIN_GID));
    assert!(
        member.status.success(),
        "a member by a supplementary group was refused: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&member.stdout).unwrap();
    assert_eq!(status["pid"], server.pid());

    let outsider = status_as(&server, OUTSIDER, OUTSIDER, None);
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(!outsider.status.success(), "a non-member was answered");
    assert!(err.contains("without an answer"), "{err}");
    assert!(
        eventually(5, || server.log_text().contains("admin request refused")),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin request refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains(&format!("uid={OUTSIDER}"))
            && refused[0].contains("not a member of the admin group"),
        "{log}"
    );

    let primary = status_as(&server, PRIMARY, ADMIN_GID, None);
    assert!(
        primary.status.success(),
        "a member by its primary group was refused: {}",
        String::from_utf8_lossy(&primary.stderr)
    );
    // Root (this test) still is, and nobody else was refused.
    server.status();
    assert_eq!(
        server.log_text().matches("admin request refused").count(),
        1
    );
}

/// Admin connections are served by the event loop without blocking it: 20
/// that never send a byte (more than the 16 kept at once) neither delay a
/// new client nor keep `vtestd status` from answering once they are closed
/// at their deadline.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn silent_admin_connections_stall_neither_clients_nor_status() {
    let server = Server::start_with(common::server::ServerKind::Vtestd, &["--pool=2"]);
    let pool_ready = || eventually(10, || server.status()["listeners"][0]["pool_ready"] == 2);
    let served = || {
        let start = Instant::now();
        let mut t = Tenant::connect(&server, "fresh");
        t.round_trip(9);
        start.elapsed()
    };
    assert!(pool_ready());
    let usual = served();
    assert!(pool_ready());

    let opened = Instant::now();
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(server.dir().join("admin.sock")).expect("connect"))
        .collect();
    // The broker has taken them: the 17th found the 16 kept at once.
    assert!(
        eventually(5, || server
            .log_text()
            .contains("admin connections at their limit")),
        "{}",
        server.log_text()
    );
    let meanwhile = served();
    println!("a fresh client: {usual:?} alone, {meanwhile:?} beside 20 silent admin connections");
    assert!(
        meanwhile < usual + Duration::from_millis(400),
        "a fresh client took {meanwhile:?} beside silent admin connections ({usual:?} alone)"
    );

    // Each is closed: the 4 beyond the limit at once, the others at their
    // deadline (500 ms).
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut byte = [0u8; 1];
        let end = std::io::Read::read(&mut s, &mut byte);
        assert!(
            matches!(end, Ok(0))
                || end
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a silent admin connection was not closed: {end:?} after {:?}",
            opened.elapsed()
        );
    }
    let closed = opened.elapsed();
    assert!(closed < Duration::from_secs(2), "closed after {closed:?}");

    let asked = Instant::now();
    assert!(server.status()["pid"] == server.pid());
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let log = server.log_text();
    assert_eq!(
        log.matches("admin connections at their limit").count(),
        1,
        "one line per streak:\n{log}"
    );
    assert!(
        log.contains("admin connections below their limit again"),
        "{log}"
    );
    assert!(log.contains("refused=4"), "{log}");
}

/// `clients_waited_for_start` counts the clients that found no initialised
/// worker: every client without a pool, none while the pool keeps up; and
/// status shows the pool's current target, arrival rate and start-up time.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn clients_that_wait_for_a_worker_start_are_counted() {
    let cold = Server::start(common::server::ServerKind::Vtestd);
    for i in 0..3 {
        Tenant::connect(&cold, &format!("cold-{i}")).round_trip(1);
    }
    let status = cold.status();
    assert_eq!(
        status["counters"]["clients_waited_for_start"], 3,
        "without a pool every client waits: {status}"
    );
    assert_eq!(status["listeners"][0]["pool_target"], 0, "{status}");

    let pooled = Server::start_with(
        common::server::ServerKind::Vtestd,
        &["--pool=1", "--pool-max=4"],
    );
    let ready = || pooled.status()["listeners"][0]["pool_ready"] == 1;
    for i in 0..3 {
        assert!(
            eventually(30, ready),
            "pool worker ready: {}",
            pooled.status()
        );
        Tenant::connect(&pooled, &format!("pooled-{i}")).round_trip(1);
    }
    assert!(eventually(30, ready));
    let status = pooled.status();
    assert_eq!(
        status["counters"]["clients_waited_for_start"], 0,
        "the pool kept up with clients one at a time: {status}"
    );
    let l = &status["listeners"][0];
    assert!(l["arrivals_per_sec"].as_f64().unwrap() > 0.0, "{status}");
    assert!(l["startup_ms"].as_u64().unwrap() > 0, "{status}");
    let target = l["pool_target"].as_u64().unwrap();
    assert!(
        (1..=4).contains(&target),
        "between pool and pool_max: {status}"
    );
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn only_a_listeners_first_worker_makes_the_check_context() {
    let server = Server::start_with_env(
        common::server::ServerKind::Vtestd,
        &["--pool=1"],
        &[("RUST_LOG", "info,vtestd=debug")],
    );
    let ready = || server.status()["listeners"][0]["pool_ready"] == 1;
    for i in 0..2 {
        assert!(
            eventually(30, ready),
            "pool worker ready: {}",
            server.status()
        );
        Tenant::connect(&server, &format!("client-{i}")).round_trip(1);
    }
    assert!(eventually(30, ready));
    let log = server.log_text();
    let startups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("start-up phases="))
        .collect();
    // The probe (which became the first pool worker), then one per client.
    assert!(startups.len() >= 3, "{log}");
    let checked = startups
        .iter()
        .filter(|l| l.contains("check context"))
        .count();
    assert_eq!(checked, 1, "the probe alone: {startups:#?}");
    assert!(startups[0].contains("check context"), "{startups:#?}");
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn a_client_is_served_by_the_context_its_worker_made_at_start_up() {
    // No pool: the probe ends, and each client's worker starts for it.
    let server = Server::start_with_env(
        common::server::ServerKind::Vtestd,
        &[],
        &[("RUST_LOG", "info,vtestd=debug,vtest_renderer=debug")],
    );
    for i in 0..2 {
        Tenant::connect(&server, &format!("client-{i}")).round_trip(1);
    }
    let broker = server.pid();
    assert!(eventually(10, || children(broker).is_empty()));
    let log = server.log_text();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let (startups, checks) = (count("start-up phases="), count("check context"));
    assert_eq!(startups, 3, "the probe and two clients' workers: {log}");
    // Each worker made one context at start-up (the probe one more, its
    // check); the clients' contexts were those.
    assert_eq!(count("context created"), startups + checks, "{log}");
    assert_eq!(
        count("the client's context was made at start-up"),
        2,
        "{log}"
    );
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn clients_beyond_one_start_per_core_queue_for_a_worker() {
    use std::io::Write;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // No pool, and workers that never become ready: the first clients hold
    // a start each, the rest must wait.
    let server = Server::start_with_env(
        common::server::ServerKind::Vtestd,
        &[],
        &[("VTESTD_TEST_NEVER_READY", "1")],
    );
    let broker = server.pid();
    let clients: Vec<UnixStream> = (0..cores + 2)
        .map(|_| {
            let mut s = UnixStream::connect(server.socket_path()).unwrap();
            // CREATE_RENDERER: the first byte asks for a worker.
            s.write_all(&[5, 0, 0, 0, 8, 0, 0, 0, b't', b'e', b's', b't', 0])
                .unwrap();
            s
        })
        .collect();
    let queued = || server.status()["listeners"][0]["queued"] == 2;
    assert!(eventually(10, queued), "{}", server.status());
    assert_eq!(children(broker).len(), cores, "one start per core");
    let status = server.status();
    let states: Vec<&str> = status["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "queued").count(),
        2,
        "{status}"
    );
    drop(clients);
    // Its workers never end on their own; they die with the broker.
    kill(Pid::from_raw(broker as i32), Signal::SIGKILL).unwrap();
}

/// Flags can make a valid configuration say nonsense: `--no-virgl` without
/// `--venus` would leave a listener that serves nothing. Refused at start,
/// with the reason, before any socket is bound.
#[test]
fn flags_that_leave_a_listener_serving_nothing_are_refused() {
    let dir = common::server::unique_dir("no-virgl");
    let socket = dir.join("s");
    let mut child = std::process::Command::new(common::server::vtestd_bin())
        .args(["serve", "--no-virgl", "--pool=0"])
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!(
            "--admin-socket={}",
            dir.join("admin.sock").display()
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that started would serve (nothing) until killed.
    let ended = common::procs::eventually(10, || child.try_wait().unwrap().is_some());
    let bound = socket.exists();
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        ended && !out.status.success(),
        "serve --no-virgl started: {err}"
    );
    assert!(err.contains("virgl = false needs vulkan = true"), "{err}");
    assert!(!bound, "the socket was bound");
}
