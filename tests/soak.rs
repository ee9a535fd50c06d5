//! Soak (short version; `bench/soak.py` is the long run): hundreds of
//! sequential clients, then 64 at once, each completing a resource round
//! trip with checked data. The broker's fd count and RSS must end where they
//! started (after a warm-up), no zombies, every worker gone and accounted for
//! in the log.
//!
//! `cargo test -p vtestd --test soak -- --test-threads=1 --nocapture`

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use common::arena::TryRoundTrip;
use common::procs::{children, eventually};
use common::procstat::{fd_count, mib, rss_kib, zombie_children};
use common::server::{Server, ServerKind};
use common::tenant::Tenant;

/// Sequential clients after the warm-up.
const SEQUENTIAL: usize = 2000;
/// Clients at once.
const CONCURRENT: usize = 64;
/// Clients before the baseline is taken.
const WARM_UP: usize = 20;
/// What the broker may hold beyond its baseline at the end: none of its fds
/// are per-client once the workers are gone (measured: +0); its heap may
/// keep a little of what 64 live workers needed, their table and channel
/// buffers (measured: +0 to +128 KiB of 10.7 MiB).
const FD_MARGIN: usize = 0;
const RSS_MARGIN_KIB: u64 = 1024;

fn one_client(server: &Server, i: usize) {
    let mut t = Tenant::connect(server, &format!("soak-{i}"));
    t.round_trip(i as u8);
}

fn settle(broker: u32) {
    assert!(
        eventually(30, || children(broker).is_empty()),
        "workers left: {:?}",
        children(broker)
    );
    assert!(zombie_children(broker).is_empty());
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn sequential_then_concurrent_clients_leave_the_broker_as_it_was() {
    let server = Server::start(ServerKind::Vtestd);
    let broker = server.pid();
    for i in 0..WARM_UP {
        one_client(&server, i);
    }
    settle(broker);
    let (fds0, rss0) = (fd_count(broker), rss_kib(broker));
    println!("baseline after {WARM_UP} clients: {fds0} fds, {rss0} KiB RSS");
    let start = Instant::now();
    let mut most_workers = 0;
    for i in 0..SEQUENTIAL {
        one_client(&server, WARM_UP + i);
        most_workers = most_workers.max(children(broker).len());
        if (i + 1) % 100 == 0 {
            println!(
                "{:>4} sequential clients in {:.1} s: broker {} fds, {} MiB RSS, {} workers alive",
                i + 1,
                start.elapsed().as_secs_f64(),
                fd_count(broker),
                mib(rss_kib(broker)),
                children(broker).len()
            );
        }
    }
    settle(broker);
    let (fds1, rss1) = (fd_count(broker), rss_kib(broker));
    println!(
        "after {SEQUENTIAL} sequential clients ({:.1} s, at most {most_workers} workers at once): {fds1} fds, {rss1} KiB RSS",
        start.elapsed().as_secs_f64()
    );

    // All at once: every client connects, completes its round trip, and waits
    // for the others before hanging up, so that 64 workers are alive together.
    let start = Instant::now();
    let connected = Arc::new(Barrier::new(CONCURRENT + 1));
    let hang_up = Arc::new(Barrier::new(CONCURRENT + 1));
    let socket = server.socket_path().to_path_buf();
    let threads: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let (connected, hang_up, socket) = (connected.clone(), hang_up.clone(), socket.clone());
            thread::spawn(move || {
                let mut c = vtest_client::Client::connect(&socket).expect("connect");
                let r = (|| -> Result<Tenant, String> {
                    c.handshake(&format!("soak-c{i}"), 2)
                        .map_err(|e| e.to_string())?;
                    let args = vtest_client::ResourceArgs::texture_2d(64, 64).with_handle(1);
                    let (handle, fd) = c
                        .resource_create2(&args, common::arena::SHM_BYTES)
                        .map_err(|e| e.to_string())?;
                    let mut t = Tenant {
                        client: c,
                        shm: std::fs::File::from(fd.ok_or("no memfd")?),
                        handle,
                    };
                    t.try_round_trip(i as u8)?;
                    Ok(t)
                })();
                connected.wait();
                hang_up.wait();
                r.map(drop)
            })
        })
        .collect();
    connected.wait();
    let workers = children(broker).len();
    let (fds_peak, rss_peak) = (fd_count(broker), rss_kib(broker));
    hang_up.wait();
    let results: Vec<Result<(), String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "concurrent clients failed: {failed:?}");
    assert_eq!(workers, CONCURRENT, "one worker per concurrent client");
    settle(broker);
    let (fds2, rss2) = (fd_count(broker), rss_kib(broker));
    println!(
        "{CONCURRENT} concurrent clients in {:.1} s: broker {fds_peak} fds and {rss_peak} KiB RSS with them all alive; after: {fds2} fds, {rss2} KiB RSS",
        start.elapsed().as_secs_f64()
    );

    // Everything accounted for: one accepted, one finished line per client.
    let total = WARM_UP + SEQUENTIAL + CONCURRENT;
    let log = server.log_text();
    let accepted = log.matches("client accepted").count();
    let finished = log.matches("worker finished: client disconnected").count();
    assert_eq!(accepted, total, "clients accepted");
    assert_eq!(finished, total, "workers finished cleanly");
    assert!(!log.contains("worker killed by"), "no worker was killed");

    assert!(
        fds2 <= fds0 + FD_MARGIN,
        "broker fds: {fds0} at the baseline, {fds2} at the end"
    );
    assert!(
        rss2 <= rss0 + RSS_MARGIN_KIB,
        "broker RSS: {} MiB at the baseline, {} MiB at the end",
        mib(rss0),
        mib(rss2)
    );
}

