//! Where a worker's start-up goes: wall and CPU time per phase (sandbox,
//! renderer initialisation, the warm-up context, the steady filter, the
//! check context), logged at debug level when it reports Ready.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use tracing::debug;

/// CPU time of this process so far (every thread; `clock_gettime`, which
/// the sandbox allows). After the sandbox's fork (into its PID namespace)
/// it counts the child only, so the phase that forks reads low rather than
/// negative.
fn cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// Phases measured so far.
pub struct Phases {
    began: Instant,
    last: (Instant, Duration),
    done: Vec<(&'static str, Duration, Duration)>,
}

impl Phases {
    pub fn start() -> Phases {
        let now = Instant::now();
        Phases {
            began: now,
            last: (now, cpu()),
            done: Vec::new(),
        }
    }

    /// The phase `name` ends now.
    pub fn end(&mut self, name: &'static str) {
        let (now, cpu_now) = (Instant::now(), cpu());
        let (then, cpu_then) = self.last;
        self.done
            .push((name, now - then, cpu_now.saturating_sub(cpu_then)));
        self.last = (now, cpu_now);
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
            "total {:.1} ms (wall/CPU)",
            self.began.elapsed().as_secs_f64() * 1e3
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
        assert_eq!(p.done.len(), 2);
        assert!(p.done[0].1 >= Duration::from_millis(5));
        let s = p.summary();
        assert!(s.starts_with("sleep "), "{s}");
        assert!(s.contains(", spin "), "{s}");
        assert!(s.ends_with("(wall/CPU)"), "{s}");
    }
}
