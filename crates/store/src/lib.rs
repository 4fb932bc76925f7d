//! The campaign state of edm in SQLite: one file per campaign, one writer,
//! any number of read-only readers at the same time.
//!
//! # The seam
//! A run talks to its state through [`CampaignStore`]: ingest (with its
//! checkpoint and unique key), claim, record outcomes (with the durable mark
//! before a final dot), tallies, events, the run lock and the metadata that
//! holds the input fingerprints. [`Store`] (SQLite) implements it, and so
//! does [`MemoryStore`]; one suite of tests (`suite.rs`) runs against both,
//! and a new implementation (PostgreSQL, say) joins by passing it.
//! [`Writer`] is a run's one writer: a thread that owns any
//! `Box<dyn CampaignStore>`, batches outcomes into few commits, group-commits
//! marks ([`writer::Marks`]) and publishes a [`StoreView`] for progress
//! displays. An outcome it cannot take is an error and the run's failure
//! ([`Writer::failure`]), never dropped silently.
//!
//! ```
//! use edm_store::{CampaignStore, MemoryStore};
//! // Any implementation behind the seam: the in-memory one needs no file.
//! let mut store: Box<dyn CampaignStore> = Box::new(MemoryStore::new());
//! store.set_meta("campaign.name", "welcome").unwrap();
//! assert_eq!(store.meta("campaign.name").unwrap().as_deref(), Some("welcome"));
//! assert!(!store.is_ingested().unwrap());
//! ```
//!
//! Operator commands on a file (`edm status`, `edm report`'s export,
//! `edm retry`, `edm watch`) go through the same trait
//! ([`CampaignStore::export_rows`], [`CampaignStore::reset_for_retry`]).
//!
//! # Overview (SQLite)
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
//! - `lib.rs`: this manual and the [`CampaignStore`] trait.
//! - `sqlite.rs`: the trait for [`Store`]; `memory.rs`: [`MemoryStore`];
//!   `postgres/`: [`PgStore`], the campaign in PostgreSQL (its schema,
//!   migrations and connection thread, which reconnects after a lost
//!   server and repeats what was interrupted, `retry.rs` saying how each
//!   write is safe to repeat; TLS in `tls.rs`; `postgres/fixture.rs` is the
//!   throwaway server of the tests, feature `pg-fixture`);
//!   `writer.rs`: [`Writer`]; `suite.rs`: the tests of the trait.
//! - `schema.rs`: the DDL, migrations (`PRAGMA user_version`; version 3
//!   adds the durable marks' table; version 5 the late outcomes of
//!   bounces and complaints; version 6 rebuilds the claim index without an
//!   `IN` list; version 7 drops the tally triggers).
//! - `tally.rs`: the tallies that make summaries free of table scans, kept
//!   by the statements that change rows (each reports its rows' old and new
//!   keys, one upsert per key and transaction).
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
mod late;
pub mod lease;
pub mod memory;
pub mod postgres;
mod read;
mod schema;
mod sqlite;
mod store;
mod tally;
mod types;
mod write;
pub mod writer;

pub use error::{Error, ExportError, Result};
pub use ingest::IngestPass;
pub use lease::{
    LeaseSettings, Recovered, Renewal, SharedControls, WorkerFigures, WorkerLease, WorkerRow,
};
pub use memory::MemoryStore;
pub use postgres::{OpenMode, PgOptions, PgStore};
pub use store::{Store, create_private_dir, private_file, private_options};
pub use types::{
    Durability, ExportFilter, ExportRow, InDoubtPolicy, LateApplied, LateCounts, LateKind,
    LateOutcome, LateState, NewRow, Outcome, OutcomeKind, RelayCounts, ReplyCount, Summary,
    Unmatched, WindowEntry,
};
pub use write::normalize;
pub use writer::{StoreView, Writer};

use std::collections::{BTreeMap, HashMap};

use edm_model::{Category, DomainCounts, FailureRow, Recipient, RecipientId, Status, UnixMillis};

/// What a run needs from a campaign store: the seam between the campaign
/// and where its state lives.
///
/// [`Store`] (SQLite) is the implementation `edm` uses; [`MemoryStore`]
/// implements it in memory, and the suite in `suite.rs` runs the same
/// assertions against both, so another implementation (PostgreSQL, for
/// several machines sharing one campaign) is added by passing that suite.
/// [`Writer`] is the one writer of a run, generic over it.
///
/// The promises every implementation keeps (each one a test of the suite):
/// - **Ingest checkpoint:** [`insert_rows`](CampaignStore::insert_rows)
///   stores a batch and moves the pass's checkpoint
///   ([`IngestPass::after_line`]) atomically; a line already stored by the
///   pass is refused with [`Error::AlreadyStored`] and the batch rolled back
///   (the unique key on generation and line).
/// - **Claim** moves rows to `sending` before it returns, pending rows by id
///   first, then due deferred rows (at most `max_due`), earliest first.
/// - **Durable mark:** [`record_and_mark`](CampaignStore::record_and_mark)
///   commits outcomes and marks together; an outcome clears its mark; after
///   a crash, [`recover_in_doubt`](CampaignStore::recover_in_doubt) flags
///   only marked rows once marks were used and puts the other `sending`
///   rows back as before their claim.
/// - **Tallies** ([`summary`](CampaignStore::summary)) count every status,
///   the in-doubt flag and failing categories.
pub trait CampaignStore: Send {
    /// A name for messages: the database file, or what stands for it.
    fn location(&self) -> &std::path::Path;

