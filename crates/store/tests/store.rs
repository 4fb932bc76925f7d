//! The store against real SQLite files in temp directories.
//!
//! - `schema_*`: creation, reopen, version checks.
//! - `claim_*`: claim order and durability.
//! - `record_*`: each outcome kind and the attempt-counting rules.
//! - `recover_*`, `reset_*`: recovery after a crash and the operator's retry.
//! - `summary_*`, `export_*`, `views_*`: the readers.
//! - `read_only_*`, `run_lock_*`, `corrupt_*`: sharing the file safely.

use std::path::{Path, PathBuf};

use edm_model::{Category, Failure, RecipientId, Reply, Stage, Status};
use edm_store::{
    Durability, Error, ExportError, ExportFilter, ExportRow, InDoubtPolicy, NewRow, Outcome,
    OutcomeKind, Store,
};

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Store,
}

/// A fresh store with `n` pending rows on lines 2.. (`u{i}@example.com`).
fn fixture(n: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("campaign.db");
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    let rows: Vec<NewRow> = (0..n)
        .map(|i| pending(i + 2, &format!("u{i}@example.com")))
        .collect();
    store.insert_rows(&rows).unwrap();
    store
        .mark_ingested(&["email".to_string(), "name".to_string()])
        .unwrap();
    Fixture {
        _dir: dir,
        path,
        store,
    }
}

fn pending(line: u64, email: &str) -> NewRow {
    NewRow {
        line,
        email: email.to_string(),
        values: vec![email.to_string(), format!("Name {line}")],
        status: Status::Pending,
        category: None,
        reason: None,
        duplicate_of: None,
    }
}

fn ids(recipients: &[edm_model::Recipient]) -> Vec<i64> {
    recipients.iter().map(|r| r.id.0).collect()
}

fn transient(category: Category) -> Failure {
    Failure {
        stage: Stage::RcptTo,
        category,
        smtp_code: Some(451),
        enhanced_code: Some("4.7.1".into()),
        reply: "try later".into(),
        permanent: false,
        retry_after: None,
    }
}

fn permanent(stage: Stage) -> Failure {
    Failure {
        stage,
        category: Category::RecipientUnknown,
        smtp_code: Some(550),
        enhanced_code: Some("5.1.1".into()),
        reply: "no such user".into(),
        permanent: true,
        retry_after: None,
    }
}

fn outcome(id: i64, at: i64, kind: OutcomeKind) -> Outcome {
    Outcome {
        id: RecipientId(id),
        at,
        kind,
    }
}

fn sent() -> OutcomeKind {
    OutcomeKind::Sent {
        reply: Reply {
            code: 250,
            enhanced: Some("2.0.0".into()),
            text: "queued as X".into(),
            provider_message_id: None,
            relay: None,
        },
        message_id: "mid@example.com".into(),
        relay: "smtp".into(),
    }
}

fn deferred(next: i64, count_attempt: bool) -> OutcomeKind {
    OutcomeKind::Deferred {
        relay: String::new(),
        failure: transient(Category::Greylisted),
        next_attempt_at: next,
        count_attempt,
    }
}

/// Every row, exported in line order.
fn all_rows(store: &Store) -> Vec<ExportRow> {
    let mut rows = Vec::new();
    store
        .export(&ExportFilter::default(), |r| {
            rows.push(r.clone());
            Ok::<(), ()>(())
        })
        .unwrap();
    rows
}

fn row(store: &Store, line: u64) -> ExportRow {
    all_rows(store)
        .into_iter()
        .find(|r| r.line == line)
        .unwrap()
}

/// A raw second connection, to look at (or break) the file behind the store's back.
fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn schema_created_and_reopened() {
    let f = fixture(3);
    let version: i64 = raw(&f.path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, edm_store::SCHEMA_VERSION);
    let mode: String = raw(&f.path)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let created = f.store.meta("created_at").unwrap().unwrap();
    drop(f.store);

    let store = Store::open(&f.path, Durability::Full).unwrap();
    assert_eq!(store.meta("created_at").unwrap().unwrap(), created);
    assert!(store.is_ingested().unwrap());
    assert_eq!(store.columns().unwrap(), ["email", "name"]);
    assert_eq!(store.summary().unwrap().total, 3);
}

