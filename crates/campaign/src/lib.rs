//! Runs a campaign: the one crate that wires recipients, templates, delivery
//! and the store together.
//!
//! # Layout
//! - `config.rs`: `campaign.toml` ([`Campaign`], [`Config`]).
//! - `prepare.rs`: opening the state, ingesting the CSV once, the input
//!   fingerprint, recovering in-doubt recipients ([`prepare`]).
//! - `send.rs`: the run itself ([`start_send`]): a feeder claims recipients
//!   from the store, renders them and queues them for delivery; an outcome
//!   loop turns delivery events into store outcomes (lossless, through the
//!   one writer thread) and into a [`Progress`] snapshot (lossy, `watch`).
//! - `writer.rs`: the single store writer thread, batching outcomes.
//! - `report.rs`: `edm status` and `edm report` ([`status`], [`export`]).
//! - `check.rs`, `preview.rs`: `edm check` (every row rendered, nothing sent)
//!   and `edm preview` (.eml files); `[dkim]` signing is set up there too.
//! - `suppress.rs`: the shared suppression list ([`SharedSuppression`],
//!   `edm suppress`), merged into ingest and fed by `recipient_unknown`
//!   bounces at the end of each run.
//! - `attach.rs`: `[campaign] attachments`, `attachment_column` and
//!   `attachment_dir` (the only folder a row's file may come from) with
//!   their `[limits]`, for send, check and preview.
//! - `test_send.rs`: `edm send --test-to` ([`test_send`]): sample messages
//!   sent to one address through the relay, the state never touched.
//!
//! [`Progress`]: edm_model::Progress
#![deny(missing_docs)]

mod attach;
mod check;
mod config;
mod prepare;
mod preview;
mod report;
mod send;
mod suppress;
mod test_send;
mod writer;

use std::path::PathBuf;

pub use check::{
    CheckOptions, CheckReport, DkimInfo, Finding, ProblemGroup, ProblemKind, Severity, check,
    dkim_signer,
};
pub use config::{
    Campaign, Config, DurabilityName, LimitsSection, MAX_CONCURRENCY, MIN_RATE, MIN_TIMEOUT,
    ProviderName, ResolvedLimits, SecurityName, concurrency_problem, rate_problem,
};
pub use edm_recipients::validate as validate_address;
pub use edm_store::{InDoubtPolicy, Summary};
/// Private state files and folders (0600, 0700), for the log next to the state.
pub use edm_store::{create_private_dir, private_options};
pub use prepare::{Prepared, prepare, prepare_with_stop};
pub use preview::{PreviewFile, PreviewOptions, PreviewReport, preview, preview_path};
pub use report::{ReportFormat, ReportKind, StatusReport, export, retry, status, watch_progress};
pub use send::{Run, RunEnd, RunReport, SendOptions, start_send};
pub use suppress::{
    Added, SHARED_SUPPRESSION_FILE, SharedSuppression, SuppressedAddress, edm_home, read_import,
};
pub use test_send::{
    TEST_PREFIX, TestMessage, TestOutcome, TestSendOptions, TestSendReport, test_send,
};

/// Everything that can stop a campaign from running (as opposed to a
/// recipient failing, which is data in the store).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `campaign.toml` is missing, unreadable or wrong.
    #[error("{}: {message}", file.display())]
    Config {
        /// The file.
        file: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// The recipients file cannot be read.
    #[error(transparent)]
    Recipients(#[from] edm_recipients::Error),
    /// A template does not compile.
    #[error("{0}")]
    Template(String),
    /// The state database.
    #[error("state database: {0}")]
    Store(#[from] edm_store::Error),
    /// The inputs changed since the campaign started.
    #[error(
        "the campaign's inputs changed since it started: {0}. Run with --accept-changes to go on with the new inputs (unsent recipients get the new version)"
    )]
    InputsChanged(String),
    /// The delivery engine could not start.
    #[error(transparent)]
    Delivery(#[from] edm_delivery::Error),
    /// Other I/O (report files).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The campaign has no state yet.
    #[error("{0} has no state yet: run `edm send` first")]
    NoState(PathBuf),
    /// A signal stopped the ingest at a batch boundary; the rows read so far
    /// are stored with their checkpoint and the next `edm send` goes on.
    #[error(
        "stopped while reading the recipients: {stored} stored so far; `edm send` goes on from there"
    )]
    Interrupted {
        /// Rows the ingest pass has stored.
        stored: u64,
    },
}
