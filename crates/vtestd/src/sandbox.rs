//! Applying the worker sandbox and logging what the host allowed.

use std::os::fd::{AsRawFd, RawFd};

use tracing::{debug, info, warn};
use vtest_control::Channel;
use vtest_sandbox::{Outcome, Profile, Rlimits, SandboxConfig, ViolationReport};

use crate::cli::RendererArgs;

/// Confines this worker before the renderer starts. Returns the seccomp
/// profile to tighten to once it has, or `None` with `--sandbox=off`.
pub fn confine(
    args: &RendererArgs,
    rlimits: Rlimits,
    channel: &Channel,
    keep_fds: &[RawFd],
) -> Result<Option<Profile>, String> {
    if !args.sandboxed() {
        // Fault signals still kill the worker, and its limits still hold.
        vtest_sandbox::signals::die_on_fault_signals().map_err(|e| e.to_string())?;
        vtest_sandbox::rlimits::apply(&rlimits).map_err(|e| crate::logging::chain(&e))?;
        return Ok(None);
    }
    let cache = std::env::var_os("MESA_SHADER_CACHE_DIR").map(Into::into);
    let report = violation_report(channel).map_err(|e| crate::logging::chain(&e))?;
    let mut config = SandboxConfig::for_worker(args.rendernode.clone(), cache, Some(report));
    config.rlimits = rlimits;
    config.keep_fds = keep_fds.to_vec();
    apply(&config, args, "worker")?;
    Ok(Some(config.profile))
}

/// Applies `config` and logs what the host allowed; an error where a layer
/// the host refused is not in `sandbox_allow_missing` (fail closed).
pub fn apply(config: &SandboxConfig, args: &RendererArgs, what: &str) -> Result<(), String> {
    let report = vtest_sandbox::confine(config).map_err(|e| crate::logging::chain(&e))?;
    let mut missing = Vec::new();
    let mut refused = Vec::new();
    for (layer, outcome) in &report {
        match outcome {
            Outcome::Applied => {}
            Outcome::Partial(why) => missing.push(format!("{} partial ({why})", layer.name())),
            Outcome::Unavailable(why) => {
                missing.push(format!("{} unavailable ({why})", layer.name()));
                if !args.sandbox_allow_missing.iter().any(|n| n == layer.name()) {
                    refused.push(format!("{} ({why})", layer.name()));
                }
            }
        }
    }
    // Fail closed: a layer the host refused is served without only where
    // the administrator said it may be (sandbox_allow_missing).
    if !refused.is_empty() {
        let names: Vec<&str> = refused
            .iter()
            .map(|r| r.split(' ').next().unwrap_or_default())
            .collect();
        return Err(format!(
            "required sandbox layers unavailable on this host: {}; a listener may accept \
             serving without them with sandbox_allow_missing = {names:?}",
            refused.join(", ")
        ));
    }
    if missing.is_empty() {
        info!(profile = ?config.profile, "{what} sandbox applied");
    } else {
        warn!(profile = ?config.profile, "{what} sandbox weakened (allowed by sandbox_allow_missing): {}", missing.join(", "));
    }
    Ok(())
}

/// A trapped system call is reported as the control channel's
/// `SeccompViolation` packet, so the broker reads it as any worker message:
/// the sandbox sends the packet made in advance, the syscall number written
/// into it (its SIGSYS handler can do no more).
fn violation_report(channel: &Channel) -> Result<ViolationReport, vtest_sandbox::SandboxError> {
    let (packet, syscall_at) = vtest_control::codec::seccomp_violation_template();
    ViolationReport::new(channel.as_raw_fd(), &packet, syscall_at)
}

/// The steady-state profile for the renderer that actually runs. A worker
/// given render nodes starts under the GPU profile (no executable memory
/// once serving), but Mesa falls back to llvmpipe when the node has no
/// Mesa driver (NVIDIA's proprietary driver, a node that is no GPU), and
/// llvmpipe compiles every shader to machine code: under the GPU profile
/// the first shader would kill the worker. Such a worker serves with the
/// llvmpipe profile, and says so.
pub fn steady_profile(configured: Profile, gl_renderer: Option<String>) -> Profile {
    let software = gl_renderer
        .as_deref()
        .is_some_and(|r| r.starts_with("llvmpipe") || r.starts_with("softpipe"));
    if configured == Profile::Gpu && software {
        warn!(
            renderer = gl_renderer.as_deref().unwrap_or_default(),
            "the render node gives no hardware renderer (Mesa fell back to software): \
             serving with the llvmpipe profile, whose JIT needs executable memory"
        );
        return Profile::Llvmpipe;
    }
    debug!(renderer = gl_renderer.as_deref().unwrap_or("unknown"), profile = ?configured, "steady profile");
    configured
}

/// `vtestd worker --check-sandbox`: applies the sandbox as a worker would
/// and prints, one line per layer, what this host allowed.
pub fn check(args: &RendererArgs, rlimits: Rlimits) -> std::process::ExitCode {
    let mut config = SandboxConfig::for_worker(args.rendernode.clone(), None, None);
    config.rlimits = rlimits;
    match vtest_sandbox::confine(&config) {
        Ok(report) => {
            for (layer, outcome) in report {
                let allowed = args.sandbox_allow_missing.iter().any(|n| n == layer.name());
                let text = match outcome {
                    Outcome::Applied => "applied".to_string(),
                    Outcome::Partial(why) => format!("partial: {why}"),
                    Outcome::Unavailable(why) if allowed => {
                        format!("unavailable: {why} (allowed by sandbox_allow_missing)")
                    }
                    Outcome::Unavailable(why) => {
                        format!("unavailable: {why} (REQUIRED: workers refuse to serve)")
                    }
                };
                println!("{:18} {text}", layer.name());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {}", crate::logging::chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
