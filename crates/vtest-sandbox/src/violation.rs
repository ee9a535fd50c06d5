//! The SIGSYS handler: a call outside the seccomp allowlist is reported in
//! one fixed record, sent with one `send`, and the process then dies of
//! SIGSYS (never only the offending thread).
//!
//! The record is the caller's, given in advance as a template and the place
//! of the syscall number in it ([`ViolationReport`]); the sandbox knows
//! nothing of who reads it. The worker passes its control channel and the
//! channel's own `SeccompViolation` packet, so the broker reads the report
//! as any other worker message. Why a template: the process dies in the
//! handler, so nothing can forward a record of the sandbox's own after it;
//! and an encoder callback would run code in the handler that this crate
//! cannot hold to async-signal safety. The handler only copies the record,
//! writes the number into the copy and sends it: no allocation, no lock.

use std::os::fd::RawFd;
use std::sync::OnceLock;

use crate::{pid, SandboxError};

/// Longest record the handler sends (it lives on the handler's stack).
pub const MAX_RECORD: usize = 32;

/// Where and what the SIGSYS handler reports: `record` with the syscall
/// number written over `record[syscall_at..syscall_at + 8]` as a
/// little-endian `i64`, sent on `fd` (a `SOCK_SEQPACKET` or datagram
/// socket: one record, one packet).
#[derive(Debug, Clone)]
pub struct ViolationReport {
    fd: RawFd,
    record: [u8; MAX_RECORD],
    len: usize,
    syscall_at: usize,
}

impl ViolationReport {
    /// The report of `template` with the number at `syscall_at`, on `fd`.
    pub fn new(
        fd: RawFd,
        template: &[u8],
        syscall_at: usize,
    ) -> Result<ViolationReport, SandboxError> {
        let fits = template.len() <= MAX_RECORD
            && syscall_at
                .checked_add(NR_BYTES)
                .is_some_and(|end| end <= template.len());
        if !fits {
            return Err(SandboxError::ViolationRecord {
                len: template.len(),
                syscall_at,
            });
        }
        let mut record = [0; MAX_RECORD];
        record[..template.len()].copy_from_slice(template);
        Ok(ViolationReport {
            fd,
            record,
            len: template.len(),
            syscall_at,
        })
    }

    /// The socket the report goes to.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The record for syscall `nr` and its length (async-signal-safe).
    pub fn record(&self, nr: i64) -> ([u8; MAX_RECORD], usize) {
        let mut record = self.record;
        record[self.syscall_at..self.syscall_at + NR_BYTES].copy_from_slice(&nr.to_le_bytes());
        (record, self.len)
    }
}

const NR_BYTES: usize = std::mem::size_of::<i64>();

/// What the handler reports; set once, before any filter is installed.
static REPORT: OnceLock<ViolationReport> = OnceLock::new();

/// Installs the SIGSYS handler, which sends `report` (if any) before the
/// process dies. A worker confines itself once: the first report given in
/// a process is the one sent.
pub fn install_reporter(report: Option<&ViolationReport>) -> Result<(), SandboxError> {
    if let Some(report) = report {
        let _ = REPORT.set(report.clone());
    }
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::SigAction(on_sigsys),
        nix::sys::signal::SaFlags::SA_SIGINFO,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: `on_sigsys` only makes async-signal-safe calls (send, signal,
    // exit_group, tgkill) on a record it copies to its stack.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGSYS, &action) }
        .map_err(SandboxError::SignalHandler)?;
    Ok(())
}

/// Offset of `si_syscall` in `siginfo_t` for SIGSYS on 64-bit Linux:
/// signo, errno, code (3 × i32) + padding, then `void *call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // for SIGSYS the si_syscall int lives at this offset.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    // OnceLock::get is one atomic load: no lock, safe in a handler.
    if let Some(report) = REPORT.get() {
        let (record, len) = report.record(i64::from(nr));
        // SAFETY: a plain send of our stack buffer; failures are ignored.
        unsafe { libc::send(report.fd, record.as_ptr().cast(), len, libc::MSG_NOSIGNAL) };
    }
    // SAFETY: async-signal-safe calls with valid arguments.
    unsafe {
        if libc::getpid() == 1 {
            // PID 1 of its namespace ignores its own signals: exit with the
            // code the reaper turns back into SIGSYS.
            libc::syscall(libc::SYS_exit_group, pid::exit_code_for(libc::SIGSYS));
        }
        // Without a PID namespace (the host refused it): die of SIGSYS.
        // Restore the default action, then raise SIGSYS on itself. The
        // filters allow tgkill only on tgid 1 (and `no-tgkill` none), so
        // this tgkill is denied in turn, and the kernel's SIGSYS for it,
        // blocked here, is forced with the default action: the process dies
        // of SIGSYS either way, after the report above.
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_goes_where_the_template_says() {
        let template = *b"HEAD\0\0\0\0\0\0\0\0TAIL";
        let report = ViolationReport::new(5, &template, 4).unwrap();
        for nr in [0i64, 41, 59, 435, -1, i64::MIN, i64::MAX] {
            let (record, len) = report.record(nr);
            assert_eq!(len, template.len());
            assert_eq!(&record[..4], b"HEAD");
            assert_eq!(record[4..12], nr.to_le_bytes());
            assert_eq!(&record[12..len], b"TAIL");
        }
    }

    #[test]
    fn a_template_without_room_for_the_number_is_refused() {
        for (len, at) in [(7, 0), (8, 1), (MAX_RECORD + 1, 0), (16, usize::MAX)] {
            let template = vec![0; len];
            assert!(
                ViolationReport::new(3, &template, at).is_err(),
                "{len} bytes, number at {at}"
            );
        }
        assert!(ViolationReport::new(3, &[0; MAX_RECORD], MAX_RECORD - 8).is_ok());
    }
}
