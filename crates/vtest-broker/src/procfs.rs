//! What `/proc` shows the broker: the memory of a worker (the worker process
//! and the sandboxed server under it, its only child), read at most once a
//! second per worker however often `vtestd status` asks, and the ids of an
//! admin peer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a worker's memory reading is reused.
const MEMORY_MAX_AGE: Duration = Duration::from_secs(1);

/// Summed over the worker's processes, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMemory {
    /// Resident memory (shared libraries included).
    pub rss_kib: u64,
    /// Heap and private mappings: what `worker_memory_mib` (RLIMIT_DATA) bounds.
    pub data_kib: u64,
}

/// `None` when `/proc` does not show the worker (gone, or hidden).
pub(crate) fn worker_memory(pid: u32) -> Option<WorkerMemory> {
    let mut total = status_of(pid)?;
    for child in children(pid) {
        if let Some(m) = status_of(child) {
            total.rss_kib += m.rss_kib;
            total.data_kib += m.data_kib;
        }
    }
    Some(total)
}

/// Workers' memory as last read: `vtestd status` costs the event loop at most
/// one `/proc` read per worker and second, however many admin requests come.
#[derive(Default)]
pub(crate) struct MemoryCache {
    read: HashMap<u32, (Instant, Option<WorkerMemory>)>,
}

impl MemoryCache {
    /// Re-reads the workers in `pids` whose reading is older than a second,
    /// and forgets every other pid.
    pub(crate) fn refresh(&mut self, pids: impl IntoIterator<Item = u32>, now: Instant) {
        let mut read = HashMap::new();
        for pid in pids {
            let entry = match self.read.remove(&pid) {
                Some((at, m)) if now.duration_since(at) < MEMORY_MAX_AGE => (at, m),
                _ => (now, worker_memory(pid)),
            };
            read.insert(pid, entry);
        }
        self.read = read;
    }

    /// The last reading of `pid` (`None`: not read, or not visible).
    pub(crate) fn get(&self, pid: u32) -> Option<WorkerMemory> {
        self.read.get(&pid).and_then(|(_, m)| *m)
    }
}

/// A process's effective uid and supplementary groups, as its
/// `/proc/PID/status` shows them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessIds {
    pub(crate) euid: u32,
    pub(crate) groups: Vec<u32>,
}

/// `None` when `/proc` does not show `pid` (gone, in a pid namespace the
/// broker cannot see, or hidden by `hidepid`).
pub(crate) fn process_ids(pid: i32) -> Option<ProcessIds> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_ids(&text)
}

/// `Uid:` (real, effective, saved, fs) and `Groups:` of a status text.
fn parse_ids(text: &str) -> Option<ProcessIds> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name));
    let euid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
    let groups = field("Groups:")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(ProcessIds { euid, groups })
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn status_of(pid: u32) -> Option<WorkerMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(parse_status(&text))
}

/// `VmRSS` and `VmData` of a `/proc/PID/status` text (0 when absent).
fn parse_status(text: &str) -> WorkerMemory {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    WorkerMemory {
        rss_kib: field("VmRSS:"),
        data_kib: field("VmData:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_data() {
        let m = parse_status("Name:\tvtestd\nVmData:\t   53772 kB\nVmRSS:\t   74632 kB\n");
        assert_eq!(
            m,
            WorkerMemory {
                rss_kib: 74632,
                data_kib: 53772
            }
        );
        assert_eq!(parse_status("Name:\tx\n"), WorkerMemory::default());
    }

    #[test]
    fn reads_the_effective_uid_and_the_groups() {
        let text = "Name:\tsh\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\nGroups:\t27 100 64200 \n";
        assert_eq!(
            parse_ids(text),
            Some(ProcessIds {
                euid: 0,
                groups: vec![27, 100, 64200]
            })
        );
        let none = parse_ids("Uid:\t7\t7\t7\t7\nGroups:\t\n").unwrap();
        assert!(none.groups.is_empty() && none.euid == 7);
        assert_eq!(parse_ids("Name:\tx\n"), None);
        assert_eq!(parse_ids("Uid:\t1\t1\t1\t1\nGroups:\tx\n"), None);
        let me = process_ids(std::process::id() as i32).unwrap();
        assert_eq!(me.euid, nix::unistd::geteuid().as_raw());
        assert_eq!(process_ids(0), None);
    }

    #[test]
    fn memory_is_read_at_most_once_a_second() {
        let me = std::process::id();
        let mut cache = MemoryCache::default();
        let t0 = Instant::now();
        cache.refresh([me], t0);
        let first = cache.read[&me].0;
        cache.refresh([me], t0 + Duration::from_millis(500));
        assert_eq!(cache.read[&me].0, first, "re-read within the second");
        cache.refresh([me], t0 + Duration::from_millis(1500));
        assert!(cache.read[&me].0 > first, "not re-read after the second");
        assert!(cache.get(me).is_some_and(|m| m.rss_kib > 0));
        cache.refresh([], t0);
        assert_eq!(cache.get(me), None, "gone workers are forgotten");
    }

    #[test]
    fn this_process_has_memory() {
        let m = worker_memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.data_kib > 0, "{m:?}");
    }
}
