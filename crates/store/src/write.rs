//! The writer's side: ingest, the state machine (claim, record, recover), reset.
//!
//! Every method is one transaction. Claims and outcomes are batched by the
//! caller, so the hot path pays one commit per batch, never one per message.

use edm_model::{Category, Recipient, RecipientId, Stage, Status, UnixMillis};
use rusqlite::{OptionalExtension, TransactionBehavior, params, params_from_iter};

use crate::error::{AtPath, Error, Result};
use crate::schema::ACTIVE;
use crate::store::{Store, limit_param, parse_values};
use crate::tally::{self, Deltas};
use crate::types::{InDoubtPolicy, Outcome, OutcomeKind};

/// Pending rows in id order. `next_attempt_at IS NULL` is always true for
/// pending rows; saying so lets SQLite walk the claim index in id order
/// instead of sorting every pending row.
fn claim_pending_sql() -> String {
    format!(
        "SELECT id, line, email, fields, attempts, first_attempt_at,
                status, coalesce(category, ''), in_doubt, domain FROM recipients
         WHERE {ACTIVE} AND status = 'pending' AND next_attempt_at IS NULL
         ORDER BY id LIMIT ?1"
    )
}

/// Marks `sending` every pending row up to id ?1 at time ?2: the rows
/// [`claim_pending_sql`] just read, in the same transaction. The same
/// WHERE as that query, so SQLite walks the claim index.
pub(crate) fn claim_pending_range_sql() -> String {
    format!(
        "UPDATE recipients
         SET status = 'sending', prev_attempt_at = last_attempt_at,
             first_attempt_at = coalesce(first_attempt_at, ?2),
             last_attempt_at = ?2, updated_at = ?2
         WHERE {ACTIVE} AND status = 'pending' AND next_attempt_at IS NULL AND id <= ?1"
    )
}

/// Deferred rows that are due, earliest first.
fn claim_due_sql() -> String {
    format!(
        "SELECT id, line, email, fields, attempts, first_attempt_at,
                status, coalesce(category, ''), in_doubt, domain FROM recipients
         WHERE {ACTIVE} AND status = 'deferred' AND next_attempt_at <= ?1
         ORDER BY next_attempt_at, id LIMIT ?2"
    )
}

/// Sent recipients whose Message-IDs wait in `mid_pending` before a run
/// moves them into `message_ids` ([`Store::index_message_ids`]): a lookup
/// during the run (the bounce mailbox read by `edm send`) reads at most
/// about this many rows besides its key, ~10 ms; a run of 1M recipients
/// moves them 50 times, each a sorted pass over `message_keys`.
const MID_FLUSH: u64 = if cfg!(test) { 32 } else { 20_000 };

/// Set in meta once a run has used marks: from then on an unmarked `sending`
/// row after a crash was never sent. A file last run by an older edm (no
/// marks) keeps treating every `sending` row as in doubt.
const MARKS_META: &str = "dot_marks";

#[cfg(test)]
pub(crate) fn claim_sqls() -> [String; 2] {
    [claim_pending_sql(), claim_due_sql()]
}

