//! `vtestd render-server`: a worker's Venus render server, in a box of its
//! own.
//!
//! A worker of a `vulkan` listener starts this (before its own sandbox, so
//! nothing is exec'd from inside a sandbox) with its end of a
//! `SOCK_SEQPACKET` pair on stdin. This process ties itself to the worker
//! (`PR_SET_PDEATHSIG`), applies the render-server box (its own user,
//! network, IPC, mount and PID namespaces, Landlock that executes only the
//! render server and the loader, no capabilities, no_new_privs, rlimits, and
//! the `render-server` seccomp profile, which every process it forks
//! inherits), then execs virglrenderer's render server on stdin. The
//! render server is PID 1 of its namespace: when it dies, so does every
//! per-context process it forked; when the worker dies, so does it.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use tracing::error;
use vtest_sandbox::SandboxConfig;

use crate::cli::WorkerArgs;
use crate::sandbox;

/// Exit code when the box cannot be applied or the program not started.
const FAILED: u8 = 4;

pub fn run(args: WorkerArgs) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        error!(error = %e, "cannot tie the render server to its worker");
        return ExitCode::from(FAILED);
    }
    if let Err(e) = nix::sys::signal::SigSet::all().thread_unblock() {
        error!(error = %e, "cannot unblock signals");
        return ExitCode::from(FAILED);
    }
    let program = args.renderer.render_server_program();
    if args.renderer.sandboxed() {
        let cache = std::env::var_os("MESA_SHADER_CACHE_DIR").map(Into::into);
        let mut config = SandboxConfig::for_render_server(
            args.renderer.rendernode.clone(),
            cache,
            program.clone(),
        );
        config.rlimits = args.rlimits();
        if let Err(reason) = sandbox::apply(&config, &args.renderer, "render server") {
            error!(%reason, "render server not started");
            return ExitCode::from(FAILED);
        }
    } else if let Err(e) = vtest_sandbox::rlimits::apply(&args.rlimits()) {
        error!(error = %crate::logging::chain(&e), "render server not started");
        return ExitCode::from(FAILED);
    }
    let e = Command::new(&program).args(["--socket-fd", "0"]).exec();
    error!(program = %program.display(), error = %e, "cannot start the render server");
    ExitCode::from(FAILED)
}

/// The arguments a worker starts its render server with: its own renderer
/// choice, sandbox settings and limits.
pub fn arguments(args: &WorkerArgs) -> Vec<String> {
    let mut out = vec!["render-server".to_string()];
    if let Some(n) = args.max_open_files {
        out.push(format!("--max-open-files={n}"));
    }
    if let Some(n) = args.max_data_mib {
        out.push(format!("--max-data-mib={n}"));
    }
    if let Some(n) = args.max_file_mib {
        out.push(format!("--max-file-mib={n}"));
    }
    if let Some(node) = &args.renderer.rendernode {
        out.push(format!("--rendernode={}", node.display()));
    }
    if !args.renderer.sandboxed() {
        out.push("--sandbox=off".into());
    }
    if !args.renderer.sandbox_allow_missing.is_empty() {
        let missing = args.renderer.sandbox_allow_missing.join(",");
        out.push(format!("--sandbox-allow-missing={missing}"));
    }
    out.push(format!(
        "--render-server={}",
        args.renderer.render_server_program().display()
    ));
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command as Sub};

    #[test]
    fn the_render_server_gets_the_workers_box_settings() {
        let cli = Cli::try_parse_from([
            "vtestd",
            "worker",
            "--venus",
            "--max-open-files=64",
            "--max-data-mib=512",
            "--max-file-mib=65",
            "--sandbox-allow-missing=landlock",
            "--render-server=/opt/rs",
        ])
        .unwrap();
        let Sub::Worker(args) = cli.command else {
            panic!("not a worker")
        };
        let argv = arguments(&args);
        assert_eq!(
            argv,
            [
                "render-server",
                "--max-open-files=64",
                "--max-data-mib=512",
                "--max-file-mib=65",
                "--sandbox-allow-missing=landlock",
                "--render-server=/opt/rs",
            ]
        );
        // And they parse back into the same limits.
        let back = Cli::try_parse_from(std::iter::once("vtestd".to_string()).chain(argv)).unwrap();
        let Sub::RenderServer(rs) = back.command else {
            panic!("not a render server")
        };
        assert_eq!(rs.rlimits(), args.rlimits());
        assert_eq!(
            rs.renderer.render_server_program(),
            args.renderer.render_server_program()
        );
    }
}
