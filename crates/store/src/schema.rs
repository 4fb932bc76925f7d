//! The schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Counting 10M rows on every `edm status` would scan the table, so two small
//! tally tables are kept up to date: `tally` (status, category, in-doubt flag)
//! and `domain_tally` (domain, status: `sent`, `failed`, `deferred` or `other`
//! since version 7). Up to version 6 triggers kept them;
//! from version 7 the statements that change rows do (`tally.rs`), and every
//! such statement must report its rows' old and new keys.

use std::path::Path;

use rusqlite::Connection;

use crate::error::{AtPath, Error, Result};

/// The schema version this build writes.
pub(crate) const VERSION: i64 = 9;

/// The statuses a claim reads from; the claim index holds only these rows, so
/// it stays small however many recipients are final. Queries that want the
/// index repeat this exact term (SQLite uses a partial index only when the
/// query's WHERE contains the index's WHERE terms).
///
/// Written with `OR`, not `IN (...)`: SQLite evaluates a partial index's
/// WHERE for the old and the new row of every UPDATE, and codes an `IN` list
/// of three or more constants as an ephemeral table built at each execution
/// (`sqlite3FindInIndex`: only lists of at most two become comparisons).
/// That was two temporary b-trees per claim and per outcome, about a third
/// of the writer thread's instructions (issue 11, docs/benchmarks.md).
/// [`v6_claim_index`] rebuilds the index of older files with this term.
pub(crate) const ACTIVE: &str = "(status = 'pending' OR status = 'deferred' OR status = 'sending')";

/// The statuses shown in failure views, with their own partial index.
pub(crate) const FAILING: &str = "status IN ('failed','deferred')";

pub(crate) const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE recipients (
    id               INTEGER PRIMARY KEY,
    line             INTEGER NOT NULL,
    email            TEXT NOT NULL,
    email_norm       TEXT NOT NULL,
    domain           TEXT NOT NULL,
    fields           TEXT NOT NULL,          -- JSON array of values in header order
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,                -- set iff status is deferred (kept while sending)
    category         TEXT,
    stage            TEXT,
    smtp_code        INTEGER,
    enhanced_code    TEXT,
    reply            TEXT,
    message_id       TEXT,
    in_doubt         INTEGER NOT NULL DEFAULT 0,
    duplicate_of     INTEGER,                -- line of the first occurrence
    first_attempt_at INTEGER,
    last_attempt_at  INTEGER,
    prev_attempt_at  INTEGER,                -- last_attempt_at before the claim, restored on release
    updated_at       INTEGER NOT NULL
);

-- claim: pending by id (next_attempt_at IS NULL), then deferred by due time.
CREATE INDEX recipients_claim ON recipients (status, next_attempt_at, id)
    WHERE status IN ('pending','deferred','sending');
CREATE INDEX recipients_email ON recipients (email_norm);
-- export streams in line order.
CREATE INDEX recipients_line ON recipients (line);
-- sent_since (daily quota).
CREATE INDEX recipients_sent_at ON recipients (last_attempt_at) WHERE status = 'sent';
-- recent_failures, top_replies.
CREATE INDEX recipients_failing ON recipients (updated_at)
    WHERE status IN ('failed','deferred');

CREATE TABLE events (
    id   INTEGER PRIMARY KEY,
    at   INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
);

CREATE TABLE tally (
    status   TEXT NOT NULL,
    category TEXT NOT NULL,                  -- '' for none
    in_doubt INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (status, category, in_doubt)
) WITHOUT ROWID;

CREATE TABLE domain_tally (
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (domain, status)
) WITHOUT ROWID;