impl Store {
    /// Deals with rows still `sending` from a run that died: the server may
    /// have accepted them. Flags them `in_doubt`, then `Resend` makes them
    /// pending again and `Skip` parks them in status `in_doubt`. Once a run
    /// has used [`Store::mark_in_flight`], only marked rows are in doubt: the
    /// others never reached their final dot and go back as before the claim.
    ///
    /// Call it once at start, after [`Store::lock_for_run`]. Returns how many.
    pub fn recover_in_doubt(&mut self, policy: InDoubtPolicy) -> Result<u64> {
        // Message-IDs a run that died left out of their index.
        self.index_message_ids()?;
        let now = edm_model::now_ms();
        let marks_used = self.meta(MARKS_META)?.as_deref() == Some("1");
        let set = match policy {
            InDoubtPolicy::Resend => "status = 'pending', next_attempt_at = NULL",
            InDoubtPolicy::Skip => "status = 'in_doubt'",
        };
        // The ACTIVE term lets SQLite find the few sending rows in the claim index.
        let sql = format!(
            "UPDATE recipients SET in_doubt = 1, {set}, prev_attempt_at = NULL, updated_at = ?1
             WHERE {ACTIVE} AND status = 'sending'"
        );
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        let mut deltas = Deltas::default();
        if marks_used {
            // Claimed but never marked: its final dot was never written, so
            // it goes back to where it was before the claim, not in doubt.
            let unmarked =
                format!("{ACTIVE} AND status = 'sending' AND id NOT IN (SELECT id FROM dot_marks)");
            tally::take_out_where(&tx, &path, &mut deltas, &unmarked, [])?;
            let mut st = tx
                .prepare(&format!(
                    "UPDATE recipients
                     SET status = CASE WHEN next_attempt_at IS NULL
                                       THEN 'pending' ELSE 'deferred' END,
                         first_attempt_at = CASE WHEN prev_attempt_at IS NULL
                                                 THEN NULL ELSE first_attempt_at END,
                         last_attempt_at = prev_attempt_at, prev_attempt_at = NULL,
                         updated_at = ?1
                     WHERE {unmarked} {}",
                    tally::RETURNING
                ))
                .at(&path)?;
            tally::returned(&path, &mut deltas, st.query([now]).at(&path)?)?;
        }
        let sending = format!("{ACTIVE} AND status = 'sending'");
        tally::take_out_where(&tx, &path, &mut deltas, &sending, [])?;
        let n = {
            let mut st = tx
                .prepare(&format!("{sql} {}", tally::RETURNING))
                .at(&path)?;
            tally::returned(&path, &mut deltas, st.query([now]).at(&path)?)?
        };
        deltas.apply(&tx, &path)?;
        tx.execute("DELETE FROM dot_marks", []).at(&path)?;
        tx.commit().at(&path)?;
        Ok(n as u64)
    }

    /// Puts the Message-IDs of the recipients sent since the last call into
    /// `message_keys` (schema version 8: a run appends their ids to
    /// `mid_pending` instead of inserting each Message-ID at a random place),
    /// sorted, so each page of `message_keys` is written once, in one
    /// transaction. Called at the end of a run and at the start of the next.
    pub fn index_message_ids(&mut self) -> Result<()> {
        let path = self.path.clone();
        let waiting: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM mid_pending)")
            .at(&path)?
            .query_row([], |r| r.get(0))
            .at(&path)?;
        if !waiting {
            self.mid_waiting = 0;
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        tx.execute_batch(
            "INSERT OR IGNORE INTO message_keys (k, id)
                 SELECT substr(r.message_id, 1, 16), r.id FROM mid_pending AS p
                 CROSS JOIN recipients AS r ON r.id = p.id
                 WHERE r.message_id IS NOT NULL ORDER BY 1, 2;
             DELETE FROM mid_pending;",
        )
        .at(&path)?;
        tx.commit().at(&path)?;
        self.mid_waiting = 0;
        Ok(())
    }

    /// Durably marks recipients whose transactions may now reach their final
    /// dot, in one transaction for all of them (group commit: the engine's
    /// workers ask together, the writer commits once). Recording an outcome
    /// clears the mark; after a crash, [`Store::recover_in_doubt`] flags only
    /// marked rows (at most one per connection) and puts the others back.
    pub fn mark_in_flight(&mut self, ids: &[RecipientId]) -> Result<()> {
        self.record_and_mark(&[], ids)
    }

