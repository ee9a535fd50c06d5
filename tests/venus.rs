//! End-to-end tests (venus): Vulkan through Mesa's Venus ICD against
//! `vtestd serve --venus`, whose workers each start a confined render
//! server, side by side with trixie's `virgl_test_server --venus`. They run
//! where virglrenderer 1.x, its render server, Mesa's Venus ICD and
//! lavapipe are installed (the Debian 13 stage of `scripts/test.sh`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mesa::{glmark2_score, mesa_command, run_client, work_dir, ClientOutput};
use common::procs::{children, eventually};
use common::server::{Server, ServerKind};
use common::xvfb::Xvfb;
use vtest_client::{Batch, Client};

/// Mesa's Venus ICD; `VN_DEBUG=vtest` makes it speak vtest.
const VENUS_ICD: &str = "/usr/share/vulkan/icd.d/virtio_icd.json";
/// `VIRGL_RENDERER_CAPSET_VENUS`.
const CAPSET_VENUS: u32 = 4;
/// `vtest` GET_PARAM `MAX_TIMELINE_COUNT`.
const PARAM_MAX_TIMELINE_COUNT: u32 = 1;
/// The render server's `comm` (15 bytes of `virgl_render_server`).
const RENDER_SERVER_COMM: &str = "virgl_render_se";

/// `program args...` as a Venus client of `server`.
fn vulkan_command(server: &Server, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .env("VK_DRIVER_FILES", VENUS_ICD)
        .env("VN_DEBUG", "vtest")
        .env("VTEST_SOCKET_NAME", server.socket_path())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    c
}

fn vulkaninfo(server: &Server, dir: &Path, name: &str, args: &[&str]) -> ClientOutput {
    let cmd = vulkan_command(server, "vulkaninfo", args);
    run_client(cmd, dir, name, Duration::from_secs(60))
}

/// vulkaninfo's report without the lines that differ between two runs on
/// one machine for reasons of its own (no display to report surfaces on).
fn report(out: &ClientOutput) -> Vec<String> {
    out.stdout
        .lines()
        .filter(|l| !l.contains("environment variable not set"))
        .map(str::to_string)
        .collect()
}

/// Every process below `pid`, with its `comm`.
fn descendants(pid: u32) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            let comm = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            out.insert(c, comm.trim().to_string());
            todo.push(c);
        }
    }
    out
}

/// The render servers below `root` and every process they forked (which
/// name themselves after their context soon after the fork).
fn render_servers(root: u32) -> Vec<u32> {
    let mut out: Vec<u32> = descendants(root)
        .into_iter()
        .filter(|(_, comm)| comm == RENDER_SERVER_COMM)
        .map(|(pid, _)| pid)
        .collect();
    for pid in out.clone() {
        out.extend(descendants(pid).into_keys());
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `/proc/<pid>/status` fields.
fn status_fields(pid: u32) -> BTreeMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// A Venus client with a live context: handshake at protocol 3, the
/// timeline count, the capset and CONTEXT_INIT(4), as Mesa's ICD starts.
fn venus_client(server: &Server) -> Client {
    let mut c = Client::connect(server.socket_path()).expect("connect");
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(c.handshake("venus-test", 3).expect("handshake"), 3);
    let (valid, timelines) = c.get_param(PARAM_MAX_TIMELINE_COUNT).expect("GET_PARAM");
    assert!(valid && timelines > 0, "timelines: {valid} {timelines}");
    let caps = c.get_capset(CAPSET_VENUS, 0).expect("GET_CAPSET");
    assert!(caps.is_some_and(|c| !c.is_empty()), "no Venus capset");
    c.context_init(CAPSET_VENUS).expect("CONTEXT_INIT");
    // A round trip, so the context exists before the caller looks.
    c.get_param(PARAM_MAX_TIMELINE_COUNT)
        .expect("GET_PARAM after CONTEXT_INIT");
    c
}

fn vtestd_venus() -> Server {
    Server::start_with(ServerKind::Vtestd, &["--venus"])
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_venus)),
    ignore = "needs root and Venus (virglrenderer 1.x, its render server, Mesa's Venus ICD, vulkaninfo)"
)]
fn vulkaninfo_through_vtestd_matches_the_reference() {
    let dir = work_dir("vulkaninfo");
    let ours = vtestd_venus();
    let reference = Server::start_with(ServerKind::Reference, &["--venus"]);
    let a = vulkaninfo(&ours, &dir, "vtestd", &[]);
    let b = vulkaninfo(&reference, &dir, "reference", &[]);
    assert!(
        a.success(),
        "through vtestd:\n{}\n{}",
        a.describe(),
        ours.log_text()
    );
    assert!(b.success(), "through the reference:\n{}", b.describe());
    let (a, b) = (report(&a), report(&b));
    assert!(
        a.iter()
            .any(|l| l.contains("deviceName") && l.contains("Venus")),
        "no Venus device:\n{}",
        a.join("\n")
    );
    // Device name, API version, extensions, features, limits, formats and
    // memory types: every line the same.
    let differ: Vec<String> = a
        .iter()
        .zip(b.iter())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("vtestd: {x}\nreference: {y}"))
        .take(20)
        .collect();
    assert!(
        differ.is_empty() && a.len() == b.len(),
        "vulkaninfo differs ({} vs {} lines):\n{}",
        a.len(),
        b.len(),
        differ.join("\n")
    );
}

