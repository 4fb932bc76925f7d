//! Adaptive slow-down (AIMD): a throttling reply halves the effective rate,
//! a quiet period adds back a tenth of the target, never above the target.

use std::time::Duration;

use tokio::time::Instant;

/// Tuning of the adaptive rate.
#[derive(Clone, Debug, PartialEq)]
pub struct AimdSettings {
    /// Multiplier applied on throttling (0.5 halves the rate).
    pub decrease: f64,
    /// Throttling replies within this long after a decrease do not decrease again
    /// (a burst of replies from many connections is one signal, not N).
    pub cooldown: Duration,
    /// Time without throttling before each additive increase.
    pub quiet: Duration,
    /// Lowest effective rate, messages per second.
    pub min_rate: f64,
}

impl Default for AimdSettings {
    fn default() -> Self {
        AimdSettings {
            decrease: 0.5,
            cooldown: Duration::from_secs(5),
            quiet: Duration::from_secs(10),
            min_rate: 0.2,
        }
    }
}

/// The effective-rate controller. Pure state: the engine applies its output.
#[derive(Debug)]
pub struct Aimd {
    settings: AimdSettings,
    /// What the operator configured (`None`: unlimited).
    target: Option<f64>,
    /// What is in force; `None` only while unthrottled and unlimited.
    effective: Option<f64>,
    last_decrease: Option<Instant>,
    last_change: Instant,
    /// Increases since the last throttle while the target is unlimited.
    unlimited_steps: u32,
}

impl Aimd {
    /// Starts at the target.
    pub fn new(target: Option<f64>, settings: AimdSettings) -> Aimd {
        Aimd {
            settings,
            target,
            effective: target,
            last_decrease: None,
            last_change: Instant::now(),
            unlimited_steps: 0,
        }
    }

    /// The configured rate.
    pub fn target(&self) -> Option<f64> {
        self.target
    }

    /// The rate in force.
    pub fn effective(&self) -> Option<f64> {
        self.effective
    }

    /// True while the effective rate is below the target because of throttling.
    pub fn is_throttled(&self) -> bool {
        match (self.effective, self.target) {
            (Some(e), Some(t)) => e < t,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// The operator set a new target: it applies at once.
    pub fn set_target(&mut self, target: Option<f64>, now: Instant) {
        self.target = target;
        self.effective = target;
        self.last_change = now;
    }

    /// A throttling reply. `observed` is the recent accepted rate, used when
    /// the target is unlimited. Returns the new effective rate when it changed.
    pub fn on_throttle(&mut self, now: Instant, observed: f64) -> Option<f64> {
        if let Some(at) = self.last_decrease
            && now.duration_since(at) < self.settings.cooldown
        {
            return None;
        }
        let base = self
            .effective
            .unwrap_or(observed.max(self.settings.min_rate));
        // Never below a twentieth of the target: a provider that refuses a
        // share of messages whatever the rate must not stall the campaign.
        let floor = self.target.map_or(self.settings.min_rate, |t| {
            (t / 20.0).max(self.settings.min_rate)
        });
        let next = (base * self.settings.decrease).max(floor);
        self.last_decrease = Some(now);
        self.last_change = now;
        self.unlimited_steps = 0;
        if Some(next) == self.effective {
            return None;
        }
        self.effective = Some(next);
        Some(next)
    }

    /// Called periodically: after a quiet period, raise the rate by a tenth of
    /// the target (or of the current rate when unlimited). Returns the change.
    pub fn on_tick(&mut self, now: Instant) -> Option<Option<f64>> {
        let effective = self.effective?;
        if !self.is_throttled() || now.duration_since(self.last_change) < self.settings.quiet {
            return None;
        }
        self.last_change = now;
        let next = match self.target {
            Some(t) => Some((effective + t / 10.0).min(t)),
            // Unlimited target: grow by 10% per quiet period; after ten quiet
            // periods in a row, lift the limit entirely.
            None => {
                self.unlimited_steps += 1;
                (self.unlimited_steps < 10).then_some(effective * 1.1)
            }
        };
        self.effective = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_once_per_cooldown_and_recovers_additively() {
        let t0 = Instant::now();
        let mut a = Aimd::new(Some(100.0), AimdSettings::default());
        assert_eq!(a.on_throttle(t0, 0.0), Some(50.0));
        // A second reply within the cooldown is the same signal.
        assert_eq!(a.on_throttle(t0 + Duration::from_secs(3), 0.0), None);
        assert_eq!(a.on_throttle(t0 + Duration::from_secs(6), 0.0), Some(25.0));
        assert!(a.is_throttled());
        // Not quiet long enough yet.
        assert_eq!(a.on_tick(t0 + Duration::from_secs(8)), None);
        assert_eq!(a.on_tick(t0 + Duration::from_secs(16)), Some(Some(35.0)));
        let mut t = t0 + Duration::from_secs(16);
        for _ in 0..10 {
            t += Duration::from_secs(10);
            a.on_tick(t);
        }
        // Never above the target.
        assert_eq!(a.effective(), Some(100.0));
        assert!(!a.is_throttled());
    }

    #[test]
    fn never_below_minimum_nor_a_twentieth_of_the_target() {
        let mut a = Aimd::new(Some(1.0), AimdSettings::default());
        let mut b = Aimd::new(Some(100.0), AimdSettings::default());
        let mut t = Instant::now();
        for _ in 0..20 {
            a.on_throttle(t, 0.0);
            b.on_throttle(t, 0.0);
            t += Duration::from_secs(6);
        }
        assert_eq!(a.effective(), Some(AimdSettings::default().min_rate));
        assert_eq!(b.effective(), Some(5.0));
    }

    #[test]
    fn unlimited_target_uses_observed_rate() {
        let t0 = Instant::now();
        let mut a = Aimd::new(None, AimdSettings::default());
        assert!(!a.is_throttled());
        assert_eq!(a.on_throttle(t0, 400.0), Some(200.0));
        assert!(a.is_throttled());
        let mut t = t0;
        let mut lifted = false;
        for _ in 0..50 {
            t += Duration::from_secs(11);
            if a.on_tick(t) == Some(None) {
                lifted = true;
                break;
            }
        }
        assert!(
            lifted,
            "the limit is eventually lifted: {:?}",
            a.effective()
        );
    }
}
