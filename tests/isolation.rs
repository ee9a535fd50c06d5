//! Crash isolation: one client's worker dying (SIGKILL, SIGSEGV) ends only
//! that client; the broker and the other clients carry on.

mod common;

use std::time::Duration;

use common::procs::{alive, children, eventually, wait_for_children};
use common::server::{Server, ServerKind};
use common::tenant::Tenant;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn crash_one_of_two(signal: Signal) {
    let mut server = Server::start(ServerKind::Vtestd);
    let broker = server.pid();
    let mut a = Tenant::connect(&server, "tenant-a");
    let worker_a = wait_for_children(broker, 1);
    assert_eq!(worker_a.len(), 1, "one worker for one client");
    let mut b = Tenant::connect(&server, "tenant-b");
    let workers = wait_for_children(broker, 2);
    let worker_b: Vec<u32> = workers
        .into_iter()
        .filter(|p| !worker_a.contains(p))
        .collect();
    assert_eq!(worker_b.len(), 1, "a second worker for the second client");
    let worker_b = worker_b[0];
    a.round_trip(1);
    b.round_trip(2);

    kill(Pid::from_raw(worker_b as i32), signal).unwrap();
    b.client
        .expect_disconnect(Duration::from_secs(10))
        .expect("the crashed client is disconnected");
    assert!(eventually(10, || !alive(worker_b)), "crashed worker reaped");

    // The other tenant carries on with its work, on the same worker.
    a.round_trip(3);
    assert!(
        eventually(10, || children(broker) == worker_a),
        "only the other tenant's worker is left: {:?}",
        children(broker)
    );
    assert!(server.is_alive(), "broker survives");

    // And a new client is served by a fresh worker.
    let mut c = Tenant::connect(&server, "tenant-c");
    c.round_trip(4);
    let log = server.log_text();
    assert!(
        log.contains(&format!("worker killed by {signal}")),
        "broker logs the signal; log:\n{log}"
    );
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn sigkill_of_a_worker_ends_only_its_client() {
    crash_one_of_two(Signal::SIGKILL);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn sigsegv_of_a_worker_ends_only_its_client() {
    crash_one_of_two(Signal::SIGSEGV);
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn each_client_gets_its_own_worker_process_and_workers_exit() {
    let server = Server::start(ServerKind::Vtestd);
    let broker = server.pid();
    let mut seen = Vec::new();
    for i in 0..3 {
        let mut t = Tenant::connect(&server, &format!("seq-{i}"));
        let w = wait_for_children(broker, 1);
        assert_eq!(w.len(), 1);
        assert!(!seen.contains(&w[0]), "a worker is never reused");
        seen.push(w[0]);
        t.round_trip(i as u8);
        drop(t);
        assert!(
            eventually(10, || children(broker).is_empty()),
            "the worker exits when its client leaves"
        );
    }
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn sigterm_stops_accepting_lets_clients_finish_then_ends_workers() {
    let config = "[server]\nshutdown_grace_secs = 2\n";
    let mut server = Server::start_with_config(config, &[]);
    let broker = server.pid();
    let mut a = Tenant::connect(&server, "held");
    let workers = wait_for_children(broker, 1);
    assert_eq!(workers.len(), 1);
    kill(Pid::from_raw(broker as i32), Signal::SIGTERM).unwrap();
    // No new clients at once; the connected one keeps working in the grace period.
    assert!(
        eventually(2, || !server.socket_path().exists()),
        "socket removed"
    );
    a.round_trip(9);
    // After the grace period its worker is ended and the broker exits cleanly.
    a.client
        .expect_disconnect(Duration::from_secs(10))
        .expect("ended after the grace period");
    let status = server.stop().expect("stopped");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(eventually(5, || !alive(workers[0])), "worker ended too");
    assert!(server.log_text().contains("grace period over"));
}

/// A stopped worker (here its reaper, stopped from outside; a sandboxed
/// child once could make the reaper stop itself) must not hold its slot:
/// the broker sees the stop, kills the worker, and serves the next client.
#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn a_stopped_worker_is_ended_and_frees_its_slot() {
    let server = Server::start_with_config("[server]\nmax_clients = 1\n", &[]);
    let broker = server.pid();
    let mut a = Tenant::connect(&server, "stopped");
    let worker = wait_for_children(broker, 1);
    assert_eq!(worker.len(), 1, "one worker for one client");
    a.round_trip(1);

    kill(Pid::from_raw(worker[0] as i32), Signal::SIGSTOP).unwrap();
    a.client
        .expect_disconnect(Duration::from_secs(10))
        .expect("the stopped worker's client is disconnected");
    assert!(
        eventually(10, || children(broker).is_empty()),
        "the stopped worker is reaped: {:?}",
        children(broker)
    );
    let log = server.log_text();
    assert!(
        log.contains("worker stopped by SIGSTOP: killing it"),
        "broker logs the stop; log:\n{log}"
    );

    // The one slot is free again.
    let mut b = Tenant::connect(&server, "next");
    b.round_trip(2);
}
