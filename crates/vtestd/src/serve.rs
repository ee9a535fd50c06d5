//! `vtestd serve`: the broker.

use tracing::warn;
use vtest_broker::config::{Backend, Config};
use vtest_broker::{Broker, BrokerConfig};

use crate::cli::ServeArgs;

/// Command-line flags over the configuration's first listener (the one the
/// reference server's flags describe).
fn overrides(args: &ServeArgs) -> impl Fn(&mut Config) {
    let socket_path = args.socket_path.clone();
    let renderer = args.renderer.clone();
    let cache = args.shader_cache_dir.clone();
    let pool = args.pool;
    let pool_max = args.pool_max;
    let scope = args.shader_cache;
    let admin = args.admin_socket.clone();
    move |config: &mut Config| {
        if let Some(a) = &admin {
            config.server.admin_socket = a.clone();
        }
        if let Some(program) = &renderer.render_server {
            config.server.render_server = program.clone();
        }
        let Some(l) = config.listeners.first_mut() else {
            return;
        };
        if let Some(p) = &socket_path {
            l.path = p.clone();
        }
        if let Some(node) = &renderer.rendernode {
            l.backend = Backend::RenderNode;
            l.render_node = Some(node.clone());
        } else if renderer.use_gles {
            l.backend = Backend::Gles;
        } else if renderer.use_egl_surfaceless {
            l.backend = Backend::Surfaceless;
        }
        if renderer.venus {
            l.vulkan = true;
        }
        if renderer.no_virgl {
            l.virgl = false;
        }
        if renderer.sandbox.is_some() {
            l.sandbox = renderer.sandboxed();
        }
        if !renderer.sandbox_allow_missing.is_empty() {
            l.sandbox_allow_missing = renderer.sandbox_allow_missing.clone();
        }
        if let Some(dir) = &cache {
            l.shader_cache_dir = Some(dir.clone());
        }
        if let Some(scope) = scope {
            l.shader_cache = scope;
        }
        if let Some(n) = pool {
            l.pool = n;
            l.pool_max = l.pool_max.max(n);
        }
        if let Some(n) = pool_max {
            l.pool_max = n;
            l.pool = l.pool.min(n);
        }
    }
}

pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    for (set, flag) in [
        (args.no_fork, "--no-fork"),
        (args.multi_clients, "--multi-clients"),
    ] {
        if set {
            warn!("{flag} accepted for compatibility: every client always gets its own worker");
        }
    }
    if args.no_loop_or_fork {
        warn!("--no-loop-or-fork: serving one client in its own worker, then exiting");
    }
    if let Some(dir) = &args.shader_cache_dir {
        vtest_broker::config::check_shader_cache_dir(dir)?;
    }
    let config = Config::load_or_default(args.config.config.as_deref())?;
    let overrides = overrides(&args);
    let mut effective = config.clone();
    overrides(&mut effective);
    // The flags may make a valid file say something that is not (e.g.
    // --no-virgl without --venus: a listener that serves nothing).
    effective
        .check()
        .map_err(|e| format!("with the command-line flags: {e}"))?;
    for l in effective.listeners.iter().filter(|l| !l.sandbox) {
        warn!(listener = %l.name,
              "sandbox off: workers run UNCONFINED; for debugging only, never with untrusted clients");
    }
    let settings = BrokerConfig {
        config,
        config_path: args.config.config.clone(),
        overrides: Box::new(overrides),
        program: std::env::current_exe()?,
        serve_total: args.no_loop_or_fork.then_some(1),
    };
    Broker::new(settings)?.run()?;
    Ok(())
}
