//! Admitting clients: accept on a listener (paused after failures), check
//! the peer and the caps, keep the connection without a worker until its
//! first byte, then hand it over to a pool worker or a new one.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{getsockopt, recv, sockopt::PeerCredentials, MsgFlags};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};
use vtest_control::{BrokerMsg, ClientInfo};

use super::listeners::ListenerId;
use super::waiting::Waiting;
use super::Broker;
use crate::config::{ListenerConfig, ServerConfig};
use crate::workers::Role;

/// What a new client would add to.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Load {
    /// Clients being served and waiting for their first byte, in all.
    pub(super) clients: u32,
    /// The same, of the new client's uid.
    pub(super) of_uid: u32,
}

/// Whether a peer `uid`/`gid` may connect to listener `l` under `load`,
/// or the reason it is refused.
pub(super) fn admission(
    l: &ListenerConfig,
    server: &ServerConfig,
    (uid, gid): (u32, u32),
    load: Load,
) -> Result<(), &'static str> {
    let restricted = !l.allowed_uids.is_empty() || !l.allowed_gids.is_empty();
    if restricted && !l.allowed_uids.contains(&uid) && !l.allowed_gids.contains(&gid) {
        return Err("peer not allowed");
    }
    if load.clients >= server.max_clients {
        return Err("max_clients reached");
    }
    if load.of_uid >= server.max_clients_per_uid {
        return Err("max_clients_per_uid reached");
    }
    Ok(())
}

