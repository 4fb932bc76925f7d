//! `edm send`: claim → render → deliver → record, with progress on the side.
//!
//! Three tasks and a thread:
//! - the **feeder** claims recipients from the store (durably `sending`
//!   before they are queued), renders them and queues them for delivery;
//!   it waits for due retries and decides when the run is complete;
//! - the **outcome loop** turns delivery events into store outcomes (retry
//!   decisions happen here, with the campaign's [`RetryPolicy`]);
//! - the **progress loop** folds everything into a [`Progress`] snapshot;
//! - the **writer thread** is the store's only writer (`writer.rs`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edm_delivery::{
    ApiKey, Credentials, DeliveryConfig, DomainLimit, EngineEnd, ResendSettings, ResendTransport,
    RetryPolicy, Security, SesSettings, SesTransport, SmtpSettings, SmtpTransport, Transport,
    Verdict,
};
use edm_model::{
    Control, DeliveryEvent, DomainCounts, EventLine, Failure, Notice, Progress, RecipientId,
    RunState, Status, UnixMillis, add_ms, now_ms,
};
use edm_store::{InDoubtPolicy, Outcome, OutcomeKind, Summary};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::{Campaign, RelayKind, SecurityName};
use crate::prepare::{Prepared, prepare_with_stop};
use crate::writer::{StoreView, Writer, WriterMarker, record};
use crate::{Error, Task};

/// Options of one `edm send`.
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// Override `[delivery] rate` (`Some(None)`: unlimited).
    pub rate: Option<Option<f64>>,
    /// Override `[delivery] concurrency`.
    pub concurrency: Option<usize>,
    /// Attempt at most this many recipients in this run.
    pub limit: Option<u64>,
    /// Override the state file.
    pub state: Option<PathBuf>,
    /// What to do with recipients a dead run left `sending`.
    pub in_doubt: InDoubtPolicy,
    /// Go on although the inputs changed.
    pub accept_changes: bool,
    /// Override the relay (host, port): `edm demo` points at its own sink.
    pub relay: Option<(String, u16)>,
    /// Wait within the run for retries due at most this far ahead; later
    /// ones end the run with [`RunEnd::WaitingForRetries`].
    pub max_retry_wait: Duration,
    /// Set by a signal handler to stop the ingest at the next batch
    /// boundary ([`Error::Interrupted`]); once sending, stop with
    /// [`Control::Stop`](edm_model::Control::Stop) instead.
    pub stop_ingest: Option<Arc<AtomicBool>>,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            rate: None,
            concurrency: None,
            limit: None,
            state: None,
            in_doubt: InDoubtPolicy::Resend,
            accept_changes: false,
            relay: None,
            max_retry_wait: crate::config::MAX_RETRY_WAIT,
            stop_ingest: None,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// Every recipient is final.
    Complete,
    /// Stopped by the operator (Ctrl-C, `q`); the rest is pending.
    Stopped,
    /// `--limit` recipients were attempted.
    LimitReached,
    /// Only retries far in the future are left: run `edm send` again later.
    WaitingForRetries {
        /// Recipients deferred.
        deferred: u64,
        /// When the first comes due.
        next_due: UnixMillis,
    },
    /// `[delivery] daily_quota` messages were sent in the last 24 hours.
    DailyQuota {
        /// The quota.
        quota: u64,
    },
    /// The relay refused the credentials: nothing was marked failed.
    AuthRefused(Failure),
    /// The relay stayed unreachable past `max_outage`: nothing was marked failed.
    Outage(Failure),
    /// The state database could not be written.
    StoreFailed(String),
    /// No session could be opened to the relay before the first one worked
    /// (a refused connection, no route, a name that does not resolve, an
    /// untrusted certificate): nothing was marked failed.
    Unreachable {
        /// `host:port`.
        relay: String,
        /// The last failure.
        failure: Failure,
    },
    /// The relay refused in a way that would hit every message (the sender
    /// or the credentials, or the same refusal for many recipients in a
    /// row): those refused are pending again with the reply kept.
    Refused(Failure),
    /// An internal error (a panic): nothing was marked failed.
    Crashed(String),
    /// Everything else is final, but recipients are left in doubt
    /// (`--in-doubt skip`): `edm report --in-doubt` lists them.
    InDoubt {
        /// Recipients in status `in_doubt`.
        count: u64,
    },
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How it ended.
    pub end: RunEnd,
    /// Counts over the whole campaign at the end.
    pub summary: Summary,
    /// Rows ingested by this run.
    pub ingested: u64,
    /// In-doubt recipients found at start.
    pub in_doubt_found: u64,
    /// The policy applied to them.
    pub in_doubt_policy: InDoubtPolicy,
    /// Accepted in this run.
    pub sent: u64,
    /// Failed permanently in this run.
    pub failed: u64,
    /// Left in doubt in this run (no reply to the final dot).
    pub in_doubt: u64,
    /// Deferred (retries scheduled) in this run.
    pub retried: u64,
    /// The state file.
    pub state: PathBuf,
}

