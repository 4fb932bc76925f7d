//! `edm send`: claim → render → deliver → record, with progress on the side.
//!
//! Two tasks and a thread, each the one owner of its state:
//! - the **feeder** claims recipients from the store (durably `sending`
//!   before they are queued), renders them and queues them for delivery;
//!   it waits for due retries and decides when the run is complete. It
//!   counts what it handed out; what settled it reads from a watch.
//! - the **outcome loop** turns delivery events into store outcomes (retry
//!   decisions happen here, with the campaign's [`RetryPolicy`]), folds
//!   them and the feeder's claims into the [`Progress`] snapshot
//!   ([`ProgressFold`]) published four times a second, and forwards the
//!   operator's controls. Events carry what it needs (domain, attempts,
//!   first attempt, relay), so there is no side table.
//! - the **writer thread** is the store's only writer (`writer.rs`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use edm_delivery::{
    ApiKey, Credentials, DeliveryConfig, DomainLimit, EngineEnd, IdHasher, PoolMember,
    PoolTransport, ResendSettings, ResendTransport, RetryPolicy, Security, SesSettings,
    SesTransport, SmtpSettings, SmtpTransport, Transport, Verdict,
};
use edm_model::{
    Attempt, Control, DeliveryEvent, Failure, Notice, Progress, ProgressFold, RecipientId,
    Recorded, Status, UnixMillis, add_ms, now_ms,
};
use edm_store::{CampaignStore, InDoubtPolicy, Outcome, OutcomeKind, Summary};
use tokio::sync::{mpsc, watch};

use crate::config::{Campaign, RelayKind, SecurityName};
use crate::prepare::{Prepared, prepare_as};
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
    /// Go on although the reputation breaker trips (`--accept-reputation`).
    pub accept_reputation: bool,
    /// This worker's name when several send one campaign (`--worker`; the
    /// state in PostgreSQL only). Default: `host:pid`.
    pub worker: Option<String>,
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
            accept_reputation: false,
            worker: None,
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
    /// The reputation breaker: too many hard bounces or complaints among
    /// the latest recipients (`[bounces] max_bounce_rate`,
    /// `max_complaint_rate`); the rest is pending.
    Reputation(crate::reputation::ReputationTrip),
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
            | RunEnd::Crashed(_)
            | RunEnd::Reputation(_) => 2,
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

/// The SMTP transport's settings (`[smtp]`, or `edm demo`'s own sink):
/// they live with the transport, not in the engine's [`DeliveryConfig`].
pub(crate) fn smtp_settings(
    c: &Campaign,
    opts: &SendOptions,
    password: Option<String>,
) -> SmtpSettings {
    let s = &c.config.smtp;
    let (host, port) = opts
        .relay
        .clone()
        .unwrap_or_else(|| (s.host.clone(), c.port()));
    let from_domain = c.from_domain().unwrap_or_default();
    SmtpSettings {
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
    }
}

/// The engine's settings (`[delivery]` and the command line), whatever the
/// transport.
pub(crate) fn delivery_config(c: &Campaign, opts: &SendOptions) -> DeliveryConfig {
    let d = &c.config.delivery;
    let mut cfg = DeliveryConfig::new();
    cfg.relay = c.relay_name().to_string();
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
pub(crate) fn transport(
    c: &Campaign,
    cfg: &DeliveryConfig,
    smtp: SmtpSettings,
) -> Result<Arc<dyn Transport>, Error> {
    if c.is_pool() {
        return pool_transport(c, cfg, &smtp, &Default::default());
    }
    let bad = |message: String| Error::Config {
        file: c.file.clone(),
        message,
    };
    match (c.relay_kind(), c.ses()) {
        (RelayKind::Ses, Some(s)) => ses_transport(c, s, c.relay_name()),
        (RelayKind::Resend, _) => {
            let key = format!("[[relay]] {:?}", c.relay_name());
            let s = c
                .resend()
                .ok_or_else(|| bad(format!("{key}: the relay's keys do not read")))?;
            resend_transport(c, s, c.relay_name())
        }
        _ => {
            let t = SmtpTransport::new(smtp).map_err(edm_delivery::Error::Tls)?;
            Ok(Arc::new(t))
        }
    }
}

/// The Amazon SES v2 transport of the relay named `name`.
fn ses_transport(
    c: &Campaign,
    s: crate::config::SesSection,
    name: &str,
) -> Result<Arc<dyn Transport>, Error> {
    let bad = |message: String| Error::Config {
        file: c.file.clone(),
        message: format!("[[relay]] {name:?}: {message}"),
    };
    let credentials = Credentials::load(s.profile.as_deref(), |k| std::env::var(k).ok())
        .map_err(|e| bad(e.to_string()))?;
    let t = SesTransport::new(SesSettings {
        region: s.region,
        endpoint: s.endpoint,
        credentials,
        configuration_set: s.configuration_set,
        campaign: c.config.campaign.name.clone(),
        connect_timeout: s.connect_timeout,
        request_timeout: s.request_timeout,
    })
    .map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(t))
}

/// The Resend transport of the relay named `name` (its API key read from
/// the environment, never logged).
fn resend_transport(
    c: &Campaign,
    s: crate::config::ResendSection,
    name: &str,
) -> Result<Arc<dyn Transport>, Error> {
    let api_key = c.resend_api_key_of(name, &s)?;
    let t = ResendTransport::new(ResendSettings {
        endpoint: s.endpoint,
        api_key: ApiKey::new(api_key),
        campaign: c.config.campaign.name.clone(),
        connect_timeout: s.connect_timeout,
        request_timeout: s.request_timeout,
    })
    .map_err(|e| Error::Config {
        file: c.file.clone(),
        message: format!("[[relay]] {name:?}: {e}"),
    })?;
    Ok(Arc::new(t))
}