impl Broker {
    /// Accepts every pending connection on listener `id`.
    pub(super) fn accept_all(&mut self, id: ListenerId) {
        loop {
            let Some(socket) = self.listeners.get(id).and_then(|l| l.socket.as_ref()) else {
                return;
            };
            let accepted = socket.accept();
            let now = Instant::now();
            let Some(l) = self.listeners.get_mut(id) else {
                return;
            };
            match accepted {
                Ok(Some(stream)) => {
                    l.accept.succeeded(&l.config.name, now);
                    self.admit(id, stream);
                }
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued.
                    l.accept.failed(&l.config.name, &e, now);
                    return;
                }
            }
            if let Some(budget) = self.settings.serve_total {
                if self.counters.clients_accepted >= budget {
                    info!("client budget used: no new clients");
                    self.listeners.close_all();
                    return;
                }
            }
        }
    }

    pub(super) fn refuse(&mut self, reason: &'static str, client: &ClientInfo) {
        if self.refusals.first(reason, Instant::now()) {
            warn!(listener = %client.listener, peer_pid = client.pid, uid = client.uid,
                  gid = client.gid, "client refused: {reason}");
        }
        self.counters.refused(reason, 1);
    }

    /// Checks a new connection against the listener's peers and the caps,
    /// then keeps it until its first byte.
    fn admit(&mut self, id: ListenerId, stream: UnixStream) {
        let Some(l) = self.listeners.get(id) else {
            return;
        };
        let (pid, uid, gid) = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => (c.pid(), c.uid(), c.gid()),
            Err(e) => {
                warn!(listener = %l.config.name, error = %e, "no peer credentials; closing");
                return;
            }
        };
        let client = ClientInfo {
            client_id: self.next_client_id,
            pid,
            uid,
            gid,
            listener: l.config.name.clone(),
        };
        self.next_client_id += 1;
        let (serving, serving_uid) = self.workers.serving_counts(uid);
        let load = Load {
            clients: serving + self.waiting.len() + self.queued.len(),
            of_uid: serving_uid + self.waiting.of_uid(uid) + self.queued.of_uid(uid),
        };
        if let Err(reason) = admission(&l.config, &self.settings.config.server, (uid, gid), load) {
            return self.refuse(reason, &client);
        }
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(error = %e, "client socket");
            return;
        }
        self.counters.clients_accepted += 1;
        debug!(
            client = client.client_id,
            peer_pid = pid,
            uid,
            gid,
            "client waiting for its first byte"
        );
        self.waiting.add(Waiting {
            stream,
            client,
            since: Instant::now(),
        });
    }

    /// Waiting client `client_id` became readable: hand it to a worker, or
    /// drop it if it only hung up.
    pub(super) fn check_waiting(&mut self, client_id: u64) {
        let Some(w) = self.waiting.get(client_id) else {
            return;
        };
        let mut byte = [0u8; 1];
        let fd = w.stream.as_raw_fd();
        match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Ok(0) | Err(_) => {
                self.waiting.remove(client_id);
                self.counters.closed_before_first_byte += 1;
                debug!(client = client_id, "closed before its first byte");
            }
            Ok(_) => {
                if let Some(w) = self.waiting.remove(client_id) {
                    self.hand_over(w);
                }
            }
        }
    }

    fn hand_over(&mut self, w: Waiting) {
        // By name: a client of a listener a reload replaced gets the new one.
        let Some(li) = self.listeners.named(&w.client.listener) else {
            return self.refuse("listener removed", &w.client);
        };
        if let Some(l) = self.listeners.get_mut(li) {
            l.demand.arrived(Instant::now());
        }
        if self.workers.pool_counts(&w.client.listener).0 == 0 {
            self.counters.clients_waited_for_start += 1;
            let shared = self.listeners.get(li).is_some_and(|l| l.config.has_pool());
            let pool_starting = shared && self.workers.pool_counts(&w.client.listener).1 > 0;
            if !pool_starting && self.workers.starting() >= self.start_slots {
                debug!(
                    client = w.client.client_id,
                    "every core starts a worker: queued"
                );
                return self.queued.push(w);
            }
        }
        self.serve_now(li, w);
    }

    /// Clients queued for a worker, oldest first, as far as workers are
    /// ready or cores free to start theirs.
    pub(super) fn serve_queued(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let slots = self.start_slots;
        let mut starting = self.workers.starting();
        let mut free: std::collections::HashMap<String, u32> = Default::default();
        let workers = &self.workers;
        let taken = self.queued.take_servable(|w| {
            let name = &w.client.listener;
            let free = free.entry(name.clone()).or_insert_with(|| {
                let (ready, pool_starting) = workers.pool_counts(name);
                ready + pool_starting
            });
            if *free > 0 {
                *free -= 1;
                true
            } else if starting < slots {
                starting += 1;
                true
            } else {
                false
            }
        });
        for w in taken {
            match self.listeners.named(&w.client.listener) {
                Some(li) => self.serve_now(li, w),
                None => self.refuse("listener removed", &w.client),
            }
        }
    }

    /// Hands client `w` of listener `li` to a worker now: a ready pool
    /// worker; else the one closest to ready; else a new one.
    fn serve_now(&mut self, li: ListenerId, w: Waiting) {
        let from_pool = self.workers.take_ready(&w.client.listener);
        let id = match from_pool {
            Some(id) => Some(id),
            None => {
                let uid = w.client.uid;
                let shared = self.listeners.get(li).is_some_and(|l| l.config.has_pool());
                let starting = shared
                    .then(|| self.workers.take_starting(&w.client.listener))
                    .flatten();
                starting.or_else(|| self.spawn(li, Role::Pool { ready: false }, uid))
            }
        };
        let Some(id) = id else {
            return self.refuse("no worker could be started", &w.client);
        };
        if let Err(e) = w.stream.set_nonblocking(false) {
            warn!(error = %e, "client socket");
        }
        let Some(limits) = self.listeners.get(li).map(|l| l.limits) else {
            return;
        };
        let attach = BrokerMsg::Attach {
            client: w.client.clone(),
            limits,
        };
        let Some(worker) = self.workers.get_mut(id) else {
            return;
        };
        let pid = worker.pid;
        let sent = worker
            .channel
            .as_ref()
            .map(|c| c.send(&attach, &[w.stream.as_fd()]));
        if !matches!(sent, Some(Ok(()))) {
            error!(
                client = w.client.client_id,
                worker = pid,
                "cannot hand over client"
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            return;
        }
        let c = &w.client;
        info!(client = c.client_id, worker = pid, peer_pid = c.pid, uid = c.uid, gid = c.gid,
              listener = %c.listener, pooled = from_pool.is_some(), "client accepted");
        self.workers.attach(id, w.client, w.since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(allowed_uids: &[u32], allowed_gids: &[u32]) -> ListenerConfig {
        ListenerConfig {
            allowed_uids: allowed_uids.to_vec(),
            allowed_gids: allowed_gids.to_vec(),
            ..ListenerConfig::default()
        }
    }

    fn server(max_clients: u32, max_clients_per_uid: u32) -> ServerConfig {
        ServerConfig {
            max_clients,
            max_clients_per_uid,
            ..ServerConfig::default()
        }
    }

    fn load(clients: u32, of_uid: u32) -> Load {
        Load { clients, of_uid }
    }

    #[test]
    fn peers_are_checked_by_uid_or_gid_where_the_listener_restricts_them() {
        let s = server(10, 10);
        let open = listener(&[], &[]);
        assert_eq!(admission(&open, &s, (1000, 1000), load(0, 0)), Ok(()));
        let by_uid = listener(&[1000], &[]);
        assert_eq!(admission(&by_uid, &s, (1000, 5), load(0, 0)), Ok(()));
        assert_eq!(
            admission(&by_uid, &s, (1001, 5), load(0, 0)),
            Err("peer not allowed")
        );
        let by_gid = listener(&[], &[44]);
        assert_eq!(admission(&by_gid, &s, (1001, 44), load(0, 0)), Ok(()));
        assert_eq!(
            admission(&by_gid, &s, (1001, 45), load(0, 0)),
            Err("peer not allowed")
        );
        // A refused peer is refused whatever the load.
        assert_eq!(
            admission(&by_gid, &s, (1001, 45), load(10, 10)),
            Err("peer not allowed")
        );
    }

    #[test]
    fn the_caps_count_serving_and_waiting_clients() {
        let open = listener(&[], &[]);
        let s = server(4, 2);
        assert_eq!(admission(&open, &s, (7, 7), load(3, 1)), Ok(()));
        assert_eq!(
            admission(&open, &s, (7, 7), load(4, 0)),
            Err("max_clients reached")
        );
        assert_eq!(
            admission(&open, &s, (7, 7), load(2, 2)),
            Err("max_clients_per_uid reached")
        );
        // The global cap is named first when both are reached.
        assert_eq!(
            admission(&open, &s, (7, 7), load(4, 2)),
            Err("max_clients reached")
        );
    }
}
