//! A snapshot of a campaign run ([`Progress`]), what dashboards and progress
//! lines render, and the fold that builds it from the run's events
//! ([`Progress::claimed`], [`Progress::apply`], [`Progress::sample`]).
//!
//! The fold starts from the store's counts when the run starts and moves
//! recipients between statuses as events say, so a display never reads the
//! store while a run goes on (the run's end takes the store's tallies once).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::{Attempt, Category, DeliveryEvent, Failure, Notice, Status, UnixMillis};

/// Distinct replies the fold counts at most: a relay that quotes each
/// address in its refusal would otherwise grow the map by one per message.
const REPLY_KEYS: usize = 1024;
/// Replies shown as "top replies".
const TOP_REPLIES: usize = 8;
/// Recent failures kept for the failures view.
const RECENT_FAILURES: usize = 200;
/// Event lines kept.
const EVENT_LINES: usize = 50;
/// Rate samples kept (ten minutes at one a second).
const RATE_SAMPLES: usize = 600;
/// Busiest domains shown (the store's view shows as many).
const DOMAINS_SHOWN: usize = 12;

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

/// What one relay is doing, as its latest outcomes and the engine's notices say.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// Nothing sent through it yet.
    #[default]
    Idle,
    /// Its latest reply was an acceptance or a refusal about one recipient.
    Sending,
    /// Its latest reply asked to slow down.
    Throttled,
    /// Every connection fails: the engine probes it.
    Outage,
    /// It refused in a way that would hit every message: the run stops (or,
    /// in a pool, it leaves the pool).
    Refusing,
    /// Taken out of its pool for the rest of the run (`Notice::RelayDown`):
    /// its traffic went to the others.
    Down,
}

impl RelayState {
    /// The label shown to an operator.
    pub fn label(self) -> &'static str {
        match self {
            RelayState::Idle => "idle",
            RelayState::Sending => "sending",
            RelayState::Throttled => "throttled",
            RelayState::Outage => "outage",
            RelayState::Refusing => "refusing",
            RelayState::Down => "down",
        }
    }
}

/// One relay's counters in this run: a row of the dashboard's relays panel.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RelayTally {
    /// Accepted.
    pub sent: u64,
    /// Failed permanently.
    pub failed: u64,
    /// Deferred (each deferral counted).
    pub deferred: u64,
    /// Transactions on it right now (from the engine's live status).
    pub in_flight: u64,
    /// What it is doing.
    pub state: RelayState,
    /// Messages accepted per second over the last sample.
    pub rate: f64,
    /// Its latest reply, one line.
    pub last_reply: Option<String>,
    /// Its most frequent refusal in this run, with its count.
    pub top_reply: Option<(String, u64)>,
}

/// A refusal as a relay's row shows it: the code, the enhanced code and
/// the text, as the relay said it.
fn reply_line(f: &Failure) -> String {
    match (f.smtp_code, &f.enhanced_code) {
        (Some(c), Some(e)) => format!("{c} {e} {}", f.reply),
        (Some(c), None) => format!("{c} {}", f.reply),
        (None, _) => f.reply.clone(),
    }
}

/// A reply as the top-replies table groups it: code, enhanced code, text.
type ReplyKey = (Option<u16>, Option<String>, String);

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
    /// Per relay (by name): a row each in the dashboard; one with one relay.
    pub relays: BTreeMap<String, RelayTally>,
    /// Bounces and complaints read back after `sent` (`edm bounces`,
    /// `[bounces] poll`), as the store had them at the start of the run and,
    /// in the last snapshot, at its end.
    pub late: LateTally,
    /// The campaign's workers when several send it (PostgreSQL,
    /// docs/scaling.md), as their heartbeats last said; empty otherwise.
    pub workers: Vec<WorkerRow>,
    /// Messages accepted per second by the campaign's other workers, from
    /// the store's counts (0 with one worker): the ETA counts them too.
    pub others_rate: f64,
}

