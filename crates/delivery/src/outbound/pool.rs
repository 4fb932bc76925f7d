//! A pool of relays as one [`Transport`] (issue 12 point 4).
//!
//! The engine sees one transport; each message is handed to a member picked
//! by weight (smooth weighted round robin, as nginx's upstream balancer)
//! among the members that are in service and have room *now*: a free
//! connection slot (its `concurrency`), a token of its own rate gate, and
//! what is left of its daily quota. A member without room is skipped for
//! that pick, so its excess goes to the others; the shares follow the
//! weights whenever every member has room.
//!
//! A member is taken out for the rest of the run (a [`Notice::RelayDown`],
//! its traffic moving to the others) when its credentials or its sender are
//! refused (a failure that would stop a run of its own:
//! [`Failure::stops_run`]), when it cannot be reached [`DOWN_AFTER`] times in
//! a row, or when its daily quota is used up. The message it refused that way
//! was not accepted, so it goes to another member at once, without an attempt
//! counted; a message past its final dot without a reply stays in doubt
//! (reported as such, never resent here). Only when no member is left does
//! the pool answer with a refusal that stops the run (exit 2, nobody failed).
//!
//! Member connections are pooled per member (at most its `concurrency`,
//! reused across the engine's workers), so an SMTP session is not set up
//! again for each message.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use edm_model::{Category, DeliveryEvent, Envelope, Failure, Notice, Reply, Stage};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::queue::rate::RateGate;
use crate::transport::{Afterwards, BoxFuture, Connection, Transport};

/// Failures in a row to reach a member (opening a connection, or losing one
/// before the final dot) that take it out of the pool: the same count as the
/// engine's fail-fast rule for a single relay (docs/failures.md).
pub const DOWN_AFTER: u32 = 3;

/// One member of a pool, as configured (`[[relay]]`).
pub struct PoolMember {
    /// `[[relay]] name`: written in each recipient's `relay` column.
    pub name: String,
    /// How to reach it.
    pub transport: Arc<dyn Transport>,
    /// Its share of the traffic, relative to the others' (> 0).
    pub weight: f64,
    /// Its own rate (messages per second; `None`: only the run's).
    pub rate: Option<f64>,
    /// Messages allowed back to back on its rate gate after an idle moment.
    pub burst: u32,
    /// Connections (transactions in flight) to it.
    pub concurrency: usize,
    /// Messages it may accept in 24 hours (`None`: no limit).
    pub daily_quota: Option<u64>,
    /// Messages it accepted in the 24 hours before this run.
    pub sent_today: u64,
}

impl PoolMember {
    /// A member with weight 1, no rate or quota of its own, and the default
    /// concurrency.
    pub fn new(name: impl Into<String>, transport: Arc<dyn Transport>) -> PoolMember {
        PoolMember {
            name: name.into(),
            transport,
            weight: 1.0,
            rate: None,
            burst: crate::defaults::BURST,
            concurrency: crate::defaults::CONCURRENCY,
            daily_quota: None,
            sent_today: 0,
        }
    }
}

#[derive(Default)]
struct Health {
    /// Why it was taken out, once it is.
    down: Option<Failure>,
    /// Failures to reach it in a row.
    failures: u32,
    /// Not picked before this instant (backoff after a failure, a quota pause).
    not_before: Option<Instant>,
    /// The last permanent refusal not about a recipient ([`Failure::refusal_key`])
    /// and how many times in a row it came.
    refusal_key: String,
    refusals: u32,
}

struct Member {
    name: String,
    transport: Arc<dyn Transport>,
    weight: f64,
    gate: RateGate,
    /// The configured rate and burst, before any share (several workers).
    rate: Option<f64>,
    burst: u32,
    slots: Arc<Semaphore>,
    concurrency: usize,
    idle: Mutex<Vec<Box<dyn Connection>>>,
    quota: Option<u64>,
    /// Accepted in the last 24 hours (before and during this run).
    accepted: AtomicU64,
    health: Mutex<Health>,
}

impl Member {
    fn quota_used(&self, in_flight: u64) -> bool {
        self.quota
            .is_some_and(|q| self.accepted.load(Ordering::SeqCst) + in_flight >= q)
    }

    fn in_flight(&self) -> u64 {
        (self.concurrency - self.slots.available_permits().min(self.concurrency)) as u64
    }
}

