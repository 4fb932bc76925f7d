//! The tallies of the SQLite store, kept by the statements that change rows
//! (schema version 7), not by triggers.
//!
//! `tally` counts rows by (status, category, in-doubt flag) and
//! `domain_tally` by (domain, status), so `edm status` never scans 10M rows.
//! Up to version 6 four triggers kept them: every status change ran two
//! trigger programs (a VDBE frame each, a statement journal, four small
//! statements), about 35k of the writer's ~150k instructions per message
//! (issue 11, docs/benchmarks.md). Now each statement that changes a
//! status, a category or the in-doubt flag reports the row's old and new
//! keys into a [`Deltas`], and the transaction ends with one upsert per key
//! whose net count moved ([`Deltas::apply`]): a batch of 64 outcomes that
//! all go `sending` → `sent` writes two `tally` rows and two per domain.
//!
//! The rows' `domain` never changes after ingest, so a change only moves a
//! row between keys of the same domain. `domain_tally` counts only what
//! [`crate::Store::domain_counts`] shows: `sent`, `failed`, `deferred`, and
//! every other status as one `other` ([`domain_status`]), so a claim of a
//! pending row (`pending` → `sending`, both `other`) writes nothing there:
//! with 97 domains in a claim of 64 rows, per-status keys cost two upserts
//! per row, as much as the triggers did.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Transaction, params};

use crate::error::{AtPath, Result};

/// One row's tallied columns: status, category (`''` for none, as the
/// `tally` table stores it), in-doubt flag.
pub(crate) type Key<'a> = (&'a str, &'a str, bool);

/// Net changes of the tallies within one transaction.
///
/// Keys are kept as the strings the rows hold (not parsed): a status this
/// build does not know is counted like any other and reported by
/// [`crate::Store::summary`] as corrupt, as the triggers did.
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    /// (status, category, in_doubt) → net change. A batch touches few keys:
    /// a linear search finds them without allocating.
    tally: Vec<(String, String, bool, i64)>,
    /// domain → [(status, net change)].
    domains: HashMap<String, Vec<(&'static str, i64)>>,
}

impl Deltas {
    /// Counts `n` rows in (`key`, `domain`); negative `n` takes them out.
    pub(crate) fn add(&mut self, key: Key<'_>, domain: &str, n: i64) {
        self.add_tally(key, n);
        self.add_domain(domain, domain_status(key.0), n);
    }

    fn add_tally(&mut self, key: Key<'_>, n: i64) {
        let (status, category, in_doubt) = key;
        match self
            .tally
            .iter_mut()
            .find(|t| t.0 == status && t.1 == category && t.2 == in_doubt)
        {
            Some(t) => t.3 += n,
            None => self
                .tally
                .push((status.to_string(), category.to_string(), in_doubt, n)),
        }
    }

    fn add_domain(&mut self, domain: &str, status: &'static str, n: i64) {
        add_to(&mut self.domains, domain, status, n);
    }

    /// A row of `domain` moved from `old` to `new` (nothing when equal).
    pub(crate) fn moved(&mut self, domain: &str, old: Key<'_>, new: Key<'_>) {
        if old != new {
            self.add_tally(old, -1);
            self.add_tally(new, 1);
        }
        let (old, new) = (domain_status(old.0), domain_status(new.0));
        if old != new {
            self.add_domain(domain, old, -1);
            self.add_domain(domain, new, 1);
        }
    }

    /// Writes the net changes into `tally` and `domain_tally`, inside the
    /// caller's transaction (so the counts commit with the rows, or not at
    /// all), and forgets them.
    pub(crate) fn apply(&mut self, tx: &rusqlite::Connection, path: &Path) -> Result<()> {
        self.apply_tally(tx, path)?;
        let domains = std::mem::take(&mut self.domains);
        write_domains(tx, path, domains.iter())
    }