CREATE TRIGGER recipients_tally_insert AFTER INSERT ON recipients BEGIN
    INSERT INTO tally (status, category, in_doubt, n)
        VALUES (NEW.status, coalesce(NEW.category, ''), NEW.in_doubt, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
    INSERT INTO domain_tally (domain, status, n) VALUES (NEW.domain, NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER recipients_tally_delete AFTER DELETE ON recipients BEGIN
    UPDATE tally SET n = n - 1
        WHERE status = OLD.status AND category = coalesce(OLD.category, '')
          AND in_doubt = OLD.in_doubt;
    UPDATE domain_tally SET n = n - 1 WHERE domain = OLD.domain AND status = OLD.status;
END;

CREATE TRIGGER recipients_tally_update AFTER UPDATE OF status, category, in_doubt ON recipients
WHEN OLD.status IS NOT NEW.status OR OLD.category IS NOT NEW.category
  OR OLD.in_doubt IS NOT NEW.in_doubt
BEGIN
    UPDATE tally SET n = n - 1
        WHERE status = OLD.status AND category = coalesce(OLD.category, '')
          AND in_doubt = OLD.in_doubt;
    INSERT INTO tally (status, category, in_doubt, n)
        VALUES (NEW.status, coalesce(NEW.category, ''), NEW.in_doubt, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER recipients_domain_tally_update AFTER UPDATE OF status, domain ON recipients
WHEN OLD.status IS NOT NEW.status OR OLD.domain IS NOT NEW.domain
BEGIN
    UPDATE domain_tally SET n = n - 1 WHERE domain = OLD.domain AND status = OLD.status;
    INSERT INTO domain_tally (domain, status, n) VALUES (NEW.domain, NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
";

/// Version 2: every row knows which ingest pass stored it (`generation`), and
/// the database refuses a second copy of a record at the same source position
/// (issue 9: an interrupted ingest read the file again from line 1 and stored
/// its first rows twice).
///
/// The key is `(generation, line)`, not `line`: `--accept-changes` ingests a
/// changed file whose line numbers overlap the first one's, in a new
/// generation. Duplicate *addresses* (status `skipped`, "duplicate of line N")
/// sit on lines of their own, so the key never refuses them. Copies already
/// stored by older builds are marked (`copy_of`) and left out of the key by
/// [`repair_copies`] before the index is built.
pub(crate) const V2_COLUMNS: &str = "
ALTER TABLE recipients ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recipients ADD COLUMN copy_of INTEGER;   -- id of the row this one repeats
";

pub(crate) const V2_INDEX: &str = "
CREATE UNIQUE INDEX recipients_source ON recipients (generation, line)
    WHERE copy_of IS NULL;
";

/// Version 3: the durable marks before a final dot (issue 10 point 6): the
/// ids of recipients whose transaction may reach its final dot, written
/// (group-committed) before it and cleared with the outcome; empty between
/// runs. Builds between version 2 and this one created the table at every
/// open, outside the migrations: `IF NOT EXISTS` keeps such a file's table
/// (and any marks a crash left in it, which the next run must still see).
pub(crate) const V3: &str = "CREATE TABLE IF NOT EXISTS dot_marks (id INTEGER PRIMARY KEY);";

/// Version 4: which relay sent a recipient's message and the id its
/// provider gave it (issue 12: Amazon SES replaces the Message-ID and
/// returns its own MessageId, the only handle on bounces and complaints).
pub(crate) const V4: &str = "
ALTER TABLE recipients ADD COLUMN relay TEXT;
ALTER TABLE recipients ADD COLUMN provider_message_id TEXT;
";

/// Version 5: late outcomes (issue 13): what bounces and complaints said
/// after a recipient was `sent`. The status stays `sent` (the daily quota
/// counts what was sent, and a bounce does not unsend it); `late` is
/// `bounced` or `complained`, `soft_bounces` counts delays in a row. Each
/// applied message's identity is kept in `late_applied`, so reading a
/// mailbox twice applies nothing twice; messages that matched no recipient
/// are listed in `late_unmatched` (`edm bounces --unmatched`). Bounces are
/// tied back by Message-ID, or by the provider's id where the provider
/// replaced it (Amazon SES), hence their indexes.
pub(crate) const V5: &str = "
ALTER TABLE recipients ADD COLUMN late TEXT;              -- 'bounced' | 'complained'
ALTER TABLE recipients ADD COLUMN late_at INTEGER;
ALTER TABLE recipients ADD COLUMN late_status TEXT;       -- RFC 3463 status
ALTER TABLE recipients ADD COLUMN late_diagnostic TEXT;
ALTER TABLE recipients ADD COLUMN soft_bounces INTEGER NOT NULL DEFAULT 0;
CREATE INDEX recipients_message_id ON recipients (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX recipients_provider_message_id ON recipients (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX recipients_late ON recipients (late, soft_bounces)
    WHERE late IS NOT NULL OR soft_bounces > 0;
CREATE TABLE late_applied (
    key       TEXT PRIMARY KEY,
    recipient INTEGER NOT NULL,
    at        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE late_unmatched (
    key     TEXT PRIMARY KEY,
    at      INTEGER NOT NULL,
    summary TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 6 (issue 11, performance): the claim index with its WHERE term
/// as [`ACTIVE`] now writes it, without an `IN` list, so updating a row no
/// longer builds temporary b-trees. Same columns, same rows, same plans.
/// Index only, no data change.
pub(crate) fn v6_claim_index() -> String {
    format!(
        "DROP INDEX IF EXISTS recipients_claim;
         CREATE INDEX recipients_claim ON recipients (status, next_attempt_at, id)
             WHERE {ACTIVE};"
    )
}

/// Version 7 (issue 11, performance): the tallies are kept by the store's
/// statements (`tally.rs`), not by triggers, which cost two trigger programs
/// per status change. The triggers are dropped and the tallies counted once
/// from the rows, so they are right whatever an older build left. A build
/// of version 6 or older refuses this file (`SchemaTooNew`): it would change
/// rows without keeping the counts.
fn v7_tallies_without_triggers() -> String {
    format!(
        "DROP TRIGGER IF EXISTS recipients_tally_insert;
         DROP TRIGGER IF EXISTS recipients_tally_delete;
         DROP TRIGGER IF EXISTS recipients_tally_update;
         DROP TRIGGER IF EXISTS recipients_domain_tally_update;
         {}",
        crate::tally::recount()
    )
}

/// Version 8 (issue 11, performance): a run no longer inserts each sent
/// recipient's Message-ID into an index as it goes. The Message-IDs are
/// hashes (crates/template, `message_id.rs`), so each insert into
/// `recipients_message_id` landed on a random leaf and each batch of
/// outcomes wrote about one index page per message: 1.24 of the 2.32 WAL
/// frames per message of a 20,000-message run (docs/benchmarks.md). The
/// index is replaced by the table `message_ids` (Message-ID, id); a `sent`
/// outcome appends its id to `mid_pending` (in id order: one page per
/// batch), and [`crate::Store::index_message_ids`] moves them into
/// `message_ids`, sorted, in one transaction at the end of a run (or at the
/// start of the next, after a crash). Lookups read both
/// ([`crate::Store::find_by_message_id`]) and check the row's current
/// Message-ID, so they answer as the index did.
pub(crate) const V8: &str = "
CREATE TABLE message_ids (
    message_id TEXT NOT NULL,
    id         INTEGER NOT NULL,
    PRIMARY KEY (message_id, id)
) WITHOUT ROWID;
CREATE TABLE mid_pending (id INTEGER PRIMARY KEY);
INSERT INTO message_ids (message_id, id)
    SELECT message_id, id FROM recipients WHERE message_id IS NOT NULL ORDER BY 1, 2;
DROP INDEX IF EXISTS recipients_message_id;
";

/// Version 9 (issue 11): `message_ids` gives way to `message_keys`, keyed
/// by the first 16 characters of the Message-ID (64 bits of
/// its hash, for the ids edm makes) instead of all ~55. Each move of a run's
/// sent ids is a sorted pass over the whole table, so the table's size is
/// what each pass rewrites: at 1M recipients a pass took ~0.6 s of the
/// writer's time, 2.5× less with the short key (docs/benchmarks.md). A
/// lookup reads the rows of the key and checks each row's Message-ID, so a
/// shared prefix costs a few more reads, never a wrong answer.
pub(crate) const V9: &str = "
CREATE TABLE message_keys (
    k  TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (k, id)
) WITHOUT ROWID;
INSERT INTO message_keys (k, id)
    SELECT substr(message_id, 1, 16), id FROM message_ids ORDER BY 1, 2;
DROP TABLE message_ids;
";

/// Reads `PRAGMA user_version`.
pub(crate) fn version(conn: &Connection, path: &Path) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .at(path)
}

/// What [`migrate`] found and did.
#[derive(Debug, Default)]
pub(crate) struct Migrated {
    /// The store was created (version 0 before).
    pub(crate) created: bool,
}

/// Brings the schema up to [`VERSION`], one step per transaction.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<Migrated> {
    let found = version(conn, path)?;
    if found > VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: VERSION,
        });
    }
    for from in found..VERSION {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .at(path)?;
        // Another writer may have migrated between our read and our lock.
        let now: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .at(path)?;
        if now != from {
            continue;
        }
        match from {
            0 => tx.execute_batch(V1).at(path)?,
            1 => {
                tx.execute_batch(V2_COLUMNS).at(path)?;
                repair_copies(&tx, path)?;
                tx.execute_batch(V2_INDEX).at(path)?;
            }
            2 => tx.execute_batch(V3).at(path)?,
            3 => tx.execute_batch(V4).at(path)?,
            4 => tx.execute_batch(V5).at(path)?,
            5 => tx.execute_batch(&v6_claim_index()).at(path)?,
            6 => tx.execute_batch(&v7_tallies_without_triggers()).at(path)?,
            7 => tx.execute_batch(V8).at(path)?,
            8 => tx.execute_batch(V9).at(path)?,
            // Future steps: `9 => tx.execute_batch(V10)?`, ...
            _ => unreachable!("no migration from version {from}"),
        }
        tx.pragma_update(None, "user_version", from + 1).at(path)?;
        tx.commit().at(path)?;
    }
    Ok(Migrated {
        created: found == 0,
    })
}

/// Finds records that an interrupted ingest of an older build stored more
/// than once (same line, same address, same values) and keeps one of each:
/// the one furthest along (sent, then being sent or in doubt, failed,
/// deferred, pending; the first stored on a tie). The others become
/// `skipped`, with `copy_of` pointing at the kept row and a reason that says
/// what they were. Rows on the same line with other contents come from
/// `--accept-changes` (a changed file): each gets a generation of its own.
///
/// Also logs one event, so the repair is said once. Returns how many copies.
fn repair_copies(tx: &rusqlite::Transaction<'_>, path: &Path) -> Result<u64> {
    let lines: Vec<i64> = {
        let mut st = tx
            .prepare("SELECT line FROM recipients GROUP BY line HAVING count(*) > 1")
            .at(path)?;
        st.query_map([], |r| r.get(0))
            .at(path)?
            .collect::<rusqlite::Result<_>>()
            .at(path)?
    };
    let now = edm_model::now_ms();
    let mut rows = tx
        .prepare(
            "SELECT id, email_norm, fields, status FROM recipients WHERE line = ?1 ORDER BY id",
        )
        .at(path)?;
    let mut set_generation = tx
        .prepare("UPDATE recipients SET generation = ?2 WHERE id = ?1")
        .at(path)?;
    let mut mark_copy = tx
        .prepare(
            "UPDATE recipients SET status = 'skipped', copy_of = ?2, category = NULL,
                 next_attempt_at = NULL, reply = ?3, updated_at = ?4
             WHERE id = ?1",
        )
        .at(path)?;
    let mut repaired = 0u64;
    for line in lines {
        type Raw = (i64, String, String, String);
        let found: Vec<Raw> = rows
            .query_map([line], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .at(path)?
            .collect::<rusqlite::Result<_>>()
            .at(path)?;
        // Groups of identical records, in the order their first copy was stored.
        let mut groups: Vec<Vec<&Raw>> = Vec::new();
        for row in &found {
            match groups
                .iter_mut()
                .find(|g| g[0].1 == row.1 && g[0].2 == row.2)
            {
                Some(g) => g.push(row),
                None => groups.push(vec![row]),
            }
        }
        for (generation, group) in groups.iter().enumerate() {
            let keep = group
                .iter()
                .min_by_key(|r| (progress_rank(&r.3), r.0))
                .map(|r| r.0)
                .unwrap_or(group[0].0);
            for row in group {
                set_generation
                    .execute(rusqlite::params![row.0, generation as i64])
                    .at(path)?;
                if row.0 != keep {
                    let reason = format!(
                        "extra copy of line {line} stored by an interrupted ingest (was {})",
                        row.3
                    );
                    mark_copy
                        .execute(rusqlite::params![row.0, keep, reason, now])
                        .at(path)?;
                    repaired += 1;
                }
            }
        }
    }
    if repaired > 0 {
        tx.execute(
            "INSERT INTO events (at, kind, text) VALUES (?1, 'repaired', ?2)",
            rusqlite::params![
                now,
                format!(
                    "{repaired} extra copies of recipients, stored twice by an interrupted ingest, \
                     were marked skipped (edm report --all shows them)"
                )
            ],
        )
        .at(path)?;
        // Whichever command opened the store first (`edm retry`, say), the
        // next `edm send` tells the operator: see `Store::take_repair_notice`.
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('repair.unannounced', ?1)",
            [repaired.to_string()],
        )
        .at(path)?;
    }
    Ok(repaired)
}

/// Which copy of a record to keep: the one a run went furthest with.
fn progress_rank(status: &str) -> u8 {
    match status {
        "sent" => 0,
        "sending" | "in_doubt" => 1,
        "failed" => 2,
        "deferred" => 3,
        "pending" => 4,
        _ => 5,
    }
}

/// Checks a store opened read-only: it must exist and not be too new.
pub(crate) fn check_readable(conn: &Connection, path: &Path) -> Result<()> {
    match version(conn, path)? {
        0 => Err(Error::NotACampaign {
            path: path.to_path_buf(),
        }),
        v if v > VERSION => Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: v,
            supported: VERSION,
        }),
        _ => Ok(()),
    }
}
