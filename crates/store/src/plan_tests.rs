//! The hot queries must use their indexes, never scan or sort the table:
//! checked with `EXPLAIN QUERY PLAN` so a schema change cannot silently
//! turn `claim` into a 10M-row scan.

use crate::schema::{ACTIVE, FAILING};
use crate::{Durability, Store};

fn plan(store: &Store, sql: &str) -> String {
    let mut st = store
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap();
    let rows = st
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows.join(" | ")
}

fn assert_indexed(store: &Store, sql: &str, index: &str) {
    let p = plan(store, sql);
    assert!(p.contains(index), "{sql}\nplan: {p}");
    assert!(!p.contains("TEMP B-TREE"), "{sql}\nplan sorts: {p}");
    // "SCAN recipients USING INDEX x" walks a (partial) index in order and
    // stops at the LIMIT; a bare "SCAN recipients" reads the whole table.
    assert!(
        !p.split(" | ").any(|step| step == "SCAN recipients"),
        "{sql}\nplan scans: {p}"
    );
}

#[test]
fn hot_queries_use_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("c.db"), Durability::Normal).unwrap();
    let [pending, due] = crate::write::claim_sqls();
    assert_indexed(&store, &pending.replace("?1", "64"), "recipients_claim");
    assert_indexed(
        &store,
        &due.replace("?1", "0").replace("?2", "64"),
        "recipients_claim",
    );
    assert_indexed(
        &store,
        &format!(
            "SELECT min(next_attempt_at) FROM recipients WHERE {ACTIVE} AND status = 'deferred'"
        ),
        "recipients_claim",
    );
    assert_indexed(
        &store,
        "SELECT count(*) FROM recipients WHERE status = 'sent' AND last_attempt_at >= 0",
        "recipients_sent_at",
    );
    assert_indexed(
        &store,
        &format!(
            "SELECT email FROM recipients WHERE {FAILING} ORDER BY updated_at DESC, id DESC LIMIT 5"
        ),
        "recipients_failing",
    );
    assert_indexed(
        &store,
        &format!("UPDATE recipients SET status = 'pending' WHERE {ACTIVE} AND status = 'sending'"),
        "recipients_claim",
    );
    assert_indexed(
        &store,
        "SELECT line FROM recipients WHERE 1 ORDER BY line, id",
        "recipients_line",
    );
    // A new ingest pass's generation: one lookup, however big the list.
    assert_indexed(
        &store,
        crate::ingest::MAX_GENERATION_SQL,
        "recipients_source",
    );
}

/// The opcodes of a statement's program (triggers' sub-programs included).
fn opcodes(store: &Store, sql: &str) -> Vec<String> {
    let mut st = store.conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
    st.query_map([], |r| r.get::<_, String>(1))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Every claim and every outcome updates a row's status, so SQLite checks
/// the partial indexes' WHERE terms for the old and the new row: an `IN`
/// list of three constants there built two temporary b-trees per UPDATE
/// (issue 11: a third of the writer thread's instructions). And since
/// schema version 7 no trigger program runs either: the tallies are kept
/// by the store's statements (`tally.rs`).
#[test]
fn updating_a_rows_status_builds_no_temporary_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db"), Durability::Normal).unwrap();
    for sql in [
        "UPDATE recipients SET status = 'sending', last_attempt_at = 1 WHERE id = 1",
        "UPDATE recipients SET status = 'sent', attempts = attempts + 1 WHERE id = 1",
        "UPDATE recipients SET status = 'deferred', next_attempt_at = 5 WHERE id = 1",
    ] {
        let ops = opcodes(&store, sql);
        assert!(
            !ops.iter().any(|o| o == "Program"),
            "{sql}: a trigger runs: {ops:?}"
        );
        assert!(
            !ops.iter().any(|o| o == "OpenEphemeral"),
            "{sql} builds a temporary table: {ops:?}"
        );
    }
}

/// The batched statements of issue 11 look each key up, never scan: the
/// claim's range UPDATE walks the claim index, a Message-ID lookup reads
/// `message_keys` by its key.
#[test]
fn batched_statements_look_up_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("b.db"), Durability::Normal).unwrap();
    let p = plan(
        &store,
        &crate::write::claim_pending_range_sql()
            .replace("?1", "64")
            .replace("?2", "1"),
    );
    assert!(p.contains("recipients_claim"), "claim range: {p}");
    let p = plan(
        &store,
        "SELECT r.id FROM message_keys AS m CROSS JOIN recipients AS r ON r.id = m.id
         WHERE m.k = substr('x', 1, 16) AND r.message_id = 'x'",
    );
    assert!(
        p.contains("SEARCH m USING PRIMARY KEY (k=?)"),
        "message ids: {p}"
    );
}
