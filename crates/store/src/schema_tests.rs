//! The version 3 migration: the durable marks' table, created by the
//! migrations rather than at every open.

use edm_model::{RecipientId, Status};
use rusqlite::{Connection, params};

use crate::schema::{V1, V2_COLUMNS, V2_INDEX, V3, V4, V5, VERSION, v6_claim_index};
use crate::{Durability, InDoubtPolicy, Store};

/// A version-2 file as the build of issue 9 left it: two rows being sent.
fn v2_store(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(V1).unwrap();
    conn.execute_batch(V2_COLUMNS).unwrap();
    conn.execute_batch(V2_INDEX).unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    for (line, email) in [(2, "a@example.com"), (3, "b@example.com")] {
        conn.execute(
            "INSERT INTO recipients (line, email, email_norm, domain, fields, status, updated_at)
             VALUES (?1, ?2, ?2, 'example.com', '[]', 'sending', 0)",
            params![line, email],
        )
        .unwrap();
    }
    conn
}

fn has_marks_table(store: &Store) -> bool {
    store
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'dot_marks'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        == 1
}

fn version(store: &Store) -> i64 {
    store
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_version_2_file_migrates_with_the_marks_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(v2_store(&path));
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(version(&store), VERSION);
    assert!(has_marks_table(&store));
    // The marks work: only the marked row is in doubt after a "crash".
    store.mark_in_flight(&[RecipientId(1)]).unwrap();
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 1);
    let s = store.summary().unwrap();
    assert_eq!((s.count(Status::InDoubt), s.count(Status::Pending)), (1, 1));
}

#[test]
fn a_file_already_holding_the_marks_table_migrates_and_keeps_its_marks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let conn = v2_store(&path);
    // What the build between versions 2 and 3 left after a kill -9: the
    // side table created at open, one mark, and the meta flag.
    conn.execute_batch(
        "CREATE TABLE dot_marks (id INTEGER PRIMARY KEY);
         INSERT INTO dot_marks (id) VALUES (2);
         INSERT INTO meta (key, value) VALUES ('dot_marks', '1');",
    )
    .unwrap();
    drop(conn);
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(version(&store), VERSION);
    assert!(has_marks_table(&store));
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 1);
    let s = store.summary().unwrap();
    assert_eq!((s.count(Status::InDoubt), s.count(Status::Pending)), (1, 1));
    // Reopening a version-3 file runs no step again.
    drop(store);
    let store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(version(&store), VERSION);
}

#[test]
fn relay_counts_of_a_file_before_version_4_read_as_it_is_are_empty() {
    // `edm status` reads an older file without migrating it: no `relay`
    // column yet, so nothing to count, and no error (issue 12's by_relay).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(v2_store(&path));
    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(version(&store), 2);
    assert!(store.relay_counts(0).unwrap().is_empty());
}

