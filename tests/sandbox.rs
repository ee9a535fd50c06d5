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
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
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
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn sandbox_off_is_loud_and_unconfined() {
    let server = Server::start_with(ServerKind::Vtestd, &["--sandbox=off"]);
    let (_client, worker) = connected(&server);
    assert_eq!(status_field(worker, "Seccomp"), "0");
    assert!(server.log_text().contains("UNCONFINED"));
}

/// A cache directory in the broker's environment is not handed to workers
/// (it would be one writable directory shared by every client): they get
/// their listener's, or none with `--shader-cache=off`; and each
/// worker's RLIMIT_FSIZE bounds its memfds at the listener's largest
/// resource (`max_resource_mib` + 1 MiB).
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn workers_get_no_shared_cache_directory_and_bounded_files() {
    let cache = common::server::unique_dir("broker-cache");
    let config = "[limits.default]\nmax_resource_mib = 64\n";
    let dir = common::server::unique_dir("limits-config");
    let path = dir.join("vtestd.toml");
    fs::write(&path, config).unwrap();
    let arg = format!("--config={}", path.display());
    let cache_s = cache.display().to_string();
    let server = Server::start_with_env(
        ServerKind::Vtestd,
        &[arg.as_str()],
        &[("MESA_SHADER_CACHE_DIR", cache_s.as_str())],
    );
    let (_client, reaper) = connected(&server);
    let worker = common::procs::children(reaper)[0];
    let environ = fs::read(format!("/proc/{worker}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(&format!("MESA_SHADER_CACHE_DIR={cache_s}\0")),
        "{environ}"
    );
    assert!(environ.contains("MESA_SHADER_CACHE_DIR="), "{environ}");
    let off = Server::start_with_env(
        ServerKind::Vtestd,
        &["--shader-cache=off"],
        &[("MESA_SHADER_CACHE_DIR", cache_s.as_str())],
    );
    let (_off_client, off_reaper) = connected(&off);
    let off_worker = common::procs::children(off_reaper)[0];
    let off_env = fs::read(format!("/proc/{off_worker}/environ")).unwrap();
    let off_env = String::from_utf8_lossy(&off_env);
    assert!(!off_env.contains("MESA_SHADER_CACHE_DIR"), "{off_env}");
    assert!(
        off_env.contains("MESA_SHADER_CACHE_DISABLE=true"),
        "{off_env}"
    );
    let limits = fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    let fsize = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap_or_default()
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string();
    assert_eq!(fsize, (65u64 << 20).to_string(), "{limits}");
    assert_eq!(
        fs::read_dir(&cache).unwrap().count(),
        0,
        "the worker wrote into it"
    );
    let _ = fs::remove_dir_all(&cache);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    not(all(feature = "test-hooks", vtestd_mesa)),
    ignore = "needs --features test-hooks and Mesa"
)]
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
    // The structured record (`vtestd status --json`): its category, the
    // syscall by name and number, and whose client it was.
    let me = nix::unistd::getuid().as_raw();
    let mut exit = serde_json::Value::Null;
    assert!(
        eventually(10, || {
            exit = server.status()["recent_exits"][0].clone();
            !exit.is_null()
        }),
        "no exit record; log:\n{}",
        server.log_text()
    );
    assert_eq!(exit["category"], "seccomp_violation", "{exit}");
    let reason = exit["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("seccomp violation: socket ("), "{exit}");
    assert!(reason.contains("SIGSYS"), "{exit}");
    assert_eq!(exit["uid"], me, "{exit}");
    assert_eq!(
        server.status()["counters"]["worker_exits"]["seccomp_violation"],
        1
    );
    assert!(server.is_alive());
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn piglit_passes_as_well_confined_as_not() {
    let xvfb = Xvfb::start();
    let limit = Duration::from_secs(240);
    // The confined server's warnings (a worker's seccomp violation, say)
    // explain a difference, so they go into the failure message.
    let (confined, warnings) = {
        let server = Server::start(ServerKind::Vtestd);
        let results =
            run_piglit(&server, &xvfb, PIGLIT_PROFILE, limit).unwrap_or_else(|e| panic!("{e}"));
        let log = server.log_text();
        let warnings: Vec<String> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect();
        (results, warnings.join("\n"))
    };
    let unconfined = {
        let server = Server::start_with(ServerKind::Vtestd, &["--sandbox=off"]);
        run_piglit(&server, &xvfb, PIGLIT_PROFILE, limit).unwrap_or_else(|e| panic!("{e}"))
    };
    println!("sandbox on:  {}", confined.summary());
    println!("sandbox off: {}", unconfined.summary());
    assert!(unconfined.count("pass") > 0);
    assert_eq!(
        confined.count("pass"),
        unconfined.count("pass"),
        "not passing confined: {:?}\nconfined server's warnings:\n{warnings}",
        confined.with_result("crash")
    );
    assert_eq!(confined.failures(), unconfined.failures(), "{warnings}");
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
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

/// The mappings of `pid` that are writable and executable at once, by size.
fn write_exec_mappings(pid: u32) -> Vec<u64> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("rwxp"))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            Some(u64::from_str_radix(end, 16).ok()? - start)
        })
        .collect()
}

