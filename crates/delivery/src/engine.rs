//! The engine: `concurrency` workers, each holding one long-lived SMTP
//! session, take envelopes from one queue and report every outcome as a
//! [`DeliveryEvent`]. Shared by all workers: the global rate gate (exact,
//! adaptive), per-domain gates, the circuit breaker, pause and stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edm_model::{Category, Control, DeliveryEvent, Envelope, Failure, Notice};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::defaults;
use crate::outbound::session::{Afterwards, Session, SmtpSettings};
use crate::queue::adaptive::{Aimd, AimdSettings};
use crate::queue::breaker::{Breaker, Trip};
use crate::queue::rate::RateGate;

/// How many of the instants fall in the observation window ending at `now`.
fn in_window(times: &std::collections::VecDeque<Instant>, now: Instant) -> usize {
    times
        .iter()
        .filter(|t| now.duration_since(**t) <= OBSERVE_WINDOW)
        .count()
}

/// The share of recent transactions throttled that makes the rate go down.
const THROTTLE_SHARE: f64 = 0.1;

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

/// Everything the engine needs.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The relay.
    pub smtp: SmtpSettings,
    /// SMTP connections (workers).
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
}

impl DeliveryConfig {
    /// Defaults around a relay.
    pub fn new(smtp: SmtpSettings) -> DeliveryConfig {
        DeliveryConfig {
            smtp,
            concurrency: defaults::CONCURRENCY,
            rate: None,
            burst: defaults::BURST,
            domains: HashMap::new(),
            aimd: AimdSettings::default(),
            breaker_threshold: defaults::BREAKER_THRESHOLD,
            max_outage: defaults::MAX_OUTAGE,
            quota_pause: defaults::QUOTA_PAUSE,
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
            // A panicking worker is a bug; surface it as an outage so the run stops
            // without marking anyone failed.
            Err(e) => EngineEnd::Outage(Failure::local(
                edm_model::Stage::Connect,
                Category::Protocol,
                format!("delivery engine crashed: {e}"),
            )),
        }
    }
}

struct DomainGate {
    rate: Option<RateGate>,
    slots: Option<Arc<Semaphore>>,
}

struct Shared {
    cfg: DeliveryConfig,
    settings: Arc<SmtpSettings>,
    tls: TlsConnector,
    gate: RateGate,
    domains: HashMap<String, DomainGate>,
    aimd: Mutex<Aimd>,
    breaker: Mutex<Breaker>,
    jobs: tokio::sync::Mutex<mpsc::Receiver<Envelope>>,
    /// Envelopes taken from `jobs` whose domain was at its limit: parked here
    /// so the worker can take another domain's envelope meanwhile (no
    /// head-of-line blocking). At most `park_cap` of them.
    parked: Mutex<std::collections::VecDeque<Envelope>>,
    park_cap: usize,
    events: mpsc::Sender<DeliveryEvent>,
    stop: watch::Sender<bool>,
    paused: watch::Sender<bool>,
    paused_until: Mutex<Option<Instant>>,
    end: Mutex<Option<EngineEnd>>,
    in_flight: AtomicU64,
    connections: AtomicU64,
    /// When recent transactions finished (any outcome), for the observed rate.
    completions: Mutex<std::collections::VecDeque<Instant>>,
    /// When recent throttling replies came, over the same window.
    throttles: Mutex<std::collections::VecDeque<Instant>>,
    started: Instant,
}

impl Shared {
    async fn emit(&self, ev: DeliveryEvent) {
        // The receiver lives as long as the run; if it is gone the run is over.
        let _ = self.events.send(ev).await;
    }

    fn stop_with(&self, end: EngineEnd) {
        if let Ok(mut e) = self.end.lock()
            && e.is_none()
        {
            *e = Some(end);
        }
        let _ = self.stop.send(true);
    }