#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_venus)),
    ignore = "needs root and Venus (virglrenderer 1.x, its render server, Mesa's Venus ICD, vulkaninfo)"
)]
fn the_render_server_of_a_live_venus_client_is_confined() {
    let server = vtestd_venus();
    let broker = server.pid();
    let client = venus_client(&server);
    // The render server and the process it forked for the client's context.
    assert!(
        eventually(20, || render_servers(broker).len() >= 2),
        "render server processes: {:?}\n{}",
        descendants(broker),
        server.log_text()
    );
    let workers = children(broker);
    assert_eq!(workers.len(), 1, "one worker: {:?}", descendants(broker));
    let worker_pid_ns = fs::read_link(format!("/proc/{}/ns/pid", workers[0])).unwrap();
    let mut pid_one = 0;
    for pid in render_servers(broker) {
        let st = status_fields(pid);
        assert_eq!(st["Seccomp"], "2", "render server {pid}: {st:?}");
        assert_eq!(st["NoNewPrivs"], "1", "render server {pid}: {st:?}");
        assert_eq!(
            st["CapEff"], "0000000000000000",
            "render server {pid}: {st:?}"
        );
        // In a PID namespace of its own, not the worker's.
        let ns = fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        assert_ne!(
            ns, worker_pid_ns,
            "render server {pid} shares the worker's PID namespace"
        );
        if st["NSpid"].split_whitespace().last() == Some("1") {
            pid_one += 1;
        }
        // And in a user and network namespace other than the host's.
        for kind in ["user", "net", "mnt"] {
            let theirs = fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
            let host = fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
            assert_ne!(theirs, host, "render server {pid}: host {kind} namespace");
        }
    }
    assert_eq!(pid_one, 1, "the render server is PID 1 of its namespace");
    // A blob the client maps (a host blob with id 0: Mesa's Venus shares
    // its rings this way, memory of the render server) comes sealed: the
    // client cannot shrink or grow it under the render server.
    let mut client = client;
    let (_, fd) = client
        .resource_create_blob(2, 1, 1 << 20, 0)
        .expect("a ring blob");
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let seals = SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap());
    assert!(
        seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL),
        "seals {seals:?}"
    );
    // Its seccomp profile kills on a call outside it (not a trap the
    // render server could catch).
    drop(client);
    assert!(
        eventually(20, || descendants(broker).is_empty()),
        "left running after the client left: {:?}",
        descendants(broker)
    );
}

