//! `vtestd status` for people: listeners, clients, ends.

use std::fmt::Write as _;

use super::{ExitCategory, Status};

impl Status {
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
                "  {:12} {:32} {:11} clients {:3}  waiting {:3}  queued {:3}  pool {}/{} ready ({} starting)",
                l.name,
                l.path,
                l.backend,
                l.clients,
                l.waiting,
                l.queued,
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
        for cat in ExitCategory::ALL {
            let n = self.counters.worker_exits.get(&cat);
            if n > 0 {
                let _ = writeln!(out, "  {:18} {n}", cat.name());
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

#[cfg(test)]
mod tests {
    use super::super::tests::sample;

    #[test]
    fn lists_exits_by_category_and_recent_ends() {
        let text = sample().text();
        assert!(text.contains("\nworker exits:\n  clean              2\n  protocol_error     1\n"));
        assert!(text.contains(
            "  #2     worker     199 uid  1000      0.5 s ago  seccomp_violation  protocol error: \
             seccomp violation: socket (41)"
        ), "{text}");
        assert!(text.contains("memory 2 MiB (data 1 MiB)"), "{text}");
    }
}