    /// Writes the net changes of `tally` only (the run's hot path: the
    /// domain part goes to [`Behind::stage`]).
    pub(crate) fn apply_tally(&mut self, tx: &rusqlite::Connection, path: &Path) -> Result<()> {
        // An UPDATE of the key's row, and an INSERT only when there is
        // none: cheaper than `INSERT … ON CONFLICT DO UPDATE`, which looks
        // the key up twice and journals the statement, and the row nearly
        // always exists already.
        if self.tally.iter().any(|t| t.3 != 0) {
            let mut update = tx
                .prepare_cached(
                    "UPDATE tally SET n = n + ?4
                     WHERE status = ?1 AND category = ?2 AND in_doubt = ?3",
                )
                .at(path)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO tally (status, category, in_doubt, n) VALUES (?1, ?2, ?3, ?4)",
                )
                .at(path)?;
            for (status, category, in_doubt, n) in self.tally.drain(..) {
                if n != 0 {
                    let args = params![status, category, in_doubt, n];
                    if update.execute(args).at(path)? == 0 {
                        insert.execute(args).at(path)?;
                    }
                }
            }
        }
        self.tally.clear();
        Ok(())
    }
}

/// Adds per-domain net changes to `domain_tally`, inside the caller's
/// transaction. An UPDATE of the key's row, and an INSERT only when there
/// is none: cheaper than `INSERT … ON CONFLICT DO UPDATE`, which looks the
/// key up twice and journals the statement, and the row nearly always
/// exists already.
fn write_domains<'a>(
    tx: &rusqlite::Connection,
    path: &Path,
    domains: impl Iterator<Item = (&'a String, &'a Vec<(&'static str, i64)>)>,
) -> Result<()> {
    let mut statements = None;
    for (domain, statuses) in domains {
        for (status, n) in statuses {
            if *n == 0 {
                continue;
            }
            if statements.is_none() {
                let update = tx
                    .prepare_cached(
                        "UPDATE domain_tally SET n = n + ?3 WHERE domain = ?1 AND status = ?2",
                    )
                    .at(path)?;
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO domain_tally (domain, status, n) VALUES (?1, ?2, ?3)",
                    )
                    .at(path)?;
                statements = Some((update, insert));
            }
            if let Some((update, insert)) = statements.as_mut() {
                let args = params![domain, status, n];
                if update.execute(args).at(path)? == 0 {
                    insert.execute(args).at(path)?;
                }
            }
        }
    }
    Ok(())
}

/// The `meta` key set while `domain_tally` is behind the rows: written in
/// the transaction of the first change kept back, deleted in the one that
/// writes them ([`Behind`]).
pub(crate) const BEHIND_META: &str = "domain_tally.behind";

/// How long the run's writer keeps `domain_tally` changes back at most: the
/// writer's view interval (writer.rs `VIEW_EVERY`), so another process
/// (`edm status`, the dashboard) reads domain counts at most that old.
pub(crate) const BEHIND_AT_MOST: std::time::Duration = std::time::Duration::from_millis(500);

/// The variable that lengthens [`BEHIND_AT_MOST`], for benchmarks only
/// (milliseconds): under callgrind a run is ~70 times slower, so half a
/// second holds ~70 messages instead of ~5,000 and the profile would
/// measure a write per domain every few messages (docs/benchmarks.md,
/// "tally2"). Never set it in production: other processes read the domain
/// counts that much behind.
pub(crate) const BEHIND_ENV: &str = "EDM_DOMAIN_TALLY_LAG_MS";