    /// [`Store::record`] and [`Store::mark_in_flight`] in one transaction:
    /// the store writer commits the outcomes and the marks that came in
    /// together once, not twice.
    pub fn record_and_mark(&mut self, outcomes: &[Outcome], marks: &[RecipientId]) -> Result<()> {
        if outcomes.is_empty() && marks.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = Hot::begin(&self.conn, &path)?;
        let mut deltas = record_in(&tx, &path, outcomes)?;
        let staged = self.behind.stage(&tx, &path, &mut deltas)?;
        let sent = outcomes
            .iter()
            .filter(|o| matches!(o.kind, OutcomeKind::Sent { .. }))
            .count() as u64;
        if !marks.is_empty() {
            // One statement for the group, the ids bound as one array.
            tx.prepare_cached("INSERT OR IGNORE INTO dot_marks (id) SELECT value FROM rarray(?1)")
                .at(&path)?
                .execute([id_array(marks.iter().map(|id| id.0))])
                .at(&path)?;
            // OR IGNORE: once set, no page is written again for it.
            tx.prepare_cached("INSERT OR IGNORE INTO meta (key, value) VALUES (?1, '1')")
                .at(&path)?
                .execute([MARKS_META])
                .at(&path)?;
        }
        tx.commit(&path)?;
        self.behind.committed(staged);
        self.mid_waiting += sent;
        if self.mid_waiting >= MID_FLUSH {
            // Committed above: a failure here is only logged (the next
            // call, the end of the run or the next run moves them).
            if let Err(e) = self.index_message_ids() {
                tracing::warn!(error = %e, "cannot move sent Message-IDs into message_keys");
            }
        }
        Ok(())
    }

    /// Claims up to `limit` recipients for sending: pending ones by id first,
    /// then deferred ones whose `next_attempt_at <= now`, earliest due first.
    ///
    /// One immediate transaction: the rows are `sending` on disk before this
    /// returns, so a crash afterwards leaves them in doubt, never forgotten.
    /// [`Recipient::attempts`] is the number of attempts made before.
    pub fn claim(&mut self, limit: usize, now: UnixMillis) -> Result<Vec<Recipient>> {
        self.claim_with_budget(limit, limit, now)
    }

    /// Like [`Store::claim`], but takes at most `max_due` deferred recipients:
    /// the caller's retry budget, so a wave of retries cannot crowd out (or
    /// multiply) the work.
    pub fn claim_with_budget(
        &mut self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
    ) -> Result<Vec<Recipient>> {
        let path = self.path.clone();
        let tx = Hot::begin(&self.conn, &path)?;
        let mut claimed = Vec::with_capacity(limit.min(4096));
        let mut deltas = Deltas::default();
        {
            // The last four: the row's tally key and domain before the claim.
            type Raw = (i64, i64, String, String, u32, Option<i64>, Tallied);
            let mut raw: Vec<Raw> = Vec::new();
            let map = |r: &rusqlite::Row<'_>| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    (r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?),
                ))
            };
            let mut pending = tx.prepare_cached(&claim_pending_sql()).at(&path)?;
            for row in pending.query_map([limit_param(limit)], map).at(&path)? {
                raw.push(row.at(&path)?);
            }
            // The pending rows claimed are exactly the pending rows up to the
            // last one read (id order, same immediate transaction): one
            // UPDATE over that range instead of one per row (issue 11).
            let n_pending = raw.len();
            if let Some(last) = raw.last().map(|r| r.0) {
                let changed = tx
                    .prepare_cached(&claim_pending_range_sql())
                    .at(&path)?
                    .execute(params![last, now])
                    .at(&path)?;
                if changed != n_pending {
                    // Cannot happen inside the transaction; refuse rather than
                    // hand out rows whose `sending` status is not on disk.
                    return Err(Error::Corrupt {
                        path,
                        column: "recipients.status",
                        value: format!(
                            "claimed {n_pending} pending rows up to #{last}, marked {changed}"
                        ),
                    });
                }
            }
            let left = limit.saturating_sub(raw.len()).min(max_due);
            if left > 0 {
                let mut due = tx.prepare_cached(&claim_due_sql()).at(&path)?;
                for row in due
                    .query_map(params![now, limit_param(left)], map)
                    .at(&path)?
                {
                    raw.push(row.at(&path)?);
                }
            }
            let mut mark = tx
                .prepare_cached(
                    "UPDATE recipients
                     SET status = 'sending', prev_attempt_at = last_attempt_at,
                         first_attempt_at = coalesce(first_attempt_at, ?2),
                         last_attempt_at = ?2, updated_at = ?2
                     WHERE id = ?1",
                )
                .at(&path)?;
            for (i, (id, line, email, fields, attempts, first, old)) in raw.into_iter().enumerate()
            {
                // Due rows one by one; the pending ones were marked above.
                if i >= n_pending {
                    mark.execute(params![id, now]).at(&path)?;
                }
                let (status, category, in_doubt, domain) = &old;
                deltas.moved(
                    domain,
                    (status, category, *in_doubt),
                    (Status::Sending.as_str(), category, *in_doubt),
                );
                claimed.push(Recipient {
                    id: RecipientId(id),
                    line: from_i64(line),
                    email,
                    values: parse_values(&path, &fields)?,
                    attempts,
                    // The claim just set it when it was empty.
                    first_attempt_at: Some(first.unwrap_or(now)),
                });
            }
        }
        deltas.apply_tally(&tx, &path)?;
        let staged = self.behind.stage(&tx, &path, &mut deltas)?;
        tx.commit(&path)?;
        self.behind.committed(staged);
        Ok(claimed)
    }

    /// Records a batch of outcomes in one transaction.
    ///
    /// `Released` only applies to rows still `sending` (a release is never
    /// allowed to undo a recorded result); the other outcomes always apply,
    /// since they report what a server said. An id the store does not have
    /// fails the whole batch with [`Error::UnknownRecipient`].
    pub fn record(&mut self, outcomes: &[Outcome]) -> Result<()> {
        self.record_and_mark(outcomes, &[])
    }
}

