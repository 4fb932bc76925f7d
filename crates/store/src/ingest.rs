//! Ingest: storing the CSV's records in passes that survive interruption.
//!
//! A pass reads one version of the recipients file. Each batch of rows is
//! committed in one transaction together with the pass's checkpoint (the last
//! source line stored), so a pass killed at any moment leaves exactly the rows
//! of its committed batches and a checkpoint that says where they end: the
//! next run reads the file again, skips to the checkpoint (dedupe needs the
//! earlier rows read, not stored) and stores the rest. The unique key on
//! `(generation, line)` makes the database itself refuse a second copy.
//!
//! Metadata keys (in `meta`): `ingest.generation` (the current pass),
//! `ingest.source` (the fingerprint of the file it reads), `ingest.after`
//! (the checkpoint line), `ingest.rows` (rows stored by the pass) and
//! `ingest.open` (`1` until the pass completes).

use edm_model::{Stage, Status};
use rusqlite::{ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::error::{AtPath, Error, Result};
use crate::store::Store;
use crate::tally::Deltas;
use crate::types::NewRow;
use crate::write::{from_i64, normalize, to_i64};

/// The highest generation stored. The WHERE matches the unique index's, so
/// this is one index lookup (checked in `plan_tests.rs`).
pub(crate) const MAX_GENERATION_SQL: &str =
    "SELECT max(generation) FROM recipients WHERE copy_of IS NULL";

/// Where the latest ingest pass stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestPass {
    /// The pass's number: rows it stores carry it, and the unique key is
    /// per generation, so a changed file can reuse line numbers.
    pub generation: i64,
    /// What the caller said identifies the file being read (a hash).
    pub source: String,
    /// The checkpoint: the last source line stored (0 before the first batch).
    pub after_line: u64,
    /// Rows stored by this pass so far.
    pub rows: u64,
    /// True once [`Store::finish_ingest`] closed the pass.
    pub complete: bool,
}

/// The generation of a new ingest pass: 0 for the first, then one past the
/// highest seen in the rows or recorded in the metadata (a pass may have
/// stored nothing before it was interrupted). Shared by every implementation
/// of [`crate::CampaignStore`] so that they number passes alike.
pub(crate) fn next_generation(max_row: Option<i64>, max_meta: Option<i64>) -> i64 {
    match (max_row, max_meta) {
        (None, None) => 0,
        (a, b) => a.max(b).unwrap_or(0) + 1,
    }
}

