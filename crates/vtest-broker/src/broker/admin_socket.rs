//! The broker's side of the admin socket: bound apart from client sockets,
//! its peers checked ([`admin::Access`]), each connection served by the
//! event loop with the status as JSON.

use std::path::Path;
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::Broker;
use crate::admin;
use crate::listener::{resolve_gid, Listener, SocketPerms};
use crate::workers::Role;

impl Broker {
    pub(super) fn bind_admin(&mut self, path: &Path, group: Option<&str>) {
        let admin_gid = group.and_then(|g| match resolve_gid(g) {
            Ok(gid) => Some(gid.as_raw()),
            Err(e) => {
                warn!(group = g, error = %e, "admin group unknown; admin socket is root-only");
                None
            }
        });
        self.admin_access.admin_gid = admin_gid;
        // Containers are given client sockets' directories: one holding the
        // admin socket would let a container's root replace it.
        if let Some(l) = self
            .listeners
            .values()
            .find(|l| l.config.path.parent() == path.parent())
        {
            info!(socket = %path.display(), listener = %l.config.name,
                  "the admin socket shares its directory with a client socket; do not give \
                   that directory to containers, or move admin_socket \
                   (e.g. /run/vtestd-admin/admin.sock)");
        }
        let perms = SocketPerms {
            mode: Some(if admin_gid.is_some() { 0o660 } else { 0o600 }),
            owner: None,
            group: admin_gid.map(|g| g.to_string()),
        };
        match Listener::bind(path, &perms) {
            Ok(l) => {
                info!(socket = %path.display(), "admin socket");
                self.admin = Some(l);
            }
            Err(e) => warn!(socket = %path.display(), error = %e, "no admin socket"),
        }
    }

    /// Accepts admin connections, refusing peers outside root, our user
    /// and the admin group; what is admitted is served by [`Self::serve_admin`].
    pub(super) fn accept_admin(&mut self) {
        // Bounded, so that a flood of connections cannot hold the loop.
        for _ in 0..64 {
            let Some(admin) = &self.admin else { return };
            let stream = match admin.accept() {
                Ok(Some(s)) => {
                    self.admin_accept.succeeded("admin", Instant::now());
                    s
                }
                Ok(None) => return,
                Err(e) => return self.admin_accept.failed("admin", &e, Instant::now()),
            };
            let peer = match admin::Peer::of(&stream) {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "admin connection without peer credentials; closed");
                    continue;
                }
            };
            match self.admin_access.check(&peer, crate::procfs::process_ids) {
                Ok(why) => {
                    debug!(peer_pid = peer.pid, uid = peer.uid, gid = peer.gid, admitted = ?why,
                           "admin connection");
                    self.admin_conns.add(stream, peer, Instant::now());
                }
                Err(e) => {
                    if self
                        .refusals
                        .first("admin request from outside the admin group", Instant::now())
                    {
                        warn!(
                            peer_pid = peer.pid,
                            uid = peer.uid,
                            gid = peer.gid,
                            "admin request refused (root, the broker's user and the admin \
                               group only): {e}"
                        );
                    }
                }
            }
        }
    }

    /// An admin connection is ready: read its request, or write its answer.
    pub(super) fn serve_admin(&mut self, id: u64) {
        if !self.admin_conns.ready(id) {
            return;
        }
        let now = Instant::now();
        let serving = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.role, Role::Serving { .. }))
            .map(|(_, w)| w.pid)
            .collect::<Vec<_>>();
        self.worker_memory.refresh(serving, now);
        let mut reply = match serde_json::to_vec(&self.status()) {
            Ok(json) => json,
            Err(e) => {
                error!(error = %e, "status as JSON");
                Vec::new()
            }
        };
        reply.push(b'\n');
        self.admin_conns.answer(id, reply, now);
    }
}