/// One worker of a campaign shared by several (PostgreSQL,
/// docs/scaling.md), as its last heartbeat wrote it in the store: a row of
/// `edm status` (`--json`: `workers`), of the dashboard's workers panel and
/// of `edm watch`. One type from the store to every display.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WorkerRow {
    /// Its name (`--worker`, or `host:pid`).
    pub name: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u64,
    /// `running`, `done` (it finished) or `dead` (its lease expired and its
    /// rows were recovered).
    pub state: String,
    /// Running and its lease not expired.
    pub alive: bool,
    /// When it joined (Unix ms, the database server's clock).
    pub started_at: UnixMillis,
    /// Its last heartbeat (Unix ms, the database server's clock).
    pub heartbeat_at: UnixMillis,
    /// Its rate limit at its last heartbeat (messages per second), if any.
    pub rate: Option<f64>,
    /// Its share of the campaign's limits (1 / live workers, lowered by
    /// another worker's throttling); none before its first heartbeat.
    pub share: Option<f64>,
    /// Transactions in progress at its last heartbeat.
    pub in_flight: u64,
    /// Accepted in its run.
    pub sent: u64,
    /// Failed permanently in its run.
    pub failed: u64,
    /// When its lease lapses (the server's clock; not shown).
    #[serde(skip)]
    pub lease_until: UnixMillis,
    /// Its throttle ratio, when throttled (not shown).
    #[serde(skip)]
    pub throttle: Option<f64>,
}

/// The fold as it stood when a count of the store was asked
/// ([`ProgressFold::store_mark`]), for [`ProgressFold::rebase`].
#[derive(Clone, Debug, Default)]
pub struct StoreMark {
    counts: BTreeMap<Status, u64>,
    sent: u64,
    at: UnixMillis,
}

impl StoreMark {
    fn count(&self, s: Status) -> u64 {
        self.counts.get(&s).copied().unwrap_or(0)
    }
}

/// Late outcomes of sent recipients (docs/bounces.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LateTally {
    /// Hard bounces (and soft ones past `soft_bounce_limit`).
    pub bounced: u64,
    /// Spam complaints.
    pub complained: u64,
    /// Delays reported, no hard outcome yet.
    pub soft_bounced: u64,
}

impl LateTally {
    /// Nothing came back yet.
    pub fn is_empty(&self) -> bool {
        *self == LateTally::default()
    }
}

/// The fold that builds a [`Progress`] from a run's events: the run's one
/// owner of its progress (the outcome loop) feeds it every claim and event
/// and publishes [`ProgressFold::sample`] at a bounded rate.
///
/// Per event it does a few map updates and no allocation beyond a new
/// domain, relay or reply; sorting (busiest domains, top replies) happens
/// per sample, not per event.
#[derive(Clone, Debug, Default)]
pub struct ProgressFold {
    /// The snapshot being built.
    p: Progress,
    /// Accepted in this run.
    sent: u64,
    /// `sent` and when, at the last rate sample.
    sampled: Option<(UnixMillis, u64)>,
    /// Every failure reply of this run with its count (bounded).
    replies: HashMap<ReplyKey, u64>,
    /// Every domain of this run with its counters; `domains` shows the busiest.
    domains: HashMap<String, DomainCounts>,
    /// Per relay: refusals by reply (bounded), for its `top_reply`.
    relay_replies: HashMap<String, HashMap<String, u64>>,
    /// Per relay: `sent` at the last rate sample.
    relay_sampled: HashMap<String, u64>,
    /// `sent` in the store's counts at the start of the run.
    start_sent: u64,
    /// The other workers' accepted count since the start and when, at the
    /// last rebase (their rate).
    others: Option<(UnixMillis, u64)>,
    /// This worker's fair share of the campaign's rate (1 / live workers)
    /// when several send it: its effective rate at `target x share` is not
    /// a throttle.
    share: Option<f64>,
    /// Flags the run state is computed from.
    paused: bool,
    outage: bool,
    stopping: bool,
    waiting: bool,
    done: bool,
}

impl ProgressFold {
    /// A fold around the run's first snapshot (campaign, start time,
    /// configured rate); [`ProgressFold::start_from`] adds the store's counts.
    pub fn new(p: Progress) -> ProgressFold {
        ProgressFold {
            p,
            ..ProgressFold::default()
        }
    }

    /// The snapshot as folded so far (derived fields as of the last sample).
    pub fn progress(&self) -> &Progress {
        &self.p
    }

