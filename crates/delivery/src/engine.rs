//! The engine: `concurrency` workers (`worker.rs`), each holding one
//! long-lived connection of the [`Transport`], take envelopes from the one
//! dispatcher (the `run` loop here, its state in `dispatcher.rs`) and report
//! every outcome as a [`DeliveryEvent`]. Shared by all workers: the global
//! rate gate (exact, adaptive), per-domain gates, the circuit breaker, pause
//! and stop. The engine's configuration ([`DeliveryConfig`]) is
//! transport-neutral: the relay's own settings live with its transport.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::defaults;
use crate::dispatcher::{Ask, Dispatcher, DomainGate};
use crate::outbound::session::SmtpSettings;
use crate::outbound::smtp::SmtpTransport;
use crate::queue::adaptive::{Aimd, AimdSettings};
use crate::queue::breaker::{Breaker, Trip};
use crate::queue::rate::RateGate;
use crate::transport::{Marker, Transport};
use crate::worker::worker;
use edm_model::{
    Attempt, Category, Control, DeliveryEvent, Envelope, Failure, Notice, RecipientId,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A map keyed by an id the program made (a task's, a recipient's row id):
/// the ids are not chosen by anyone who could collide them on purpose, so
/// SipHash's protection is not needed, and its ~400 instructions per
/// lookup were paid four times per message (issue 11).
pub type IdHashMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdHashMap`]: one multiplication per integer written
/// (Fibonacci hashing; the high bits, which hashbrown uses, spread
/// consecutive ids).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

/// How many of the instants fall in the observation window ending at `now`.
fn in_window(times: &std::collections::VecDeque<Instant>, now: Instant) -> usize {
    times
        .iter()
        .filter(|t| now.duration_since(**t) <= OBSERVE_WINDOW)
        .count()
}

/// The share of recent transactions throttled that makes the rate go down.
pub(crate) const THROTTLE_SHARE: f64 = 0.1;

/// The window over which the observed rate is measured.
const OBSERVE_WINDOW: Duration = Duration::from_secs(2);

/// Limits for one recipient domain.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainLimit {
    /// Messages per second to this domain.
    pub rate: Option<f64>,
    /// Transactions in flight to this domain.
    pub concurrency: Option<usize>,
}

/// Everything the engine needs, whatever the transport: where messages go
/// is the [`Transport`]'s business (SMTP's settings are [`SmtpSettings`],
/// given to [`start`] or to [`SmtpTransport::new`]).
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The relay's name as the operator knows it (`[[relay]] name`), put in
    /// every event and kept with each sent recipient. Empty: the transport's
    /// [`Transport::describe`]. A pool's connections name their member
    /// ([`Connection::relay`](crate::Connection::relay)).
    pub relay: String,
    /// Connections (workers).
    pub concurrency: usize,
    /// Global messages per second (`None`: unlimited).
    pub rate: Option<f64>,
    /// Messages allowed back to back after an idle moment (1 = strictly spaced).
    pub burst: u32,
    /// Per-domain limits, by lower-cased domain.
    pub domains: HashMap<String, DomainLimit>,
    /// Adaptive slow-down tuning.
    pub aimd: AimdSettings,
    /// Consecutive connection failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long an outage may last before the run gives up.
    pub max_outage: Duration,
    /// How long to pause when the provider says a quota is used up and does
    /// not say for how long.
    pub quota_pause: Duration,
    /// Stop the run when this many different recipients in a row get the same
    /// permanent refusal (0: never). See [`Failure::refusal_key`].
    pub stop_after_identical_refusals: u32,
    /// Before any session has worked, this many failed attempts to open one
    /// ([`Category::fails_fast`]) end the run...
    pub fail_fast_attempts: u32,
    /// ...or this long without a session, whichever comes first.
    pub fail_fast_within: Duration,
    /// Test hook: a worker panics when it takes the envelope for this
    /// address (tests of the panic path). Never set outside tests.
    #[doc(hidden)]
    pub panic_on_rcpt: Option<String>,
    /// The store's durable per-transaction mark, committed before each
    /// final dot (`None`: no mark, as in test sends).
    pub marker: Option<Arc<dyn Marker>>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig::new()
    }
}

impl DeliveryConfig {
    /// The defaults (`defaults.rs`, shared with `campaign.toml`).
    pub fn new() -> DeliveryConfig {
        DeliveryConfig {
            relay: String::new(),
            concurrency: defaults::CONCURRENCY,
            rate: None,
            burst: defaults::BURST,
            domains: HashMap::new(),
            aimd: AimdSettings::default(),
            breaker_threshold: defaults::BREAKER_THRESHOLD,
            max_outage: defaults::MAX_OUTAGE,
            quota_pause: defaults::QUOTA_PAUSE,
            stop_after_identical_refusals: defaults::STOP_AFTER_IDENTICAL_REFUSALS,
            fail_fast_attempts: defaults::FAIL_FAST_ATTEMPTS,
            fail_fast_within: defaults::FAIL_FAST_WITHIN,
            panic_on_rcpt: None,
            marker: None,
        }
    }
}

/// Why the engine ended.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEnd {
    /// The job queue closed and everything was attempted.
    Drained,
    /// Stopped by [`Control::Stop`]; unattempted envelopes were returned.
    Stopped,
    /// Authentication was refused: nothing more can be sent.
    AuthRefused(Failure),
    /// The server stayed unreachable for longer than `max_outage`.
    Outage(Failure),
    /// No session could be opened before the first one worked: a wrong host
    /// or port, no route, a name that does not resolve, an untrusted
    /// certificate. Nothing was attempted.
    Unreachable {
        /// `host:port` of the relay.
        relay: String,
        /// The last failure.
        failure: Failure,
    },
    /// The relay refused in a way that would hit every message; the
    /// recipients refused that way were returned as [`DeliveryEvent::Held`].
    Refused(Failure),
    /// A panic in the engine (a bug): the run stops, envelopes go back.
    Crashed(String),
    /// The durable mark before a final dot could not be written: the run
    /// stops; that message was not sent.
    MarkFailed(String),
}

/// A live view of the engine, for progress displays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStatus {
    /// Configured rate.
    pub target_rate: Option<f64>,
    /// Rate in force after throttling.
    pub effective_rate: Option<f64>,
    /// Transactions in progress.
    pub in_flight: u64,
    /// Paused by the operator or a quota.
    pub paused: bool,
    /// The breaker is open.
    pub outage: bool,
    /// Connections currently open.
    pub connections: u64,
    /// Transactions in progress per relay (by name), for a row per relay.
    pub in_flight_by_relay: Vec<(String, u64)>,
}

/// Errors starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS could not be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// A running engine.
pub struct Engine {
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<EngineStatus>,
    join: tokio::task::JoinHandle<EngineEnd>,
}

impl Engine {
    /// Sends a control message (pause, resume, rate, stop).
    pub fn control(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// A sender for control messages, for other tasks.
    pub fn controller(&self) -> mpsc::UnboundedSender<Control> {
        self.control.clone()
    }

    /// The live status.
    pub fn status(&self) -> watch::Receiver<EngineStatus> {
        self.status.clone()
    }

    /// Waits for the engine to end.
    pub async fn join(self) -> EngineEnd {
        match self.join.await {
            Ok(end) => end,
            // A panic in the dispatcher is a bug: the run stops, nobody failed.
            Err(e) => EngineEnd::Crashed(format!("the delivery engine crashed: {}", panic_text(e))),
        }
    }
}

/// The message of a task's panic.
fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

/// The same permanent refusal for different recipients in a row; its
/// envelopes are held back (not reported) until the streak breaks or stops
/// the run, so none is recorded failed for a refusal that stops the run.
#[derive(Default)]
pub(crate) struct Streak {
    key: String,
    rcpts: std::collections::HashSet<String>,
    held: Vec<(About, Failure)>,
    updated: Option<Instant>,
}

/// What every event about an envelope carries besides its outcome, taken
/// from the envelope once it has been sent (moved, not copied).
pub(crate) struct About {
    pub(crate) id: RecipientId,
    pub(crate) domain: String,
    pub(crate) attempt: Attempt,
    pub(crate) relay: String,
    pub(crate) rcpt_to: String,
}

impl About {
    /// Takes the envelope apart: `About` and its Message-ID.
    pub(crate) fn of(env: Envelope, relay: String) -> (About, String) {
        let about = About {
            id: env.id,
            domain: env.domain,
            attempt: env.attempt,
            relay,
            rcpt_to: env.rcpt_to,
        };
        (about, env.message_id)
    }

    pub(crate) fn accepted(self, reply: edm_model::Reply, message_id: String) -> DeliveryEvent {
        DeliveryEvent::Accepted {
            id: self.id,
            reply,
            domain: self.domain,
            message_id,
            attempt: self.attempt,
            relay: self.relay,
        }
    }

    pub(crate) fn rejected(self, failure: Failure) -> DeliveryEvent {
        DeliveryEvent::Rejected {
            id: self.id,
            failure,
            domain: self.domain,
            attempt: self.attempt,
            relay: self.relay,
            rcpt_to: self.rcpt_to,
        }
    }

    pub(crate) fn held(self, failure: Failure) -> DeliveryEvent {
        DeliveryEvent::Held {
            id: self.id,
            failure,
            domain: self.domain,
            attempt: self.attempt,
            relay: self.relay,
            rcpt_to: self.rcpt_to,
        }
    }

    pub(crate) fn in_doubt(self, failure: Failure) -> DeliveryEvent {
        DeliveryEvent::InDoubt {
            id: self.id,
            failure,
            domain: self.domain,
            attempt: self.attempt,
            relay: self.relay,
            rcpt_to: self.rcpt_to,
        }
    }
}

/// Connection failures before any session worked in this run.
#[derive(Default)]
pub(crate) struct Early {
    pub(crate) first_attempt: Option<Instant>,
    failures: u32,
    last: Option<Failure>,
}

/// How long a streak's held envelopes wait, once every worker is idle,
/// before they are reported anyway (a streak that stops growing with nothing
/// left to send is not a refusal of everything).
const STREAK_FLUSH: Duration = Duration::from_secs(2);

pub(crate) struct Shared {
    /// The relay's name for events: `cfg.relay`, or the transport's description.
    pub(crate) relay_name: String,
    /// Transactions in progress per relay name (few relays: a short list).
    pub(crate) by_relay: Mutex<Vec<(String, u64)>>,
    pub(crate) cfg: DeliveryConfig,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) gate: RateGate,
    pub(crate) aimd: Mutex<Aimd>,
    pub(crate) breaker: Mutex<Breaker>,
    /// Workers ask the dispatcher (the `run` loop) for their next job here.
    pub(crate) want: mpsc::UnboundedSender<Ask>,
    pub(crate) events: mpsc::Sender<DeliveryEvent>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) paused: watch::Sender<bool>,
    pub(crate) paused_until: Mutex<Option<Instant>>,
    pub(crate) end: Mutex<Option<EngineEnd>>,
    pub(crate) in_flight: AtomicU64,
    pub(crate) connections: AtomicU64,
    /// When recent transactions finished (any outcome), for the observed rate.
    pub(crate) completions: Mutex<std::collections::VecDeque<Instant>>,
    /// When recent throttling replies came, over the same window.
    pub(crate) throttles: Mutex<std::collections::VecDeque<Instant>>,
    pub(crate) started: Instant,
    /// A session has worked in this run: from now on an outage is waited
    /// out (`max_outage`) instead of ending the run fast.
    pub(crate) worked: std::sync::atomic::AtomicBool,
    pub(crate) early: Mutex<Early>,
    pub(crate) streak: Mutex<Streak>,
    /// The refusal that stopped the run: in-flight transactions refused the
    /// same way are held too.
    pub(crate) stopped_by: Mutex<Option<String>>,
    /// The envelope each worker task holds, so a panicking worker's envelope
    /// goes back to pending.
    pub(crate) holding: Mutex<IdHashMap<tokio::task::Id, edm_model::RecipientId>>,
    /// This worker's share of the campaign's limits ([`Control::SetShare`]),
    /// as `f64` bits: 1.0 unless several workers share the campaign.
    pub(crate) share: AtomicU64,
}

impl Shared {
    pub(crate) async fn emit(&self, ev: DeliveryEvent) {
        // The receiver lives as long as the run; if it is gone the run is over.
        let _ = self.events.send(ev).await;
    }

    pub(crate) fn stop_with(&self, end: EngineEnd) {
        if let Ok(mut e) = self.end.lock()
            && e.is_none()
        {
            *e = Some(end);
        }
        let _ = self.stop.send(true);
    }

    pub(crate) fn relay(&self) -> String {
        self.transport.describe()
    }

    /// The relay a connection sends through, by name.
    pub(crate) fn relay_of<'a>(&'a self, conn: &'a dyn crate::Connection) -> &'a str {
        conn.relay().unwrap_or(&self.relay_name)
    }

    /// Counts a transaction starting (`up`) or ending on `relay`.
    pub(crate) fn relay_in_flight(&self, relay: &str, up: bool) {
        if let Ok(mut v) = self.by_relay.lock() {
            match v.iter_mut().find(|(r, _)| r == relay) {
                Some((_, n)) if up => *n += 1,
                Some((_, n)) => *n = n.saturating_sub(1),
                None if up => v.push((relay.to_string(), 1)),
                None => {}
            }
        }
    }

    /// A failure to open a session. Before any session worked, enough of them
    /// end the run (exit 2) instead of waiting out `max_outage`.
    pub(crate) fn early_failure(&self, f: &Failure) -> bool {
        if self.worked.load(Ordering::SeqCst) {
            return false;
        }
        let give_up = self
            .early
            .lock()
            .map(|mut e| {
                e.last = Some(f.clone());
                if !f.category.fails_fast() {
                    // A relay that answers and then fails (a dropped
                    // greeting, a protocol error) is reachable: an outage.
                    return false;
                }
                e.failures += 1;
                let since = e.first_attempt.unwrap_or(self.started);
                e.failures >= self.cfg.fail_fast_attempts.max(1)
                    || since.elapsed() >= self.cfg.fail_fast_within
            })
            .unwrap_or(true);
        if give_up {
            self.stop_with(EngineEnd::Unreachable {
                relay: self.relay(),
                failure: f.clone(),
            });
        }
        give_up
    }

    /// Called on every tick: no session within `fail_fast_within` of the
    /// first attempt (connects that hang included) ends the run.
    pub(crate) fn early_deadline(&self, now: Instant) {
        if self.worked.load(Ordering::SeqCst) || self.stopping() {
            return;
        }
        let late = self.early.lock().ok().and_then(|e| {
            let first = e.first_attempt?;
            if e.last.as_ref().is_some_and(|f| !f.category.fails_fast()) {
                return None;
            }
            (now.duration_since(first) >= self.cfg.fail_fast_within).then(|| {
                e.last.clone().unwrap_or_else(|| {
                    Failure::local(
                        edm_model::Stage::Connect,
                        Category::ConnectTimeout,
                        format!("no session within {}s", self.cfg.fail_fast_within.as_secs()),
                    )
                })
            })
        });
        if let Some(failure) = late {
            self.stop_with(EngineEnd::Unreachable {
                relay: self.relay(),
                failure,
            });
        }
    }

    /// Reports a permanent refusal, or holds it back while it may be part of
    /// a streak of identical refusals that stops the run. `key` is the
    /// refusal without the envelope's addresses ([`Failure::refusal_key`]).
    pub(crate) async fn refused(&self, key: String, about: About, failure: Failure) {
        let same_as_stop = self
            .stopped_by
            .lock()
            .map(|k| k.as_deref() == Some(key.as_str()))
            .unwrap_or(false);
        if same_as_stop {
            // In flight when the run stopped, refused the same way.
            self.emit(about.held(failure)).await;
            return;
        }
        if failure.stops_run() {
            self.stop_refused(&key, vec![(about, failure)]).await;
            return;
        }
        let limit = self.cfg.stop_after_identical_refusals as usize;
        if limit == 0 || !failure.counts_as_identical_refusal() {
            self.emit(about.rejected(failure)).await;
            return;
        }
        let (flush, stop) = match self.streak.lock() {
            Ok(mut st) => {
                let flush = if st.key != key {
                    let old = std::mem::take(&mut st.held);
                    st.key = key.clone();
                    st.rcpts.clear();
                    old
                } else {
                    Vec::new()
                };
                st.rcpts.insert(about.rcpt_to.to_ascii_lowercase());
                st.held.push((about, failure));
                st.updated = Some(Instant::now());
                let stop = (st.rcpts.len() >= limit).then(|| {
                    st.rcpts.clear();
                    st.key.clear();
                    std::mem::take(&mut st.held)
                });
                (flush, stop)
            }
            Err(_) => (Vec::new(), None),
        };
        self.report_rejected(flush).await;
        if let Some(held) = stop {
            self.stop_refused(&key, held).await;
        }
    }

    /// Reports held-back refusals as ordinary rejections.
    pub(crate) async fn report_rejected(&self, held: Vec<(About, Failure)>) {
        for (about, failure) in held {
            self.emit(about.rejected(failure)).await;
        }
    }

    /// An acceptance breaks a streak of identical refusals.
    pub(crate) async fn break_streak(&self) {
        let flush = self
            .streak
            .lock()
            .map(|mut st| {
                st.key.clear();
                st.rcpts.clear();
                std::mem::take(&mut st.held)
            })
            .unwrap_or_default();
        self.report_rejected(flush).await;
    }

    /// Reports a streak that stopped growing while every worker waits for
    /// work: the feeder may be waiting for those very outcomes, so they must
    /// not be held for ever (the count toward the limit is kept). While
    /// anything is being sent, the next outcome decides instead.
    pub(crate) async fn flush_stale_streak(&self, now: Instant, all_idle: bool) {
        if !all_idle {
            return;
        }
        let flush = self
            .streak
            .lock()
            .map(|mut st| {
                if st
                    .updated
                    .is_some_and(|u| now.duration_since(u) >= STREAK_FLUSH)
                {
                    std::mem::take(&mut st.held)
                } else {
                    Vec::new()
                }
            })
            .unwrap_or_default();
        self.report_rejected(flush).await;
    }

    /// Stops the run on a refusal that would hit every message: the
    /// recipients refused that way go back to pending, the reply kept.
    pub(crate) async fn stop_refused(&self, key: &str, held: Vec<(About, Failure)>) {
        let Some(failure) = held.last().map(|(_, f)| f.clone()) else {
            return;
        };
        let first = self
            .stopped_by
            .lock()
            .map(|mut k| {
                let first = k.is_none();
                k.get_or_insert_with(|| key.to_string());
                first
            })
            .unwrap_or(false);
        if first {
            tracing::error!(failure = %failure, "the relay refuses every message");
            self.emit(DeliveryEvent::Notice(Notice::Stopping {
                reason: format!(
                    "the relay {} refuses every message: {}{}",
                    self.relay(),
                    failure
                        .smtp_code
                        .map(|c| format!("{c} "))
                        .unwrap_or_default(),
                    failure.reply
                ),
            }))
            .await;
        }
        self.stop_with(EngineEnd::Refused(failure));
        for (about, failure) in held {
            self.emit(about.held(failure)).await;
        }
    }

    pub(crate) fn hold(&self, id: edm_model::RecipientId) {
        if let Ok(mut h) = self.holding.lock() {
            h.insert(tokio::task::id(), id);
        }
    }

    pub(crate) fn release_hold(&self) {
        if let Ok(mut h) = self.holding.lock() {
            h.remove(&tokio::task::id());
        }
    }

    /// A success anywhere closes the breaker; says so if it was open.
    pub(crate) async fn breaker_success(&self) {
        let was_open = self
            .breaker
            .lock()
            .map(|mut b| b.success())
            .unwrap_or(false);
        if was_open {
            self.emit(DeliveryEvent::Notice(Notice::BreakerClosed))
                .await;
        }
    }

    /// A failure about the server; says so when it opens the breaker.
    pub(crate) async fn breaker_failure(&self, failure: &Failure) -> Trip {
        let trip = self
            .breaker
            .lock()
            .map(|mut b| b.failure(Instant::now()))
            .unwrap_or(Trip::Open);
        if trip == Trip::Opened {
            self.emit(DeliveryEvent::Notice(Notice::BreakerOpen {
                reason: failure.to_string(),
            }))
            .await;
        }
        trip
    }

    /// Notes a finished transaction.
    pub(crate) fn completed(&self, now: Instant) {
        if let Ok(mut c) = self.completions.lock() {
            c.push_back(now);
            while c
                .front()
                .is_some_and(|t| now.duration_since(*t) > OBSERVE_WINDOW)
            {
                c.pop_front();
            }
        }
    }

    /// Notes a throttling reply; returns the share of recent transactions
    /// that were throttled (the reply itself included).
    pub(crate) fn throttled_share(&self, now: Instant) -> f64 {
        let throttled = self
            .throttles
            .lock()
            .map(|mut t| {
                t.push_back(now);
                while t
                    .front()
                    .is_some_and(|x| now.duration_since(*x) > OBSERVE_WINDOW)
                {
                    t.pop_front();
                }
                t.len()
            })
            .unwrap_or(1);
        let done = self
            .completions
            .lock()
            .map(|c| in_window(&c, now))
            .unwrap_or(1)
            .max(1);
        throttled as f64 / done as f64
    }

    /// Transactions per second over the last two seconds (or since the start):
    /// what "the rate" was when a throttling reply came, even when unlimited.
    pub(crate) fn observed_rate(&self, now: Instant) -> f64 {
        let n = self
            .completions
            .lock()
            .map(|c| in_window(&c, now))
            .unwrap_or(0);
        let window = now
            .duration_since(self.started)
            .clamp(Duration::from_millis(100), OBSERVE_WINDOW);
        n as f64 / window.as_secs_f64()
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// This worker's share of the campaign's limits (1.0 alone).
    pub(crate) fn share(&self) -> f64 {
        f64::from_bits(self.share.load(Ordering::Relaxed))
    }

    /// `to` is the campaign's rate (the operator's, or AIMD's): the gate
    /// runs at this worker's share of it.
    pub(crate) async fn set_effective(&self, to: Option<f64>, cause: &str) {
        let share = self.share();
        let to = to.map(|r| r * share);
        let from = self.gate.rate();
        if from == to {
            return;
        }
        self.gate.set_rate(to);
        tracing::info!(?from, ?to, cause, "effective rate changed");
        self.emit(DeliveryEvent::Notice(Notice::RateChanged {
            from: from.unwrap_or(f64::INFINITY),
            to: to.unwrap_or(f64::INFINITY),
            cause: cause.to_string(),
        }))
        .await;
    }
}

/// Starts the engine on the current tokio runtime, sending through the SMTP
/// relay `smtp`.
///
/// It reads envelopes from `jobs` until the sender is dropped and the queue
/// is empty (or until stopped), and reports on `events` (never dropped: the
/// channel is bounded and the engine waits for room).
pub fn start(
    smtp: SmtpSettings,
    cfg: DeliveryConfig,
    jobs: mpsc::Receiver<Envelope>,
    events: mpsc::Sender<DeliveryEvent>,
) -> Result<Engine, Error> {
    let transport = SmtpTransport::new(smtp).map_err(Error::Tls)?;
    Ok(start_with(Arc::new(transport), cfg, jobs, events))
}

/// Starts the engine with any [`Transport`].
pub fn start_with(
    transport: Arc<dyn Transport>,
    cfg: DeliveryConfig,
    jobs: mpsc::Receiver<Envelope>,
    events: mpsc::Sender<DeliveryEvent>,
) -> Engine {
    let domains = cfg
        .domains
        .iter()
        .map(|(d, l)| {
            (
                d.to_ascii_lowercase(),
                DomainGate {
                    rate: l.rate.map(|r| RateGate::new(Some(r), 1)),
                    slots: l.concurrency.map(|n| Arc::new(Semaphore::new(n.max(1)))),
                },
            )
        })
        .collect();
    // A transport with notices of its own (a pool) reports on the same channel.
    transport.attach(events.clone());
    let (stop, _) = watch::channel(false);
    let (paused, _) = watch::channel(false);
    let dispatcher = Dispatcher::new(domains, cfg.concurrency.max(1) * 4);
    let (want_tx, want_rx) = mpsc::unbounded_channel();
    let relay_name = if cfg.relay.is_empty() {
        transport.describe()
    } else {
        cfg.relay.clone()
    };
    let shared = Arc::new(Shared {
        relay_name,
        by_relay: Mutex::new(Vec::new()),
        transport,
        gate: RateGate::new(cfg.rate, cfg.burst),
        aimd: Mutex::new(Aimd::new(cfg.rate, cfg.aimd.clone())),
        breaker: Mutex::new(Breaker::new(cfg.breaker_threshold, cfg.max_outage)),
        want: want_tx,
        events,
        stop,
        paused,
        paused_until: Mutex::new(None),
        end: Mutex::new(None),
        in_flight: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        completions: Mutex::new(std::collections::VecDeque::new()),
        throttles: Mutex::new(std::collections::VecDeque::new()),
        started: Instant::now(),
        worked: std::sync::atomic::AtomicBool::new(false),
        early: Mutex::new(Early::default()),
        streak: Mutex::new(Streak::default()),
        stopped_by: Mutex::new(None),
        holding: Mutex::new(IdHashMap::default()),
        share: AtomicU64::new(1.0f64.to_bits()),
        cfg,
    });
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(EngineStatus {
        target_rate: shared.cfg.rate,
        effective_rate: shared.cfg.rate,
        ..Default::default()
    });
    let join = tokio::spawn(run(
        shared, dispatcher, jobs, want_rx, control_rx, status_tx,
    ));
    Engine {
        control: control_tx,
        status: status_rx,
        join,
    }
}

/// The dispatcher: the one task that owns the queue, the parked envelopes,
/// the waiting workers and the pause, and reacts to events only: a worker
/// asking for work, an envelope queued, a domain slot given back, the next
/// domain-rate token or the end of a quota pause coming due (`sleep_until`
/// that instant), a control message, a worker ending. The 250 ms tick only
/// refreshes the status and the time-based bookkeeping (AIMD recovery, the
/// fail-fast deadline, a stale streak); no work waits for it.
async fn run(
    shared: Arc<Shared>,
    mut disp: Dispatcher,
    mut jobs: mpsc::Receiver<Envelope>,
    mut want: mpsc::UnboundedReceiver<Ask>,
    mut control: mpsc::UnboundedReceiver<Control>,
    status: watch::Sender<EngineStatus>,
) -> EngineEnd {
    let mut workers = JoinSet::new();
    for id in 0..shared.cfg.concurrency.max(1) {
        workers.spawn(worker(id, shared.clone()));
    }
    let freed = disp.freed();
    let mut stop = shared.stop.subscribe();
    // Kept across the passes of the `select!` below, not made anew at each:
    // each one registers a waiter (a lock) when first polled and removes it
    // (another) when dropped, twice a message or so. `freed_wait` is made
    // anew once it fired; `stop_wait` is not polled again once it did.
    let mut freed_wait = Box::pin(freed.notified());
    let mut stop_wait = Box::pin(stopped(&mut stop));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // The queue is closed and empty.
    let mut queue_open = true;
    // No more work is handed out (stopping, or everything handed out): the
    // workers' asks are dropped, so they end after what they hold.
    let mut ending = false;
    loop {
        let quota_until = shared.paused_until.lock().ok().and_then(|p| *p);
        let paused = *shared.paused.borrow() || quota_until.is_some();
        let take = !ending && !paused && queue_open && disp.wants_more();
        let rate_due = disp.rate_due().filter(|_| !ending && !paused);
        tokio::select! {
            done = workers.join_next_with_id() => {
                match done {
                    None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        // A panicking worker is a bug: stop the run (exit 2),
                        // its envelope back to pending, never a hang.
                        let task = e.id();
                        let text = panic_text(e);
                        tracing::error!(error = %text, "a delivery worker crashed");
                        let held = shared.holding.lock().ok().and_then(|mut h| h.remove(&task));
                        shared.stop_with(EngineEnd::Crashed(format!(
                            "a delivery worker crashed: {text}"
                        )));
                        shared
                            .emit(DeliveryEvent::Notice(Notice::Stopping {
                                reason: format!("internal error: a delivery worker crashed: {text}"),
                            }))
                            .await;
                        if let Some(id) = held {
                            shared.emit(DeliveryEvent::Returned { id }).await;
                        }
                    }
                }
            }
            Some(c) = control.recv() => {
                if let Control::SetShare(share) = c {
                    disp.set_share(share, &shared.cfg.domains);
                }
                handle_control(&shared, c).await
            }
            Some(ask) = want.recv() => {
                if !ending {
                    disp.want(ask);
                }
                // Else dropped: that worker ends.
            }
            env = jobs.recv(), if take => match env {
                Some(env) => disp.offer(env),
                None => queue_open = false,
            },
            _ = &mut freed_wait => freed_wait.set(freed.notified()),
            // In `async` blocks: a disabled branch's expression is still
            // evaluated at every pass, and a `Sleep` made for nothing reads
            // the clock and clones the runtime's handle.
            _ = async { tokio::time::sleep_until(rate_due.unwrap_or_else(Instant::now)).await }, if rate_due.is_some() => {}
            _ = async { tokio::time::sleep_until(quota_until.unwrap_or_else(Instant::now)).await }, if quota_until.is_some() => {
                let over = shared
                    .paused_until
                    .lock()
                    .ok()
                    .and_then(|mut p| p.take_if(|until| *until <= Instant::now()))
                    .is_some();
                if over {
                    shared.emit(DeliveryEvent::Notice(Notice::Resumed)).await;
                }
            }
            _ = &mut stop_wait, if !ending => {
                ending = true;
                disp.release_waiters();
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let change = shared.aimd.lock().ok().and_then(|mut a| a.on_tick(now));
                if let Some(to) = change {
                    shared.set_effective(to, "recovering after a quiet period").await;
                }
                shared.early_deadline(now);
                let all_idle = disp.idle() >= shared.cfg.concurrency.max(1);
                shared.flush_stale_streak(now, all_idle).await;
                let _ = status.send(snapshot(&shared));
            }
        }
        if ending {
            continue;
        }
        // A worker may have stopped the run (fail fast, a refusal of
        // everything) since the stop branch was last polled: hand out nothing
        // more.
        if shared.stopping() || (!queue_open && disp.parked_is_empty()) {
            // Stopping, or everything was handed out.
            ending = true;
            disp.release_waiters();
            continue;
        }
        // Every ask already there, in this turn: with 32 workers several
        // come at once, and a pass of the `select!` above (its futures made
        // and polled anew) costs more than the ask itself.
        while let Ok(ask) = want.try_recv() {
            disp.want(ask);
        }
        let paused = *shared.paused.borrow()
            || shared
                .paused_until
                .lock()
                .map(|p| p.is_some())
                .unwrap_or(false);
        if !paused {
            disp.pump();
            // Envelopes already queued, one at a time while a worker waits
            // for one (as the `jobs` branch takes them: never more parked).
            while queue_open && disp.wants_more() {
                match jobs.try_recv() {
                    Ok(env) => {
                        disp.offer(env);
                        disp.pump();
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => queue_open = false,
                }
            }
            if !queue_open && disp.parked_is_empty() {
                ending = true;
                disp.release_waiters();
            }
        }
    }
    let _ = status.send(snapshot(&shared));
    // Refusals still held back did not stop the run: report them.
    shared.break_streak().await;
    // Whatever is still queued was never attempted: hand it back.
    jobs.close();
    while let Ok(env) = jobs.try_recv() {
        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
    }
    for env in disp.drain_parked() {
        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
    }
    let end = shared.end.lock().ok().and_then(|mut e| e.take());
    if let Some(EngineEnd::Unreachable { relay, failure }) = &end {
        // Said once, as an event the dashboard and `edm watch` show.
        shared
            .emit(DeliveryEvent::Notice(Notice::Stopping {
                reason: format!(
                    "cannot use the relay {relay}: {}: {}",
                    failure.category, failure.reply
                ),
            }))
            .await;
    }
    end.unwrap_or(if shared.stopping() {
        EngineEnd::Stopped
    } else {
        EngineEnd::Drained
    })
}

fn snapshot(shared: &Shared) -> EngineStatus {
    EngineStatus {
        // This worker's target: its share of the campaign's (one worker
        // among several is not throttled for running at its share).
        target_rate: shared
            .aimd
            .lock()
            .map(|a| a.target().map(|t| t * shared.share()))
            .unwrap_or(None),
        effective_rate: shared.gate.rate(),
        in_flight: shared.in_flight.load(Ordering::Relaxed),
        paused: *shared.paused.borrow()
            || shared
                .paused_until
                .lock()
                .map(|p| p.is_some())
                .unwrap_or(false),
        outage: shared.breaker.lock().map(|b| b.is_open()).unwrap_or(false),
        connections: shared.connections.load(Ordering::Relaxed),
        in_flight_by_relay: shared
            .by_relay
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default(),
    }
}

async fn handle_control(shared: &Shared, c: Control) {
    match c {
        Control::Pause => {
            shared.paused.send_replace(true);
            shared
                .emit(DeliveryEvent::Notice(Notice::Paused {
                    reason: "by the operator".into(),
                }))
                .await;
        }
        Control::Resume => {
            shared.paused.send_replace(false);
            shared.emit(DeliveryEvent::Notice(Notice::Resumed)).await;
        }
        Control::SetRate(rate) => {
            if let Ok(mut a) = shared.aimd.lock() {
                a.set_target(rate, Instant::now());
            }
            shared.set_effective(rate, "set by the operator").await;
        }
        // The campaign-wide stop is a stop here: the run tells the others.
        Control::Stop | Control::StopAll => {
            let _ = shared.stop.send(true);
        }
        Control::SetShare(share) => {
            let share = if share.is_finite() && share > 0.0 {
                share.min(1.0)
            } else {
                1.0
            };
            shared.share.store(share.to_bits(), Ordering::Relaxed);
            // The burst is shared too: with n workers, the sum of their
            // bursts stays about the campaign's (at least 1 each).
            let burst = (f64::from(shared.cfg.burst) * share).round() as u32;
            shared.gate.set_burst(burst.max(1));
            shared.transport.set_share(share);
            let campaign = shared.aimd.lock().ok().and_then(|a| a.effective());
            let to = campaign.map(|r| r * share);
            let from = shared.gate.rate();
            shared.gate.set_rate(to);
            if from != to {
                shared
                    .emit(DeliveryEvent::Notice(Notice::RateChanged {
                        from: from.unwrap_or(f64::INFINITY),
                        to: to.unwrap_or(f64::INFINITY),
                        cause: format!("this worker's share of the campaign's rate: {share:.3}"),
                    }))
                    .await;
            }
        }
    }
}

/// Resolves once the engine is stopping.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not in a select.
    let ok = rx.wait_for(|s| *s).await.is_ok();
    if !ok {
        // The sender is gone: the engine is over.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of a run (consecutive row ids, task ids) land in different
    /// buckets: the top 7 bits (hashbrown's tag) and the low bits differ
    /// among neighbours, and the map finds every one.
    #[test]
    fn id_hashes_spread_consecutive_ids() {
        use std::hash::BuildHasher;
        let b = std::hash::BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=1000i64).map(|i| b.hash_one(RecipientId(i))).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        let lows: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert!(tags.len() > 100, "{}", tags.len());
        assert!(lows.len() > 600, "{}", lows.len());
        let mut m = IdHashMap::default();
        for i in 0..10_000i64 {
            m.insert(RecipientId(i), i);
        }
        assert!((0..10_000i64).all(|i| m.get(&RecipientId(i)) == Some(&i)));
    }
}
