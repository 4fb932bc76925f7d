//! Several `edm send` workers on one campaign (issue 14, docs/scaling.md):
//! joining (`lock_for_run` on PostgreSQL), the heartbeat ([`PgLease`]),
//! the recovery of a dead worker's rows, and the fence on durable marks.
//!
//! Times of leases are the database server's (`clock_timestamp()`), never a
//! worker's: workers on several machines need not agree on the time.
//!
//! Locks, so that a zombie (a worker whose lease expired while it still
//! runs) never completes a message another worker may send:
//! - a worker's marks and claims first take `FOR KEY SHARE` on its own row
//!   of `edm.workers`, and require it `running` with the worker's
//!   incarnation;
//! - recovering a dead worker takes `FOR UPDATE` on its row (skipping rows
//!   locked by a mark in progress: they are taken at the next heartbeat),
//!   then sets it `dead`.
//!
//! So a mark committed before the recovery is seen by it (the row goes in
//! doubt, never back to pending), and a mark after it is refused
//! ([`Error::LeaseLost`]): the connection then aborts before the final dot.

use std::path::Path;

use postgres::Transaction;

use super::conn::{AtPg, Conn};
use super::ops::{UNCLAIM, get_meta, put_meta};
use super::schema::{INGEST_LOCK_CLASS, QUOTA_LOCK_CLASS};
use super::{PgOptions, PgStore};
use crate::error::{Error, Result};
use crate::lease::{
    LeaseSettings, Recovered, Renewal, SharedControls, WorkerFigures, WorkerLease, WorkerRow,
};
use crate::types::{InDoubtPolicy, Outcome};
use crate::write::from_i64;

/// The database server's time in milliseconds since the epoch.
pub(super) const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The meta key set once marks were used (as in `ops.rs`).
const MARKS_META: &str = "dot_marks";

fn now_sql(sql: &str) -> String {
    sql.replace("{now}", NOW_MS)
}