impl RunReport {
    /// The process exit code: 0 complete without failures, 1 complete with
    /// failures, 2 could not run, 3 not finished (deferred, limit), 130 stopped.
    pub fn exit_code(&self) -> u8 {
        match &self.end {
            RunEnd::Complete if self.summary.count(Status::Failed) == 0 => 0,
            RunEnd::Complete => 1,
            RunEnd::AuthRefused(_)
            | RunEnd::Outage(_)
            | RunEnd::StoreFailed(_)
            | RunEnd::Unreachable { .. }
            | RunEnd::Refused(_)
            | RunEnd::Crashed(_) => 2,
            RunEnd::WaitingForRetries { .. }
            | RunEnd::LimitReached
            | RunEnd::DailyQuota { .. }
            | RunEnd::InDoubt { .. } => 3,
            RunEnd::Stopped => 130,
        }
    }
}

/// A running `edm send`.
pub struct Run {
    /// Live progress, refreshed four times a second.
    pub progress: watch::Receiver<Progress>,
    /// Pause, resume, rate, stop.
    pub control: mpsc::UnboundedSender<Control>,
    /// What preparing found (rows ingested, in doubt).
    pub ingested: u64,
    /// Recipients found in doubt at start.
    pub in_doubt_found: u64,
    /// The state file.
    pub state: PathBuf,
    join: tokio::task::JoinHandle<Result<RunReport, Error>>,
    /// Extra copies of records, left by an interrupted ingest of an older
    /// build, marked `skipped` when the state was opened.
    pub repaired: u64,
    /// The CSV changed before anything was sent and was read again.
    pub reingested: bool,
}

impl Run {
    /// Waits for the run to end.
    pub async fn wait(self) -> Result<RunReport, Error> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(Error::Crashed {
                file: self.state,
                task: Task::Run,
                reason: e.to_string(),
            }),
        }
    }
}

/// What the outcome loop needs to know about a claimed recipient.
struct InFlight {
    /// A retry (counts against the retry budget).
    retry: bool,
    attempts: u32,
    /// The first attempt ever (any run): `retry_for` counts from here.
    first_attempt_at: UnixMillis,
    message_id: String,
    domain: String,
}

/// State shared by the run's tasks.
struct Shared {
    in_flight: Mutex<HashMap<RecipientId, InFlight>>,
    stopping: AtomicBool,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    in_doubt: AtomicU64,
    outcome: Notify,
    events: Mutex<VecDeque<EventLine>>,
    domains: Mutex<HashMap<String, DomainCounts>>,
    waiting: AtomicBool,
    /// Recipients deferred during this run: their next claim is a retry.
    deferred: Mutex<std::collections::HashSet<RecipientId>>,
    /// The relay's name, kept with each sent recipient.
    relay: String,
}

impl Shared {
    fn push_event(&self, text: String) {
        if let Ok(mut e) = self.events.lock() {
            e.push_back(EventLine { at: now_ms(), text });
            while e.len() > 50 {
                e.pop_front();
            }
        }
    }
}

/// Said at every run with `accept_invalid_certs = true`, and by `edm check`.
pub(crate) const INVALID_CERTS_WARNING: &str = "[smtp] accept_invalid_certs = true: the relay's certificate is not checked, so whoever sits on the path can read the password and every message; use it only with a self-signed test relay";

/// Why AUTH would go in clear to `host`, if it would and was not allowed:
/// a username, `security = "none"`, a host that is not loopback
/// (127.0.0.0/8, ::1, `localhost`) and no `allow_plaintext_auth = true`.
pub(crate) fn plaintext_auth_refusal(c: &Campaign, host: &str) -> Option<String> {
    let s = &c.config.smtp;
    (s.username.is_some()
        && s.security == SecurityName::None
        && !s.allow_plaintext_auth
        && !edm_delivery::is_loopback(host))
    .then(|| {
        format!(
            "[smtp] security = \"none\" would send the password to {host} in clear: set security = \"starttls\" or \"tls\", or allow_plaintext_auth = true in [smtp] if the network is yours"
        )
    })
}

pub(crate) fn delivery_config(
    c: &Campaign,
    opts: &SendOptions,
    password: Option<String>,
) -> DeliveryConfig {
    let s = &c.config.smtp;
    let (host, port) = opts
        .relay
        .clone()
        .unwrap_or_else(|| (s.host.clone(), c.port()));
    let from_domain = c.from_domain().unwrap_or_default();
    let smtp = SmtpSettings {
        host,
        port,
        security: match s.security {
            SecurityName::None => Security::None,
            SecurityName::Starttls => Security::StartTls,
            SecurityName::Tls => Security::Tls,
        },
        credentials: s.username.clone().zip(password),
        helo_name: s.helo_name.clone().unwrap_or_else(|| {
            if from_domain.is_empty() {
                "localhost".into()
            } else {
                from_domain
            }
        }),
        connect_timeout: s.connect_timeout,
        command_timeout: s.command_timeout,
        data_timeout: s.data_timeout,
        accept_invalid_certs: s.accept_invalid_certs,
        allow_plaintext_auth: s.allow_plaintext_auth,
    };
    let d = &c.config.delivery;
    let mut cfg = DeliveryConfig::new(smtp);
    cfg.concurrency = opts.concurrency.unwrap_or(c.concurrency()).max(1);
    cfg.rate = match opts.rate {
        Some(r) => r.filter(|r| *r > 0.0),
        None => c.rate(),
    };
    cfg.burst = d.burst.max(1);
    cfg.max_outage = d.max_outage;
    cfg.quota_pause = d.quota_pause;
    cfg.stop_after_identical_refusals = d.stop_after_identical_refusals;
    cfg.domains = d
        .domains
        .iter()
        .map(|(k, v)| {
            (
                // Envelopes carry the domain in A-label form (`domain_of`):
                // a limit written for `bücher.example` must find them.
                edm_model::domain_of(&format!("@{k}")),
                DomainLimit {
                    rate: v.rate,
                    concurrency: v.concurrency,
                },
            )
        })
        .collect();
    cfg
}

