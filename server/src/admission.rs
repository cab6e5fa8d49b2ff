//! Admission control: work the server would take on beyond what it can finish is refused up
//! front with `Backoff`, never queued until it times out.
//!
//! Traits uploads are the expensive requests (about ten check-ins' worth of CPU each), and a
//! restart makes every envoy's traits unknown at once; [`UploadBudget`] meters the asks.
//!
//! [`QueueDelay`] caps how long check-ins wait. A check-in that arrives while the server is
//! behind waits where no counter sees it: in the socket's buffer until its connection's task is
//! polled, then in the run queue. Counting calls in flight at the service would see almost
//! none of that (tokio runs a task it just spawned next, so a call is answered right after it
//! is accepted). What does see it is time: a probe task sleeps a few milliseconds at a time in
//! the same run queues, and how late it wakes is how long any task waits there. Past the cap,
//! every check-in (a call or a session message) is answered `Backoff` before any other work,
//! signature included, so shedding costs next to nothing and the backlog drains instead of
//! growing until envoys time out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        Err(retry_after_s(envoy_id, window_s))
    }
}

/// Seconds an envoy told to back off waits: its own point of a `window_s` window, at least one,
/// so the envoys shed together come back spread over it.
pub fn retry_after_s(envoy_id: &str, window_s: u64) -> u32 {
    1 + envoy_point(envoy_id, window_s) as u32
}

/// How far behind the server is: the overshoot of a probe task's timer, which waits in the same
/// run queues as every connection. See the module docs.
#[derive(Debug)]
pub struct QueueDelay {
    lag_us: AtomicU64,
    max_us: u64,
}

impl QueueDelay {
    /// Check-ins are shed while the lag is above `max`.
    pub fn new(max: Duration) -> Arc<Self> {
        Arc::new(Self { lag_us: AtomicU64::new(0), max_us: max.as_micros() as u64 })
    }

    /// The lag the probe last measured.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    /// The lag beyond which check-ins are shed.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// Whether check-ins wait longer than allowed.
    pub fn over_cap(&self) -> bool {
        self.lag_us.load(Ordering::Relaxed) > self.max_us
    }

    /// Records a lag measured by [`Self::probe`] (or by a test).
    pub fn record(&self, lag: Duration) {
        self.lag_us.store(lag.as_micros() as u64, Ordering::Relaxed);
    }

    /// Measures the lag every [`PROBE_PERIOD`], for as long as the server runs.
    pub async fn probe(self: Arc<Self>) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(PROBE_PERIOD).await;
            let now = Instant::now();
            self.record(now.duration_since(last).saturating_sub(PROBE_PERIOD));
            last = now;
        }
    }
}

/// Sessions and watches open, against a cap: each holds a connection (~64 KiB of server
/// memory and a file descriptor) for as long as the envoy stays. Past the cap a new one is
/// served its first check-in and then closed with `RESOURCE_EXHAUSTED`, and the envoy checks
/// in by calls on a fresh connection each time (polling) until a place frees up.
#[derive(Debug)]
pub struct Held {
    count: AtomicUsize,
    max: usize,
}

impl Held {
    /// At most `max` held at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { count: AtomicUsize::new(0), max })
    }

    /// Counts one more until the guard drops; says whether it fits under the cap.
    pub fn enter(self: &Arc<Self>) -> (HeldGuard, bool) {
        let before = self.count.fetch_add(1, Ordering::Relaxed);
        (HeldGuard(self.clone()), before < self.max)
    }

    /// Held now (those past the cap included, until they close).
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// One session or watch counted by [`Held`].
#[derive(Debug)]
pub struct HeldGuard(Arc<Held>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often [`QueueDelay::probe`] measures: often enough that shedding starts within a few
/// milliseconds of a backlog forming, rarely enough to cost nothing (200 wake-ups a second).
pub const PROBE_PERIOD: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_counts_until_the_guard_drops_and_says_when_past_the_cap() {
        let held = Held::new(2);
        let (a, fits_a) = held.enter();
        let (b, fits_b) = held.enter();
        let (c, fits_c) = held.enter();
        assert_eq!((fits_a, fits_b, fits_c), (true, true, false));
        assert_eq!(held.current(), 3);
        drop((a, c));
        assert_eq!(held.current(), 1);
        assert!(held.enter().1, "a place freed up");
        drop(b);
    }

    #[tokio::test]
    async fn the_probe_measures_how_late_its_timer_fires() {
        let delay = QueueDelay::new(Duration::from_millis(20));
        let probe = tokio::spawn(delay.clone().probe());
        tokio::time::sleep(PROBE_PERIOD * 2).await;
        // Hold the runtime's only thread for 60 ms, as a backlog of work would: the probe's
        // next wake-up is at least 55 ms late.
        std::thread::sleep(Duration::from_millis(60));
        let mut seen = Duration::ZERO;
        for _ in 0..1_000 {
            // Each yield lets the runtime fire due timers, the probe's among them.
            tokio::task::yield_now().await;
            seen = seen.max(delay.lag());
            if delay.over_cap() {
                break;
            }
        }
        probe.abort();
        assert!(seen >= Duration::from_millis(40), "{seen:?}");
        delay.record(Duration::from_millis(1));
        assert!(!delay.over_cap(), "a later measure on time ends the shedding");
    }

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
