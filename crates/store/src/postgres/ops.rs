//! [`CampaignStore`] for [`PgStore`]: the SQLite store's statements
//! (`ingest.rs`, `write.rs`, `read.rs`) in PostgreSQL, each scoped to the
//! campaign (`campaign_id = $1`). The comments there say why each step is
//! what it is; here they say where PostgreSQL differs.

use std::collections::HashMap;
use std::path::Path;

use edm_model::{
    Category, DomainCounts, FailureRow, Recipient, RecipientId, Stage, Status, UnixMillis,
};
use postgres::Client;
use postgres::GenericClient;

use super::PgStore;
use super::conn::AtPg;
use crate::error::{Error, Result};
use crate::ingest::{next_generation, pass_meta};
use crate::late::late_transition;
use crate::read::reply_line;
use crate::types::{
    ExportFilter, ExportRow, InDoubtPolicy, LateApplied, LateCounts, LateOutcome, NewRow, Outcome,
    OutcomeKind, ReplyCount, Summary, Unmatched, WindowEntry,
};
use crate::write::{from_i64, normalize, to_i64};
use crate::{CampaignStore, IngestPass};

/// The meta key set once marks were used (the SQLite store's, too).
const MARKS_META: &str = "dot_marks";

/// Rows an export sends across from the connection thread at once.
const EXPORT_CHUNK: i32 = 1000;

fn corrupt(path: &Path, column: &'static str, value: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        column,
        value: value.into(),
    }
}

fn status(path: &Path, s: &str) -> Result<Status> {
    Status::parse(s).ok_or_else(|| corrupt(path, "recipients.status", s))
}

fn category(path: &Path, s: &str) -> Result<Category> {
    Category::parse(s).ok_or_else(|| corrupt(path, "recipients.category", s))
}

fn stage(path: &Path, s: &str) -> Result<Stage> {
    Stage::parse(s).ok_or_else(|| corrupt(path, "recipients.stage", s))
}

fn values(path: &Path, json: &str) -> Result<Vec<String>> {
    crate::store::parse_values(path, json)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn get_meta(
    c: &mut impl GenericClient,
    path: &Path,
    id: i64,
    key: &str,
) -> Result<Option<String>> {
    Ok(c.query_opt(
        "SELECT value FROM edm.meta WHERE campaign_id = $1 AND key = $2",
        &[&id, &key],
    )
    .at(path)?
    .map(|r| r.get(0)))
}

pub(super) fn put_meta(
    c: &mut impl GenericClient,
    path: &Path,
    id: i64,
    key: &str,
    value: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO edm.meta (campaign_id, key, value) VALUES ($1, $2, $3)
         ON CONFLICT (campaign_id, key) DO UPDATE SET value = excluded.value",
        &[&id, &key, &value],
    )
    .at(path)?;
    Ok(())
}

fn meta_int(c: &mut impl GenericClient, path: &Path, id: i64, key: &str) -> Result<i64> {
    Ok(get_meta(c, path, id, key)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Puts a claimed row back as before its claim (`SET` clause).
pub(super) const UNCLAIM: &str =
    "status = CASE WHEN next_attempt_at IS NULL THEN 'pending' ELSE 'deferred' END,
     first_attempt_at = CASE WHEN prev_attempt_at IS NULL THEN NULL ELSE first_attempt_at END,
     last_attempt_at = prev_attempt_at, prev_attempt_at = NULL,
     claimed_by = NULL, lease_until = NULL";

impl PgStore {
    /// Runs `f` on the connection; after a lost connection it runs again
    /// (see `conn.rs`), so `f` must be safe to repeat.
    pub(super) fn call<R: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Client, &Path, i64) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let id = self.campaign_id;
        self.conn.call(move |c, path, _| f(c, path, id))
    }

    /// [`PgStore::call`] for a write that is not simply repeatable: `again`
    /// is true when it runs again after a lost connection, when its last
    /// COMMIT may or may not have happened (see `retry.rs`).
    fn call_again<R: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Client, &Path, i64, bool) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let id = self.campaign_id;
        self.conn.call(move |c, path, again| f(c, path, id, again))
    }

    /// The operator's "try again" (`edm retry`), with the SQLite store's
    /// semantics (see [`crate::Store::reset_for_retry`]).
    fn reset(&mut self, statuses: &[Status], categories: &[Category]) -> Result<u64> {
        let statuses: Vec<String> = if statuses.is_empty() {
            [
                Status::Deferred,
                Status::Failed,
                Status::Invalid,
                Status::Skipped,
                Status::Suppressed,
                Status::InDoubt,
            ]
            .iter()
            .map(|s| s.as_str().to_string())
            .collect()
        } else {
            statuses.iter().map(|s| s.as_str().to_string()).collect()
        };
        let categories: Vec<String> = categories.iter().map(|c| c.as_str().to_string()).collect();
        self.call(move |c, path, id| {
            let n = c
                .execute(
                    "UPDATE edm.recipients SET status = 'pending', attempts = 0,
                         next_attempt_at = NULL, updated_at = $4
                     WHERE campaign_id = $1 AND status = ANY($2)
                       AND (cardinality($3::text[]) = 0 OR category = ANY($3))",
                    &[&id, &statuses, &categories, &edm_model::now_ms()],
                )
                .at(path)?;
            Ok(n)
        })
    }
}

impl CampaignStore for PgStore {
    fn location(&self) -> &Path {
        self.conn.location()
    }

    /// Joins the campaign as a worker (`workers.rs`): several `edm send`
    /// run one campaign together, each under its own name; a name whose
    /// lease is live is refused ([`Error::WorkerLive`]). A crash never
    /// leaves a stale worker: its lease expires.
    fn lock_for_run(&mut self, pid: u32) -> Result<()> {
        self.join(pid)
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.call(move |c, path, id| get_meta(c, path, id, &key))
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call(move |c, path, id| put_meta(c, path, id, &key, &value))
    }

    fn is_ingested(&self) -> Result<bool> {
        Ok(self.meta("ingested")?.as_deref() == Some("1"))
    }