/// Several transports as one, each message to one member (see the module
/// documentation).
pub struct PoolTransport {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<Member>,
    /// Smooth weighted round robin: each member's current weight.
    current: Mutex<Vec<f64>>,
    /// A slot given back, a member taken out: waiting picks look again.
    changed: Notify,
    events: OnceLock<mpsc::Sender<DeliveryEvent>>,
    /// How long a member rests when it says its quota is used up and does
    /// not say for how long.
    quota_pause: Duration,
    /// Pool connections open (the engine's workers).
    handles: AtomicUsize,
    /// The same refusal this many times in a row takes a member out (0: never).
    refusal_limit: u32,
}

/// A member's connection slot, held for one transaction; giving it back
/// wakes the picks waiting for room.
struct Slot {
    _permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.changed.notify_waiters();
    }
}

enum Pick {
    Member(usize, Slot),
    /// Nobody has room now: look again when something changes or at this
    /// instant (a rate token, the end of a backoff).
    Wait(Option<Instant>),
    /// Every member is out.
    NoneLeft,
}

impl PoolTransport {
    /// A pool of `members` (at least one; names unique, checked by the
    /// configuration). `quota_pause` as `[delivery] quota_pause`.
    pub fn new(members: Vec<PoolMember>, quota_pause: Duration) -> PoolTransport {
        let members: Vec<Member> = members
            .into_iter()
            .map(|m| Member {
                gate: RateGate::new(m.rate, m.burst),
                rate: m.rate,
                burst: m.burst,
                slots: Arc::new(Semaphore::new(m.concurrency.max(1))),
                concurrency: m.concurrency.max(1),
                idle: Mutex::new(Vec::new()),
                quota: m.daily_quota,
                accepted: AtomicU64::new(m.sent_today),
                // Used up in the last 24 hours already: out from the start.
                health: Mutex::new(Health {
                    down: m
                        .daily_quota
                        .filter(|q| m.sent_today >= *q)
                        .map(quota_used_up),
                    ..Health::default()
                }),
                name: m.name,
                transport: m.transport,
                weight: if m.weight.is_finite() && m.weight > 0.0 {
                    m.weight
                } else {
                    1.0
                },
            })
            .collect();
        let current = Mutex::new(vec![0.0; members.len()]);
        PoolTransport {
            inner: Arc::new(Inner {
                members,
                current,
                changed: Notify::new(),
                events: OnceLock::new(),
                quota_pause,
                handles: AtomicUsize::new(0),
                refusal_limit: crate::defaults::STOP_AFTER_IDENTICAL_REFUSALS,
            }),
        }
    }

    /// The same permanent refusal (not about a recipient) for this many
    /// different recipients in a row takes a member out (0: never);
    /// `[delivery] stop_after_identical_refusals`, per member.
    pub fn with_refusal_limit(mut self, limit: u32) -> PoolTransport {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.refusal_limit = limit;
        }
        self
    }

    /// The sum of the members' concurrency: the engine's worker count, so
    /// that every member can be kept busy at once.
    pub fn concurrency(&self) -> usize {
        self.inner.members.iter().map(|m| m.concurrency).sum()
    }

    /// The members taken out so far, with why.
    pub fn down(&self) -> Vec<(String, Failure)> {
        self.inner
            .members
            .iter()
            .filter_map(|m| {
                let h = m.health.lock().ok()?;
                Some((m.name.clone(), h.down.clone()?))
            })
            .collect()
    }
}

impl Inner {
    async fn emit(&self, n: Notice) {
        if let Some(tx) = self.events.get() {
            // The receiver lives as long as the run.
            let _ = tx.send(DeliveryEvent::Notice(n)).await;
        }
    }

    /// The next member for one message (see [`Pick`]). Takes the member's
    /// slot and a token of its rate gate when it answers a member.
    /// Members marked in `skip` (they refused this message) are not picked.
    fn pick(self: &Arc<Self>, skip: &[bool]) -> Pick {
        let now = Instant::now();
        let n = self.members.len();
        let mut out = vec![false; n];
        let mut wake: Option<Instant> = None;
        let mut any_up = false;
        for (i, m) in self.members.iter().enumerate() {
            let Ok(h) = m.health.lock() else {
                out[i] = true;
                continue;
            };
            if h.down.is_some() || skip.get(i).copied().unwrap_or(false) {
                out[i] = true;
                continue;
            }
            any_up = true;
            if let Some(t) = h.not_before
                && t > now
            {
                out[i] = true;
                wake = Some(wake.map_or(t, |w| w.min(t)));
                continue;
            }
            if m.slots.available_permits() == 0 || m.quota_used(m.in_flight()) {
                out[i] = true;
            }
        }
        if !any_up {
            return Pick::NoneLeft;
        }
        let Ok(mut cur) = self.current.lock() else {
            return Pick::Wait(wake);
        };
        loop {
            let eligible: Vec<usize> = (0..n).filter(|i| !out[*i]).collect();
            if eligible.is_empty() {
                return Pick::Wait(wake);
            }
            let before = cur.clone();
            let total: f64 = eligible.iter().map(|i| self.members[*i].weight).sum();
            let mut best = eligible[0];
            for &i in &eligible {
                cur[i] += self.members[i].weight;
                if cur[i] > cur[best] {
                    best = i;
                }
            }
            let m = &self.members[best];
            let Ok(permit) = m.slots.clone().try_acquire_owned() else {
                *cur = before;
                out[best] = true;
                continue;
            };
            match m.gate.try_acquire_or_wait() {
                Ok(()) => {
                    cur[best] -= total;
                    return Pick::Member(
                        best,
                        Slot {
                            _permit: permit,
                            inner: self.clone(),
                        },
                    );
                }
                Err(d) => {
                    // Its rate is used up for now: the others take this one.
                    *cur = before;
                    out[best] = true;
                    let t = now + d;
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                }
            }
        }
    }

