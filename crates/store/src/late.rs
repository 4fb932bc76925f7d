//! Late outcomes in SQLite (schema V5): bounces and complaints applied to
//! recipients already `sent`, the unmatched list, the reputation window.

use edm_model::{RecipientId, Status};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::{AtPath, Result};
use crate::store::{Store, limit_param};
use crate::types::{
    LateApplied, LateCounts, LateKind, LateOutcome, LateState, Unmatched, WindowEntry,
};

/// What a late outcome makes of a row, given what it already is: the pure
/// rule both stores follow. `current` is the row's `late` column and its soft
/// count. Returns the new `late`, the new soft count and what happened.
pub(crate) fn late_transition(
    current: Option<&str>,
    soft: u32,
    late: &LateOutcome,
) -> (Option<&'static str>, u32, LateApplied) {
    let rank = |l: Option<&str>| match l {
        Some("complained") => 2,
        Some("bounced") => 1,
        _ => 0,
    };
    match late.kind {
        LateKind::Complaint if rank(current) < 2 => {
            (Some("complained"), soft, LateApplied::Complained)
        }
        LateKind::HardBounce if rank(current) < 1 => (Some("bounced"), soft, LateApplied::Bounced),
        LateKind::SoftBounce if rank(current) < 1 => {
            let n = soft.saturating_add(1);
            if n >= late.soft_bounce_limit.max(1) {
                (Some("bounced"), n, LateApplied::Bounced)
            } else {
                (None, n, LateApplied::SoftBounce(n))
            }
        }
        _ => (None, soft, LateApplied::Unchanged),
    }
}

