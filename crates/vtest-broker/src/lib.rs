//! The broker: owns the listening socket, checks each peer, starts one worker
//! process per client (fork+exec, so every worker gets a fresh address space),
//! hands it the client fd over the control channel, and reaps it.
//!
//! It never links EGL, GL or virglrenderer: everything that parses client
//! data runs in a worker. Single-threaded: one `poll` loop over the listener,
//! a signalfd and the workers' control channels.
#![forbid(unsafe_code)]

mod broker;
mod error;
mod listener;
mod spawn;
mod workers;

pub use broker::{Broker, BrokerConfig};
pub use error::BrokerError;
pub use spawn::WorkerCommand;
