//! [`MemoryStore`]: the [`CampaignStore`] seam implemented in memory.
//!
//! It proves the seam (the suite in `suite.rs` runs against it and against
//! SQLite) and serves tests that want a store without a file. It keeps every
//! promise of the trait within one process; nothing survives the process, so
//! "after a crash" means "after the run that used this value stopped".
//! Each method validates its whole input before changing anything, which is
//! what a transaction gives the SQLite store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use edm_model::{
    Category, DomainCounts, FailureRow, Recipient, RecipientId, Stage, Status, UnixMillis,
};

use crate::error::{Error, Result};
use crate::late::late_transition;
use crate::types::{
    ExportFilter, ExportRow, InDoubtPolicy, LateApplied, LateCounts, LateOutcome, LateState,
    NewRow, Outcome, OutcomeKind, ReplyCount, Summary, Unmatched, WindowEntry,
};
use crate::write::normalize;
use crate::{CampaignStore, IngestPass};

/// The meta key set once marks were used (the SQLite store's, too).
const MARKS_META: &str = "dot_marks";

/// One recipient, with the columns of the SQLite table that runs read.
#[derive(Clone, Debug)]
struct Row {
    id: i64,
    line: u64,
    email: String,
    values: Vec<String>,
    status: Status,
    attempts: u32,
    next_attempt_at: Option<UnixMillis>,
    first_attempt_at: Option<UnixMillis>,
    last_attempt_at: Option<UnixMillis>,
    prev_attempt_at: Option<UnixMillis>,
    category: Option<Category>,
    stage: Option<Stage>,
    smtp_code: Option<u16>,
    enhanced_code: Option<String>,
    reply: Option<String>,
    message_id: Option<String>,
    relay: Option<String>,
    provider_message_id: Option<String>,
    in_doubt: bool,
    duplicate_of: Option<u64>,
    generation: i64,
    updated_at: UnixMillis,
    /// Bounces and complaints after `sent` (schema V5's late columns).
    late: LateState,
}

/// A campaign store in memory (see the module documentation).
#[derive(Debug)]
pub struct MemoryStore {
    name: PathBuf,
    rows: BTreeMap<i64, Row>,
    meta: BTreeMap<String, String>,
    events: Vec<(UnixMillis, String, String)>,
    marks: BTreeSet<i64>,
    next_id: i64,
    locked: bool,
    /// Keys of the late outcomes applied (`late_applied`).
    late_applied: HashMap<String, i64>,
    /// Messages that matched no recipient (`late_unmatched`).
    unmatched: BTreeMap<String, Unmatched>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store, named `:memory:` in messages.
    pub fn new() -> MemoryStore {
        let mut meta = BTreeMap::new();
        meta.insert("created_at".to_string(), edm_model::now_ms().to_string());
        MemoryStore {
            name: PathBuf::from(":memory:"),
            rows: BTreeMap::new(),
            meta,
            events: Vec::new(),
            marks: BTreeSet::new(),
            next_id: 1,
            locked: false,
            late_applied: HashMap::new(),
            unmatched: BTreeMap::new(),
        }
    }

    fn corrupt(&self, column: &'static str, value: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.name.clone(),
            column,
            value: value.into(),
        }
    }

    fn meta_int(&self, key: &'static str) -> Result<i64> {
        match self.meta.get(key) {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| self.corrupt(key, v.clone())),
        }
    }
}

/// Puts a row claimed but not answered back where its claim found it.
fn unclaim(r: &mut Row, at: UnixMillis) {
    r.status = if r.next_attempt_at.is_none() {
        Status::Pending
    } else {
        Status::Deferred
    };
    if r.prev_attempt_at.is_none() {
        r.first_attempt_at = None;
    }
    r.last_attempt_at = r.prev_attempt_at.take();
    r.updated_at = at;
}

/// Sets the failure columns of a row from a classified failure.
/// The relay of a failed, deferred or in-doubt outcome: written when known,
/// else the row keeps the one it had (the SQLite store's `COALESCE`).
fn set_relay(r: &mut Row, relay: &str) {
    if !relay.is_empty() {
        r.relay = Some(relay.to_string());
    }
}

fn set_failure(r: &mut Row, f: &edm_model::Failure, at: UnixMillis) {
    r.category = Some(f.category);
    r.stage = Some(f.stage);
    r.smtp_code = f.smtp_code;
    r.enhanced_code = f.enhanced_code.clone();
    r.reply = Some(f.reply.clone());
    r.last_attempt_at = Some(at);
    r.updated_at = at;
}