    /// Waits for a member with room; `None` when every member is out.
    async fn next_member(self: &Arc<Self>, skip: &[bool]) -> Option<(usize, Slot)> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a slot given back meanwhile wakes us.
            changed.as_mut().enable();
            match self.pick(skip) {
                Pick::Member(i, slot) => return Some((i, slot)),
                Pick::NoneLeft => return None,
                Pick::Wait(Some(at)) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Pick::Wait(None) => changed.await,
            }
        }
    }

    /// Takes a member out of the pool, once, and says so.
    async fn take_out(&self, i: usize, failure: Failure) {
        let m = &self.members[i];
        let first = m
            .health
            .lock()
            .map(|mut h| {
                let first = h.down.is_none();
                h.down.get_or_insert(failure.clone());
                first
            })
            .unwrap_or(false);
        if !first {
            return;
        }
        tracing::error!(relay = %m.name, failure = %failure, "relay taken out of the pool");
        let idle = m
            .idle
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        self.changed.notify_waiters();
        self.emit(Notice::RelayDown {
            relay: m.name.clone(),
            failure,
        })
        .await;
        for c in idle {
            c.close().await;
        }
    }

    /// A failure to reach member `i`: it rests (0.5 s doubling), and is taken
    /// out after [`DOWN_AFTER`] in a row.
    async fn unreachable(&self, i: usize, failure: &Failure) {
        let m = &self.members[i];
        tracing::warn!(relay = %m.name, failure = %failure, "cannot reach a relay of the pool");
        let out = m
            .health
            .lock()
            .map(|mut h| {
                let now = Instant::now();
                if h.not_before.is_some_and(|t| now < t) {
                    // Tried at the same moment as the failure that started
                    // this rest (another worker's): the same failure, not
                    // another one in a row, so a blip is not an outage.
                    return false;
                }
                h.failures = h.failures.saturating_add(1);
                let rest = Duration::from_millis(500)
                    .saturating_mul(1u32 << h.failures.saturating_sub(1).min(6));
                h.not_before = Some(now + rest);
                h.failures >= DOWN_AFTER
            })
            .unwrap_or(true);
        let mut shown = failure.clone();
        shown.reply = format!("relay {:?}: {}", m.name, failure.reply);
        self.emit(Notice::ConnectionProblem { failure: shown })
            .await;
        if out {
            self.take_out(i, failure.clone()).await;
        }
    }

    /// Keeps a usable connection of member `i` for the next message, unless
    /// the member was taken out meanwhile (then it is dropped).
    fn give_back(&self, i: usize, conn: Box<dyn Connection>) {
        let m = &self.members[i];
        let down = m.health.lock().map(|h| h.down.is_some()).unwrap_or(true);
        if !down && let Ok(mut v) = m.idle.lock() {
            v.push(conn);
        }
    }

    /// Member `i` answered: it is reachable.
    fn answered(&self, i: usize) {
        if let Ok(mut h) = self.members[i].health.lock() {
            h.failures = 0;
        }
    }

    /// Member `i` accepted a message: a row of identical refusals is broken.
    fn accepted(&self, i: usize) {
        if let Ok(mut h) = self.members[i].health.lock() {
            h.failures = 0;
            h.refusals = 0;
            h.refusal_key.clear();
        }
    }

    /// Member `i` refused a message with a permanent refusal that is not
    /// about the recipient: true when it is the same refusal for
    /// `refusal_limit` different recipients in a row, the member's own
    /// `stop_after_identical_refusals` (docs/failures.md).
    fn refused(&self, i: usize, key: String) -> bool {
        let Ok(mut h) = self.members[i].health.lock() else {
            return false;
        };
        if h.refusal_key == key {
            h.refusals = h.refusals.saturating_add(1);
        } else {
            h.refusal_key = key;
            h.refusals = 1;
        }
        self.refusal_limit > 0 && h.refusals >= self.refusal_limit
    }

    /// The refusal that stops the run once no member is left: permanent and
    /// about the sender's side, never a recipient's (so the engine holds the
    /// recipient back, pending, instead of failing it).
    fn none_left(&self) -> Failure {
        let down: Vec<(String, Failure)> = self
            .members
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.health.lock().ok()?.down.clone()?)))
            .collect();
        let reasons = down
            .iter()
            .map(|(n, f)| format!("{n:?}: {}: {}", f.category, f.reply))
            .collect::<Vec<_>>()
            .join("; ");
        let last = down
            .iter()
            .rev()
            .find(|(_, f)| f.stops_run())
            .or(down.last())
            .map(|(_, f)| f.clone());
        let (stage, category, smtp_code, enhanced_code) = match last {
            // A refusal that stops a run of its own keeps its stage.
            Some(f) if f.stops_run() => (f.stage, f.category, f.smtp_code, f.enhanced_code),
            // Unreachable or out of quota: reported at MAIL FROM, the stage
            // whose permanent refusal is the sender's side for everyone
            // (`Failure::stops_run`), so nobody is failed because of it.
            Some(f) if !f.category.is_recipient_specific() => {
                (Stage::MailFrom, f.category, f.smtp_code, f.enhanced_code)
            }
            _ => (Stage::MailFrom, Category::OtherPermanent, None, None),
        };
        Failure {
            stage,
            category,
            smtp_code,
            enhanced_code,
            reply: format!("no relay left in the pool: {reasons}"),
            permanent: true,
            retry_after: None,
        }
    }

    /// Closes every idle member connection (the last pool connection closed).
    async fn close_idle(&self) {
        for m in &self.members {
            let idle = m
                .idle
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default();
            for c in idle {
                c.close().await;
            }
        }
    }
}

