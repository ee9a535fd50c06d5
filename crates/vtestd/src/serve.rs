//! `vtestd serve`: the broker.

use tracing::warn;
use vtest_broker::{Broker, BrokerConfig, WorkerCommand};

use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    for (set, flag) in [
        (args.no_fork, "--no-fork"),
        (args.multi_clients, "--multi-clients"),
    ] {
        if set {
            warn!("{flag} accepted for compatibility: every client always gets its own worker");
        }
    }
    if args.renderer.sandbox == crate::cli::Toggle::Off {
        warn!("--sandbox=off: workers run UNCONFINED; for debugging only, never with untrusted clients");
    }
    if args.no_loop_or_fork {
        warn!("--no-loop-or-fork: serving one client in its own worker, then exiting");
    }
    let program = std::env::current_exe()?;
    let mut worker_args = vec!["worker".into()];
    worker_args.extend(args.renderer.to_args());
    let config = BrokerConfig {
        socket_path: args.socket_path,
        listener_name: "default".into(),
        worker: WorkerCommand {
            program,
            args: worker_args,
            shader_cache_dir: args.shader_cache_dir,
        },
        max_clients: args.no_loop_or_fork.then_some(1),
    };
    Broker::new(config)?.run()?;
    Ok(())
}
