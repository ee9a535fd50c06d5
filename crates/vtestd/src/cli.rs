//! Command line. `serve` accepts the reference server's flags in both
//! `--flag=value` and `--flag value` forms.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vtest_broker::config::ShaderCacheScope;

#[derive(Debug, Parser)]
#[command(
    name = "vtestd",
    version,
    about = "Sandboxed vtest server for Mesa's virgl driver"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen for vtest clients and serve each from its own worker process.
    Serve(ServeArgs),
    /// Check a configuration file and print the effective settings.
    CheckConfig(ConfigArg),
    /// Show listeners, worker pools, clients and exit counters of a running broker.
    Status(StatusArgs),
    /// Print a running broker's counters in Prometheus text format.
    Metrics(AdminArg),
    /// Write a Container Device Interface spec, so that
    /// `podman run --device vtestd.dev/gpu=default` injects the socket and environment.
    Cdi(CdiArgs),
    /// Print the man page (roff), or write one per subcommand into a directory.
    Man {
        /// Write vtestd.1 and vtestd-SUBCOMMAND.1 here instead of printing vtestd.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: serve one client handed over by the broker.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Internal: a worker's Venus render server, confined, on stdin's socket.
    #[command(hide = true)]
    RenderServer(WorkerArgs),
}

/// `vtestd worker`: the renderer choice plus the process limits the broker
/// sets from `[server]` (they apply before the sandbox, so a pool worker is
/// limited before it ever sees a client).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub renderer: RendererArgs,
    /// RLIMIT_NOFILE of the worker.
    #[arg(long, value_name = "N")]
    pub max_open_files: Option<u64>,
    /// RLIMIT_DATA of the worker (private memory: heap, anonymous mappings), MiB.
    #[arg(long, value_name = "MIB")]
    pub max_data_mib: Option<u64>,
    /// RLIMIT_FSIZE of the worker (the largest memfd), MiB: the listener's
    /// largest resource.
    #[arg(long, value_name = "MIB")]
    pub max_file_mib: Option<u64>,
    /// Apply the sandbox, print what this host allowed of each layer, exit.
    #[arg(long)]
    pub check_sandbox: bool,
    /// Wait for the broker to put this process in its cgroup before the
    /// sandbox forks (so that every process of the worker is limited).
    #[arg(long)]
    pub wait_for_cgroup: bool,
    /// Create and destroy a context under the steady seccomp filter before
    /// Ready, so that a configuration the sandbox cannot serve fails at
    /// start (the broker asks it of a listener's workers until one passed).
    #[arg(long)]
    pub check_context: bool,
}