/// An immediate transaction of the run's hot path (claims, outcomes and
/// marks), begun and committed with cached statements: rusqlite's
/// `Transaction` parses `BEGIN IMMEDIATE` and `COMMIT` again each time,
/// ~4.5k instructions per message at ~0.2 transactions per message
/// (issue 11). Rolled back when dropped uncommitted, as `Transaction` is.
pub(crate) struct Hot<'c> {
    conn: &'c rusqlite::Connection,
    open: bool,
}

impl<'c> Hot<'c> {
    pub(crate) fn begin(conn: &'c rusqlite::Connection, path: &std::path::Path) -> Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")
            .at(path)?
            .execute([])
            .at(path)?;
        Ok(Hot { conn, open: true })
    }

    pub(crate) fn commit(mut self, path: &std::path::Path) -> Result<()> {
        self.conn
            .prepare_cached("COMMIT")
            .at(path)?
            .execute([])
            .at(path)?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Hot<'_> {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        self.conn
    }
}

impl Drop for Hot<'_> {
    fn drop(&mut self) {
        // A failed COMMIT (busy, full disk) leaves the transaction open:
        // roll it back so the connection is usable, as rusqlite's does.
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// The body of [`Store::record`], inside the caller's transaction.
fn record_in(
    tx: &rusqlite::Connection,
    path: &std::path::Path,
    outcomes: &[Outcome],
) -> Result<Deltas> {
    let path = path.to_path_buf();
    let mut deltas = Deltas::default();
    {
        {
            let mut sent = tx
                .prepare_cached(
                    "UPDATE recipients
                     SET status = 'sent', attempts = attempts + 1, next_attempt_at = NULL,
                         category = NULL, stage = NULL, smtp_code = ?2, enhanced_code = ?3,
                         reply = ?4, message_id = ?5, last_attempt_at = ?6, updated_at = ?6,
                         relay = ?7, provider_message_id = ?8
                     WHERE id = ?1",
                )
                .at(&path)?;
            let mut failed = tx
                .prepare_cached(
                    "UPDATE recipients
                     SET status = ?2, attempts = attempts + ?3, next_attempt_at = ?4,
                         category = ?5, stage = ?6, smtp_code = ?7, enhanced_code = ?8,
                         reply = ?9, last_attempt_at = ?10, updated_at = ?10,
                         relay = COALESCE(?11, relay)
                     WHERE id = ?1",
                )
                .at(&path)?;
            let mut released = tx
                .prepare_cached(
                    "UPDATE recipients
                     SET status = CASE WHEN next_attempt_at IS NULL
                                       THEN 'pending' ELSE 'deferred' END,
                         first_attempt_at = CASE WHEN prev_attempt_at IS NULL
                                                 THEN NULL ELSE first_attempt_at END,
                         last_attempt_at = prev_attempt_at, prev_attempt_at = NULL,
                         updated_at = ?2
                     WHERE id = ?1 AND status = 'sending'",
                )
                .at(&path)?;
            let mut held = tx
                .prepare_cached(
                    "UPDATE recipients
                     SET status = 'pending', next_attempt_at = NULL,
                         first_attempt_at = CASE WHEN prev_attempt_at IS NULL
                                                 THEN NULL ELSE first_attempt_at END,
                         prev_attempt_at = NULL,
                         category = ?2, stage = ?3, smtp_code = ?4, enhanced_code = ?5,
                         reply = ?6, last_attempt_at = ?7, updated_at = ?7
                     WHERE id = ?1",
                )
                .at(&path)?;
            let mut in_doubt = tx
                .prepare_cached(
                    "UPDATE recipients
                     SET status = ?2, in_doubt = 1, attempts = attempts + 1,
                         next_attempt_at = ?3, category = ?4, stage = ?5, smtp_code = ?6,
                         enhanced_code = ?7, reply = ?8, last_attempt_at = ?9, updated_at = ?9,
                         relay = COALESCE(?10, relay)
                     WHERE id = ?1",
                )
                .at(&path)?;
            // The rows as they are, read for the whole batch at once.
            let mut before = old_keys(tx, &path, outcomes)?;
            for o in outcomes {
                // Every outcome needs its row: an id the store does not
                // have fails the batch. An id seen twice in a batch is read
                // again, as the first outcome left it.
                let old = match before.remove(&o.id.0) {
                    Some(old) => old,
                    None => match old_key(tx, &path, o.id.0)? {
                        Some(old) => old,
                        None => return Err(Error::UnknownRecipient { path, id: o.id }),
                    },
                };
                let changed = match &o.kind {
                    OutcomeKind::Sent {
                        reply,
                        message_id,
                        relay,
                    } => sent
                        .execute(params![
                            o.id.0,
                            reply.code,
                            reply.enhanced,
                            reply.text,
                            message_id,
                            o.at,
                            (!relay.is_empty()).then_some(relay.as_str()),
                            reply.provider_message_id
                        ])
                        .at(&path)?,
                    OutcomeKind::Deferred {
                        failure,
                        next_attempt_at,
                        count_attempt,
                        relay,
                    } => failed
                        .execute(params![
                            o.id.0,
                            Status::Deferred.as_str(),
                            i64::from(*count_attempt),
                            next_attempt_at,
                            failure.category.as_str(),
                            failure.stage.as_str(),
                            failure.smtp_code,
                            failure.enhanced_code,
                            failure.reply,
                            o.at,
                            (!relay.is_empty()).then_some(relay.as_str())
                        ])
                        .at(&path)?,
                    OutcomeKind::Failed { failure, relay } => {
                        // A failure before SMTP never reached a server: no attempt used.
                        let counts = !matches!(failure.stage, Stage::Ingest | Stage::Render);
                        failed
                            .execute(params![
                                o.id.0,
                                Status::Failed.as_str(),
                                i64::from(counts),
                                Option::<i64>::None,
                                failure.category.as_str(),
                                failure.stage.as_str(),
                                failure.smtp_code,
                                failure.enhanced_code,
                                failure.reply,
                                o.at,
                                (!relay.is_empty()).then_some(relay.as_str())
                            ])
                            .at(&path)?
                    }
                    OutcomeKind::Held { failure } => held
                        .execute(params![
                            o.id.0,
                            failure.category.as_str(),
                            failure.stage.as_str(),
                            failure.smtp_code,
                            failure.enhanced_code,
                            failure.reply,
                            o.at
                        ])
                        .at(&path)?,
                    OutcomeKind::InDoubt {
                        failure,
                        next_attempt_at,
                        relay,
                    } => in_doubt
                        .execute(params![
                            o.id.0,
                            if next_attempt_at.is_some() {
                                Status::Deferred.as_str()
                            } else {
                                Status::InDoubt.as_str()
                            },
                            next_attempt_at,
                            failure.category.as_str(),
                            failure.stage.as_str(),
                            failure.smtp_code,
                            failure.enhanced_code,
                            failure.reply,
                            o.at,
                            (!relay.is_empty()).then_some(relay.as_str())
                        ])
                        .at(&path)?,
                    // Not sending any more: nothing to release (no new key).
                    OutcomeKind::Released => released.execute(params![o.id.0, o.at]).at(&path)?,
                };
                // Every UPDATE but a release's changes the row read above.
                if changed > 0 {
                    deltas.moved(&old.3, (&old.0, &old.1, old.2), outcome_key(&o.kind, &old));
                }
            }
            // The rows sent wait for `index_message_ids` (schema version 8).
            let sent = outcomes
                .iter()
                .filter(|o| matches!(o.kind, OutcomeKind::Sent { .. }))
                .map(|o| o.id.0);
            if outcomes
                .iter()
                .any(|o| matches!(o.kind, OutcomeKind::Sent { .. }))
            {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO mid_pending (id) SELECT value FROM rarray(?1)",
                )
                .at(&path)?
                .execute([id_array(sent)])
                .at(&path)?;
            }
            // The outcomes clear their marks, in one statement.
            if !outcomes.is_empty() {
                tx.prepare_cached("DELETE FROM dot_marks WHERE id IN rarray(?1)")
                    .at(&path)?
                    .execute([id_array(outcomes.iter().map(|o| o.id.0))])
                    .at(&path)?;
            }
        }
    }
    // `tally` exact at each commit; the domain part is the caller's
    // ([`tally::Behind::stage`]).
    deltas.apply_tally(tx, &path)?;
    Ok(deltas)
}