impl PgStore {
    /// Joins the campaign as a worker: inserts (or takes over, when its
    /// lease expired) this worker's row, with a new incarnation. A name
    /// whose row is live is refused ([`Error::WorkerLive`]).
    pub(super) fn join(&mut self, pid: u32) -> Result<()> {
        if self.joined.is_some() {
            return Ok(());
        }
        let worker = self.worker.clone();
        let host = super::host_name();
        let lease = self.lease.lease_ms();
        let pid = i64::from(pid);
        let incarnation = self.conn.call({
            let worker = worker.clone();
            let id = self.campaign_id;
            move |c, path, again| {
                fence_idle_transactions(c, path, lease)?;
                if again {
                    // Repeated after a lost COMMIT that happened: our row.
                    let ours = c
                        .query_opt(
                            "SELECT incarnation FROM edm.workers
                             WHERE campaign_id = $1 AND name = $2 AND pid = $3 AND host = $4
                               AND state = 'running'",
                            &[&id, &worker, &pid, &host],
                        )
                        .at(path)?;
                    if let Some(r) = ours {
                        return Ok(r.get::<_, i64>(0));
                    }
                }
                let mut tx = c.transaction().at(path)?;
                let joined = tx
                    .query_opt(
                        &now_sql(
                            "INSERT INTO edm.workers AS w (campaign_id, name, pid, host, started_at,
                                 heartbeat_at, lease_until, state)
                             VALUES ($1, $2, $3, $4, {now}, {now}, {now} + $5, 'running')
                             ON CONFLICT (campaign_id, name) DO UPDATE
                             SET pid = excluded.pid, host = excluded.host,
                                 started_at = excluded.started_at,
                                 heartbeat_at = excluded.heartbeat_at,
                                 lease_until = excluded.lease_until, state = 'running',
                                 incarnation = w.incarnation + 1, sent = 0, failed = 0,
                                 in_flight = 0, rate = NULL, share = NULL, throttle = NULL
                             WHERE w.state <> 'running' OR w.lease_until < {now}
                             RETURNING incarnation",
                        ),
                        &[&id, &worker, &pid, &host, &lease],
                    )
                    .at(path)?;
                let Some(row) = joined else {
                    let live = tx
                        .query_one(
                            &now_sql(
                                "SELECT pid, host, lease_until - {now} FROM edm.workers
                                 WHERE campaign_id = $1 AND name = $2",
                            ),
                            &[&id, &worker],
                        )
                        .at(path)?;
                    return Err(Error::WorkerLive {
                        path: path.to_path_buf(),
                        worker: worker.clone(),
                        pid: u64::try_from(live.get::<_, i64>(0)).unwrap_or(0),
                        host: live.get(1),
                        left_ms: live.get(2),
                    });
                };
                // Kept for older readers of `run.pid`: the last worker to join.
                put_meta(&mut tx, path, id, "run.pid", &pid.to_string())?;
                put_meta(&mut tx, path, id, "run.worker", &worker)?;
                tx.commit().at(path)?;
                Ok(row.get::<_, i64>(0))
            }
        })?;
        self.joined = Some(incarnation);
        // A new session after a lost connection sets this worker's session
        // up again (`PgStore::session_hook`).
        self.conn.set_hook(self.session_hook())
    }

    /// `recover_in_doubt` of a joined worker: the rows of workers whose
    /// lease expired (locked and set `dead`), of workers that ended or never
    /// had a row (an older edm), and this worker's own name's (from a
    /// process of the same name that died): never a live worker's rows.
    pub(super) fn recover_at_join(&mut self, policy: InDoubtPolicy) -> Result<u64> {
        let me = self.worker.clone();
        self.call(move |c, path, id| {
            let mut tx = c.transaction().at(path)?;
            let dead = expired_workers(&mut tx, path, id, &me)?;
            let mut total = 0;
            for r in recover_workers(&mut tx, path, id, &dead, policy)? {
                total += r.in_doubt;
            }
            let marks_used = get_meta(&mut tx, path, id, MARKS_META)?.as_deref() == Some("1");
            let who = "(r.claimed_by IS NULL OR r.claimed_by = $3 OR NOT EXISTS
                          (SELECT 1 FROM edm.workers w WHERE w.campaign_id = r.campaign_id
                             AND w.name = r.claimed_by AND w.state = 'running'))";
            let (_, in_doubt) = recover_rows(&mut tx, path, id, who, &me, marks_used, policy)?;
            tx.commit().at(path)?;
            Ok(total + in_doubt)
        })
    }

    /// The marks of a joined worker, fenced (see the module documentation),
    /// inserted here: refused, with nothing inserted, unless this worker
    /// still holds its row (running, its incarnation), or when a recipient
    /// is `sending` under another worker's name. A recipient no longer
    /// `sending` was settled by this worker's own outcome (a refusal at RCPT
    /// comes before the mark asked with the envelope): no mark, as none is
    /// needed. While the worker holds its row nobody can have recovered its
    /// recipients: a recovery sets the row `dead` first.
    pub(super) fn fenced_marks(
        tx: &mut Transaction<'_>,
        path: &Path,
        (id, worker, incarnation): (i64, &str, i64),
        marks: &[i64],
    ) -> Result<()> {
        hold_own_row(tx, path, (id, worker, incarnation), "its durable marks")?;
        let others = tx
            .query(
                "SELECT r.id FROM edm.recipients r
                 WHERE r.campaign_id = $1 AND r.id = ANY($2) AND r.status = 'sending'
                   AND r.claimed_by IS DISTINCT FROM $3",
                &[&id, &marks, &worker],
            )
            .at(path)?;
        if let Some(first) = others.first() {
            return Err(Error::LeaseLost {
                path: path.to_path_buf(),
                worker: worker.to_string(),
                what: format!(
                    "{} of {} durable marks refused, recipient {} first: another worker sends it",
                    others.len(),
                    marks.len(),
                    first.get::<_, i64>(0)
                ),
            });
        }
        tx.execute(
            "INSERT INTO edm.dot_marks (id, campaign_id)
             SELECT r.id, $1 FROM edm.recipients r
             WHERE r.campaign_id = $1 AND r.id = ANY($2) AND r.status = 'sending'
               AND r.claimed_by = $3
             ON CONFLICT (id) DO NOTHING",
            &[&id, &marks, &worker],
        )
        .at(path)?;
        Ok(())
    }

    /// The outcomes of a joined worker that it may still record: those of
    /// recipients it holds (`sending` under its name), locked until the
    /// commit. The others were taken over when its lease expired (a zombie
    /// woken up): recording them would overwrite another worker's claim (a
    /// `pending` or `deferred` there could send it twice), so they are
    /// dropped, and the recipient stays as the takeover left it (in doubt
    /// when it was marked). Ids the campaign does not have are kept, for
    /// `record_in` to refuse.
    pub(super) fn held_outcomes(
        tx: &mut Transaction<'_>,
        path: &Path,
        (id, worker): (i64, &str),
        outcomes: &[Outcome],
    ) -> Result<Vec<Outcome>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = outcomes.iter().map(|o| o.id.0).collect();
        let rows = tx
            .query(
                "SELECT id, status = 'sending' AND claimed_by IS NOT DISTINCT FROM $3
                 FROM edm.recipients WHERE campaign_id = $1 AND id = ANY($2)
                 ORDER BY id FOR UPDATE",
                &[&id, &ids, &worker],
            )
            .at(path)?;
        let not_held: std::collections::HashSet<i64> = rows
            .iter()
            .filter(|r| !r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        if not_held.is_empty() {
            return Ok(outcomes.to_vec());
        }
        tracing::warn!(
            worker,
            dropped = not_held.len(),
            "outcomes of recipients this worker no longer holds (taken over) were not recorded"
        );
        Ok(outcomes
            .iter()
            .filter(|o| !not_held.contains(&o.id.0))
            .cloned()
            .collect())
    }

    /// The heartbeat of this (joined) worker, on a connection of its own.
    pub(super) fn open_lease(&self) -> Result<Option<Box<dyn WorkerLease>>> {
        let Some(incarnation) = self.joined else {
            return Ok(None);
        };
        let (config, tls) = self.options.config()?;
        let conn = Conn::connect(
            config,
            tls,
            self.options.location(),
            self.options.reconnect_for,
        )?;
        let lease = self.lease.lease_ms();
        conn.call(move |c, path, _| fence_idle_transactions(c, path, lease))?;
        // A new session after a lost connection: the same setting again.
        conn.set_hook(Box::new(move |c, path, _| {
            fence_idle_transactions(c, path, lease)
        }))?;
        Ok(Some(Box::new(PgLease {
            conn,
            campaign_id: self.campaign_id,
            worker: self.worker.clone(),
            incarnation,
            settings: self.lease,
        })))
    }

    pub(super) fn ingest_lock(&mut self, take: bool) -> Result<()> {
        let key = i32::try_from(self.campaign_id).unwrap_or(i32::MAX);
        let sql = if take {
            "SELECT pg_advisory_lock($1, $2)::text"
        } else {
            "SELECT pg_advisory_unlock($1, $2)::text"
        };
        self.conn.call(move |c, path, _| {
            c.query_one(sql, &[&INGEST_LOCK_CLASS, &key]).at(path)?;
            Ok(())
        })
    }

    pub(super) fn list_workers(&self) -> Result<Vec<WorkerRow>> {
        self.call(worker_rows)
    }
}