#[test]
fn schema_too_new_is_refused() {
    let f = fixture(1);
    drop(f.store);
    raw(&f.path)
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(&f.path, Durability::Normal).unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    let err = Store::open_read_only(&f.path).unwrap_err();
    assert!(matches!(err, Error::SchemaTooNew { .. }), "{err}");
}

#[test]
fn meta_round_trips_and_fresh_store_is_not_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("c.db"), Durability::Normal).unwrap();
    assert!(!store.is_ingested().unwrap());
    assert!(store.columns().unwrap().is_empty());
    assert_eq!(store.meta("name").unwrap(), None);
    store.set_meta("name", "spring").unwrap();
    store.set_meta("name", "autumn").unwrap();
    assert_eq!(store.meta("name").unwrap().as_deref(), Some("autumn"));
}

#[test]
fn insert_refuses_delivery_statuses() {
    let mut f = fixture(0);
    let mut bad = pending(2, "a@example.com");
    bad.status = Status::Sent;
    let err = f
        .store
        .insert_rows(&[pending(1, "ok@example.com"), bad])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidNewRow { line: 2, .. }), "{err}");
    // The batch is one transaction: nothing of it was kept.
    assert_eq!(f.store.summary().unwrap().total, 0);
}

#[test]
fn claim_order_pending_by_id_then_due_deferred() {
    let mut f = fixture(6);
    let first = f.store.claim(3, 1_000).unwrap();
    assert_eq!(ids(&first), [1, 2, 3]);
    assert_eq!(first[0].line, 2);
    assert_eq!(first[0].email, "u0@example.com");
    assert_eq!(first[0].values, ["u0@example.com", "Name 2"]);
    assert_eq!(first[0].attempts, 0);
    // 1 sent (final), 2 due at 2_000, 3 due at 1_500.
    f.store
        .record(&[
            outcome(1, 1_100, sent()),
            outcome(2, 1_100, deferred(2_000, true)),
            outcome(3, 1_100, deferred(1_500, true)),
        ])
        .unwrap();
    // At 1_600: the rest of pending first, then only the due deferred row.
    let next = f.store.claim(10, 1_600).unwrap();
    assert_eq!(ids(&next), [4, 5, 6, 3]);
    assert_eq!(next[3].attempts, 1);
    // Nothing left that is due: 2 is not yet, 1 is final, the rest are sending.
    assert!(f.store.claim(10, 1_600).unwrap().is_empty());
    assert_eq!(ids(&f.store.claim(10, 2_000).unwrap()), [2]);
    assert!(f.store.claim(10, i64::MAX).unwrap().is_empty());
}

#[test]
fn claim_never_takes_final_rows() {
    let mut f = fixture(0);
    let mut rows = vec![pending(2, "p@example.com")];
    for (i, status) in [Status::Invalid, Status::Skipped, Status::Suppressed]
        .into_iter()
        .enumerate()
    {
        let mut r = pending(3 + i as u64, &format!("x{i}@example.com"));
        r.status = status;
        rows.push(r);
    }
    f.store.insert_rows(&rows).unwrap();
    assert_eq!(ids(&f.store.claim(10, i64::MAX).unwrap()), [1]);
}

#[test]
fn claim_is_durable_before_returning() {
    let mut f = fixture(2);
    let claimed = f.store.claim(1, 5_000).unwrap();
    assert_eq!(ids(&claimed), [1]);
    // A second connection, while the writer is still open, sees it committed.
    let (status, first, last): (String, i64, i64) = raw(&f.path)
        .query_row(
            "SELECT status, first_attempt_at, last_attempt_at FROM recipients WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), first, last), ("sending", 5_000, 5_000));
    let reader = Store::open_read_only(&f.path).unwrap();
    assert_eq!(reader.summary().unwrap().count(Status::Sending), 1);
}

#[test]
fn record_sent_counts_attempt_and_clears_category() {
    let mut f = fixture(1);
    f.store.claim(1, 10).unwrap();
    f.store
        .record(&[outcome(1, 20, deferred(30, true))])
        .unwrap();
    assert_eq!(row(&f.store, 2).category, Some(Category::Greylisted));
    f.store.claim(1, 30).unwrap();
    f.store.record(&[outcome(1, 40, sent())]).unwrap();
    let r = row(&f.store, 2);
    assert_eq!(r.status, Status::Sent);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.category, None);
    assert_eq!(r.stage, None);
    assert_eq!(r.smtp_code, Some(250));
    assert_eq!(r.enhanced_code.as_deref(), Some("2.0.0"));
    assert_eq!(r.reply.as_deref(), Some("queued as X"));
    assert_eq!(r.message_id.as_deref(), Some("mid@example.com"));
    assert_eq!(r.last_attempt_at, Some(40));
    assert_eq!(f.store.sent_since(40).unwrap(), 1);
    assert_eq!(f.store.sent_since(41).unwrap(), 0);
}