/// A pool of relays (several `[[relay]]` tables) as one [`Transport`]: each
/// member with its own connection settings, weight, rate, concurrency and
/// daily quota (`sent_today`: what each accepted in the last 24 hours, from
/// the state). docs/transports.md, "Pools and failover".
pub(crate) fn pool_transport(
    c: &Campaign,
    cfg: &DeliveryConfig,
    smtp: &SmtpSettings,
    sent_today: &std::collections::BTreeMap<String, u64>,
) -> Result<Arc<dyn Transport>, Error> {
    let bad = |message: String| Error::Config {
        file: c.file.clone(),
        message,
    };
    let mut members = Vec::new();
    for r in &c.config.relay {
        let key = format!("[[relay]] {:?}", r.name);
        let t: Arc<dyn Transport> = match r.kind {
            RelayKind::Smtp => {
                let s = c
                    .relay_smtp(r)
                    .ok_or_else(|| bad(format!("{key}: not SMTP settings")))?;
                if s.username.is_some()
                    && s.security == SecurityName::None
                    && !s.allow_plaintext_auth
                    && !edm_delivery::is_loopback(&s.host)
                {
                    return Err(bad(format!(
                        "{key} security = \"none\" would send the password to {} in clear: set security = \"starttls\" or \"tls\", or allow_plaintext_auth = true if the network is yours",
                        s.host
                    )));
                }
                let password = c.password_of(&s, &key)?;
                let port = s.port.unwrap_or(match s.security {
                    SecurityName::None => 25,
                    SecurityName::Starttls => 587,
                    SecurityName::Tls => 465,
                });
                let mut settings = smtp.clone();
                settings.host = s.host.clone();
                settings.port = port;
                settings.security = match s.security {
                    SecurityName::None => Security::None,
                    SecurityName::Starttls => Security::StartTls,
                    SecurityName::Tls => Security::Tls,
                };
                settings.credentials = s.username.clone().zip(password);
                if let Some(h) = &s.helo_name {
                    settings.helo_name = h.clone();
                }
                settings.connect_timeout = s.connect_timeout;
                settings.command_timeout = s.command_timeout;
                settings.data_timeout = s.data_timeout;
                settings.accept_invalid_certs = s.accept_invalid_certs;
                settings.allow_plaintext_auth = s.allow_plaintext_auth;
                let t = SmtpTransport::new(settings)
                    .map_err(|e| bad(format!("{key}: cannot set up TLS: {e}")))?;
                Arc::new(t)
            }
            RelayKind::Ses => {
                let s = c
                    .relay_ses(r)
                    .ok_or_else(|| bad(format!("{key}: not SES settings")))?;
                ses_transport(c, s, &r.name)?
            }
            RelayKind::Resend => {
                let s = c
                    .relay_resend(r)
                    .ok_or_else(|| bad(format!("{key}: not Resend settings")))?;
                resend_transport(c, s, &r.name)?
            }
        };
        let mut m = PoolMember::new(r.name.clone(), t);
        m.weight = r.weight.unwrap_or(1.0);
        m.rate = r.rate.filter(|r| *r > 0.0).or(
            // Resend's documented default request rate, unless one is written.
            (r.kind == RelayKind::Resend).then_some(edm_delivery::RESEND_DEFAULT_RATE),
        );
        m.burst = cfg.burst;
        m.concurrency = c.relay_concurrency(r);
        m.daily_quota = r.daily_quota;
        m.sent_today = sent_today.get(&r.name).copied().unwrap_or(0);
        members.push(m);
    }
    Ok(Arc::new(
        PoolTransport::new(members, cfg.quota_pause)
            .with_refusal_limit(cfg.stop_after_identical_refusals),
    ))
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
    if opts.worker.is_some() && !campaign.uses_postgres() {
        return Err(Error::Config {
            file: campaign.file.clone(),
            message: "--worker names one of several workers of a campaign whose state is in \
                      PostgreSQL ([store] url, --store, EDM_STORE_URL); a campaign in a SQLite \
                      file is sent by one `edm send` at a time"
                .into(),
        });
    }
    let password = campaign.password()?;
    let state = opts.state.clone().unwrap_or_else(|| campaign.state_path());
    // What reports name: the file, or the campaign in PostgreSQL.
    let shown = crate::state::location(&campaign, opts.state.as_deref());
    let c2 = campaign.clone();
    let s2 = state.clone();
    let (policy, accept) = (opts.in_doubt, opts.accept_changes);
    let stop = opts.stop_ingest.clone().unwrap_or_default();
    let worker = opts.worker.clone();
    let mut prepared = tokio::task::spawn_blocking(move || {
        prepare_as(&c2, &s2, policy, accept, &stop, worker.as_deref())
    })
    .await
    .map_err(|e| Error::Crashed {
        file: campaign.file.clone(),
        task: Task::Preparing,
        reason: e.to_string(),
    })??;
    // `[bounces] return_path`: each recipient's MAIL FROM carries its
    // authenticated token (VERP, docs/bounces.md). Not through Amazon SES:
    // it sets its own MAIL FROM, and its FromEmailAddress must be a
    // verified identity; bounces come back by Message-ID there.
    if campaign.relay_kind() != RelayKind::Ses
        && let Some(verp) =
            crate::bounces::Verp::load_or_create(&campaign, prepared.store.as_mut())?
    {
        prepared.templates.set_return_path(Some(verp.return_path()));
    }
    let mut dcfg = delivery_config(&campaign, &opts);
    let smtp = smtp_settings(&campaign, &opts, password);
    let transport = if campaign.is_pool() {
        // Each member's daily quota counts what it accepted in the last 24 h.
        let since = now_ms() - 24 * 3600 * 1000;
        let sent_today = prepared
            .store
            .relay_counts(since)
            .map(|m| m.into_iter().map(|(k, v)| (k, v.sent_since)).collect())
            .unwrap_or_default();
        // The engine's workers: every member's connections at once.
        dcfg.concurrency = campaign.concurrency();
        pool_transport(&campaign, &dcfg, &smtp, &sent_today)?
    } else {
        transport(&campaign, &dcfg, smtp)?
    };
    if campaign.relay_kind() == RelayKind::Ses && !campaign.is_pool() {
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
        (progress_tx, control_rx),
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

/// The run's one owner of its progress and in-flight bookkeeping: the
/// outcome loop. Everything below talks to it by message or watch.
///
/// What the feeder tells it.
enum Fed {
    /// A recipient claimed and queued for delivery (its envelope carries
    /// the same attempt).
    Claimed(RecipientId, Attempt),
    /// A claimed recipient that could not be rendered (recorded failed).
    RenderFailed {
        attempt: Attempt,
        email: String,
        failure: Failure,
    },
    /// Nothing to claim now: waiting for deferred recipients (or not).
    Waiting(bool),
}

/// Envelopes settled (any outcome recorded, or returned), in all and of
/// them retries: the feeder's in-flight count is what it handed out minus
/// these. Published by the outcome loop after the outcome is queued to the
/// writer, so the daily quota never undercounts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Settled {
    all: u64,
    retries: u64,
}

/// This run's counts for its report, kept by the outcome loop.
#[derive(Default)]
struct RunCounts {
    sent: u64,
    failed: u64,
    retried: u64,
    in_doubt: u64,
}

/// How often the progress snapshot is published (four frames a second).
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

async fn run(
    campaign: Campaign,
    opts: SendOptions,
    prepared: Prepared,
    (mut dcfg, transport): (DeliveryConfig, Arc<dyn Transport>),
    state: PathBuf,
    (progress_tx, mut control_rx): (watch::Sender<Progress>, mpsc::UnboundedReceiver<Control>),
) -> Result<RunReport, Error> {
    let Prepared {
        store,
        columns,
        templates,
        ingested,
        in_doubt,
        member,
        ..
    } = prepared;
    let concurrency = dcfg.concurrency;
    // The fold starts from the store's counts; from here on only events move them.
    let start = store.summary()?;
    let mut fold = ProgressFold::new(progress_tx.borrow().clone());
    fold.start_from(&start.counts, &start.by_category);
    fold.set_late(late_tally(store.as_ref()));
    // The reputation breaker starts from the latest recipients in the state,
    // late bounces and complaints applied since the last run included.
    let mut reputation = crate::reputation::Reputation::new(
        &campaign.config.bounces,
        opts.accept_reputation,
        store
            .reputation_window(crate::reputation::WINDOW)
            .unwrap_or_default(),
    );
    let mut tripped = reputation.check();
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
        fold.log(
            now_ms(),
            format!(
                "{in_doubt} recipients were in doubt after the last run ({})",
                match opts.in_doubt {
                    InDoubtPolicy::Resend => "resending",
                    InDoubtPolicy::Skip => "skipped",
                }
            ),
        );
    }
    let (jobs_tx, jobs_rx) = mpsc::channel(concurrency);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine = edm_delivery::start_with(transport, dcfg, jobs_rx, ev_tx);
    let engine_status = engine.status();
    let engine_control = engine.controller();
    // Several workers on one campaign (PostgreSQL): this one's heartbeat
    // (`workers.rs`) reports the engine's figures and sets its share.
    if let Some(m) = &member {
        m.attach(engine.status(), engine.controller());
    }
    let membership = member.as_ref().map(|m| m.state.clone());
    let (fed_tx, mut fed_rx) = mpsc::unbounded_channel();
    let (settled_tx, settled_rx) = watch::channel(Settled::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let feeder = tokio::spawn(
        Feeder {
            writer: writer.clone(),
            templates,
            columns,
            jobs: jobs_tx,
            fed: fed_tx,
            settled: settled_rx,
            stop: stop_rx,
            concurrency,
            limit: opts.limit,
            max_retry_wait: opts.max_retry_wait,
            daily_quota: campaign.config.delivery.daily_quota,
            member: membership.clone(),
            render_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            render_cost_us: 0,
        }
        .run(),
    );

    // `[bounces] poll`: the bounce mailbox read in the background.
    let poll_task = crate::bounces::spawn_poll(&campaign, &state);

    // The outcome loop: every event becomes a store outcome, in order, and
    // a step of the progress fold; the feeder's claims and the operator's
    // controls come here too. Biased: a claim is always folded before the
    // event about it (the feeder says so before it queues the envelope).
    let outcomes = Outcomes {
        policy: retry_policy(&campaign),
        in_doubt: opts.in_doubt,
        relay: campaign.relay_name().to_string(),
        prefix: membership
            .as_ref()
            .map(|m| format!("[{}] ", m.name))
            .unwrap_or_default(),
    };
    let mut counts = RunCounts::default();
    let mut settled = Settled::default();
    let mut claimed = Claimed::default();
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Several workers: the campaign's counts from the store every
    // `VIEW_EVERY` (a count ordered after this worker's outcomes folded so
    // far, `ProgressFold::rebase`), and the operator's stop from another
    // worker's dashboard.
    let mut view = tokio::time::interval(crate::workers::VIEW_EVERY);
    view.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (counted_tx, mut counted_rx) = mpsc::unbounded_channel();
    // The count in progress, if any: it holds a handle on the writer until
    // it sends its result, so one still running is awaited before the
    // writer is taken back at the end.
    let mut count_task: Option<tokio::task::JoinHandle<()>> = None;
    let mut remote_stop = membership.as_ref().map(|m| m.remote_stop());
    let mut remote_stopped = false;
    if let Some(trip) = &tripped {
        reputation_stop(&mut fold, &stop_tx, &engine_control, trip);
    }
    loop {
        tokio::select! {
            biased;
            _ = publish.tick() => {
                let es = engine_status.borrow().clone();
                fold.engine(es.target_rate, es.in_flight, &es.in_flight_by_relay);
                if let Some(m) = &membership {
                    fold.set_share(m.fair_share());
                    fold.set_workers(m.workers());
                }
                progress_tx.send_replace(fold.sample(now_ms()).clone());
            }
            _ = view.tick(), if membership.is_some() && count_task.is_none() => {
                let mark = fold.store_mark(now_ms());
                let (w, tx) = (writer.clone(), counted_tx.clone());
                count_task = Some(tokio::spawn(async move {
                    let counted = w.summary().await;
                    drop(w);
                    let _ = tx.send((mark, counted));
                }));
            }
            Some((mark, counted)) = counted_rx.recv() => {
                count_task = None;
                match counted {
                    Ok(summary) => fold.rebase(&mark, &summary.counts),
                    Err(e) => tracing::debug!(error = %e, "cannot read the campaign's counts"),
                }
            }
            _ = async {
                match remote_stop.as_mut() {
                    Some(r) => {
                        let _ = r.wait_for(|s| *s).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }, if !remote_stopped => {
                remote_stopped = true;
                stop_tx.send_replace(true);
                fold.stop();
                fold.log(
                    now_ms(),
                    "stopping: the operator stopped the campaign from another worker".into(),
                );
                let _ = engine_control.send(Control::Stop);
            }
            Some(c) = control_rx.recv() => {
                // Pause, rate and the dashboard's stop reach every worker
                // (PostgreSQL); a signal's stop stays this worker's.
                if let Some(m) = &member {
                    m.publish(c);
                }
                let c = if c == Control::StopAll { Control::Stop } else { c };
                if c == Control::Stop {
                    // Stop also stops the feeder; the rest go to the engine.
                    stop_tx.send_replace(true);
                    fold.stop();
                    fold.log(now_ms(), "stopping: finishing transactions in flight".into());
                }
                let _ = engine_control.send(c);
            }
            Some(f) = fed_rx.recv() => fed(&mut fold, &mut claimed, &mut counts, f),
            ev = ev_rx.recv() => {
                let Some(mut ev) = ev else { break };
                // The events already queued are taken in the same turn (up
                // to `EVENT_BATCH`), each after the feeder's claims so far: a
                // claim is still folded before any event about it (the
                // feeder says so before it queues the envelope). One pass of
                // the `select!` and one wake-up of the feeder per batch
                // instead of one per message.
                let mut taken = 0;
                let settled_before = settled;
                loop {
                    if let Some(id) = ev.id() {
                        claimed.remove(&id);
                    }
                    // The reputation breaker sees every acceptance and every
                    // refusal of an unknown mailbox, by domain.
                    let seen = match &ev {
                        DeliveryEvent::Accepted { domain, .. } => Some((domain.as_str(), false)),
                        DeliveryEvent::Rejected { failure, domain, .. }
                            if failure.category == edm_model::Category::RecipientUnknown =>
                        {
                            Some((domain.as_str(), true))
                        }
                        _ => None,
                    };
                    if let Some((domain, hard)) = seen
                        && let Some(trip) = reputation.observe(domain, hard)
                    {
                        reputation_stop(&mut fold, &stop_tx, &engine_control, &trip);
                        tripped = Some(trip);
                    }
                    let retry = event_attempt(&ev).is_some_and(|a| a.retry);
                    let is_envelope = ev.id().is_some();
                    outcomes.handle(&writer, &mut fold, &mut counts, ev).await;
                    if let Some(m) = &membership {
                        m.sent.store(counts.sent, std::sync::atomic::Ordering::Relaxed);
                        m.failed.store(counts.failed, std::sync::atomic::Ordering::Relaxed);
                    }
                    if is_envelope {
                        settled.all += 1;
                        settled.retries += u64::from(retry);
                    }
                    taken += 1;
                    if taken == EVENT_BATCH {
                        break;
                    }
                    while let Ok(f) = fed_rx.try_recv() {
                        fed(&mut fold, &mut claimed, &mut counts, f);
                    }
                    match ev_rx.try_recv() {
                        Ok(next) => ev = next,
                        // Empty, or closed: the next `recv` says which.
                        Err(_) => break,
                    }
                }
                if settled != settled_before {
                    settled_tx.send_replace(settled);
                }
            }
        }
    }
    let engine_end = engine.join().await;
    stop_tx.send_replace(true);
    if let Some(p) = poll_task {
        p.stop().await;
    }
    let feed_end = match feeder.await {
        Ok(end) => end,
        // A panic in the feeder is a bug: the run ends with exit 2, never 130.
        Err(e) => FeedEnd::Crashed(format!("the feeder crashed: {e}")),
    };
    // What the feeder said after the engine ended (a claim it could not queue).
    while let Ok(f) = fed_rx.try_recv() {
        fed(&mut fold, &mut claimed, &mut counts, f);
    }
    // Anything the engine never answered for (it crashed) goes back to
    // pending: nothing is left `sending` by a run that ends.
    for id in claimed.drain() {
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
    if let Some(m) = membership.as_ref().filter(|m| m.lost()) {
        writer.fail(m.lost_message());
    }
    if let Some(t) = count_task.take() {
        let _ = t.await;
    }
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
    // Every outcome is recorded: this worker leaves (no row of its own is
    // left `sending` under a worker that is not running).
    if let Some(m) = member {
        tokio::task::spawn_blocking(move || m.stop())
            .await
            .map_err(|e| Error::Crashed {
                file: state.clone(),
                task: Task::Run,
                reason: e.to_string(),
            })?;
    }
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
        (_, None, FeedEnd::Stopped) => match tripped {
            Some(trip) => RunEnd::Reputation(trip),
            None => RunEnd::Stopped,
        },
        (_, None, FeedEnd::Quota { quota }) => RunEnd::DailyQuota { quota },
    };
    // A last snapshot with the store's own tallies (the fold guesses where
    // an in-doubt resend came from; the store knows), read once.
    fold.finish();
    let mut last = fold.sample(now_ms()).clone();
    last.counts = summary.counts.clone();
    last.late = late_tally(store.as_ref());
    if let Ok(view) = StoreView::read(store.as_ref()) {
        last.by_category = view.summary.by_category;
        last.top_replies = view.top_replies;
        last.recent_failures = view.recent_failures.into_iter().rev().collect();
        last.domains = view.domains.into_iter().collect();
    }
    progress_tx.send_replace(last);
    Ok(RunReport {
        end,
        summary,
        ingested,
        in_doubt_found: in_doubt,
        in_doubt_policy: opts.in_doubt,
        sent: counts.sent,
        failed: counts.failed,
        in_doubt: counts.in_doubt,
        retried: counts.retried,
        state,
    })
}

/// The store's late outcomes for the progress display (none when it cannot
/// say: a display is never worth failing a run).
pub(crate) fn late_tally(store: &dyn CampaignStore) -> edm_model::LateTally {
    store
        .late_counts()
        .map(|l| edm_model::LateTally {
            bounced: l.bounced,
            complained: l.complained,
            soft_bounced: l.soft_bounced,
        })
        .unwrap_or_default()
}

/// Stops the run the way `q` does (transactions in flight finish, the rest
/// stays pending), saying why.
fn reputation_stop(
    fold: &mut ProgressFold,
    stop_tx: &watch::Sender<bool>,
    engine_control: &mpsc::UnboundedSender<Control>,
    trip: &crate::reputation::ReputationTrip,
) {
    tracing::warn!("reputation breaker: {trip}");
    stop_tx.send_replace(true);
    fold.stop();
    fold.log(now_ms(), format!("stopping: {trip}"));
    let _ = engine_control.send(Control::Stop);
}

/// The attempt an event hands back (`None` for a notice or a return).
fn event_attempt(ev: &DeliveryEvent) -> Option<&Attempt> {
    match ev {
        DeliveryEvent::Accepted { attempt, .. }
        | DeliveryEvent::Rejected { attempt, .. }
        | DeliveryEvent::Held { attempt, .. }
        | DeliveryEvent::InDoubt { attempt, .. } => Some(attempt),
        DeliveryEvent::Returned { .. } | DeliveryEvent::Notice(_) => None,
    }
}

/// The recipients claimed and not yet settled, by row id (an insert and a
/// remove per message: hashed with [`IdHasher`], not SipHash).
type Claimed = HashSet<RecipientId, std::hash::BuildHasherDefault<IdHasher>>;

/// Folds what the feeder says.
fn fed(fold: &mut ProgressFold, claimed: &mut Claimed, counts: &mut RunCounts, f: Fed) {
    match f {
        Fed::Claimed(id, attempt) => {
            claimed.insert(id);
            fold.claimed(&attempt);
        }
        Fed::RenderFailed {
            attempt,
            email,
            failure,
        } => {
            counts.failed += 1;
            fold.claimed(&attempt);
            fold.failed_locally(&email, &failure, now_ms());
        }
        Fed::Waiting(w) => fold.set_waiting(w),
    }
}

/// Turns delivery events into store outcomes: the retry decisions happen
/// here, with the campaign's [`RetryPolicy`].
struct Outcomes {
    policy: RetryPolicy,
    in_doubt: InDoubtPolicy,
    /// The relay's name kept with a sent recipient when the event has none.
    relay: String,
    /// `[NAME] ` before each event's text when several workers send the
    /// campaign (PostgreSQL): the log says which one saw what.
    prefix: String,
}

impl Outcomes {
    async fn handle(
        &self,
        writer: &Writer,
        fold: &mut ProgressFold,
        counts: &mut RunCounts,
        ev: DeliveryEvent,
    ) {
        let now = now_ms();
        let age =
            |a: &Attempt| Duration::from_millis(a.first_at.map_or(0, |t| (now - t).max(0) as u64));
        let (outcome, recorded) = match &ev {
            DeliveryEvent::Accepted {
                id,
                reply,
                message_id,
                relay,
                ..
            } => {
                counts.sent += 1;
                let relay = if relay.is_empty() { &self.relay } else { relay };
                let kind = OutcomeKind::Sent {
                    reply: reply.clone(),
                    message_id: message_id.clone(),
                    relay: relay.clone(),
                };
                (Some((*id, kind)), Recorded::Sent)
            }
            DeliveryEvent::Rejected {
                id,
                failure,
                attempt,
                relay,
                ..
            } => {
                // Recorded with every outcome, not only `sent`: `status
                // --json` `by_relay` counts failed and deferred per relay.
                let relay = if relay.is_empty() { &self.relay } else { relay };
                let attempts = attempt.before.saturating_add(1);
                match self.policy.decide(failure, attempts, age(attempt)) {
                    Verdict::Retry { after, counts: c } => {
                        counts.retried += 1;
                        let kind = OutcomeKind::Deferred {
                            next_attempt_at: add_ms(now, after),
                            failure: failure.clone(),
                            count_attempt: c,
                            relay: relay.clone(),
                        };
                        (Some((*id, kind)), Recorded::Deferred)
                    }
                    Verdict::GiveUp => {
                        counts.failed += 1;
                        let kind = OutcomeKind::Failed {
                            failure: failure.clone(),
                            relay: relay.clone(),
                        };
                        (Some((*id, kind)), Recorded::Failed)
                    }
                }
            }
            DeliveryEvent::Held { id, failure, .. } => {
                let kind = OutcomeKind::Held {
                    failure: failure.clone(),
                };
                (Some((*id, kind)), Recorded::Pending)
            }
            DeliveryEvent::InDoubt {
                id,
                failure,
                attempt,
                relay,
                ..
            } => {
                let relay = if relay.is_empty() { &self.relay } else { relay };
                counts.in_doubt += 1;
                fold.log(
                    now,
                    format!(
                        "in doubt: no reply to the final dot ({}); {}",
                        failure.reply,
                        match self.in_doubt {
                            InDoubtPolicy::Resend => "resent later, still flagged",
                            InDoubtPolicy::Skip => "left in doubt (--in-doubt skip)",
                        }
                    ),
                );
                // Resend: deferred like a transient failure and flagged; out of
                // attempts, or `skip`: left in doubt, never failed (it may have
                // been delivered).
                let attempts = attempt.before.saturating_add(1);
                let next_attempt_at = match (
                    self.in_doubt,
                    self.policy.decide(failure, attempts, age(attempt)),
                ) {
                    (InDoubtPolicy::Resend, Verdict::Retry { after, .. }) => {
                        counts.retried += 1;
                        Some(add_ms(now, after))
                    }
                    _ => None,
                };
                let recorded = if next_attempt_at.is_some() {
                    Recorded::Deferred
                } else {
                    Recorded::InDoubt
                };
                let kind = OutcomeKind::InDoubt {
                    failure: failure.clone(),
                    next_attempt_at,
                    relay: relay.clone(),
                };
                (Some((*id, kind)), recorded)
            }
            DeliveryEvent::Returned { id } => {
                (Some((*id, OutcomeKind::Released)), Recorded::Pending)
            }
            DeliveryEvent::Notice(n) => {
                let kind = match n {
                    Notice::RateChanged { .. } => "rate",
                    Notice::ConnectionProblem { .. } => "connection",
                    Notice::BreakerOpen { .. } | Notice::BreakerClosed => "breaker",
                    Notice::Paused { .. } | Notice::Resumed => "pause",
                    Notice::Stopping { .. } => "stop",
                    Notice::RelayDown { .. } => "relay_down",
                    Notice::RelayUp { .. } => "relay_up",
                };
                let text = n.to_string();
                tracing::info!(kind, "{text}");
                writer.event(kind, format!("{}{text}", self.prefix)).await;
                (None, Recorded::Nothing)
            }
        };
        if let Some((id, kind)) = outcome {
            record(writer, Outcome { id, at: now, kind }).await;
        }
        fold.apply(&ev, recorded, now);
    }
}

/// Events the outcome loop takes in one turn at most, so that the progress
/// tick and the operator's controls still come between batches.
const EVENT_BATCH: usize = 64;

enum FeedEnd {
    Crashed(String),
    Complete,
    Quota { quota: u64 },
    Stopped,
    Limit,
    Waiting { deferred: u64, next_due: UnixMillis },
}

/// The feeder: claims recipients (durably `sending` before they are
/// queued), renders them, queues them for the engine, waits for due
/// retries and decides when the run is complete. It owns its count of what
/// it handed out; what settled comes from the outcome loop's watch.
struct Feeder {
    writer: Arc<Writer>,
    templates: edm_template::Templates,
    columns: Vec<String>,
    jobs: mpsc::Sender<edm_model::Envelope>,
    fed: mpsc::UnboundedSender<Fed>,
    settled: watch::Receiver<Settled>,
    stop: watch::Receiver<bool>,
    concurrency: usize,
    limit: Option<u64>,
    max_retry_wait: Duration,
    daily_quota: Option<u64>,
    /// One worker among several (PostgreSQL): its lease and the others.
    member: Option<Arc<crate::workers::Membership>>,
    /// Threads a claimed batch is rendered on when rendering is slow.
    render_threads: usize,
    /// Running average of one message's rendering time (µs).
    render_cost_us: u64,
}

/// How often a worker left with only other workers' rows looks again (and
/// recovers expired leases meanwhile).
const OTHERS_POLL: Duration = Duration::from_secs(1);

/// Average rendering time (µs) from which a claimed batch is rendered on
/// several threads: well above the ~15 µs of a plain 4 KB message (a thread
/// handoff would cost more than it saves), well below DKIM's RSA signature.
const PARALLEL_RENDER_FROM_US: u64 = 100;

/// Renders `claimed` on up to `threads` threads, each a contiguous run of
/// rows: the results in the rows' order (issue 11: the pool sized to the
/// cores). Blocks, as rendering inline does.
fn render_parallel(
    templates: &edm_template::Templates,
    columns: &[String],
    claimed: &[edm_model::Recipient],
    threads: usize,
) -> Vec<Result<edm_model::Envelope, edm_model::Failure>> {
    let per = claimed.len().div_ceil(threads.max(1)).max(1);
    let render = |rows: &[edm_model::Recipient]| {
        rows.iter()
            .map(|r| templates.render(columns, r))
            .collect::<Vec<_>>()
    };
    std::thread::scope(|scope| {
        let mut chunks = claimed.chunks(per);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|rows| scope.spawn(move || render(rows)))
            .collect();
        // The first run on this thread, the others meanwhile.
        let mut all = render(first);
        for part in others {
            match part.join() {
                Ok(rendered) => all.extend(rendered),
                // Rendering does not panic on input; if it did, the panic
                // is the caller's, as it is when rendering inline.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    })
}

impl Feeder {
    /// Folds one message's rendering time (µs) into the running average
    /// that decides when a batch is rendered on the cores.
    fn note_render_cost(&mut self, us: u64) {
        self.render_cost_us = (self.render_cost_us * 7 + us) / 8;
    }

    async fn run(mut self) -> FeedEnd {
        // Retries in flight at most: a wave of transient errors cannot crowd out
        // first attempts or multiply the load (the rate gate bounds the rest).
        let retry_budget = self.concurrency.max(2);
        // Claim little at a time: claimed rows are `sending`, so after a crash
        // they are in doubt. Two connections' worth keeps the senders fed while
        // the next claim waits behind the writer; with the queue and the
        // transactions in flight, about four times `concurrency` at most.
        let batch = (self.concurrency * 2).clamp(2, 256);
        let mut claimed_total = 0u64;
        // Handed to the engine (all, retries); minus what settled: in flight.
        let (mut handed, mut handed_retries) = (0u64, 0u64);
        let mut waiting = false;
        if let Some(m) = self.member.clone() {
            // A worker that joins waits one heartbeat (`workers.rs`).
            tokio::select! {
                _ = m.ready() => {}
                _ = self.stop.changed() => {}
            }
        }
        loop {
            // Read (and marked seen) before anything below, so an outcome
            // settled after these reads still wakes the waits (`changed`
            // resolves for any newer version): no lost wake-up, no polling.
            let settled = *self.settled.borrow_and_update();
            if *self.stop.borrow_and_update() || self.writer.failure().is_some() {
                return FeedEnd::Stopped;
            }
            let in_flight = handed.saturating_sub(settled.all);
            if let Some(m) = &self.member {
                if m.lost() {
                    self.writer.fail(m.lost_message());
                    return FeedEnd::Stopped;
                }
                // Fencing: no work handed out on a lease that may have
                // lapsed (its rows may go to others); wait for a renewal.
                if !m.fresh() {
                    m.poke();
                    self.wait(Some(Duration::from_millis(200))).await;
                    continue;
                }
            }
            let mut want = match self.limit {
                Some(l) if claimed_total >= l => return FeedEnd::Limit,
                Some(l) => batch.min((l - claimed_total) as usize),
                None => batch,
            };
            if let Some(quota) = self.daily_quota {
                // Exact across restarts: counted from the store, in flight
                // included. In flight first: an envelope settles only after
                // its outcome is queued, so it is then counted by
                // `sent_since` (queued after it). The other order could count
                // it in neither.
                // Several workers: every `sending` row of the campaign (all
                // workers' in flight), read before the sent ones so that a
                // row settling in between is counted twice, never missed.
                let busy = match &self.member {
                    None => in_flight,
                    Some(_) => match self.writer.summary().await {
                        Ok(s) => s.count(Status::Sending).max(in_flight),
                        Err(_) => return FeedEnd::Stopped,
                    },
                };
                let since = now_ms() - 24 * 3600 * 1000;
                let sent = match self.writer.sent_since(since).await {
                    Ok(n) => n,
                    Err(_) => return FeedEnd::Stopped,
                };
                let left = quota.saturating_sub(sent + busy);
                if left == 0 {
                    if in_flight > 0 {
                        self.wait(None).await;
                        continue;
                    }
                    if busy > 0 {
                        // Others' messages in flight: one may fail.
                        self.wait(Some(OTHERS_POLL)).await;
                        continue;
                    }
                    return FeedEnd::Quota { quota };
                }
                want = want.min(left as usize);
            }
            let retries_in_flight = handed_retries.saturating_sub(settled.retries) as usize;
            let max_due = retry_budget.saturating_sub(retries_in_flight);
            let claim_at = now_ms();
            // Several workers: the store caps the claim with the quota under
            // a lock, so that their sum keeps it exactly (the counts above
            // may be a moment old when two claim at once).
            let cap = match (&self.member, self.daily_quota) {
                (Some(_), Some(q)) => Some((q, claim_at - 24 * 3600 * 1000)),
                _ => None,
            };
            let claimed = match self.writer.claim_capped(want, max_due, claim_at, cap).await {
                Ok(c) => c,
                Err(e) => {
                    self.writer.fail(e.to_string());
                    return FeedEnd::Stopped;
                }
            };
            if claimed.is_empty() {
                if in_flight > 0 {
                    // Outcomes still to come may schedule retries: wait for one.
                    self.wait(None).await;
                    continue;
                }
                let summary = match self.writer.summary().await {
                    Ok(s) => s,
                    Err(_) => return FeedEnd::Stopped,
                };
                let deferred = summary.count(Status::Deferred);
                let pending = summary.count(Status::Pending);
                // Rows other workers are sending (none in flight here): a
                // worker among several waits for them rather than finishing,
                // since it may have to take over a dead worker's rows.
                let others = match &self.member {
                    Some(_) => summary.count(Status::Sending),
                    None => 0,
                };
                if deferred == 0 && pending == 0 && others == 0 {
                    return FeedEnd::Complete;
                }
                let now = now_ms();
                let next_due = summary.next_due.unwrap_or(now);
                if deferred > 0
                    && pending == 0
                    && others == 0
                    && next_due - now > self.max_retry_wait.as_millis() as i64
                {
                    return FeedEnd::Waiting { deferred, next_due };
                }
                if !waiting {
                    waiting = true;
                    let _ = self.fed.send(Fed::Waiting(true));
                }
                // Asleep until the next retry is due (bounded by
                // `max_retry_wait` above), or an outcome, or a stop. The floor
                // only guards against spinning on a row due now that the claim
                // did not take.
                let mut nap = Duration::from_millis((next_due - now).max(50) as u64);
                if others > 0
                    && let Some(m) = &self.member
                {
                    // Recovers expired leases at each look.
                    m.poke();
                    nap = nap.min(OTHERS_POLL);
                }
                self.wait(Some(nap)).await;
                continue;
            }
            if waiting {
                waiting = false;
                let _ = self.fed.send(Fed::Waiting(false));
            }
            claimed_total += claimed.len() as u64;
            // Slow rendering (DKIM's RSA signature, ~0.7 ms a message; files
            // read per recipient) would make this one task the run's limit:
            // the batch is then rendered on every core first, in order.
            let mut ahead = if self.render_threads > 1
                && claimed.len() > 1
                && self.render_cost_us >= PARALLEL_RENDER_FROM_US
            {
                let started = std::time::Instant::now();
                let render = || {
                    render_parallel(
                        &self.templates,
                        &self.columns,
                        &claimed,
                        self.render_threads,
                    )
                };
                // The batch takes milliseconds: on the multi-threaded
                // runtime this worker hands its other tasks (the sessions)
                // to another thread meanwhile instead of stalling them.
                let all = match tokio::runtime::Handle::current().runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(render)
                    }
                    _ => render(),
                };
                // What one message costs a thread, to notice when it gets cheap.
                let each = started.elapsed().as_micros() as u64 * self.render_threads as u64
                    / claimed.len() as u64;
                self.note_render_cost(each);
                all.into_iter()
            } else {
                Vec::new().into_iter()
            };
            let mut claimed = claimed.into_iter();
            for r in claimed.by_ref() {
                let attempt = Attempt::of(&r, claim_at);
                let rendered = match ahead.next() {
                    Some(rendered) => rendered,
                    None => {
                        let started = std::time::Instant::now();
                        let rendered = self.templates.render(&self.columns, &r);
                        let took = started.elapsed().as_micros() as u64;
                        self.note_render_cost(took);
                        rendered
                    }
                };
                match rendered {
                    Ok(mut env) => {
                        env.attempt = attempt;
                        // Said before the envelope is queued, so the outcome
                        // loop knows the claim before any event about it.
                        let _ = self.fed.send(Fed::Claimed(r.id, attempt));
                        if self.jobs.send(env).await.is_err() {
                            // The engine is gone: the outcome loop releases
                            // this one (it knows the claim), the rest here.
                            break;
                        }
                        handed += 1;
                        handed_retries += u64::from(attempt.retry);
                    }
                    Err(failure) => {
                        record(
                            &self.writer,
                            Outcome {
                                id: r.id,
                                at: now_ms(),
                                kind: OutcomeKind::Failed {
                                    failure: failure.clone(),
                                    // Never reached a relay.
                                    relay: String::new(),
                                },
                            },
                        )
                        .await;
                        let _ = self.fed.send(Fed::RenderFailed {
                            attempt,
                            email: r.email,
                            failure,
                        });
                    }
                }
            }
            let mut engine_gone = false;
            for r in claimed {
                engine_gone = true;
                record(
                    &self.writer,
                    Outcome {
                        id: r.id,
                        at: now_ms(),
                        kind: OutcomeKind::Released,
                    },
                )
                .await;
            }
            if engine_gone || self.jobs.is_closed() {
                return FeedEnd::Stopped;
            }
        }
    }

    /// Waits for an envelope to settle, a stop, or `timeout`.
    async fn wait(&mut self, timeout: Option<Duration>) {
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.settled.changed() => {}
            _ = self.stop.changed() => {}
            _ = sleep => {}
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

    /// The batch rendered on several threads gives what rendering one row
    /// after the other gives, in the rows' order, a row's failure included.
    #[test]
    fn a_batch_rendered_on_threads_keeps_the_rows_order_and_failures() {
        let templates = edm_template::Templates::compile(edm_template::MessageSpec {
            campaign: "par".to_owned(),
            from: "News <news@acme.example>".to_owned(),
            reply_to: None,
            subject: "Hi {{name}}".to_owned(),
            html: None,
            text: Some(edm_template::Source {
                name: "body.txt".to_owned(),
                body: "Hello {{name}}, row {{n}}.".to_owned(),
            }),
            list_unsubscribe: None,
            limits: edm_template::Limits::default(),
        })
        .unwrap();
        let columns = vec!["email".to_owned(), "name".to_owned(), "n".to_owned()];
        let rows: Vec<edm_model::Recipient> = (1..=23)
            .map(|i| {
                // Row 11's address is no address: its rendering fails.
                let email = if i == 11 {
                    "not an address".to_owned()
                } else {
                    format!("user{i}@d{i}.example")
                };
                edm_model::Recipient {
                    id: edm_model::RecipientId(i),
                    line: i as u64 + 1,
                    values: vec![email.clone(), format!("Name{i}"), i.to_string()],
                    email,
                    attempts: 0,
                    first_attempt_at: None,
                }
            })
            .collect();
        let one_by_one: Vec<_> = rows.iter().map(|r| templates.render(&columns, r)).collect();
        assert!(one_by_one[10].is_err(), "row 11 fails to render");
        for threads in [1, 2, 3, 8, 40] {
            let parallel = render_parallel(&templates, &columns, &rows, threads);
            assert_eq!(parallel.len(), rows.len(), "{threads} threads");
            for (i, (a, b)) in parallel.iter().zip(&one_by_one).enumerate() {
                match (a, b) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!(a.id, rows[i].id, "{threads} threads, row {i}");
                        assert_eq!(a.rcpt_to, b.rcpt_to);
                        assert_eq!(a.message_id, b.message_id);
                        // Same message but for the Date header.
                        let text = |e: &edm_model::Envelope| {
                            String::from_utf8_lossy(&e.body)
                                .lines()
                                .filter(|l| !l.starts_with("Date:"))
                                .collect::<Vec<_>>()
                                .join("\n")
                        };
                        assert_eq!(text(a), text(b), "{threads} threads, row {i}");
                    }
                    (Err(a), Err(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
                    _ => panic!("{threads} threads, row {i}: {a:?} vs {b:?}"),
                }
            }
        }
        assert!(render_parallel(&templates, &columns, &[], 2).is_empty());
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
