//! What only the PostgreSQL store has: the URL rules, many campaigns in one
//! schema, the migration lock, the advisory run lock, the connection thread
//! (callable from inside tokio). The shared behaviour is in `suite.rs`.

use std::sync::atomic::{AtomicU32, Ordering};

use super::fixture;
use super::{OpenMode, PgOptions, PgStore};
use crate::{CampaignStore, Error, NewRow};
use edm_model::Status;

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn options(url: &str, name: &str, fingerprint: &str) -> PgOptions {
    PgOptions::parse(url, None, name, fingerprint).unwrap()
}

fn row(line: u64) -> NewRow {
    NewRow {
        line,
        email: format!("r{line}@x.example"),
        values: vec![format!("r{line}@x.example")],
        status: Status::Pending,
        category: None,
        reason: None,
        duplicate_of: None,
    }
}

#[test]
fn a_url_holding_a_password_is_refused_without_repeating_it() {
    for url in [
        "postgres://edm:s3cret-pw@db.example:5432/edm",
        "host=db.example user=edm password=s3cret-pw",
    ] {
        let err = PgOptions::parse(url, None, "c", "f").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("holds a password"), "{text}");
        assert!(text.contains("PGPASSWORD"), "{text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
    let err = PgOptions::parse("postgres://[oops", None, "c", "f").unwrap_err();
    assert!(matches!(err, Error::StoreConfig { .. }), "{err}");
    // The password given apart is never shown either.
    let o = PgOptions::parse(
        "postgres://edm@db.example/edm",
        Some("s3cret-pw".into()),
        "c",
        "f",
    )
    .unwrap();
    assert!(!format!("{o:?}").contains("s3cret-pw"));
    assert_eq!(
        o.location().display().to_string(),
        "postgres://edm@db.example:5432/edm campaign c"
    );
}

#[test]
fn campaigns_share_the_schema_and_stay_apart() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let (a, b) = (unique("apart-a"), unique("apart-b"));
    let mut one = PgStore::open(&options(&server.url(), &a, "f1")).unwrap();
    let mut two = PgStore::open(&options(&server.url(), &b, "f1")).unwrap();
    assert_ne!(one.campaign_id(), two.campaign_id());
    one.begin_ingest("csv").unwrap();
    one.insert_rows(&[row(2), row(3)]).unwrap();
    two.begin_ingest("csv").unwrap();
    two.insert_rows(&[row(2)]).unwrap();
    assert_eq!(one.summary().unwrap().total, 2);
    assert_eq!(two.summary().unwrap().total, 1);
    // A claim in one never takes the other's rows, nor records them.
    let claimed = two.claim_with_budget(10, 10, 1).unwrap();
    assert_eq!(claimed.len(), 1);
    let err = one
        .record(&[crate::Outcome {
            id: claimed[0].id,
            at: 2,
            kind: crate::OutcomeKind::Released,
        }])
        .unwrap_err();
    assert!(matches!(err, Error::UnknownRecipient { .. }), "{err}");
    one.set_meta("k", "one").unwrap();
    assert_eq!(two.meta("k").unwrap(), None);

    // The same campaign opened again (another process, say) sees its rows.
    let again = PgStore::open(&options(&server.url(), &a, "f1")).unwrap();
    assert_eq!(again.campaign_id(), one.campaign_id());
    assert_eq!(again.summary().unwrap().total, 2);
    // Same name, other fingerprint: refused, never a silent second campaign.
    let err = PgStore::open(&options(&server.url(), &a, "f2")).unwrap_err();
    assert!(
        err.to_string().contains("already in this database"),
        "{err}"
    );
    // A reader never creates a campaign.
    let err = PgStore::open_with(
        &options(&server.url(), &unique("missing"), "f1"),
        OpenMode::Existing,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn the_run_lock_is_exclusive_and_dies_with_its_session() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("lock");
    let mut first = PgStore::open(&options(&server.url(), &name, "f")).unwrap();
    first.lock_for_run(4242).unwrap();
    let mut second = PgStore::open(&options(&server.url(), &name, "f")).unwrap();
    let err = second.lock_for_run(1).unwrap_err();
    assert!(err.is_locked(), "{err}");
    assert!(err.to_string().contains("process 4242"), "{err}");
    // Another campaign's lock is another lock.
    let mut other = PgStore::open(&options(&server.url(), &unique("lock"), "f")).unwrap();
    other.lock_for_run(1).unwrap();
    // The session ends (a process killed ends it too): the lock is free.
    drop(first);
    second.lock_for_run(1).unwrap();
}

#[test]
fn migrations_run_once_under_the_lock() {
    let Some(server) = fixture::shared() else {
        return;
    };
    // Several processes starting at once: every open succeeds.
    let url = server.url();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let o = options(&url, &unique("migrate"), "f");
            std::thread::spawn(move || PgStore::open(&o).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM edm.schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=super::PG_SCHEMA_VERSION).collect::<Vec<_>>());
}