/// Version 5 (issue 13): a version-4 file with a sent recipient migrates,
/// the late outcome applies to it, and a version-4 file opened read-only
/// (`edm status` on a campaign an older edm is running) still reports.
#[test]
fn a_version_4_file_migrates_to_late_outcomes_and_reads_before_it() {
    use crate::{ExportFilter, LateApplied, LateCounts, LateKind, LateOutcome};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let conn = v2_store(&path);
    conn.execute_batch(crate::schema::V3).unwrap();
    conn.execute_batch(
        "ALTER TABLE recipients ADD COLUMN relay TEXT;
         ALTER TABLE recipients ADD COLUMN provider_message_id TEXT;
         UPDATE recipients SET status = 'sent', message_id = 'm' || id || '@acme.example',
             last_attempt_at = 5;
         PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(conn);
    let old = Store::open_read_only(&path).unwrap();
    assert_eq!(old.late_counts().unwrap(), LateCounts::default());
    let mut rows = 0;
    old.export(&ExportFilter::default(), |r| {
        rows += 1;
        assert_eq!(r.late, None);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap();
    assert_eq!(rows, 2);
    drop(old);

    let mut store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(version(&store), VERSION);
    assert_eq!(
        store.find_by_message_id("m2@acme.example").unwrap(),
        Some(RecipientId(2))
    );
    let late = LateOutcome {
        id: RecipientId(2),
        at: 9,
        key: "mid:x".into(),
        kind: LateKind::HardBounce,
        status: Some("5.1.1".into()),
        diagnostic: None,
        soft_bounce_limit: 3,
    };
    assert_eq!(store.apply_late(&late).unwrap(), LateApplied::Bounced);
    assert_eq!(
        store.apply_late(&late).unwrap(),
        LateApplied::AlreadyApplied
    );
    assert_eq!(store.late_counts().unwrap().bounced, 1);
}

/// Version 7 drops the tally triggers and counts the tallies again from
/// the rows: a file whose tallies an older build left wrong (or a hand
/// edit) starts right, and nothing counts twice afterwards.
#[test]
fn version_7_drops_the_triggers_and_counts_the_tallies_from_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(v2_store(&path));
    {
        // Up to version 6, with its triggers, and tallies gone wrong.
        let conn = Connection::open(&path).unwrap();
        for step in [V3, V4, V5, &v6_claim_index()] {
            conn.execute_batch(step).unwrap();
        }
        conn.execute_batch(
            "UPDATE tally SET n = 40;
             INSERT INTO domain_tally (domain, status, n) VALUES ('gone.example', 'sent', 7);
             PRAGMA user_version = 6;",
        )
        .unwrap();
    }
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(version(&store), VERSION);
    let triggers = count(
        &store,
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'",
    );
    assert_eq!(triggers, 0);
    let s = store.summary().unwrap();
    assert_eq!((s.total, s.count(Status::Sending)), (2, 2));
    assert!(
        store
            .domain_counts(10)
            .unwrap()
            .iter()
            .all(|(d, _)| d == "example.com")
    );
    // And the statements keep them from there.
    store.recover_in_doubt(InDoubtPolicy::Skip).unwrap();
    let s = store.summary().unwrap();
    assert_eq!((s.total, s.count(Status::InDoubt), s.in_doubt), (2, 2, 2));
}

/// The one number `sql` selects.
fn count(store: &Store, sql: &str) -> i64 {
    store.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Rows on `lines`, `sending`, inserted as they are (no ingest).
fn insert_sending(store: &Store, lines: std::ops::Range<i64>) {
    for line in lines {
        store
            .conn
            .execute(
                "INSERT INTO recipients (line, email, email_norm, domain, fields, status, updated_at)
                 VALUES (?1, 'x@example.com', 'x@example.com', 'example.com', '[]', 'sending', 0)",
                [line],
            )
            .unwrap();
    }
}

/// Recipient `id` sent under `message_id`.
fn sent_as(id: i64, message_id: String) -> crate::Outcome {
    crate::Outcome::sent_for_test(RecipientId(id), 5, message_id)
}

/// Version 9 (issue 11): `message_keys` keeps a Message-ID's first 16
/// characters; ids that share them are told apart by the row's own
/// Message-ID, before the move and after it, and one that shares them with
/// no row is not found.
#[test]
fn version_9_tells_apart_message_ids_that_share_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("k.db"), Durability::Normal).unwrap();
    insert_sending(&store, 2..6);
    let mid = |tail: &str| format!("0123456789abcdef{tail}.c@acme.example");
    let sent = |id: i64, tail: &str| sent_as(id, mid(tail));
    store
        .record(&[sent(1, "a"), sent(2, "b"), sent(3, "")])
        .unwrap();
    let check = |store: &Store| {
        assert_eq!(
            store.find_by_message_id(&mid("a")).unwrap(),
            Some(RecipientId(1))
        );
        assert_eq!(
            store.find_by_message_id(&mid("b")).unwrap(),
            Some(RecipientId(2))
        );
        assert_eq!(
            store.find_by_message_id(&mid("")).unwrap(),
            Some(RecipientId(3))
        );
        assert_eq!(store.find_by_message_id(&mid("z")).unwrap(), None);
        assert_eq!(store.find_by_message_id("0123456789abcdef").unwrap(), None);
    };
    check(&store);
    store.index_message_ids().unwrap();
    let keys: Vec<(String, i64)> = store
        .conn
        .prepare("SELECT k, id FROM message_keys ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let key = "0123456789abcdef".to_string();
    assert_eq!(keys, vec![(key.clone(), 1), (key.clone(), 2), (key, 3)]);
    check(&store);
}

/// Version 8 (issue 11): a `sent` outcome leaves its Message-ID out of
/// `message_ids` (whose inserts land on random pages) until
/// `index_message_ids`, at the end of a run or the start of the next;
/// lookups find the row before and after, and a migrated file keeps its
/// Message-IDs findable.
#[test]
fn version_8_indexes_message_ids_after_the_run_and_finds_them_meanwhile() {
    use crate::{Outcome, OutcomeKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        // A version-7 file with one recipient sent (Message-ID m1).
        let conn = v2_store(&path);
        for step in [V3, V4, V5, &v6_claim_index()] {
            conn.execute_batch(step).unwrap();
        }
        conn.execute_batch(
            "UPDATE recipients SET status = 'sent', message_id = 'm1@acme.example' WHERE id = 1;
             PRAGMA user_version = 7;",
        )
        .unwrap();
    }
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(version(&store), VERSION);
    insert_sending(&store, 4..22);
    let sent = |id: i64| sent_as(id, format!("m{id}@acme.example"));
    let counts = |store: &Store| -> (i64, i64) {
        store
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM message_keys), (SELECT count(*) FROM mid_pending)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let find = |store: &Store, id: i64| store.find_by_message_id(&format!("m{id}@acme.example"));
    // The migration kept the Message-ID sent before it, and dropped the index.
    assert_eq!(counts(&store), (1, 0));
    assert_eq!(find(&store, 1).unwrap(), Some(RecipientId(1)));
    let index = count(
        &store,
        "SELECT count(*) FROM sqlite_master WHERE name = 'recipients_message_id'",
    );
    assert_eq!(index, 0);
    let batch: Vec<Outcome> = (3..=19).map(sent).collect();
    store.record(&batch).unwrap();
    // Not in `message_ids` yet, found all the same.
    assert_eq!(counts(&store), (1, 17));
    assert_eq!(find(&store, 7).unwrap(), Some(RecipientId(7)));
    store.index_message_ids().unwrap();
    assert_eq!(counts(&store), (18, 0));
    assert_eq!(find(&store, 7).unwrap(), Some(RecipientId(7)));
    // One more, moved by the start of the next run (after a crash, say).
    store.record(&[sent(20)]).unwrap();
    assert_eq!(counts(&store), (18, 1));
    assert_eq!(find(&store, 20).unwrap(), Some(RecipientId(20)));
    store.recover_in_doubt(InDoubtPolicy::Skip).unwrap();
    assert_eq!(counts(&store), (19, 0));
    for id in [1, 3, 19, 20] {
        assert_eq!(find(&store, id).unwrap(), Some(RecipientId(id)));
    }
    // Sent again under another Message-ID: found by the new one only, as
    // the index answered.
    let mut again = sent(20);
    if let OutcomeKind::Sent { message_id, .. } = &mut again.kind {
        *message_id = "other@acme.example".into();
    }
    store.record(&[again]).unwrap();
    assert_eq!(find(&store, 20).unwrap(), None);
    assert_eq!(
        store.find_by_message_id("other@acme.example").unwrap(),
        Some(RecipientId(20))
    );
    assert_eq!(store.find_by_message_id("m99@acme.example").unwrap(), None);
    // A long run moves them every MID_FLUSH (32 in tests) sent, so a lookup
    // during it never reads more than that many rows besides its key.
    insert_sending(&store, 22..62);
    store
        .record(&(21..=50).map(sent).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(counts(&store), (19, 31));
    store.record(&[sent(51)]).unwrap();
    assert_eq!(counts(&store), (51, 0));
    assert_eq!(find(&store, 51).unwrap(), Some(RecipientId(51)));
}