    /// Sets the live figures only the engine knows: the target rate (the
    /// operator may change it) and the transactions in flight, in all and
    /// per relay.
    pub fn engine(&mut self, target_rate: Option<f64>, in_flight: u64, by_relay: &[(String, u64)]) {
        self.p.target_rate = target_rate;
        self.p.in_flight = in_flight;
        for r in self.p.relays.values_mut() {
            r.in_flight = 0;
        }
        for (name, n) in by_relay {
            self.relay(name).in_flight = *n;
        }
    }

    /// Sets the late outcomes (read from the store; events do not carry them).
    pub fn set_late(&mut self, late: LateTally) {
        self.p.late = late;
    }

    /// Starts the fold from the store's counts at the start of the run.
    pub fn start_from(
        &mut self,
        counts: &BTreeMap<Status, u64>,
        by_category: &BTreeMap<Category, u64>,
    ) {
        self.p.counts = Status::ALL.iter().map(|s| (*s, 0)).collect();
        self.p.counts.extend(counts.iter().map(|(s, n)| (*s, *n)));
        self.p.by_category = by_category.clone();
        self.start_sent = self.p.count(Status::Sent);
    }

    /// The fold now, before a count of the store is asked that is ordered
    /// after every outcome folded so far (`Writer::summary` commits what
    /// was sent to it before): [`ProgressFold::rebase`] then adds what the
    /// fold moved since.
    pub fn store_mark(&self, at: UnixMillis) -> StoreMark {
        StoreMark {
            counts: self.p.counts.clone(),
            sent: self.sent,
            at,
        }
    }

    /// Takes the campaign's counts from the store, when several workers
    /// send it: `store` holds this worker's outcomes up to `mark` and the
    /// others' up to the read; the counts become `store` plus what this
    /// worker's own events moved since `mark`, so its own events stay
    /// exact, and the pending, sent and ETA shown are the campaign's. A
    /// claim already committed but not yet folded at the read is counted
    /// twice until the next rebase (at most one claim's batch).
    pub fn rebase(&mut self, mark: &StoreMark, store: &BTreeMap<Status, u64>) {
        let mut counts: BTreeMap<Status, u64> = Status::ALL.iter().map(|s| (*s, 0)).collect();
        for s in Status::ALL.iter().copied() {
            let since = i128::from(self.p.count(s)) - i128::from(mark.count(s));
            let base = i128::from(store.get(&s).copied().unwrap_or(0));
            counts.insert(s, u64::try_from((base + since).max(0)).unwrap_or(0));
        }
        self.p.counts = counts;
        // What the others accepted since the start: the store's `sent`
        // less what it had then and this worker's own up to the mark.
        let others = store
            .get(&Status::Sent)
            .copied()
            .unwrap_or(0)
            .saturating_sub(self.start_sent)
            .saturating_sub(mark.sent);
        if let Some((at, before)) = self.others
            && mark.at > at
        {
            let secs = (mark.at - at) as f64 / 1000.0;
            self.p.others_rate = others.saturating_sub(before) as f64 / secs;
        }
        self.others = Some((mark.at, others));
    }

    /// This worker's fair share of the campaign's rate (several workers).
    pub fn set_share(&mut self, share: f64) {
        self.share = (share.is_finite() && share > 0.0).then_some(share);
    }

    /// The campaign's workers, as the store last said (several workers).
    pub fn set_workers(&mut self, workers: Vec<WorkerRow>) {
        self.p.workers = workers;
    }

    fn shift(&mut self, from: Status, to: Status) {
        let f = self.p.counts.entry(from).or_default();
        *f = f.saturating_sub(1);
        *self.p.counts.entry(to).or_default() += 1;
    }

    /// A recipient was claimed for sending. A retry comes from `deferred`
    /// while any are deferred (an in-doubt resend comes from `pending`, the
    /// one case this guesses; the run's end takes the store's counts).
    pub fn claimed(&mut self, attempt: &Attempt) {
        let from = if attempt.retry && self.p.count(Status::Deferred) > 0 {
            Status::Deferred
        } else {
            Status::Pending
        };
        self.shift(from, Status::Sending);
    }

    /// A claimed recipient failed before any transport saw it (its message
    /// could not be rendered).
    pub fn failed_locally(&mut self, email: &str, failure: &Failure, at: UnixMillis) {
        self.shift(Status::Sending, Status::Failed);
        self.failure(email, Status::Failed, failure, 0, at);
    }

