//! How many workers a listener's pool keeps started: enough to cover the
//! clients that arrive while replacements start (the arrival rate of the
//! last seconds times the start-up time), on top of the configured floor and
//! below its cap.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Arrivals older than this no longer count.
const WINDOW: Duration = Duration::from_secs(10);
/// Weight of the newest start-up time in the running average.
const SMOOTHING: f64 = 0.25;
/// Arrivals remembered at most (a flood cannot grow the broker).
const MAX_ARRIVALS: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Demand {
    arrivals: VecDeque<Instant>,
    /// Running average of a worker's start-up (spawn to Ready), seconds.
    startup_secs: Option<f64>,
}

impl Demand {
    /// A client arrived at `now`.
    pub(super) fn arrived(&mut self, now: Instant) {
        self.forget(now);
        if self.arrivals.len() == MAX_ARRIVALS {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(now);
    }

    /// A worker of this listener took `took` from spawn to Ready.
    pub(super) fn started(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        self.startup_secs = Some(match self.startup_secs {
            Some(avg) => avg + SMOOTHING * (secs - avg),
            None => secs,
        });
    }

    /// Whether no client arrived for a whole window (the pool can shrink
    /// back to its floor).
    pub(super) fn quiet(&self, now: Instant) -> bool {
        self.arrivals
            .back()
            .is_none_or(|&t| now.saturating_duration_since(t) > WINDOW)
    }

    /// The average start-up time so far.
    pub(super) fn startup(&self) -> Option<Duration> {
        self.startup_secs.map(Duration::from_secs_f64)
    }

    /// Clients per second over the window.
    pub(super) fn rate(&self, now: Instant) -> f64 {
        let recent = self
            .arrivals
            .iter()
            .rev()
            .take_while(|&&t| now.saturating_duration_since(t) <= WINDOW)
            .count();
        recent as f64 / WINDOW.as_secs_f64()
    }

    /// Workers to keep started (ready or starting): `floor`, plus the
    /// clients expected during one start-up (rounded: an occasional client
    /// is what the floor is for), at most `cap`.
    pub(super) fn target(&self, now: Instant, floor: u32, cap: u32) -> u32 {
        let during_startup = self.rate(now) * self.startup_secs.unwrap_or(0.0);
        let extra = during_startup.round().min(f64::from(u32::MAX)) as u32;
        floor.saturating_add(extra).min(cap.max(floor))
    }

    fn forget(&mut self, now: Instant) {
        while let Some(&t) = self.arrivals.front() {
            if now.saturating_duration_since(t) <= WINDOW {
                break;
            }
            self.arrivals.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_listener_keeps_its_floor() {
        let mut d = Demand::default();
        let now = Instant::now();
        assert_eq!(d.target(now, 2, 8), 2);
        d.started(Duration::from_millis(100));
        assert_eq!(d.target(now, 2, 8), 2);
        assert_eq!(d.target(now, 0, 8), 0);
        // An occasional client is what the floor covers.
        d.arrived(now);
        assert_eq!(d.target(now, 2, 8), 2);
    }

    #[test]
    fn the_pool_covers_the_clients_that_arrive_during_a_start_up() {
        let mut d = Demand::default();
        let t0 = Instant::now();
        d.started(Duration::from_millis(500));
        // 40 clients in 4 s: 4 per second over the 10 s window.
        for i in 0..40 {
            d.arrived(t0 + Duration::from_millis(100 * i));
        }
        let now = t0 + Duration::from_secs(4);
        assert!((d.rate(now) - 4.0).abs() < 1e-9);
        // 4/s × 0.5 s = 2 more than the floor.
        assert_eq!(d.target(now, 2, 8), 4);
        // Never past the cap, never below the floor.
        assert_eq!(d.target(now, 2, 3), 3);
        assert_eq!(d.target(now, 5, 3), 5);
        // Ten seconds later the burst is forgotten.
        assert!(!d.quiet(now));
        let later = now + Duration::from_secs(11);
        assert_eq!(d.target(later, 2, 8), 2);
        assert!(d.quiet(later));
    }

    #[test]
    fn the_start_up_time_is_a_running_average() {
        let mut d = Demand::default();
        d.started(Duration::from_millis(100));
        d.started(Duration::from_millis(500));
        let avg = d.startup().unwrap().as_secs_f64();
        assert!((avg - 0.2).abs() < 1e-6, "{avg}");
    }

    #[test]
    fn a_flood_of_arrivals_is_bounded() {
        let mut d = Demand::default();
        let now = Instant::now();
        for _ in 0..(MAX_ARRIVALS * 2) {
            d.arrived(now);
        }
        assert_eq!(d.arrivals.len(), MAX_ARRIVALS);
        d.started(Duration::from_secs(3600));
        assert_eq!(d.target(now, 1, 64), 64);
    }
}
