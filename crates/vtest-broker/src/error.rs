//! Broker errors: all fatal for the broker (client errors never reach here).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("another server is listening on {0}")]
    AddressInUse(PathBuf),
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing the socket path {path}: {why}")]
    UnsafeSocketPath { path: PathBuf, why: String },
    #[error("event loop")]
    EventLoop(#[source] nix::Error),
    #[error("signal handling")]
    Signals(#[source] nix::Error),
    #[error(
        "worker_open_files {wanted} is above this process's hard open files limit {hard} \
         (systemd: LimitNOFILE=); no worker could start"
    )]
    WorkerFdLimit { wanted: u64, hard: u64 },
    #[error(
        "listener {listener}: its workers cannot start with this configuration on this host: \
         {reason}"
    )]
    WorkerCannotStart { listener: String, reason: String },
}
