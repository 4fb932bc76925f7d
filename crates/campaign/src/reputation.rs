//! The reputation breaker (issue 13 point 5, docs/bounces.md): over the last
//! 1,000 recipients sent or refused (all of them once there are 200), hard
//! bounces above `[bounces] max_bounce_rate` or complaints above
//! `max_complaint_rate` stop a running send (exit 2), unless
//! `edm send --accept-reputation`.
//!
//! Why: Amazon SES reviews an account whose bounce rate reaches 5% and may
//! pause it at 10%; Gmail's bulk-sender rules want spam complaints under
//! 0.1% and never at 0.3%. A list that bounces that much was not cleaned,
//! and every further message makes the sender's reputation worse for all of
//! its mail, not only this campaign.

use std::collections::{BTreeMap, VecDeque};

use edm_store::WindowEntry;

use crate::config::BouncesSection;

/// How many recent recipients the rates are measured over.
pub(crate) const WINDOW: usize = 1000;
/// How many are needed before a rate means anything.
pub(crate) const MIN_SAMPLE: usize = 200;

/// Why the breaker stopped a run: the figures and the worst domains.
#[derive(Clone, Debug, PartialEq)]
pub struct ReputationTrip {
    /// Recipients in the window.
    pub window: usize,
    /// Hard bounces among them (late, or refused as `recipient_unknown`).
    pub hard_bounces: usize,
    /// Complaints among them.
    pub complaints: usize,
    /// `[bounces] max_bounce_rate`.
    pub max_bounce_rate: f64,
    /// `[bounces] max_complaint_rate`.
    pub max_complaint_rate: f64,
    /// Domains with the most hard bounces and complaints: (domain, bad, sent).
    pub worst_domains: Vec<(String, usize, usize)>,
}

impl std::fmt::Display for ReputationTrip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |n: usize| 100.0 * n as f64 / self.window.max(1) as f64;
        write!(
            f,
            "hard bounces {} of the last {} recipients ({:.1}%, limit {:.1}%), complaints {} ({:.2}%, limit {:.2}%)",
            self.hard_bounces,
            self.window,
            pct(self.hard_bounces),
            100.0 * self.max_bounce_rate,
            self.complaints,
            pct(self.complaints),
            100.0 * self.max_complaint_rate,
        )?;
        if !self.worst_domains.is_empty() {
            let worst: Vec<String> = self
                .worst_domains
                .iter()
                .map(|(d, bad, n)| format!("{d} {bad}/{n}"))
                .collect();
            write!(f, "; worst domains: {}", worst.join(", "))?;
        }
        Ok(())
    }
}

/// The sliding window of recent recipients and the two limits.
pub(crate) struct Reputation {
    window: VecDeque<WindowEntry>,
    /// Hard bounces and complaints in `window`, kept as it slides: the
    /// check after each outcome is then two divisions, not two scans of
    /// 1,000 entries (~5,500 instructions a message, issue 11).
    hard: usize,
    complaints: usize,
    max_bounce_rate: f64,
    max_complaint_rate: f64,
    accept: bool,
    tripped: bool,
}

impl Reputation {
    /// Starts from the state's latest recipients (`latest_first`, as
    /// [`CampaignStore::reputation_window`](edm_store::CampaignStore::reputation_window)
    /// gives them), so late bounces applied between runs count.
    pub(crate) fn new(cfg: &BouncesSection, accept: bool, latest_first: Vec<WindowEntry>) -> Self {
        let mut window: VecDeque<WindowEntry> = latest_first.into_iter().take(WINDOW).collect();
        window.make_contiguous().reverse();
        Reputation {
            hard: window.iter().filter(|e| e.hard_bounce).count(),
            complaints: window.iter().filter(|e| e.complaint).count(),
            window,
            max_bounce_rate: cfg.max_bounce_rate,
            max_complaint_rate: cfg.max_complaint_rate,
            accept,
            tripped: false,
        }
    }

    /// One more recipient sent (`hard_bounce` when refused as unknown).
    /// Returns the trip the first time the limits are exceeded.
    pub(crate) fn observe(&mut self, domain: &str, hard_bounce: bool) -> Option<ReputationTrip> {
        if self.window.len() == WINDOW
            && let Some(old) = self.window.pop_front()
        {
            self.hard -= usize::from(old.hard_bounce);
            self.complaints -= usize::from(old.complaint);
        }
        self.hard += usize::from(hard_bounce);
        self.window.push_back(WindowEntry {
            domain: domain.to_string(),
            hard_bounce,
            complaint: false,
        });
        self.check()
    }