/// The campaign's workers, for `edm status` and the dashboard's rows.
fn worker_rows(c: &mut postgres::Client, path: &Path, id: i64) -> Result<Vec<WorkerRow>> {
    let rows = c
        .query(
            &now_sql(
                "SELECT name, pid, host, started_at, heartbeat_at, lease_until, state,
                        state = 'running' AND lease_until >= {now}, sent, failed,
                        in_flight, rate, share, throttle
                 FROM edm.workers WHERE campaign_id = $1 ORDER BY started_at, name",
            ),
            &[&id],
        )
        .at(path)?;
    Ok(rows
        .iter()
        .map(|r| WorkerRow {
            name: r.get(0),
            pid: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            host: r.get(2),
            started_at: r.get(3),
            heartbeat_at: r.get(4),
            lease_until: r.get(5),
            state: r.get(6),
            alive: r.get(7),
            sent: from_i64(r.get(8)),
            failed: from_i64(r.get(9)),
            in_flight: from_i64(r.get(10)),
            rate: r.get(11),
            share: r.get(12),
            throttle: r.get(13),
        })
        .collect())
}

/// The meta key counting the operator's campaign-wide stops
/// ([`Renewal::stops`]). A count in `edm.meta` rather than a column of
/// `edm.controls`: no migration, and a stop is an event to count, not a
/// state to clear (a worker joining later records the count as seen).
const STOPS_META: &str = "controls.stops";

