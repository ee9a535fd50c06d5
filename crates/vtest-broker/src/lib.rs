//! The broker: owns the listening sockets, checks each peer, keeps silent
//! clients without a worker until their first byte, hands each client to its
//! own worker process (pre-started and initialised where a pool is
//! configured; fork+exec, so every worker gets a fresh address space), and
//! reaps and accounts for every worker.
//!
//! It never links EGL, GL or virglrenderer: everything that parses client
//! data runs in a worker. Single-threaded: one `poll` loop over the
//! listeners, the admin socket, a signalfd, waiting clients and the workers'
//! control channels.
#![forbid(unsafe_code)]

mod activation;
pub mod admin;
mod broker;
mod cgroup;
pub mod config;
mod error;
mod listener;
mod notify;
mod procfs;
pub mod shader_cache;
mod spawn;
pub mod status;
mod workers;

pub use broker::{Broker, BrokerConfig, Overrides};
pub use config::Config;
pub use error::BrokerError;
pub use spawn::WorkerCommand;
