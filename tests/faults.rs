//! Fault injection: workers killed, crashed or frozen at random points while
//! a real Mesa client renders, and a worker running out of fds. Only the
//! client whose worker is hit notices; the broker logs each ending and
//! leaves no zombies.
//!
//! `cargo test -p vtestd --test faults -- --test-threads=1 --nocapture`

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::arena::{Arena, Outcome, TryRoundTrip};
use common::mesa::{failure, glmark2_score, mesa_command, run_client, work_dir};
use common::procs::{alive, children, eventually};
use common::procstat::{fd_count, inner_worker, state, worker_tree, zombie_children, Rng};
use common::server::{Server, ServerKind};
use common::tenant::Tenant;
use common::xvfb::Xvfb;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vtest_client::wire::{self, cmd};
use vtest_client::Error;

/// What happened to one victim.
#[derive(Debug)]
struct Victim {
    signal: &'static str,
    worker: u32,
    round_trips: u32,
    disconnected: bool,
}

/// Connects a tenant whose worker is the one new child of the broker;
/// returns it with that worker's pid.
fn connect_victim(server: &Server, name: &str) -> (Tenant, u32) {
    let before = children(server.pid());
    let t = Tenant::connect(server, name);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let new: Vec<u32> = children(server.pid())
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if new.len() == 1 {
            return (t, new[0]);
        }
        assert!(
            Instant::now() < deadline,
            "could not tell the victim's worker: new children {new:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs round trips on `t` until the connection fails; returns how many
/// succeeded and whether the failure was a disconnect.
fn busy_until_lost(mut t: Tenant) -> (u32, bool) {
    let mut n = 0u32;
    loop {
        match t.try_round_trip(n as u8) {
            Ok(()) => n += 1,
            Err(e) => {
                let lost = e.contains("closed the connection")
                    || e.contains("Connection reset")
                    || e.contains("Broken pipe");
                return (n, lost);
            }
        }
    }
}

#[test]
fn signals_to_other_workers_do_not_disturb_a_running_glmark2() {
    let seed = 0xfa17_0001u64;
    let mut rng = Rng::new(seed);
    let xvfb = Xvfb::start();
    let mut server = Server::start(ServerKind::Vtestd);
    let broker = server.pid();
    let dir = work_dir("faults-glmark2");
    let cmd = mesa_command(
        &server,
        &xvfb,
        "glmark2",
        &[
            "--off-screen",
            "-b",
            "build:duration=3",
            "-b",
            "texture:duration=3",
        ],
    );
    let done = Arc::new(AtomicBool::new(false));
    let glmark2 = {
        let (dir, done) = (dir.clone(), done.clone());
        thread::spawn(move || {
            let out = run_client(cmd, &dir, "glmark2", Duration::from_secs(180));
            done.store(true, Ordering::SeqCst);
            out
        })
    };
    // glmark2's worker first: victims are the workers that appear later.
    assert!(
        eventually(60, || !children(broker).is_empty()
            || done.load(Ordering::SeqCst)),
        "glmark2 never connected"
    );
    let glmark2_workers = children(broker);
    let signals: [&'static str; 3] = ["SIGKILL", "SIGSEGV", "SIGSTOP"];
    let mut victims: Vec<Victim> = Vec::new();
    let mut i = 0;
    // At least one of each, then more for as long as glmark2 runs.
    while !done.load(Ordering::SeqCst) || victims.len() < signals.len() {
        let signal = if victims.len() < signals.len() {
            signals[victims.len()]
        } else {
            *rng.pick(&signals)
        };
        let (t, worker) = connect_victim(&server, &format!("victim-{i}"));
        i += 1;
        assert!(!glmark2_workers.contains(&worker));
        let busy = thread::spawn(move || busy_until_lost(t));
        // A random point in the victim's stream of round trips.
        thread::sleep(Duration::from_millis(rng.range(0, 400)));
        // The broker's child is the worker's reaper; the process serving
        // the client is PID 1 of its own namespace under it.
        let inner = inner_worker(worker);
        let either = |rng: &mut Rng| {
            let p = if rng.chance(1, 2) { worker } else { inner };
            Pid::from_raw(p as i32)
        };
        match signal {
            "SIGKILL" => kill(either(&mut rng), Signal::SIGKILL).unwrap(),
            // A namespace's init ignores fault signals sent from outside
            // (only SIGKILL and SIGSTOP get through), so this one goes to
            // the process the broker knows as the worker.
            "SIGSEGV" => kill(Pid::from_raw(worker as i32), Signal::SIGSEGV).unwrap(),
            _ => {
                kill(Pid::from_raw(inner as i32), Signal::SIGSTOP).unwrap();
                assert!(
                    eventually(5, || state(inner) == Some('T')),
                    "worker {inner} did not stop"
                );
                // Frozen: the victim waits; everyone else carries on.
                thread::sleep(Duration::from_millis(rng.range(200, 800)));
                kill(either(&mut rng), Signal::SIGKILL).unwrap();
            }
        }
        let (round_trips, disconnected) = busy.join().unwrap();
        // Reaped, not left as a zombie, and nothing left running under it.
        assert!(
            eventually(5, || !children(broker).contains(&worker)),
            "worker {worker} ({signal}) not reaped; state {:?}",
            state(worker)
        );
        assert!(
            eventually(5, || !alive(inner)),
            "the serving process {inner} outlived its reaper {worker} ({signal})"
        );
        victims.push(Victim {
            signal,
            worker,
            round_trips,
            disconnected,
        });
    }
    let out = glmark2.join().unwrap();
    assert!(
        out.success(),
        "{}",
        failure(
            "glmark2 failed while other workers were killed",
            &out,
            &server,
            &xvfb
        )
    );
    let score = glmark2_score(&out.stdout);
    assert!(
        score.is_some_and(|s| s > 0),
        "{}",
        failure("glmark2 printed no score", &out, &server, &xvfb)
    );
    for v in &victims {
        assert!(v.disconnected, "victim {v:?} did not see a disconnect");
    }
    assert!(
        eventually(10, || children(broker).is_empty()),
        "workers left: {:?}",
        children(broker)
    );
    assert!(zombie_children(broker).is_empty());
    assert!(server.is_alive());
    let log = server.log_text();
    let count = |s: &str| victims.iter().filter(|v| v.signal == s).count();
    let kills = count("SIGKILL") + count("SIGSTOP");
    for (needle, n) in [
        ("worker killed by SIGKILL", kills),
        ("worker killed by SIGSEGV", count("SIGSEGV")),
    ] {
        let found = log.matches(needle).count();
        assert_eq!(found, n, "{needle:?} logged {found} times, expected {n}");
    }
    for v in &victims {
        assert!(
            log.contains(&format!("worker={} ", v.worker)),
            "victim worker {} not in the log",
            v.worker
        );
    }
    println!(
        "glmark2 Score: {} (seed {seed:#x}) while {} other workers were hit: {} SIGKILL, {} SIGSEGV, {} SIGSTOP+SIGKILL; round trips before the hit: {:?}",
        score.unwrap(),
        victims.len(),
        count("SIGKILL"),
        count("SIGSEGV"),
        count("SIGSTOP"),
        victims.iter().map(|v| v.round_trips).collect::<Vec<_>>()
    );
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each pending `SYNC_WAIT` holds an eventfd in the worker. A client piling
/// them up is stopped by `max_waits` (512 by default, under the worker's
/// 1,024-fd limit), with the limit logged.
#[test]
fn piling_up_sync_waits_stops_at_the_limit() {
    let mut a = Arena::new();
    let (held, ended) = pile_up_waits(&a, 2000);
    a.tenant_round_trip();
    println!("pending waits (default limits): {held} accepted, then {ended}");
    a.finish(
        "SYNC_WAITs piled up (default max_waits)",
        Outcome::new(format!("{held} waits, then {ended}"))
            .log("limit max_waits exceeded: 513 > 512"),
    );
}

/// Sends SYNC_WAITs that never complete (10 minute timeouts) until the
/// server closes the connection or `max` are held; drops each eventfd at
/// once (this process has its own fd limit).
fn pile_up_waits(a: &Arena, max: usize) -> (usize, &'static str) {
    let mut c = a.hs("waits", 3);
    let s = c.sync_create(0).unwrap();
    let mut held = 0usize;
    loop {
        match c.sync_wait(0, 600_000, &[(s, 1)]) {
            Ok(fd) => {
                drop(fd);
                held += 1;
            }
            Err(Error::Disconnected) => return (held, "EOF"),
            Err(e) => panic!("SYNC_WAIT {held}: {e}"),
        }
        assert!(held <= max, "{max} pending waits and still served");
    }
}

const MANY_WAITS: &str = "[limits.default]\nmax_waits = 4096\n";

/// fd exhaustion in a worker: with `max_waits` raised above the worker's
/// RLIMIT_NOFILE (1,024), a client holding ~1,000 pending waits brings its
/// worker to the fd limit. Others are served meanwhile; signalling the sync
/// releases the fds; piling up again ends that client (EMFILE), logged.
#[test]
fn fd_exhaustion_in_a_worker_ends_only_that_client() {
    let mut a = Arena::with_server(Server::start_with_config(MANY_WAITS, &[]));
    let mut c = a.hs("waits", 3);
    let w = inner_worker(a.wait_attackers(1)[0]);
    let s = c.sync_create(0).unwrap();
    let before = fd_count(w);
    for _ in 0..980 {
        drop(c.sync_wait(0, 600_000, &[(s, 1)]).unwrap());
    }
    let held = fd_count(w);
    assert!(held >= 980, "each pending wait holds an fd: {held}");
    // Others are served while that worker sits at its limit.
    a.tenant_round_trip();
    a.fresh_during();
    // The wait records (and their fds) go when the sync is signalled.
    c.sync_write(s, 1).unwrap();
    c.send_raw(&wire::message(cmd::PING_PROTOCOL_VERSION, &[]))
        .unwrap();
    c.expect_reply(cmd::PING_PROTOCOL_VERSION, 0).unwrap();
    assert!(
        eventually(10, || fd_count(w) <= before + 2),
        "signalled waits still hold fds: {} (was {before})",
        fd_count(w)
    );
    drop(c);
    // Now all the way.
    let (n, ended) = pile_up_waits(&a, 2000);
    a.tenant_round_trip();
    println!(
        "fd exhaustion: worker {before} fds idle, {held} with 980 waits; then {n} waits, {ended}"
    );
    a.finish(
        "SYNC_WAITs piled up past the worker's fd limit (max_waits = 4096)",
        Outcome::new(format!("{n} waits, then {ended}")).log("Too many open files"),
    );
}

/// The fd exhaustion above is logged as `I/O error on the client socket:
/// Too many open files (os error 24)`: the client socket is fine, the
/// worker ran out of fds creating an eventfd. Either `check-config` should
/// refuse a `max_waits` the worker's fd limit cannot hold, or the reason
/// should name what ran out.
#[test]
#[ignore = "bug: a worker out of fds (EMFILE on eventfd) is logged as an I/O error on the client socket; max_waits above the fd limit is accepted"]
fn bug_worker_fd_exhaustion_is_blamed_on_the_client_socket() {
    let dir = common::server::unique_dir("waits-config");
    let path = dir.join("vtestd.toml");
    std::fs::write(&path, MANY_WAITS).unwrap();
    let check = std::process::Command::new(common::server::vtestd_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if !check.status.success() {
        return; // fixed by refusing the configuration
    }
    let a = Arena::with_server(Server::start_with_config(MANY_WAITS, &[]));
    let (n, _) = pile_up_waits(&a, 2000);
    assert!(eventually(5, || a.log().contains("client ended")));
    let log = a.log();
    assert!(
        !log.contains("on the client socket: Too many open files"),
        "after {n} waits:\n{log}"
    );
}

/// Workers must not keep the signals the broker blocks for its signalfd
/// (SIGHUP, SIGINT, SIGTERM, SIGCHLD): a blocked mask survives exec, and a
/// worker that blocks SIGTERM ignores the broker's stop request, so stopping
/// a broker with only its idle pool took the whole grace period plus 2 s and
/// ended with `worker did not stop; killing` for each pool worker (found by
/// `bench/soak.py`; fixed since by unblocking them in the worker).
#[test]
fn an_idle_pool_does_not_delay_shutdown() {
    let mut server = Server::start_with(ServerKind::Vtestd, &["--pool=2"]);
    let broker = server.pid();
    assert!(
        eventually(20, || server.status()["listeners"][0]["pool_ready"] == 2),
        "pool ready"
    );
    for w in children(broker).into_iter().flat_map(worker_tree) {
        let blocked = common::procstat::blocked_signals(w);
        assert_eq!(
            blocked & (1 << (Signal::SIGTERM as i32 - 1)),
            0,
            "worker {w} blocks SIGTERM (SigBlk {blocked:#x})"
        );
    }
    let start = Instant::now();
    server.stop();
    let took = start.elapsed();
    let log = server.log_text();
    assert!(
        took < Duration::from_secs(3) && !log.contains("did not stop"),
        "stopping with an idle pool took {took:?}; log:\n{log}"
    );
}