fn stops_of(c: &mut impl postgres::GenericClient, path: &Path, id: i64) -> Result<i64> {
    Ok(get_meta(c, path, id, STOPS_META)?
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0))
}

/// A worker's sessions end a transaction left idle for half a lease: a
/// process frozen (SIGSTOP, a stalled VM) or cut off in the middle of one
/// would otherwise keep its row locked (a mark holds `FOR KEY SHARE` on
/// it), and the others could never take its rows over. The server aborts
/// the transaction and closes the session; the worker, if it wakes up,
/// finds its store gone and stops before any final dot.
pub(super) fn fence_idle_transactions(
    c: &mut postgres::Client,
    path: &Path,
    lease_ms: i64,
) -> Result<()> {
    let ms = (lease_ms / 2).max(100);
    c.batch_execute(&format!("SET idle_in_transaction_session_timeout = {ms}"))
        .at(path)
}

/// What is left of a daily quota for the sum of the workers: `quota` minus
/// the recipients sent since `since` and those any worker is sending, under
/// the campaign's quota lock (`pg_advisory_xact_lock`, held until the claim
/// commits its rows `sending`): workers claim one after the other, so their
/// sum never passes the quota, and a worker frozen in the middle loses the
/// lock with its transaction (`fence_idle_transactions`).
pub(super) fn quota_left(
    tx: &mut Transaction<'_>,
    path: &Path,
    id: i64,
    (quota, since): (u64, i64),
) -> Result<usize> {
    let key = i32::try_from(id).unwrap_or(i32::MAX);
    tx.query_one(
        "SELECT pg_advisory_xact_lock($1, $2)::text",
        &[&QUOTA_LOCK_CLASS, &key],
    )
    .at(path)?;
    let used: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM edm.recipients
                     WHERE campaign_id = $1 AND status = 'sent' AND last_attempt_at >= $2)
                  + (SELECT count(*) FROM edm.recipients
                     WHERE campaign_id = $1 AND status = 'sending')",
            &[&id, &since],
        )
        .at(path)?
        .get(0);
    let left = quota.saturating_sub(u64::try_from(used).unwrap_or(0));
    Ok(usize::try_from(left).unwrap_or(usize::MAX))
}

/// Locks this worker's own row (`FOR KEY SHARE`: a recovery's `FOR UPDATE`
/// waits for it, its own heartbeat does not), or says the lease is lost.
pub(super) fn hold_own_row(
    tx: &mut Transaction<'_>,
    path: &Path,
    (id, worker, incarnation): (i64, &str, i64),
    what: &str,
) -> Result<()> {
    let held = tx
        .query_opt(
            "SELECT 1 FROM edm.workers
             WHERE campaign_id = $1 AND name = $2 AND incarnation = $3 AND state = 'running'
             FOR KEY SHARE",
            &[&id, &worker, &incarnation],
        )
        .at(path)?;
    if held.is_none() {
        return Err(Error::LeaseLost {
            path: path.to_path_buf(),
            worker: worker.to_string(),
            what: format!("{what} were refused: its row was taken over"),
        });
    }
    Ok(())
}

