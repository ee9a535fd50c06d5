//! The broker's open files limit: raised to its hard limit at start (one fd
//! per connection and two per worker; the event loop uses poll, not
//! select), and checked against what workers are configured to need.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tracing::{debug, warn};

use crate::{BrokerError, Config};

/// Raises the soft limit to the hard one, and names a configuration that
/// may need more.
pub(super) fn raise_fd_limit(config: &Config) -> Result<(), BrokerError> {
    check_worker_fd_limit(config)?;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    let mut limit = soft;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        debug!(from = soft, to = hard, "open files limit raised");
        limit = hard;
    }
    let needed = fds_needed(config);
    if needed > limit {
        warn!(
            limit,
            needed,
            max_clients = config.server.max_clients,
            "the open files limit may not hold max_clients; connections beyond it \
               wait in the backlog"
        );
    }
    Ok(())
}

/// Fds the broker may hold at once: per worker (serving or pooled) its
/// control channel and its stderr pipe, and some of its own.
pub(super) fn fds_needed(config: &Config) -> u64 {
    let pools: u64 = config.listeners.iter().map(|l| u64::from(l.pool)).sum();
    2 * (u64::from(config.server.max_clients) + pools) + 64
}

/// Workers set their fd limit (soft = hard) under the broker's hard limit,
/// which they inherit: above it, none could start.
pub(super) fn check_worker_fd_limit(config: &Config) -> Result<(), BrokerError> {
    let wanted = config.server.worker_open_files;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if wanted > hard => Err(BrokerError::WorkerFdLimit { wanted, hard }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn each_client_and_pool_worker_needs_two_fds() {
        let config = Config::parse(
            "[server]\nmax_clients = 100\n[[listener]]\nname = \"a\"\npath = \"/tmp/a\"\npool = 3\n\
             [[listener]]\nname = \"b\"\npath = \"/tmp/b\"\npool = 2\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(fds_needed(&config), 2 * (100 + 5) + 64);
    }

    #[test]
    fn worker_open_files_above_the_hard_limit_is_refused() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let mut config = Config::default();
        config.server.worker_open_files = hard;
        assert!(check_worker_fd_limit(&config).is_ok());
        if hard < u64::MAX {
            config.server.worker_open_files = hard + 1;
            let e = check_worker_fd_limit(&config).unwrap_err();
            assert!(matches!(e, BrokerError::WorkerFdLimit { wanted, .. } if wanted == hard + 1));
        }
    }
}
