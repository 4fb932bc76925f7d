//! Rate limits: an exact GCRA limiter (governor) whose rate can change at
//! run time, on tokio's clock so that tests with paused time can drive it.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// governor's clock, read from tokio's (so `tokio::time::pause` governs it too).
#[derive(Clone, Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A rate gate: `acquire` returns when one more message may start.
///
/// `rate = None` means unlimited. The rate can be changed while tasks wait;
/// they pick up the new limiter on their next check.
pub struct RateGate {
    clock: TokioClock,
    /// GCRA's burst (`burst + 1`); changed by [`RateGate::set_burst`].
    burst: std::sync::atomic::AtomicU32,
    current: RwLock<(Option<f64>, Option<Arc<Limiter>>)>,
}

/// Takes every slot `limiter` has free right now, up to `cap`, and says
/// how many that was (GCRA refuses a request larger than what is free
/// without taking anything, so the first size that passes is the count).
fn take_free(limiter: &Limiter, cap: u32) -> u32 {
    (1..=cap)
        .rev()
        .find(|n| NonZeroU32::new(*n).is_some_and(|nz| matches!(limiter.check_n(nz), Ok(Ok(())))))
        .unwrap_or(0)
}

impl RateGate {
    /// A gate at `rate` messages per second; `burst` extra messages may go
    /// back to back after idle time.
    ///
    /// GCRA with a tolerance of `burst` periods: a waiter that wakes up late
    /// (timers always do, by about a millisecond) does not push the schedule
    /// back, so the long-run rate is exact, and any one-second window holds at
    /// most `rate + burst` messages.
    pub fn new(rate: Option<f64>, burst: u32) -> RateGate {
        let gate = RateGate {
            clock: TokioClock::default(),
            burst: std::sync::atomic::AtomicU32::new(burst.max(1).saturating_add(1)),
            current: RwLock::new((None, None)),
        };
        gate.set_rate(rate);
        gate
    }

    /// The rate in force.
    pub fn rate(&self) -> Option<f64> {
        self.current.read().map(|g| g.0).unwrap_or(None)
    }

    /// Changes the rate (messages per second; `None` = unlimited).
    pub fn set_rate(&self, rate: Option<f64>) {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        let limiter = rate.and_then(|r| {
            let period = Duration::from_secs_f64(1.0 / r);
            Quota::with_period(period).map(|q| {
                let burst = self.burst.load(std::sync::atomic::Ordering::Relaxed);
                Arc::new(RateLimiter::direct_with_clock(
                    q.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)),
                    self.clock.clone(),
                ))
            })
        });
        if let Ok(mut g) = self.current.write() {
            // A new rate never hands out a fresh burst: the new limiter
            // starts with no more slots free than the old one had (GCRA's
            // state cannot be copied, so the old one's free slots are taken
            // and as many left free in the new one). Without this, every
            // change (a worker's share when another joins, AIMD's steps)
            // would allow `burst` more at once and a one-second window
            // could exceed rate + burst.
            if let (Some(old), Some(new)) = (&g.1, &limiter) {
                let cap = self.burst.load(std::sync::atomic::Ordering::Relaxed);
                let free = take_free(old, cap);
                if let Some(n) = NonZeroU32::new(cap.saturating_sub(free)) {
                    let _ = new.check_n(n);
                }
            }
            *g = (rate, limiter);
        }
    }

    /// Changes the burst (at least 1); applies from the next
    /// [`RateGate::set_rate`]. Several workers sharing a campaign share its
    /// burst too, so that their sum stays within rate + burst.
    pub fn set_burst(&self, burst: u32) {
        self.burst.store(
            burst.max(1).saturating_add(1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Takes a slot if one is free right now, without waiting.
    pub fn try_acquire(&self) -> bool {
        let limiter = match self.current.read() {
            Ok(g) => g.1.clone(),
            Err(_) => None,
        };
        limiter.is_none_or(|l| l.check().is_ok())
    }

    /// Takes a slot if one is free right now; otherwise says how long until
    /// the next one is (the dispatcher sleeps exactly that long, no polling).
    pub fn try_acquire_or_wait(&self) -> Result<(), Duration> {
        let limiter = match self.current.read() {
            Ok(g) => g.1.clone(),
            Err(_) => None,
        };
        match limiter {
            None => Ok(()),
            Some(l) => l
                .check()
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Waits until one message may start.
    pub async fn acquire(&self) {
        loop {
            let limiter = match self.current.read() {
                Ok(g) => g.1.clone(),
                Err(_) => None,
            };
            let Some(limiter) = limiter else {
                return;
            };
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    // Re-check at least every 250 ms so that a rate change applies promptly.
                    tokio::time::sleep(wait.min(Duration::from_millis(250))).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn exact_spacing_at_ten_per_second() {
        let gate = RateGate::new(Some(10.0), 1);
        let start = tokio::time::Instant::now();
        for _ in 0..22 {
            gate.acquire().await;
        }
        // One burst message, then 20 more 100 ms apart: 2 s for 22 messages.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_waiter_does_not_shift_the_schedule() {
        let gate = RateGate::new(Some(10.0), 1);
        let start = tokio::time::Instant::now();
        gate.acquire().await;
        gate.acquire().await;
        // This caller comes 130 ms in, later than its 100 ms slot...
        tokio::time::sleep(Duration::from_millis(130)).await;
        gate.acquire().await;
        // ...and the next slot is still on the 100 ms grid.
        gate.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn one_second_holds_at_most_rate_plus_burst() {
        let gate = RateGate::new(Some(20.0), 1);
        let start = tokio::time::Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(1) {
            gate.acquire().await;
            if start.elapsed() < Duration::from_secs(1) {
                n += 1;
            }
        }
        assert_eq!(n, 21);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_change_applies() {
        let gate = RateGate::new(Some(1.0), 1);
        gate.acquire().await;
        gate.set_rate(Some(100.0));
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            gate.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(gate.rate(), Some(100.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_hands_out_no_fresh_burst() {
        // Several workers' shares change while they send: a window of one
        // second across a change still holds at most rate + burst.
        let gate = RateGate::new(Some(10.0), 5);
        let start = tokio::time::Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(500) {
            gate.acquire().await;
            n += 1;
        }
        // The burst is spent; halving the rate (another worker joined)
        // and doubling it back must not free it again.
        gate.set_rate(Some(5.0));
        gate.set_rate(Some(10.0));
        while start.elapsed() < Duration::from_secs(1) {
            gate.acquire().await;
            if start.elapsed() < Duration::from_secs(1) {
                n += 1;
            }
        }
        assert!(n <= 10 + 6, "{n} in the first second for rate 10 + burst 6");
        // Slots left free by an idle gate stay free across a change.
        let idle = RateGate::new(Some(10.0), 3);
        idle.set_rate(Some(20.0));
        assert!(
            (0..4).all(|_| idle.try_acquire()),
            "the idle gate's burst kept"
        );
        assert!(!idle.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let gate = RateGate::new(None, 1);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            gate.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
