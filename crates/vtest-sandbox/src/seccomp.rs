//! seccomp-BPF allowlists, compiled from `policies/*.json` by `build.rs`.
//!
//! Two phases per profile: `init` (installed before the renderer starts, so
//! it must allow everything EGL and virglrenderer initialisation does) and
//! `steady` (installed after, with TSYNC so that every thread Mesa started is
//! covered). Filters stack: in steady state a call must pass both.
//! Beside them, small filters that answer a few calls with an errno instead
//! of SIGSYS: `no-clone3` (ENOSYS), `no-wx` (memory writable and executable
//! in one call: EACCES, from init on; llvmpipe's, `no-wx-llvmpipe`, lets
//! the one mapping of Mesa's vertex-translation heap through) and, in
//! steady state, `no-open` (EACCES); and `no-tgkill` (SIGSYS), where the
//! worker is not PID 1 of its own namespace.
//!
//! A call outside the list traps (SIGSYS): [`crate::violation`] reports it
//! and the process dies.

use seccompiler::sock_filter;

use crate::SandboxError;

include!(concat!(env!("OUT_DIR"), "/policies.rs"));

/// Which renderer the worker drives: llvmpipe JITs shaders (needs
/// executable memory at run time); a hardware GPU does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Llvmpipe,
    Gpu,
    /// The box of a Venus render server (`render-server.json`): one filter
    /// for its whole life, installed before it is exec'd (both phases are
    /// the same), that kills the process on a call outside it.
    RenderServer,
}

/// Filter phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Init,
    Steady,
}

fn program(profile: Profile, phase: Phase) -> Vec<sock_filter> {
    decode(match (profile, phase) {
        (Profile::Llvmpipe, Phase::Init) => LLVMPIPE_INIT,
        (Profile::Llvmpipe, Phase::Steady) => LLVMPIPE_STEADY,
        (Profile::Gpu, Phase::Init) => GPU_INIT,
        (Profile::Gpu, Phase::Steady) => GPU_STEADY,
        (Profile::RenderServer, _) => RENDER_SERVER,
    })
}

fn decode(bytes: &[u8]) -> Vec<sock_filter> {
    bytes
        .chunks_exact(8)
        .map(|c| sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// Distinct syscalls each filter allows (for the README's figures).
pub fn allowed_syscalls(profile: Profile, phase: Phase) -> &'static [&'static str] {
    match (profile, phase) {
        (Profile::Llvmpipe, Phase::Init) => LLVMPIPE_INIT_NAMES,
        (Profile::Llvmpipe, Phase::Steady) => LLVMPIPE_STEADY_NAMES,
        (Profile::Gpu, Phase::Init) => GPU_INIT_NAMES,
        (Profile::Gpu, Phase::Steady) => GPU_STEADY_NAMES,
        (Profile::RenderServer, _) => RENDER_SERVER_NAMES,
    }
}

/// The name of syscall number `nr` on this architecture, if it is one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let sysno = usize::try_from(nr).ok().and_then(syscalls::Sysno::new)?;
    Some(sysno.name())
}

/// Installs a filter phase: `Init` on the calling thread (the only one
/// then), `Steady` on every thread (TSYNC). The errno filters come first;
/// each stays installed, so `no-wx` from init covers steady state too.
pub fn install(profile: Profile, phase: Phase) -> Result<(), SandboxError> {
    let err = |e: seccompiler::Error| SandboxError::Seccomp(e.to_string());
    let filter = program(profile, phase);
    if profile == Profile::RenderServer {
        // Foreign code with no SIGSYS handler of ours: threads through
        // `clone` (flags checked), never memory writable and executable at
        // once, and the one filter, inherited by everything it starts.
        seccompiler::apply_filter(&decode(NO_CLONE3)).map_err(err)?;
        seccompiler::apply_filter(&decode(NO_WX)).map_err(err)?;
        return seccompiler::apply_filter(&filter).map_err(err);
    }
    match phase {
        Phase::Init => {
            seccompiler::apply_filter(&decode(NO_CLONE3)).map_err(err)?;
            seccompiler::apply_filter(&decode(no_wx(profile))).map_err(err)?;
            // SAFETY: getpid has no preconditions.
            if unsafe { libc::getpid() } != 1 {
                // No PID namespace: tgid 1 is not this process.
                seccompiler::apply_filter(&decode(NO_TGKILL)).map_err(err)?;
            }
            seccompiler::apply_filter(&filter).map_err(err)
        }
        Phase::Steady => {
            seccompiler::apply_filter_all_threads(&decode(NO_OPEN)).map_err(err)?;
            seccompiler::apply_filter_all_threads(&filter).map_err(err)
        }
    }
}

