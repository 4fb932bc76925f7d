//! When to try a deferred recipient again: exponential backoff with full
//! jitter, or an explicit schedule, bounded by attempts and by age.

use std::time::Duration;

use edm_model::{Category, Failure};
use rand::Rng;

use crate::defaults;

/// The retry policy of a campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Throttling does not use them up.
    pub max_attempts: u32,
    /// First backoff step of the computed schedule.
    pub base: Duration,
    /// Longest wait between two attempts.
    pub cap: Duration,
    /// An explicit schedule overriding the computed one (the last step repeats).
    pub schedule: Vec<Duration>,
    /// Give up on a recipient this long after its first attempt.
    pub retry_for: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: defaults::MAX_ATTEMPTS,
            base: defaults::RETRY_BASE,
            cap: defaults::RETRY_CAP,
            schedule: Vec::new(),
            retry_for: defaults::RETRY_FOR,
        }
    }
}

/// What to do with a failed attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Try again after this long; `counts` says whether the attempt is used up.
    Retry {
        /// Wait before the next attempt.
        after: Duration,
        /// False for throttling and quota deferrals, which never use up attempts.
        counts: bool,
    },
    /// Give up: the recipient has failed.
    GiveUp,
}

impl RetryPolicy {
    /// Decides about a failure, given the attempts made so far (this one
    /// included) and how long ago the first attempt was.
    pub fn decide(&self, failure: &Failure, attempts: u32, age: Duration) -> Verdict {
        if failure.permanent {
            return Verdict::GiveUp;
        }
        let counts = !matches!(
            failure.category,
            Category::Throttled | Category::QuotaExceeded
        );
        if age >= self.retry_for || (counts && attempts >= self.max_attempts) {
            return Verdict::GiveUp;
        }
        let mut after = if counts {
            self.backoff(attempts.max(1))
        } else {
            // Throttled: the rate is lowered already; come back soon, spread out.
            jitter(Duration::from_secs(2), Duration::from_secs(5))
        };
        if let Some(asked) = failure.retry_after {
            after = after.max(asked);
        }
        Verdict::Retry { after, counts }
    }

    /// The wait after the `n`th failed attempt (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        if !self.schedule.is_empty() {
            let i = (n as usize - 1).min(self.schedule.len() - 1);
            // An explicit step is honoured, with up to 10% added so retries do not align.
            let step = self.schedule[i];
            return jitter(step, step + step / 10);
        }
        let exp = self
            .base
            .saturating_mul(
                1u32.checked_shl(n.saturating_sub(1).min(20))
                    .unwrap_or(u32::MAX),
            )
            .min(self.cap);
        // Full jitter (uniform in [0, exp]), but never less than a second.
        jitter(Duration::from_secs(1).min(exp), exp)
    }
}

fn jitter(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_millis() as u64;
    low + Duration::from_millis(rand::rng().random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edm_model::Stage;

    fn transient(category: Category) -> Failure {
        let mut f = Failure::local(Stage::RcptTo, category, "x");
        f.permanent = false;
        f
    }

    #[test]
    fn permanent_gives_up_at_once() {
        let f = Failure::local(Stage::RcptTo, Category::RecipientUnknown, "x");
        assert_eq!(
            RetryPolicy::default().decide(&f, 1, Duration::ZERO),
            Verdict::GiveUp
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        let f = transient(Category::OtherTransient);
        assert!(matches!(
            p.decide(&f, 2, Duration::ZERO),
            Verdict::Retry { counts: true, .. }
        ));
        assert_eq!(p.decide(&f, 3, Duration::ZERO), Verdict::GiveUp);
    }

    #[test]
    fn throttling_never_uses_up_attempts_but_expires() {
        let p = RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        };
        let f = transient(Category::Throttled);
        assert!(matches!(
            p.decide(&f, 10, Duration::ZERO),
            Verdict::Retry { counts: false, .. }
        ));
        assert_eq!(p.decide(&f, 10, p.retry_for), Verdict::GiveUp);
    }

    #[test]
    fn backoff_grows_within_cap_with_jitter() {
        let p = RetryPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(60),
            ..Default::default()
        };
        for n in 1..10 {
            let d = p.backoff(n);
            let exp = Duration::from_secs(10 * 2u64.pow(n - 1)).min(Duration::from_secs(60));
            assert!(d <= exp && d >= Duration::from_secs(1), "n={n} d={d:?}");
        }
    }

    #[test]
    fn explicit_schedule_overrides() {
        let p = RetryPolicy {
            schedule: vec![Duration::from_secs(30), Duration::from_secs(120)],
            ..Default::default()
        };
        let d1 = p.backoff(1);
        assert!(d1 >= Duration::from_secs(30) && d1 <= Duration::from_secs(33));
        let d5 = p.backoff(5);
        assert!(d5 >= Duration::from_secs(120) && d5 <= Duration::from_secs(132));
    }

    #[test]
    fn server_asked_delay_is_respected() {
        let mut f = transient(Category::Greylisted);
        f.retry_after = Some(Duration::from_secs(600));
        match RetryPolicy::default().decide(&f, 1, Duration::ZERO) {
            Verdict::Retry { after, .. } => assert!(after >= Duration::from_secs(600)),
            v => panic!("{v:?}"),
        }
    }
}