impl CampaignStore for MemoryStore {
    fn location(&self) -> &Path {
        &self.name
    }

    fn lock_for_run(&mut self, _pid: u32) -> Result<()> {
        // One value, one owner: `&mut self` already makes the run exclusive.
        self.locked = true;
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.meta.get(key).cloned())
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.meta.insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn is_ingested(&self) -> Result<bool> {
        Ok(self.meta.get("ingested").map(String::as_str) == Some("1"))
    }

    fn columns(&self) -> Result<Vec<String>> {
        match self.meta.get("columns") {
            None => Ok(Vec::new()),
            Some(json) => {
                serde_json::from_str(json).map_err(|_| self.corrupt("meta.columns", json.clone()))
            }
        }
    }

    fn ingest_pass(&self) -> Result<Option<IngestPass>> {
        if !self.meta.contains_key("ingest.generation") {
            return Ok(None);
        }
        Ok(Some(IngestPass {
            generation: self.meta_int("ingest.generation")?,
            source: self.meta.get("ingest.source").cloned().unwrap_or_default(),
            after_line: self.meta_int("ingest.after")?.max(0) as u64,
            rows: self.meta_int("ingest.rows")?.max(0) as u64,
            complete: self.meta.get("ingest.open").map(String::as_str) != Some("1"),
        }))
    }

    fn begin_ingest(&mut self, source: &str) -> Result<IngestPass> {
        let max_row = self.rows.values().map(|r| r.generation).max();
        let max_meta: Option<i64> = self
            .meta
            .get("ingest.generation")
            .and_then(|v| v.parse().ok());
        let generation = crate::ingest::next_generation(max_row, max_meta);
        for (key, value) in crate::ingest::pass_meta(generation, source) {
            self.meta.insert(key.to_string(), value);
        }
        Ok(IngestPass {
            generation,
            source: source.to_string(),
            after_line: 0,
            rows: 0,
            complete: false,
        })
    }