    fn columns(&self) -> Result<Vec<String>> {
        match self.meta("columns")? {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json)
                .map_err(|_| corrupt(self.location(), "meta.columns", json)),
        }
    }

    fn ingest_pass(&self) -> Result<Option<IngestPass>> {
        self.call(|c, path, id| {
            let Some(generation) = get_meta(c, path, id, "ingest.generation")? else {
                return Ok(None);
            };
            let int = |key: &'static str, v: Option<String>| -> Result<i64> {
                let v = v.unwrap_or_else(|| "0".into());
                v.parse().map_err(|_| corrupt(path, key, v))
            };
            let generation = int("meta.ingest.generation", Some(generation))?;
            let after = get_meta(c, path, id, "ingest.after")?;
            let rows = get_meta(c, path, id, "ingest.rows")?;
            Ok(Some(IngestPass {
                generation,
                source: get_meta(c, path, id, "ingest.source")?.unwrap_or_default(),
                after_line: from_i64(int("meta.ingest.after", after)?),
                rows: from_i64(int("meta.ingest.rows", rows)?),
                complete: get_meta(c, path, id, "ingest.open")?.as_deref() != Some("1"),
            }))
        })
    }

    fn begin_ingest(&mut self, source: &str) -> Result<IngestPass> {
        let source = source.to_string();
        // The generation the first attempt chose: repeated after a lost
        // COMMIT that happened, the pass it opened is the answer (another
        // pass would skip a generation).
        let mut chose: Option<i64> = None;
        self.call_again(move |c, path, id, again| {
            let pass = |generation| IngestPass {
                generation,
                source: source.clone(),
                after_line: 0,
                rows: 0,
                complete: false,
            };
            if let (true, Some(g)) = (again, chose) {
                let open = get_meta(c, path, id, "ingest.open")?.as_deref() == Some("1");
                let current = get_meta(c, path, id, "ingest.generation")?;
                if open && current == Some(g.to_string()) {
                    return Ok(pass(g));
                }
            }
            let mut tx = c.transaction().at(path)?;
            let max_row: Option<i64> = tx
                .query_one(
                    "SELECT max(generation) FROM edm.recipients WHERE campaign_id = $1",
                    &[&id],
                )
                .at(path)?
                .get(0);
            let max_meta =
                get_meta(&mut tx, path, id, "ingest.generation")?.and_then(|v| v.parse().ok());
            let generation = next_generation(max_row, max_meta);
            for (key, value) in pass_meta(generation, &source) {
                put_meta(&mut tx, path, id, key, &value)?;
            }
            chose = Some(generation);
            tx.commit().at(path)?;
            Ok(pass(generation))
        })
    }

    /// One multi-row `INSERT ... SELECT FROM unnest(...)` per batch (one
    /// round trip, not one per row). `ON CONFLICT DO NOTHING RETURNING line`
    /// tells exactly which line the unique key refused: the first line of
    /// the batch missing from what was inserted. Then the transaction is
    /// dropped (rolled back) and the checkpoint stays.
    fn insert_rows(&mut self, rows: &[NewRow]) -> Result<()> {
        for row in rows {
            if !matches!(
                row.status,
                Status::Pending | Status::Invalid | Status::Skipped | Status::Suppressed
            ) {
                return Err(Error::InvalidNewRow {
                    path: self.location().to_path_buf(),
                    line: row.line,
                    status: row.status,
                });
            }
        }
        let n = rows.len();
        let mut lines = Vec::with_capacity(n);
        let mut emails = Vec::with_capacity(n);
        let mut norms = Vec::with_capacity(n);
        let mut domains = Vec::with_capacity(n);
        let mut fields = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut categories: Vec<Option<&'static str>> = Vec::with_capacity(n);
        let mut stages: Vec<Option<&'static str>> = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut dups = Vec::with_capacity(n);
        for row in rows {
            lines.push(to_i64(row.line));
            emails.push(row.email.clone());
            norms.push(normalize(&row.email));
            domains.push(edm_model::domain_of(&row.email).to_string());
            fields.push(
                serde_json::to_string(&row.values).expect("a list of strings always serialises"),
            );
            statuses.push(row.status.as_str());
            categories.push(row.category.map(|c| c.as_str()));
            stages.push((row.status == Status::Invalid).then_some(Stage::Ingest.as_str()));
            reasons.push(row.reason.clone());
            dups.push(row.duplicate_of.map(to_i64));
        }
        // The checkpoint's row count the first attempt found: repeated after
        // a lost COMMIT, a count grown by exactly this batch is that commit
        // (one ingester at a time: the run lock), and the unique key would
        // refuse the batch's second copy.
        let mut found: Option<i64> = None;
        self.call_again(move |c, path, id, again| {
            let mut tx = c.transaction().at(path)?;
            let generation = meta_int(&mut tx, path, id, "ingest.generation")?;
            let stored = meta_int(&mut tx, path, id, "ingest.rows")?;
            if again && found.is_some_and(|f| f.saturating_add(limit(lines.len())) == stored) {
                return Ok(());
            }
            found = Some(stored);
            let mut after = meta_int(&mut tx, path, id, "ingest.after")?;
            let now = edm_model::now_ms();
            let inserted = tx
                .query(
                    "INSERT INTO edm.recipients
                       (campaign_id, generation, updated_at, line, email, email_norm, domain,
                        fields, status, category, stage, reply, duplicate_of)
                     SELECT $1, $2, $3, u.line, u.email, u.email_norm, u.domain, u.fields, u.status,
                            u.category, u.stage, u.reply, u.duplicate_of
                     FROM unnest(
                        $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],
                        $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[]
                     ) WITH ORDINALITY AS u(line, email, email_norm, domain, fields, status,
                                            category, stage, reply, duplicate_of, ord)
                     ORDER BY ord
                     ON CONFLICT (campaign_id, generation, line) DO NOTHING
                     RETURNING line",
                    &[
                        &id,
                        &generation,
                        &now,
                        &lines,
                        &emails,
                        &norms,
                        &domains,
                        &fields,
                        &statuses,
                        &categories,
                        &stages,
                        &reasons,
                        &dups,
                    ],
                )
                .at(path)?;
            if inserted.len() < lines.len() {
                let mut got: HashMap<i64, usize> = HashMap::new();
                for r in &inserted {
                    *got.entry(r.get(0)).or_default() += 1;
                }
                let refused = lines
                    .iter()
                    .find(|l| match got.get_mut(l) {
                        Some(k) if *k > 0 => {
                            *k -= 1;
                            false
                        }
                        _ => true,
                    })
                    .copied()
                    .unwrap_or(lines[0]);
                return Err(Error::AlreadyStored {
                    path: path.to_path_buf(),
                    line: from_i64(refused),
                    generation,
                });
            }
            if let Some(max) = lines.iter().max() {
                after = after.max(*max);
            }
            let stored = stored.saturating_add(limit(lines.len()));
            put_meta(&mut tx, path, id, "ingest.after", &after.to_string())?;
            put_meta(&mut tx, path, id, "ingest.rows", &stored.to_string())?;
            tx.commit().at(path)
        })
    }

    fn finish_ingest(&mut self, columns: Option<&[String]>, meta: &[(&str, &str)]) -> Result<()> {
        let columns =
            columns.map(|c| serde_json::to_string(c).expect("a list of strings always serialises"));
        let meta: Vec<(String, String)> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.call(move |c, path, id| {
            let mut tx = c.transaction().at(path)?;
            put_meta(&mut tx, path, id, "ingest.open", "0")?;
            if let Some(json) = &columns {
                put_meta(&mut tx, path, id, "columns", json)?;
                put_meta(&mut tx, path, id, "ingested", "1")?;
            }
            for (key, value) in &meta {
                put_meta(&mut tx, path, id, key, value)?;
            }
            tx.commit().at(path)
        })?;
        // The planner's statistics, now that the rows are in: a table just
        // filled (or a campaign new among others) is otherwise planned as if
        // the campaign had a few rows, and every outcome's lookup of its ids
        // read the campaign's whole index (6 ms each at 100,000 rows) until
        // autovacuum caught up. Samples a fixed number of rows; a role that
        // does not own the table gets a warning, not an error.
        self.call(|c, path, _| c.batch_execute("ANALYZE edm.recipients").at(path))
    }

    fn discard_recipients(&mut self) -> Result<u64> {
        self.call(|c, path, id| {
            let mut tx = c.transaction().at(path)?;
            let n = tx
                .execute("DELETE FROM edm.recipients WHERE campaign_id = $1", &[&id])
                .at(path)?;
            tx.execute(
                "DELETE FROM edm.meta WHERE campaign_id = $1 AND key IN
                   ('ingested', 'columns', 'ingest.source', 'ingest.after', 'ingest.rows',
                    'ingest.open')",
                &[&id],
            )
            .at(path)?;
            tx.commit().at(path)?;
            Ok(n)
        })
    }

    fn ever_attempted(&self) -> Result<bool> {
        self.call(|c, path, id| {
            let by_tally: bool = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM edm.tally WHERE campaign_id = $1 AND n > 0
                       AND (in_doubt OR status NOT IN
                            ('pending', 'invalid', 'skipped', 'suppressed')))",
                    &[&id],
                )
                .at(path)?
                .get(0);
            if by_tally {
                return Ok(true);
            }
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM edm.recipients
                                WHERE campaign_id = $1 AND first_attempt_at IS NOT NULL)",
                &[&id],
            )
            .at(path)?
            .get(0))
        })
    }

    fn rows_by_email(&self) -> Result<HashMap<String, (RecipientId, Status)>> {
        self.call(|c, path, id| {
            let rows = c
                .query(
                    "SELECT email, id, status FROM edm.recipients
                     WHERE campaign_id = $1 ORDER BY id",
                    &[&id],
                )
                .at(path)?;
            let mut out = HashMap::new();
            for r in rows {
                let email: String = r.get(0);
                let st: String = r.get(2);
                let st = status(path, &st)?;
                out.entry(normalize(&email))
                    .or_insert((RecipientId(r.get(1)), st));
            }
            Ok(out)
        })
    }

    fn skip_unsent(&mut self, ids: &[RecipientId], reason: &str) -> Result<u64> {
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        let reason = reason.to_string();
        self.call(move |c, path, id| {
            c.execute(
                "UPDATE edm.recipients SET status = 'skipped', reply = $3, category = NULL,
                     next_attempt_at = NULL, updated_at = $4
                 WHERE campaign_id = $1 AND id = ANY($2)
                   AND status IN ('pending', 'deferred', 'in_doubt')",
                &[&id, &ids, &reason, &edm_model::now_ms()],
            )
            .at(path)
        })
    }

    fn take_repair_notice(&mut self) -> Result<u64> {
        // Copies were only ever stored by SQLite builds before version 2; a
        // PostgreSQL campaign never has any, but the key is honoured alike.
        self.call(|c, path, id| {
            let n = c
                .query_opt(
                    "DELETE FROM edm.meta WHERE campaign_id = $1 AND key = 'repair.unannounced'
                     RETURNING value",
                    &[&id],
                )
                .at(path)?;
            Ok(n.and_then(|r| r.get::<_, String>(0).parse().ok())
                .unwrap_or(0))
        })
    }

    fn recover_in_doubt(&mut self, policy: InDoubtPolicy) -> Result<u64> {
        // A worker among others touches only the rows of dead workers.
        if self.joined.is_some() {
            return self.recover_at_join(policy);
        }
        self.call(move |c, path, id| {
            let now = edm_model::now_ms();
            let mut tx = c.transaction().at(path)?;
            let marks_used = get_meta(&mut tx, path, id, MARKS_META)?.as_deref() == Some("1");
            if marks_used {
                tx.execute(
                    &format!(
                        "UPDATE edm.recipients r SET {UNCLAIM}, updated_at = $2
                         WHERE campaign_id = $1 AND status = 'sending'
                           AND NOT EXISTS (SELECT 1 FROM edm.dot_marks m WHERE m.id = r.id)"
                    ),
                    &[&id, &now],
                )
                .at(path)?;
            }
            let set = match policy {
                InDoubtPolicy::Resend => "status = 'pending', next_attempt_at = NULL",
                InDoubtPolicy::Skip => "status = 'in_doubt'",
            };
            let n = tx
                .execute(
                    &format!(
                        "UPDATE edm.recipients SET in_doubt = true, {set}, prev_attempt_at = NULL,
                             claimed_by = NULL, lease_until = NULL, updated_at = $2
                         WHERE campaign_id = $1 AND status = 'sending'"
                    ),
                    &[&id, &now],
                )
                .at(path)?;
            tx.execute("DELETE FROM edm.dot_marks WHERE campaign_id = $1", &[&id])
                .at(path)?;
            tx.commit().at(path)?;
            Ok(n)
        })
    }

    /// `FOR UPDATE SKIP LOCKED`: rows another transaction is claiming are
    /// passed over rather than waited for, so workers sharing a campaign
    /// never queue behind each other's claims. The claim names its worker
    /// (`claimed_by`); `lease_until` stays empty until leases are used.
    fn claim_with_budget(
        &mut self,
        limit_n: usize,
        max_due: usize,
        now: UnixMillis,
    ) -> Result<Vec<Recipient>> {
        let worker = self.worker.clone();
        let joined = self.joined;
        let cap = self.claim_cap.take();
        let after = self.claim_after;
        let earlier = if self.claimed.0 == now {
            self.claimed.1.clone()
        } else {
            Vec::new()
        };
        let (claimed, cursor) = self.call_again(move |c, path, id, again| {
            // Repeated after a lost COMMIT that happened: its rows.
            if again {
                let lost = super::retry::claimed_before(c, path, id, &worker, now, &earlier)?;
                if !lost.is_empty() {
                    return Ok((lost, None));
                }
            }
            let mut tx = c.transaction().at(path)?;
            if let Some(inc) = joined {
                // A worker whose rows were taken over claims nothing more.
                super::workers::hold_own_row(&mut tx, path, (id, &worker, inc), "its claims")?;
            }
            let limit_n = match cap {
                Some((quota, since)) => {
                    super::workers::quota_left(&mut tx, path, id, (quota, since))?.min(limit_n)
                }
                None => limit_n,
            };
            let claim = |picked: &str| {
                format!(
                    "WITH picked AS ({picked})
                     UPDATE edm.recipients r
                     SET status = 'sending', prev_attempt_at = r.last_attempt_at,
                         first_attempt_at = coalesce(r.first_attempt_at, $2),
                         last_attempt_at = $2, updated_at = $2, claimed_by = $3
                     FROM picked WHERE r.id = picked.id
                     RETURNING r.id, r.line, r.email, r.fields, r.attempts, r.first_attempt_at,
                               coalesce(r.next_attempt_at, 0)"
                )
            };
            // Pending rows in id order, from just after the last claim's
            // (`claim_after`): `next_attempt_at` (always NULL here) in the
            // ORDER BY makes it the claim index's order, which PostgreSQL
            // then walks from `$5`; ordered by id alone it walked the
            // primary key from the start past every row already sent (40 ms
            // a claim at 50,000 sent). From the cursor, the index entries of
            // rows claimed earlier (dead until a vacuum) are not read either.
            let pending = claim(
                "SELECT id FROM edm.recipients
                 WHERE campaign_id = $1 AND status = 'pending' AND next_attempt_at IS NULL
                   AND id > $5
                 ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED",
            );
            let due = claim(
                "SELECT id FROM edm.recipients
                 WHERE campaign_id = $1 AND status = 'deferred' AND next_attempt_at <= $2
                 ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED",
            );
            let mut rows = tx
                .query(&pending, &[&id, &now, &worker, &limit(limit_n), &after])
                .at(path)?;
            let last = |rows: &[postgres::Row]| rows.iter().map(|r| r.get::<_, i64>(0)).max();
            let mut cursor = last(&rows);
            // Short after the cursor: rows behind it may be pending again
            // (released, a dead worker's recovered): from the start, so that
            // nobody is passed over; the cursor goes on from those.
            if rows.len() < limit_n && after > 0 {
                let more = limit_n - rows.len();
                let wrapped = tx
                    .query(&pending, &[&id, &now, &worker, &limit(more), &0i64])
                    .at(path)?;
                cursor = last(&wrapped).or(cursor);
                rows.extend(wrapped);
            }
            // RETURNING comes in no particular order: put the claim's back.
            rows.sort_by_key(|r| r.get::<_, i64>(0));
            let left = limit_n.saturating_sub(rows.len()).min(max_due);
            if left > 0 {
                let mut due = tx
                    .query(&due, &[&id, &now, &worker, &limit(left)])
                    .at(path)?;
                due.sort_by_key(|r| (r.get::<_, i64>(6), r.get::<_, i64>(0)));
                rows.extend(due);
            }
            let mut claimed = Vec::with_capacity(rows.len());
            for r in rows {
                let fields: String = r.get(3);
                let attempts: i32 = r.get(4);
                claimed.push(Recipient {
                    id: RecipientId(r.get(0)),
                    line: from_i64(r.get(1)),
                    email: r.get(2),
                    values: values(path, &fields)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    first_attempt_at: Some(r.get::<_, Option<i64>>(5).unwrap_or(now)),
                });
            }
            tx.commit().at(path)?;
            Ok((claimed, cursor))
        })?;
        if let Some(c) = cursor {
            self.claim_after = c;
        }
        if self.claimed.0 != now {
            self.claimed = (now, Vec::new());
        }
        self.claimed.1.extend(claimed.iter().map(|r| r.id.0));
        Ok(claimed)
    }

    fn record_and_mark(&mut self, outcomes: &[Outcome], marks: &[RecipientId]) -> Result<()> {
        if outcomes.is_empty() && marks.is_empty() {
            return Ok(());
        }
        let mut outcomes = outcomes.to_vec();
        let marks: Vec<i64> = marks.iter().map(|m| m.0).collect();
        let marks_meta_set = self.marks_meta_set;
        let marking = !marks.is_empty();
        let fence = self.joined.map(|inc| (self.worker.clone(), inc));
        let worker = self.worker.clone();
        self.call_again(move |c, path, id, again| {
            let mut tx = c.transaction().at(path)?;
            if again {
                // Repeated after a lost COMMIT: the outcomes it recorded
                // are not applied twice (see retry.rs).
                let ids: Vec<i64> = outcomes.iter().map(|o| o.id.0).collect();
                let done = super::retry::already_recorded(&mut tx, path, id, &worker, &ids)?;
                outcomes.retain(|o| !done.contains(&o.id.0));
            }
            // A worker among several: only the outcomes of rows it still
            // holds (see `workers.rs`).
            let held;
            let outcomes: &[Outcome] = match &fence {
                Some((worker, _)) => {
                    held = PgStore::held_outcomes(&mut tx, path, (id, worker), &outcomes)?;
                    &held
                }
                None => &outcomes,
            };
            record_in(&mut tx, path, id, outcomes)?;
            if !marks.is_empty() {
                match &fence {
                    Some((worker, inc)) => {
                        PgStore::fenced_marks(&mut tx, path, (id, worker, *inc), &marks)?
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO edm.dot_marks (id, campaign_id)
                     SELECT m, $1 FROM unnest($2::bigint[]) AS m
                     ON CONFLICT (id) DO NOTHING",
                            &[&id, &marks],
                        )
                        .at(path)?;
                    }
                }
                // Once set, never again: a round trip saved on every mark.
                if !marks_meta_set {
                    tx.execute(
                        "INSERT INTO edm.meta (campaign_id, key, value) VALUES ($1, $2, '1')
                         ON CONFLICT (campaign_id, key) DO NOTHING",
                        &[&id, &MARKS_META],
                    )
                    .at(path)?;
                }
            }
            tx.commit().at(path)
        })?;
        if marking {
            self.marks_meta_set = true;
        }
        Ok(())
    }

    fn reset_for_retry(&mut self, statuses: &[Status], categories: &[Category]) -> Result<u64> {
        self.reset(statuses, categories)
    }

    fn summary(&self) -> Result<Summary> {
        self.call(|c, path, id| {
            // One snapshot for the tally and the due times.
            let mut tx = c
                .build_transaction()
                .read_only(true)
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .start()
                .at(path)?;
            let mut summary = Summary {
                counts: Status::ALL.iter().map(|s| (*s, 0)).collect(),
                ..Summary::default()
            };
            let rows = tx
                .query(
                    "SELECT status, category, in_doubt, n FROM edm.tally
                     WHERE campaign_id = $1 AND n != 0",
                    &[&id],
                )
                .at(path)?;
            for r in rows {
                let st: String = r.get(0);
                let cat: String = r.get(1);
                let in_doubt: bool = r.get(2);
                let n = u64::try_from(r.get::<_, i64>(3))
                    .map_err(|_| corrupt(path, "tally.n", "negative"))?;
                let st = status(path, &st)?;
                *summary.counts.entry(st).or_default() += n;
                summary.total += n;
                if in_doubt {
                    summary.in_doubt += n;
                }
                if !cat.is_empty()
                    && matches!(st, Status::Failed | Status::Deferred | Status::Invalid)
                {
                    *summary
                        .by_category
                        .entry(category(path, &cat)?)
                        .or_default() += n;
                }
            }
            let due = tx
                .query_one(
                    "SELECT min(next_attempt_at), max(next_attempt_at) FROM edm.recipients
                     WHERE campaign_id = $1 AND status = 'deferred'",
                    &[&id],
                )
                .at(path)?;
            summary.next_due = due.get(0);
            summary.last_deferred_due = due.get(1);
            tx.commit().at(path)?;
            Ok(summary)
        })
    }

    fn sent_since(&self, since: UnixMillis) -> Result<u64> {
        self.call(move |c, path, id| {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM edm.recipients
                     WHERE campaign_id = $1 AND status = 'sent' AND last_attempt_at >= $2",
                    &[&id, &since],
                )
                .at(path)?
                .get(0);
            Ok(from_i64(n))
        })
    }

    fn recent_failures(&self, limit_n: usize) -> Result<Vec<FailureRow>> {
        self.call(move |c, path, id| {
            let rows = c
                .query(
                    "SELECT email, status, category, smtp_code, enhanced_code, reply, attempts,
                            updated_at
                     FROM edm.recipients
                     WHERE campaign_id = $1 AND status IN ('failed', 'deferred')
                     ORDER BY updated_at DESC, id DESC LIMIT $2",
                    &[&id, &limit(limit_n)],
                )
                .at(path)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let st: String = r.get(1);
                let cat: Option<String> = r.get(2);
                let cat = cat.ok_or_else(|| corrupt(path, "recipients.category", "NULL"))?;
                let code: Option<i32> = r.get(3);
                let enhanced: Option<String> = r.get(4);
                let text: Option<String> = r.get(5);
                let attempts: i32 = r.get(6);
                out.push(FailureRow {
                    email: r.get(0),
                    status: status(path, &st)?,
                    category: category(path, &cat)?,
                    reply: reply_line(
                        code.and_then(|c| u16::try_from(c).ok()),
                        enhanced.as_deref(),
                        text.as_deref().unwrap_or(""),
                    ),
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    at: r.get(7),
                });
            }
            Ok(out)
        })
    }

    fn top_replies(&self, limit_n: usize) -> Result<Vec<ReplyCount>> {
        self.call(move |c, path, id| {
            let rows = c
                .query(
                    "SELECT smtp_code, enhanced_code, coalesce(reply, '') AS text, count(*) AS n
                     FROM edm.recipients
                     WHERE campaign_id = $1 AND status IN ('failed', 'deferred')
                     GROUP BY 1, 2, 3 ORDER BY n DESC, 1, 2, 3 LIMIT $2",
                    &[&id, &limit(limit_n)],
                )
                .at(path)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let code: Option<i32> = r.get(0);
                    (
                        code.and_then(|c| u16::try_from(c).ok()),
                        r.get(1),
                        r.get(2),
                        from_i64(r.get(3)),
                    )
                })
                .collect())
        })
    }

    fn domain_counts(&self, limit_n: usize) -> Result<Vec<(String, DomainCounts)>> {
        self.call(move |c, path, id| {
            let rows = c
                .query(
                    "SELECT domain,
                            sum(CASE WHEN status = 'sent' THEN n ELSE 0 END)::bigint,
                            sum(CASE WHEN status = 'failed' THEN n ELSE 0 END)::bigint,
                            sum(CASE WHEN status = 'deferred' THEN n ELSE 0 END)::bigint,
                            sum(n)::bigint AS total
                     FROM edm.domain_tally WHERE campaign_id = $1
                     GROUP BY domain ORDER BY total DESC, domain LIMIT $2",
                    &[&id, &limit(limit_n)],
                )
                .at(path)?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        DomainCounts {
                            sent: from_i64(r.get(1)),
                            failed: from_i64(r.get(2)),
                            deferred: from_i64(r.get(3)),
                        },
                    )
                })
                .collect())
        })
    }

    /// Streams in line order from one snapshot (a read-only repeatable-read
    /// transaction and a portal), `EXPORT_CHUNK` rows at a time across the
    /// thread boundary: nothing is collected whole, and the caller's `f`
    /// runs on the caller's thread.
    fn export_rows(&self, filter: &ExportFilter, f: &mut dyn FnMut(&ExportRow)) -> Result<()> {
        let statuses: Vec<String> = filter.statuses.iter().map(|s| s.to_string()).collect();
        let categories: Vec<String> = filter.categories.iter().map(|c| c.to_string()).collect();
        let in_doubt_only = filter.in_doubt_only;
        let id = self.campaign_id;
        let (tx_rows, rx_rows) = std::sync::mpsc::sync_channel::<Result<Vec<ExportRow>>>(2);
        // Once: rows already handed out cannot be taken back, so a lost
        // connection fails the export (the next call reconnects).
        let failed = tx_rows.clone();
        self.conn.spawn_once(
            move |c, path| {
                let walk = |c: &mut Client| -> Result<()> {
                    let mut tx = c
                        .build_transaction()
                        .read_only(true)
                        .isolation_level(postgres::IsolationLevel::RepeatableRead)
                        .start()
                        .at(path)?;
                    let portal = tx
                        .bind(
                            "SELECT line, email, fields, status, category, stage, smtp_code,
                                enhanced_code, reply, attempts, last_attempt_at, in_doubt,
                                message_id, duplicate_of, relay, provider_message_id,
                                late, late_at, late_status, late_diagnostic, soft_bounces
                         FROM edm.recipients
                         WHERE campaign_id = $1
                           AND (cardinality($2::text[]) = 0 OR status = ANY($2))
                           AND (cardinality($3::text[]) = 0 OR category = ANY($3))
                           AND (NOT $4 OR in_doubt)
                         ORDER BY line, id",
                            &[&id, &statuses, &categories, &in_doubt_only],
                        )
                        .at(path)?;
                    loop {
                        let rows = tx.query_portal(&portal, EXPORT_CHUNK).at(path)?;
                        if rows.is_empty() {
                            break;
                        }
                        let mut chunk = Vec::with_capacity(rows.len());
                        for r in &rows {
                            chunk.push(export_row(path, r)?);
                        }
                        if tx_rows.send(Ok(chunk)).is_err() {
                            break;
                        }
                    }
                    tx.commit().at(path)
                };
                walk(c)
            },
            move |e| {
                let _ = failed.send(Err(e));
            },
        )?;
        // The sender is dropped when the walk ends: the loop ends with it.
        for chunk in rx_rows {
            for row in &chunk? {
                f(row);
            }
        }
        Ok(())
    }

    /// One scan of the rows that name a relay, as in SQLite.
    fn relay_counts(
        &self,
        since: UnixMillis,
    ) -> Result<std::collections::BTreeMap<String, crate::RelayCounts>> {
        self.call(move |c, path, id| {
            let rows = c
                .query(
                    "SELECT relay, status, count(*),
                            count(*) FILTER (WHERE status = 'sent' AND last_attempt_at >= $2)
                     FROM edm.recipients
                     WHERE campaign_id = $1 AND relay IS NOT NULL AND relay != ''
                     GROUP BY relay, status",
                    &[&id, &since],
                )
                .at(path)?;
            let mut out: std::collections::BTreeMap<String, crate::RelayCounts> =
                Default::default();
            for r in rows {
                let relay: String = r.get(0);
                let st: String = r.get(1);
                let c = out.entry(relay).or_default();
                *c.by_status.entry(status(path, &st)?).or_default() += from_i64(r.get(2));
                c.sent_since += from_i64(r.get(3));
            }
            Ok(out)
        })
    }

    fn log_event(&mut self, at: UnixMillis, kind: &str, text: &str) -> Result<()> {
        let (kind, text) = (kind.to_string(), text.to_string());
        self.call_again(move |c, path, id, again| {
            // Repeated after a lost COMMIT that happened: already logged.
            if again && super::retry::event_logged(c, path, id, at, &kind, &text)? {
                return Ok(());
            }
            c.execute(
                "INSERT INTO edm.events (campaign_id, at, kind, text) VALUES ($1, $2, $3, $4)",
                &[&id, &at, &kind, &text],
            )
            .at(path)?;
            Ok(())
        })
    }

    fn recent_events(&self, limit_n: usize) -> Result<Vec<(UnixMillis, String, String)>> {
        self.call(move |c, path, id| {
            let rows = c
                .query(
                    "SELECT at, kind, text FROM
                       (SELECT id, at, kind, text FROM edm.events WHERE campaign_id = $1
                        ORDER BY id DESC LIMIT $2) AS last
                     ORDER BY id",
                    &[&id, &limit(limit_n)],
                )
                .at(path)?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    fn find_by_message_id(&self, message_id: &str) -> Result<Option<RecipientId>> {
        let mid = message_id.to_string();
        self.call(move |c, path, id| {
            Ok(c.query_opt(
                "SELECT id FROM edm.recipients WHERE campaign_id = $1 AND message_id = $2
                 ORDER BY id LIMIT 1",
                &[&id, &mid],
            )
            .at(path)?
            .map(|r| RecipientId(r.get(0))))
        })
    }

    fn find_by_provider_message_id(&self, provider_id: &str) -> Result<Option<RecipientId>> {
        let pid = provider_id.to_string();
        self.call(move |c, path, id| {
            Ok(c.query_opt(
                "SELECT id FROM edm.recipients
                 WHERE campaign_id = $1 AND provider_message_id = $2
                 ORDER BY id LIMIT 1",
                &[&id, &pid],
            )
            .at(path)?
            .map(|r| RecipientId(r.get(0))))
        })
    }

    fn recipient_state(&self, rid: RecipientId) -> Result<Option<(String, Status)>> {
        self.call(move |c, path, id| {
            let Some(r) = c
                .query_opt(
                    "SELECT email, status FROM edm.recipients WHERE campaign_id = $1 AND id = $2",
                    &[&id, &rid.0],
                )
                .at(path)?
            else {
                return Ok(None);
            };
            let st: String = r.get(1);
            Ok(Some((r.get(0), status(path, &st)?)))
        })
    }

    /// As the SQLite store's (`late.rs`, the same [`late_transition`]), in
    /// one transaction. The row is locked (`FOR UPDATE`) and the key taken
    /// with `ON CONFLICT DO NOTHING` before anything changes, so two
    /// processes reading the same bounce at once apply it once: the second
    /// waits for the first's commit, then finds the key.
    fn apply_late(&mut self, late: &LateOutcome) -> Result<LateApplied> {
        let late = late.clone();
        self.call(move |c, path, id| {
            let mut tx = c.transaction().at(path)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT status, late, soft_bounces FROM edm.recipients
                     WHERE campaign_id = $1 AND id = $2 FOR UPDATE",
                    &[&id, &late.id.0],
                )
                .at(path)?
            else {
                return Ok(LateApplied::NoSuchRecipient);
            };
            let taken = tx
                .execute(
                    "INSERT INTO edm.late_applied (campaign_id, key, recipient, at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (campaign_id, key) DO NOTHING",
                    &[&id, &late.key, &late.id.0, &late.at],
                )
                .at(path)?;
            if taken == 0 {
                return Ok(LateApplied::AlreadyApplied);
            }
            let st: String = row.get(0);
            let current: Option<String> = row.get(1);
            let soft = u32::try_from(row.get::<_, i32>(2)).unwrap_or(0);
            let st = status(path, &st)?;
            let applied = if st != Status::Sent {
                LateApplied::NotSent(st)
            } else {
                let (new_late, new_soft, applied) =
                    late_transition(current.as_deref(), soft, &late);
                if applied != LateApplied::Unchanged {
                    tx.execute(
                        "UPDATE edm.recipients
                         SET late = coalesce($3, late), soft_bounces = $4, late_at = $5,
                             late_status = $6, late_diagnostic = $7
                         WHERE campaign_id = $1 AND id = $2",
                        &[
                            &id,
                            &late.id.0,
                            &new_late,
                            &i32::try_from(new_soft).unwrap_or(i32::MAX),
                            &late.at,
                            &late.status,
                            &late.diagnostic,
                        ],
                    )
                    .at(path)?;
                }
                applied
            };
            tx.commit().at(path)?;
            Ok(applied)
        })
    }

    fn late_counts(&self) -> Result<LateCounts> {
        self.call(|c, path, id| {
            let r = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE late = 'bounced'),
                            count(*) FILTER (WHERE late = 'complained'),
                            count(*) FILTER (WHERE late IS NULL AND soft_bounces > 0)
                     FROM edm.recipients
                     WHERE campaign_id = $1 AND (late IS NOT NULL OR soft_bounces > 0)",
                    &[&id],
                )
                .at(path)?;
            Ok(LateCounts {
                bounced: from_i64(r.get(0)),
                complained: from_i64(r.get(1)),
                soft_bounced: from_i64(r.get(2)),
            })
        })
    }

    fn record_unmatched(&mut self, u: &Unmatched) -> Result<bool> {
        let u = u.clone();
        self.call(move |c, path, id| {
            let n = c
                .execute(
                    "INSERT INTO edm.late_unmatched (campaign_id, key, at, summary)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (campaign_id, key) DO NOTHING",
                    &[&id, &u.key, &u.at, &u.summary],
                )
                .at(path)?;
            Ok(n > 0)
        })
    }

    fn unmatched(&self) -> Result<Vec<Unmatched>> {
        self.call(|c, path, id| {
            Ok(c.query(
                "SELECT key, at, summary FROM edm.late_unmatched WHERE campaign_id = $1
                 ORDER BY at, key",
                &[&id],
            )
            .at(path)?
            .iter()
            .map(|r| Unmatched {
                key: r.get(0),
                at: r.get(1),
                summary: r.get(2),
            })
            .collect())
        })
    }

    /// SQLite's `late = 'bounced' OR category = 'recipient_unknown'` is NULL
    /// (read as false) when neither column is set; `coalesce` says so here.
    fn reputation_window(&self, limit_n: usize) -> Result<Vec<WindowEntry>> {
        self.call(move |c, path, id| {
            // Each status through its own index, the latest first, then
            // merged: in one query PostgreSQL read and sorted every sent and
            // failed row (53 ms at 50,000 sent, growing with the campaign,
            // at the start of every run); `sent` walks `recipients_sent_at`
            // backwards, `failed` (few, as a rule) `recipients_failing`.
            let latest = |status: &str| {
                format!(
                    "(SELECT domain,
                             coalesce(late = 'bounced', false)
                                 OR coalesce(category = 'recipient_unknown', false) AS hard,
                             coalesce(late = 'complained', false) AS complaint,
                             last_attempt_at AS at, id
                      FROM edm.recipients
                      WHERE campaign_id = $1 AND status = '{status}'
                        AND last_attempt_at IS NOT NULL
                      ORDER BY last_attempt_at DESC, id DESC LIMIT $2)"
                )
            };
            Ok(c.query(
                &format!(
                    "SELECT domain, hard, complaint FROM ({} UNION ALL {}) w
                     ORDER BY at DESC, id DESC LIMIT $2",
                    latest("sent"),
                    latest("failed")
                ),
                &[&id, &limit(limit_n)],
            )
            .at(path)?
            .iter()
            .map(|r| WindowEntry {
                domain: r.get(0),
                hard_bounce: r.get(1),
                complaint: r.get(2),
            })
            .collect())
        })
    }

    fn lock_ingest(&mut self) -> Result<()> {
        self.ingest_lock(true)
    }

    fn unlock_ingest(&mut self) -> Result<()> {
        self.ingest_lock(false)
    }

    fn lease(&self) -> Result<Option<Box<dyn crate::WorkerLease>>> {
        self.open_lease()
    }

    fn workers(&self) -> Result<Vec<crate::WorkerRow>> {
        self.list_workers()
    }

    fn claim_capped(
        &mut self,
        limit_n: usize,
        max_due: usize,
        now: UnixMillis,
        cap: Option<(u64, UnixMillis)>,
    ) -> Result<Vec<Recipient>> {
        // Only a worker among several needs the lock (see `workers.rs`).
        self.claim_cap = cap.filter(|_| self.joined.is_some());
        let claimed = self.claim_with_budget(limit_n, max_due, now);
        self.claim_cap = None;
        claimed
    }
}