impl Transport for PoolTransport {
    fn describe(&self) -> String {
        let members: Vec<String> = self
            .inner
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.transport.describe()))
            .collect();
        format!("pool({})", members.join(", "))
    }

    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
        // Member connections are opened per message, on the member picked:
        // a pool connection is a handle.
        self.inner.handles.fetch_add(1, Ordering::SeqCst);
        let c = PoolConnection {
            inner: self.inner.clone(),
            last: None,
        };
        Box::pin(async move { Ok(Box::new(c) as Box<dyn Connection>) })
    }

    /// Each member's rate and burst at this worker's share (several workers
    /// sending one campaign through the same relays).
    fn set_share(&self, share: f64) {
        for m in &self.inner.members {
            if let Some(rate) = m.rate {
                m.gate
                    .set_burst(((f64::from(m.burst) * share).round() as u32).max(1));
                m.gate.set_rate(Some(rate * share));
            }
        }
    }

    fn attach(&self, events: mpsc::Sender<DeliveryEvent>) {
        for m in &self.inner.members {
            // Said at the start of each run, so that `edm status` can tell
            // the last run's states from the recorded events.
            let down = m.health.lock().ok().and_then(|h| h.down.clone());
            let _ = events.try_send(DeliveryEvent::Notice(match down {
                Some(failure) => Notice::RelayDown {
                    relay: m.name.clone(),
                    failure,
                },
                None => Notice::RelayUp {
                    relay: m.name.clone(),
                },
            }));
            m.transport.attach(events.clone());
        }
        let _ = self.inner.events.set(events);
    }
}

/// Why a member whose `daily_quota` is used up is out.
fn quota_used_up(quota: u64) -> Failure {
    Failure::local(
        Stage::MailFrom,
        Category::QuotaExceeded,
        format!("its daily_quota of {quota} messages is used up"),
    )
}

/// One engine worker's handle on the pool.
struct PoolConnection {
    inner: Arc<Inner>,
    /// The member the last message went to (events name it): an index, so
    /// naming it costs no allocation per message.
    last: Option<usize>,
}

