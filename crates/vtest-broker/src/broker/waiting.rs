//! Clients that have not sent a byte yet: they cost no worker, only an fd,
//! and are kept by client id until they speak, hang up, or reach their
//! listener's idle limit.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vtest_control::ClientInfo;

pub(super) struct Waiting {
    pub(super) stream: UnixStream,
    pub(super) client: ClientInfo,
    pub(super) since: Instant,
}

#[derive(Default)]
pub(super) struct WaitingClients {
    by_id: BTreeMap<u64, Waiting>,
}

impl WaitingClients {
    pub(super) fn add(&mut self, w: Waiting) {
        self.by_id.insert(w.client.client_id, w);
    }

    pub(super) fn get(&self, client_id: u64) -> Option<&Waiting> {
        self.by_id.get(&client_id)
    }

    pub(super) fn remove(&mut self, client_id: u64) -> Option<Waiting> {
        self.by_id.remove(&client_id)
    }

    pub(super) fn len(&self) -> u32 {
        self.by_id.len() as u32
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.by_id.values()
    }

    /// Waiting clients of `uid`.
    pub(super) fn of_uid(&self, uid: u32) -> u32 {
        self.iter().filter(|w| w.client.uid == uid).count() as u32
    }

    /// Waiting clients of listener `name`.
    pub(super) fn of_listener(&self, name: &str) -> u32 {
        self.iter().filter(|w| w.client.listener == name).count() as u32
    }

    /// Closes them all; how many there were.
    pub(super) fn clear(&mut self) -> u32 {
        let n = self.len();
        self.by_id.clear();
        n
    }

    /// Takes out the clients silent for longer than their listener's idle
    /// limit at `now` (`idle_ms` of a listener's name; 0: no limit).
    pub(super) fn expire(&mut self, now: Instant, idle_ms: impl Fn(&str) -> u64) -> Vec<Waiting> {
        let expired: Vec<u64> = self
            .iter()
            .filter(|w| {
                let limit = idle_ms(&w.client.listener);
                limit > 0 && now.duration_since(w.since) >= Duration::from_millis(limit)
            })
            .map(|w| w.client.client_id)
            .collect();
        expired.iter().filter_map(|id| self.remove(*id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(client_id: u64, uid: u32, listener: &str, since: Instant) -> Waiting {
        Waiting {
            stream: UnixStream::pair().unwrap().0,
            client: ClientInfo {
                client_id,
                pid: 1,
                uid,
                gid: uid,
                listener: listener.into(),
            },
            since,
        }
    }

    #[test]
    fn counts_by_uid_and_listener() {
        let t0 = Instant::now();
        let mut w = WaitingClients::default();
        w.add(waiting(1, 1000, "a", t0));
        w.add(waiting(2, 1000, "b", t0));
        w.add(waiting(3, 1001, "a", t0));
        assert_eq!(
            (w.len(), w.of_uid(1000), w.of_uid(1001), w.of_uid(0)),
            (3, 2, 1, 0)
        );
        assert_eq!((w.of_listener("a"), w.of_listener("b")), (2, 1));
        assert_eq!(w.remove(2).map(|w| w.client.client_id), Some(2));
        assert!(w.remove(2).is_none(), "a client id names one client");
        assert!(w.get(3).is_some());
        assert_eq!(w.clear(), 2);
        assert!(w.is_empty());
    }

    #[test]
    fn idle_clients_expire_by_their_listeners_limit() {
        let t0 = Instant::now();
        let mut w = WaitingClients::default();
        w.add(waiting(1, 0, "short", t0));
        w.add(waiting(2, 0, "short", t0 + Duration::from_millis(600)));
        w.add(waiting(3, 0, "unlimited", t0));
        let idle = |l: &str| if l == "short" { 1000 } else { 0 };
        assert!(w.expire(t0 + Duration::from_millis(999), idle).is_empty());
        let gone = w.expire(t0 + Duration::from_millis(1000), idle);
        assert_eq!(
            gone.iter().map(|w| w.client.client_id).collect::<Vec<_>>(),
            [1]
        );
        let gone = w.expire(t0 + Duration::from_secs(3600), idle);
        assert_eq!(
            gone.iter().map(|w| w.client.client_id).collect::<Vec<_>>(),
            [2]
        );
        assert_eq!(w.len(), 1, "no limit: kept");
    }
}
