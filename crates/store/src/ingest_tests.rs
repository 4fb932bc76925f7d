//! Ingest passes: the unique key, the checkpoint, the repair of copies left by
//! older builds, and the modes of the state files (issue 9, points 1 and 7).

use edm_model::Status;
use rusqlite::{Connection, params};

use crate::{Durability, Error, NewRow, Outcome, OutcomeKind, Store};

fn row(line: u64, email: &str) -> NewRow {
    NewRow {
        line,
        email: email.to_string(),
        values: vec![email.to_string()],
        status: Status::Pending,
        category: None,
        reason: None,
        duplicate_of: None,
    }
}

fn count(store: &Store) -> i64 {
    store
        .conn
        .query_row("SELECT count(*) FROM recipients", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_database_refuses_a_second_copy_of_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("c.db"), Durability::Normal).unwrap();
    store.begin_ingest("csv-1").unwrap();
    store
        .insert_rows(&[row(2, "a@example.com"), row(3, "b@example.com")])
        .unwrap();
    let err = store
        .insert_rows(&[row(4, "c@example.com"), row(3, "b@example.com")])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AlreadyStored {
                line: 3,
                generation: 0,
                ..
            }
        ),
        "{err}"
    );
    // The whole batch was refused, and the checkpoint did not move.
    assert_eq!(count(&store), 2);
    let pass = store.ingest_pass().unwrap().unwrap();
    assert_eq!((pass.after_line, pass.rows), (3, 2));
}

#[test]
fn duplicate_addresses_on_their_own_lines_are_still_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("c.db"), Durability::Normal).unwrap();
    store.begin_ingest("csv-1").unwrap();
    let dup = NewRow {
        status: Status::Skipped,
        reason: Some("duplicate of line 2".into()),
        duplicate_of: Some(2),
        ..row(3, "a@example.com")
    };
    store.insert_rows(&[row(2, "a@example.com"), dup]).unwrap();
    assert_eq!(store.summary().unwrap().count(Status::Skipped), 1);
    assert_eq!(store.summary().unwrap().total, 2);
}

#[test]
fn a_new_pass_reuses_line_numbers_in_its_own_generation() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("c.db"), Durability::Normal).unwrap();
    assert_eq!(store.begin_ingest("csv-1").unwrap().generation, 0);
    store.insert_rows(&[row(2, "a@example.com")]).unwrap();
    store.finish_ingest(None, &[]).unwrap();
    // `--accept-changes` with a changed file: line 2 is someone else now.
    let pass = store.begin_ingest("csv-2").unwrap();
    assert_eq!((pass.generation, pass.after_line, pass.rows), (1, 0, 0));
    store.insert_rows(&[row(2, "new@example.com")]).unwrap();
    assert_eq!(count(&store), 2);
}

#[test]
fn the_checkpoint_is_committed_with_each_batch_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let mut store = Store::open(&path, Durability::Normal).unwrap();
        store.begin_ingest("csv-1").unwrap();
        store
            .insert_rows(&[row(2, "a@example.com"), row(5, "b@example.com")])
            .unwrap();
        store.insert_rows(&[row(6, "c@example.com")]).unwrap();
        // Dropped without finishing: what a killed run leaves.
    }
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    let pass = store.ingest_pass().unwrap().unwrap();
    assert_eq!(
        pass,
        crate::IngestPass {
            generation: 0,
            source: "csv-1".into(),
            after_line: 6,
            rows: 3,
            complete: false,
        }
    );
    // Resuming stores what comes after the checkpoint, in the same pass.
    store.insert_rows(&[row(7, "d@example.com")]).unwrap();
    store
        .finish_ingest(
            Some(&["email".into()]),
            &[("fingerprint.recipients", "csv-1")],
        )
        .unwrap();
    assert!(store.is_ingested().unwrap());
    assert_eq!(store.columns().unwrap(), ["email"]);
    let pass = store.ingest_pass().unwrap().unwrap();
    assert!(pass.complete);
    assert_eq!((pass.after_line, pass.rows), (7, 4));
    assert_eq!(
        store.meta("fingerprint.recipients").unwrap().as_deref(),
        Some("csv-1")
    );
    assert_eq!(store.summary().unwrap().total, 4);
}