#[test]
fn a_schema_from_a_newer_edm_is_refused() {
    // A server of its own: the shared one must keep its schema.
    let Some(server) = fixture::start_or_skip() else {
        return;
    };
    PgStore::open(&options(&server.url(), "c", "f")).unwrap();
    let mut client = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    client
        .execute(
            "INSERT INTO edm.schema_migrations (version, applied_at) VALUES ($1, 0)",
            &[&(super::PG_SCHEMA_VERSION + 1)],
        )
        .unwrap();
    let err = PgStore::open(&options(&server.url(), "c", "f")).unwrap_err();
    assert!(matches!(err, Error::SchemaTooNew { .. }), "{err}");
}

/// The `postgres` crate panics when its calls run on a thread driving a
/// tokio runtime; the store's connection thread keeps it off those threads.
#[test]
fn usable_inside_a_tokio_runtime() {
    let Some(server) = fixture::shared() else {
        return;
    };
    for rt in [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ] {
        let url = server.url();
        let total = rt.block_on(async move {
            let mut store = PgStore::open(&options(&url, &unique("tokio"), "f")).unwrap();
            store.begin_ingest("csv").unwrap();
            store.insert_rows(&[row(2), row(3), row(4)]).unwrap();
            let claimed = store.claim_with_budget(2, 2, 1).unwrap();
            tokio::task::yield_now().await;
            let mut n = 0;
            store
                .export_rows(&crate::ExportFilter::default(), &mut |_| n += 1)
                .unwrap();
            (claimed.len(), n, store.summary().unwrap().total)
        });
        assert_eq!(total, (2, 3, 3));
    }
}

/// Claims skip rows another transaction holds (`FOR UPDATE SKIP LOCKED`):
/// two stores on one campaign never claim the same recipient.
#[test]
fn two_claimers_never_take_the_same_row() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("claimers");
    let mut a = PgStore::open(&options(&server.url(), &name, "f")).unwrap();
    a.begin_ingest("csv").unwrap();
    let rows: Vec<NewRow> = (2..402).map(row).collect();
    a.insert_rows(&rows).unwrap();
    let url = server.url();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let o = options(&url, &name, "f");
            std::thread::spawn(move || {
                let mut s = PgStore::open(&o).unwrap();
                let mut ids = Vec::new();
                loop {
                    let got = s.claim_with_budget(7, 0, 1).unwrap();
                    if got.is_empty() {
                        break ids;
                    }
                    ids.extend(got.iter().map(|r| r.id.0));
                }
            })
        })
        .collect();
    let mut all: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((n, all.len()), (400, 400), "each row claimed exactly once");
    assert_eq!(a.summary().unwrap().count(Status::Sending), 400);
}

fn sent(id: edm_model::RecipientId, at: i64) -> crate::Outcome {
    crate::Outcome {
        id,
        at,
        kind: crate::OutcomeKind::Sent {
            reply: edm_model::Reply {
                code: 250,
                enhanced: None,
                text: "ok".into(),
                provider_message_id: None,
                relay: None,
            },
            message_id: format!("<{}@t>", id.0),
            relay: "smtp".into(),
        },
    }
}

