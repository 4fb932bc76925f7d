//! The PostgreSQL schema: one schema `edm` per installation holding many
//! campaigns, and its versioned migrations.
//!
//! Every table carries `campaign_id` (a row of `edm.campaigns`, identified by
//! name and fingerprint). Migrations run in one transaction under a
//! transaction-level advisory lock, so two `edm` processes starting at once
//! never both migrate: the second waits, then finds the versions applied.
//! Applied versions are rows of `edm.schema_migrations`.
//!
//! Tallies are kept by a trigger, as in SQLite (`schema.rs`): `edm status`
//! on ten million rows reads a few tally rows, never the table. The claim
//! columns `claimed_by` and `lease_until` are here from version 1 so that
//! several workers (leases that expire when a worker dies) need no
//! migration.

use std::path::Path;

use postgres::Client;

use super::conn::AtPg;
use crate::error::{Error, Result};

/// The schema version this build writes.
pub(crate) const VERSION: i32 = 4;

/// The advisory lock key of migrations (`pg_advisory_xact_lock(bigint)`):
/// "edm-mig" in ASCII, so it is recognisable in `pg_locks`.
pub(crate) const MIGRATION_LOCK: i64 = 0x0065_646d_2d6d_6967;

/// The first key of a campaign's ingest lock (`pg_advisory_lock(int, int)`,
/// the second key is the campaign's id): "edi" in ASCII. Workers starting
/// together ingest once: the others wait on it, then find the rows.
pub(crate) const INGEST_LOCK_CLASS: i32 = 0x0065_6469;

/// The first key of a campaign's quota lock (the second is its id): "edq".
/// Workers of a campaign with a daily quota claim one after the other.
pub(crate) const QUOTA_LOCK_CLASS: i32 = 0x0065_6471;

pub(super) const V1: &str = r#"
CREATE TABLE edm.campaigns (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    fingerprint text NOT NULL,
    created_at  bigint NOT NULL,
    UNIQUE (name, fingerprint)
);

CREATE TABLE edm.meta (
    campaign_id bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    key         text NOT NULL,
    value       text NOT NULL,
    PRIMARY KEY (campaign_id, key)
);

CREATE TABLE edm.recipients (
    id                  bigserial PRIMARY KEY,
    campaign_id         bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    generation          bigint NOT NULL,
    line                bigint NOT NULL,
    email               text NOT NULL,
    email_norm          text NOT NULL,
    domain              text NOT NULL,
    fields              text NOT NULL,     -- JSON array of values in header order
    status              text NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     bigint,            -- set iff deferred (kept while sending)
    category            text,
    stage               text,
    smtp_code           integer,
    enhanced_code       text,
    reply               text,
    message_id          text,
    in_doubt            boolean NOT NULL DEFAULT false,
    duplicate_of        bigint,
    first_attempt_at    bigint,
    last_attempt_at     bigint,
    prev_attempt_at     bigint,
    updated_at          bigint NOT NULL,
    relay               text,
    provider_message_id text,
    claimed_by          text,              -- the worker that claimed it (sending)
    lease_until         bigint,            -- when that claim lapses (several workers)
    -- The database refuses a second copy of a record (see crate::ingest).
    UNIQUE (campaign_id, generation, line)
);

CREATE INDEX recipients_claim ON edm.recipients (campaign_id, status, next_attempt_at, id)
    WHERE status IN ('pending', 'deferred', 'sending');
CREATE INDEX recipients_line ON edm.recipients (campaign_id, line, id);
CREATE INDEX recipients_sent_at ON edm.recipients (campaign_id, last_attempt_at)
    WHERE status = 'sent';
CREATE INDEX recipients_failing ON edm.recipients (campaign_id, updated_at)
    WHERE status IN ('failed', 'deferred');

CREATE TABLE edm.events (
    id          bigserial PRIMARY KEY,
    campaign_id bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    at          bigint NOT NULL,
    kind        text NOT NULL,
    text        text NOT NULL
);
CREATE INDEX events_campaign ON edm.events (campaign_id, id);

CREATE TABLE edm.dot_marks (
    id          bigint PRIMARY KEY,
    campaign_id bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE
);

CREATE TABLE edm.tally (
    campaign_id bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    status      text NOT NULL,
    category    text NOT NULL,             -- '' for none
    in_doubt    boolean NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (campaign_id, status, category, in_doubt)
);