fn export_row(path: &Path, r: &postgres::Row) -> Result<ExportRow> {
    let st: String = r.get(3);
    let cat: Option<String> = r.get(4);
    let stg: Option<String> = r.get(5);
    let fields: String = r.get(2);
    let code: Option<i32> = r.get(6);
    let attempts: i32 = r.get(9);
    Ok(ExportRow {
        line: from_i64(r.get(0)),
        email: r.get(1),
        values: values(path, &fields)?,
        status: status(path, &st)?,
        category: cat.map(|c| category(path, &c)).transpose()?,
        stage: stg.map(|s| stage(path, &s)).transpose()?,
        smtp_code: code.and_then(|c| u16::try_from(c).ok()),
        enhanced_code: r.get(7),
        reply: r.get(8),
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_attempt_at: r.get(10),
        in_doubt: r.get(11),
        message_id: r.get(12),
        duplicate_of: r.get::<_, Option<i64>>(13).map(from_i64),
        relay: r.get(14),
        provider_message_id: r.get(15),
        late: crate::late::late_state(
            r.get(16),
            r.get(17),
            r.get(18),
            r.get(19),
            u32::try_from(r.get::<_, i32>(20)).unwrap_or(0),
        ),
    })
}

/// The body of `record_and_mark`, inside the caller's transaction. An id
/// the campaign does not have fails the batch ([`Error::UnknownRecipient`]);
/// the transaction is then dropped, so nothing of the batch is kept.
fn record_in(
    tx: &mut postgres::Transaction<'_>,
    path: &Path,
    id: i64,
    outcomes: &[Outcome],
) -> Result<()> {
    // Runs of consecutive `Sent` outcomes (the common case) go in one
    // statement each; the order of outcomes is kept, and a run ends at an
    // id it already holds, so an id's outcomes apply in sequence.
    let mut run: Vec<&Outcome> = Vec::new();
    for o in outcomes {
        let is_sent = matches!(o.kind, OutcomeKind::Sent { .. });
        if !is_sent || run.iter().any(|r| r.id == o.id) {
            record_sent(tx, path, id, &run)?;
            run.clear();
        }
        if is_sent {
            run.push(o);
            continue;
        }
        let rid = o.id.0;
        let changed = match &o.kind {
            // Taken into the run above.
            OutcomeKind::Sent { .. } => continue,
            OutcomeKind::Deferred {
                failure,
                next_attempt_at,
                count_attempt,
                relay,
            } => failed(
                tx,
                path,
                (id, rid, o.at),
                Status::Deferred,
                i32::from(*count_attempt),
                Some(*next_attempt_at),
                failure,
                relay,
            )?,
            OutcomeKind::Failed { failure, relay } => {
                // A failure before SMTP never reached a server: no attempt used.
                let counts = !matches!(failure.stage, Stage::Ingest | Stage::Render);
                failed(
                    tx,
                    path,
                    (id, rid, o.at),
                    Status::Failed,
                    i32::from(counts),
                    None,
                    failure,
                    relay,
                )?
            }
            OutcomeKind::Held { failure } => tx
                .execute(
                    "UPDATE edm.recipients
                     SET status = 'pending', next_attempt_at = NULL,
                         first_attempt_at = CASE WHEN prev_attempt_at IS NULL
                                                 THEN NULL ELSE first_attempt_at END,
                         prev_attempt_at = NULL,
                         category = $3, stage = $4, smtp_code = $5, enhanced_code = $6,
                         reply = $7, last_attempt_at = $8, updated_at = $8,
                         claimed_by = NULL, lease_until = NULL
                     WHERE campaign_id = $1 AND id = $2",
                    &[
                        &id,
                        &rid,
                        &failure.category.as_str(),
                        &failure.stage.as_str(),
                        &failure.smtp_code.map(i32::from),
                        &failure.enhanced_code,
                        &failure.reply,
                        &o.at,
                    ],
                )
                .at(path)?,
            OutcomeKind::InDoubt {
                failure,
                next_attempt_at,
                relay,
            } => {
                let st = if next_attempt_at.is_some() {
                    Status::Deferred
                } else {
                    Status::InDoubt
                };
                tx.execute(
                    "UPDATE edm.recipients
                     SET status = $3, in_doubt = true, attempts = attempts + 1,
                         next_attempt_at = $4, category = $5, stage = $6, smtp_code = $7,
                         enhanced_code = $8, reply = $9, last_attempt_at = $10,
                         updated_at = $10, claimed_by = NULL, lease_until = NULL,
                         relay = coalesce($11, relay)
                     WHERE campaign_id = $1 AND id = $2",
                    &[
                        &id,
                        &rid,
                        &st.as_str(),
                        next_attempt_at,
                        &failure.category.as_str(),
                        &failure.stage.as_str(),
                        &failure.smtp_code.map(i32::from),
                        &failure.enhanced_code,
                        &failure.reply,
                        &o.at,
                        &non_empty(relay),
                    ],
                )
                .at(path)?
            }
            OutcomeKind::Released => {
                let n = tx
                    .execute(
                        &format!(
                            "UPDATE edm.recipients SET {UNCLAIM}, updated_at = $3
                             WHERE campaign_id = $1 AND id = $2 AND status = 'sending'"
                        ),
                        &[&id, &rid, &o.at],
                    )
                    .at(path)?;
                // Not sending any more: nothing to release, if it exists.
                if n > 0 {
                    n
                } else {
                    tx.query_opt(
                        "SELECT 1 FROM edm.recipients WHERE campaign_id = $1 AND id = $2",
                        &[&id, &rid],
                    )
                    .at(path)?
                    .map_or(0, |_| 1)
                }
            }
        };
        if changed == 0 {
            return Err(Error::UnknownRecipient {
                path: path.to_path_buf(),
                id: o.id,
            });
        }
    }
    record_sent(tx, path, id, &run)?;
    // The outcomes clear their marks: one statement for the batch, not one
    // round trip per outcome.
    let ids: Vec<i64> = outcomes.iter().map(|o| o.id.0).collect();
    if !ids.is_empty() {
        tx.execute(
            "DELETE FROM edm.dot_marks WHERE campaign_id = $1 AND id = ANY($2)",
            &[&id, &ids],
        )
        .at(path)?;
    }
    Ok(())
}