    fn failure(&mut self, email: &str, status: Status, f: &Failure, attempts: u32, at: UnixMillis) {
        *self.p.by_category.entry(f.category).or_default() += 1;
        let key = (f.smtp_code, f.enhanced_code.clone(), f.reply.clone());
        if self.replies.len() < REPLY_KEYS || self.replies.contains_key(&key) {
            *self.replies.entry(key).or_default() += 1;
        }
        self.p.recent_failures.push_back(FailureRow {
            email: email.to_string(),
            status,
            category: f.category,
            reply: f.to_string(),
            attempts,
            at,
        });
        while self.p.recent_failures.len() > RECENT_FAILURES {
            self.p.recent_failures.pop_front();
        }
    }

    fn domain(&mut self, domain: &str, bump: fn(&mut DomainCounts)) {
        match self.domains.get_mut(domain) {
            Some(c) => bump(c),
            None => bump(self.domains.entry(domain.to_string()).or_default()),
        }
    }

    fn relay(&mut self, relay: &str) -> &mut RelayTally {
        // No allocation for a relay already known (every event but the first).
        if !self.p.relays.contains_key(relay) {
            self.p
                .relays
                .insert(relay.to_string(), RelayTally::default());
        }
        self.p.relays.entry(relay.to_string()).or_default()
    }

    /// A refusal by `relay`: its latest reply and its most frequent one.
    fn relay_refused(&mut self, relay: &str, reply: String) {
        let replies = match self.relay_replies.get_mut(relay) {
            Some(r) => r,
            None => self.relay_replies.entry(relay.to_string()).or_default(),
        };
        let n = if replies.len() < REPLY_KEYS || replies.contains_key(&reply) {
            let n = replies.entry(reply.clone()).or_default();
            *n += 1;
            Some(*n)
        } else {
            None
        };
        let r = self.relay(relay);
        if let Some(n) = n {
            match &mut r.top_reply {
                Some((text, top)) if *text == reply => *top = n,
                Some((_, top)) if n <= *top => {}
                _ => r.top_reply = Some((reply.clone(), n)),
            }
        }
        r.last_reply = Some(reply);
    }

    /// Folds one delivery event, with what the run recorded for it.
    pub fn apply(&mut self, ev: &DeliveryEvent, recorded: Recorded, at: UnixMillis) {
        let to = match recorded {
            Recorded::Sent => Some(Status::Sent),
            Recorded::Deferred => Some(Status::Deferred),
            Recorded::Failed => Some(Status::Failed),
            Recorded::Pending => Some(Status::Pending),
            Recorded::InDoubt => Some(Status::InDoubt),
            Recorded::Nothing => None,
        };
        if let Some(to) = to {
            self.shift(Status::Sending, to);
        }
        match ev {
            DeliveryEvent::Accepted {
                domain,
                relay,
                reply,
                ..
            } => {
                self.sent += 1;
                self.domain(domain, |c| c.sent += 1);
                let r = self.relay(relay);
                r.sent += 1;
                r.state = RelayState::Sending;
                r.last_reply = Some(reply.to_string());
            }
            DeliveryEvent::Rejected {
                failure,
                domain,
                attempt,
                relay,
                rcpt_to,
                ..
            }
            | DeliveryEvent::InDoubt {
                failure,
                domain,
                attempt,
                relay,
                rcpt_to,
                ..
            } => {
                let status = to.unwrap_or(Status::Failed);
                let attempts = attempt.before.saturating_add(1);
                self.failure(rcpt_to, status, failure, attempts, at);
                self.relay_refused(relay, reply_line(failure));
                let r = self.relay(relay);
                r.state = if failure.category == Category::Throttled {
                    RelayState::Throttled
                } else {
                    RelayState::Sending
                };
                match recorded {
                    Recorded::Deferred => {
                        r.deferred += 1;
                        self.p.retries += 1;
                        self.domain(domain, |c| c.deferred += 1);
                    }
                    Recorded::Failed => {
                        r.failed += 1;
                        self.domain(domain, |c| c.failed += 1);
                    }
                    _ => {}
                }
            }
            DeliveryEvent::Held { failure, relay, .. } => {
                self.relay_refused(relay, reply_line(failure));
                self.relay(relay).state = RelayState::Refusing;
            }
            DeliveryEvent::Returned { .. } => {}
            DeliveryEvent::Notice(n) => self.notice(n, at),
        }
    }