    /// The trip, if the limits are exceeded now and were not before (and
    /// the operator did not accept it).
    pub(crate) fn check(&mut self) -> Option<ReputationTrip> {
        if self.accept || self.tripped || self.window.len() < MIN_SAMPLE {
            return None;
        }
        let n = self.window.len() as f64;
        let (hard, complaints) = (self.hard, self.complaints);
        debug_assert_eq!(hard, self.window.iter().filter(|e| e.hard_bounce).count());
        debug_assert_eq!(
            complaints,
            self.window.iter().filter(|e| e.complaint).count()
        );
        if hard as f64 / n <= self.max_bounce_rate
            && complaints as f64 / n <= self.max_complaint_rate
        {
            return None;
        }
        self.tripped = true;
        let mut by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for e in &self.window {
            let t = by.entry(e.domain.as_str()).or_default();
            t.1 += 1;
            if e.hard_bounce || e.complaint {
                t.0 += 1;
            }
        }
        let mut worst: Vec<(String, usize, usize)> = by
            .into_iter()
            .filter(|(_, (bad, _))| *bad > 0)
            .map(|(d, (bad, total))| (d.to_string(), bad, total))
            .collect();
        worst.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        worst.truncate(3);
        Some(ReputationTrip {
            window: self.window.len(),
            hard_bounces: hard,
            complaints,
            max_bounce_rate: self.max_bounce_rate,
            max_complaint_rate: self.max_complaint_rate,
            worst_domains: worst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(domain: &str, hard: bool, complaint: bool) -> WindowEntry {
        WindowEntry {
            domain: domain.into(),
            hard_bounce: hard,
            complaint,
        }
    }

    #[test]
    fn trips_above_the_bounce_rate_after_the_minimum_sample() {
        let mut r = Reputation::new(&BouncesSection::default(), false, Vec::new());
        // 10% bounce, but fewer than 200 recipients: no verdict yet.
        for i in 0..199 {
            assert_eq!(r.observe("a.example", i % 10 == 0), None, "at {i}");
        }
        let trip = r.observe("b.example", false).expect("trips at 200");
        assert_eq!(trip.window, 200);
        assert_eq!(trip.hard_bounces, 20);
        assert_eq!(trip.worst_domains, vec![("a.example".into(), 20, 199)]);
        let text = trip.to_string();
        assert!(
            text.contains("hard bounces 20 of the last 200 recipients (10.0%, limit 5.0%)"),
            "{text}"
        );
        assert!(text.contains("worst domains: a.example 20/199"), "{text}");
        // Said once.
        assert_eq!(r.observe("a.example", true), None);
    }

    #[test]
    fn stays_quiet_at_the_limit_and_when_accepted() {
        let mut r = Reputation::new(&BouncesSection::default(), false, Vec::new());
        // Exactly 5%: not above the limit.
        for i in 0..400 {
            assert_eq!(r.observe("a.example", i % 20 == 19), None, "at {i}");
        }
        let mut accepted = Reputation::new(&BouncesSection::default(), true, Vec::new());
        for _ in 0..400 {
            assert_eq!(accepted.observe("a.example", true), None);
        }
    }

    #[test]
    fn late_complaints_from_the_state_count_and_the_window_slides() {
        // 300 recipients from the state, latest first, one complaint in 200
        // of them would be 0.33%: above 0.1%.
        let mut seed: Vec<WindowEntry> =
            (0..300).map(|_| entry("a.example", false, false)).collect();
        seed[0].complaint = true;
        let mut r = Reputation::new(&BouncesSection::default(), false, seed);
        let trip = r.check().expect("a complaint in 300 is above 0.1%");
        assert_eq!((trip.complaints, trip.window), (1, 300));

        // The window keeps the last 1,000: old bounces slide out.
        let seed: Vec<WindowEntry> = (0..1000)
            .map(|i| entry("a.example", i >= 900, false))
            .collect();
        let mut r = Reputation::new(&BouncesSection::default(), false, seed);
        // The oldest 100 (hard) are at the front: 10% now.
        assert!(r.check().is_some());
        let seed: Vec<WindowEntry> = (0..1000)
            .map(|i| entry("a.example", i >= 960, false))
            .collect();
        let mut r = Reputation::new(&BouncesSection::default(), false, seed);
        assert!(r.check().is_none(), "4% is under the limit");
        for _ in 0..40 {
            assert_eq!(r.observe("a.example", false), None);
        }
        assert_eq!(r.window.iter().filter(|e| e.hard_bounce).count(), 0);
    }

    /// The counts kept as the window slides: bounces that slid out no
    /// longer count, new ones do, and the trip comes at the exact outcome
    /// that crosses the limit.
    #[test]
    fn kept_counts_follow_the_sliding_window() {
        // 1,000 from the state, the oldest 50 hard: 5%, at the limit.
        let seed: Vec<WindowEntry> = (0..1000)
            .map(|i| entry("a.example", i >= 950, false))
            .collect();
        let mut r = Reputation::new(&BouncesSection::default(), false, seed);
        assert!(r.check().is_none());
        for i in 0..50 {
            assert_eq!(r.observe("a.example", false), None, "clean {i}");
        }
        assert_eq!(r.hard, 0);
        for i in 0..50 {
            assert_eq!(r.observe("b.example", true), None, "hard {i}");
        }
        let trip = r
            .observe("b.example", true)
            .expect("51 of 1,000 is above 5%");
        assert_eq!((trip.hard_bounces, trip.window), (51, 1000));
        assert_eq!(trip.worst_domains, vec![("b.example".into(), 51, 51)]);
    }
}