/// The campaign's relay as a [`Transport`]: `[smtp]` or a `[[relay]]` of
/// kind `smtp` over SMTP, a `[[relay]]` of kind `ses` over Amazon SES v2.
pub(crate) fn transport(c: &Campaign, cfg: &DeliveryConfig) -> Result<Arc<dyn Transport>, Error> {
    let bad = |message: String| Error::Config {
        file: c.file.clone(),
        message,
    };
    match (c.relay_kind(), c.ses()) {
        (RelayKind::Ses, Some(s)) => {
            let key = format!("[[relay]] {:?}", c.relay_name());
            let credentials = Credentials::load(s.profile.as_deref(), |k| std::env::var(k).ok())
                .map_err(|e| bad(format!("{key}: {e}")))?;
            let t = SesTransport::new(SesSettings {
                region: s.region,
                endpoint: s.endpoint,
                credentials,
                configuration_set: s.configuration_set,
                campaign: c.config.campaign.name.clone(),
                connect_timeout: s.connect_timeout,
                request_timeout: s.request_timeout,
            })
            .map_err(|e| bad(format!("{key}: {e}")))?;
            Ok(Arc::new(t))
        }
        (RelayKind::Resend, _) => {
            let key = format!("[[relay]] {:?}", c.relay_name());
            let s = c
                .resend()
                .ok_or_else(|| bad(format!("{key}: the relay's keys do not read")))?;
            let api_key = c.resend_api_key(&s)?;
            let t = ResendTransport::new(ResendSettings {
                endpoint: s.endpoint,
                api_key: ApiKey::new(api_key),
                campaign: c.config.campaign.name.clone(),
                connect_timeout: s.connect_timeout,
                request_timeout: s.request_timeout,
            })
            .map_err(|e| bad(format!("{key}: {e}")))?;
            Ok(Arc::new(t))
        }
        _ => {
            let t = SmtpTransport::new(cfg.smtp.clone()).map_err(edm_delivery::Error::Tls)?;
            Ok(Arc::new(t))
        }
    }
}

/// At start, for an SES relay whose endpoint offers GetAccount: the
/// account's `MaxSendRate` as the rate when none is set, and a warning when
/// the unsent recipients exceed what is left of the 24-hour quota.
async fn ses_quota(c: &Campaign, cfg: &mut DeliveryConfig, unsent: u64, rate_given: bool) {
    let Some(s) = c.ses() else {
        return;
    };
    let Ok(credentials) = Credentials::load(s.profile.as_deref(), |k| std::env::var(k).ok()) else {
        return;
    };
    let Ok(t) = SesTransport::new(SesSettings {
        region: s.region,
        endpoint: s.endpoint,
        credentials,
        configuration_set: None,
        campaign: String::new(),
        connect_timeout: s.connect_timeout,
        request_timeout: s.request_timeout,
    }) else {
        return;
    };
    match t.send_quota().await {
        Ok(Some(q)) => {
            if !rate_given && cfg.rate.is_none() && q.max_send_rate > 0.0 {
                tracing::info!(
                    rate = q.max_send_rate,
                    "rate from the SES account's MaxSendRate"
                );
                cfg.rate = Some(q.max_send_rate);
            }
            let left = (q.max_24_hour_send - q.sent_last_24_hours).max(0.0);
            // SES says -1 for an unlimited 24-hour quota.
            if q.max_24_hour_send >= 0.0 && unsent as f64 > left {
                tracing::warn!(
                    "{unsent} recipients to send, but the SES account has {left:.0} of its 24-hour quota left ({:.0} sent of {:.0}): the run will pause when SES says the quota is used up",
                    q.sent_last_24_hours,
                    q.max_24_hour_send
                );
            }
        }
        Ok(None) => {}
        // The sends will say what is wrong (and stop the run if it is the
        // credentials); the quota is a courtesy.
        Err(f) => tracing::warn!("cannot read the SES account's quota: {f}"),
    }
}

/// The provider profile's rate when none is written (`[delivery]`, the
/// relay's, `--rate`): Resend's documented default of 2 requests per second
/// per team (resend.com/changelog/api-rate-limit). SES reads its own from
/// the account (`ses_quota`).
fn provider_default_rate(kind: RelayKind, rate_given: bool, rate: Option<f64>) -> Option<f64> {
    (kind == RelayKind::Resend && !rate_given && rate.is_none())
        .then_some(edm_delivery::RESEND_DEFAULT_RATE)
}