/// The `domain_tally` changes of the run's hot path (claims, outcomes),
/// kept in memory across commits (issue 11: two `UPDATE`s per domain
/// touched per commit were ~15k of the writer's ~98k instructions per
/// message) and written at most [`BEHIND_AT_MOST`] later, in the next hot
/// commit, at the end of the run ([`crate::Store::flush_domain_tally`]) and
/// when the store is dropped. Only a store holding the run lock keeps them
/// back, so a set [`BEHIND_META`] with the lock free means a writer died
/// with changes in memory: the next open, lock or read counts the domains
/// from the rows ([`recount_domains`]). Every other path that changes rows
/// (ingest, reset, skip, recovery, late outcomes) writes its changes at once;
/// the changes add up, so their order does not matter.
#[derive(Debug)]
pub(crate) struct Behind {
    /// Keep changes back (the store holds the run lock).
    pub(crate) enabled: bool,
    /// How long at most (tests set it longer, or zero).
    pub(crate) at_most: std::time::Duration,
    /// Committed changes not yet in `domain_tally`.
    domains: HashMap<String, Vec<(&'static str, i64)>>,
    /// [`BEHIND_META`] is set on disk (by this store).
    flagged: bool,
    /// When `domain_tally` last caught up.
    since: std::time::Instant,
    /// The next hot commit writes everything ([`Behind::due`]).
    write_next: bool,
}

/// What [`Behind::stage`] wrote in the open transaction, for
/// [`Behind::committed`] once it commits.
#[derive(Debug)]
pub(crate) enum Staged {
    /// Everything kept back and this commit's changes were written.
    Written,
    /// This commit's changes are kept back (flag set in the transaction).
    Kept(HashMap<String, Vec<(&'static str, i64)>>),
}

impl Default for Behind {
    fn default() -> Self {
        let at_most = std::env::var(BEHIND_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(BEHIND_AT_MOST, std::time::Duration::from_millis);
        Behind {
            enabled: false,
            at_most,
            domains: HashMap::new(),
            flagged: false,
            since: std::time::Instant::now(),
            write_next: false,
        }
    }
}

impl Behind {
    /// Writes in the caller's (hot) transaction either everything kept
    /// back with `deltas`' domain changes, or only the flag, keeping the
    /// changes for later. Memory changes only in [`Behind::committed`], so
    /// a transaction rolled back leaves it as it was.
    pub(crate) fn stage(
        &self,
        tx: &rusqlite::Connection,
        path: &Path,
        deltas: &mut Deltas,
    ) -> Result<Staged> {
        let now = std::mem::take(&mut deltas.domains);
        let moved = now.values().flatten().any(|s| s.1 != 0);
        if !self.enabled || self.write_next || self.since.elapsed() >= self.at_most {
            if moved || self.flagged {
                write_domains(tx, path, self.domains.iter().chain(now.iter()))?;
            }
            if self.flagged {
                tx.prepare_cached("DELETE FROM meta WHERE key = ?1")
                    .at(path)?
                    .execute([BEHIND_META])
                    .at(path)?;
            }
            return Ok(Staged::Written);
        }
        if moved && !self.flagged {
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, '1')")
                .at(path)?
                .execute([BEHIND_META])
                .at(path)?;
        }
        Ok(Staged::Kept(now))
    }

    /// The transaction of [`Behind::stage`] committed.
    pub(crate) fn committed(&mut self, staged: Staged) {
        match staged {
            Staged::Written => {
                self.domains.clear();
                self.flagged = false;
                self.write_next = false;
                self.since = std::time::Instant::now();
            }
            Staged::Kept(now) => {
                // The keys move in: a domain already kept back allocates
                // nothing.
                for (domain, statuses) in now {
                    if statuses.iter().all(|s| s.1 == 0) {
                        continue;
                    }
                    self.flagged = true;
                    match self.domains.get_mut(&domain) {
                        Some(kept) => {
                            for (status, n) in statuses {
                                match kept.iter_mut().find(|s| s.0 == status) {
                                    Some(s) => s.1 += n,
                                    None => kept.push((status, n)),
                                }
                            }
                        }
                        None => {
                            self.domains.insert(domain, statuses);
                        }
                    }
                }
            }
        }
    }

    /// Nothing is kept back.
    pub(crate) fn is_empty(&self) -> bool {
        !self.flagged
    }

    /// The net change kept back for (`domain`, `status`).
    pub(crate) fn kept(&self, domain: &str, status: &str) -> i64 {
        self.domains
            .get(domain)
            .and_then(|v| v.iter().find(|s| s.0 == status))
            .map_or(0, |s| s.1)
    }

    /// Forgets what is kept back, as a crash does (tests).
    #[cfg(test)]
    pub(crate) fn lose(&mut self) {
        self.domains.clear();
        self.flagged = false;
    }

    /// Makes the next hot commit write everything.
    pub(crate) fn due(&mut self) {
        self.write_next = true;
    }
}

fn add_to(
    map: &mut HashMap<String, Vec<(&'static str, i64)>>,
    domain: &str,
    status: &'static str,
    n: i64,
) {
    let statuses = match map.get_mut(domain) {
        Some(v) => v,
        None => map.entry(domain.to_string()).or_default(),
    };
    match statuses.iter_mut().find(|s| s.0 == status) {
        Some(s) => s.1 += n,
        None => statuses.push((status, n)),
    }
}

/// Counts `domain_tally` again from the rows and clears [`BEHIND_META`]:
/// what a writer that died kept back in memory is lost, the rows are not.
pub(crate) fn recount_domains(conn: &rusqlite::Connection, path: &Path) -> Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DELETE FROM domain_tally;
         INSERT INTO domain_tally (domain, status, n)
             SELECT domain, {DOMAIN_STATUS_SQL}, count(*) FROM recipients GROUP BY 1, 2;
         DELETE FROM meta WHERE key = '{BEHIND_META}';
         COMMIT;"
    ))
    .at(path)
}

/// The status a row is counted under in `domain_tally`: those
/// [`crate::Store::domain_counts`] shows, and `other`.
pub(crate) fn domain_status(status: &str) -> &'static str {
    match status {
        "sent" => "sent",
        "failed" => "failed",
        "deferred" => "deferred",
        _ => "other",
    }
}

