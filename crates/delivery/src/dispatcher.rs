//! The dispatcher's state: the envelopes parked because their domain is at
//! its limit, the workers waiting for work, and the per-domain gates.
//!
//! It is owned by one task (the engine's `run` loop), so it needs no locks
//! and nothing polls: a worker asks for work with a oneshot, a domain slot
//! given back wakes the loop through a [`Notify`], and a domain rate that is
//! used up arms one `sleep_until` at the instant its next token is due.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use edm_model::Envelope;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::queue::rate::RateGate;

/// Limits in force for one recipient domain.
pub(crate) struct DomainGate {
    pub(crate) rate: Option<RateGate>,
    pub(crate) slots: Option<Arc<Semaphore>>,
}

/// A domain's concurrency slot, held by a worker for one transaction; giving
/// it back wakes the dispatcher, which may then hand out a parked envelope.
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit first, so the woken dispatcher finds the slot free.
        drop(self.permit.take());
        // `notify_one` keeps a permit when nobody waits: never a lost wake-up.
        self.freed.notify_one();
    }
}

/// One envelope for a worker, with its domain slot (if the domain has a
/// concurrency limit).
pub(crate) type Job = (Envelope, Option<Slot>);

/// A worker's request for its next job; dropped unanswered when there is no
/// more work (the queue is drained or the run stops).
pub(crate) type Ask = oneshot::Sender<Job>;

pub(crate) struct Dispatcher {
    domains: HashMap<String, DomainGate>,
    /// Envelopes taken from the queue whose domain was at its limit, so other
    /// domains go meanwhile (no head-of-line blocking).
    parked: VecDeque<Envelope>,
    park_cap: usize,
    /// Workers waiting for work, oldest first.
    waiting: VecDeque<Ask>,
    freed: Arc<Notify>,
    /// When the earliest rate-limited parked envelope may go.
    rate_due: Option<Instant>,
}

impl Dispatcher {
    pub(crate) fn new(domains: HashMap<String, DomainGate>, park_cap: usize) -> Dispatcher {
        Dispatcher {
            domains,
            parked: VecDeque::new(),
            park_cap: park_cap.max(1),
            waiting: VecDeque::new(),
            freed: Arc::new(Notify::new()),
            rate_due: None,
        }
    }

    /// Every per-domain rate at `share` of its configured value (several
    /// workers sharing a campaign, [`edm_model::Control::SetShare`]).
    pub(crate) fn set_share(
        &mut self,
        share: f64,
        limits: &HashMap<String, crate::engine::DomainLimit>,
    ) {
        for (domain, limit) in limits {
            if let (Some(rate), Some(gate)) = (
                limit.rate,
                self.domains
                    .get(&domain.to_ascii_lowercase())
                    .and_then(|g| g.rate.as_ref()),
            ) {
                gate.set_rate(Some(rate * share));
            }
        }
    }

    /// Notified when a domain slot is given back.
    pub(crate) fn freed(&self) -> Arc<Notify> {
        self.freed.clone()
    }

    /// When a domain rate next lets a parked envelope go.
    pub(crate) fn rate_due(&self) -> Option<Instant> {
        self.rate_due
    }

    /// A worker waits for work.
    pub(crate) fn want(&mut self, ask: Ask) {
        self.waiting.push_back(ask);
    }

    /// Workers waiting for work (those that gave up waiting not counted).
    pub(crate) fn idle(&self) -> usize {
        self.waiting.iter().filter(|a| !a.is_closed()).count()
    }

    /// Whether to take another envelope from the queue: a worker waits for
    /// one and the parking is not full.
    pub(crate) fn wants_more(&mut self) -> bool {
        self.has_waiter() && self.parked.len() < self.park_cap
    }

    pub(crate) fn parked_is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// No more work: the waiting workers are told so (their ask is dropped).
    pub(crate) fn release_waiters(&mut self) {
        self.waiting.clear();
    }

    /// Everything parked, for returning at the end of the run.
    pub(crate) fn drain_parked(&mut self) -> Vec<Envelope> {
        self.parked.drain(..).collect()
    }

    fn has_waiter(&mut self) -> bool {
        while self.waiting.front().is_some_and(|a| a.is_closed()) {
            self.waiting.pop_front();
        }
        !self.waiting.is_empty()
    }

    /// The domain's slot and rate token if both are free now (nothing is
    /// taken otherwise); `Err` carries when the rate allows the next one
    /// (`None`: waiting for a slot).
    fn try_domain(&self, env: &Envelope) -> Result<Option<Slot>, Option<Instant>> {
        let Some(d) = self.domains.get(&env.domain) else {
            return Ok(None);
        };
        // A raw permit until both are taken: dropping it on a refused rate
        // must not wake the dispatcher (that would spin).
        let permit = match &d.slots {
            Some(sem) => Some(sem.clone().try_acquire_owned().map_err(|_| None)?),
            None => None,
        };
        if let Some(g) = &d.rate
            && let Err(wait) = g.try_acquire_or_wait()
        {
            return Err(Some(Instant::now() + wait));
        }
        Ok(permit.map(|p| Slot {
            permit: Some(p),
            freed: self.freed.clone(),
        }))
    }

    /// Gives the job to the oldest waiting worker; the job comes back if
    /// none waits.
    fn hand(&mut self, mut job: Job) -> Option<Job> {
        while let Some(ask) = self.waiting.pop_front() {
            match ask.send(job) {
                Ok(()) => return None,
                // That worker is gone: the next one.
                Err(j) => job = j,
            }
        }
        Some(job)
    }

    /// An envelope from the queue: parked; [`Dispatcher::pump`] hands it out
    /// at once if its domain has room.
    pub(crate) fn offer(&mut self, env: Envelope) {
        self.parked.push_back(env);
    }

    /// Hands parked envelopes whose domain has room to waiting workers, in
    /// queue order, and notes when a domain rate next allows one.
    pub(crate) fn pump(&mut self) {
        self.rate_due = None;
        let mut i = 0;
        while i < self.parked.len() && self.has_waiter() {
            match self.try_domain(&self.parked[i]) {
                Ok(slot) => {
                    let Some(env) = self.parked.remove(i) else {
                        break;
                    };
                    if let Some((env, _slot)) = self.hand((env, slot)) {
                        self.parked.insert(i, env);
                        break;
                    }
                }
                Err(due) => {
                    if let Some(due) = due {
                        self.rate_due = Some(self.rate_due.map_or(due, |d| d.min(due)));
                    }
                    i += 1;
                }
            }
        }
    }
}