fn retry_policy(c: &Campaign) -> RetryPolicy {
    let d = &c.config.delivery;
    RetryPolicy {
        max_attempts: d.max_attempts,
        base: d.retry_base,
        cap: edm_delivery::defaults::RETRY_CAP.max(d.retry_base),
        schedule: d.retry.clone(),
        retry_for: d.retry_for,
    }
}

/// Prepares the campaign (errors here mean it cannot run at all) and starts
/// sending on the current tokio runtime.
pub async fn start_send(campaign: Campaign, opts: SendOptions) -> Result<Run, Error> {
    let host = opts
        .relay
        .as_ref()
        .map_or(campaign.config.smtp.host.as_str(), |(h, _)| h.as_str());
    if let Some(message) = plaintext_auth_refusal(&campaign, host) {
        return Err(Error::Config {
            file: campaign.file.clone(),
            message,
        });
    }
    if campaign.config.smtp.accept_invalid_certs {
        tracing::warn!("{INVALID_CERTS_WARNING}");
    }
    let password = campaign.password()?;
    let state = opts.state.clone().unwrap_or_else(|| campaign.state_path());
    // What reports name: the file, or the campaign in PostgreSQL.
    let shown = crate::state::location(&campaign, opts.state.as_deref());
    let c2 = campaign.clone();
    let s2 = state.clone();
    let (policy, accept) = (opts.in_doubt, opts.accept_changes);
    let stop = opts.stop_ingest.clone().unwrap_or_default();
    let prepared =
        tokio::task::spawn_blocking(move || prepare_with_stop(&c2, &s2, policy, accept, &stop))
            .await
            .map_err(|e| Error::Crashed {
                file: campaign.file.clone(),
                task: Task::Preparing,
                reason: e.to_string(),
            })??;
    let mut dcfg = delivery_config(&campaign, &opts, password);
    let transport = transport(&campaign, &dcfg)?;
    if campaign.relay_kind() == RelayKind::Ses {
        let unsent = prepared
            .store
            .summary()
            .map(|s| {
                [
                    Status::Pending,
                    Status::Sending,
                    Status::Deferred,
                    Status::InDoubt,
                ]
                .iter()
                .map(|st| s.count(*st))
                .sum()
            })
            .unwrap_or(0);
        ses_quota(&campaign, &mut dcfg, unsent, opts.rate.is_some()).await;
    }
    if let Some(rate) = provider_default_rate(campaign.relay_kind(), opts.rate.is_some(), dcfg.rate)
    {
        tracing::info!(rate, "rate: Resend's default request rate");
        dcfg.rate = Some(rate);
    }
    let mut progress = Progress {
        campaign: campaign.config.campaign.name.clone(),
        started_at: now_ms(),
        now: now_ms(),
        target_rate: dcfg.rate,
        effective_rate: dcfg.rate,
        ..Default::default()
    };
    progress.counts = Status::ALL.iter().map(|s| (*s, 0)).collect();
    let (progress_tx, progress_rx) = watch::channel(progress);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let ingested = prepared.ingested;
    let in_doubt_found = prepared.in_doubt;
    let (repaired, reingested) = (prepared.repaired, prepared.reingested);
    let join = tokio::spawn(run(
        campaign,
        opts,
        prepared,
        (dcfg, transport),
        shown.clone(),
        progress_tx,
        control_rx,
    ));
    Ok(Run {
        progress: progress_rx,
        control: control_tx,
        ingested,
        in_doubt_found,
        state: shown,
        join,
        repaired,
        reingested,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run(
    campaign: Campaign,
    opts: SendOptions,
    prepared: Prepared,
    (mut dcfg, transport): (DeliveryConfig, Arc<dyn Transport>),
    state: PathBuf,
    progress_tx: watch::Sender<Progress>,
    mut control_rx: mpsc::UnboundedReceiver<Control>,
) -> Result<RunReport, Error> {
    let Prepared {
        store,
        columns,
        templates,
        ingested,
        in_doubt,
        ..
    } = prepared;
    let concurrency = dcfg.concurrency;
    let writer = Arc::new(Writer::spawn(store).map_err(|e| Error::Io {
        path: state.clone(),
        source: e,
    })?);
    // Every final dot waits for its durable mark (docs/resume.md).
    dcfg.marker = Some(Arc::new(WriterMarker(writer.marks())));
    if in_doubt > 0 {
        let what = match opts.in_doubt {
            InDoubtPolicy::Resend => "they are sent again (see `edm report --in-doubt`)",
            InDoubtPolicy::Skip => "they are left in_doubt (see `edm report --in-doubt`)",
        };
        tracing::warn!(
            in_doubt,
            "recipients were being sent when the last run died; {what}"
        );
    }
    let (jobs_tx, jobs_rx) = mpsc::channel(concurrency);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine = edm_delivery::start_with(transport, dcfg, jobs_rx, ev_tx);
    let engine_status = engine.status();
    let engine_control = engine.controller();
    let shared = Arc::new(Shared {
        in_flight: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        in_doubt: AtomicU64::new(0),
        outcome: Notify::new(),
        events: Mutex::new(VecDeque::new()),
        domains: Mutex::new(HashMap::new()),
        waiting: AtomicBool::new(false),
        deferred: Mutex::new(std::collections::HashSet::new()),
        relay: campaign.relay_name().to_string(),
    });
    if in_doubt > 0 {
        shared.push_event(format!(
            "{in_doubt} recipients were in doubt after the last run ({})",
            match opts.in_doubt {
                InDoubtPolicy::Resend => "resending",
                InDoubtPolicy::Skip => "skipped",
            }
        ));
    }

    // Controls: Stop also stops the feeder; the rest go to the engine.
    let control_task = {
        let shared = shared.clone();
        let engine_control = engine_control.clone();
        tokio::spawn(async move {
            while let Some(c) = control_rx.recv().await {
                if c == Control::Stop {
                    shared.stopping.store(true, Ordering::SeqCst);
                    shared.outcome.notify_waiters();
                    shared.push_event("stopping: finishing transactions in flight".into());
                }
                let _ = engine_control.send(c);
            }
        })
    };

    let feeder = tokio::spawn(feed(
        writer.clone(),
        shared.clone(),
        templates,
        columns,
        jobs_tx,
        concurrency,
        opts.limit,
        opts.max_retry_wait,
        campaign.config.delivery.daily_quota,
    ));

    let progress_task = tokio::spawn(progress_loop(
        writer.clone(),
        shared.clone(),
        engine_status,
        progress_tx.clone(),
    ));

    // The outcome loop: every event becomes a store outcome, in order.
    let policy = retry_policy(&campaign);
    while let Some(ev) = ev_rx.recv().await {
        handle_event(&writer, &shared, &policy, opts.in_doubt, ev).await;
        shared.outcome.notify_waiters();
    }
    let engine_end = engine.join().await;
    shared.stopping.store(true, Ordering::SeqCst);
    shared.outcome.notify_waiters();
    let feed_end = match feeder.await {
        Ok(end) => end,
        // A panic in the feeder is a bug: the run ends with exit 2, never 130.
        Err(e) => FeedEnd::Crashed(format!("the feeder crashed: {e}")),
    };
    // Anything the engine never answered for (it crashed) goes back to
    // pending: nothing is left `sending` by a run that ends.
    let orphans: Vec<RecipientId> = shared
        .in_flight
        .lock()
        .map(|mut m| m.drain().map(|(id, _)| id).collect())
        .unwrap_or_default();
    for id in orphans {
        record(
            &writer,
            Outcome {
                id,
                at: now_ms(),
                kind: OutcomeKind::Released,
            },
        )
        .await;
    }
    control_task.abort();
    progress_task.abort();
    // Wait for the aborted task to drop its handle on the writer.
    let _ = progress_task.await;
    let store_failed = writer.failure();
    let writer = Arc::try_unwrap(writer).map_err(|_| Error::Crashed {
        file: state.clone(),
        task: Task::StoreWriter,
        reason: "it is still shared at the end of the run".into(),
    })?;
    let store = writer.finish().map_err(|e| Error::StoreWriter {
        state: state.clone(),
        reason: e.to_string(),
    })?;
    let summary = store.summary()?;
    crate::suppress::after_run(&campaign, store.as_ref(), progress_tx.borrow().started_at);
    let end = match (engine_end, store_failed, feed_end) {
        (EngineEnd::Crashed(e), _, _) | (_, _, FeedEnd::Crashed(e)) => RunEnd::Crashed(e),
        (EngineEnd::AuthRefused(f), _, _) => RunEnd::AuthRefused(f),
        (EngineEnd::Outage(f), _, _) => RunEnd::Outage(f),
        (EngineEnd::Unreachable { relay, failure }, _, _) => RunEnd::Unreachable { relay, failure },
        (EngineEnd::Refused(f), _, _) => RunEnd::Refused(f),
        (EngineEnd::MarkFailed(e), None, _) => RunEnd::StoreFailed(e),
        (_, Some(e), _) => RunEnd::StoreFailed(e),
        (_, None, FeedEnd::Complete) if summary.count(Status::InDoubt) > 0 => RunEnd::InDoubt {
            count: summary.count(Status::InDoubt),
        },
        (_, None, FeedEnd::Complete) => RunEnd::Complete,
        (_, None, FeedEnd::Limit) => RunEnd::LimitReached,
        (_, None, FeedEnd::Waiting { deferred, next_due }) => {
            RunEnd::WaitingForRetries { deferred, next_due }
        }
        (_, None, FeedEnd::Stopped) => RunEnd::Stopped,
        (_, None, FeedEnd::Quota { quota }) => RunEnd::DailyQuota { quota },
    };
    // A last snapshot, so displays show the final counts.
    let mut last = progress_tx.borrow().clone();
    last.counts = summary.counts.clone();
    if let Ok(view) = StoreView::read(store.as_ref()) {
        last.by_category = view.summary.by_category;
        last.top_replies = view.top_replies;
        last.recent_failures = view.recent_failures.into_iter().rev().collect();
        last.domains = view.domains.into_iter().collect();
    }
    last.events = shared.events.lock().map(|e| e.clone()).unwrap_or_default();
    last.state = RunState::Done;
    last.in_flight = 0;
    last.now = now_ms();
    progress_tx.send_replace(last);
    Ok(RunReport {
        end,
        summary,
        ingested,
        in_doubt_found: in_doubt,
        in_doubt_policy: opts.in_doubt,
        sent: shared.sent.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        in_doubt: shared.in_doubt.load(Ordering::Relaxed),
        retried: shared.retried.load(Ordering::Relaxed),
        state,
    })
}

async fn handle_event(
    writer: &Writer,
    shared: &Shared,
    policy: &RetryPolicy,
    in_doubt: InDoubtPolicy,
    ev: DeliveryEvent,
) {
    let now = now_ms();
    // Read, not remove: a recipient leaves `in_flight` only once its outcome is
    // queued to the writer, so the daily quota never undercounts.
    let take = |id: RecipientId| {
        // The strings are moved out (no copy per message); the entry stays
        // until the outcome is queued.
        shared.in_flight.lock().ok().and_then(|mut m| {
            m.get_mut(&id).map(|i| InFlight {
                retry: i.retry,
                attempts: i.attempts,
                first_attempt_at: i.first_attempt_at,
                message_id: std::mem::take(&mut i.message_id),
                domain: std::mem::take(&mut i.domain),
            })
        })
    };
    let id = match &ev {
        DeliveryEvent::Accepted { id, .. }
        | DeliveryEvent::Rejected { id, .. }
        | DeliveryEvent::Returned { id }
        | DeliveryEvent::Held { id, .. }
        | DeliveryEvent::InDoubt { id, .. } => Some(*id),
        DeliveryEvent::Notice(_) => None,
    };
    let bump = |domain: &str, f: fn(&mut DomainCounts)| {
        if let Ok(mut d) = shared.domains.lock() {
            f(d.entry(domain.to_string()).or_default());
        }
    };
    match ev {
        DeliveryEvent::Accepted { id, reply } => {
            let info = take(id);
            shared.sent.fetch_add(1, Ordering::Relaxed);
            let message_id = info
                .as_ref()
                .map(|i| i.message_id.clone())
                .unwrap_or_default();
            if let Some(i) = &info {
                bump(&i.domain, |c| c.sent += 1);
            }
            record(
                writer,
                Outcome {
                    id,
                    at: now,
                    kind: OutcomeKind::Sent {
                        reply,
                        message_id,
                        relay: shared.relay.clone(),
                    },
                },
            )
            .await;
        }
        DeliveryEvent::Rejected { id, failure } => {
            let info = take(id);
            let attempts = info.as_ref().map(|i| i.attempts).unwrap_or(0) + 1;
            let age = info
                .as_ref()
                .map(|i| Duration::from_millis((now - i.first_attempt_at).max(0) as u64))
                .unwrap_or_default();
            let domain = info.map(|i| i.domain).unwrap_or_default();
            let kind = match policy.decide(&failure, attempts, age) {
                Verdict::Retry { after, counts } => {
                    shared.retried.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut d) = shared.deferred.lock() {
                        d.insert(id);
                    }
                    bump(&domain, |c| c.deferred += 1);
                    OutcomeKind::Deferred {
                        next_attempt_at: add_ms(now, after),
                        failure,
                        count_attempt: counts,
                    }
                }
                Verdict::GiveUp => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    bump(&domain, |c| c.failed += 1);
                    OutcomeKind::Failed { failure }
                }
            };
            record(writer, Outcome { id, at: now, kind }).await;
        }
        DeliveryEvent::Held { id, failure } => {
            take(id);
            record(
                writer,
                Outcome {
                    id,
                    at: now,
                    kind: OutcomeKind::Held { failure },
                },
            )
            .await;
        }
        DeliveryEvent::InDoubt { id, failure } => {
            let info = take(id);
            let attempts = info.as_ref().map(|i| i.attempts).unwrap_or(0) + 1;
            let age = info
                .as_ref()
                .map(|i| Duration::from_millis((now - i.first_attempt_at).max(0) as u64))
                .unwrap_or_default();
            shared.in_doubt.fetch_add(1, Ordering::Relaxed);
            shared.push_event(format!(
                "in doubt: no reply to the final dot ({}); {}",
                failure.reply,
                match in_doubt {
                    InDoubtPolicy::Resend => "resent later, still flagged",
                    InDoubtPolicy::Skip => "left in doubt (--in-doubt skip)",
                }
            ));
            // Resend: deferred like a transient failure and flagged; out of
            // attempts, or `skip`: left in doubt, never failed (it may have
            // been delivered).
            let next_attempt_at = match (in_doubt, policy.decide(&failure, attempts, age)) {
                (InDoubtPolicy::Resend, Verdict::Retry { after, .. }) => {
                    shared.retried.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut d) = shared.deferred.lock() {
                        d.insert(id);
                    }
                    Some(add_ms(now, after))
                }
                _ => None,
            };
            record(
                writer,
                Outcome {
                    id,
                    at: now,
                    kind: OutcomeKind::InDoubt {
                        failure,
                        next_attempt_at,
                    },
                },
            )
            .await;
        }
        DeliveryEvent::Returned { id } => {
            take(id);
            record(
                writer,
                Outcome {
                    id,
                    at: now,
                    kind: OutcomeKind::Released,
                },
            )
            .await;
        }
        DeliveryEvent::Notice(n) => {
            let kind = match &n {
                Notice::RateChanged { .. } => "rate",
                Notice::ConnectionProblem { .. } => "connection",
                Notice::BreakerOpen { .. } | Notice::BreakerClosed => "breaker",
                Notice::Paused { .. } | Notice::Resumed => "pause",
                Notice::Stopping { .. } => "stop",
            };
            let text = n.to_string();
            tracing::info!(kind, "{text}");
            shared.push_event(text.clone());
            writer.event(kind, text).await;
        }
    }
    if let Some(id) = id
        && let Ok(mut m) = shared.in_flight.lock()
    {
        m.remove(&id);
    }
}