/// Ids bound as one value, for `rarray(?)` (the `array` table of rusqlite).
fn id_array(ids: impl Iterator<Item = i64>) -> rusqlite::vtab::array::Array {
    std::rc::Rc::new(ids.map(rusqlite::types::Value::Integer).collect())
}

/// The rows of a batch of outcomes as they are now ([`old_key`] for every
/// id at once): one statement per batch instead of one per outcome. An id
/// given twice is left out, so the caller reads it again ([`old_key`]) as
/// the first outcome leaves it; an id the store does not have is absent.
fn old_keys(
    tx: &rusqlite::Connection,
    path: &std::path::Path,
    outcomes: &[Outcome],
) -> Result<std::collections::HashMap<i64, Before>> {
    let mut seen = std::collections::HashSet::with_capacity(outcomes.len());
    let mut twice = std::collections::HashSet::new();
    for o in outcomes {
        if !seen.insert(o.id.0) {
            twice.insert(o.id.0);
        }
    }
    let mut st = tx
        .prepare_cached(
            "SELECT r.id, r.status, coalesce(r.category, ''), r.in_doubt, r.domain,
                    r.next_attempt_at IS NULL
             FROM rarray(?1) AS a CROSS JOIN recipients AS r ON r.id = a.value",
        )
        .at(path)?;
    let mut rows = st
        .query([id_array(
            outcomes
                .iter()
                .map(|o| o.id.0)
                .filter(|id| !twice.contains(id)),
        )])
        .at(path)?;
    let mut found = std::collections::HashMap::with_capacity(outcomes.len());
    while let Some(r) = rows.next().at(path)? {
        let id: i64 = r.get(0).at(path)?;
        let before: Before = (
            r.get(1).at(path)?,
            r.get(2).at(path)?,
            r.get(3).at(path)?,
            r.get(4).at(path)?,
            r.get(5).at(path)?,
        );
        found.insert(id, before);
    }
    Ok(found)
}