    // The run lock and the metadata (the input fingerprints live there).

    /// Takes the exclusive run lock of this campaign (see [`Store::lock_for_run`]).
    fn lock_for_run(&mut self, pid: u32) -> Result<()>;
    /// Reads a metadata value (an input fingerprint, say).
    fn meta(&self, key: &str) -> Result<Option<String>>;
    /// Writes a metadata value.
    fn set_meta(&mut self, key: &str, value: &str) -> Result<()>;
    /// True once ingest completed with the header recorded.
    fn is_ingested(&self) -> Result<bool>;
    /// The CSV header recorded at ingest (empty before).
    fn columns(&self) -> Result<Vec<String>>;

    // Ingest.

    /// The latest ingest pass (see [`Store::ingest_pass`]).
    fn ingest_pass(&self) -> Result<Option<IngestPass>>;
    /// Begins a pass in a new generation (see [`Store::begin_ingest`]).
    fn begin_ingest(&mut self, source: &str) -> Result<IngestPass>;
    /// Stores a batch with the pass's checkpoint (see [`Store::insert_rows`]).
    fn insert_rows(&mut self, rows: &[NewRow]) -> Result<()>;
    /// Closes the pass (see [`Store::finish_ingest`]).
    fn finish_ingest(&mut self, columns: Option<&[String]>, meta: &[(&str, &str)]) -> Result<()>;
    /// Deletes every recipient and the ingest state (see [`Store::discard_recipients`]).
    fn discard_recipients(&mut self) -> Result<u64>;
    /// True when anything was ever attempted (see [`Store::ever_attempted`]).
    fn ever_attempted(&self) -> Result<bool>;
    /// Normalised address to first row (see [`Store::rows_by_email`]).
    fn rows_by_email(&self) -> Result<HashMap<String, (RecipientId, Status)>>;
    /// Skips rows removed from the file (see [`Store::skip_unsent`]).
    fn skip_unsent(&mut self, ids: &[RecipientId], reason: &str) -> Result<u64>;
    /// Copies repaired at migration, said once (see [`Store::take_repair_notice`]).
    fn take_repair_notice(&mut self) -> Result<u64>;

    // The per-recipient state machine.

    /// Deals with rows a dead run left `sending` (see [`Store::recover_in_doubt`]).
    fn recover_in_doubt(&mut self, policy: InDoubtPolicy) -> Result<u64>;
    /// Claims up to `limit` recipients, at most `max_due` deferred ones
    /// (see [`Store::claim_with_budget`]).
    fn claim_with_budget(
        &mut self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
    ) -> Result<Vec<Recipient>>;
    /// Records outcomes and durable marks together (see [`Store::record_and_mark`]).
    fn record_and_mark(&mut self, outcomes: &[Outcome], marks: &[RecipientId]) -> Result<()>;
    /// Called by the run's writer after its last outcome: work a store
    /// deferred during the run (SQLite: the Message-ID index, schema
    /// version 8). Nothing by default.
    fn finish_run(&mut self) -> Result<()> {
        Ok(())
    }
    /// Records outcomes (see [`Store::record`]).
    fn record(&mut self, outcomes: &[Outcome]) -> Result<()> {
        self.record_and_mark(outcomes, &[])
    }
    /// The operator's "try again" (`edm retry`): recipients in `statuses`
    /// (every non-pending status but `sent` and `sending` when empty), of
    /// `categories` if any are given, go back to `pending` with their
    /// attempts reset; their last reply and in-doubt flag are kept. Returns
    /// how many (see [`Store::reset_for_retry`]).
    fn reset_for_retry(&mut self, statuses: &[Status], categories: &[Category]) -> Result<u64>;

    // Tallies and views.