impl WorkerArgs {
    /// The worker's rlimits: the broker's values, else the defaults.
    pub fn rlimits(&self) -> vtest_sandbox::Rlimits {
        let defaults = vtest_sandbox::Rlimits::default();
        vtest_sandbox::Rlimits {
            open_files: self.max_open_files.unwrap_or(defaults.open_files),
            data_bytes: self
                .max_data_mib
                .map_or(defaults.data_bytes, |m| m.saturating_mul(1 << 20)),
            file_bytes: self
                .max_file_mib
                .map_or(defaults.file_bytes, |m| m.saturating_mul(1 << 20)),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Configuration file [default: /etc/vtestd/vtestd.toml if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CdiArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Where to write the spec [default: standard output]; e.g.
    /// /etc/cdi/vtestd.json.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct AdminArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The broker's admin socket [default: from the configuration].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminArg,
    /// Print JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Renderer backend choice, shared by `serve` and `worker`.
#[derive(Debug, Clone, Args)]
pub struct RendererArgs {
    /// Use EGL without a display (the default; llvmpipe without a GPU).
    #[arg(long)]
    pub use_egl_surfaceless: bool,
    /// Use OpenGL ES instead of desktop OpenGL.
    #[arg(long)]
    pub use_gles: bool,
    /// Render on this DRM render node through GBM (e.g. /dev/dri/renderD128).
    #[arg(long, value_name = "PATH")]
    pub rendernode: Option<PathBuf>,
    /// Confine workers (namespaces, Landlock, capabilities, seccomp).
    /// `off` is for debugging only and leaves every client unconfined.
    #[arg(long, value_name = "on|off")]
    pub sandbox: Option<Toggle>,
    /// Sandbox layers this host may lack without the worker refusing to
    /// serve (comma-separated: user-namespace, network-namespace,
    /// ipc-namespace, mount-namespace, pid-namespace, landlock). By default
    /// every layer is required.
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    pub sandbox_allow_missing: Vec<String>,
    /// Serve Vulkan too (Venus, capset 4), through a confined render
    /// server per worker.
    #[arg(long)]
    pub venus: bool,
    /// Serve no OpenGL (with --venus: Vulkan only).
    #[arg(long)]
    pub no_virgl: bool,
    /// The render server program [default: /usr/libexec/virgl_render_server].
    #[arg(long, value_name = "PATH")]
    pub render_server: Option<PathBuf>,
}

/// Where virglrenderer installs its render server.
pub const DEFAULT_RENDER_SERVER: &str = "/usr/libexec/virgl_render_server";

/// An on/off switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Socket to listen on (the configuration's first listener)
    /// [default: /tmp/.virgl_test].
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,
    #[command(flatten)]
    pub renderer: RendererArgs,
    /// Accepted for compatibility: every client always gets its own worker.
    #[arg(long)]
    pub no_fork: bool,
    /// Accepted for compatibility: every client always gets its own worker.
    #[arg(long)]
    pub multi_clients: bool,
    /// Serve one client (in its own worker), then exit.
    #[arg(long)]
    pub no_loop_or_fork: bool,
    /// Who shares a Mesa shader cache on the first listener: all its
    /// clients (`listener`, the default), each client uid (`uid`), nobody
    /// (`off`). A client can poison only its own scope's cache.
    #[arg(long, value_name = "SCOPE")]
    pub shader_cache: Option<ShaderCacheScope>,
    /// The first listener's shader cache directory (default: the
    /// listener's directory under `[server] shader_cache_dir`).
    #[arg(long, value_name = "DIR")]
    pub shader_cache_dir: Option<PathBuf>,
    /// Workers kept started and initialised for the first listener, at
    /// the least (the pool grows with demand up to `--pool-max`).
    #[arg(long, value_name = "N")]
    pub pool: Option<u32>,
    /// The most workers the first listener's pool keeps started.
    #[arg(long, value_name = "N")]
    pub pool_max: Option<u32>,
    /// The admin socket for `vtestd status`.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
}

impl RendererArgs {
    /// Surfaceless EGL unless a render node is named.
    pub fn options(&self) -> vtest_renderer::RendererOptions {
        vtest_renderer::RendererOptions {
            surfaceless: self.rendernode.is_none() || self.use_egl_surfaceless,
            gles: self.use_gles,
            render_node: self.rendernode.clone(),
            venus: self.venus,
            no_virgl: self.no_virgl,
        }
    }

    /// The render server program (`--venus`).
    pub fn render_server_program(&self) -> PathBuf {
        self.render_server
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RENDER_SERVER))
    }

    /// Whether the worker sandbox is on (the default).
    pub fn sandboxed(&self) -> bool {
        self.sandbox != Some(Toggle::Off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_flags_parse_in_both_forms() {
        for argv in [
            &[
                "vtestd",
                "serve",
                "--socket-path=/x",
                "--rendernode=/dev/dri/renderD128",
            ][..],
            &[
                "vtestd",
                "serve",
                "--socket-path",
                "/x",
                "--rendernode",
                "/dev/dri/renderD128",
            ][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Serve(s) = cli.command else {
                panic!("not serve")
            };
            assert_eq!(s.socket_path, Some(PathBuf::from("/x")));
            assert_eq!(
                s.renderer.rendernode,
                Some(PathBuf::from("/dev/dri/renderD128"))
            );
        }
        let cli = Cli::try_parse_from([
            "vtestd",
            "serve",
            "--use-egl-surfaceless",
            "--use-gles",
            "--no-fork",
            "--multi-clients",
            "--no-loop-or-fork",
            "--venus",
            "--no-virgl",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.socket_path, None);
        assert!(s.renderer.use_gles && s.no_fork && s.multi_clients && s.no_loop_or_fork);
        assert!(s.renderer.venus && s.renderer.no_virgl);
        assert_eq!(
            s.renderer.render_server_program(),
            PathBuf::from(DEFAULT_RENDER_SERVER)
        );
        assert!(Cli::try_parse_from(["vtestd", "serve", "--bogus"]).is_err());
    }
}