/// The workers (other than `me`) still `running` whose lease expired,
/// locked for their recovery; those locked by a mark in progress are
/// skipped (the next heartbeat takes them).
fn expired_workers(
    tx: &mut Transaction<'_>,
    path: &Path,
    id: i64,
    me: &str,
) -> Result<Vec<String>> {
    Ok(tx
        .query(
            &now_sql(
                "SELECT name FROM edm.workers
                 WHERE campaign_id = $1 AND state = 'running' AND lease_until < {now}
                   AND name <> $2
                 ORDER BY name FOR UPDATE SKIP LOCKED",
            ),
            &[&id, &me],
        )
        .at(path)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Recovers the rows of the (locked) dead workers `dead`: each set `dead`,
/// its rows put back or in doubt, an event naming it and the counts.
fn recover_workers(
    tx: &mut Transaction<'_>,
    path: &Path,
    id: i64,
    dead: &[String],
    policy: InDoubtPolicy,
) -> Result<Vec<Recovered>> {
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let marks_used = get_meta(tx, path, id, MARKS_META)?.as_deref() == Some("1");
    let mut out = Vec::with_capacity(dead.len());
    for name in dead {
        let (released, in_doubt) =
            recover_rows(tx, path, id, "r.claimed_by = $3", name, marks_used, policy)?;
        tx.execute(
            "UPDATE edm.workers SET state = 'dead', in_flight = 0
             WHERE campaign_id = $1 AND name = $2",
            &[&id, name],
        )
        .at(path)?;
        let text = format!(
            "worker {name}: its lease expired; {released} recipients it held back to pending, \
             {in_doubt} in doubt ({})",
            match policy {
                InDoubtPolicy::Resend => "sent again, flagged",
                InDoubtPolicy::Skip => "left in_doubt",
            }
        );
        tracing::warn!("{text}");
        tx.execute(
            "INSERT INTO edm.events (campaign_id, at, kind, text) VALUES ($1, $2, 'worker', $3)",
            &[&id, &edm_model::now_ms(), &text],
        )
        .at(path)?;
        out.push(Recovered {
            worker: name.clone(),
            released,
            in_doubt,
        });
    }
    Ok(out)
}

/// The `sending` rows matching `who` (SQL over `r`, `$3` = `arg`): without
/// a durable mark back as before their claim, with one in doubt under
/// `policy` (all in doubt when marks were never used: an older edm), as
/// `recover_in_doubt` does after a crash. Returns (released, in doubt).
fn recover_rows(
    tx: &mut Transaction<'_>,
    path: &Path,
    id: i64,
    who: &str,
    arg: &str,
    marks_used: bool,
    policy: InDoubtPolicy,
) -> Result<(u64, u64)> {
    let now = edm_model::now_ms();
    let released = if marks_used {
        tx.execute(
            &format!(
                "UPDATE edm.recipients r SET {UNCLAIM}, updated_at = $2
                 WHERE r.campaign_id = $1 AND r.status = 'sending' AND {who}
                   AND NOT EXISTS (SELECT 1 FROM edm.dot_marks m WHERE m.id = r.id)"
            ),
            &[&id, &now, &arg],
        )
        .at(path)?
    } else {
        0
    };
    let set = match policy {
        InDoubtPolicy::Resend => "status = 'pending', next_attempt_at = NULL",
        InDoubtPolicy::Skip => "status = 'in_doubt'",
    };
    let doubted = tx
        .query(
            &format!(
                "UPDATE edm.recipients r SET in_doubt = true, {set}, prev_attempt_at = NULL,
                     claimed_by = NULL, lease_until = NULL, updated_at = $2
                 WHERE r.campaign_id = $1 AND r.status = 'sending' AND {who}
                 RETURNING r.id"
            ),
            &[&id, &now, &arg],
        )
        .at(path)?;
    let ids: Vec<i64> = doubted.iter().map(|r| r.get(0)).collect();
    if !ids.is_empty() {
        tx.execute(
            "DELETE FROM edm.dot_marks WHERE campaign_id = $1 AND id = ANY($2)",
            &[&id, &ids],
        )
        .at(path)?;
    }
    Ok((released, ids.len() as u64))
}

/// A worker's heartbeat (see [`WorkerLease`]) on a connection of its own.
pub(super) struct PgLease {
    conn: Conn,
    campaign_id: i64,
    worker: String,
    incarnation: i64,
    settings: LeaseSettings,
}

impl WorkerLease for PgLease {
    fn name(&self) -> &str {
        &self.worker
    }

    fn settings(&self) -> LeaseSettings {
        self.settings
    }

    fn renew(&mut self, f: &WorkerFigures, policy: InDoubtPolicy) -> Result<Renewal> {
        let (id, me, inc) = (self.campaign_id, self.worker.clone(), self.incarnation);
        let lease = self.settings.lease_ms();
        let f = f.clone();
        self.conn.call(move |c, path, _| {
            let mut tx = c.transaction().at(path)?;
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let renewed = tx
                .execute(
                    &now_sql(
                        "UPDATE edm.workers
                         SET heartbeat_at = {now}, lease_until = {now} + $4, sent = $5,
                             failed = $6, in_flight = $7, rate = $8, share = $9, throttle = $10
                         WHERE campaign_id = $1 AND name = $2 AND incarnation = $3
                           AND state = 'running'",
                    ),
                    &[
                        &id,
                        &me,
                        &inc,
                        &lease,
                        &n(f.sent),
                        &n(f.failed),
                        &n(f.in_flight),
                        &f.rate,
                        &f.share,
                        &f.throttle,
                    ],
                )
                .at(path)?;
            if renewed == 0 {
                tx.commit().at(path)?;
                return Ok(Renewal {
                    lost: true,
                    ..Renewal::default()
                });
            }
            let dead = expired_workers(&mut tx, path, id, &me)?;
            let recovered = recover_workers(&mut tx, path, id, &dead, policy)?;
            let live = tx
                .query_one(
                    &now_sql(
                        "SELECT count(*),
                                min(coalesce(throttle, 1.0)) FILTER (WHERE name <> $2)
                         FROM edm.workers
                         WHERE campaign_id = $1 AND state = 'running' AND lease_until >= {now}",
                    ),
                    &[&id, &me],
                )
                .at(path)?;
            let controls = tx
                .query_opt(
                    "SELECT version, paused, rate_set, rate FROM edm.controls
                     WHERE campaign_id = $1",
                    &[&id],
                )
                .at(path)?
                .map(|r| SharedControls {
                    version: r.get(0),
                    paused: r.get(1),
                    rate: r.get::<_, bool>(2).then(|| r.get(3)),
                });
            let stops = stops_of(&mut tx, path, id)?;
            tx.commit().at(path)?;
            Ok(Renewal {
                lost: false,
                live: u32::try_from(live.get::<_, i64>(0)).unwrap_or(1).max(1),
                min_throttle: live.get::<_, Option<f64>>(1).unwrap_or(1.0),
                recovered,
                controls,
                stops,
            })
        })
    }

    fn publish(&mut self, paused: Option<bool>, rate: Option<Option<f64>>) -> Result<i64> {
        let (id, me) = (self.campaign_id, self.worker.clone());
        let rate_set = rate.is_some();
        let rate = rate.flatten();
        self.conn.call(move |c, path, _| {
            Ok(c.query_one(
                &now_sql(
                    "INSERT INTO edm.controls AS k
                         (campaign_id, version, paused, rate_set, rate, updated_at, by_worker)
                     VALUES ($1, 1, coalesce($2, false), $3, $4, {now}, $5)
                     ON CONFLICT (campaign_id) DO UPDATE
                     SET version = k.version + 1, paused = coalesce($2, k.paused),
                         rate_set = k.rate_set OR $3,
                         rate = CASE WHEN $3 THEN $4 ELSE k.rate END,
                         updated_at = {now}, by_worker = $5
                     RETURNING version",
                ),
                &[&id, &paused, &rate_set, &rate, &me],
            )
            .at(path)?
            .get(0))
        })
    }

    fn workers(&mut self) -> Result<Vec<WorkerRow>> {
        let id = self.campaign_id;
        self.conn.call(move |c, path, _| worker_rows(c, path, id))
    }

    fn publish_stop(&mut self) -> Result<i64> {
        let id = self.campaign_id;
        self.conn.call(move |c, path, _| {
            let mut tx = c.transaction().at(path)?;
            // One at a time: two dashboards stopping at once count two.
            tx.execute(
                "SELECT 1 FROM edm.meta WHERE campaign_id = $1 AND key = $2 FOR UPDATE",
                &[&id, &STOPS_META],
            )
            .at(path)?;
            let next = stops_of(&mut tx, path, id)? + 1;
            put_meta(&mut tx, path, id, STOPS_META, &next.to_string())?;
            tx.commit().at(path)?;
            Ok(next)
        })
    }

    fn leave(&mut self, f: &WorkerFigures) -> Result<()> {
        let (id, me, inc) = (self.campaign_id, self.worker.clone(), self.incarnation);
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (sent, failed) = (n(f.sent), n(f.failed));
        self.conn.call(move |c, path, _| {
            c.execute(
                &now_sql(
                    "UPDATE edm.workers SET state = 'done', lease_until = {now},
                         heartbeat_at = {now}, in_flight = 0, sent = $4, failed = $5
                     WHERE campaign_id = $1 AND name = $2 AND incarnation = $3
                       AND state = 'running'",
                ),
                &[&id, &me, &inc, &sent, &failed],
            )
            .at(path)?;
            Ok(())
        })
    }
}

impl PgOptions {
    /// Names this process's worker (`edm send --worker NAME`).
    pub fn with_worker(mut self, name: &str) -> PgOptions {
        self.worker = name.to_string();
        self
    }
}
