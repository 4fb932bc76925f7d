//! The readers' side: summaries, failure views, export. All of these work on a
//! read-only store while a writer runs, and none scans the recipients table
//! except `export`, `top_replies` (failing rows only) and `rows_by_email`.

use std::collections::HashMap;

use edm_model::{DomainCounts, FailureRow, RecipientId, Status, UnixMillis};
use rusqlite::{params_from_iter, types::Value};

use crate::error::{AtPath, ExportError, Result};
use crate::schema::{ACTIVE, FAILING};
use crate::store::{Store, limit_param};
use crate::types::{ExportFilter, ExportRow, ReplyCount, Summary};
use crate::write::{from_i64, placeholders};

impl Store {
    /// Counts by status and category, from the tally the writes keep (no scan).
    pub fn summary(&self) -> Result<Summary> {
        let path = &self.path;
        // One read transaction: the tally and the due times are one snapshot.
        let tx = self.conn.unchecked_transaction().at(path)?;
        let mut summary = Summary {
            counts: Status::ALL.iter().map(|s| (*s, 0)).collect(),
            ..Summary::default()
        };
        {
            let mut st = tx
                .prepare_cached("SELECT status, category, in_doubt, n FROM tally WHERE n != 0")
                .at(path)?;
            let mut rows = st.query([]).at(path)?;
            while let Some(r) = rows.next().at(path)? {
                let status: String = r.get(0).at(path)?;
                let category: String = r.get(1).at(path)?;
                let in_doubt: bool = r.get(2).at(path)?;
                let n = u64::try_from(r.get::<_, i64>(3).at(path)?)
                    .map_err(|_| self.corrupt("tally.n", "negative"))?;
                let status = self.status("recipients.status", &status)?;
                *summary.counts.entry(status).or_default() += n;
                summary.total += n;
                if in_doubt {
                    summary.in_doubt += n;
                }
                if !category.is_empty()
                    && matches!(status, Status::Failed | Status::Deferred | Status::Invalid)
                {
                    let category = self.category("recipients.category", &category)?;
                    *summary.by_category.entry(category).or_default() += n;
                }
            }
            // min/max over the claim index: two seeks.
            let due = |agg: &str| {
                tx.prepare_cached(&format!(
                    "SELECT {agg}(next_attempt_at) FROM recipients
                     WHERE {ACTIVE} AND status = 'deferred'"
                ))
                .and_then(|mut st| st.query_row([], |r| r.get::<_, Option<i64>>(0)))
                .at(path)
            };
            summary.next_due = due("min")?;
            summary.last_deferred_due = due("max")?;
        }
        Ok(summary)
    }