/// Mesa's x86 vertex-translation heap (the draw module's `translate_sse`:
/// one 10 MiB mapping writable and executable, made at a process's first
/// draw) gets through the production llvmpipe filter, so that a client's
/// vertices do not go through Mesa's slower C path; it is the only W+X
/// mapping any process of the server holds (libglapi's 4 KiB stub page
/// is still refused). Without `no-wx-llvmpipe.json` no worker has it.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn a_drawing_worker_gets_mesas_vertex_translation_heap() {
    use common::mesa::{mesa_command, run_client, work_dir};
    const HEAP: u64 = 10 << 20;
    let xvfb = Xvfb::start();
    let server = Server::start(ServerKind::Vtestd);
    let broker = server.pid();
    let dir = work_dir("glmark2-vertex-heap");
    let cmd = mesa_command(
        &server,
        &xvfb,
        "glmark2",
        &["--off-screen", "-b", "build:duration=4"],
    );
    let glmark2 = std::thread::spawn(move || {
        let out = run_client(cmd, &dir, "glmark2", Duration::from_secs(120));
        let _ = fs::remove_dir_all(&dir);
        out
    });
    let mut seen: Vec<(u32, u64)> = Vec::new();
    let found = eventually(60, || {
        seen = std::iter::once(broker)
            .chain(common::procstat::descendants(broker))
            .flat_map(|pid| {
                write_exec_mappings(pid)
                    .into_iter()
                    .map(move |len| (pid, len))
            })
            .collect();
        seen.iter().any(|&(_, len)| len == HEAP)
    });
    let out = glmark2.join().unwrap();
    assert!(out.success(), "glmark2: {}", out.describe());
    assert!(
        found,
        "no worker mapped Mesa's 10 MiB vertex-translation heap while glmark2 drew \
         (W+X mappings seen: {seen:?}); log:\n{}",
        server.log_text()
    );
    assert!(
        seen.iter().all(|&(_, len)| len == HEAP),
        "W+X mappings other than the heap: {seen:?}"
    );
    let log = server.log_text();
    assert!(!log.contains("seccomp violation"), "{log}");
}