    /// Counts by status and category (see [`Store::summary`]).
    fn summary(&self) -> Result<Summary>;
    /// Recipients sent at or after `since` (see [`Store::sent_since`]).
    fn sent_since(&self, since: UnixMillis) -> Result<u64>;
    /// The latest failed and deferred recipients (see [`Store::recent_failures`]).
    fn recent_failures(&self, limit: usize) -> Result<Vec<FailureRow>>;
    /// The most frequent failure replies (see [`Store::top_replies`]).
    fn top_replies(&self, limit: usize) -> Result<Vec<ReplyCount>>;
    /// The busiest domains (see [`Store::domain_counts`]).
    fn domain_counts(&self, limit: usize) -> Result<Vec<(String, DomainCounts)>>;
    /// Every matching row in line order (see [`Store::export`]).
    fn export_rows(&self, filter: &ExportFilter, f: &mut dyn FnMut(&ExportRow)) -> Result<()>;

    // Events.

    /// Appends a line to the event log.
    fn log_event(&mut self, at: UnixMillis, kind: &str, text: &str) -> Result<()>;
    /// The last `limit` events, oldest first.
    fn recent_events(&self, limit: usize) -> Result<Vec<(UnixMillis, String, String)>>;

    // Relays (appended for relay pools, issue 12).

    /// Counts by relay name (see [`Store::relay_counts`]).
    fn relay_counts(&self, since: UnixMillis) -> Result<BTreeMap<String, RelayCounts>>;
    // Late outcomes: bounces and complaints after `sent` (schema V5).

    /// The recipient that was sent with this Message-ID (without angle
    /// brackets), if any.
    fn find_by_message_id(&self, message_id: &str) -> Result<Option<RecipientId>>;
    /// The recipient whose message the provider knows by this id (Amazon
    /// SES's MessageId), if any.
    fn find_by_provider_message_id(&self, id: &str) -> Result<Option<RecipientId>>;
    /// A recipient's address and status, if the id exists.
    fn recipient_state(&self, id: RecipientId) -> Result<Option<(String, Status)>>;
    /// Applies a bounce or complaint to a recipient already `sent` (its status
    /// stays `sent`: what counted toward the daily quota is unchanged).
    /// Idempotent by [`LateOutcome::key`]: a key applied before changes
    /// nothing ([`LateApplied::AlreadyApplied`]). A complaint outranks a
    /// bounce, which outranks soft bounces; a worse outcome is never undone.
    fn apply_late(&mut self, late: &LateOutcome) -> Result<LateApplied>;
    /// Counts of `bounced`, `complained` and soft-bounced recipients.
    fn late_counts(&self) -> Result<LateCounts>;
    /// Lists a message that matched no recipient; false when its key was
    /// listed before.
    fn record_unmatched(&mut self, unmatched: &Unmatched) -> Result<bool>;
    /// Every unmatched message, oldest first.
    fn unmatched(&self) -> Result<Vec<Unmatched>>;
    /// The last `limit` recipients sent or refused permanently, latest attempt
    /// first: the reputation breaker's window.
    fn reputation_window(&self, limit: usize) -> Result<Vec<WindowEntry>>;

    // Several workers on one campaign (PostgreSQL only, docs/scaling.md);
    // the defaults keep the one-run-at-a-time stores as they are.

    /// Waits for the campaign's ingest lock, held until
    /// [`unlock_ingest`](CampaignStore::unlock_ingest) (or the store is
    /// dropped): workers starting together ingest once. A store with an
    /// exclusive run lock needs none.
    fn lock_ingest(&mut self) -> Result<()> {
        Ok(())
    }
    /// Releases the ingest lock.
    fn unlock_ingest(&mut self) -> Result<()> {
        Ok(())
    }
    /// This worker's heartbeat on a connection of its own, once
    /// [`lock_for_run`](CampaignStore::lock_for_run) joined it; `None` for a
    /// store that runs one worker at a time.
    fn lease(&self) -> Result<Option<Box<dyn WorkerLease>>> {
        Ok(None)
    }
    /// The campaign's workers, newest first (none for a one-worker store).
    fn workers(&self) -> Result<Vec<WorkerRow>> {
        Ok(Vec::new())
    }
    /// [`claim_with_budget`](CampaignStore::claim_with_budget) within a
    /// daily quota: with `cap = Some((quota, since))`, at most what leaves
    /// the recipients sent since `since` plus those being sent (by any
    /// worker) within `quota`. Several workers claim under one lock, so
    /// their sum keeps the quota exactly; one run at a time needs no more
    /// than its own count (the default).
    fn claim_capped(
        &mut self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
        cap: Option<(u64, UnixMillis)>,
    ) -> Result<Vec<Recipient>> {
        let _ = cap;
        self.claim_with_budget(limit, max_due, now)
    }
}

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = schema::VERSION;

#[cfg(test)]
mod plan_tests;

#[cfg(test)]
mod ingest_tests;

#[cfg(test)]
mod schema_tests;

#[cfg(test)]
mod suite;

#[cfg(test)]
mod tally_tests;
