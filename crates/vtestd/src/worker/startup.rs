//! Where a worker's start-up goes: wall and CPU time per phase (exec, the
//! sandbox, renderer initialisation, the warm-up context, the steady
//! filter, the check context), logged at debug level when it reports Ready.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use tracing::debug;

/// CPU time of this process so far (every thread; `clock_gettime`, which
/// the sandbox allows). After the sandbox's fork (into its PID namespace)
/// it counts the child only: [`Phases::end`] adds what the parent had used
/// before the fork.
pub fn cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// Phases measured so far.
pub struct Phases {
    began: Instant,
    last: (Instant, Duration),
    /// The process clock's reading before the sandbox forked, once seen.
    forked: bool,
    done: Vec<(&'static str, Duration, Duration)>,
}

impl Phases {
    /// Starts the count; the CPU used so far (the broker's fork, exec, the
    /// dynamic loader, Rust's start-up) is the phase `exec`, its wall time
    /// unknown here (0).
    pub fn start() -> Phases {
        let now = Instant::now();
        let cpu_now = cpu();
        Phases {
            began: now,
            last: (now, cpu_now),
            forked: false,
            done: vec![("exec", Duration::ZERO, cpu_now)],
        }
    }

    /// The phase `name` ends now.
    pub fn end(&mut self, name: &'static str) {
        let (now, cpu_now) = (Instant::now(), cpu());
        let (then, cpu_then) = self.last;
        let used = match vtest_sandbox::cpu_before_fork() {
            // The fork happened in this phase: the parent's share up to the
            // fork, then the child's clock from zero.
            Some(before) if !self.forked => {
                self.forked = true;
                before.saturating_sub(cpu_then) + cpu_now
            }
            _ => cpu_now.saturating_sub(cpu_then),
        };
        self.done.push((name, now - then, used));
        self.last = (now, cpu_now);
    }

    /// CPU time of every phase together.
    pub fn cpu_total(&self) -> Duration {
        self.done.iter().map(|(_, _, cpu)| *cpu).sum()
    }

    /// `name wall/cpu ms` for every phase, then the total wall time.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (name, wall, cpu) in &self.done {
            let _ = write!(
                s,
                "{name} {:.1}/{:.1} ms, ",
                wall.as_secs_f64() * 1e3,
                cpu.as_secs_f64() * 1e3
            );
        }
        let _ = write!(
            s,
            "total {:.1}/{:.1} ms (wall/CPU)",
            self.began.elapsed().as_secs_f64() * 1e3,
            self.cpu_total().as_secs_f64() * 1e3
        );
        s
    }

    pub fn log(&self) {
        debug!(phases = %self.summary(), "start-up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_order_with_their_times() {
        let mut p = Phases::start();
        std::thread::sleep(Duration::from_millis(5));
        p.end("sleep");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        p.end("spin");
        assert_eq!(p.done.len(), 3);
        assert!(p.done[1].1 >= Duration::from_millis(5));
        assert!(p.cpu_total() >= p.done[2].2);
        let s = p.summary();
        assert!(s.starts_with("exec 0.0/"), "{s}");
        assert!(s.contains(", sleep "), "{s}");
        assert!(s.contains(", spin "), "{s}");
        assert!(s.ends_with("(wall/CPU)"), "{s}");
    }
}