/// A profile's W+X filter: llvmpipe's lets exactly the mapping of Mesa's
/// vertex-translation heap through (`no-wx-llvmpipe.json`).
fn no_wx(profile: Profile) -> &'static [u8] {
    match profile {
        Profile::Llvmpipe => NO_WX_LLVMPIPE,
        Profile::Gpu | Profile::RenderServer => NO_WX,
    }
}

/// The reaper's filter (`policies/seccomp/reaper.json`).
pub(crate) fn install_reaper() -> Result<(), SandboxError> {
    seccompiler::apply_filter(&decode(REAPER)).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table of allowlist sizes, as the policies make it.
    fn readme_counts_table() -> String {
        let mut t = String::from("| | init | steady state |\n|---|---|---|\n");
        for (name, profile) in [("llvmpipe", Profile::Llvmpipe), ("GPU", Profile::Gpu)] {
            let init = allowed_syscalls(profile, Phase::Init).len();
            let steady = allowed_syscalls(profile, Phase::Steady).len();
            t += &format!("| distinct syscalls allowed, {name} profile | {init} | {steady} |\n");
        }
        let rs = allowed_syscalls(Profile::RenderServer, Phase::Steady).len();
        t += &format!(
            "| distinct syscalls allowed, Venus render server (one filter for its whole life) | {rs} | {rs} |\n"
        );
        t
    }

    /// README figures are generated, not copied: this fails when the
    /// policies changed and the README did not, printing the block to paste.
    #[test]
    fn readme_counts_are_the_policies() {
        let readme = include_str!("../../../README.md");
        let begin = "<!-- generated: the allowlists compiled from policies/";
        let start = readme.find(begin).expect("generated block in README.md");
        let body = &readme[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let table = &body[..body.find("<!-- end generated -->").unwrap()];
        let expected = readme_counts_table();
        assert_eq!(table, expected, "README.md's block must read:\n{expected}");
    }

    #[test]
    fn allowlists_are_small_and_steady_is_tighter() {
        for profile in [Profile::Llvmpipe, Profile::Gpu] {
            let init = allowed_syscalls(profile, Phase::Init);
            let steady = allowed_syscalls(profile, Phase::Steady);
            println!(
                "{profile:?}: {} syscalls at init, {} in steady state",
                init.len(),
                steady.len()
            );
            assert!(steady.len() < init.len());
            assert!(steady.iter().all(|s| init.contains(s)));
            for forbidden in ["execve", "ptrace", "kill", "mount", "setuid", "unshare"] {
                assert!(!steady.contains(&forbidden), "{forbidden} allowed");
            }
            // Signals go through tgkill only, whose target the filters check.
            for forbidden in ["kill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"] {
                assert!(!init.contains(&forbidden), "{forbidden} allowed at init");
            }
            assert!(
                !init.contains(&"pkey_mprotect"),
                "pkey_mprotect escapes no-wx"
            );
            // Every form of one operation, whichever the libc calls.
            for family in [&["newfstatat", "fstat", "statx"][..], &["openat", "open"]] {
                let allowed = family.iter().filter(|n| steady.contains(n)).count();
                assert!(
                    allowed == 0 || allowed == family.len(),
                    "{family:?} in part"
                );
            }
        }
        // Opening files in steady state is answered by the stacked
        // no-open filter, which the main filter lets through.
        let no_open = decode(NO_OPEN);
        assert!(!no_open.is_empty());
        assert!(!decode(NO_WX).is_empty());
        assert!(!decode(NO_TGKILL).is_empty());
        // 56 before Venus, whose proxy checks socket types (getsockopt,
        // argument-filtered to SOL_SOCKET/SO_TYPE).
        assert!(allowed_syscalls(Profile::Llvmpipe, Phase::Steady).len() <= 57);
    }

    #[test]
    fn the_render_server_box_has_no_way_out() {
        let rs = allowed_syscalls(Profile::RenderServer, Phase::Init);
        assert_eq!(rs, allowed_syscalls(Profile::RenderServer, Phase::Steady));
        for forbidden in [
            "ptrace",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "setuid",
            "setns",
            "unshare",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "io_uring_setup",
            "userfaultfd",
            "process_vm_writev",
            "pkey_mprotect",
            "init_module",
            "open_by_handle_at",
            "personality",
        ] {
            assert!(!rs.contains(&forbidden), "{forbidden} allowed");
        }
        assert!(
            rs.contains(&"execve"),
            "the render server is exec'd under it"
        );
    }

    #[test]
    fn syscalls_are_named() {
        assert_eq!(syscall_name(libc::SYS_socket), Some("socket"));
        assert_eq!(syscall_name(libc::SYS_execve), Some("execve"));
        assert_eq!(syscall_name(100_000), None);
    }
}