#[test]
fn record_sent_keeps_the_relay_and_the_providers_message_id() {
    let mut f = fixture(2);
    f.store.claim(2, 10).unwrap();
    let mut ses = sent();
    if let OutcomeKind::Sent { reply, relay, .. } = &mut ses {
        reply.provider_message_id = Some("0100019a-ses-id".into());
        *relay = "ses-eu".into();
    }
    f.store
        .record(&[outcome(1, 20, ses), outcome(2, 20, sent())])
        .unwrap();
    let r = row(&f.store, 2);
    assert_eq!(r.relay.as_deref(), Some("ses-eu"));
    assert_eq!(r.provider_message_id.as_deref(), Some("0100019a-ses-id"));
    let r = row(&f.store, 3);
    assert_eq!(r.relay.as_deref(), Some("smtp"));
    assert_eq!(r.provider_message_id, None, "SMTP gives no provider id");
}

#[test]
fn record_deferred_counts_attempt_only_when_asked() {
    let mut f = fixture(2);
    f.store.claim(2, 10).unwrap();
    let throttled = OutcomeKind::Deferred {
        relay: String::new(),
        failure: transient(Category::Throttled),
        next_attempt_at: 500,
        count_attempt: false,
    };
    f.store
        .record(&[
            outcome(1, 20, deferred(100, true)),
            outcome(2, 20, throttled),
        ])
        .unwrap();
    let (a, b) = (row(&f.store, 2), row(&f.store, 3));
    assert_eq!((a.status, a.attempts), (Status::Deferred, 1));
    assert_eq!((b.status, b.attempts), (Status::Deferred, 0));
    assert_eq!(b.category, Some(Category::Throttled));
    assert_eq!(a.stage, Some(Stage::RcptTo));
    assert_eq!(a.smtp_code, Some(451));
    let s = f.store.summary().unwrap();
    assert_eq!(s.next_due, Some(100));
    assert_eq!(s.last_deferred_due, Some(500));
}

#[test]
fn claim_reports_the_first_attempt_of_every_run() {
    let mut f = fixture(1);
    let first = f.store.claim(1, 10).unwrap();
    assert_eq!(first[0].first_attempt_at, Some(10));
    f.store
        .record(&[outcome(1, 20, deferred(100, true))])
        .unwrap();
    // The retry, even in a later run, still says when it all began (retry_for).
    let again = f.store.claim(1, 150).unwrap();
    assert_eq!(again[0].first_attempt_at, Some(10));
    assert_eq!(again[0].attempts, 1);
}

#[test]
fn record_failed_counts_attempt_unless_before_smtp() {
    let mut f = fixture(2);
    f.store.claim(2, 10).unwrap();
    let template = Failure::local(Stage::Render, Category::Template, "missing {{name}}");
    f.store
        .record(&[
            outcome(
                1,
                20,
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: permanent(Stage::RcptTo),
                },
            ),
            outcome(
                2,
                20,
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: template,
                },
            ),
        ])
        .unwrap();
    let (a, b) = (row(&f.store, 2), row(&f.store, 3));
    assert_eq!((a.status, a.attempts), (Status::Failed, 1));
    assert_eq!(a.category, Some(Category::RecipientUnknown));
    assert_eq!((b.status, b.attempts), (Status::Failed, 0));
    assert_eq!(b.stage, Some(Stage::Render));
    assert_eq!(b.reply.as_deref(), Some("missing {{name}}"));
}