CREATE TABLE edm.domain_tally (
    campaign_id bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    domain      text NOT NULL,
    status      text NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (campaign_id, domain, status)
);

CREATE FUNCTION edm.recipients_tally() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t_changed boolean := true;
    d_changed boolean := true;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        t_changed := OLD.status IS DISTINCT FROM NEW.status
            OR OLD.category IS DISTINCT FROM NEW.category
            OR OLD.in_doubt IS DISTINCT FROM NEW.in_doubt;
        d_changed := OLD.status IS DISTINCT FROM NEW.status
            OR OLD.domain IS DISTINCT FROM NEW.domain;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        IF t_changed THEN
            UPDATE edm.tally SET n = n - 1
             WHERE campaign_id = OLD.campaign_id AND status = OLD.status
               AND category = coalesce(OLD.category, '') AND in_doubt = OLD.in_doubt;
        END IF;
        IF d_changed THEN
            UPDATE edm.domain_tally SET n = n - 1
             WHERE campaign_id = OLD.campaign_id AND domain = OLD.domain
               AND status = OLD.status;
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF t_changed THEN
            INSERT INTO edm.tally (campaign_id, status, category, in_doubt, n)
                 VALUES (NEW.campaign_id, NEW.status, coalesce(NEW.category, ''), NEW.in_doubt, 1)
            ON CONFLICT (campaign_id, status, category, in_doubt)
                DO UPDATE SET n = edm.tally.n + 1;
        END IF;
        IF d_changed THEN
            INSERT INTO edm.domain_tally (campaign_id, domain, status, n)
                 VALUES (NEW.campaign_id, NEW.domain, NEW.status, 1)
            ON CONFLICT (campaign_id, domain, status)
                DO UPDATE SET n = edm.domain_tally.n + 1;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER recipients_tally AFTER INSERT OR UPDATE OR DELETE ON edm.recipients
    FOR EACH ROW EXECUTE FUNCTION edm.recipients_tally();
"#;

/// Version 2: late outcomes (issue 13), as SQLite's schema V5 (`schema.rs`
/// says why each column is there): bounces and complaints applied to
/// recipients already `sent`, whose status stays `sent`. `late_applied`
/// keeps each applied message's key per campaign, so reading a mailbox
/// twice applies nothing twice; `late_unmatched` lists the messages that
/// matched no recipient. Bounces are tied back by Message-ID or by the
/// provider's id, hence their indexes.
const V2: &str = r#"
ALTER TABLE edm.recipients
    ADD COLUMN late            text,       -- 'bounced' | 'complained'
    ADD COLUMN late_at         bigint,
    ADD COLUMN late_status     text,       -- RFC 3463 status
    ADD COLUMN late_diagnostic text,
    ADD COLUMN soft_bounces    integer NOT NULL DEFAULT 0;
