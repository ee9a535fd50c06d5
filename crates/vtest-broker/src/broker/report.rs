//! What the broker tells about itself: the [`Status`] that `vtestd status`
//! and `vtestd metrics` show, and the client count it tells systemd.

use std::collections::VecDeque;
use std::time::Instant;

use vtest_control::{ClientInfo, SessionStats};

use super::Broker;
use crate::status::{ClientStatus, ExitRecord, ListenerStatus, Status};
use crate::workers::Role;

/// Recent client ends kept for `vtestd status`.
const RECENT_EXITS: usize = 64;

/// The last [`RECENT_EXITS`] client ends, newest first.
#[derive(Default)]
pub(super) struct RecentExits {
    ends: VecDeque<(Instant, ExitRecord)>,
}

impl RecentExits {
    pub(super) fn push(&mut self, at: Instant, record: ExitRecord) {
        self.ends.push_front((at, record));
        self.ends.truncate(RECENT_EXITS);
    }

    /// As status shows them at `now`: with how long ago each was.
    pub(super) fn at(&self, now: Instant) -> Vec<ExitRecord> {
        self.ends
            .iter()
            .map(|(at, r)| ExitRecord {
                secs_ago: now.duration_since(*at).as_secs_f64(),
                ..r.clone()
            })
            .collect()
    }
}

impl Broker {
    /// The broker's state for `vtestd status` (workers' memory as last
    /// read for an admin request).
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let listeners = self
            .listeners
            .values()
            .map(|l| {
                let name = &l.config.name;
                let (ready, starting) = self.workers.pool_counts(name);
                ListenerStatus {
                    name: name.clone(),
                    path: l.config.path.display().to_string(),
                    backend: format!("{:?}", l.config.backend).to_lowercase(),
                    pool_target: l.pool_target(now),
                    arrivals_per_sec: l.demand.rate(now),
                    startup_ms: l.demand.startup().map(|d| d.as_millis() as u64),
                    pool_ready: ready,
                    pool_starting: starting,
                    clients: self.workers.serving_count(name),
                    waiting: self.waiting.of_listener(name),
                    queued: self.queued.of_listener(name),
                }
            })
            .collect();
        let mut clients: Vec<ClientStatus> = self
            .waiting
            .iter()
            .map(|w| client_status(&w.client, "waiting", None, w.since, Default::default()))
            .collect();
        clients.extend(
            self.queued
                .iter()
                .map(|w| client_status(&w.client, "queued", None, w.since, Default::default())),
        );
        for (_, w) in self.workers.iter() {
            if let Role::Serving { client, since } = &w.role {
                let stats = w.stats.clone();
                let mut c = client_status(client, "serving", Some(w.pid), *since, stats);
                c.memory = self.worker_memory.get(w.pid);
                clients.push(c);
            }
        }
        clients.sort_by_key(|c| c.client_id);
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            listeners,
            clients,
            recent_exits: self.recent.at(now),
            counters: self.counters.clone(),
            memory_limits: self.memory_limits.clone(),
        }
    }

    /// Tells systemd the client count when it changes, and pings its watchdog.
    pub(super) fn notify_status(&mut self) {
        let Some(n) = &mut self.notifier else { return };
        n.ping_if_due();
        let serving = self.workers.serving_counts(u32::MAX).0;
        if self.reported_clients != Some(serving) {
            n.send(&format!("STATUS=serving {serving} clients"));
            self.reported_clients = Some(serving);
        }
    }
}

fn client_status(
    c: &ClientInfo,
    state: &str,
    worker: Option<u32>,
    since: Instant,
    stats: SessionStats,
) -> ClientStatus {
    ClientStatus {
        client_id: c.client_id,
        listener: c.listener.clone(),
        peer_pid: c.pid,
        uid: c.uid,
        gid: c.gid,
        state: state.to_string(),
        worker_pid: worker,
        connected_secs: since.elapsed().as_secs_f64(),
        stats,
        memory: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::status::ExitCategory;

    fn record(client_id: u64) -> ExitRecord {
        ExitRecord {
            client_id,
            listener: "default".into(),
            worker_pid: 1,
            peer_pid: 2,
            uid: 3,
            gid: 4,
            category: ExitCategory::Clean,
            reason: "client disconnected".into(),
            secs_ago: 0.0,
            stats: SessionStats::default(),
        }
    }

    #[test]
    fn recent_exits_keep_the_newest_64_with_their_age() {
        let t0 = Instant::now();
        let mut recent = RecentExits::default();
        for id in 0..100 {
            recent.push(t0 + Duration::from_secs(id), record(id));
        }
        let shown = recent.at(t0 + Duration::from_secs(100));
        assert_eq!(shown.len(), RECENT_EXITS);
        assert_eq!(shown[0].client_id, 99, "newest first");
        assert_eq!(shown[63].client_id, 36);
        assert_eq!((shown[0].secs_ago, shown[63].secs_ago), (1.0, 64.0));
    }

    #[test]
    fn a_client_shows_its_peer_and_state() {
        let c = ClientInfo {
            client_id: 9,
            pid: 10,
            uid: 11,
            gid: 12,
            listener: "l".into(),
        };
        let since = Instant::now() - Duration::from_secs(2);
        let s = client_status(&c, "waiting", None, since, SessionStats::default());
        assert_eq!((s.client_id, s.peer_pid, s.uid, s.gid), (9, 10, 11, 12));
        assert_eq!(
            (s.state.as_str(), s.worker_pid, s.memory),
            ("waiting", None, None)
        );
        assert!(s.connected_secs >= 2.0, "{}", s.connected_secs);
    }
}