/// A vtestd started under plain `chroot` in a root of binds (the directory
/// itself not a mount point, where the kernel also refuses user
/// namespaces: build chroots, proot- and Termux-like hosts), with `extra`
/// arguments; its log is returned by [`Chrooted::log`].
struct Chrooted {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Chrooted {
    fn start(extra: &str) -> Chrooted {
        let dir = common::server::unique_dir("chroot");
        let root = dir.join("root");
        fs::create_dir_all(root.join("tmp")).unwrap();
        let bin = common::server::vtestd_bin();
        let script = r#"
            set -e
            R="$0"; B="$1"; X="$2"
            for d in usr etc dev proc sys vtestd; do mkdir -p "$R/$d"; done
            mount --bind /usr "$R/usr"
            for l in lib lib64 bin sbin; do [ -L "/$l" ] && ln -s "$(readlink "/$l")" "$R/$l"; done
            cp /etc/ld.so.cache "$R/etc/"; [ -e /etc/drirc ] && cp /etc/drirc "$R/etc/"
            mount --rbind /dev "$R/dev"; mount -t proc proc "$R/proc"; mount --rbind /sys "$R/sys"
            mount --bind "$B" "$R/vtestd"
            exec chroot "$R" /vtestd/vtestd serve --socket-path=/tmp/sock --admin-socket=/tmp/admin.sock --pool=0 $X
        "#;
        let child = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .arg(&root)
            .arg(bin.parent().unwrap())
            .arg(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .expect("start vtestd under chroot");
        Chrooted { dir, child }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.join("root/tmp/sock")
    }
}

impl Drop for Chrooted {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The sandbox fails closed: under plain chroot the kernel refuses a user
/// namespace and the root is no mount point, so by default vtestd refuses
/// to serve, naming the layers.
#[test]
#[cfg_attr(not(all(vtestd_root, vtestd_mesa)), ignore = "needs root and Mesa")]
fn a_host_without_required_layers_is_refused_at_start() {
    let mut server = Chrooted::start("");
    let exited = eventually(30, || matches!(server.child.try_wait(), Ok(Some(_))));
    let log = server.log();
    assert!(exited, "vtestd served without its sandbox layers:\n{log}");
    assert!(
        log.contains("its workers cannot start with this configuration")
            && log.contains("required sandbox layers unavailable on this host: user-namespace")
            && log.contains("mount-namespace (the root directory is not a mount point"),
        "{log}"
    );
}

/// With the layers named in `sandbox_allow_missing` (here the flag), the
/// same host is served with the layers it can have, and says which it lacks.
#[test]
#[cfg_attr(not(all(vtestd_root, vtestd_mesa)), ignore = "needs root and Mesa")]
fn a_worker_under_plain_chroot_serves_with_the_layers_it_can_have() {
    let server = Chrooted::start("--sandbox-allow-missing=user-namespace,mount-namespace");
    assert!(
        eventually(30, || server.log().contains("a worker started")),
        "vtestd under chroot did not start a worker:\n{}",
        server.log()
    );
    let mut client = Client::connect(server.socket()).expect("connect");
    assert_eq!(client.handshake("chroot-test", 2).unwrap(), 2);
    let args = ResourceArgs::texture_2d(16, 16).with_handle(1);
    let (_, fd) = client.resource_create2(&args, 16 * 16 * 4).unwrap();
    assert!(fd.is_some(), "a shared-memory resource under chroot");
    assert!(client.busy_wait(1, true).is_ok());
    drop(client);
    assert!(eventually(10, || server
        .log()
        .contains("worker finished: client disconnected")));
    let text = server.log();
    assert!(
        text.contains("worker sandbox weakened (allowed by sandbox_allow_missing)")
            && text
                .contains("mount-namespace unavailable (the root directory is not a mount point"),
        "the missing layers are named:\n{text}"
    );
    assert!(!text.contains("worker initialisation failed"), "{text}");
}

/// A render node that gives Mesa no hardware driver (here /dev/null; on
/// real hosts NVIDIA's proprietary driver) makes Mesa fall back to
/// llvmpipe, whose JIT needs executable memory that the GPU profile
/// forbids once serving: the worker notices and serves with the llvmpipe
/// profile instead of dying at the client's first shader.
#[test]
#[cfg_attr(not(all(vtestd_root, vtestd_mesa)), ignore = "needs root and Mesa")]
fn a_render_node_without_a_hardware_renderer_is_served_with_the_llvmpipe_profile() {
    let xvfb = Xvfb::start();
    let server = Server::start_with(ServerKind::Vtestd, &["--rendernode=/dev/null"]);
    short_glmark2_scores(&server, &xvfb, "glmark2 on the fallback renderer");
    let log = server.log_text();
    assert!(log.contains("Mesa fell back to software"), "{log}");
    assert!(!log.contains("seccomp violation"), "{log}");
}

/// One short off-screen glmark2 run (the shading scene) through `server`;
/// panics with `what` unless it succeeds with a positive score.
fn short_glmark2_scores(server: &Server, xvfb: &Xvfb, what: &str) {
    let dir = common::mesa::work_dir("glmark2-short");
    let args = ["--off-screen", "-b", "shading:duration=1"];
    let cmd = common::mesa::mesa_command(server, xvfb, "glmark2", &args);
    let out = common::mesa::run_client(cmd, &dir, "glmark2", Duration::from_secs(120));
    assert!(
        out.success() && common::mesa::glmark2_score(&out.stdout).unwrap_or(0) > 0,
        "{}",
        common::mesa::failure(what, &out, server, xvfb)
    );
    let _ = fs::remove_dir_all(&dir);
}

/// The shader cache (on by default, one per listener) works under the
/// production sandbox: Mesa's single-file cache is opened while the worker
/// initialises and written through its fds once serving (flock, a
/// lower-priority writer thread), with no file opened in steady state and
/// no SIGSYS; with `--shader-cache=uid` each client uid has its own.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn the_shader_cache_works_under_the_production_sandbox() {
    let xvfb = Xvfb::start();
    for (scope, below) in [("listener", ""), ("uid", "uid-0")] {
        let cache = common::server::shader_cache_dir("sandbox");
        let dir = format!("--shader-cache-dir={}", cache.display());
        let scope_arg = format!("--shader-cache={scope}");
        let server = Server::start_with(ServerKind::Vtestd, &[dir.as_str(), scope_arg.as_str()]);
        for round in 0..2 {
            short_glmark2_scores(
                &server,
                &xvfb,
                &format!("glmark2 with the {scope} shader cache, round {round}"),
            );
        }
        let log = server.log_text();
        assert!(!log.contains("seccomp violation"), "{log}");
        assert!(
            !log.contains("for shader cache") && !log.contains("shader cache unusable"),
            "the cache was disabled:\n{log}"
        );
        // The entries went into the scope's directory, in the single file.
        let entries = cache_bytes(&cache.join(below));
        assert!(
            entries > 1024,
            "{scope}: no shader cache entries under {}",
            cache.join(below).display()
        );
        let _ = fs::remove_dir_all(&cache);
    }
}

/// Bytes in Mesa's single-file caches below `dir`.
fn cache_bytes(dir: &std::path::Path) -> u64 {
    walk(dir)
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "foz_cache.foz"))
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// Waits until the cache below `dir` stops growing (unchanged for a second).
fn settled(dir: &std::path::Path) {
    let mut last = cache_bytes(dir);
    let mut stable_since = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stable_since.elapsed() < Duration::from_secs(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} keeps growing",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
        let now = cache_bytes(dir);
        if now != last {
            last = now;
            stable_since = std::time::Instant::now();
        }
    }
}

