//! The PID namespace. `unshare(CLONE_NEWPID)` only affects children, so the
//! worker forks once: the child becomes PID 1 of a namespace where it is the
//! only process (it cannot see, signal or trace anything else), and the
//! parent stays behind as a minimal *reaper* that the broker knows as the
//! worker: it holds no fds, no capabilities, runs under a tiny seccomp
//! filter, waits for the child and ends the way the child ended (exit code or
//! signal, never a signal that would stop it or leave it running: see
//! [`mirrored_signal`]), so the broker's accounting is unchanged. If the reaper is killed
//! (watchdog, shutdown, `kill`), the kernel kills the child
//! (`PR_SET_PDEATHSIG`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{fork, getpid, ForkResult, Pid};

use crate::{privileges, seccomp, Profile, SandboxError};

/// Exit code of a PID-namespace init that died of `signal` (it cannot be
/// killed by its own signals): the reaper turns it back into the signal.
pub const fn exit_code_for(signal: i32) -> i32 {
    128 + signal
}

/// The signal the reaper dies of for a child that exited with `code`, if
/// any. Only signals whose default action ends a process are mirrored: the
/// child chooses its exit code, and a reaper that stopped itself (147, 128 +
/// SIGSTOP) would hold its client's slot in the broker, which sees it alive;
/// one that raised SIGCONT, SIGCHLD, SIGWINCH or SIGURG would not end at
/// all. Those codes, and the rest, end the reaper with the code itself.
pub fn mirrored_signal(code: i32) -> Option<Signal> {
    let signal = Signal::try_from(code.checked_sub(128)?).ok()?;
    ends_a_process(signal).then_some(signal)
}

/// Whether `signal`'s default action terminates (or dumps) the process.
fn ends_a_process(signal: Signal) -> bool {
    !matches!(
        signal,
        Signal::SIGSTOP
            | Signal::SIGTSTP
            | Signal::SIGTTIN
            | Signal::SIGTTOU
            | Signal::SIGCONT
            | Signal::SIGCHLD
            | Signal::SIGWINCH
            | Signal::SIGURG
    )
}

/// The process's CPU time (ns) just before [`enter`] forked, which the
/// child's own clock (it starts at zero) no longer holds; 0 before a fork.
static CPU_BEFORE_FORK_NS: AtomicU64 = AtomicU64::new(0);

/// CPU time the worker had used when it forked into its PID namespace
/// (for the start-up figures: the child's clock starts again at zero);
/// `None` where it did not fork.
pub fn cpu_before_fork() -> Option<Duration> {
    match CPU_BEFORE_FORK_NS.load(Ordering::Relaxed) {
        0 => None,
        ns => Some(Duration::from_nanos(ns)),
    }
}

/// Forks into the new PID namespace; returns in the child only.
pub(crate) fn enter(profile: Profile) -> Result<(), SandboxError> {
    if let Ok(t) = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID) {
        let ns = Duration::from(t).as_nanos();
        CPU_BEFORE_FORK_NS.store(
            u64::try_from(ns).unwrap_or(u64::MAX).max(1),
            Ordering::Relaxed,
        );
    }
    // SAFETY: the worker is single-threaded here (the renderer, which starts
    // threads, comes later), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(SandboxError::Fork)? {
        ForkResult::Child => {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(SandboxError::Fork)?;
            Ok(())
        }
        ForkResult::Parent { child } => reap(child, profile),
    }
}

/// The parent's whole life.
fn reap(child: Pid, profile: Profile) -> ! {
    // Nothing of the worker's: stdin (the control channel), stdout and every
    // other fd go; stderr stays for a last word.
    let _ = nix::unistd::close(0);
    let _ = nix::unistd::close(1);
    // SAFETY: closes fds only; none is in use by this single thread again.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if privileges::drop_all().is_err() || seccomp::install_reaper().is_err() {
        let _ = kill(child, Signal::SIGKILL);
        std::process::exit(1);
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                if let Some(sig) = mirrored_signal(code) {
                    die_of(sig);
                }
                std::process::exit(code);
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                if let Some(why) = last_word(profile, sig) {
                    eprintln!("{why}");
                }
                match mirrored_signal(exit_code_for(sig as i32)) {
                    Some(sig) => die_of(sig),
                    None => std::process::exit(exit_code_for(sig as i32)),
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            _ => std::process::exit(1),
        }
    }
}

/// What the reaper says when its child died of `sig`: only for a render
/// server's SIGSYS, which nobody else reports (it has no SIGSYS handler of
/// ours; a worker reports its own through its handler).
fn last_word(profile: Profile, sig: Signal) -> Option<&'static str> {
    (profile == Profile::RenderServer && sig == Signal::SIGSYS).then_some(
        "render server killed by SIGSYS: a system call outside \
         policies/seccomp/render-server.json (the kernel's audit log, dmesg, names it)",
    )
}

fn die_of(sig: Signal) -> ! {
    // SAFETY: SIG_DFL installs no handler code.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    let _ = kill(getpid(), sig);
    std::process::exit(exit_code_for(sig as i32));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_servers_sigsys_is_told() {
        let said = last_word(Profile::RenderServer, Signal::SIGSYS).unwrap();
        assert!(said.contains("render-server.json"), "{said}");
        assert_eq!(last_word(Profile::RenderServer, Signal::SIGKILL), None);
        assert_eq!(last_word(Profile::Llvmpipe, Signal::SIGSYS), None);
    }

    #[test]
    fn ending_signals_are_mirrored() {
        for sig in [
            Signal::SIGSYS,
            Signal::SIGSEGV,
            Signal::SIGABRT,
            Signal::SIGKILL,
            Signal::SIGTERM,
            Signal::SIGBUS,
            Signal::SIGPIPE,
            Signal::SIGXCPU,
        ] {
            assert_eq!(mirrored_signal(exit_code_for(sig as i32)), Some(sig));
        }
    }

    #[test]
    fn stop_continue_and_ignored_signals_are_not_mirrored() {
        for sig in [
            Signal::SIGSTOP,
            Signal::SIGTSTP,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
            Signal::SIGCONT,
            Signal::SIGCHLD,
            Signal::SIGWINCH,
            Signal::SIGURG,
        ] {
            assert_eq!(mirrored_signal(exit_code_for(sig as i32)), None, "{sig}");
        }
        assert_eq!(mirrored_signal(147), None, "128 + SIGSTOP");
    }

    #[test]
    fn other_codes_are_plain_exits() {
        for code in [0, 1, 4, 127, 128, 128 + 32, 128 + 64, 255, -1, i32::MIN] {
            assert_eq!(mirrored_signal(code), None, "{code}");
        }
    }
}