/// Found by `bench/soak.py`: a pre-started pool worker that waited for a
/// client longer than `hang_timeout_secs` (60 s by default) is killed by the
/// hang watchdog right after it is handed its first client ("GPU work made
/// no progress for 60 s", `submitted=0 completed=0`, 10-20 ms after the hand
/// over): the worker's `progress_at` starts when the worker is spawned and is
/// not reset when it starts serving. With the default configuration (pool of
/// 2, 60 s), the first two clients after an idle minute are disconnected at
/// once; Mesa aborts ("lost connection to rendering server").
/// Here with `hang_timeout_secs = 2` to keep it short.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn the_first_clients_after_an_idle_period_are_not_killed_by_the_watchdog() {
    let server = Server::start_with_config("[server]\nhang_timeout_secs = 2\n", &["--pool=2"]);
    assert!(
        eventually(20, || server.status()["listeners"][0]["pool_ready"] == 2),
        "pool ready"
    );
    // Idle for longer than the hang timeout.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut t = Tenant::connect(&server, "after-idle");
    let start = Instant::now();
    let mut n = 0u8;
    while start.elapsed() < std::time::Duration::from_secs(2) {
        if let Err(e) = t.try_round_trip(n) {
            panic!(
                "round trip {n} of the first client after an idle period: {e}; log:\n{}",
                server.log_text()
            );
        }
        n = n.wrapping_add(1);
    }
    assert!(!server.log_text().contains("hang watchdog"));
}

/// The syscalls the worker's steady-state seccomp filter allows (llvmpipe
/// profile), read from the policy files.
fn steady_syscalls() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/seccomp");
    let mut out = Vec::new();
    for file in ["common.json", "llvmpipe.json"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
        for rule in policy["steady"].as_array().unwrap() {
            out.push(rule["syscall"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Found by `bench/soak.py` (18,307 clients, 2 lost) and `tests/hostile.rs`:
/// syscalls that glibc and Mesa make while a client is served are missing
/// from the steady-state seccomp policy, and the worker dies of SIGSYS with
/// its client.
///
/// * `sched_yield` (in the init list only): 2 of 18,307 soak clients, under
///   load, lost their worker during `RESOURCE_CREATE2` (`seccomp violation:
///   sched_yield`, `commands=0`; the client saw EOF instead of its memfd).
/// * `mremap`: glibc `realloc` of a block above the mmap threshold; two
///   pipelined `SUBMIT_CMD`s of growing size, or a client that does not read
///   its replies, make the worker's buffers grow that way
///   (`hostile::bug_growing_pipelined_submits_kill_the_worker`).
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn steady_seccomp_policy_allows_sched_yield_and_mremap() {
    let steady = steady_syscalls();
    let missing: Vec<&str> = ["sched_yield", "mremap"]
        .into_iter()
        .filter(|s| !steady.iter().any(|x| x == s))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from the steady policy: {missing:?}"
    );
}
