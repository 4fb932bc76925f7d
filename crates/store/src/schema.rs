//! The schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Counting 10M rows on every `edm status` would scan the table, so two small
//! tally tables are kept up to date by triggers: `tally` (status, category,
//! in-doubt flag) and `domain_tally` (domain, status). Triggers keep them right
//! whatever statement changes a row, bulk updates included.

use std::path::Path;

use rusqlite::Connection;

use crate::error::{AtPath, Error, Result};

/// The schema version this build writes.
pub(crate) const VERSION: i64 = 1;

/// The statuses a claim reads from; the claim index holds only these rows, so
/// it stays small however many recipients are final. Queries that want the
/// index repeat this exact term (SQLite uses a partial index only when the
/// query's WHERE contains the index's WHERE terms).
pub(crate) const ACTIVE: &str = "status IN ('pending','deferred','sending')";

/// The statuses shown in failure views, with their own partial index.
pub(crate) const FAILING: &str = "status IN ('failed','deferred')";

const V1: &str = "
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

/// Reads `PRAGMA user_version`.
pub(crate) fn version(conn: &Connection, path: &Path) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .at(path)
}

/// Brings the schema up to [`VERSION`], one step per transaction.
///
/// Returns true when the store was created (version 0 before).
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<bool> {
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
            // Future steps: `1 => tx.execute_batch(V2)?`, ...
            _ => unreachable!("no migration from version {from}"),
        }
        tx.pragma_update(None, "user_version", from + 1).at(path)?;
        tx.commit().at(path)?;
    }
    Ok(found == 0)
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