enum FeedEnd {
    Crashed(String),
    Complete,
    Quota { quota: u64 },
    Stopped,
    Limit,
    Waiting { deferred: u64, next_due: UnixMillis },
}

#[allow(clippy::too_many_arguments)]
async fn feed(
    writer: Arc<Writer>,
    shared: Arc<Shared>,
    templates: edm_template::Templates,
    columns: Vec<String>,
    jobs: mpsc::Sender<edm_model::Envelope>,
    concurrency: usize,
    limit: Option<u64>,
    max_retry_wait: Duration,
    daily_quota: Option<u64>,
) -> FeedEnd {
    // Retries in flight at most: a wave of transient errors cannot crowd out
    // first attempts or multiply the load (the rate gate bounds the rest).
    let retry_budget = concurrency.max(2);
    // Claim little at a time: claimed rows are `sending`, so after a crash
    // they are in doubt. Two connections' worth keeps the senders fed while
    // the next claim waits behind the writer; with the queue and the
    // transactions in flight, about four times `concurrency` at most.
    let batch = (concurrency * 2).clamp(2, 256);
    let mut claimed_total = 0u64;
    let stopping = || shared.stopping.load(Ordering::SeqCst) || writer.failure().is_some();
    loop {
        // Registered before anything below is read, so an outcome recorded
        // after those reads still wakes the waits (`notify_waiters` wakes
        // only futures that exist): no lost wake-up, so no timeout to poll by.
        let outcome = shared.outcome.notified();
        tokio::pin!(outcome);
        outcome.as_mut().enable();
        if stopping() {
            return FeedEnd::Stopped;
        }
        let mut want = match limit {
            Some(l) if claimed_total >= l => return FeedEnd::Limit,
            Some(l) => batch.min((l - claimed_total) as usize),
            None => batch,
        };
        if let Some(quota) = daily_quota {
            // Exact across restarts: counted from the store, in flight included.
            // In flight first: a recipient leaves `in_flight` only after its
            // outcome is queued, so it is then counted by `sent_since` (queued
            // after it). The other order could count it in neither.
            let in_flight = shared.in_flight.lock().map(|m| m.len() as u64).unwrap_or(0);
            let since = now_ms() - 24 * 3600 * 1000;
            let sent = match writer.sent_since(since).await {
                Ok(n) => n,
                Err(_) => return FeedEnd::Stopped,
            };
            let left = quota.saturating_sub(sent + in_flight);
            if left == 0 {
                if in_flight > 0 {
                    outcome.await;
                    continue;
                }
                return FeedEnd::Quota { quota };
            }
            want = want.min(left as usize);
        }
        let retries_in_flight = shared
            .in_flight
            .lock()
            .map(|m| m.values().filter(|i| i.retry).count())
            .unwrap_or(0);
        let max_due = retry_budget.saturating_sub(retries_in_flight);
        let claimed = match writer.claim(want, max_due, now_ms()).await {
            Ok(c) => c,
            Err(e) => {
                writer.fail(e.to_string());
                return FeedEnd::Stopped;
            }
        };
        if claimed.is_empty() {
            let busy = shared
                .in_flight
                .lock()
                .map(|m| !m.is_empty())
                .unwrap_or(false);
            if busy {
                // Outcomes still to come may schedule retries: wait for one.
                outcome.await;
                continue;
            }
            let summary = match writer.summary().await {
                Ok(s) => s,
                Err(_) => return FeedEnd::Stopped,
            };
            let deferred = summary.count(Status::Deferred);
            let pending = summary.count(Status::Pending);
            if deferred == 0 && pending == 0 {
                return FeedEnd::Complete;
            }
            let now = now_ms();
            let next_due = summary.next_due.unwrap_or(now);
            if deferred > 0 && pending == 0 && next_due - now > max_retry_wait.as_millis() as i64 {
                return FeedEnd::Waiting { deferred, next_due };
            }
            shared.waiting.store(true, Ordering::Relaxed);
            // Asleep until the next retry is due (bounded by `max_retry_wait`
            // above), or an outcome, or a stop. The floor only guards
            // against spinning on a row due now that the claim did not take.
            let wait = Duration::from_millis((next_due - now).max(50) as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = outcome => {}
            }
            continue;
        }
        shared.waiting.store(false, Ordering::Relaxed);
        claimed_total += claimed.len() as u64;
        let mut engine_gone = false;
        for r in claimed {
            if engine_gone {
                record(
                    &writer,
                    Outcome {
                        id: r.id,
                        at: now_ms(),
                        kind: OutcomeKind::Released,
                    },
                )
                .await;
                continue;
            }
            match templates.render(&columns, &r) {
                Ok(env) => {
                    if let Ok(mut m) = shared.in_flight.lock() {
                        let retry = r.attempts > 0
                            || shared
                                .deferred
                                .lock()
                                .map(|d| d.contains(&r.id))
                                .unwrap_or(false);
                        m.insert(
                            r.id,
                            InFlight {
                                retry,
                                attempts: r.attempts,
                                first_attempt_at: r.first_attempt_at.unwrap_or_else(now_ms),
                                message_id: env.message_id.clone(),
                                domain: env.domain.clone(),
                            },
                        );
                    }
                    if let Err(mpsc::error::SendError(env)) = jobs.send(env).await {
                        engine_gone = true;
                        if let Ok(mut m) = shared.in_flight.lock() {
                            m.remove(&env.id);
                        }
                        record(
                            &writer,
                            Outcome {
                                id: env.id,
                                at: now_ms(),
                                kind: OutcomeKind::Released,
                            },
                        )
                        .await;
                    }
                }
                Err(failure) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    record(
                        &writer,
                        Outcome {
                            id: r.id,
                            at: now_ms(),
                            kind: OutcomeKind::Failed { failure },
                        },
                    )
                    .await;
                }
            }
        }
        if engine_gone {
            return FeedEnd::Stopped;
        }
    }
}