    /// Counts by relay (the `relay` column, written when a relay accepts a
    /// message): by status, and those sent at or after `since` (a pool
    /// member's daily quota). One scan of the rows that name a relay; read
    /// by `edm status` and once at the start of a run.
    pub fn relay_counts(
        &self,
        since: UnixMillis,
    ) -> Result<std::collections::BTreeMap<String, crate::RelayCounts>> {
        let path = &self.path;
        let mut out: std::collections::BTreeMap<String, crate::RelayCounts> = Default::default();
        // A state an older edm wrote, read as it is (`edm status` does not
        // migrate): no `relay` column before version 4, so no relay to count.
        if crate::schema::version(&self.conn, path)? < 4 {
            return Ok(out);
        }
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT relay, status, count(*),
                        sum(status = 'sent' AND last_attempt_at >= ?1)
                 FROM recipients WHERE relay IS NOT NULL AND relay != ''
                 GROUP BY relay, status",
            )
            .at(path)?;
        let mut rows = st.query([since]).at(path)?;
        while let Some(r) = rows.next().at(path)? {
            let relay: String = r.get(0).at(path)?;
            let status: String = r.get(1).at(path)?;
            let status = self.status("recipients.status", &status)?;
            let n = u64::try_from(r.get::<_, i64>(2).at(path)?)
                .map_err(|_| self.corrupt("count", "negative"))?;
            let recent = u64::try_from(r.get::<_, Option<i64>>(3).at(path)?.unwrap_or(0))
                .map_err(|_| self.corrupt("sum", "negative"))?;
            let c = out.entry(relay).or_default();
            *c.by_status.entry(status).or_default() += n;
            c.sent_since += recent;
        }
        Ok(out)
    }

    /// Recipients sent at or after `since` (for a daily quota).
    pub fn sent_since(&self, since: UnixMillis) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM recipients WHERE status = 'sent' AND last_attempt_at >= ?1",
            )
            .and_then(|mut st| st.query_row([since], |r| r.get(0)))
            .at(&self.path)?;
        Ok(n as u64)
    }

    /// Streams the matching rows in line order to `f`, one at a time (nothing
    /// is collected). Stops at the first error of `f`, returned as
    /// [`ExportError::Sink`].
    pub fn export<E>(
        &self,
        filter: &ExportFilter,
        mut f: impl FnMut(&ExportRow) -> Result<(), E>,
    ) -> Result<(), ExportError<E>> {
        let path = &self.path;
        // A file of an older edm, opened read-only, has no late columns yet.
        let late = if crate::schema::version(&self.conn, path)? >= 5 {
            "late, late_at, late_status, late_diagnostic, soft_bounces"
        } else {
            "NULL, NULL, NULL, NULL, 0"
        };
        let mut sql = format!(
            "SELECT line, email, fields, status, category, stage, smtp_code, enhanced_code,
                    reply, attempts, last_attempt_at, in_doubt, message_id, duplicate_of,
                    relay, provider_message_id, {late}
             FROM recipients WHERE 1",
        );
        let mut args: Vec<Value> = Vec::new();
        if !filter.statuses.is_empty() {
            sql.push_str(&format!(
                " AND status IN ({})",
                placeholders(args.len() + 1, filter.statuses.len())
            ));
            args.extend(filter.statuses.iter().map(|s| Value::from(s.to_string())));
        }
        if !filter.categories.is_empty() {
            sql.push_str(&format!(
                " AND category IN ({})",
                placeholders(args.len() + 1, filter.categories.len())
            ));
            args.extend(filter.categories.iter().map(|c| Value::from(c.to_string())));
        }
        if filter.in_doubt_only {
            sql.push_str(" AND in_doubt = 1");
        }
        sql.push_str(" ORDER BY line, id");
        let mut st = self.conn.prepare(&sql).at(path)?;
        let mut rows = st.query(params_from_iter(args)).at(path)?;
        while let Some(r) = rows.next().at(path)? {
            let status: String = r.get(3).at(path)?;
            let category: Option<String> = r.get(4).at(path)?;
            let stage: Option<String> = r.get(5).at(path)?;
            let fields: String = r.get(2).at(path)?;
            let row = ExportRow {
                line: from_i64(r.get(0).at(path)?),
                email: r.get(1).at(path)?,
                values: self.values(&fields)?,
                status: self.status("recipients.status", &status)?,
                category: category
                    .map(|c| self.category("recipients.category", &c))
                    .transpose()?,
                stage: stage
                    .map(|s| self.stage("recipients.stage", &s))
                    .transpose()?,
                smtp_code: r.get(6).at(path)?,
                enhanced_code: r.get(7).at(path)?,
                reply: r.get(8).at(path)?,
                attempts: r.get(9).at(path)?,
                last_attempt_at: r.get(10).at(path)?,
                in_doubt: r.get(11).at(path)?,
                message_id: r.get(12).at(path)?,
                duplicate_of: r.get::<_, Option<i64>>(13).at(path)?.map(from_i64),
                relay: r.get(14).at(path)?,
                provider_message_id: r.get(15).at(path)?,
                late: crate::late::late_state(
                    r.get(16).at(path)?,
                    r.get(17).at(path)?,
                    r.get(18).at(path)?,
                    r.get(19).at(path)?,
                    r.get(20).at(path)?,
                ),
            };
            f(&row).map_err(ExportError::Sink)?;
        }
        Ok(())
    }

    /// The latest failed and deferred recipients, newest first.
    pub fn recent_failures(&self, limit: usize) -> Result<Vec<FailureRow>> {
        let path = &self.path;
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT email, status, category, smtp_code, enhanced_code, reply, attempts,
                        updated_at
                 FROM recipients WHERE {FAILING} ORDER BY updated_at DESC, id DESC LIMIT ?1"
            ))
            .at(path)?;
        let mut rows = st.query([limit_param(limit)]).at(path)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().at(path)? {
            let status: String = r.get(1).at(path)?;
            let category: Option<String> = r.get(2).at(path)?;
            let category = category.ok_or_else(|| self.corrupt("recipients.category", "NULL"))?;
            let code: Option<u16> = r.get(3).at(path)?;
            let enhanced: Option<String> = r.get(4).at(path)?;
            let text: Option<String> = r.get(5).at(path)?;
            out.push(FailureRow {
                email: r.get(0).at(path)?,
                status: self.status("recipients.status", &status)?,
                category: self.category("recipients.category", &category)?,
                reply: reply_line(code, enhanced.as_deref(), text.as_deref().unwrap_or("")),
                attempts: r.get(6).at(path)?,
                at: r.get(7).at(path)?,
            });
        }
        Ok(out)
    }

    /// The most frequent replies among failed and deferred recipients:
    /// `(code, enhanced code, text, count)`, biggest first.
    pub fn top_replies(&self, limit: usize) -> Result<Vec<ReplyCount>> {
        let path = &self.path;
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT smtp_code, enhanced_code, coalesce(reply, ''), count(*) AS n
                 FROM recipients WHERE {FAILING}
                 GROUP BY 1, 2, 3 ORDER BY n DESC, 1, 2, 3 LIMIT ?1"
            ))
            .at(path)?;
        let rows = st
            .query_map([limit_param(limit)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
            })
            .at(path)?;
        rows.collect::<rusqlite::Result<_>>().at(path)
    }

    /// The busiest domains by number of recipients, with their counters, from
    /// the domain tally the writes keep. `deferred` counts recipients deferred now.
    ///
    /// The run's writer keeps its changes back for up to half a second
    /// ([`crate::tally::Behind`]): its own reads add them, other processes
    /// read the table that much behind, and after a writer died with changes
    /// kept back (flag set, run lock free) they are counted from the rows
    /// until the next writable open counts the table again.
    pub fn domain_counts(&self, limit: usize) -> Result<Vec<(String, DomainCounts)>> {
        let path = &self.path;
        let from_rows =
            !self.behind.enabled && self.domains_behind()? && !self.lock_held_elsewhere()?;
        let source = if from_rows {
            format!(
                "(SELECT domain, {} AS status, count(*) AS n FROM recipients GROUP BY 1, 2)",
                crate::tally::DOMAIN_STATUS_SQL
            )
        } else {
            "domain_tally".to_string()
        };
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT domain,
                        sum(CASE WHEN status = 'sent' THEN n ELSE 0 END),
                        sum(CASE WHEN status = 'failed' THEN n ELSE 0 END),
                        sum(CASE WHEN status = 'deferred' THEN n ELSE 0 END),
                        sum(n) AS total
                 FROM {source} GROUP BY domain
                 ORDER BY total DESC, domain LIMIT ?1"
            ))
            .at(path)?;
        // What is kept back moves rows between statuses of one domain (a
        // row's domain never changes): the totals, hence the order and the
        // limit, are the same with it.
        let kept = |domain: &str, status: &str, n: i64| {
            let n = if self.behind.enabled {
                n + self.behind.kept(domain, status)
            } else {
                n
            };
            n.max(0) as u64
        };
        let rows = st
            .query_map([limit_param(limit)], |r| {
                let domain: String = r.get(0)?;
                let counts = DomainCounts {
                    sent: kept(&domain, "sent", r.get(1)?),
                    failed: kept(&domain, "failed", r.get(2)?),
                    deferred: kept(&domain, "deferred", r.get(3)?),
                };
                Ok((domain, counts))
            })
            .at(path)?;
        rows.collect::<rusqlite::Result<_>>().at(path)
    }

    /// Every normalised address with the id and status of its first row, for
    /// reconciling a changed input file. Holds the whole map in memory.
    ///
    /// The key is computed from the stored address, not read from
    /// `email_norm`: a campaign ingested before internationalised domains
    /// were keyed by their A-label form has older keys, and a stale key would
    /// make a known recipient look new (and be sent twice).
    pub fn rows_by_email(&self) -> Result<HashMap<String, (RecipientId, Status)>> {
        let path = &self.path;
        let mut st = self
            .conn
            .prepare("SELECT email, id, status FROM recipients ORDER BY id")
            .at(path)?;
        let mut rows = st.query([]).at(path)?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next().at(path)? {
            let email: String = r.get(0).at(path)?;
            let email = crate::write::normalize(&email);
            let status: String = r.get(2).at(path)?;
            let status = self.status("recipients.status", &status)?;
            let id = RecipientId(r.get(1).at(path)?);
            out.entry(email).or_insert((id, status));
        }
        Ok(out)
    }
}

/// `550 5.1.1 text`, or just the text without a code.
pub(crate) fn reply_line(code: Option<u16>, enhanced: Option<&str>, text: &str) -> String {
    let mut s = String::new();
    if let Some(c) = code {
        s.push_str(&c.to_string());
        s.push(' ');
    }
    if let Some(e) = enhanced {
        s.push_str(e);
        s.push(' ');
    }
    s.push_str(text);
    s.trim_end().to_string()
}
