//! What a write repeated after a lost connection looks at first.
//!
//! [`super::conn`] runs an operation again when the connection was lost
//! under it. Lost before COMMIT was sent, the server rolled the transaction
//! back and repeating it is right. Lost while COMMIT's reply was awaited,
//! the write may or may not have happened, and the repeat must be right
//! either way:
//!
//! - a **claim** looks for the rows the lost one took ([`claimed_before`])
//!   and returns them rather than claiming others, so no row stays
//!   `sending` unknown to the run;
//! - **outcomes** skip the rows that already left `sending`
//!   ([`already_recorded`]): every outcome moves its row out of `sending`,
//!   so such a row's outcome is the lost commit's (an outcome applied twice
//!   would count its attempt twice; the tallies would not move, since the
//!   tally trigger counts only changes of status, category or in-doubt);
//! - **marks** are `ON CONFLICT DO NOTHING`; **meta** keys are upserts;
//! - **events** already in the log (same time, kind and text) are not
//!   written again ([`event_logged`]).

use std::collections::HashSet;
use std::path::Path;

use edm_model::{Recipient, RecipientId, UnixMillis};
use postgres::GenericClient;

use super::conn::AtPg;
use crate::error::Result;
use crate::write::from_i64;

/// The rows a claim by `worker` at `now` took, but for those `earlier`
/// claims of the same millisecond returned: a claim sets `status =
/// 'sending'`, `claimed_by` and `last_attempt_at = now` on each row it takes,
/// and nothing else sets that combination. Ordered as a claim returns them:
/// pending rows by id, then due retries by due time (their
/// `next_attempt_at` is kept while they are sent).
pub(super) fn claimed_before(
    c: &mut impl GenericClient,
    path: &Path,
    id: i64,
    worker: &str,
    now: UnixMillis,
    earlier: &[i64],
) -> Result<Vec<Recipient>> {
    let rows = c
        .query(
            "SELECT id, line, email, fields, attempts, first_attempt_at FROM edm.recipients
             WHERE campaign_id = $1 AND status = 'sending' AND claimed_by = $2
               AND last_attempt_at = $3 AND NOT (id = ANY($4))
             ORDER BY next_attempt_at NULLS FIRST, id",
            &[&id, &worker, &now, &earlier],
        )
        .at(path)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let fields: String = r.get(3);
        let attempts: i32 = r.get(4);
        out.push(Recipient {
            id: RecipientId(r.get(0)),
            line: from_i64(r.get(1)),
            email: r.get(2),
            values: crate::store::parse_values(path, &fields)?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            first_attempt_at: Some(r.get::<_, Option<i64>>(5).unwrap_or(now)),
        });
    }
    Ok(out)
}

/// Of `ids`, the rows that are no longer `sending` under `worker`'s claim:
/// their outcome was recorded by the lost commit.
pub(super) fn already_recorded(
    c: &mut impl GenericClient,
    path: &Path,
    id: i64,
    worker: &str,
    ids: &[i64],
) -> Result<HashSet<i64>> {
    Ok(c.query(
        "SELECT id FROM edm.recipients
         WHERE campaign_id = $1 AND id = ANY($2)
           AND (status <> 'sending' OR claimed_by IS DISTINCT FROM $3)",
        &[&id, &ids, &worker],
    )
    .at(path)?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// True when the event is already in the log (written by the lost commit).
pub(super) fn event_logged(
    c: &mut impl GenericClient,
    path: &Path,
    id: i64,
    at: UnixMillis,
    kind: &str,
    text: &str,
) -> Result<bool> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM edm.events
                        WHERE campaign_id = $1 AND at = $2 AND kind = $3 AND text = $4)",
        &[&id, &at, &kind, &text],
    )
    .at(path)?
    .get(0))
}
