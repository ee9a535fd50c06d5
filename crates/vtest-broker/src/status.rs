//! What `vtestd status` shows: the broker's state as JSON over the admin
//! socket, and the same counters as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use vtest_control::SessionStats;

pub use crate::procfs::WorkerMemory;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub listeners: Vec<ListenerStatus>,
    pub clients: Vec<ClientStatus>,
    /// The most recent client ends, newest first.
    pub recent_exits: Vec<ExitRecord>,
    pub counters: Counters,
    /// What bounds each worker's memory and threads: a delegated cgroup,
    /// or only the per-resource limits and rlimits.
    #[serde(default)]
    pub memory_limits: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub path: String,
    pub backend: String,
    pub pool_target: u32,
    pub pool_ready: u32,
    pub pool_starting: u32,
    pub clients: u32,
    /// Connected but silent: no worker yet.
    pub waiting: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub client_id: u64,
    pub listener: String,
    pub peer_pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// `waiting` (no byte yet, no worker) or `serving`.
    pub state: String,
    pub worker_pid: Option<u32>,
    pub connected_secs: f64,
    pub stats: SessionStats,
    /// The worker's memory now (`None`: waiting, or not visible in /proc).
    pub memory: Option<WorkerMemory>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub client_id: u64,
    pub listener: String,
    pub worker_pid: u32,
    pub peer_pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// One of [`EXIT_CATEGORIES`].
    pub category: String,
    pub reason: String,
    pub secs_ago: f64,
    pub stats: SessionStats,
}

/// Why workers end, as counted.
pub const EXIT_CATEGORIES: &[&str] = &[
    "clean",
    "protocol_error",
    "renderer_error",
    "limit_exceeded",
    "io_error",
    "worker_exhausted",
    "init_failed",
    "seccomp_violation",
    "hang",
    "signal",
    "shutdown",
    "unknown",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub clients_accepted: u64,
    /// Refusals by reason (peer not allowed, caps).
    pub clients_refused: BTreeMap<String, u64>,
    /// Connections closed before their first byte (never cost a worker).
    pub closed_before_first_byte: u64,
    pub workers_started: u64,
    /// Worker ends by category.
    pub worker_exits: BTreeMap<String, u64>,
}

impl Status {
    /// Prometheus text exposition of the counters and gauges.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP vtestd_{name} {help}");
            let _ = writeln!(out, "# TYPE vtestd_{name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "vtestd_{name}{labels} {value}");
            }
        };
        let c = &self.counters;
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the broker started.",
            vec![(String::new(), self.uptime_secs as f64)],
        );
        metric(
            "clients_accepted_total",
            "counter",
            "Client connections accepted.",
            vec![(String::new(), c.clients_accepted as f64)],
        );
        metric(
            "clients_refused_total",
            "counter",
            "Client connections refused, by reason.",
            c.clients_refused
                .iter()
                .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64))
                .collect(),
        );
        metric(
            "clients_closed_before_first_byte_total",
            "counter",
            "Connections that closed without sending anything.",
            vec![(String::new(), c.closed_before_first_byte as f64)],
        );
        metric(
            "workers_started_total",
            "counter",
            "Worker processes started.",
            vec![(String::new(), c.workers_started as f64)],
        );
        metric(
            "worker_exits_total",
            "counter",
            "Worker ends, by category.",
            EXIT_CATEGORIES
                .iter()
                .map(|cat| {
                    (
                        format!("{{reason=\"{cat}\"}}"),
                        *c.worker_exits.get(*cat).unwrap_or(&0) as f64,
                    )
                })
                .collect(),
        );
        let per_listener = |f: fn(&ListenerStatus) -> u32| {
            self.listeners
                .iter()
                .map(|l| (format!("{{listener=\"{}\"}}", l.name), f(l) as f64))
                .collect()
        };
        metric(
            "clients",
            "gauge",
            "Clients being served.",
            per_listener(|l| l.clients),
        );
        metric(
            "clients_waiting",
            "gauge",
            "Clients connected but silent (no worker yet).",
            per_listener(|l| l.waiting),
        );
        metric(
            "pool_ready",
            "gauge",
            "Initialised workers waiting for a client.",
            per_listener(|l| l.pool_ready),
        );
        metric(
            "pool_starting",
            "gauge",
            "Pool workers still initialising.",
            per_listener(|l| l.pool_starting),
        );
        let sum = |f: fn(&SessionStats) -> u64| {
            self.clients.iter().map(|c| f(&c.stats)).sum::<u64>() as f64
        };
        metric(
            "client_resources",
            "gauge",
            "Live resources over all clients.",
            vec![(String::new(), sum(|s| s.live_resources))],
        );
        metric(
            "client_shm_bytes",
            "gauge",
            "Shared memory over all clients.",
            vec![(String::new(), sum(|s| s.shm_bytes))],
        );
        out
    }

    /// Human-readable text for `vtestd status`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "vtestd {} (pid {}), up {} s",
            self.version, self.pid, self.uptime_secs
        );
        let _ = writeln!(out, "worker limits: {}", self.memory_limits);
        let _ = writeln!(out, "\nlisteners:");
        for l in &self.listeners {
            let _ = writeln!(
                out,
                "  {:12} {:32} {:11} clients {:3}  waiting {:3}  pool {}/{} ready ({} starting)",
                l.name,
                l.path,
                l.backend,
                l.clients,
                l.waiting,
                l.pool_ready,
                l.pool_target,
                l.pool_starting
            );
        }
        let _ = writeln!(out, "\nclients:");
        if self.clients.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for c in &self.clients {
            let worker = c.worker_pid.map_or("-".to_string(), |p| p.to_string());
            let _ = writeln!(
                out,
                "  #{:<5} {:8} worker {:>7}  peer pid {:>7} uid {:>5} gid {:>5}  {:10} {:>7.1} s  \
                 resources {:>6}  shm {:>10} B  commands {:>8}  fences {}/{}  memory {}",
                c.client_id,
                c.state,
                worker,
                c.peer_pid,
                c.uid,
                c.gid,
                c.listener,
                c.connected_secs,
                c.stats.live_resources,
                c.stats.shm_bytes,
                c.stats.commands,
                c.stats.fences_completed,
                c.stats.fences_submitted,
                c.memory.map_or("-".to_string(), |m| format!(
                    "{} MiB (data {} MiB)",
                    m.rss_kib >> 10,
                    m.data_kib >> 10
                ))
            );
        }
        let _ = writeln!(out, "\nworker exits:");
        for cat in EXIT_CATEGORIES {
            let n = self.counters.worker_exits.get(*cat).copied().unwrap_or(0);
            if n > 0 {
                let _ = writeln!(out, "  {cat:18} {n}");
            }
        }
        let _ = writeln!(out, "\nrecent exits:");
        for e in self.recent_exits.iter().take(10) {
            let _ = writeln!(
                out,
                "  #{:<5} worker {:>7} uid {:>5} {:8.1} s ago  {:18} {}",
                e.client_id, e.worker_pid, e.uid, e.secs_ago, e.category, e.reason
            );
        }
        out
    }
}
