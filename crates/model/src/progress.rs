//! A snapshot of a campaign run: what dashboards and progress lines render.

use std::collections::{BTreeMap, VecDeque};

use crate::{Category, Status, UnixMillis};

/// What a run is doing right now.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Reading the recipients and preparing the store.
    #[default]
    Starting,
    /// Sending.
    Running,
    /// Paused by the operator or by a quota.
    Paused,
    /// The rate is lowered because the server throttles.
    Throttled,
    /// Every connection fails; probing the server.
    Outage,
    /// Nothing to send now; waiting for deferred recipients to come due.
    WaitingForRetries,
    /// Finishing in-flight transactions before exiting.
    Stopping,
    /// Finished (or stopped).
    Done,
}

impl RunState {
    /// The label shown to an operator.
    pub fn label(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Throttled => "throttled",
            RunState::Outage => "outage",
            RunState::WaitingForRetries => "waiting for retries",
            RunState::Stopping => "stopping",
            RunState::Done => "done",
        }
    }
}

/// One line of the recent-events log.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EventLine {
    /// When it happened.
    pub at: UnixMillis,
    /// What happened, one line.
    pub text: String,
}

/// Per-domain counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DomainCounts {
    /// Accepted.
    pub sent: u64,
    /// Failed permanently.
    pub failed: u64,
    /// Deferred at least once.
    pub deferred: u64,
}

/// One recent failure, for the failures view.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FailureRow {
    /// The recipient's address.
    pub email: String,
    /// The status it ended in (failed or deferred).
    pub status: Status,
    /// The classified failure.
    pub category: Category,
    /// Reply code, enhanced code and text, as one line.
    pub reply: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When.
    pub at: UnixMillis,
}

/// A snapshot of a run. Cheap to clone at a bounded frame rate.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Progress {
    /// Campaign name.
    pub campaign: String,
    /// What the run is doing.
    pub state: RunState,
    /// When the run started.
    pub started_at: UnixMillis,
    /// When this snapshot was taken.
    pub now: UnixMillis,
    /// Recipients by status (every status present, zero included).
    pub counts: BTreeMap<Status, u64>,
    /// Transactions being attempted right now.
    pub in_flight: u64,
    /// Failed and deferred recipients by category.
    pub by_category: BTreeMap<Category, u64>,
    /// Most frequent distinct replies: (code, enhanced code, text) with their count.
    pub top_replies: Vec<(Option<u16>, Option<String>, String, u64)>,
    /// Counters of the busiest domains.
    pub domains: BTreeMap<String, DomainCounts>,
    /// Configured rate in messages per second (`None`: unlimited).
    pub target_rate: Option<f64>,
    /// Effective rate after throttling slow-downs.
    pub effective_rate: Option<f64>,
    /// Messages accepted per second, one sample per second, newest last.
    pub rate_history: VecDeque<f64>,
    /// Recent engine events, newest last.
    pub events: VecDeque<EventLine>,
    /// Retries scheduled during this run.
    pub retries: u64,
    /// The most recent failures and deferrals, newest last (bounded).
    pub recent_failures: VecDeque<FailureRow>,
}

impl Progress {
    /// The count of one status.
    pub fn count(&self, status: Status) -> u64 {
        self.counts.get(&status).copied().unwrap_or(0)
    }

    /// All recipients known.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Recipients in a final state.
    pub fn done(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(s, _)| s.is_final())
            .map(|(_, n)| n)
            .sum()
    }

    /// The accepted rate over the last `secs` samples.
    pub fn recent_rate(&self, secs: usize) -> f64 {
        let n = self.rate_history.len().min(secs);
        if n == 0 {
            return 0.0;
        }
        self.rate_history.iter().rev().take(n).sum::<f64>() / n as f64
    }

    /// Seconds until every recipient is final at the recent rate, if it can be told.
    pub fn eta_secs(&self) -> Option<u64> {
        let left = self.total().saturating_sub(self.done());
        if left == 0 {
            return Some(0);
        }
        let rate = self.recent_rate(10);
        (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64)
    }

    /// Elapsed run time in milliseconds.
    pub fn elapsed_ms(&self) -> i64 {
        (self.now - self.started_at).max(0)
    }

    /// Appends an event line, keeping at most `keep` lines.
    pub fn push_event(&mut self, at: UnixMillis, text: String, keep: usize) {
        self.events.push_back(EventLine { at, text });
        while self.events.len() > keep {
            self.events.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_from_recent_rate() {
        let mut p = Progress::default();
        p.counts.insert(Status::Sent, 50);
        p.counts.insert(Status::Pending, 100);
        p.rate_history.extend([10.0, 10.0]);
        assert_eq!(p.total(), 150);
        assert_eq!(p.done(), 50);
        assert_eq!(p.eta_secs(), Some(10));
    }

    #[test]
    fn events_are_bounded() {
        let mut p = Progress::default();
        for i in 0..10 {
            p.push_event(i, format!("e{i}"), 3);
        }
        assert_eq!(p.events.len(), 3);
        assert_eq!(p.events.back().unwrap().text, "e9");
    }
}