#[test]
fn record_released_restores_previous_state() {
    let mut f = fixture(2);
    f.store.claim(2, 10).unwrap();
    f.store
        .record(&[
            outcome(1, 20, OutcomeKind::Released),
            outcome(2, 20, deferred(100, true)),
        ])
        .unwrap();
    // Row 1 is pending again, row 2 deferred (due at 100, last attempt at 20).
    let claimed = f.store.claim(2, 150).unwrap();
    assert_eq!(ids(&claimed), [1, 2]);
    f.store
        .record(&[
            outcome(1, 160, OutcomeKind::Released),
            outcome(2, 160, OutcomeKind::Released),
        ])
        .unwrap();
    let (a, b) = (row(&f.store, 2), row(&f.store, 3));
    assert_eq!(
        (a.status, a.attempts, a.last_attempt_at),
        (Status::Pending, 0, None)
    );
    assert_eq!(
        (b.status, b.attempts, b.last_attempt_at),
        (Status::Deferred, 1, Some(20))
    );
    assert_eq!(f.store.summary().unwrap().next_due, Some(100));
    // Not yet due at 99 (its next_attempt_at was kept), due at 100.
    assert_eq!(ids(&f.store.claim(10, 99).unwrap()), [1]);
    assert_eq!(ids(&f.store.claim(10, 100).unwrap()), [2]);
}

#[test]
fn record_released_never_undoes_a_result() {
    let mut f = fixture(1);
    f.store.claim(1, 10).unwrap();
    f.store.record(&[outcome(1, 20, sent())]).unwrap();
    f.store
        .record(&[outcome(1, 30, OutcomeKind::Released)])
        .unwrap();
    assert_eq!(row(&f.store, 2).status, Status::Sent);
}

#[test]
fn record_unknown_id_fails_the_batch() {
    let mut f = fixture(1);
    f.store.claim(1, 10).unwrap();
    let err = f
        .store
        .record(&[outcome(1, 20, sent()), outcome(99, 20, sent())])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownRecipient {
                id: RecipientId(99),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(row(&f.store, 2).status, Status::Sending);
}

#[test]
fn recover_in_doubt_resend() {
    let mut f = fixture(3);
    f.store.claim(2, 10).unwrap();
    f.store
        .record(&[outcome(2, 20, deferred(50, true))])
        .unwrap();
    f.store.claim(1, 60).unwrap(); // row 3 (pending) comes before due row 2
    f.store.claim(1, 60).unwrap(); // row 2, deferred and due
    drop(f.store); // the run dies
    let mut store = Store::open(&f.path, Durability::Normal).unwrap();
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Resend).unwrap(), 3);
    let s = store.summary().unwrap();
    assert_eq!(s.count(Status::Pending), 3);
    assert_eq!(s.count(Status::Sending), 0);
    assert_eq!(s.in_doubt, 3);
    assert!(all_rows(&store).iter().all(|r| r.in_doubt));
    assert_eq!(ids(&store.claim(10, 0).unwrap()), [1, 2, 3]);
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Resend).unwrap(), 3);
}

#[test]
fn recover_in_doubt_skip() {
    let mut f = fixture(3);
    f.store.claim(2, 10).unwrap();
    f.store.record(&[outcome(1, 20, sent())]).unwrap();
    assert_eq!(f.store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 1);
    let s = f.store.summary().unwrap();
    assert_eq!(s.count(Status::InDoubt), 1);
    assert_eq!(s.count(Status::Sent), 1);
    assert_eq!(s.count(Status::Pending), 1);
    assert_eq!(s.in_doubt, 1);
    assert_eq!(ids(&f.store.claim(10, i64::MAX).unwrap()), [3]);
    assert_eq!(f.store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 1);
    assert_eq!(f.store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 0);
}

#[test]
fn summary_has_every_status_and_categories() {
    let mut f = fixture(4);
    let mut invalid = pending(10, "not-an-address");
    invalid.status = Status::Invalid;
    invalid.category = Some(Category::InvalidAddress);
    invalid.reason = Some("no @".into());
    f.store.insert_rows(&[invalid]).unwrap();
    let s = f.store.summary().unwrap();
    assert_eq!(s.counts.len(), Status::ALL.len());
    assert_eq!(s.count(Status::Pending), 4);
    assert_eq!(s.count(Status::Sent), 0);
    assert_eq!(s.count(Status::Invalid), 1);
    assert_eq!(s.total, 5);
    assert_eq!(s.next_due, None);
    assert_eq!(s.by_category.get(&Category::InvalidAddress), Some(&1));

    f.store.claim(3, 10).unwrap();
    f.store
        .record(&[
            outcome(1, 20, sent()),
            outcome(2, 20, deferred(100, true)),
            outcome(
                3,
                20,
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: permanent(Stage::RcptTo),
                },
            ),
        ])
        .unwrap();
    let s = f.store.summary().unwrap();
    assert_eq!(s.count(Status::Sent), 1);
    assert_eq!(s.count(Status::Deferred), 1);
    assert_eq!(s.count(Status::Failed), 1);
    assert_eq!(s.count(Status::Pending), 1);
    assert_eq!(s.count(Status::Sending), 0);
    assert_eq!(s.counts.values().sum::<u64>(), s.total);
    assert_eq!(s.by_category.get(&Category::Greylisted), Some(&1));
    assert_eq!(s.by_category.get(&Category::RecipientUnknown), Some(&1));
    // The trigger-kept tally agrees with a real count.
    let real: i64 = raw(&f.path)
        .query_row(
            "SELECT count(*) FROM recipients WHERE status = 'deferred'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(real as u64, s.count(Status::Deferred));
}