    fn insert_rows(&mut self, rows: &[NewRow]) -> Result<()> {
        let generation = self.meta_int("ingest.generation")?;
        let stored = self.meta_int("ingest.rows")?;
        let mut after = self.meta_int("ingest.after")?;
        // The unique key on (generation, line), checked for the whole batch
        // before anything changes: a refused batch stores nothing.
        let mut taken: HashSet<u64> = self
            .rows
            .values()
            .filter(|r| r.generation == generation)
            .map(|r| r.line)
            .collect();
        for row in rows {
            if !matches!(
                row.status,
                Status::Pending | Status::Invalid | Status::Skipped | Status::Suppressed
            ) {
                return Err(Error::InvalidNewRow {
                    path: self.name.clone(),
                    line: row.line,
                    status: row.status,
                });
            }
            if !taken.insert(row.line) {
                return Err(Error::AlreadyStored {
                    path: self.name.clone(),
                    line: row.line,
                    generation,
                });
            }
        }
        let now = edm_model::now_ms();
        for row in rows {
            let id = self.next_id;
            self.next_id += 1;
            self.rows.insert(
                id,
                Row {
                    id,
                    line: row.line,
                    email: row.email.clone(),
                    values: row.values.clone(),
                    status: row.status,
                    attempts: 0,
                    next_attempt_at: None,
                    first_attempt_at: None,
                    last_attempt_at: None,
                    prev_attempt_at: None,
                    category: row.category,
                    stage: (row.status == Status::Invalid).then_some(Stage::Ingest),
                    smtp_code: None,
                    enhanced_code: None,
                    reply: row.reason.clone(),
                    message_id: None,
                    relay: None,
                    provider_message_id: None,
                    in_doubt: false,
                    duplicate_of: row.duplicate_of,
                    generation,
                    updated_at: now,
                    late: LateState::default(),
                },
            );
            after = after.max(i64::try_from(row.line).unwrap_or(i64::MAX));
        }
        let stored = stored.saturating_add(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        self.meta
            .insert("ingest.after".to_string(), after.to_string());
        self.meta
            .insert("ingest.rows".to_string(), stored.to_string());
        Ok(())
    }

    fn finish_ingest(&mut self, columns: Option<&[String]>, meta: &[(&str, &str)]) -> Result<()> {
        self.meta.insert("ingest.open".into(), "0".into());
        if let Some(columns) = columns {
            let json = serde_json::to_string(columns).expect("a list of strings always serialises");
            self.meta.insert("columns".into(), json);
            self.meta.insert("ingested".into(), "1".into());
        }
        for (key, value) in meta {
            self.meta.insert(key.to_string(), value.to_string());
        }
        Ok(())
    }

    fn discard_recipients(&mut self) -> Result<u64> {
        let n = self.rows.len() as u64;
        self.rows.clear();
        for key in [
            "ingested",
            "columns",
            "ingest.source",
            "ingest.after",
            "ingest.rows",
            "ingest.open",
        ] {
            self.meta.remove(key);
        }
        Ok(n)
    }

    fn ever_attempted(&self) -> Result<bool> {
        Ok(self.rows.values().any(|r| {
            r.in_doubt
                || r.first_attempt_at.is_some()
                || !matches!(
                    r.status,
                    Status::Pending | Status::Invalid | Status::Skipped | Status::Suppressed
                )
        }))
    }

    fn rows_by_email(&self) -> Result<HashMap<String, (RecipientId, Status)>> {
        let mut out = HashMap::new();
        for r in self.rows.values() {
            out.entry(normalize(&r.email))
                .or_insert((RecipientId(r.id), r.status));
        }
        Ok(out)
    }

    fn skip_unsent(&mut self, ids: &[RecipientId], reason: &str) -> Result<u64> {
        let now = edm_model::now_ms();
        let mut n = 0;
        for id in ids {
            if let Some(r) = self.rows.get_mut(&id.0)
                && matches!(
                    r.status,
                    Status::Pending | Status::Deferred | Status::InDoubt
                )
            {
                r.status = Status::Skipped;
                r.reply = Some(reason.to_string());
                r.category = None;
                r.next_attempt_at = None;
                r.updated_at = now;
                n += 1;
            }
        }
        Ok(n)
    }

    fn take_repair_notice(&mut self) -> Result<u64> {
        // Copies are repaired by the SQLite schema migration; a memory store
        // has none, but says a notice once all the same.
        Ok(self
            .meta
            .remove("repair.unannounced")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    fn recover_in_doubt(&mut self, policy: InDoubtPolicy) -> Result<u64> {
        let now = edm_model::now_ms();
        let marks_used = self.meta.get(MARKS_META).map(String::as_str) == Some("1");
        let mut n = 0;
        for r in self.rows.values_mut() {
            if r.status != Status::Sending {
                continue;
            }
            if marks_used && !self.marks.contains(&r.id) {
                unclaim(r, now);
                continue;
            }
            r.in_doubt = true;
            match policy {
                InDoubtPolicy::Resend => {
                    r.status = Status::Pending;
                    r.next_attempt_at = None;
                }
                InDoubtPolicy::Skip => r.status = Status::InDoubt,
            }
            r.prev_attempt_at = None;
            r.updated_at = now;
            n += 1;
        }
        self.marks.clear();
        Ok(n)
    }

    fn claim_with_budget(
        &mut self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
    ) -> Result<Vec<Recipient>> {
        let mut ids: Vec<i64> = self
            .rows
            .values()
            .filter(|r| r.status == Status::Pending && r.next_attempt_at.is_none())
            .map(|r| r.id)
            .take(limit)
            .collect();
        let left = limit.saturating_sub(ids.len()).min(max_due);
        if left > 0 {
            let mut due: Vec<(UnixMillis, i64)> = self
                .rows
                .values()
                .filter(|r| r.status == Status::Deferred)
                .filter_map(|r| {
                    r.next_attempt_at
                        .filter(|at| *at <= now)
                        .map(|at| (at, r.id))
                })
                .collect();
            due.sort_unstable();
            ids.extend(due.into_iter().take(left).map(|(_, id)| id));
        }
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(r) = self.rows.get_mut(&id) else {
                continue;
            };
            let first = r.first_attempt_at;
            r.status = Status::Sending;
            r.prev_attempt_at = r.last_attempt_at;
            r.first_attempt_at = Some(first.unwrap_or(now));
            r.last_attempt_at = Some(now);
            r.updated_at = now;
            claimed.push(Recipient {
                id: RecipientId(r.id),
                line: r.line,
                email: r.email.clone(),
                values: r.values.clone(),
                attempts: r.attempts,
                first_attempt_at: Some(first.unwrap_or(now)),
            });
        }
        Ok(claimed)
    }

    fn record_and_mark(&mut self, outcomes: &[Outcome], marks: &[RecipientId]) -> Result<()> {
        // An unknown id fails the whole batch before anything changes.
        if let Some(o) = outcomes.iter().find(|o| !self.rows.contains_key(&o.id.0)) {
            return Err(Error::UnknownRecipient {
                path: self.name.clone(),
                id: o.id,
            });
        }
        for o in outcomes {
            let Some(r) = self.rows.get_mut(&o.id.0) else {
                continue;
            };
            match &o.kind {
                OutcomeKind::Sent {
                    reply,
                    message_id,
                    relay,
                } => {
                    r.status = Status::Sent;
                    r.attempts = r.attempts.saturating_add(1);
                    r.next_attempt_at = None;
                    r.category = None;
                    r.stage = None;
                    r.smtp_code = Some(reply.code);
                    r.enhanced_code = reply.enhanced.clone();
                    r.reply = Some(reply.text.clone());
                    r.message_id = Some(message_id.clone());
                    r.relay = (!relay.is_empty()).then(|| relay.clone());
                    r.provider_message_id = reply.provider_message_id.clone();
                    r.last_attempt_at = Some(o.at);
                    r.updated_at = o.at;
                }
                OutcomeKind::Deferred {
                    failure,
                    next_attempt_at,
                    count_attempt,
                    relay,
                } => {
                    set_relay(r, relay);
                    r.status = Status::Deferred;
                    r.attempts = r.attempts.saturating_add(u32::from(*count_attempt));
                    r.next_attempt_at = Some(*next_attempt_at);
                    set_failure(r, failure, o.at);
                }
                OutcomeKind::Failed { failure, relay } => {
                    set_relay(r, relay);
                    // A failure before SMTP never reached a server: no attempt used.
                    let counts = !matches!(failure.stage, Stage::Ingest | Stage::Render);
                    r.status = Status::Failed;
                    r.attempts = r.attempts.saturating_add(u32::from(counts));
                    r.next_attempt_at = None;
                    set_failure(r, failure, o.at);
                }
                OutcomeKind::Held { failure } => {
                    r.status = Status::Pending;
                    r.next_attempt_at = None;
                    if r.prev_attempt_at.is_none() {
                        r.first_attempt_at = None;
                    }
                    r.prev_attempt_at = None;
                    set_failure(r, failure, o.at);
                }
                OutcomeKind::InDoubt {
                    failure,
                    next_attempt_at,
                    relay,
                } => {
                    set_relay(r, relay);
                    r.status = if next_attempt_at.is_some() {
                        Status::Deferred
                    } else {
                        Status::InDoubt
                    };
                    r.in_doubt = true;
                    r.attempts = r.attempts.saturating_add(1);
                    r.next_attempt_at = *next_attempt_at;
                    set_failure(r, failure, o.at);
                }
                // A release never undoes a recorded result.
                OutcomeKind::Released => {
                    if r.status == Status::Sending {
                        unclaim(r, o.at);
                    }
                }
            }
            self.marks.remove(&o.id.0);
        }
        if !marks.is_empty() {
            self.marks.extend(marks.iter().map(|id| id.0));
            self.meta
                .entry(MARKS_META.to_string())
                .or_insert_with(|| "1".to_string());
        }
        Ok(())
    }

    fn reset_for_retry(&mut self, statuses: &[Status], categories: &[Category]) -> Result<u64> {
        // The SQLite store's default set (`Store::reset_for_retry`).
        let statuses: &[Status] = if statuses.is_empty() {
            &[
                Status::Deferred,
                Status::Failed,
                Status::Invalid,
                Status::Skipped,
                Status::Suppressed,
                Status::InDoubt,
            ]
        } else {
            statuses
        };
        let now = edm_model::now_ms();
        let mut n = 0;
        for r in self.rows.values_mut() {
            let category_ok =
                categories.is_empty() || r.category.is_some_and(|c| categories.contains(&c));
            if statuses.contains(&r.status) && category_ok {
                r.status = Status::Pending;
                r.attempts = 0;
                r.next_attempt_at = None;
                r.updated_at = now;
                n += 1;
            }
        }
        Ok(n)
    }

    fn summary(&self) -> Result<Summary> {
        let mut s = Summary {
            counts: Status::ALL.iter().map(|s| (*s, 0)).collect(),
            ..Summary::default()
        };
        for r in self.rows.values() {
            *s.counts.entry(r.status).or_default() += 1;
            s.total += 1;
            s.in_doubt += u64::from(r.in_doubt);
            if let Some(c) = r.category
                && matches!(
                    r.status,
                    Status::Failed | Status::Deferred | Status::Invalid
                )
            {
                *s.by_category.entry(c).or_default() += 1;
            }
            if r.status == Status::Deferred
                && let Some(at) = r.next_attempt_at
            {
                s.next_due = Some(s.next_due.map_or(at, |d| d.min(at)));
                s.last_deferred_due = Some(s.last_deferred_due.map_or(at, |d| d.max(at)));
            }
        }
        Ok(s)
    }

    fn relay_counts(&self, since: UnixMillis) -> Result<BTreeMap<String, crate::RelayCounts>> {
        let mut out: BTreeMap<String, crate::RelayCounts> = BTreeMap::new();
        for r in self.rows.values() {
            let Some(relay) = r.relay.as_ref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let c = out.entry(relay.clone()).or_default();
            *c.by_status.entry(r.status).or_default() += 1;
            if r.status == Status::Sent && r.last_attempt_at.is_some_and(|at| at >= since) {
                c.sent_since += 1;
            }
        }
        Ok(out)
    }

    fn sent_since(&self, since: UnixMillis) -> Result<u64> {
        Ok(self
            .rows
            .values()
            .filter(|r| r.status == Status::Sent && r.last_attempt_at.is_some_and(|at| at >= since))
            .count() as u64)
    }

    fn recent_failures(&self, limit: usize) -> Result<Vec<FailureRow>> {
        let mut rows: Vec<&Row> = self
            .rows
            .values()
            .filter(|r| matches!(r.status, Status::Failed | Status::Deferred))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse((r.updated_at, r.id)));
        rows.into_iter()
            .take(limit)
            .map(|r| {
                let category = r
                    .category
                    .ok_or_else(|| self.corrupt("recipients.category", "NULL"))?;
                Ok(FailureRow {
                    email: r.email.clone(),
                    status: r.status,
                    category,
                    reply: crate::read::reply_line(
                        r.smtp_code,
                        r.enhanced_code.as_deref(),
                        r.reply.as_deref().unwrap_or(""),
                    ),
                    attempts: r.attempts,
                    at: r.updated_at,
                })
            })
            .collect()
    }

    fn top_replies(&self, limit: usize) -> Result<Vec<ReplyCount>> {
        let mut counts: BTreeMap<(Option<u16>, Option<String>, String), u64> = BTreeMap::new();
        for r in self.rows.values() {
            if matches!(r.status, Status::Failed | Status::Deferred) {
                let key = (
                    r.smtp_code,
                    r.enhanced_code.clone(),
                    r.reply.clone().unwrap_or_default(),
                );
                *counts.entry(key).or_default() += 1;
            }
        }
        let mut out: Vec<ReplyCount> = counts
            .into_iter()
            .map(|((c, e, t), n)| (c, e, t, n))
            .collect();
        // Biggest first; ties in key order (the BTreeMap's, kept by a stable sort).
        out.sort_by_key(|r| std::cmp::Reverse(r.3));
        out.truncate(limit);
        Ok(out)
    }

    fn domain_counts(&self, limit: usize) -> Result<Vec<(String, DomainCounts)>> {
        let mut by: BTreeMap<String, (DomainCounts, u64)> = BTreeMap::new();
        for r in self.rows.values() {
            let e = by.entry(edm_model::domain_of(&r.email)).or_default();
            match r.status {
                Status::Sent => e.0.sent += 1,
                Status::Failed => e.0.failed += 1,
                Status::Deferred => e.0.deferred += 1,
                _ => {}
            }
            e.1 += 1;
        }
        let mut out: Vec<(String, DomainCounts, u64)> =
            by.into_iter().map(|(d, (c, n))| (d, c, n)).collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.2));
        Ok(out
            .into_iter()
            .take(limit)
            .map(|(d, c, _)| (d, c))
            .collect())
    }

    fn export_rows(&self, filter: &ExportFilter, f: &mut dyn FnMut(&ExportRow)) -> Result<()> {
        let mut rows: Vec<&Row> = self
            .rows
            .values()
            .filter(|r| filter.statuses.is_empty() || filter.statuses.contains(&r.status))
            .filter(|r| {
                filter.categories.is_empty()
                    || r.category.is_some_and(|c| filter.categories.contains(&c))
            })
            .filter(|r| !filter.in_doubt_only || r.in_doubt)
            .collect();
        rows.sort_by_key(|r| (r.line, r.id));
        for r in rows {
            f(&ExportRow {
                line: r.line,
                email: r.email.clone(),
                values: r.values.clone(),
                status: r.status,
                category: r.category,
                stage: r.stage,
                smtp_code: r.smtp_code,
                enhanced_code: r.enhanced_code.clone(),
                reply: r.reply.clone(),
                attempts: r.attempts,
                last_attempt_at: r.last_attempt_at,
                in_doubt: r.in_doubt,
                message_id: r.message_id.clone(),
                duplicate_of: r.duplicate_of,
                relay: r.relay.clone(),
                provider_message_id: r.provider_message_id.clone(),
                late: (r.late.outcome.is_some() || r.late.soft_bounces > 0).then(|| r.late.clone()),
            });
        }
        Ok(())
    }

    fn log_event(&mut self, at: UnixMillis, kind: &str, text: &str) -> Result<()> {
        self.events.push((at, kind.to_string(), text.to_string()));
        Ok(())
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<(UnixMillis, String, String)>> {
        let skip = self.events.len().saturating_sub(limit);
        Ok(self.events[skip..].to_vec())
    }

    fn find_by_message_id(&self, message_id: &str) -> Result<Option<RecipientId>> {
        Ok(self
            .rows
            .values()
            .find(|r| r.message_id.as_deref() == Some(message_id))
            .map(|r| RecipientId(r.id)))
    }

    fn find_by_provider_message_id(&self, id: &str) -> Result<Option<RecipientId>> {
        Ok(self
            .rows
            .values()
            .find(|r| r.provider_message_id.as_deref() == Some(id))
            .map(|r| RecipientId(r.id)))
    }

    fn recipient_state(&self, id: RecipientId) -> Result<Option<(String, Status)>> {
        Ok(self.rows.get(&id.0).map(|r| (r.email.clone(), r.status)))
    }

    fn apply_late(&mut self, late: &LateOutcome) -> Result<LateApplied> {
        if self.late_applied.contains_key(&late.key) {
            return Ok(LateApplied::AlreadyApplied);
        }
        let Some(r) = self.rows.get_mut(&late.id.0) else {
            return Ok(LateApplied::NoSuchRecipient);
        };
        let applied = if r.status != Status::Sent {
            LateApplied::NotSent(r.status)
        } else {
            let (new_late, soft, applied) =
                late_transition(r.late.outcome.as_deref(), r.late.soft_bounces, late);
            if applied != LateApplied::Unchanged {
                if let Some(l) = new_late {
                    r.late.outcome = Some(l.to_string());
                }
                r.late.soft_bounces = soft;
                r.late.at = Some(late.at);
                r.late.status = late.status.clone();
                r.late.diagnostic = late.diagnostic.clone();
            }
            applied
        };
        self.late_applied.insert(late.key.clone(), late.id.0);
        Ok(applied)
    }

    fn late_counts(&self) -> Result<LateCounts> {
        let mut c = LateCounts::default();
        for r in self.rows.values() {
            match r.late.outcome.as_deref() {
                Some("bounced") => c.bounced += 1,
                Some("complained") => c.complained += 1,
                _ if r.late.soft_bounces > 0 => c.soft_bounced += 1,
                _ => {}
            }
        }
        Ok(c)
    }

    fn record_unmatched(&mut self, unmatched: &Unmatched) -> Result<bool> {
        if self.unmatched.contains_key(&unmatched.key) {
            return Ok(false);
        }
        self.unmatched
            .insert(unmatched.key.clone(), unmatched.clone());
        Ok(true)
    }

    fn unmatched(&self) -> Result<Vec<Unmatched>> {
        let mut v: Vec<Unmatched> = self.unmatched.values().cloned().collect();
        v.sort_by(|a, b| (a.at, &a.key).cmp(&(b.at, &b.key)));
        Ok(v)
    }

    fn reputation_window(&self, limit: usize) -> Result<Vec<WindowEntry>> {
        let mut rows: Vec<&Row> = self
            .rows
            .values()
            .filter(|r| matches!(r.status, Status::Sent | Status::Failed))
            .filter(|r| r.last_attempt_at.is_some())
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse((r.last_attempt_at, r.id)));
        Ok(rows
            .into_iter()
            .take(limit)
            .map(|r| WindowEntry {
                domain: edm_model::domain_of(&r.email),
                hard_bounce: r.late.outcome.as_deref() == Some("bounced")
                    || r.category == Some(Category::RecipientUnknown),
                complaint: r.late.outcome.as_deref() == Some("complained"),
            })
            .collect())
    }
}
