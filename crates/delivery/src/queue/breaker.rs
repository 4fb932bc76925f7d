//! The circuit breaker: when every connection keeps failing, stop taking
//! recipients, probe the server with backoff, and give up after `max_outage`.
//! Recipients are never marked failed because the server is down.

use std::time::Duration;

use tokio::time::Instant;

/// What a failure did to the breaker.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Trip {
    /// Still closed (a transient blip).
    Closed,
    /// Just opened: the outage starts now.
    Opened,
    /// Open already.
    Open,
    /// Open for longer than `max_outage`: give up the run.
    GiveUp,
}

/// Shared by all workers, behind a mutex.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    max_outage: Duration,
    consecutive: u32,
    since: Option<Instant>,
    open: bool,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures with no success between.
    pub fn new(threshold: u32, max_outage: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            max_outage,
            consecutive: 0,
            since: None,
            open: false,
        }
    }

    /// Whether the breaker is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// A connection or session failure.
    pub fn failure(&mut self, now: Instant) -> Trip {
        self.consecutive += 1;
        let since = *self.since.get_or_insert(now);
        if self.open {
            if now.duration_since(since) >= self.max_outage {
                return Trip::GiveUp;
            }
            return Trip::Open;
        }
        if self.consecutive >= self.threshold {
            self.open = true;
            if now.duration_since(since) >= self.max_outage {
                return Trip::GiveUp;
            }
            return Trip::Opened;
        }
        Trip::Closed
    }

    /// A success anywhere closes the breaker. Returns true if it was open.
    pub fn success(&mut self) -> bool {
        let was = self.open;
        self.consecutive = 0;
        self.since = None;
        self.open = false;
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_gives_up_after_max_outage() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(60));
        assert_eq!(b.failure(t0), Trip::Closed);
        assert_eq!(b.failure(t0), Trip::Closed);
        assert_eq!(b.failure(t0 + Duration::from_secs(1)), Trip::Opened);
        assert_eq!(b.failure(t0 + Duration::from_secs(30)), Trip::Open);
        assert_eq!(b.failure(t0 + Duration::from_secs(60)), Trip::GiveUp);
    }

    #[test]
    fn success_resets() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(60));
        b.failure(t0);
        assert_eq!(b.failure(t0), Trip::Opened);
        assert!(b.success());
        assert!(!b.is_open());
        assert_eq!(b.failure(t0 + Duration::from_secs(100)), Trip::Closed);
    }
}