impl Store {
    /// See [`CampaignStore::find_by_message_id`](crate::CampaignStore::find_by_message_id).
    pub fn find_by_message_id(&self, message_id: &str) -> Result<Option<RecipientId>> {
        self.conn
            .query_row(
                // Those in `message_keys` (by the Message-ID's first 16
                // characters, schema version 9) and those a run sent since
                // (version 8), each still holding that Message-ID.
                "SELECT min(id) FROM (
                     SELECT r.id FROM message_keys AS m CROSS JOIN recipients AS r ON r.id = m.id
                     WHERE m.k = substr(?1, 1, 16) AND r.message_id = ?1
                     UNION ALL
                     SELECT r.id FROM mid_pending AS p CROSS JOIN recipients AS r ON r.id = p.id
                     WHERE r.message_id = ?1)",
                [message_id],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|id| id.map(RecipientId))
            .at(&self.path)
    }

    /// See [`CampaignStore::find_by_provider_message_id`](crate::CampaignStore::find_by_provider_message_id).
    pub fn find_by_provider_message_id(&self, id: &str) -> Result<Option<RecipientId>> {
        self.conn
            .query_row(
                "SELECT id FROM recipients WHERE provider_message_id = ?1 ORDER BY id LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map(|id| id.map(RecipientId))
            .at(&self.path)
    }

    /// See [`CampaignStore::recipient_state`](crate::CampaignStore::recipient_state).
    pub fn recipient_state(&self, id: RecipientId) -> Result<Option<(String, Status)>> {
        let raw: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT email, status FROM recipients WHERE id = ?1",
                [id.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .at(&self.path)?;
        match raw {
            None => Ok(None),
            Some((email, status)) => Ok(Some((email, self.status("recipients.status", &status)?))),
        }
    }

    /// See [`CampaignStore::apply_late`](crate::CampaignStore::apply_late).
    pub fn apply_late(&mut self, late: &LateOutcome) -> Result<LateApplied> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&path)?;
        let seen: Option<i64> = tx
            .query_row(
                "SELECT recipient FROM late_applied WHERE key = ?1",
                [&late.key],
                |r| r.get(0),
            )
            .optional()
            .at(&path)?;
        if seen.is_some() {
            return Ok(LateApplied::AlreadyApplied);
        }
        let row: Option<(String, Option<String>, u32)> = tx
            .query_row(
                "SELECT status, late, soft_bounces FROM recipients WHERE id = ?1",
                [late.id.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .at(&path)?;
        let Some((status, current, soft)) = row else {
            return Ok(LateApplied::NoSuchRecipient);
        };
        let Some(status) = Status::parse(&status) else {
            return Err(crate::Error::Corrupt {
                path,
                column: "recipients.status",
                value: status,
            });
        };
        let applied = if status != Status::Sent {
            LateApplied::NotSent(status)
        } else {
            let (new_late, new_soft, applied) = late_transition(current.as_deref(), soft, late);
            if applied != LateApplied::Unchanged {
                tx.execute(
                    "UPDATE recipients SET late = coalesce(?2, late), soft_bounces = ?3,
                         late_at = ?4, late_status = ?5, late_diagnostic = ?6
                     WHERE id = ?1",
                    params![
                        late.id.0,
                        new_late,
                        new_soft,
                        late.at,
                        late.status,
                        late.diagnostic
                    ],
                )
                .at(&path)?;
            }
            applied
        };
        tx.execute(
            "INSERT INTO late_applied (key, recipient, at) VALUES (?1, ?2, ?3)",
            params![late.key, late.id.0, late.at],
        )
        .at(&path)?;
        tx.commit().at(&path)?;
        Ok(applied)
    }

    /// See [`CampaignStore::late_counts`](crate::CampaignStore::late_counts).
    pub fn late_counts(&self) -> Result<LateCounts> {
        // A file of an older edm, opened read-only, has no late outcomes.
        if crate::schema::version(&self.conn, &self.path)? < 5 {
            return Ok(LateCounts::default());
        }
        self.conn
            .query_row(
                "SELECT coalesce(sum(late = 'bounced'), 0), coalesce(sum(late = 'complained'), 0),
                        coalesce(sum(late IS NULL AND soft_bounces > 0), 0)
                 FROM recipients WHERE late IS NOT NULL OR soft_bounces > 0",
                [],
                |r| {
                    Ok(LateCounts {
                        bounced: r.get::<_, i64>(0)? as u64,
                        complained: r.get::<_, i64>(1)? as u64,
                        soft_bounced: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .at(&self.path)
    }

    /// See [`CampaignStore::record_unmatched`](crate::CampaignStore::record_unmatched).
    pub fn record_unmatched(&mut self, u: &Unmatched) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO late_unmatched (key, at, summary) VALUES (?1, ?2, ?3)",
                params![u.key, u.at, u.summary],
            )
            .at(&self.path)?;
        Ok(n > 0)
    }

    /// See [`CampaignStore::unmatched`](crate::CampaignStore::unmatched).
    pub fn unmatched(&self) -> Result<Vec<Unmatched>> {
        let mut st = self
            .conn
            .prepare("SELECT key, at, summary FROM late_unmatched ORDER BY at, key")
            .at(&self.path)?;
        st.query_map([], |r| {
            Ok(Unmatched {
                key: r.get(0)?,
                at: r.get(1)?,
                summary: r.get(2)?,
            })
        })
        .at(&self.path)?
        .collect::<rusqlite::Result<_>>()
        .at(&self.path)
    }

    /// See [`CampaignStore::reputation_window`](crate::CampaignStore::reputation_window).
    pub fn reputation_window(&self, limit: usize) -> Result<Vec<WindowEntry>> {
        let mut st = self
            .conn
            // Each status through its own partial index, merged: one
            // sorted query over both statuses read the whole table (0.5 s
            // of a resumed 1M campaign's start, issue 11). The failed part
            // repeats recipients_failing's WHERE so the index serves it.
            .prepare(
                "SELECT domain, bad, complained FROM (
                   SELECT * FROM (
                     SELECT domain, late = 'bounced' OR category = 'recipient_unknown' AS bad,
                            coalesce(late = 'complained', 0) AS complained,
                            last_attempt_at AS at, id
                     FROM recipients
                     WHERE status = 'sent' AND last_attempt_at IS NOT NULL
                     ORDER BY last_attempt_at DESC, id DESC LIMIT ?1)
                   UNION ALL
                   SELECT * FROM (
                     SELECT domain, late = 'bounced' OR category = 'recipient_unknown',
                            coalesce(late = 'complained', 0), last_attempt_at, id
                     FROM recipients
                     WHERE status IN ('failed', 'deferred') AND status = 'failed'
                       AND last_attempt_at IS NOT NULL
                     ORDER BY last_attempt_at DESC, id DESC LIMIT ?1))
                 ORDER BY at DESC, id DESC LIMIT ?1",
            )
            .at(&self.path)?;
        st.query_map([limit_param(limit)], |r| {
            Ok(WindowEntry {
                domain: r.get(0)?,
                hard_bounce: r.get::<_, Option<bool>>(1)?.unwrap_or(false),
                complaint: r.get(2)?,
            })
        })
        .at(&self.path)?
        .collect::<rusqlite::Result<_>>()
        .at(&self.path)
    }
}

/// The late columns of an export row (`late, late_at, late_status,
/// late_diagnostic, soft_bounces`), `None` when nothing late was recorded.
pub(crate) fn late_state(
    outcome: Option<String>,
    at: Option<i64>,
    status: Option<String>,
    diagnostic: Option<String>,
    soft_bounces: u32,
) -> Option<LateState> {
    (outcome.is_some() || soft_bounces > 0).then_some(LateState {
        outcome,
        at,
        status,
        diagnostic,
        soft_bounces,
    })
}
