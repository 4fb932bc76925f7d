//! The campaign state of edm in SQLite: one file per campaign, one writer,
//! any number of read-only readers at the same time.
//!
//! # Overview
//! - [`Store`]: one campaign file. [`Store::open`] (writer) creates and
//!   migrates it; [`Store::open_read_only`] attaches `edm status` or
//!   `edm watch` to a running campaign; [`Store::lock_for_run`] makes sure
//!   only one `edm send` runs it.
//! - Ingest: [`Store::begin_ingest`] starts a pass ([`IngestPass`]),
//!   [`Store::insert_rows`] stores [`NewRow`] batches, each with the pass's
//!   checkpoint, [`Store::finish_ingest`] and [`Store::mark_ingested`] close
//!   it. A killed pass resumes after [`IngestPass::after_line`]; the database
//!   refuses a second copy of a record ([`Error::AlreadyStored`]).
//!   [`Store::ever_attempted`] and [`Store::discard_recipients`] let a
//!   corrected list replace one nothing was sent to; copies stored by older
//!   builds are repaired when the schema is migrated
//!   ([`Store::take_repair_notice`]).
//! - Files: the database, its `-wal`/`-shm` and lock files are created 0600
//!   ([`private_file`], [`private_options`]) and their folder 0700
//!   ([`create_private_dir`]), whatever the umask.
//! - The per-recipient state machine: [`Store::claim`] moves recipients to
//!   `sending` (durably, before their DATA ends), [`Store::record`] applies
//!   [`Outcome`]s, [`Store::recover_in_doubt`] deals with rows a dead run left
//!   `sending`, and [`Store::reset_for_retry`] is the operator's "try again".
//! - Reading: [`Store::summary`] ([`Summary`]), [`Store::recent_failures`],
//!   [`Store::top_replies`], [`Store::domain_counts`], [`Store::sent_since`],
//!   and [`Store::export`] which streams [`ExportRow`]s in line order.
//!
//! # Layout
//! - `schema.rs`: the DDL, migrations (`PRAGMA user_version`), and the
//!   trigger-kept tallies that make summaries free of table scans.
//! - `store.rs`: opening, pragmas, the run lock, metadata, the event log.
//! - `ingest.rs`: ingest passes, their checkpoints, discarding a list.
//! - `write.rs`: claim, record, recovery, reset.
//! - `read.rs`: summaries, failure views, export.
//! - `types.rs`, `error.rs`: the values and the error of the API.
//!
//! Enums are persisted by their `as_str()` names; a name this build does not
//! know is reported as [`Error::Corrupt`] with the column and the value.
//!
//! # Example
//! ```no_run
//! use edm_store::{Durability, InDoubtPolicy, Store};
//! let mut store = Store::open("campaign.db", Durability::Normal)?;
//! store.lock_for_run(std::process::id())?;
//! store.recover_in_doubt(InDoubtPolicy::Skip)?;
//! let batch = store.claim(64, edm_model::now_ms())?;
//! # Ok::<(), edm_store::Error>(())
//! ```
#![deny(missing_docs)]

mod error;
mod ingest;
mod read;
mod schema;
mod store;
mod types;
mod write;

pub use error::{Error, ExportError, Result};
pub use ingest::IngestPass;
pub use store::{Store, create_private_dir, private_file, private_options};
pub use types::{
    Durability, ExportFilter, ExportRow, InDoubtPolicy, NewRow, Outcome, OutcomeKind, ReplyCount,
    Summary,
};
pub use write::normalize;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = schema::VERSION;

#[cfg(test)]
mod plan_tests;

#[cfg(test)]
mod ingest_tests;