#[test]
fn export_filters_and_streams_in_line_order() {
    let mut f = fixture(0);
    // Inserted out of line order on purpose.
    f.store
        .insert_rows(&[
            pending(5, "e@x.org"),
            pending(2, "b@y.org"),
            pending(3, "c@x.org"),
        ])
        .unwrap();
    let mut dup = pending(4, "B@y.org");
    dup.status = Status::Skipped;
    dup.duplicate_of = Some(2);
    f.store.insert_rows(&[dup]).unwrap();
    assert_eq!(
        all_rows(&f.store)
            .iter()
            .map(|r| r.line)
            .collect::<Vec<_>>(),
        [2, 3, 4, 5]
    );
    assert_eq!(row(&f.store, 4).duplicate_of, Some(2));

    f.store.claim(3, 10).unwrap(); // ids 1 (line 5), 2 (line 2), 3 (line 3)
    f.store
        .record(&[
            outcome(
                1,
                20,
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: permanent(Stage::RcptTo),
                },
            ),
            outcome(2, 20, deferred(100, true)),
        ])
        .unwrap();
    f.store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(); // id 3 (line 3)

    let lines = |filter: ExportFilter| {
        let mut lines = Vec::new();
        f.store
            .export(&filter, |r| {
                lines.push(r.line);
                Ok::<(), ()>(())
            })
            .unwrap();
        lines
    };
    let by_status = ExportFilter {
        statuses: vec![Status::Failed, Status::Deferred],
        ..ExportFilter::default()
    };
    assert_eq!(lines(by_status), [2, 5]);
    let by_category = ExportFilter {
        categories: vec![Category::RecipientUnknown],
        ..ExportFilter::default()
    };
    assert_eq!(lines(by_category), [5]);
    let in_doubt = ExportFilter {
        in_doubt_only: true,
        ..ExportFilter::default()
    };
    assert_eq!(lines(in_doubt), [3]);

    // The sink's error stops the export and comes back as Sink.
    let mut seen = 0;
    let err = f
        .store
        .export(&ExportFilter::default(), |_| {
            seen += 1;
            if seen == 2 { Err("disk full") } else { Ok(()) }
        })
        .unwrap_err();
    assert!(matches!(err, ExportError::Sink("disk full")));
    assert_eq!(seen, 2);
}

#[test]
fn reset_for_retry_back_to_pending() {
    let mut f = fixture(4);
    f.store.claim(4, 10).unwrap();
    f.store
        .record(&[
            outcome(1, 20, sent()),
            outcome(2, 20, deferred(100, true)),
            outcome(
                3,
                20,
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: permanent(Stage::RcptTo),
                },
            ),
        ])
        .unwrap();
    f.store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(); // id 4
    // Only failed rows of a category that does not match: nothing.
    assert_eq!(
        f.store
            .reset_for_retry(&[Status::Failed], &[Category::Policy])
            .unwrap(),
        0
    );
    assert_eq!(
        f.store
            .reset_for_retry(&[Status::Failed, Status::InDoubt], &[])
            .unwrap(),
        2
    );
    let (failed, doubt) = (row(&f.store, 4), row(&f.store, 5));
    assert_eq!((failed.status, failed.attempts), (Status::Pending, 0));
    assert_eq!((doubt.status, doubt.in_doubt), (Status::Pending, true));
    assert_eq!(
        f.store
            .reset_for_retry(&[Status::Deferred], &[Category::Greylisted])
            .unwrap(),
        1
    );
    assert_eq!(f.store.summary().unwrap().next_due, None);
    assert_eq!(row(&f.store, 2).status, Status::Sent);
    assert_eq!(ids(&f.store.claim(10, 0).unwrap()), [2, 3, 4]);
}