    /// Folds an engine notice: the event log, the rate, the run state.
    pub fn notice(&mut self, n: &Notice, at: UnixMillis) {
        match n {
            Notice::RateChanged { to, .. } => {
                self.p.effective_rate = to.is_finite().then_some(*to);
            }
            Notice::BreakerOpen { .. } => {
                self.outage = true;
                for r in self.p.relays.values_mut() {
                    if r.state != RelayState::Refusing {
                        r.state = RelayState::Outage;
                    }
                }
            }
            Notice::BreakerClosed => {
                self.outage = false;
                for r in self.p.relays.values_mut() {
                    if r.state == RelayState::Outage {
                        r.state = RelayState::Sending;
                    }
                }
            }
            Notice::Paused { .. } => self.paused = true,
            Notice::Resumed => self.paused = false,
            Notice::Stopping { .. } => self.stopping = true,
            Notice::ConnectionProblem { .. } => {}
            Notice::RelayDown { relay, failure } => {
                self.relay_refused(relay, reply_line(failure));
                self.relay(relay).state = RelayState::Down;
            }
            Notice::RelayUp { relay } => {
                let r = self.relay(relay);
                if r.state == RelayState::Down {
                    r.state = RelayState::Idle;
                }
            }
        }
        self.p.push_event(at, n.to_string(), EVENT_LINES);
    }

    /// Appends a line to the event log (what the run itself has to say).
    pub fn log(&mut self, at: UnixMillis, text: String) {
        self.p.push_event(at, text, EVENT_LINES);
    }

    /// The run is stopping (the operator asked, or it cannot go on).
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Nothing to send now, waiting for deferred recipients to come due (or not).
    pub fn set_waiting(&mut self, waiting: bool) {
        self.waiting = waiting;
    }

    /// The run is over.
    pub fn finish(&mut self) {
        self.done = true;
        self.p.in_flight = 0;
        for r in self.p.relays.values_mut() {
            r.in_flight = 0;
        }
    }

    /// The effective rate is below what the operator set: with several
    /// workers, below this worker's share of it (its share is no throttle).
    fn throttled(&self) -> bool {
        match (self.share, self.p.target_rate, self.p.effective_rate) {
            (Some(share), Some(target), Some(effective)) => {
                effective < target * share * (1.0 - 1e-6)
            }
            _ => self.p.effective_rate != self.p.target_rate,
        }
    }

    /// Accepted in this run (what the rate samples count).
    pub fn sent_in_run(&self) -> u64 {
        self.sent
    }

    /// Brings the derived fields up to `now`: one rate sample a second (the
    /// run's and each relay's), the busiest domains, the top replies and the
    /// run state. Called before a snapshot is published, not per event.
    pub fn sample(&mut self, now: UnixMillis) -> &Progress {
        self.p.now = now;
        match self.sampled {
            None => self.sampled = Some((now, self.sent)),
            Some((at, sent)) if now - at >= 1000 => {
                let secs = (now - at) as f64 / 1000.0;
                self.p
                    .rate_history
                    .push_back(self.sent.saturating_sub(sent) as f64 / secs);
                while self.p.rate_history.len() > RATE_SAMPLES {
                    self.p.rate_history.pop_front();
                }
                for (name, r) in self.p.relays.iter_mut() {
                    let before = self.relay_sampled.insert(name.clone(), r.sent).unwrap_or(0);
                    r.rate = r.sent.saturating_sub(before) as f64 / secs;
                }
                self.sampled = Some((now, self.sent));
            }
            Some(_) => {}
        }
        if !self.domains.is_empty() {
            let mut busiest: Vec<(&String, &DomainCounts)> = self.domains.iter().collect();
            busiest.sort_by(|a, b| {
                let total = |c: &DomainCounts| c.sent + c.failed + c.deferred;
                total(b.1).cmp(&total(a.1)).then_with(|| a.0.cmp(b.0))
            });
            self.p.domains = busiest
                .into_iter()
                .take(DOMAINS_SHOWN)
                .map(|(d, c)| (d.clone(), c.clone()))
                .collect();
        }
        if !self.replies.is_empty() {
            let mut top: Vec<(&ReplyKey, &u64)> = self.replies.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            self.p.top_replies = top
                .into_iter()
                .take(TOP_REPLIES)
                .map(|((code, enhanced, text), n)| (*code, enhanced.clone(), text.clone(), *n))
                .collect();
        }
        self.p.state = if self.done {
            RunState::Done
        } else if self.stopping {
            RunState::Stopping
        } else if self.paused {
            RunState::Paused
        } else if self.outage {
            RunState::Outage
        } else if self.throttled() {
            RunState::Throttled
        } else if self.waiting {
            RunState::WaitingForRetries
        } else {
            RunState::Running
        };
        &self.p
    }
}