/// A run of `Sent` outcomes with distinct ids, in one `UPDATE ... FROM
/// unnest(...)`; an id the campaign does not have fails the batch.
fn record_sent(
    tx: &mut postgres::Transaction<'_>,
    path: &Path,
    id: i64,
    run: &[&Outcome],
) -> Result<()> {
    if run.is_empty() {
        return Ok(());
    }
    let n = run.len();
    let (mut ids, mut codes, mut enhanced, mut texts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut mids, mut ats, mut relays, mut pids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for o in run {
        if let OutcomeKind::Sent {
            reply,
            message_id,
            relay,
        } = &o.kind
        {
            ids.push(o.id.0);
            codes.push(i32::from(reply.code));
            enhanced.push(reply.enhanced.clone());
            texts.push(reply.text.clone());
            mids.push(message_id.clone());
            ats.push(o.at);
            relays.push((!relay.is_empty()).then(|| relay.clone()));
            pids.push(reply.provider_message_id.clone());
        }
    }
    let done = tx
        .query(
            "UPDATE edm.recipients r
             SET status = 'sent', attempts = r.attempts + 1, next_attempt_at = NULL,
                 category = NULL, stage = NULL, smtp_code = u.code, enhanced_code = u.enhanced,
                 reply = u.text, message_id = u.mid, last_attempt_at = u.at, updated_at = u.at,
                 relay = u.relay, provider_message_id = u.pid,
                 claimed_by = NULL, lease_until = NULL
             FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[], $6::text[],
                         $7::bigint[], $8::text[], $9::text[])
                  AS u(id, code, enhanced, text, mid, at, relay, pid)
             WHERE r.campaign_id = $1 AND r.id = u.id
             RETURNING r.id",
            &[
                &id, &ids, &codes, &enhanced, &texts, &mids, &ats, &relays, &pids,
            ],
        )
        .at(path)?;
    if done.len() < ids.len() {
        let found: std::collections::HashSet<i64> = done.iter().map(|r| r.get(0)).collect();
        let missing = ids
            .iter()
            .find(|i| !found.contains(i))
            .copied()
            .unwrap_or(ids[0]);
        return Err(Error::UnknownRecipient {
            path: path.to_path_buf(),
            id: RecipientId(missing),
        });
    }
    Ok(())
}