/// The same as SQL, for counting from the rows ([`RECOUNT`]).
pub(crate) const DOMAIN_STATUS_SQL: &str =
    "CASE WHEN status IN ('sent', 'failed', 'deferred') THEN status ELSE 'other' END";

/// Takes out of `deltas` the rows matching `filter` (a WHERE term over
/// `recipients`, with `args`), as they are now: call it just before an
/// UPDATE with the same WHERE in the same transaction, whose `RETURNING`
/// rows [`returned`] puts back with their new keys.
pub(crate) fn take_out_where(
    tx: &Transaction<'_>,
    path: &Path,
    deltas: &mut Deltas,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<()> {
    let mut st = tx
        .prepare(&format!(
            "SELECT status, coalesce(category, ''), in_doubt, domain, count(*)
             FROM recipients WHERE {filter} GROUP BY 1, 2, 3, 4"
        ))
        .at(path)?;
    let mut rows = st.query(args).at(path)?;
    while let Some(r) = rows.next().at(path)? {
        let status: String = r.get(0).at(path)?;
        let category: String = r.get(1).at(path)?;
        let in_doubt: bool = r.get(2).at(path)?;
        let domain: String = r.get(3).at(path)?;
        let n: i64 = r.get(4).at(path)?;
        deltas.add((&status, &category, in_doubt), &domain, -n);
    }
    Ok(())
}

/// The `RETURNING` clause whose rows [`returned`] reads.
pub(crate) const RETURNING: &str = "RETURNING status, coalesce(category, ''), in_doubt, domain";

/// Counts the rows an `UPDATE … RETURNING` ([`RETURNING`]) changed, with
/// their new keys. Returns how many.
pub(crate) fn returned(
    path: &Path,
    deltas: &mut Deltas,
    mut rows: rusqlite::Rows<'_>,
) -> Result<u64> {
    let mut n = 0;
    while let Some(r) = rows.next().at(path)? {
        let status: String = r.get(0).at(path)?;
        let category: String = r.get(1).at(path)?;
        let in_doubt: bool = r.get(2).at(path)?;
        let domain: String = r.get(3).at(path)?;
        deltas.add((&status, &category, in_doubt), &domain, 1);
        n += 1;
    }
    Ok(n)
}

/// Counts the tallies again from the rows: schema version 7 does it once,
/// so a file whose triggers were dropped starts from right counts whatever
/// an older build left (and `domain_tally` with [`domain_status`]).
pub(crate) fn recount() -> String {
    format!(
        "DELETE FROM tally;
         INSERT INTO tally (status, category, in_doubt, n)
             SELECT status, coalesce(category, ''), in_doubt, count(*) FROM recipients
             GROUP BY 1, 2, 3;
         DELETE FROM domain_tally;
         INSERT INTO domain_tally (domain, status, n)
             SELECT domain, {DOMAIN_STATUS_SQL}, count(*) FROM recipients GROUP BY 1, 2;"
    )
}