impl Drop for PoolConnection {
    fn drop(&mut self) {
        self.inner.handles.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The store's mark before the final dot, awaited at most once whichever
/// member the message ends up on.
struct Mark<'a> {
    fut: Option<BoxFuture<'a, Result<(), String>>>,
    done: Option<Result<(), String>>,
}

impl PoolConnection {
    async fn send_pooled(
        &mut self,
        env: &Envelope,
        before_dot: BoxFuture<'_, Result<(), String>>,
    ) -> Result<Reply, (Failure, Afterwards)> {
        let inner = self.inner.clone();
        let mark = tokio::sync::Mutex::new(Mark {
            fut: Some(before_dot),
            done: None,
        });
        // Members that refused this message (permanently, not about the
        // recipient): it is offered to each other member once before it is
        // the recipient's failure.
        let mut refused_by = vec![false; inner.members.len()];
        let mut refusal: Option<Failure> = None;
        loop {
            let Some((i, slot)) = inner.next_member(&refused_by).await else {
                return Err(match refusal {
                    Some(f) => (f, Afterwards::Usable),
                    None => (inner.none_left(), Afterwards::Usable),
                });
            };
            let m = &inner.members[i];
            self.last = Some(i);
            let idle = m.idle.lock().ok().and_then(|mut v| v.pop());
            let mut conn = match idle {
                Some(c) => c,
                None => match m.transport.open().await {
                    Ok(c) => c,
                    Err(f) => {
                        drop(slot);
                        if f.stops_run() || (f.category == Category::Auth && f.permanent) {
                            inner.take_out(i, f).await;
                        } else {
                            inner.unreachable(i, &f).await;
                        }
                        continue;
                    }
                },
            };
            let this_try: BoxFuture<'_, Result<(), String>> = Box::pin(async {
                let mut g = mark.lock().await;
                if let Some(r) = &g.done {
                    return r.clone();
                }
                let r = match g.fut.take() {
                    Some(f) => f.await,
                    None => Err("the durable mark was lost".to_string()),
                };
                g.done = Some(r.clone());
                r
            });
            let result = conn.send(env, this_try).await;
            match result {
                Ok(mut reply) => {
                    inner.accepted(i);
                    inner.give_back(i, conn);
                    let accepted = m.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    drop(slot);
                    reply.relay = Some(m.name.clone());
                    if let Some(q) = m.quota
                        && accepted >= q
                    {
                        inner.take_out(i, quota_used_up(q)).await;
                    }
                    return Ok(reply);
                }
                Err((f, after)) => {
                    if after == Afterwards::Usable {
                        inner.give_back(i, conn);
                    } else {
                        drop(conn);
                    }
                    drop(slot);
                    if after == Afterwards::InDoubt {
                        // Past the final dot: it may have been accepted, so
                        // it is never resent here (the in-doubt rules).
                        if f.category.trips_breaker() {
                            inner.unreachable(i, &f).await;
                        }
                        return Err((f, Afterwards::InDoubt));
                    }
                    if f.stops_run() || (f.category == Category::Auth && f.permanent) {
                        // Refused for everyone on this member: out of the
                        // pool, and this message to another one at once.
                        inner.take_out(i, f).await;
                        continue;
                    }
                    if f.category == Category::QuotaExceeded {
                        let rest = f.retry_after.unwrap_or(inner.quota_pause);
                        tracing::warn!(relay = %m.name, failure = %f, "a relay of the pool says its quota is used up; it rests {}s", rest.as_secs());
                        if let Ok(mut h) = m.health.lock() {
                            h.not_before = Some(Instant::now() + rest);
                        }
                        continue;
                    }
                    if after == Afterwards::Broken && f.category.trips_breaker() {
                        // The member failed, not the recipient, and nothing
                        // was accepted: another member takes it.
                        inner.unreachable(i, &f).await;
                        continue;
                    }
                    inner.answered(i);
                    if f.permanent && f.counts_as_identical_refusal() {
                        // Maybe this relay's problem (its reputation, its
                        // policy), not the message's: another relay tries
                        // it at once, and a relay refusing everyone this
                        // way leaves the pool (issue 10 point 8, per relay).
                        if inner.refused(i, f.refusal_key(&env.rcpt_to, &env.mail_from)) {
                            inner.take_out(i, f.clone()).await;
                        }
                        refused_by[i] = true;
                        refusal = Some(f);
                        continue;
                    }
                    // About this recipient: the engine decides (retry,
                    // failed). The pool connection itself stays usable.
                    return Err((f, Afterwards::Usable));
                }
            }
        }
    }
}

impl Connection for PoolConnection {
    fn relay(&self) -> Option<&str> {
        self.last.map(|i| self.inner.members[i].name.as_str())
    }

    fn send<'a>(
        &'a mut self,
        env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
        Box::pin(self.send_pooled(env, before_dot))
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        drop(self);
        Box::pin(async move {
            if inner.handles.load(Ordering::SeqCst) == 0 {
                inner.close_idle().await;
            }
        })
    }
}

#[cfg(test)]
mod tests;