/// What the run recorded for a [`DeliveryEvent`] (the retry policy decides a
/// rejection's fate, not the event): where the fold moves the recipient.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Accepted: `sent`.
    Sent,
    /// A retry was scheduled: `deferred`.
    Deferred,
    /// Failed for good: `failed`.
    Failed,
    /// Back to `pending` (a held refusal, an envelope never attempted).
    Pending,
    /// Left `in_doubt` (`--in-doubt skip`, or out of attempts).
    InDoubt,
    /// Nothing for a recipient (a notice).
    Nothing,
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

    /// Seconds until every recipient is final at the recent rate (the
    /// other workers' included, when several send the campaign), if it can
    /// be told.
    pub fn eta_secs(&self) -> Option<u64> {
        let left = self.total().saturating_sub(self.done());
        if left == 0 {
            return Some(0);
        }
        let rate = self.recent_rate(10) + self.others_rate;
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

    use crate::{RecipientId, Reply, Stage};

    fn attempt(retry: bool) -> Attempt {
        Attempt {
            before: u32::from(retry),
            first_at: Some(1),
            retry,
        }
    }

    fn accepted(i: i64, domain: &str, relay: &str) -> DeliveryEvent {
        DeliveryEvent::Accepted {
            id: RecipientId(i),
            reply: Reply {
                code: 250,
                enhanced: None,
                text: "ok".into(),
                provider_message_id: None,
                relay: None,
            },
            domain: domain.into(),
            message_id: format!("m{i}@edm"),
            attempt: attempt(false),
            relay: relay.into(),
        }
    }

    fn rejected(i: i64, category: Category, code: u16, text: &str, relay: &str) -> DeliveryEvent {
        DeliveryEvent::Rejected {
            id: RecipientId(i),
            failure: Failure {
                smtp_code: Some(code),
                ..Failure::local(Stage::RcptTo, category, text)
            },
            domain: "b.example".into(),
            attempt: attempt(false),
            relay: relay.into(),
            rcpt_to: format!("r{i}@b.example"),
        }
    }

    fn started(pending: u64, deferred: u64) -> ProgressFold {
        let mut f = ProgressFold::new(Progress::default());
        let counts = BTreeMap::from([(Status::Pending, pending), (Status::Deferred, deferred)]);
        f.start_from(&counts, &BTreeMap::new());
        f
    }

    #[test]
    fn a_rebase_takes_the_campaigns_counts_and_keeps_own_events_exact() {
        // 100 pending; this worker claims 4 and sends 2 of them.
        let mut f = started(100, 0);
        for _ in 0..4 {
            f.claimed(&attempt(false));
        }
        f.apply(&accepted(1, "a.example", "main"), Recorded::Sent, 10);
        f.apply(&accepted(2, "a.example", "main"), Recorded::Sent, 11);
        // A count asked now: the store has this worker's 2 sent and 2
        // sending, and another worker's 30 sent and 5 sending.
        let mark = f.store_mark(1_000);
        // Meanwhile (after the ask), one more of its own is accepted.
        f.apply(&accepted(3, "a.example", "main"), Recorded::Sent, 12);
        let store = BTreeMap::from([
            (Status::Pending, 61),
            (Status::Sending, 7),
            (Status::Sent, 32),
        ]);
        f.rebase(&mark, &store);
        let p = f.sample(2_000).clone();
        assert_eq!(
            p.count(Status::Sent),
            33,
            "the campaign's and its own since"
        );
        assert_eq!(p.count(Status::Sending), 6);
        assert_eq!(p.count(Status::Pending), 61);
        assert_eq!(p.total(), 100, "nobody appears or vanishes");
        // Its own events go on moving from there, exactly.
        f.apply(&accepted(4, "a.example", "main"), Recorded::Sent, 13);
        assert_eq!(f.progress().count(Status::Sent), 34);
        assert_eq!(f.progress().count(Status::Sending), 5);
        // The others' rate: 30 more of theirs in the 2 s to the next count.
        let mark = f.store_mark(3_000);
        let store = BTreeMap::from([
            (Status::Pending, 31),
            (Status::Sending, 5),
            (Status::Sent, 64),
        ]);
        f.rebase(&mark, &store);
        let p = f.sample(4_000).clone();
        assert_eq!(p.count(Status::Sent), 64);
        assert!((p.others_rate - 15.0).abs() < 1e-9, "{}", p.others_rate);
        // The ETA counts the others' rate: 36 left at 0 + 15 per second.
        assert_eq!(p.eta_secs(), Some(3));
    }

    #[test]
    fn a_workers_share_of_the_rate_is_not_a_throttle() {
        let mut f = started(10, 0);
        f.engine(Some(40.0), 0, &[]);
        let share = |f: &mut ProgressFold, to: f64| {
            let n = Notice::RateChanged {
                from: 40.0,
                to,
                cause: "share".into(),
            };
            f.notice(&n, 1);
        };
        share(&mut f, 20.0);
        assert_eq!(f.sample(1).state, RunState::Throttled, "one worker alone");
        f.set_share(0.5);
        assert_eq!(f.sample(2).state, RunState::Running, "its half of 40/s");
        share(&mut f, 10.0);
        assert_eq!(f.sample(3).state, RunState::Throttled, "below its half");
    }

    #[test]
    fn the_fold_moves_recipients_as_events_say() {
        let mut f = started(5, 1);
        for _ in 0..4 {
            f.claimed(&attempt(false));
        }
        f.claimed(&attempt(true));
        let p = f.progress();
        assert_eq!(
            (
                p.count(Status::Pending),
                p.count(Status::Deferred),
                p.count(Status::Sending)
            ),
            (1, 0, 5)
        );
        f.apply(&accepted(1, "a.example", "main"), Recorded::Sent, 10);
        f.apply(&accepted(2, "a.example", "main"), Recorded::Sent, 11);
        f.apply(
            &rejected(3, Category::Throttled, 421, "slow down", "main"),
            Recorded::Deferred,
            12,
        );
        f.apply(
            &rejected(4, Category::RecipientUnknown, 550, "no such user", "main"),
            Recorded::Failed,
            13,
        );
        f.apply(
            &DeliveryEvent::Returned { id: RecipientId(5) },
            Recorded::Pending,
            14,
        );
        let p = f.sample(2000).clone();
        assert_eq!(p.count(Status::Sent), 2);
        assert_eq!(p.count(Status::Failed), 1);
        assert_eq!(p.count(Status::Deferred), 1);
        assert_eq!(p.count(Status::Pending), 2);
        assert_eq!(p.count(Status::Sending), 0);
        assert_eq!(p.total(), 6, "nobody appears or vanishes");
        assert_eq!(p.retries, 1);
        assert_eq!(p.by_category.get(&Category::Throttled), Some(&1));
        assert_eq!(p.by_category.get(&Category::RecipientUnknown), Some(&1));
        assert_eq!(p.domains["a.example"].sent, 2);
        assert_eq!(
            (
                p.domains["b.example"].deferred,
                p.domains["b.example"].failed
            ),
            (1, 1)
        );
        assert_eq!(p.recent_failures.len(), 2);
        assert_eq!(p.recent_failures[1].email, "r4@b.example");
        assert_eq!(p.recent_failures[1].status, Status::Failed);
        assert_eq!(p.top_replies.len(), 2);
        assert_eq!(f.sent_in_run(), 2);
    }

    #[test]
    fn the_fold_keeps_a_tally_per_relay() {
        let mut f = started(10, 0);
        for _ in 0..10 {
            f.claimed(&attempt(false));
        }
        f.sample(0);
        for i in 0..3 {
            f.apply(&accepted(i, "a.example", "ses"), Recorded::Sent, 5);
        }
        f.apply(&accepted(3, "a.example", "smtp"), Recorded::Sent, 5);
        for i in 4..6 {
            f.apply(
                &rejected(i, Category::Policy, 554, "blocked", "smtp"),
                Recorded::Failed,
                6,
            );
        }
        f.apply(
            &rejected(6, Category::Throttled, 454, "Throttling", "ses"),
            Recorded::Deferred,
            7,
        );
        f.apply(
            &rejected(7, Category::OtherPermanent, 554, "odd", "smtp"),
            Recorded::Failed,
            8,
        );
        f.engine(None, 2, &[("ses".into(), 2)]);
        let p = f.sample(1000).clone();
        let ses = &p.relays["ses"];
        assert_eq!(
            (ses.sent, ses.failed, ses.deferred, ses.in_flight),
            (3, 0, 1, 2)
        );
        assert_eq!(ses.state, RelayState::Throttled);
        assert!((ses.rate - 3.0).abs() < 1e-9, "{}", ses.rate);
        let smtp = &p.relays["smtp"];
        assert_eq!(
            (smtp.sent, smtp.failed, smtp.deferred, smtp.in_flight),
            (1, 3, 0, 0)
        );
        assert_eq!(smtp.state, RelayState::Sending);
        let (top, n) = smtp.top_reply.clone().unwrap();
        assert!(top.contains("blocked"), "{top}");
        assert_eq!(n, 2);
        assert!(smtp.last_reply.as_deref().unwrap().contains("odd"));
        // A held refusal puts its relay out; an outage marks the others.
        f.apply(
            &DeliveryEvent::Held {
                id: RecipientId(8),
                failure: Failure::local(Stage::MailFrom, Category::SenderRefused, "553 no"),
                domain: "a.example".into(),
                attempt: attempt(false),
                relay: "smtp".into(),
                rcpt_to: "x@a.example".into(),
            },
            Recorded::Pending,
            9,
        );
        f.notice(
            &Notice::BreakerOpen {
                reason: "down".into(),
            },
            10,
        );
        let p = f.sample(1500);
        assert_eq!(p.relays["smtp"].state, RelayState::Refusing);
        assert_eq!(p.relays["ses"].state, RelayState::Outage);
        assert_eq!(p.state, RunState::Outage);
        assert_eq!(p.count(Status::Pending), 1);
    }

    #[test]
    fn notices_drive_the_run_state_and_rate() {
        let mut f = ProgressFold::new(Progress {
            target_rate: Some(10.0),
            effective_rate: Some(10.0),
            ..Progress::default()
        });
        assert_eq!(f.sample(0).state, RunState::Running);
        let slower = Notice::RateChanged {
            from: 10.0,
            to: 5.0,
            cause: "throttled".into(),
        };
        f.notice(&slower, 1);
        assert_eq!(f.sample(1).state, RunState::Throttled);
        assert_eq!(f.progress().effective_rate, Some(5.0));
        f.notice(
            &Notice::Paused {
                reason: "quota".into(),
            },
            2,
        );
        assert_eq!(f.sample(2).state, RunState::Paused);
        f.notice(&Notice::Resumed, 3);
        f.set_waiting(true);
        f.notice(
            &Notice::RateChanged {
                from: 5.0,
                to: 10.0,
                cause: "recovered".into(),
            },
            4,
        );
        assert_eq!(f.sample(4).state, RunState::WaitingForRetries);
        f.stop();
        assert_eq!(f.sample(5).state, RunState::Stopping);
        f.finish();
        assert_eq!(f.sample(6).state, RunState::Done);
        assert_eq!(f.progress().events.len(), 4);
    }

    #[test]
    fn distinct_replies_are_bounded() {
        let mut f = started(3000, 0);
        for i in 0..3000 {
            f.claimed(&attempt(false));
            let text = format!("550 <r{i}@b.example> unknown");
            f.apply(
                &rejected(i, Category::RecipientUnknown, 550, &text, "main"),
                Recorded::Failed,
                i,
            );
        }
        let p = f.sample(1);
        assert_eq!(p.count(Status::Failed), 3000);
        assert_eq!(p.top_replies.len(), TOP_REPLIES);
        assert_eq!(p.recent_failures.len(), RECENT_FAILURES);
        assert_eq!(p.relays["main"].failed, 3000);
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
