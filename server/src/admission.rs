//! Admission control: work the server would take on beyond what it can finish is refused up
//! front with `Backoff`, never queued until it times out.
//!
//! Traits uploads are the expensive requests (about ten check-ins' worth of CPU each), and a
//! restart makes every envoy's traits unknown at once; [`UploadBudget`] meters the asks.

use std::sync::Mutex;

use crate::check_in::envoy_point;

/// A token bucket of traits uploads: `rate` a second, as many in a burst.
#[derive(Debug)]
pub struct UploadBudget {
    rate_per_s: u32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl UploadBudget {
    /// A full bucket of `rate_per_s` uploads a second.
    pub fn new(rate_per_s: u32) -> Self {
        Self { rate_per_s, bucket: Mutex::new(Bucket { tokens: f64::from(rate_per_s), at_ms: i64::MIN }) }
    }

    /// Takes one upload if the budget allows it at `now_ms`. Otherwise: seconds for this envoy
    /// to wait, a fixed point (per envoy) of a window long enough for the `waiting` envoys
    /// (whose traits are not held yet) at the budget's rate, capped at `interval_s`: the window
    /// shrinks as the backlog drains.
    pub fn try_take(&self, now_ms: i64, envoy_id: &str, waiting: usize, interval_s: u32) -> Result<(), u32> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let rate = f64::from(self.rate_per_s);
        // A clock going backwards adds nothing.
        let elapsed_ms = now_ms.saturating_sub(bucket.at_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed_ms * rate / 1000.0).min(rate);
        bucket.at_ms = bucket.at_ms.max(now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let window_s = (waiting as u64 / u64::from(self.rate_per_s.max(1))).clamp(1, u64::from(interval_s.max(1)));
        Err(1 + envoy_point(envoy_id, window_s) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_budget_is_told_to_back_off_and_the_budget_refills() {
        let budget = UploadBudget::new(10);
        let now = 1_000_000;
        let taken = (0..25).filter(|i| budget.try_take(now, &format!("e-{i}"), 25, 60).is_ok()).count();
        assert_eq!(taken, 10, "a burst of at most the rate");
        assert!(budget.try_take(now + 50, "e-x", 25, 60).is_err(), "half a token is not one");
        assert!(budget.try_take(now + 100, "e-x", 25, 60).is_ok(), "one token after a tenth of a second");
        assert_eq!((0..20).filter(|i| budget.try_take(now + 1_100, &format!("f-{i}"), 25, 60).is_ok()).count(), 10);
        // A clock going backwards never adds tokens.
        assert!(budget.try_take(now, "e-y", 25, 60).is_err());
    }

    #[test]
    fn backoffs_spread_over_the_time_the_fleet_needs_at_most_one_interval() {
        let budget = UploadBudget::new(1);
        budget.try_take(0, "first", 1, 60).unwrap();
        let waits: Vec<u32> =
            (0..1_000).map(|i| budget.try_take(0, &format!("e-{i}"), 50_000, 60).unwrap_err()).collect();
        assert!(waits.iter().all(|w| (1..=60).contains(w)), "{waits:?}");
        assert!(waits.iter().any(|w| *w > 50) && waits.iter().any(|w| *w < 10), "spread over the interval");
        // A small fleet at a high rate comes back after a second or two.
        let fast = UploadBudget::new(100);
        for i in 0..100 {
            fast.try_take(0, &format!("g-{i}"), 10, 60).unwrap();
        }
        assert!(fast.try_take(0, "late", 10, 60).unwrap_err() <= 2);
    }
}
