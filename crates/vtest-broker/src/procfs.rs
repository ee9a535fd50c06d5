//! Memory of a worker as `/proc` shows it to the broker: the worker process
//! and the sandboxed server under it (its only child).

use serde::{Deserialize, Serialize};

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
    fn this_process_has_memory() {
        let m = worker_memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.data_kib > 0, "{m:?}");
    }
}