    /// The domain's slot and rate token, if both are free now. `Err` means
    /// the domain is at its limit (nothing is taken then).
    fn try_domain(&self, env: &Envelope) -> Result<Option<OwnedSemaphorePermit>, ()> {
        let Some(d) = self.domains.get(&env.domain) else {
            return Ok(None);
        };
        let slot = match &d.slots {
            Some(sem) => Some(sem.clone().try_acquire_owned().map_err(|_| ())?),
            None => None,
        };
        if let Some(g) = &d.rate
            && !g.try_acquire()
        {
            return Err(());
        }
        Ok(slot)
    }

    /// The first parked envelope whose domain has room now.
    fn take_ready_parked(&self) -> Option<(Envelope, Option<OwnedSemaphorePermit>)> {
        let mut parked = self.parked.lock().ok()?;
        let mut found = None;
        for (i, env) in parked.iter().enumerate() {
            if let Ok(slot) = self.try_domain(env) {
                found = Some((i, slot));
                break;
            }
        }
        let (i, slot) = found?;
        parked.remove(i).map(|env| (env, slot))
    }

    fn parked_len(&self) -> usize {
        self.parked.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// A success anywhere closes the breaker; says so if it was open.
    async fn breaker_success(&self) {
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
    async fn breaker_failure(&self, failure: &Failure) -> Trip {
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
    fn completed(&self, now: Instant) {
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
    fn throttled_share(&self, now: Instant) -> f64 {
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
    fn observed_rate(&self, now: Instant) -> f64 {
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

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn set_effective(&self, to: Option<f64>, cause: &str) {
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

fn tls_connector(accept_invalid: bool) -> Result<TlsConnector, Error> {
    // mail-send's connector: platform verifier, ring provider (the only one built).
    mail_send::smtp::tls::build_tls_connector(accept_invalid).map_err(Error::Tls)
}

/// Starts the engine on the current tokio runtime.
///
/// It reads envelopes from `jobs` until the sender is dropped and the queue
/// is empty (or until stopped), and reports on `events` (never dropped: the
/// channel is bounded and the engine waits for room).
pub fn start(
    cfg: DeliveryConfig,
    jobs: mpsc::Receiver<Envelope>,
    events: mpsc::Sender<DeliveryEvent>,
) -> Result<Engine, Error> {
    let tls = tls_connector(cfg.smtp.accept_invalid_certs)?;
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
    let (stop, _) = watch::channel(false);
    let (paused, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        settings: Arc::new(cfg.smtp.clone()),
        tls,
        gate: RateGate::new(cfg.rate, cfg.burst),
        domains,
        aimd: Mutex::new(Aimd::new(cfg.rate, cfg.aimd.clone())),
        breaker: Mutex::new(Breaker::new(cfg.breaker_threshold, cfg.max_outage)),
        jobs: tokio::sync::Mutex::new(jobs),
        parked: Mutex::new(std::collections::VecDeque::new()),
        park_cap: cfg.concurrency.max(1) * 4,
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
        cfg,
    });
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(EngineStatus {
        target_rate: shared.cfg.rate,
        effective_rate: shared.cfg.rate,
        ..Default::default()
    });
    let join = tokio::spawn(run(shared, control_rx, status_tx));
    Ok(Engine {
        control: control_tx,
        status: status_rx,
        join,
    })
}

async fn run(
    shared: Arc<Shared>,
    mut control: mpsc::UnboundedReceiver<Control>,
    status: watch::Sender<EngineStatus>,
) -> EngineEnd {
    let mut workers = JoinSet::new();
    for id in 0..shared.cfg.concurrency.max(1) {
        workers.spawn(worker(id, shared.clone()));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            done = workers.join_next() => {
                if done.is_none() {
                    break;
                }
            }
            Some(c) = control.recv() => handle_control(&shared, c).await,
            _ = tick.tick() => {
                let now = Instant::now();
                let change = shared.aimd.lock().ok().and_then(|mut a| a.on_tick(now));
                if let Some(to) = change {
                    shared.set_effective(to, "recovering after a quiet period").await;
                }
                let quota_over = shared
                    .paused_until
                    .lock()
                    .ok()
                    .and_then(|mut p| p.take_if(|until| *until <= now))
                    .is_some();
                if quota_over {
                    shared.emit(DeliveryEvent::Notice(Notice::Resumed)).await;
                }
                let _ = status.send(snapshot(&shared));
            }
        }
    }
    let _ = status.send(snapshot(&shared));
    // Whatever is still queued was never attempted: hand it back.
    let mut jobs = shared.jobs.lock().await;
    jobs.close();
    while let Ok(env) = jobs.try_recv() {
        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
    }
    let parked: Vec<Envelope> = shared
        .parked
        .lock()
        .map(|mut p| p.drain(..).collect())
        .unwrap_or_default();
    for env in parked {
        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
    }
    let end = shared.end.lock().ok().and_then(|mut e| e.take());
    end.unwrap_or(if shared.stopping() {
        EngineEnd::Stopped
    } else {
        EngineEnd::Drained
    })
}

fn snapshot(shared: &Shared) -> EngineStatus {
    EngineStatus {
        target_rate: shared.aimd.lock().map(|a| a.target()).unwrap_or(None),
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
        Control::Stop => {
            let _ = shared.stop.send(true);
        }
    }
}

/// Resolves once the engine is stopping.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not in a select.
    let ok = rx.wait_for(|s| *s).await.is_ok();
    if !ok {
        // The sender is gone: the engine is over.
        std::future::pending::<()>().await;
    }
}

/// Waits while paused. Returns false when stopping.
async fn wait_while_paused(shared: &Shared) -> bool {
    let mut stop = shared.stop.subscribe();
    let mut paused = shared.paused.subscribe();
    loop {
        if *stop.borrow() {
            return false;
        }
        let until = shared.paused_until.lock().ok().and_then(|p| *p);
        if let Some(until) = until {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        if !*paused.borrow_and_update() {
            return true;
        }
        tokio::select! {
            _ = paused.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

/// The next envelope this worker may send, with its domain slot: a parked one
/// whose domain has room, else one from the queue (parked if its domain is at
/// its limit). `None` when stopping, or when the queue is closed and empty and
/// nothing is parked.
async fn next_job(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Option<(Envelope, Option<OwnedSemaphorePermit>)> {
    const POLL: Duration = Duration::from_millis(5);
    loop {
        if *stop.borrow() {
            return None;
        }
        if let Some(job) = shared.take_ready_parked() {
            return Some(job);
        }
        let parked = shared.parked_len();
        if parked >= shared.park_cap {
            // Enough waiting already: do not claim more from the queue.
            tokio::select! {
                _ = tokio::time::sleep(POLL) => continue,
                _ = stopped(stop) => return None,
            }
        }
        let env = tokio::select! {
            biased;
            _ = stopped(stop) => return None,
            env = async { shared.jobs.lock().await.recv().await } => env,
            _ = tokio::time::sleep(POLL), if parked > 0 => continue,
        };
        let Some(env) = env else {
            if parked == 0 {
                return None;
            }
            tokio::time::sleep(POLL).await;
            continue;
        };
        match shared.try_domain(&env) {
            Ok(slot) => return Some((env, slot)),
            Err(()) => {
                if let Ok(mut p) = shared.parked.lock() {
                    p.push_back(env);
                }
            }
        }
    }
}

async fn worker(id: usize, shared: Arc<Shared>) {
    let mut session: Option<Session> = None;
    let mut stop = shared.stop.subscribe();
    let mut reconnects = 0u32;
    'jobs: loop {
        if !wait_while_paused(&shared).await {
            break;
        }
        let Some((env, _slot)) = next_job(&shared, &mut stop).await else {
            break;
        };

        // A session first: connection failures are about the server, never
        // about this recipient, so the envelope waits (or goes back) meanwhile.
        while session.is_none() {
            match Session::connect(shared.settings.clone(), &shared.tls).await {
                Ok(s) => {
                    session = Some(s);
                    reconnects = 0;
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    shared.breaker_success().await;
                    tracing::debug!(worker = id, "connected");
                }
                Err(f) => {
                    tracing::warn!(worker = id, failure = %f, "cannot open an SMTP session");
                    shared
                        .emit(DeliveryEvent::Notice(Notice::ConnectionProblem {
                            failure: f.clone(),
                        }))
                        .await;
                    if f.category == Category::Auth && f.permanent {
                        shared.stop_with(EngineEnd::AuthRefused(f));
                        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                        break 'jobs;
                    }
                    if shared.breaker_failure(&f).await == Trip::GiveUp {
                        shared.stop_with(EngineEnd::Outage(f));
                        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                        break 'jobs;
                    }
                    reconnects += 1;
                    let wait = reconnect_delay(reconnects);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut stop) => {
                            shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                            break 'jobs;
                        }
                    }
                }
            }
        }
        let Some(sess) = session.as_mut() else {
            continue;
        };

        // The domain's limits were taken with the job; now the global rate.
        tokio::select! {
            _ = shared.gate.acquire() => {}
            _ = stopped(&mut stop) => {
                shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                break;
            }
        }

        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = sess.send(&env).await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.completed(Instant::now());
        match result {
            Ok(reply) => {
                shared.breaker_success().await;
                shared
                    .emit(DeliveryEvent::Accepted { id: env.id, reply })
                    .await;
            }
            Err((failure, after)) => {
                if after == Afterwards::Broken
                    && let Some(s) = session.take()
                {
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(s);
                }
                react(&shared, &failure).await;
                shared
                    .emit(DeliveryEvent::Rejected {
                        id: env.id,
                        failure,
                    })
                    .await;
            }
        }
    }
    if let Some(s) = session {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        s.quit().await;
    }
}

/// What a failed transaction changes for everyone: the rate, a quota pause,
/// the breaker.
async fn react(shared: &Shared, failure: &Failure) {
    let now = Instant::now();
    match failure.category {
        Category::Throttled => {
            // Slow down when throttling is what the server answers now, not
            // when an odd message among many is: providers throttle because
            // a rate is exceeded, and then refuse most of what goes over it.
            let share = shared.throttled_share(now);
            let observed = shared.observed_rate(now);
            let change = if share >= THROTTLE_SHARE {
                shared
                    .aimd
                    .lock()
                    .ok()
                    .and_then(|mut a| a.on_throttle(now, observed))
            } else {
                None
            };
            if let Some(to) = change {
                let cause = format!(
                    "throttled: {} {}",
                    failure.smtp_code.map(|c| c.to_string()).unwrap_or_default(),
                    failure.reply.chars().take(80).collect::<String>()
                );
                shared.set_effective(Some(to), &cause).await;
            }
        }
        Category::QuotaExceeded => {
            let wait = failure.retry_after.unwrap_or(shared.cfg.quota_pause);
            let newly = shared
                .paused_until
                .lock()
                .map(|mut p| {
                    let fresh = p.is_none();
                    *p = Some(now + wait);
                    fresh
                })
                .unwrap_or(false);
            if newly {
                shared
                    .emit(DeliveryEvent::Notice(Notice::Paused {
                        reason: format!(
                            "sending quota exceeded; resuming in {}s: {}",
                            wait.as_secs(),
                            failure.reply
                        ),
                    }))
                    .await;
            }
        }
        c if c.trips_breaker() => {
            if shared.breaker_failure(failure).await == Trip::GiveUp {
                shared.stop_with(EngineEnd::Outage(failure.clone()));
            }
        }
        // The server answered about one recipient: it works.
        _ => shared.breaker_success().await,
    }
}

/// Reconnect backoff: 0.5 s doubling to 30 s, with full jitter above 0.25 s.
fn reconnect_delay(n: u32) -> Duration {
    let exp = Duration::from_millis(500)
        .saturating_mul(1u32 << n.saturating_sub(1).min(6))
        .min(Duration::from_secs(30));
    let ms = rand::rng().random_range(250..=exp.as_millis().max(250) as u64);
    Duration::from_millis(ms)
}