/// Runs of `Sent` outcomes go in one statement: an unknown id in a run still
/// fails the whole batch, and outcomes of one id apply in their order.
#[test]
fn batched_sent_outcomes_keep_order_and_refuse_unknown_ids() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let mut s = PgStore::open(&options(&server.url(), &unique("batch"), "f")).unwrap();
    s.begin_ingest("csv").unwrap();
    s.insert_rows(&[row(2), row(3), row(4)]).unwrap();
    let c = s.claim_with_budget(3, 3, 1).unwrap();
    let err = s
        .record(&[sent(c[0].id, 2), sent(edm_model::RecipientId(-5), 2)])
        .unwrap_err();
    assert!(matches!(err, Error::UnknownRecipient { .. }), "{err}");
    assert_eq!(
        s.summary().unwrap().count(Status::Sending),
        3,
        "rolled back"
    );
    let deferred = crate::Outcome {
        id: c[1].id,
        at: 2,
        kind: crate::OutcomeKind::Deferred {
            failure: edm_model::Failure::local(
                edm_model::Stage::RcptTo,
                edm_model::Category::Throttled,
                "slow down",
            ),
            next_attempt_at: 5,
            count_attempt: true,
            relay: String::new(),
        },
    };
    // Sent, then deferred then sent again for one id, in one batch.
    s.record(&[
        sent(c[0].id, 2),
        deferred,
        sent(c[1].id, 3),
        sent(c[2].id, 3),
    ])
    .unwrap();
    let mut rows = Vec::new();
    s.export_rows(&crate::ExportFilter::default(), &mut |r| {
        rows.push((r.status, r.attempts))
    })
    .unwrap();
    assert_eq!(
        rows,
        [(Status::Sent, 1), (Status::Sent, 2), (Status::Sent, 1)]
    );
}

/// A database an older edm left at schema version 1 (no late outcomes) is
/// migrated to version 2 when opened: its recipients keep what they had,
/// and a bounce can then be applied to them.
#[test]
fn a_version_1_schema_migrates_to_late_outcomes() {
    // A server of its own: the shared one is already at the latest version.
    let Some(server) = fixture::start_or_skip() else {
        return;
    };
    let url = server.url();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA edm;
             CREATE TABLE edm.schema_migrations (
                 version integer PRIMARY KEY, applied_at bigint NOT NULL);
             {}
             INSERT INTO edm.schema_migrations VALUES (1, 0);
             INSERT INTO edm.campaigns (name, fingerprint, created_at) VALUES ('old', 'f', 0);
             INSERT INTO edm.recipients (campaign_id, generation, line, email, email_norm,
                                         domain, fields, status, attempts, message_id,
                                         last_attempt_at, updated_at)
                  SELECT id, 1, 1, 'a@x.example', 'a@x.example', 'x.example',
                         '[\"a@x.example\"]', 'sent', 1, '<a@edm>', 5, 5
                  FROM edm.campaigns;",
            super::schema::V1
        ))
        .unwrap();
    let mut s = PgStore::open_with(&options(&url, "old", "f"), OpenMode::Existing).unwrap();
    let id = s.find_by_message_id("<a@edm>").unwrap().expect("kept");
    assert_eq!(s.late_counts().unwrap(), crate::LateCounts::default());
    let late = crate::LateOutcome {
        id,
        at: 9,
        key: "<dsn@mx>".into(),
        kind: crate::LateKind::HardBounce,
        status: Some("5.1.1".into()),
        diagnostic: None,
        soft_bounce_limit: 3,
    };
    assert_eq!(s.apply_late(&late).unwrap(), crate::LateApplied::Bounced);
    assert_eq!(
        s.apply_late(&late).unwrap(),
        crate::LateApplied::AlreadyApplied
    );
    assert_eq!(s.late_counts().unwrap().bounced, 1);
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM edm.schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=super::PG_SCHEMA_VERSION).collect::<Vec<_>>());
}