/// Two listeners (two tenants): each one's workers see their own cache
/// directory and not the other's (their mount view holds only their own;
/// the other's path does not exist for them), and a client's shaders land
/// only in its own listener's cache.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_mesa, vtestd_clients)),
    ignore = "needs root, Mesa and the Mesa clients"
)]
fn two_listeners_never_see_each_others_shader_cache() {
    let xvfb = Xvfb::start();
    let root = common::server::shader_cache_dir("tenants");
    let other_socket = common::server::unique_dir("tenant-b").join("b.sock");
    let config = format!(
        "[server]\nshader_cache_dir = \"{}\"\n\n\
         [[listener]]\nname = \"tenant-a\"\npool = 1\n\n\
         [[listener]]\nname = \"tenant-b\"\npath = \"{}\"\npool = 1\n",
        root.display(),
        other_socket.display()
    );
    let server = Server::start_with_config(&config, &["--pool=1", "--shader-cache=listener"]);
    let (a, b) = (root.join("tenant-a"), root.join("tenant-b"));
    // Each pool worker opened its own listener's cache while initialising.
    assert!(
        eventually(30, || cache_bytes(&a) > 0 && cache_bytes(&b) > 0),
        "both caches made: {:?}",
        walk(&root)
    );
    // The pool workers (inside their reapers), by the cache they were given.
    let mut seen = Vec::new();
    assert!(eventually(30, || {
        seen = common::procs::children(server.pid())
            .into_iter()
            .flat_map(common::procs::children)
            .filter_map(|pid| {
                let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
                let dir = env
                    .split(|&b| b == 0)
                    .find_map(|v| v.strip_prefix(b"MESA_SHADER_CACHE_DIR="))?;
                Some((
                    pid,
                    std::path::PathBuf::from(String::from_utf8_lossy(dir).as_ref()),
                ))
            })
            .collect();
        seen.len() == 2
    }));
    for (pid, own) in &seen {
        let other = if own == &a { &b } else { &a };
        assert!(
            own == &a || own == &b,
            "worker {pid}: cache {}",
            own.display()
        );
        let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let has = |dir: &std::path::Path| mounts.contains(&format!(" {} ", dir.display()));
        assert!(
            has(own),
            "worker {pid} lacks its cache {}:\n{mounts}",
            own.display()
        );
        assert!(
            !has(other),
            "worker {pid} has {}:\n{mounts}",
            other.display()
        );
        let through = |dir: &std::path::Path| {
            std::path::Path::new(&format!("/proc/{pid}/root")).join(dir.strip_prefix("/").unwrap())
        };
        assert!(through(own).is_dir(), "worker {pid}: own cache not visible");
        assert!(
            !through(other).exists(),
            "worker {pid} can reach {}",
            other.display()
        );
    }
    // A client of tenant A compiles its shaders into A's cache only. First
    // the pool workers' own entries settle (Mesa 25 writes them from a
    // thread, after Ready).
    settled(&a);
    settled(&b);
    let before_b = cache_bytes(&b);
    let before_a = cache_bytes(&a);
    short_glmark2_scores(&server, &xvfb, "glmark2 through tenant A");
    assert!(
        eventually(10, || cache_bytes(&a) > before_a),
        "tenant A's cache did not grow"
    );
    assert_eq!(cache_bytes(&b), before_b, "tenant B's cache changed");
    drop(server);
    let _ = fs::remove_dir_all(&root);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