async fn progress_loop(
    writer: Arc<Writer>,
    shared: Arc<Shared>,
    engine: watch::Receiver<edm_delivery::EngineStatus>,
    tx: watch::Sender<Progress>,
) {
    let mut view_rx = writer.view();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_sent = 0u64;
    let mut last_sample = tokio::time::Instant::now();
    let mut history: VecDeque<f64> = VecDeque::new();
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        let now = tokio::time::Instant::now();
        let sent = shared.sent.load(Ordering::Relaxed);
        if now.duration_since(last_sample) >= Duration::from_secs(1) {
            let secs = now.duration_since(last_sample).as_secs_f64();
            history.push_back((sent - last_sent) as f64 / secs);
            while history.len() > 600 {
                history.pop_front();
            }
            last_sent = sent;
            last_sample = now;
        }
        let view: StoreView = view_rx.borrow_and_update().clone();
        let es = engine.borrow().clone();
        let mut p = tx.borrow().clone();
        p.now = now_ms();
        p.counts = view.summary.counts.clone();
        p.by_category = view.summary.by_category.clone();
        p.top_replies = view.top_replies.clone();
        p.recent_failures = view.recent_failures.iter().rev().cloned().collect();
        p.domains = view.domains.iter().cloned().collect();
        p.in_flight = es.in_flight;
        p.target_rate = es.target_rate;
        p.effective_rate = es.effective_rate;
        p.rate_history = history.clone();
        p.retries = shared.retried.load(Ordering::Relaxed);
        p.events = shared.events.lock().map(|e| e.clone()).unwrap_or_default();
        p.state = if shared.stopping.load(Ordering::Relaxed) {
            RunState::Stopping
        } else if es.paused {
            RunState::Paused
        } else if es.outage {
            RunState::Outage
        } else if es.effective_rate != es.target_rate {
            RunState::Throttled
        } else if shared.waiting.load(Ordering::Relaxed) {
            RunState::WaitingForRetries
        } else {
            RunState::Running
        };
        tx.send_replace(p);
        if ticks.is_multiple_of(2) {
            // Ask the writer for a fresh view for the next frames.
            writer.refresh();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(end: RunEnd) -> RunReport {
        RunReport {
            end,
            summary: Summary::default(),
            ingested: 0,
            in_doubt_found: 0,
            in_doubt_policy: InDoubtPolicy::Resend,
            sent: 0,
            failed: 0,
            in_doubt: 0,
            retried: 0,
            state: PathBuf::new(),
        }
    }

    #[test]
    fn resend_runs_at_its_documented_default_unless_a_rate_is_written() {
        assert_eq!(
            provider_default_rate(RelayKind::Resend, false, None),
            Some(2.0)
        );
        assert_eq!(
            provider_default_rate(RelayKind::Resend, false, Some(5.0)),
            None
        );
        // `--rate 0` (unlimited) is a rate written.
        assert_eq!(provider_default_rate(RelayKind::Resend, true, None), None);
        assert_eq!(provider_default_rate(RelayKind::Smtp, false, None), None);
        assert_eq!(provider_default_rate(RelayKind::Ses, false, None), None);
    }

    #[test]
    fn exit_codes_of_the_engine_promises() {
        let f = Failure::local(
            edm_model::Stage::Connect,
            edm_model::Category::ConnectRefused,
            "x",
        );
        let unreachable = RunEnd::Unreachable {
            relay: "h:25".into(),
            failure: f.clone(),
        };
        assert_eq!(report(unreachable).exit_code(), 2);
        assert_eq!(report(RunEnd::Refused(f)).exit_code(), 2);
        // An internal error is exit 2, never 130 (stopped by the operator).
        assert_eq!(report(RunEnd::Crashed("boom".into())).exit_code(), 2);
        assert_eq!(report(RunEnd::InDoubt { count: 3 }).exit_code(), 3);
    }
}
