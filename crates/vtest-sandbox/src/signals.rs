//! Signal dispositions of a worker.

use nix::sys::signal::{signal, SigHandler, Signal};

/// Signals that mean "this process is broken".
const FAULTS: [Signal; 4] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
];

/// Makes fault signals kill the process, whatever their source.
///
/// Rust's runtime installs a SIGSEGV/SIGBUS handler to report stack
/// overflows; for a fault that is not a guard-page hit it restores the default
/// and returns, which kills the process only if the faulting instruction runs
/// again. A SIGSEGV sent with `kill` would then be survived. A worker that
/// receives one must die, so the broker sees (and logs) the signal.
pub fn die_on_fault_signals() -> nix::Result<()> {
    for s in FAULTS {
        // SAFETY: SIG_DFL installs no handler code, so no async-signal-safety
        // requirement applies; replacing the runtime's handler only loses its
        // stack-overflow message.
        unsafe { signal(s, SigHandler::SigDfl) }?;
    }
    Ok(())
}