CREATE INDEX recipients_message_id ON edm.recipients (campaign_id, message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX recipients_provider_message_id ON edm.recipients (campaign_id, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX recipients_late ON edm.recipients (campaign_id, late, soft_bounces)
    WHERE late IS NOT NULL OR soft_bounces > 0;
CREATE TABLE edm.late_applied (
    campaign_id bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    key         text NOT NULL,
    recipient   bigint NOT NULL,
    at          bigint NOT NULL,
    PRIMARY KEY (campaign_id, key)
);
CREATE TABLE edm.late_unmatched (
    campaign_id bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    key         text NOT NULL,
    at          bigint NOT NULL,
    summary     text NOT NULL,
    PRIMARY KEY (campaign_id, key)
);
"#;

/// Version 3: several `edm send` workers on one campaign (issue 14,
/// docs/scaling.md). One row per worker and campaign: its lease
/// (`lease_until`, on the database server's clock, renewed by the worker's
/// heartbeat), its figures for `edm status`, and `incarnation`, bumped each
/// time the name joins, so that a zombie of an earlier process of the same
/// name is told apart (its marks are refused). `throttle` is the worker's
/// effective/target rate ratio when its relay slows it (adaptive
/// throttling), which every worker applies. The index finds a worker's
/// claimed rows when its lease expired. `edm.controls` carries the
/// operator's pause and rate to every worker.
const V3: &str = r#"
CREATE TABLE edm.workers (
    campaign_id  bigint NOT NULL REFERENCES edm.campaigns ON DELETE CASCADE,
    name         text NOT NULL,
    pid          bigint NOT NULL,
    host         text NOT NULL,
    started_at   bigint NOT NULL,
    heartbeat_at bigint NOT NULL,
    lease_until  bigint NOT NULL,
    state        text NOT NULL,            -- 'running' | 'done' | 'dead'
    incarnation  bigint NOT NULL DEFAULT 1,
    sent         bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    in_flight    bigint NOT NULL DEFAULT 0,
    rate         double precision,         -- messages per second now
    share        double precision,         -- of the campaign's limits
    throttle     double precision,         -- effective / target, when throttled
    PRIMARY KEY (campaign_id, name)
);
CREATE INDEX recipients_claimed_by ON edm.recipients (campaign_id, claimed_by)
    WHERE status = 'sending';
-- The operator's pause and rate, from any worker's dashboard, for all:
-- each worker reads it at its heartbeat and applies a newer version.
CREATE TABLE edm.controls (
    campaign_id bigint PRIMARY KEY REFERENCES edm.campaigns ON DELETE CASCADE,
    version     bigint NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    rate_set    boolean NOT NULL DEFAULT false,
    rate        double precision,          -- NULL with rate_set: unlimited
    updated_at  bigint NOT NULL,
    by_worker   text NOT NULL
);
"#;

/// The first key of a campaign's tally lock (the second is its id): "edt",
/// 6644852 in [`V4`]'s trigger, which takes it (`pg_advisory_xact_lock`,
/// until the commit) before it touches a tally row. Rust only reads it in
/// tests (`pg_locks`).
#[cfg(test)]
pub(crate) const TALLY_LOCK_CLASS: i32 = 0x0065_6474;

/// Version 4: the tallies kept by statement-level triggers that take the
/// campaign's tally lock first.
///
/// Version 1's row trigger moved one count per changed row, from the old
/// (status, category, in doubt) and domain rows to the new ones: four
/// statements per row, and tally rows locked in the order of the changes,
/// so that two workers deadlocked (a claim locks `pending` then `sending`,
/// a release or a dead worker's recovery `sending` then `pending`, a due
/// retry `deferred` then `sending` against an outcome's `sending` then
/// `deferred`; PostgreSQL aborts one with 40P01, which stopped a worker's
/// run). Now one trigger per statement adds up the statement's moves from
/// its transition tables (`old_rows`, `new_rows`) and applies each net
/// change once, after taking the campaign's tally lock. Every status change
/// of a campaign already waited on its `sending` tally row, so the lock
/// costs no concurrency and gives one order. A statement that changes no
/// count (a Message-ID written, a late outcome on a `sent` row) takes no
/// lock and writes no tally row.
const V4: &str = r#"
DROP TRIGGER recipients_tally ON edm.recipients;
DROP FUNCTION edm.recipients_tally();

-- Each branch takes the tally lock of the campaigns it moves counts of
-- ("edt", TALLY_LOCK_CLASS in schema.rs; ids past 2^31 share the last key),
-- in id order, before it touches a tally row.
CREATE FUNCTION edm.tally_moves() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved boolean;
BEGIN
    -- Anything to count? An UPDATE that changed no counted column moves
    -- nothing (and then takes no lock).
    IF TG_OP = 'UPDATE' THEN
        SELECT EXISTS (
            SELECT 1 FROM old_rows o JOIN new_rows n ON n.id = o.id
             WHERE o.status IS DISTINCT FROM n.status
                OR o.category IS DISTINCT FROM n.category
                OR o.in_doubt IS DISTINCT FROM n.in_doubt
                OR o.domain IS DISTINCT FROM n.domain
                OR o.campaign_id IS DISTINCT FROM n.campaign_id) INTO moved;
        IF NOT moved THEN
            RETURN NULL;
        END IF;
        PERFORM pg_advisory_xact_lock(6644852, least(c, 2147483647)::int)
           FROM (SELECT DISTINCT campaign_id AS c FROM new_rows
                 UNION SELECT campaign_id FROM old_rows ORDER BY 1) l;
        WITH m AS (
            SELECT campaign_id, status, coalesce(category, '') AS category, in_doubt, -1 AS d
              FROM old_rows
            UNION ALL
            SELECT campaign_id, status, coalesce(category, ''), in_doubt, 1 FROM new_rows
        )
        INSERT INTO edm.tally AS t (campaign_id, status, category, in_doubt, n)
        SELECT campaign_id, status, category, in_doubt, sum(d) FROM m
         GROUP BY 1, 2, 3, 4 HAVING sum(d) <> 0 ORDER BY 1, 2, 3, 4
        ON CONFLICT (campaign_id, status, category, in_doubt)
            DO UPDATE SET n = t.n + excluded.n;
        WITH m AS (
            SELECT campaign_id, domain, status, -1 AS d FROM old_rows
            UNION ALL
            SELECT campaign_id, domain, status, 1 FROM new_rows
        )
        INSERT INTO edm.domain_tally AS t (campaign_id, domain, status, n)
        SELECT campaign_id, domain, status, sum(d) FROM m
         GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (campaign_id, domain, status) DO UPDATE SET n = t.n + excluded.n;
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_advisory_xact_lock(6644852, least(c, 2147483647)::int)
           FROM (SELECT DISTINCT campaign_id AS c FROM new_rows ORDER BY 1) l;
        INSERT INTO edm.tally AS t (campaign_id, status, category, in_doubt, n)
        SELECT campaign_id, status, coalesce(category, ''), in_doubt, count(*) FROM new_rows
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (campaign_id, status, category, in_doubt)
            DO UPDATE SET n = t.n + excluded.n;
        INSERT INTO edm.domain_tally AS t (campaign_id, domain, status, n)
        SELECT campaign_id, domain, status, count(*) FROM new_rows
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (campaign_id, domain, status) DO UPDATE SET n = t.n + excluded.n;
    ELSE
        -- Deleted rows only take counts away, from tally rows that exist:
        -- UPDATE, not INSERT, so that a campaign deleted with its rows (ON
        -- DELETE CASCADE) writes no row for a campaign that is gone.
        PERFORM pg_advisory_xact_lock(6644852, least(c, 2147483647)::int)
           FROM (SELECT DISTINCT campaign_id AS c FROM old_rows ORDER BY 1) l;
        UPDATE edm.tally t SET n = t.n - m.k
          FROM (SELECT campaign_id, status, coalesce(category, '') AS category, in_doubt,
                       count(*) AS k
                  FROM old_rows GROUP BY 1, 2, 3, 4) m
         WHERE t.campaign_id = m.campaign_id AND t.status = m.status
           AND t.category = m.category AND t.in_doubt = m.in_doubt;
        UPDATE edm.domain_tally t SET n = t.n - m.k
          FROM (SELECT campaign_id, domain, status, count(*) AS k
                  FROM old_rows GROUP BY 1, 2, 3) m
         WHERE t.campaign_id = m.campaign_id AND t.domain = m.domain AND t.status = m.status;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER recipients_tally_insert AFTER INSERT ON edm.recipients
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION edm.tally_moves();
CREATE TRIGGER recipients_tally_update AFTER UPDATE ON edm.recipients
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION edm.tally_moves();
CREATE TRIGGER recipients_tally_delete AFTER DELETE ON edm.recipients
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION edm.tally_moves();
"#;

/// Brings the `edm` schema up to [`VERSION`]: one transaction, under the
/// migration lock. Refuses a schema written by a newer edm.
pub(crate) fn migrate(client: &mut Client, path: &Path) -> Result<()> {
    let mut tx = client.transaction().at(path)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .at(path)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS edm;
         CREATE TABLE IF NOT EXISTS edm.schema_migrations (
             version    integer PRIMARY KEY,
             applied_at bigint NOT NULL
         );",
    )
    .at(path)?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM edm.schema_migrations",
            &[],
        )
        .at(path)?
        .get(0);
    if found > VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: i64::from(found),
            supported: i64::from(VERSION),
        });
    }
    for from in found..VERSION {
        match from {
            0 => tx.batch_execute(V1).at(path)?,
            1 => tx.batch_execute(V2).at(path)?,
            2 => tx.batch_execute(V3).at(path)?,
            3 => tx.batch_execute(V4).at(path)?,
            // Next steps: `4 => tx.batch_execute(V5)`, ...
            _ => unreachable!("no migration from version {from}"),
        }
        tx.execute(
            "INSERT INTO edm.schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&(from + 1), &edm_model::now_ms()],
        )
        .at(path)?;
    }
    tx.commit().at(path)
}