#[test]
fn views_failures_replies_domains_events() {
    let mut f = fixture(0);
    f.store
        .insert_rows(&[
            pending(2, "a@big.org"),
            pending(3, "b@big.org"),
            pending(4, "c@big.org"),
            pending(5, "d@small.org"),
        ])
        .unwrap();
    f.store.claim(4, 10).unwrap();
    f.store
        .record(&[
            outcome(1, 20, sent()),
            outcome(
                2,
                30,
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: permanent(Stage::RcptTo),
                },
            ),
            outcome(
                3,
                40,
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: permanent(Stage::RcptTo),
                },
            ),
            outcome(4, 50, deferred(100, true)),
        ])
        .unwrap();
    let failures = f.store.recent_failures(2).unwrap();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].email, "d@small.org");
    assert_eq!(failures[0].status, Status::Deferred);
    assert_eq!(failures[0].reply, "451 4.7.1 try later");
    assert_eq!(failures[1].email, "c@big.org");
    assert_eq!(failures[1].attempts, 1);

    let top = f.store.top_replies(10).unwrap();
    assert_eq!(
        top[0],
        (Some(550), Some("5.1.1".into()), "no such user".into(), 2)
    );
    assert_eq!(top.len(), 2);

    let domains = f.store.domain_counts(10).unwrap();
    assert_eq!(domains[0].0, "big.org");
    assert_eq!((domains[0].1.sent, domains[0].1.failed), (1, 2));
    assert_eq!(domains[1].0, "small.org");
    assert_eq!(domains[1].1.deferred, 1);
    assert_eq!(f.store.domain_counts(1).unwrap().len(), 1);

    for i in 0..5 {
        f.store.log_event(i, "notice", &format!("e{i}")).unwrap();
    }
    let events = f.store.recent_events(2).unwrap();
    assert_eq!(
        events,
        [
            (3, "notice".into(), "e3".into()),
            (4, "notice".into(), "e4".into())
        ]
    );

    let by_email = f.store.rows_by_email().unwrap();
    assert_eq!(by_email["a@big.org"], (RecipientId(1), Status::Sent));
}

#[test]
fn read_only_sees_committed_rows_while_writer_is_open() {
    let mut f = fixture(2);
    let reader = Store::open_read_only(&f.path).unwrap();
    assert_eq!(reader.summary().unwrap().count(Status::Pending), 2);
    f.store
        .insert_rows(&[pending(10, "late@example.com")])
        .unwrap();
    f.store.claim(1, 10).unwrap();
    f.store.record(&[outcome(1, 20, sent())]).unwrap();
    let s = reader.summary().unwrap();
    assert_eq!(
        (s.total, s.count(Status::Sent), s.count(Status::Pending)),
        (3, 1, 2)
    );
    assert_eq!(all_rows(&reader).len(), 3);
}

#[test]
fn read_only_refuses_missing_file_and_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.db");
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
    assert!(err.to_string().contains("nope.db"), "{err}");
    assert!(!path.exists(), "a reader never creates the file");
}

