//! The delivery engine of edm: envelopes in, [`DeliveryEvent`]s out.
//!
//! # Layout
//! - [`engine`]: the dispatcher loop, pause/stop, the shared rate gate and
//!   breaker, the stop rules (fail fast, refusals of everything). Start with
//!   [`start`] (SMTP) or [`start_with`] (any transport).
//! - `worker`: one per connection: takes a job, opens its connection,
//!   sends, reports the outcome as an event carrying what the store and
//!   the progress views need (domain, attempt history, relay).
//! - `dispatcher`: the state of the one task that hands out work: envelopes
//!   parked while their domain is at its limit, workers waiting for a job.
//!   It is woken by events (a worker asking, a domain slot given back, a
//!   rate token or a quota pause coming due), never by a polling sleep.
//! - [`transport`]: the seam: a [`Transport`] opens [`Connection`]s that
//!   send one envelope at a time. SMTP ([`SmtpTransport`]) is the first.
//! - `outbound/`: one SMTP session driven step by step ([`Session`]) and the
//!   single classifier from mail-send errors and replies to a [`Failure`]
//!   ([`classify_error`], [`classify_reply`]).
//! - `queue/`: the policies, as plain state: [`RateGate`] (governor, exact,
//!   changeable at run time), [`Aimd`] (adaptive slow-down), [`Breaker`],
//!   [`RetryPolicy`] (backoff with full jitter).
//! - [`defaults`]: the defaults of `[delivery]` and `[smtp]`, defined once
//!   for the engine and for `campaign.toml`.
//!
//! This crate knows nothing of SQLite, CSV, templates or terminals. A refused
//! recipient is data (a [`DeliveryEvent::Rejected`]), never an `Err`.
//!
//! [`DeliveryEvent`]: edm_model::DeliveryEvent
//! [`DeliveryEvent::Rejected`]: edm_model::DeliveryEvent::Rejected
//! [`Failure`]: edm_model::Failure
#![deny(missing_docs)]

pub mod defaults;
mod dispatcher;
pub mod engine;
mod outbound;
mod queue;
pub mod transport;
mod worker;

pub use engine::{
    DeliveryConfig, DomainLimit, Engine, EngineEnd, EngineStatus, Error, IdHashMap, IdHasher,
    start, start_with,
};
pub use outbound::classify::{DIALECTS, Dialect, ReplyRef, classify_error, classify_reply};
pub use outbound::pool::{PoolMember, PoolTransport};
pub use outbound::resend::{
    ApiKey, DEFAULT_RATE as RESEND_DEFAULT_RATE, DomainCheck, ResendSettings, ResendTransport,
    idempotency_key,
};
pub use outbound::ses::{Credentials, SendQuota, SesSettings, SesTransport};
pub use outbound::session::{Afterwards, Security, Session, SmtpSettings, is_loopback};
pub use outbound::smtp::SmtpTransport;
pub use queue::adaptive::{Aimd, AimdSettings};
pub use queue::breaker::{Breaker, Trip};
pub use queue::rate::RateGate;
pub use queue::retry::{RetryPolicy, Verdict};
pub use transport::{BoxFuture, Connection, Marker, Transport};