/// A relay name as the `relay` column takes it: empty is none, and
/// `coalesce($n, relay)` then keeps the relay recorded before.
fn non_empty(relay: &str) -> Option<&str> {
    (!relay.is_empty()).then_some(relay)
}

/// A deferred or failed outcome: the failure's columns, the attempt counted
/// or not, the relay that refused it (none given: the previous one kept).
#[allow(clippy::too_many_arguments)]
fn failed(
    tx: &mut postgres::Transaction<'_>,
    path: &Path,
    (id, rid, at): (i64, i64, UnixMillis),
    st: Status,
    counts: i32,
    next_attempt_at: Option<UnixMillis>,
    failure: &edm_model::Failure,
    relay: &str,
) -> Result<u64> {
    tx.execute(
        "UPDATE edm.recipients
         SET status = $3, attempts = attempts + $4, next_attempt_at = $5,
             category = $6, stage = $7, smtp_code = $8, enhanced_code = $9,
             reply = $10, last_attempt_at = $11, updated_at = $11,
             claimed_by = NULL, lease_until = NULL, relay = coalesce($12, relay)
         WHERE campaign_id = $1 AND id = $2",
        &[
            &id,
            &rid,
            &st.as_str(),
            &counts,
            &next_attempt_at,
            &failure.category.as_str(),
            &failure.stage.as_str(),
            &failure.smtp_code.map(i32::from),
            &failure.enhanced_code,
            &failure.reply,
            &at,
            &non_empty(relay),
        ],
    )
    .at(path)
}