/// Hostile Venus clients: each ends alone, the broker and the next client
/// carry on, and nothing of the client's stays running.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_venus)),
    ignore = "needs root and Venus (virglrenderer 1.x, its render server, Mesa's Venus ICD, vulkaninfo)"
)]
fn hostile_venus_clients_end_alone() {
    let server = vtestd_venus();
    let broker = server.pid();
    type Case = (&'static str, fn(&mut Client) -> vtest_client::Result<()>);
    let cases: Vec<Case> = vec![
        ("unknown capset", |c| {
            c.context_init(99)?;
            c.get_param(PARAM_MAX_TIMELINE_COUNT).map(drop)
        }),
        ("absurd host blob", |c| {
            // 1 TiB of device memory, mappable.
            c.resource_create_blob(2, 1, 1 << 40, 1).map(drop)
        }),
        ("absurd guest blob", |c| {
            c.resource_create_blob(1, 1, 1 << 40, 0).map(drop)
        }),
        ("random Venus command stream", |c| {
            let mut x: u32 = 0x2545_f491;
            let cmd: Vec<u32> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x
                })
                .collect();
            let sync = c.sync_create(0)?;
            c.submit_cmd2(&[Batch {
                flags: 1,
                cmd,
                syncs: vec![(sync, 1)],
                ring_idx: 1,
            }])?;
            c.get_param(PARAM_MAX_TIMELINE_COUNT).map(drop)
        }),
        ("a sync waited on and never signalled", |c| {
            let sync = c.sync_create(0)?;
            let _fd = c.sync_wait(0, u32::MAX, &[(sync, 7)])?;
            Ok(())
        }),
        ("disconnect mid-request", |c| {
            c.send_raw(&[6, 0, 0, 0, 26, 0])
        }),
    ];
    let mut failures = Vec::new();
    for (name, run) in cases {
        {
            let mut c = venus_client(&server);
            let _ = run(&mut c);
            // The client leaves (or was put out) here.
        }
        if !eventually(20, || descendants(broker).is_empty()) {
            failures.push(format!("{name}: left running: {:?}", descendants(broker)));
        }
        if !server.status()["pid"].is_number() {
            failures.push(format!("{name}: the broker stopped answering"));
        }
        // The next client is served.
        let mut next = venus_client(&server);
        if let Err(e) = next.get_capset(CAPSET_VENUS, 0) {
            failures.push(format!("{name}: the next client was not served: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- server log ---\n{}",
        failures.join("\n"),
        server.log_text()
    );
}

/// A GL client and a Venus client at once; the Venus client's render server
/// crashes: only that client ends, the GL one finishes its benchmark.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_venus, vtestd_clients)),
    ignore = "needs root, Venus and the Mesa clients"
)]
fn a_crashed_render_server_ends_only_its_client() {
    let xvfb = Xvfb::start();
    let server = vtestd_venus();
    let broker = server.pid();
    let dir = work_dir("venus-mixed");
    let mut venus = venus_client(&server);
    assert!(
        eventually(20, || render_servers(broker).len() >= 2),
        "render server processes: {:?}",
        descendants(broker)
    );
    // Every worker of a Venus listener has a render server; the Venus
    // client's is the only worker so far.
    let venus_worker = children(broker);
    assert_eq!(venus_worker.len(), 1, "{:?}", descendants(broker));
    let cmd = mesa_command(
        &server,
        &xvfb,
        "glmark2",
        &["--off-screen", "-b", "build:duration=4"],
    );
    let gl = std::thread::spawn({
        let dir = dir.clone();
        move || run_client(cmd, &dir, "glmark2", Duration::from_secs(120))
    });
    std::thread::sleep(Duration::from_secs(1));
    for pid in render_servers(venus_worker[0]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // The Venus client is put out: its worker ends.
    let ended = venus.expect_disconnect(Duration::from_secs(20));
    let out = gl.join().unwrap();
    assert!(
        out.success() && glmark2_score(&out.stdout).is_some(),
        "glmark2 beside the crash:\n{}\n{}",
        out.describe(),
        server.log_text()
    );
    assert!(
        ended.is_ok(),
        "the Venus client was not put out: {ended:?}\n{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("render server"),
        "no reason logged:\n{}",
        server.log_text()
    );
    assert!(eventually(20, || descendants(broker).is_empty()));
}

/// `tests/vulkan/buffer_copy.c`, built for this run.
fn buffer_copy_program(dir: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vulkan/buffer_copy.c");
    let program = dir.join("buffer_copy");
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&program)
        .arg(&source)
        .arg("-lvulkan")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    program
}

