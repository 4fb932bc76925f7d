//! Runs a campaign: the one crate that wires recipients, templates, delivery
//! and the store together.
//!
//! # Layout
//! - `config.rs`: `campaign.toml` ([`Campaign`], [`Config`]).
//! - `prepare.rs`: opening the state, ingesting the CSV once, checking the
//!   input fingerprint, recovering in-doubt recipients ([`prepare`]).
//! - `fingerprint.rs`: the hash of each part of the inputs ([`Input`]): a
//!   change since the campaign started is named by part ([`ChangedInputs`]).
//! - `send.rs`: the run itself ([`start_send`]): a feeder claims recipients
//!   from the store, renders them and queues them for delivery; an outcome
//!   loop turns delivery events into store outcomes (lossless, through the
//!   one writer thread) and into a [`Progress`] snapshot (lossy, `watch`).
//! - `writer.rs`: the single store writer thread, batching outcomes.
//! - `report.rs`: `edm status` and `edm report` ([`status`], [`export`]).
//! - `inputs.rs`: what send, check, preview and test sends read from the
//!   campaign alike: the message spec and template files, the compiled
//!   templates with attachments and `[dkim]` signing ([`dkim_signer`]), the
//!   CSV reading options. The send path imports nothing from `check/`.
//! - `check/`: `edm check` (every row rendered, nothing sent): `mod.rs`
//!   runs it, `classify.rs` turns each typed problem into a [`ProblemKind`]
//!   by its variant, `report.rs` is what it reports ([`CheckReport`],
//!   [`Finding`]).
//! - `preview.rs`: `edm preview` (.eml files).
//! - `bounces.rs`: bounces and complaints applied to the state: the VERP
//!   return path and its authenticated token ([`bounces::Verp`]), the
//!   intake that ties a message to a recipient and applies it once
//!   ([`bounces::Intake`]).
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
pub mod bounces;
mod check;
mod config;
mod fingerprint;
mod inputs;
mod new;
mod prepare;
mod preview;
mod report;
mod reputation;
mod send;
mod state;
mod suppress;
mod test_send;
mod workers;
mod writer;

use std::path::PathBuf;

pub use check::{
    CheckOptions, CheckReport, DkimInfo, Finding, ProblemGroup, ProblemKind, RelayCheck, Severity,
    check, check_online, online_human,
};
pub use config::{
    BouncesSection, Campaign, Config, DurabilityName, LimitsSection, MAX_CONCURRENCY,
    MAX_RETRY_WAIT, MIN_RATE, MIN_TIMEOUT, ProviderName, ResolvedLimits, SecurityName,
    concurrency_problem, rate_problem,
};
pub use edm_recipients::validate as validate_address;
pub use edm_store::{InDoubtPolicy, Summary};
/// Private state files and folders (0600, 0700), for the log next to the state.
pub use edm_store::{create_private_dir, private_options};
pub use fingerprint::{ChangedInputs, Input};
pub use inputs::dkim_signer;
pub use new::{NewProvider, new_campaign};
pub use prepare::{Prepared, prepare, prepare_as, prepare_with_stop};
pub use preview::{PreviewFile, PreviewOptions, PreviewReport, preview, preview_path};
pub use report::{
    RelayStatus, ReportFormat, ReportKind, StatusReport, export, retry, rfc3339, status,
    watch_progress,
};
pub use reputation::ReputationTrip;
pub use send::{Run, RunEnd, RunReport, SendOptions, start_send};
pub use state::{STORE_URL_ENV, open_existing};
pub use suppress::{
    Added, SHARED_SUPPRESSION_FILE, SharedSuppression, SuppressedAddress, edm_home, read_import,
};
pub use test_send::{
    TEST_PREFIX, TestMessage, TestOutcome, TestSendOptions, TestSendReport, test_send,
};

/// Everything that can stop a campaign from running (as opposed to a
/// recipient failing, which is data in the store).
///
/// Each variant is one kind of cause with its fields; there is no
/// catch-all. `Config` is `campaign.toml` itself: a value that does not
/// parse or does not work, said with the key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `campaign.toml` is missing, unreadable or wrong (a key, a value, a
    /// section that does not work).
    #[error("{}: {message}", file.display())]
    Config {
        /// The file.
        file: PathBuf,
        /// What is wrong and where: the key and why.
        message: String,
    },
    /// The recipients file cannot be read.
    #[error(transparent)]
    Recipients(#[from] edm_recipients::Error),
    /// The message cannot be compiled: a template does not parse, the From
    /// or Reply-To is not usable, the DKIM key does not work, a shared
    /// attachment is over a limit.
    #[error(transparent)]
    Template(#[from] edm_template::Error),
    /// The state database.
    #[error("state database: {0}")]
    Store(#[from] edm_store::Error),
    /// The inputs changed since the campaign started: which parts.
    #[error(
        "the campaign's inputs changed since it started: {0}. Run with --accept-changes to go on with the new inputs (unsent recipients get the new version)"
    )]
    InputsChanged(ChangedInputs),
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
    /// A template file named in `campaign.toml` cannot be read.
    #[error("{}: cannot read the template: {source}", path.display())]
    TemplateFile {
        /// The template file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The shared suppression list has a record that does not parse, or
    /// cannot be written back.
    #[error("{}: {}{source}", path.display(), record.map_or(String::new(), |r| format!("record {r}: ")))]
    SuppressionList {
        /// The list.
        path: PathBuf,
        /// The 1-based record, when reading.
        record: Option<usize>,
        /// The error.
        source: csv::Error,
    },
    /// `edm send --test-to` was given an address that cannot be used.
    #[error("{}: --test-to {address:?} is not a usable address: {reason}", file.display())]
    TestAddress {
        /// `campaign.toml`.
        file: PathBuf,
        /// The address given.
        address: String,
        /// Why it cannot be used.
        reason: edm_recipients::AddressProblem,
    },
    /// `edm send --test-to` found no valid row to use as a sample.
    #[error("{}: no valid row to use as a test sample", recipients.display())]
    NoTestSample {
        /// The recipients file.
        recipients: PathBuf,
    },
    /// A task of edm itself panicked or could not be joined: a bug in edm,
    /// not a problem with the campaign. What was recorded stays recorded.
    #[error("{}: {task} crashed: {reason}", file.display())]
    Crashed {
        /// The file the task was working on (`campaign.toml`, the state).
        file: PathBuf,
        /// Which task.
        task: Task,
        /// The panic or join error.
        reason: String,
    },
    /// The store writer thread ended with an error: the outcomes queued
    /// before it are committed, the rest are not.
    #[error("{}: {reason}", state.display())]
    StoreWriter {
        /// The state file.
        state: PathBuf,
        /// The store's error, or the writer's panic.
        reason: String,
    },
}

/// The tasks of a run that [`Error::Crashed`] names.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// Compiling, opening the state and ingesting before the first message.
    Preparing,
    /// The run as a whole (feeder, engine, outcome loop).
    Run,
    /// The single store writer thread.
    StoreWriter,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Preparing => "preparing",
            Task::Run => "the run",
            Task::StoreWriter => "the store writer",
        })
    }
}