/// The metadata a new pass starts with: its generation and source, an empty
/// checkpoint, and the pass marked open until [`Store::finish_ingest`].
pub(crate) fn pass_meta(generation: i64, source: &str) -> [(&'static str, String); 5] {
    [
        ("ingest.generation", generation.to_string()),
        ("ingest.source", source.to_string()),
        ("ingest.after", "0".into()),
        ("ingest.rows", "0".into()),
        ("ingest.open", "1".into()),
    ]
}

impl Store {
    /// The latest ingest pass, open or complete; `None` when none was begun
    /// (a new store, or one written by a build without passes).
    pub fn ingest_pass(&self) -> Result<Option<IngestPass>> {
        let Some(generation) = self.meta("ingest.generation")? else {
            return Ok(None);
        };
        let int = |key: &'static str, v: Option<String>| -> Result<i64> {
            let v = v.unwrap_or_else(|| "0".into());
            v.parse().map_err(|_| self.corrupt(key, v))
        };
        Ok(Some(IngestPass {
            generation: int("meta.ingest.generation", Some(generation))?,
            source: self.meta("ingest.source")?.unwrap_or_default(),
            after_line: from_i64(int("meta.ingest.after", self.meta("ingest.after")?)?),
            rows: from_i64(int("meta.ingest.rows", self.meta("ingest.rows")?)?),
            complete: self.meta("ingest.open")?.as_deref() != Some("1"),
        }))
    }

    /// Begins a new ingest pass of the file identified by `source`, in a new
    /// generation (one more than any stored row's). Returns it.
    pub fn begin_ingest(&mut self, source: &str) -> Result<IngestPass> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        let max_row: Option<i64> = tx
            .query_row(MAX_GENERATION_SQL, [], |r| r.get(0))
            .at(&path)?;
        let max_meta: Option<i64> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'ingest.generation'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .at(&path)?
            .and_then(|v| v.parse().ok());
        let generation = next_generation(max_row, max_meta);
        for (key, value) in pass_meta(generation, source) {
            set_meta(&tx, &path, key, &value)?;
        }
        tx.commit().at(&path)?;
        Ok(IngestPass {
            generation,
            source: source.to_string(),
            after_line: 0,
            rows: 0,
            complete: false,
        })
    }

    /// Inserts a batch of ingested rows, in source order, in one transaction
    /// that also moves the current pass's checkpoint to the batch's last line.
    ///
    /// Only `Pending`, `Invalid`, `Skipped` and `Suppressed` are accepted: the
    /// other statuses are reached through delivery. A row whose line the pass
    /// already stored is refused with [`Error::AlreadyStored`] and the whole
    /// batch is rolled back. Without a pass begun, rows go to generation 0.
    pub fn insert_rows(&mut self, rows: &[NewRow]) -> Result<()> {
        let now = edm_model::now_ms();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        let meta_int = |key: &str| -> Result<i64> {
            Ok(tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
                .at(&path)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0))
        };
        let generation = meta_int("ingest.generation")?;
        let stored = meta_int("ingest.rows")?;
        let mut after = meta_int("ingest.after")?;
        let mut deltas = Deltas::default();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO recipients
                       (line, email, email_norm, domain, fields, status, category, stage,
                        reply, duplicate_of, updated_at, generation)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .at(&path)?;
            for row in rows {
                if !matches!(
                    row.status,
                    Status::Pending | Status::Invalid | Status::Skipped | Status::Suppressed
                ) {
                    return Err(Error::InvalidNewRow {
                        path,
                        line: row.line,
                        status: row.status,
                    });
                }
                let fields = serde_json::to_string(&row.values)
                    .expect("a list of strings always serialises");
                let stage = (row.status == Status::Invalid).then_some(Stage::Ingest.as_str());
                let domain = edm_model::domain_of(&row.email);
                let category = row.category.map(|c| c.as_str());
                let inserted = st.execute(params![
                    to_i64(row.line),
                    row.email,
                    normalize(&row.email),
                    domain,
                    fields,
                    row.status.as_str(),
                    category,
                    stage,
                    row.reason,
                    row.duplicate_of.map(to_i64),
                    now,
                    generation,
                ]);
                match inserted {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == ErrorCode::ConstraintViolation =>
                    {
                        return Err(Error::AlreadyStored {
                            path,
                            line: row.line,
                            generation,
                        });
                    }
                    Err(e) => return Err(e).at(&path),
                }
                deltas.add(
                    (row.status.as_str(), category.unwrap_or(""), false),
                    &domain,
                    1,
                );
                after = after.max(to_i64(row.line));
            }
        }
        deltas.apply(&tx, &path)?;
        let stored = stored.saturating_add(to_i64(rows.len() as u64));
        set_meta(&tx, &path, "ingest.after", &after.to_string())?;
        set_meta(&tx, &path, "ingest.rows", &stored.to_string())?;
        tx.commit().at(&path)
    }

    /// Closes the current pass. With `columns` (the CSV header) it also marks
    /// the campaign ingested, like [`Store::mark_ingested`]; `meta` keys (the
    /// input fingerprints, say) are written in the same transaction, so a
    /// crash never leaves the list complete with the fingerprints of another
    /// file, or the other way round.
    pub fn finish_ingest(
        &mut self,
        columns: Option<&[String]>,
        meta: &[(&str, &str)],
    ) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        set_meta(&tx, &path, "ingest.open", "0")?;
        if let Some(columns) = columns {
            let json = serde_json::to_string(columns).expect("a list of strings always serialises");
            set_meta(&tx, &path, "columns", &json)?;
            set_meta(&tx, &path, "ingested", "1")?;
        }
        for (key, value) in meta {
            set_meta(&tx, &path, key, value)?;
        }
        tx.commit().at(&path)
    }

    /// Deletes every recipient and the ingest state (events stay), so the
    /// file can be ingested afresh. Only for a campaign nothing was ever
    /// attempted for (see [`Store::ever_attempted`]): the caller checks.
    /// Returns how many rows were deleted.
    pub fn discard_recipients(&mut self) -> Result<u64> {
        // The tallies are emptied below: nothing of the rows may stay kept
        // back to be added to them later.
        self.flush_domain_tally()?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        let n = tx.execute("DELETE FROM recipients", []).at(&path)?;
        // No rows, nothing to count (the tallies are kept by the statements).
        tx.execute_batch("DELETE FROM tally; DELETE FROM domain_tally;")
            .at(&path)?;
        tx.execute(
            "DELETE FROM meta WHERE key IN
               ('ingested', 'columns', 'ingest.source', 'ingest.after', 'ingest.rows', 'ingest.open')",
            [],
        )
        .at(&path)?;
        tx.commit().at(&path)?;
        Ok(n as u64)
    }

    /// True when any recipient was ever claimed for sending and not simply
    /// released: sent, failed, deferred, being sent, in doubt, or attempted
    /// once and reset for retry. While this is false no message of the
    /// campaign ever reached a server.
    pub fn ever_attempted(&self) -> Result<bool> {
        // The tallies answer most campaigns at once; the scan catches a row
        // reset to pending after an attempt (its first_attempt_at stays).
        let by_tally: bool = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM tally WHERE n > 0 AND (in_doubt = 1
                   OR status NOT IN ('pending', 'invalid', 'skipped', 'suppressed')))",
                [],
                |r| r.get(0),
            )
            .at(&self.path)?;
        if by_tally {
            return Ok(true);
        }
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM recipients WHERE first_attempt_at IS NOT NULL)",
                [],
                |r| r.get(0),
            )
            .at(&self.path)
    }

    /// Extra copies of records (stored twice by an interrupted ingest of an
    /// older build) that the schema migration marked `skipped` and that no
    /// caller has announced yet; returns the count once, then 0. The repair
    /// itself is logged as one `repaired` event when it happens.
    pub fn take_repair_notice(&mut self) -> Result<u64> {
        let Some(n) = self.meta("repair.unannounced")? else {
            return Ok(0);
        };
        self.conn
            .execute("DELETE FROM meta WHERE key = 'repair.unannounced'", [])
            .at(&self.path)?;
        Ok(n.parse().unwrap_or(0))
    }
}

fn set_meta(tx: &Transaction<'_>, path: &std::path::Path, key: &str, value: &str) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut st| st.execute(params![key, value]))
    .at(path)?;
    Ok(())
}