#[test]
fn run_lock_refuses_a_second_locker() {
    let mut f = fixture(0);
    f.store.lock_for_run(4242).unwrap();
    let mut second = Store::open(&f.path, Durability::Normal).unwrap();
    let err = second.lock_for_run(7).unwrap_err();
    assert!(err.is_locked(), "{err}");
    assert!(
        matches!(
            err,
            Error::Locked {
                pid: Some(4242),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("4242"), "{err}");
    // Released when the holder goes away.
    drop(f.store);
    second.lock_for_run(7).unwrap();
}

#[test]
fn corrupt_status_is_an_error_not_a_panic() {
    let f = fixture(2);
    // A hand edit of the file: the row, and the tally the store keeps with
    // it (no trigger does it since schema version 7).
    raw(&f.path)
        .execute_batch(
            "UPDATE recipients SET status = 'exploded' WHERE id = 2;
             UPDATE tally SET n = n - 1 WHERE status = 'pending';
             INSERT INTO tally (status, category, in_doubt, n) VALUES ('exploded', '', 0, 1);",
        )
        .unwrap();
    let err = f.store.summary().unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(
        matches!(&err, Error::Corrupt { column: "recipients.status", value, .. } if value == "exploded"),
        "{err}"
    );
    let err = f
        .store
        .export(&ExportFilter::default(), |_| Ok::<(), ()>(()))
        .unwrap_err();
    assert!(
        matches!(err, ExportError::Store(Error::Corrupt { .. })),
        "{err:?}"
    );
}

#[test]
fn record_held_goes_back_to_pending_with_the_reply_kept() {
    let mut f = fixture(1);
    f.store.claim(1, 10).unwrap();
    let refusal = Failure {
        stage: Stage::MailFrom,
        category: Category::SenderRefused,
        smtp_code: Some(553),
        enhanced_code: Some("5.1.8".into()),
        reply: "Sender address domain does not exist".into(),
        permanent: true,
        retry_after: None,
    };
    f.store
        .record(&[outcome(1, 20, OutcomeKind::Held { failure: refusal })])
        .unwrap();
    let r = row(&f.store, 2);
    assert_eq!((r.status, r.attempts), (Status::Pending, 0));
    assert_eq!(r.category, Some(Category::SenderRefused));
    assert_eq!(r.smtp_code, Some(553));
    assert_eq!(
        r.reply.as_deref(),
        Some("Sender address domain does not exist")
    );
    assert!(!r.in_doubt);
    // Claimed again by the next run, its first attempt not counted from here.
    let again = f.store.claim(1, 30).unwrap();
    assert_eq!(again[0].first_attempt_at, Some(30));
}

#[test]
fn record_in_doubt_flags_and_defers_or_parks() {
    let mut f = fixture(2);
    f.store.claim(2, 10).unwrap();
    let timeout = Failure::local(
        Stage::Data,
        Category::ReadTimeout,
        "no reply to the final dot",
    );
    f.store
        .record(&[
            outcome(
                1,
                20,
                OutcomeKind::InDoubt {
                    relay: String::new(),
                    failure: timeout.clone(),
                    next_attempt_at: Some(50),
                },
            ),
            outcome(
                2,
                20,
                OutcomeKind::InDoubt {
                    relay: String::new(),
                    failure: timeout,
                    next_attempt_at: None,
                },
            ),
        ])
        .unwrap();
    let (a, b) = (row(&f.store, 2), row(&f.store, 3));
    assert_eq!(
        (a.status, a.attempts, a.in_doubt),
        (Status::Deferred, 1, true)
    );
    assert_eq!(
        (b.status, b.attempts, b.in_doubt),
        (Status::InDoubt, 1, true)
    );
    let s = f.store.summary().unwrap();
    assert_eq!(s.in_doubt, 2);
    assert_eq!(s.next_due, Some(50));
    // The resent one keeps its flag once sent.
    assert_eq!(ids(&f.store.claim(10, 60).unwrap()), [1]);
    f.store.record(&[outcome(1, 70, sent())]).unwrap();
    let a = row(&f.store, 2);
    assert_eq!((a.status, a.in_doubt), (Status::Sent, true));
}

#[test]
fn after_a_crash_only_marked_rows_are_in_doubt() {
    let mut f = fixture(5);
    f.store.claim(5, 10).unwrap();
    // Row 1 answered, rows 2 and 3 marked (their final dot may be out), rows
    // 4 and 5 claimed only; the mark of an answered row is cleared.
    f.store
        .mark_in_flight(&[RecipientId(1), RecipientId(2), RecipientId(3)])
        .unwrap();
    f.store.record(&[outcome(1, 20, sent())]).unwrap();
    drop(f.store); // the run dies
    let mut store = Store::open(&f.path, Durability::Normal).unwrap();
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 2);
    let s = store.summary().unwrap();
    assert_eq!(s.count(Status::Sent), 1);
    assert_eq!(s.count(Status::InDoubt), 2);
    assert_eq!(
        s.count(Status::Pending),
        2,
        "claimed, never marked: pending"
    );
    assert_eq!(s.count(Status::Sending), 0);
    assert_eq!(s.in_doubt, 2);
    let r = row(&store, 5);
    assert_eq!((r.in_doubt, r.last_attempt_at), (false, None));
    // The marks are gone: a second recovery finds nothing.
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 0);
}

#[test]
fn without_marks_every_sending_row_stays_in_doubt() {
    // A file last run by an edm without marks: nothing is assumed unsent.
    let mut f = fixture(2);
    f.store.claim(2, 10).unwrap();
    assert_eq!(f.store.recover_in_doubt(InDoubtPolicy::Resend).unwrap(), 2);
}
