//! The configuration's listeners applied: at start and on SIGHUP, new
//! listeners are bound (or adopted from systemd's sockets), existing ones
//! (by name) get the new settings for their next clients, removed ones
//! close. A reload that fails keeps the running configuration.

use tracing::{error, info};

use super::accept_pause::AcceptPause;
use super::fd_limit::check_worker_fd_limit;
use super::listeners::{worker_command, ListenerState};
use super::Broker;
use crate::config::{parse_mode, Config};
use crate::listener::{Listener, SocketPerms};
use crate::BrokerError;

impl Broker {
    /// Re-reads the configuration file (SIGHUP).
    pub(super) fn reload(&mut self) {
        let loaded = Config::load_or_default(self.settings.config_path.as_deref());
        let loaded = loaded.map_err(|e| e.to_string()).and_then(|mut config| {
            (self.settings.overrides)(&mut config);
            config.check()?;
            check_worker_fd_limit(&config).map_err(|e| e.to_string())?;
            Ok(config)
        });
        match loaded {
            Ok(config) => {
                self.settings.config = config;
                match self.apply_listeners() {
                    Ok(()) => info!("configuration reloaded (applies to new connections)"),
                    Err(e) => error!(error = %e, "reload: cannot bind a new listener"),
                }
            }
            Err(e) => error!(error = %e, "reload failed; keeping the running configuration"),
        }
    }

    /// Binds listeners that are new in the configuration, updates the
    /// settings of existing ones (by name) and closes removed ones.
    pub(super) fn apply_listeners(&mut self) -> Result<(), BrokerError> {
        let config = self.settings.config.clone();
        self.listeners.retain(|l| {
            let keep = config
                .listeners
                .iter()
                .any(|c| c.name == l.config.name && c.path == l.config.path);
            if !keep {
                info!(listener = %l.config.name, "listener removed");
            }
            keep
        });
        for lc in &config.listeners {
            let profile = &config.limits[&lc.limits];
            let limits = profile.to_wire();
            let command = worker_command(&self.settings.program, &config.server, lc, profile);
            let existing = self.listeners.named(&lc.name);
            if let Some(existing) = existing.and_then(|id| self.listeners.get_mut(id)) {
                if existing.command.args != command.args {
                    // New backend: the pool's workers were started for the old one.
                    self.workers
                        .end_pool(Some(&lc.name), "replaced after a reload");
                }
                existing.config = lc.clone();
                existing.command = command;
                existing.limits = limits;
                continue;
            }
            let passed = self.activated.iter().position(|(l, name)| {
                name.as_deref() == Some(lc.name.as_str()) || l.path() == lc.path
            });
            let socket = match passed {
                Some(i) => self.activated.swap_remove(i).0,
                None => {
                    let perms = SocketPerms {
                        mode: lc.mode.as_deref().and_then(|m| parse_mode(m).ok()),
                        owner: lc.owner.clone(),
                        group: lc.group.clone(),
                    };
                    Listener::bind(&lc.path, &perms)?
                }
            };
            info!(listener = %lc.name, socket = %socket.path().display(), backend = ?lc.backend,
                  pool = lc.pool, sandbox = lc.sandbox, "listening");
            if lc.shader_cache == crate::config::ShaderCacheScope::Uid && lc.pool > 0 {
                info!(listener = %lc.name,
                      "no pre-started workers: the shader cache is per client uid");
            }
            self.listeners.add(ListenerState {
                config: lc.clone(),
                socket: Some(socket),
                command,
                limits,
                backoff_until: None,
                accept: AcceptPause::default(),
                demand: Default::default(),
                checked: None,
            });
        }
        Ok(())
    }
}