/// A device buffer filled on the device, copied into a host-visible one,
/// a fence, every word checked: through vtestd it ends exactly as through
/// the reference (on a host where lavapipe cannot export host-visible
/// memory, both refuse the allocation; where the reference passes, vtestd
/// passes).
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_venus)),
    ignore = "needs root and Venus (virglrenderer 1.x, its render server, Mesa's Venus ICD, vulkaninfo)"
)]
fn a_vulkan_program_ends_as_through_the_reference() {
    let dir = work_dir("vulkan-program");
    let program = buffer_copy_program(&dir);
    let program = program.to_str().unwrap();
    let ours = vtestd_venus();
    let reference = Server::start_with(ServerKind::Reference, &["--venus"]);
    // Both at once; Mesa's Venus ICD spins on a connection the server
    // closed (vtest_read retries a read that returns 0), so a refused
    // client does not exit: the limit ends it.
    let run = |server: &Server, name: &'static str| {
        let cmd = vulkan_command(server, program, &[]);
        let dir = dir.clone();
        std::thread::spawn(move || run_client(cmd, &dir, name, Duration::from_secs(20)))
    };
    let (a, b) = (run(&ours, "vtestd"), run(&reference, "reference"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(
        a.timed_out,
        b.timed_out,
        "{}\n{}",
        a.describe(),
        b.describe()
    );
    let last = |o: &ClientOutput| o.stdout.lines().last().unwrap_or_default().to_string();
    println!("vtestd: {}\nreference: {}", last(&a), last(&b));
    let ended = |o: &ClientOutput| (o.timed_out, o.status.and_then(|s| s.code()), last(o));
    assert_eq!(
        ended(&a),
        ended(&b),
        "vtestd:\n{}\nreference:\n{}\n--- vtestd log ---\n{}",
        a.describe(),
        b.describe(),
        ours.log_text()
    );
    if !a.success() {
        // A refusal is a reason in the log (the client hears only the end
        // of its connection: the protocol has no error reply for it).
        assert!(
            ours.log_text().contains("ResourceCreateBlob"),
            "no reason logged:\n{}",
            ours.log_text()
        );
    }
    assert!(ours.status()["pid"].is_number(), "the broker carries on");
}

/// Venus command streams captured from vulkaninfo
/// (`fuzz/tools/capture.py --venus`), replayed as they are and with bytes
/// flipped past the handshake: whatever the render server makes of them,
/// the client ends alone and nothing of it stays running.
#[test]
#[cfg_attr(
    not(all(vtestd_root, vtestd_venus)),
    ignore = "needs root and Venus (virglrenderer 1.x, its render server, Mesa's Venus ICD, vulkaninfo)"
)]
fn captured_venus_streams_replayed_and_mutated() {
    use std::io::{Read, Write};
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/venus");
    let mut seeds: Vec<_> = fs::read_dir(&corpus)
        .expect("fuzz/corpus/venus")
        .flatten()
        .map(|e| e.path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", corpus.display());
    let server = vtestd_venus();
    let broker = server.pid();
    let mut failures = Vec::new();
    let mut x: u32 = 0x9e37_79b9;
    for seed in &seeds {
        let original = fs::read(seed).unwrap();
        for round in 0..3 {
            let mut bytes = original.clone();
            // Round 0 as captured; then one byte in 64 flipped after the
            // handshake (its first 96 bytes).
            if round > 0 {
                for b in bytes.iter_mut().skip(96) {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if x.is_multiple_of(64) {
                        *b ^= (x >> 8) as u8 | 1;
                    }
                }
            }
            let name = format!("{} round {round}", seed.display());
            let mut s = server.connect();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            // The server may put the client out before it has read all.
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            drop(s);
            if !eventually(20, || descendants(broker).is_empty()) {
                failures.push(format!("{name}: left running: {:?}", descendants(broker)));
            }
            let mut next = venus_client(&server);
            if let Err(e) = next.get_capset(CAPSET_VENUS, 0) {
                failures.push(format!("{name}: the next client was not served: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- server log ---\n{}",
        failures.join("\n"),
        server.log_text()
    );
}
