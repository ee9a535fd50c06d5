//! Refused connections are logged once per streak: the first with the
//! peer's identity, the rest as one count when the streak ends (a second
//! without one) or every [`REFUSAL_SUMMARY`] while it lasts, so that a
//! flood of refused connections cannot bury other lines under the
//! journal's rate limit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const REFUSAL_STREAK_GAP: Duration = Duration::from_secs(1);
const REFUSAL_SUMMARY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct Refusals {
    /// reason → (started, last refusal, refusals not yet logged).
    streaks: BTreeMap<&'static str, (Instant, Instant, u64)>,
}

impl Refusals {
    /// Records one refusal; true when it starts a streak (log it in full).
    pub(super) fn first(&mut self, reason: &'static str, now: Instant) -> bool {
        match self.streaks.get_mut(reason) {
            Some((_, last, n)) => {
                *last = now;
                *n += 1;
                false
            }
            None => {
                self.streaks.insert(reason, (now, now, 0));
                true
            }
        }
    }

    /// Streaks that ended or ran long: (reason, unlogged count, seconds).
    pub(super) fn ended(&mut self, now: Instant) -> Vec<(&'static str, u64, f64)> {
        let mut out = Vec::new();
        self.streaks.retain(|reason, (start, last, n)| {
            let over = now.duration_since(*last) >= REFUSAL_STREAK_GAP;
            let long = now.duration_since(*start) >= REFUSAL_SUMMARY;
            if (over || long) && *n > 0 {
                out.push((*reason, *n, now.duration_since(*start).as_secs_f64()));
                *n = 0;
                *start = now;
            }
            !over
        });
        out
    }

    /// Whether a streak is open (its end needs a timer).
    pub(super) fn any(&self) -> bool {
        !self.streaks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_streak_with_a_count() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert!(r.first("peer not allowed", t0));
        for i in 1..=99 {
            assert!(!r.first("peer not allowed", t0 + Duration::from_millis(i)));
        }
        // Another reason has its own streak.
        assert!(r.first("max_clients reached", t0));
        assert!(r.ended(t0 + Duration::from_millis(500)).is_empty());
        let ended = r.ended(t0 + Duration::from_millis(1200));
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!((ended[0].0, ended[0].1), ("peer not allowed", 99));
        // Both streaks are over: the next refusal is logged in full again.
        assert!(r.first("peer not allowed", t0 + Duration::from_secs(2)));
        assert!(r.first("max_clients reached", t0 + Duration::from_secs(2)));
        // A long streak is summarised every REFUSAL_SUMMARY while it lasts.
        let mut t = t0 + Duration::from_secs(2);
        let mut summaries = 0;
        for _ in 0..300 {
            t += Duration::from_millis(100);
            r.first("peer not allowed", t);
            summaries += r.ended(t).len();
        }
        assert_eq!(summaries, 3, "30 s of refusals: one summary per 10 s");
        assert!(r.any());
        r.ended(t + Duration::from_secs(2));
        assert!(!r.any(), "streaks end a second after their last refusal");
    }
}