/// A version-1 store as an older build left it after two interrupted
/// ingests and a send: lines 2 and 3 stored twice (line 2 sent once), and
/// line 3 also holding an `--accept-changes` row with another address.
fn v1_store_with_copies(path: &std::path::Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(crate::schema::V1).unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    let mut insert = conn
        .prepare(
            "INSERT INTO recipients (line, email, email_norm, domain, fields, status, updated_at)
             VALUES (?1, ?2, ?2, 'example.com', ?3, ?4, 0)",
        )
        .unwrap();
    for (line, email, status) in [
        (2, "a@example.com", "pending"),
        (3, "b@example.com", "pending"),
        (2, "a@example.com", "sent"),
        (3, "b@example.com", "pending"),
        (4, "d@example.com", "pending"),
        (3, "new@example.com", "pending"),
    ] {
        let fields = format!("[\"{email}\"]");
        insert
            .execute(params![line, email, fields, status])
            .unwrap();
    }
    conn.execute("INSERT INTO meta (key, value) VALUES ('ingested', '1')", [])
        .unwrap();
}

#[test]
fn copies_left_by_an_older_build_are_marked_skipped_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    v1_store_with_copies(&path);
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(store.take_repair_notice().unwrap(), 2);
    assert_eq!(store.take_repair_notice().unwrap(), 0, "said once");
    type Row = (i64, String, String, Option<i64>, Option<String>);
    let rows: Vec<Row> = store
        .conn
        .prepare("SELECT id, email, status, copy_of, reply FROM recipients ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // The sent copy of line 2 is kept, the pending one skipped; line 3's
    // first copy is kept; the accept-changes row on line 3 is not a copy.
    let status: Vec<(&str, &str, Option<i64>)> = rows
        .iter()
        .map(|r| (r.1.as_str(), r.2.as_str(), r.3))
        .collect();
    assert_eq!(
        status,
        [
            ("a@example.com", "skipped", Some(3)),
            ("b@example.com", "pending", None),
            ("a@example.com", "sent", None),
            ("b@example.com", "skipped", Some(2)),
            ("d@example.com", "pending", None),
            ("new@example.com", "pending", None),
        ]
    );
    assert_eq!(
        rows[0].4.as_deref(),
        Some("extra copy of line 2 stored by an interrupted ingest (was pending)")
    );
    let summary = store.summary().unwrap();
    assert_eq!(summary.count(Status::Skipped), 2);
    assert_eq!(summary.count(Status::Pending), 3);
    let events = store.recent_events(10).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, "repaired");
    // From now on the key holds: a pass after the repair gets a generation
    // of its own, and a copy of line 3 in generation 0 is refused.
    assert_eq!(store.begin_ingest("csv-2").unwrap().generation, 2);
    drop(store);
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    assert_eq!(store.take_repair_notice().unwrap(), 0);
    assert_eq!(store.recent_events(10).unwrap().len(), 1);
    let again = store.conn.execute(
        "INSERT INTO recipients (line, email, email_norm, domain, fields, status, updated_at)
         VALUES (3, 'b@example.com', 'b@example.com', 'example.com', '[]', 'pending', 0)",
        [],
    );
    assert!(again.is_err());
}

#[test]
fn ever_attempted_ignores_released_claims_and_sees_sends() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("c.db"), Durability::Normal).unwrap();
    store.begin_ingest("csv-1").unwrap();
    store
        .insert_rows(&[row(2, "a@example.com"), row(3, "b@example.com")])
        .unwrap();
    assert!(!store.ever_attempted().unwrap());
    let claimed = store.claim(1, 1_000).unwrap();
    store
        .record(&[Outcome {
            id: claimed[0].id,
            at: 1_001,
            kind: OutcomeKind::Released,
        }])
        .unwrap();
    assert!(!store.ever_attempted().unwrap());
    let claimed = store.claim(1, 2_000).unwrap();
    assert!(store.ever_attempted().unwrap(), "a row being sent counts");
    store
        .record(&[Outcome::sent_for_test(claimed[0].id, 2_001, "<m@x>".into())])
        .unwrap();
    store.reset_for_retry(&[Status::Sent], &[]).unwrap();
    assert!(
        store.ever_attempted().unwrap(),
        "reset after a send still counts"
    );
}

