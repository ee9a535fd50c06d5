//! What `vtestd status` shows: the broker's state as JSON over the admin
//! socket, as text for people ([`text`]) and as Prometheus metrics
//! ([`metrics`]).

mod exit;
mod metrics;
mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vtest_control::SessionStats;

pub use crate::procfs::WorkerMemory;
pub use exit::{ExitCategory, ExitCounts, Syscall};

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
    /// Workers the pool keeps started now (its floor, more while clients
    /// arrive fast).
    pub pool_target: u32,
    /// Clients per second over the last 10 s.
    #[serde(default)]
    pub arrivals_per_sec: f64,
    /// Average start-up of this listener's workers (spawn to Ready).
    #[serde(default)]
    pub startup_ms: Option<u64>,
    pub pool_ready: u32,
    pub pool_starting: u32,
    pub clients: u32,
    /// Connected but silent: no worker yet.
    pub waiting: u32,
    /// Spoke while every core was starting a worker: waiting for one.
    #[serde(default)]
    pub queued: u32,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub client_id: u64,
    pub listener: String,
    pub worker_pid: u32,
    pub peer_pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub category: ExitCategory,
    pub reason: String,
    pub secs_ago: f64,
    pub stats: SessionStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub clients_accepted: u64,
    /// Refusals by reason (peer not allowed, caps).
    pub clients_refused: BTreeMap<String, u64>,
    /// Connections closed before their first byte (never cost a worker).
    pub closed_before_first_byte: u64,
    pub workers_started: u64,
    /// Clients that found no initialised worker and waited for one to
    /// start (the pool did not keep up).
    #[serde(default)]
    pub clients_waited_for_start: u64,
    /// Worker ends by category.
    pub worker_exits: ExitCounts,
}

impl Counters {
    /// `n` more connections refused for `reason`.
    pub(crate) fn refused(&mut self, reason: &str, n: u64) {
        *self.clients_refused.entry(reason.to_string()).or_default() += n;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A status with one of everything, a listener name that needs
    /// escaping included.
    pub(crate) fn sample() -> Status {
        let mut counters = Counters {
            clients_accepted: 5,
            closed_before_first_byte: 1,
            workers_started: 7,
            ..Counters::default()
        };
        counters.refused("peer not allowed", 2);
        counters.refused("peer not allowed", 1);
        counters.worker_exits.add(&ExitCategory::ProtocolError);
        counters.worker_exits.add(&ExitCategory::Clean);
        counters.worker_exits.add(&ExitCategory::Clean);
        let stats = SessionStats {
            live_resources: 3,
            shm_bytes: 12288,
            ..SessionStats::default()
        };
        Status {
            version: "0.1.0".into(),
            pid: 42,
            uptime_secs: 9,
            listeners: vec![ListenerStatus {
                name: "gpu \"0\"\\\nx".into(),
                path: "/run/vtestd/vtest.sock".into(),
                backend: "surfaceless".into(),
                pool_target: 2,
                arrivals_per_sec: 0.5,
                startup_ms: Some(44),
                pool_ready: 1,
                pool_starting: 1,
                clients: 1,
                waiting: 0,
                queued: 0,
            }],
            clients: vec![ClientStatus {
                client_id: 3,
                listener: "default".into(),
                peer_pid: 100,
                uid: 1000,
                gid: 1000,
                state: "serving".into(),
                worker_pid: Some(200),
                connected_secs: 1.5,
                stats,
                memory: Some(WorkerMemory {
                    rss_kib: 2048,
                    data_kib: 1024,
                }),
            }],
            recent_exits: vec![ExitRecord {
                client_id: 2,
                listener: "default".into(),
                worker_pid: 199,
                peer_pid: 99,
                uid: 1000,
                gid: 1000,
                category: ExitCategory::SeccompViolation {
                    syscall: Some(Syscall {
                        number: 41,
                        name: "socket".into(),
                    }),
                },
                reason: "protocol error: seccomp violation: socket (41); worker killed by SIGSYS"
                    .into(),
                secs_ago: 0.5,
                stats: SessionStats::default(),
            }],
            counters,
            memory_limits: "per-worker cgroup: memory.max 512 MiB, pids.max 64".into(),
        }
    }

    /// The JSON `vtestd status --json` and scripts read, field for field.
    #[test]
    fn json_is_unchanged() {
        let stats0 = r#"{"commands":0,"bytes_in":0,"bytes_out":0,"resources_created":0,"live_resources":0,"shm_bytes":0,"fences_submitted":0,"fences_completed":0,"fds_sent":0}"#;
        let stats1 = r#"{"commands":0,"bytes_in":0,"bytes_out":0,"resources_created":0,"live_resources":3,"shm_bytes":12288,"fences_submitted":0,"fences_completed":0,"fds_sent":0}"#;
        let expected = format!(
            concat!(
                r#"{{"version":"0.1.0","pid":42,"uptime_secs":9,"#,
                r#""listeners":[{{"name":"gpu \"0\"\\\nx","path":"/run/vtestd/vtest.sock","#,
                r#""backend":"surfaceless","pool_target":2,"arrivals_per_sec":0.5,"startup_ms":44,"#,
                r#""pool_ready":1,"pool_starting":1,"#,
                r#""clients":1,"waiting":0,"queued":0}}],"#,
                r#""clients":[{{"client_id":3,"listener":"default","peer_pid":100,"uid":1000,"#,
                r#""gid":1000,"state":"serving","worker_pid":200,"connected_secs":1.5,"#,
                r#""stats":{stats1},"memory":{{"rss_kib":2048,"data_kib":1024}}}}],"#,
                r#""recent_exits":[{{"client_id":2,"listener":"default","worker_pid":199,"#,
                r#""peer_pid":99,"uid":1000,"gid":1000,"category":"seccomp_violation","#,
                r#""reason":"protocol error: seccomp violation: socket (41); worker killed by SIGSYS","#,
                r#""secs_ago":0.5,"stats":{stats0}}}],"#,
                r#""counters":{{"clients_accepted":5,"clients_refused":{{"peer not allowed":3}},"#,
                r#""closed_before_first_byte":1,"workers_started":7,"clients_waited_for_start":0,"#,
                r#""worker_exits":{{"clean":2,"protocol_error":1}}}},"#,
                r#""memory_limits":"per-worker cgroup: memory.max 512 MiB, pids.max 64"}}"#
            ),
            stats0 = stats0,
            stats1 = stats1
        );
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(json, expected);
        // And back (the seccomp syscall is in the reason, not the JSON).
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), expected);
        assert_eq!(
            back.recent_exits[0].category,
            ExitCategory::SeccompViolation { syscall: None }
        );
    }
}