/// A row's tally key and domain: status, category (`''` for none),
/// in-doubt flag, domain.
type Tallied = (String, String, bool, String);

/// A row before an outcome: its tally key and domain, and whether its
/// `next_attempt_at` is empty (where a release puts it back).
type Before = (String, String, bool, String, bool);

/// The row `id` as it is now, `None` when there is no such row: read before
/// a statement changes it, so its delta is known.
fn old_key(tx: &rusqlite::Connection, path: &std::path::Path, id: i64) -> Result<Option<Before>> {
    tx.prepare_cached(
        "SELECT status, coalesce(category, ''), in_doubt, domain, next_attempt_at IS NULL
         FROM recipients WHERE id = ?1",
    )
    .at(path)?
    .query_row([id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .optional()
    .at(path)
}

/// The tally key an outcome's UPDATE (in [`record_in`]) leaves its row
/// with, computed from the outcome and the row before, as the statements
/// set the columns. Not read back with `RETURNING`: SQLite buffers returned
/// rows in a temporary b-tree at each execution, the cost issue 11 removed
/// from the claim index.
fn outcome_key<'a>(kind: &'a OutcomeKind, old: &'a Before) -> (&'a str, &'a str, bool) {
    let (_, category, in_doubt, _, due_empty) = old;
    match kind {
        OutcomeKind::Sent { .. } => (Status::Sent.as_str(), "", *in_doubt),
        OutcomeKind::Deferred { failure, .. } => (
            Status::Deferred.as_str(),
            failure.category.as_str(),
            *in_doubt,
        ),
        OutcomeKind::Failed { failure, .. } => (
            Status::Failed.as_str(),
            failure.category.as_str(),
            *in_doubt,
        ),
        OutcomeKind::Held { failure } => (
            Status::Pending.as_str(),
            failure.category.as_str(),
            *in_doubt,
        ),
        OutcomeKind::InDoubt {
            failure,
            next_attempt_at,
            ..
        } => {
            let status = match next_attempt_at {
                Some(_) => Status::Deferred,
                None => Status::InDoubt,
            };
            (status.as_str(), failure.category.as_str(), true)
        }
        // Only a `sending` row is released (else nothing changed).
        OutcomeKind::Released => {
            let status = if *due_empty {
                Status::Pending
            } else {
                Status::Deferred
            };
            (status.as_str(), category.as_str(), *in_doubt)
        }
    }
}

/// Runs an `UPDATE … RETURNING status, coalesce(category, ''), in_doubt` of
/// one row: its new tally key, `None` when its WHERE matched nothing.
fn new_key(
    path: &std::path::Path,
    st: &mut rusqlite::CachedStatement<'_>,
    args: impl rusqlite::Params,
) -> Result<Option<(String, String, bool)>> {
    let mut rows = st.query(args).at(path)?;
    match rows.next().at(path)? {
        Some(r) => Ok(Some((
            r.get(0).at(path)?,
            r.get(1).at(path)?,
            r.get(2).at(path)?,
        ))),
        None => Ok(None),
    }
}

impl Store {
    /// Puts matching rows back to `pending` for another try: attempts to 0,
    /// `next_attempt_at` cleared; the in-doubt flag and the last reply are kept.
    ///
    /// Empty `statuses` means every non-pending status except `sending` and
    /// `sent` (rows being sent and rows delivered are never reset implicitly);
    /// empty `categories` means any category. Returns how many rows changed.
    pub fn reset_for_retry(&mut self, statuses: &[Status], categories: &[Category]) -> Result<u64> {
        let statuses: Vec<&str> = if statuses.is_empty() {
            [
                Status::Deferred,
                Status::Failed,
                Status::Invalid,
                Status::Skipped,
                Status::Suppressed,
                Status::InDoubt,
            ]
            .iter()
            .map(|s| s.as_str())
            .collect()
        } else {
            statuses.iter().map(|s| s.as_str()).collect()
        };
        let mut filter = format!("status IN ({})", placeholders(2, statuses.len()));
        if !categories.is_empty() {
            filter.push_str(&format!(
                " AND category IN ({})",
                placeholders(2 + statuses.len(), categories.len())
            ));
        }
        let sql = format!(
            "UPDATE recipients SET status = 'pending', attempts = 0, next_attempt_at = NULL,
                 updated_at = ?1
             WHERE {filter} {}",
            tally::RETURNING
        );
        let now = edm_model::now_ms();
        let mut args: Vec<rusqlite::types::Value> = vec![now.into()];
        args.extend(statuses.iter().map(|s| s.to_string().into()));
        args.extend(categories.iter().map(|c| c.as_str().to_string().into()));
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        let mut deltas = Deltas::default();
        // The rows as they are, then as the UPDATE leaves them. The SELECT
        // does not use ?1 (the time): SQLite numbers parameters up to the
        // highest, so binding it anyway is allowed.
        tally::take_out_where(
            &tx,
            &path,
            &mut deltas,
            &filter,
            params_from_iter(args.iter()),
        )?;
        let n = {
            let mut st = tx.prepare(&sql).at(&path)?;
            let rows = st.query(params_from_iter(args)).at(&path)?;
            tally::returned(&path, &mut deltas, rows)?
        };
        deltas.apply(&tx, &path)?;
        tx.commit().at(&path)?;
        Ok(n)
    }
}

impl Store {
    /// Marks recipients `skipped` with a reason, if they are not final and not
    /// being sent (pending, deferred, in doubt): for rows removed from a
    /// changed recipients file. Returns how many rows changed.
    pub fn skip_unsent(&mut self, ids: &[RecipientId], reason: &str) -> Result<u64> {
        let path = self.path.clone();
        let now = edm_model::now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        let mut n = 0;
        let mut deltas = Deltas::default();
        {
            let mut st = tx
                .prepare_cached(
                    "UPDATE recipients SET status = 'skipped', reply = ?2, category = NULL,
                         next_attempt_at = NULL, updated_at = ?3
                     WHERE id = ?1 AND status IN ('pending', 'deferred', 'in_doubt')
                     RETURNING status, coalesce(category, ''), in_doubt",
                )
                .at(&path)?;
            for id in ids {
                let Some(old) = old_key(&tx, &path, id.0)? else {
                    continue;
                };
                if let Some((status, category, in_doubt)) =
                    new_key(&path, &mut st, params![id.0, reason, now])?
                {
                    deltas.moved(
                        &old.3,
                        (&old.0, &old.1, old.2),
                        (&status, &category, in_doubt),
                    );
                    n += 1;
                }
            }
        }
        deltas.apply(&tx, &path)?;
        tx.commit().at(&path)?;
        Ok(n)
    }
}

/// `?a, ?a+1, ...` for `n` parameters starting at index `first`.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The address as compared for duplicates: trimmed, lower-cased, the domain
/// in A-label form ([`edm_model::normalize_address`], the same key as ingest).
pub fn normalize(email: &str) -> String {
    edm_model::normalize_address(email)
}

/// CSV lines fit in an i64 (SQLite's integer); saturate rather than wrap.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Lines are written from u64 by [`to_i64`], so never negative; clamp if edited by hand.
pub(crate) fn from_i64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