#[test]
fn discarding_empties_the_list_and_the_ingest_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("c.db"), Durability::Normal).unwrap();
    store.begin_ingest("csv-1").unwrap();
    store.insert_rows(&[row(2, "a@example.com")]).unwrap();
    store.mark_ingested(&["email".into()]).unwrap();
    assert_eq!(store.discard_recipients().unwrap(), 1);
    assert!(!store.is_ingested().unwrap());
    assert_eq!(store.summary().unwrap().total, 0);
    let pass = store.begin_ingest("csv-2").unwrap();
    assert_eq!(pass.generation, 1);
    store.insert_rows(&[row(2, "a@example.com")]).unwrap();
    assert_eq!(store.summary().unwrap().total, 1);
}

#[cfg(unix)]
#[test]
fn state_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let edm = dir.path().join("campaign/.edm");
    crate::create_private_dir(&edm).unwrap();
    assert_eq!(mode(&edm), 0o700);
    assert_eq!(mode(&dir.path().join("campaign")), 0o700);
    let db = edm.join("state.db");
    let mut store = Store::open(&db, Durability::Normal).unwrap();
    store.lock_for_run(1).unwrap();
    store.begin_ingest("x").unwrap();
    store.insert_rows(&[row(2, "a@example.com")]).unwrap();
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let p = edm.join(format!("state.db{suffix}"));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    drop(store);
    // Files an older build left world-readable are tightened on open.
    for p in [db.clone(), edm.clone()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _store = Store::open(&db, Durability::Normal).unwrap();
    crate::create_private_dir(&edm).unwrap();
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&edm), 0o700);
}

mod resume_property {
    use proptest::prelude::*;

    use super::row;
    use crate::{Durability, Store};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// However a pass is cut (after any batch, several times, with any
        /// batch sizes), resuming after the checkpoint stores every record
        /// exactly once, and `total` is the number of records.
        #[test]
        fn resuming_after_the_checkpoint_stores_each_record_once(
            n in 1u64..300,
            batch in 1usize..50,
            cuts in prop::collection::vec(0usize..10, 0..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.db");
            // Records on lines 2.., some lines skipped (a quoted field
            // spanning lines makes the next record start further down).
            let lines: Vec<u64> = (0..n).map(|i| 2 + i * 2 - (i % 3).min(1)).collect();
            let mut cuts = cuts.into_iter();
            let mut store = Store::open(&path, Durability::Normal).unwrap();
            store.begin_ingest("csv").unwrap();
            loop {
                // A run: read from the top, skip to the checkpoint, store
                // batches until "killed" after `cut` batches (or the end).
                let pass = store.ingest_pass().unwrap().unwrap();
                let todo: Vec<_> = lines
                    .iter()
                    .filter(|l| **l > pass.after_line)
                    .map(|l| row(*l, &format!("u{l}@example.com")))
                    .collect();
                let cut = cuts.next();
                for (i, chunk) in todo.chunks(batch).enumerate() {
                    if cut == Some(i) {
                        break;
                    }
                    store.insert_rows(chunk).unwrap();
                }
                if cut.is_none() {
                    break;
                }
                drop(store);
                store = Store::open(&path, Durability::Normal).unwrap();
            }
            let pass = store.ingest_pass().unwrap().unwrap();
            prop_assert_eq!(pass.rows, n);
            prop_assert_eq!(store.summary().unwrap().total, n);
            let distinct: i64 = store
                .conn
                .query_row("SELECT count(DISTINCT line) FROM recipients", [], |r| r.get(0))
                .unwrap();
            prop_assert_eq!(distinct as u64, n);
        }
    }
}
