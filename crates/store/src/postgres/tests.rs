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

/// The tallies (statement triggers, schema 4) follow rows deleted too: a
/// campaign's rows discarded leave its counts at zero, and a campaign
/// deleted with its rows (ON DELETE CASCADE, by hand) takes its tally rows
/// with it and leaves the other campaigns' counts alone.
#[test]
fn deleted_rows_and_campaigns_leave_the_tallies_right() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let (a, b) = (unique("delete-a"), unique("delete-b"));
    let mut one = PgStore::open(&options(&server.url(), &a, "f")).unwrap();
    let mut two = PgStore::open(&options(&server.url(), &b, "f")).unwrap();
    for s in [&mut one, &mut two] {
        s.begin_ingest("csv").unwrap();
        s.insert_rows(&(2..12).map(row).collect::<Vec<_>>())
            .unwrap();
        s.claim_with_budget(3, 0, 1).unwrap();
    }
    two.discard_recipients().unwrap();
    let counts = two.summary().unwrap();
    assert_eq!((counts.total, counts.count(Status::Sending)), (0, 0));
    let mut client = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    client
        .execute(
            "DELETE FROM edm.campaigns WHERE id = $1",
            &[&two.campaign_id()],
        )
        .unwrap();
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM edm.tally WHERE campaign_id = $1",
            &[&two.campaign_id()],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let counts = one.summary().unwrap();
    assert_eq!(
        (
            counts.total,
            counts.count(Status::Sending),
            counts.count(Status::Pending)
        ),
        (10, 3, 7)
    );
    // Deleted with its rows still there (the cascade deletes them too).
    client
        .execute(
            "DELETE FROM edm.campaigns WHERE id = $1",
            &[&one.campaign_id()],
        )
        .unwrap();
}

/// A worker of `name` on campaign `campaign`, joined.
fn worker(url: &str, campaign: &str, name: &str, lease_ms: u64) -> PgStore {
    let mut s = PgStore::open(&options(url, campaign, "f").with_worker(name)).unwrap();
    s.lease = crate::LeaseSettings {
        lease: std::time::Duration::from_millis(lease_ms),
        renew_every: std::time::Duration::from_millis(lease_ms / 3),
        margin: std::time::Duration::from_millis(lease_ms / 6),
    };
    s.lock_for_run(std::process::id()).unwrap();
    s
}

#[test]
fn a_worker_name_is_refused_while_its_lease_is_live() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("lock");
    let url = server.url();
    let first = worker(&url, &name, "w1", 30_000);
    // Another name joins the same campaign: several workers run it.
    let _second = worker(&url, &name, "w2", 30_000);
    let mut again = PgStore::open(&options(&url, &name, "f").with_worker("w1")).unwrap();
    let err = again.lock_for_run(4242).unwrap_err();
    assert!(matches!(err, Error::WorkerLive { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("a worker named \"w1\" is already sending"),
        "{text}"
    );
    assert!(text.contains("another --worker name"), "{text}");
    // The first leaves (its run ended): the name is free again.
    let mut lease = first.lease().unwrap().expect("a joined worker has a lease");
    lease.leave(&crate::WorkerFigures::default()).unwrap();
    again.lock_for_run(4242).unwrap();
    let workers = again.workers().unwrap();
    let w1 = workers.iter().find(|w| w.name == "w1").unwrap();
    assert!(w1.alive, "{w1:?}");
    assert_eq!(w1.pid, 4242);
    // The old incarnation's heartbeat finds its lease lost.
    let renewal = lease
        .renew(&crate::WorkerFigures::default(), crate::InDoubtPolicy::Skip)
        .unwrap();
    assert!(renewal.lost);
}

#[test]
fn workers_claim_disjoint_rows_and_a_dead_workers_rows_are_recovered() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("workers");
    let url = server.url();
    let mut a = worker(&url, &name, "a", 600);
    a.begin_ingest("csv").unwrap();
    a.insert_rows(&(2..22).map(row).collect::<Vec<_>>())
        .unwrap();
    let mut b = worker(&url, &name, "b", 60_000);
    let from_a = a.claim_with_budget(4, 0, 1).unwrap();
    let from_b = b.claim_with_budget(4, 0, 1).unwrap();
    let ids = |v: &[edm_model::Recipient]| v.iter().map(|r| r.id).collect::<Vec<_>>();
    let (ia, ib) = (ids(&from_a), ids(&from_b));
    assert!(ia.iter().all(|i| !ib.contains(i)), "{ia:?} {ib:?}");
    // `a` reaches the final dot of two (their marks), then stalls.
    a.record_and_mark(&[], &ia[..2]).unwrap();
    // A worker's mark of a row another worker sends is refused (fencing).
    let err = a.record_and_mark(&[], &[ib[0]]).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(err.to_string().contains("another worker sends it"), "{err}");
    b.record_and_mark(&[], &ib[..1]).unwrap();
    let mut b_lease = b.lease().unwrap().unwrap();
    let before = b_lease
        .renew(&crate::WorkerFigures::default(), crate::InDoubtPolicy::Skip)
        .unwrap();
    assert_eq!((before.lost, before.live), (false, 2), "{before:?}");
    assert!(before.recovered.is_empty(), "a live worker was recovered");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let after = b_lease
        .renew(&crate::WorkerFigures::default(), crate::InDoubtPolicy::Skip)
        .unwrap();
    assert_eq!(after.live, 1, "{after:?}");
    assert_eq!(
        after.recovered,
        vec![crate::Recovered {
            worker: "a".into(),
            released: 2,
            in_doubt: 2
        }]
    );
    let state = |s: &PgStore, id| s.recipient_state(id).unwrap().unwrap().1;
    assert_eq!(state(&b, ia[0]), Status::InDoubt, "marked: in doubt");
    assert_eq!(
        state(&b, ia[2]),
        Status::Pending,
        "unmarked: back to pending"
    );
    assert!(
        ib.iter().all(|i| state(&b, *i) == Status::Sending),
        "b's rows untouched"
    );
    // The zombie: its marks, claims and renewals are refused from now on.
    let err = a.record_and_mark(&[], &ia[2..3]).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(err.to_string().contains("lost its lease"), "{err}");
    let err = a.claim_with_budget(4, 0, 1).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    // b claims what a held (back to pending); the zombie's late outcome of
    // one of them (the engine returned it) leaves b's claim alone: a
    // `pending` there would let a third worker send it too.
    let again = b.claim_with_budget(20, 0, 1).unwrap();
    assert!(again.iter().any(|r| r.id == ia[2]), "{again:?}");
    a.record(&[crate::Outcome {
        id: ia[2],
        at: 3,
        kind: crate::OutcomeKind::Released,
    }])
    .unwrap();
    assert_eq!(
        state(&b, ia[2]),
        Status::Sending,
        "the zombie undid b's claim"
    );
    // A worker joining now recovers nothing of b's (live) at its start.
    let mut c = worker(&url, &name, "c", 60_000);
    assert_eq!(c.recover_in_doubt(crate::InDoubtPolicy::Skip).unwrap(), 0);
    assert!(ib.iter().all(|i| state(&c, *i) == Status::Sending));
    // The recovery was logged, naming the worker and the counts.
    let events = c.recent_events(20).unwrap();
    assert!(
        events.iter().any(|(_, kind, text)| kind == "worker"
            && text.contains(
                "worker a: its lease expired; 2 recipients it held back to pending, 2 in doubt"
            )),
        "{events:?}"
    );
    let workers = c.workers().unwrap();
    let a_row = workers.iter().find(|w| w.name == "a").unwrap();
    assert_eq!((a_row.state.as_str(), a_row.alive), ("dead", false));
}

#[test]
fn a_worker_restarted_under_its_name_recovers_its_own_rows_at_start() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("restart");
    let url = server.url();
    let mut a = worker(&url, &name, "a", 400);
    a.begin_ingest("csv").unwrap();
    a.insert_rows(&(2..6).map(row).collect::<Vec<_>>()).unwrap();
    let got = a.claim_with_budget(4, 0, 1).unwrap();
    a.record_and_mark(&[], &[got[0].id]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // "a" again (kill -9 and restart): it takes the name over and, at its
    // start, puts its predecessor's rows back (one in doubt).
    let mut again = worker(&url, &name, "a", 30_000);
    assert_eq!(
        again.recover_in_doubt(crate::InDoubtPolicy::Skip).unwrap(),
        1
    );
    let s = again.summary().unwrap();
    assert_eq!((s.count(Status::Pending), s.count(Status::InDoubt)), (3, 1));
    // The predecessor, had it survived, is fenced: another incarnation.
    let err = a.record_and_mark(&[], &[got[1].id]).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
}

#[test]
fn the_ingest_lock_makes_the_others_wait() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("ingest");
    let url = server.url();
    let mut first = PgStore::open(&options(&url, &name, "f")).unwrap();
    first.lock_ingest().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (d2, o2) = (done.clone(), options(&url, &name, "f"));
    let waiter = std::thread::spawn(move || {
        let mut second = PgStore::open(&o2).unwrap();
        second.lock_ingest().unwrap();
        // Only once the first released it.
        let seen = d2.load(std::sync::atomic::Ordering::SeqCst);
        second.unlock_ingest().unwrap();
        seen
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    first.unlock_ingest().unwrap();
    assert!(
        waiter.join().unwrap(),
        "the second took the ingest lock while the first held it"
    );
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

/// The end of an ingest gives the planner the table's statistics: planned
/// as if the campaign had a few rows, every outcome's lookup of its ids
/// read the campaign's whole index until autovacuum caught up.
#[test]
fn the_end_of_an_ingest_analyzes_the_table() {
    // A server of its own: the statistics are the whole table's.
    let Some(server) = fixture::start_or_skip() else {
        return;
    };
    let mut s = PgStore::open(&options(&server.url(), "analyzed", "f")).unwrap();
    s.begin_ingest("csv").unwrap();
    s.insert_rows(&(2..1202).map(row).collect::<Vec<_>>())
        .unwrap();
    let mut client = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    let estimate = |c: &mut postgres::Client| -> f32 {
        c.query_one(
            "SELECT reltuples FROM pg_class WHERE oid = 'edm.recipients'::regclass",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_ne!(estimate(&mut client), 1200.0, "analyzed before the end");
    s.finish_ingest(Some(&["email".to_string()]), &[]).unwrap();
    assert_eq!(estimate(&mut client), 1200.0);
}

/// A claim looks for pending rows after the last one it took, and from the
/// start when that runs short: a row released behind the cursor is claimed
/// again, nobody is passed over, and each row is claimed once.
#[test]
fn claims_go_on_after_the_last_and_come_back_for_rows_released_behind() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("cursor");
    let mut s = PgStore::open(&options(&server.url(), &name, "f")).unwrap();
    s.begin_ingest("csv").unwrap();
    s.insert_rows(&(2..22).map(row).collect::<Vec<_>>())
        .unwrap();
    let ids = |v: Vec<edm_model::Recipient>| v.into_iter().map(|r| r.id.0).collect::<Vec<_>>();
    let first = ids(s.claim_with_budget(5, 0, 1).unwrap());
    let second = ids(s.claim_with_budget(5, 0, 1).unwrap());
    assert!(
        first.iter().max() < second.iter().min(),
        "{first:?} {second:?}"
    );
    let released = first[1];
    s.record(&[crate::Outcome {
        id: edm_model::RecipientId(released),
        at: 2,
        kind: crate::OutcomeKind::Released,
    }])
    .unwrap();
    let rest = ids(s.claim_with_budget(50, 0, 3).unwrap());
    assert_eq!(rest.len(), 11, "{rest:?}");
    assert_eq!(rest[0], released, "the released row, behind the cursor");
    assert!(s.claim_with_budget(50, 0, 4).unwrap().is_empty());
    let mut all: Vec<i64> = first.into_iter().chain(second).chain(rest).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 20);
    assert_eq!(s.summary().unwrap().count(Status::Sending), 20);
}

/// Status changes of one campaign from several sessions at once never
/// deadlock. The tally trigger updates one row per (status, category, in
/// doubt) and per domain: a claim (`pending` -> `sending`) locks the
/// `pending` row, then the `sending` one; a release, a deferral or a dead
/// worker's recovery (`sending` -> `pending`) locks them the other way
/// round. Without one order, PostgreSQL finds a deadlock and aborts one of
/// them (40P01), which stopped a worker's run in the middle of a campaign.
#[test]
fn claims_and_releases_from_several_sessions_never_deadlock() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("deadlock");
    let url = server.url();
    let mut a = PgStore::open(&options(&url, &name, "f")).unwrap();
    a.begin_ingest("csv").unwrap();
    // Two domains: the per-domain tally rows are locked in row order too.
    let rows: Vec<NewRow> = (2..202)
        .map(|line| NewRow {
            email: format!("r{line}@d{}.example", line % 2),
            ..row(line)
        })
        .collect();
    a.insert_rows(&rows).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let o = options(&url, &name, "f");
            std::thread::spawn(move || -> Result<u32, String> {
                let mut s = PgStore::open(&o).map_err(|e| e.to_string())?;
                let mut rounds = 0;
                let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
                while std::time::Instant::now() < until {
                    let got = s
                        .claim_with_budget(3 + t, 0, 1)
                        .map_err(|e| format!("claim: {e}"))?;
                    let released: Vec<crate::Outcome> = got
                        .iter()
                        .rev()
                        .map(|r| crate::Outcome {
                            id: r.id,
                            at: 1,
                            kind: crate::OutcomeKind::Released,
                        })
                        .collect();
                    s.record(&released).map_err(|e| format!("release: {e}"))?;
                    rounds += 1;
                }
                Ok(rounds)
            })
        })
        .collect();
    let mut rounds = 0;
    for h in handles {
        rounds += h.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(rounds > 0);
    assert_eq!(a.summary().unwrap().count(Status::Pending), 200);
    // The order comes from the campaign's tally lock, which a status change
    // takes and a change of no count (a Message-ID written) does not.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let tally_locks = |tx: &mut postgres::Transaction<'_>| -> i64 {
        tx.query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
               AND pid = pg_backend_pid() AND classid::bigint = $1 AND objid::bigint = $2",
            &[
                &i64::from(super::schema::TALLY_LOCK_CLASS),
                &a.campaign_id(),
            ],
        )
        .unwrap()
        .get(0)
    };
    let mut tx = client.transaction().unwrap();
    tx.execute(
        "UPDATE edm.recipients SET message_id = '<x@t>' WHERE campaign_id = $1 AND line = 2",
        &[&a.campaign_id()],
    )
    .unwrap();
    assert_eq!(tally_locks(&mut tx), 0, "no count changed");
    tx.execute(
        "UPDATE edm.recipients SET status = 'skipped' WHERE campaign_id = $1 AND line = 2",
        &[&a.campaign_id()],
    )
    .unwrap();
    assert_eq!(tally_locks(&mut tx), 1, "a status changed");
    tx.rollback().unwrap();
}

/// A transaction the server rolls back to break a deadlock (40P01) runs
/// again rather than failing the run: here another session holds the
/// campaign's tally lock and then waits for the row the store's release
/// holds; the store's session, waiting longest, is the one PostgreSQL
/// aborts.
#[test]
fn a_transaction_rolled_back_by_a_deadlock_runs_again() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("rolledback");
    let url = server.url();
    let mut s = PgStore::open(&options(&url, &name, "f")).unwrap();
    s.begin_ingest("csv").unwrap();
    s.insert_rows(&[row(2)]).unwrap();
    let claimed = s.claim_with_budget(1, 0, 1).unwrap();
    let rid = claimed[0].id;
    let campaign = s.campaign_id();
    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = other.transaction().unwrap();
    // This session never detects the deadlock itself (the store's does).
    tx.batch_execute("SET LOCAL deadlock_timeout = '60s'")
        .unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)::text",
        &[
            &super::schema::TALLY_LOCK_CLASS,
            &i32::try_from(campaign).unwrap(),
        ],
    )
    .unwrap();
    let release = std::thread::spawn(move || {
        let r = s.record(&[crate::Outcome {
            id: rid,
            at: 1,
            kind: crate::OutcomeKind::Released,
        }]);
        (s, r)
    });
    // The release holds the row and waits for the tally lock; this session
    // now waits for the row: a cycle, broken after the store's
    // deadlock_timeout (1 s) by aborting the store's transaction.
    std::thread::sleep(std::time::Duration::from_millis(300));
    tx.execute(
        "UPDATE edm.recipients SET updated_at = 7 WHERE campaign_id = $1 AND id = $2",
        &[&campaign, &rid.0],
    )
    .unwrap();
    tx.rollback().unwrap();
    let (s, result) = release.join().unwrap();
    result.unwrap();
    assert_eq!(s.recipient_state(rid).unwrap().unwrap().1, Status::Pending);
    assert_eq!(s.summary().unwrap().count(Status::Sending), 0);
}

fn sent(id: edm_model::RecipientId, at: i64) -> crate::Outcome {
    crate::Outcome::sent_for_test(id, at, format!("<{}@t>", id.0))
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

#[test]
fn a_heartbeat_counts_the_live_workers_and_sees_the_others_throttled() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("share");
    let url = server.url();
    let a = worker(&url, &name, "a", 30_000);
    let b = worker(&url, &name, "b", 30_000);
    let (mut la, mut lb) = (a.lease().unwrap().unwrap(), b.lease().unwrap().unwrap());
    let policy = crate::InDoubtPolicy::Resend;
    // a's relay throttles it to half its target: b sees it, a does not see
    // its own ratio (it is in its rate already).
    let throttled = crate::WorkerFigures {
        sent: 7,
        rate: Some(5.0),
        share: 0.5,
        throttle: Some(0.5),
        ..Default::default()
    };
    let seen_by_a = la.renew(&throttled, policy).unwrap();
    let seen_by_b = lb.renew(&crate::WorkerFigures::default(), policy).unwrap();
    assert_eq!((seen_by_a.live, seen_by_a.min_throttle), (2, 1.0));
    assert_eq!((seen_by_b.live, seen_by_b.min_throttle), (2, 0.5));
    let rows = b.workers().unwrap();
    let row = rows.iter().find(|w| w.name == "a").unwrap();
    assert_eq!(
        (row.sent, row.rate, row.share, row.throttle),
        (7, Some(5.0), Some(0.5), Some(0.5))
    );
    // a leaves: b alone, at the whole share.
    la.leave(&throttled).unwrap();
    let alone = lb.renew(&crate::WorkerFigures::default(), policy).unwrap();
    assert_eq!((alone.live, alone.min_throttle), (1, 1.0));
}

#[test]
fn the_operators_pause_and_rate_reach_every_worker() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("controls");
    let url = server.url();
    let a = worker(&url, &name, "a", 30_000);
    let b = worker(&url, &name, "b", 30_000);
    let (mut la, mut lb) = (a.lease().unwrap().unwrap(), b.lease().unwrap().unwrap());
    let policy = crate::InDoubtPolicy::Resend;
    let figures = crate::WorkerFigures::default();
    assert_eq!(lb.renew(&figures, policy).unwrap().controls, None);
    assert_eq!(la.publish(Some(true), None).unwrap(), 1);
    let seen = lb.renew(&figures, policy).unwrap().controls.unwrap();
    assert_eq!((seen.version, seen.paused, seen.rate), (1, true, None));
    assert_eq!(la.publish(None, Some(Some(50.0))).unwrap(), 2);
    let seen = lb.renew(&figures, policy).unwrap().controls.unwrap();
    assert_eq!(
        (seen.version, seen.paused, seen.rate),
        (2, true, Some(Some(50.0)))
    );
    // Resumed and unlimited, from b this time.
    lb.publish(Some(false), Some(None)).unwrap();
    let seen = la.renew(&figures, policy).unwrap().controls.unwrap();
    assert_eq!(
        (seen.version, seen.paused, seen.rate),
        (3, false, Some(None))
    );
}

/// The dashboard's stop is a count every worker's heartbeat reads (issue
/// 14 point 4), and the workers' rows are read on the heartbeat's
/// connection for the dashboard.
#[test]
fn the_operators_stop_is_counted_for_every_worker_and_the_rows_are_read() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("stops");
    let url = server.url();
    let a = worker(&url, &name, "a", 30_000);
    let b = worker(&url, &name, "b", 30_000);
    let (mut la, mut lb) = (a.lease().unwrap().unwrap(), b.lease().unwrap().unwrap());
    let policy = crate::InDoubtPolicy::Resend;
    let figures = crate::WorkerFigures {
        sent: 7,
        in_flight: 2,
        share: 0.5,
        ..crate::WorkerFigures::default()
    };
    assert_eq!(lb.renew(&figures, policy).unwrap().stops, 0);
    assert_eq!(la.publish_stop().unwrap(), 1);
    assert_eq!(lb.renew(&figures, policy).unwrap().stops, 1);
    assert_eq!(lb.publish_stop().unwrap(), 2);
    assert_eq!(la.renew(&figures, policy).unwrap().stops, 2);
    let rows = la.workers().unwrap();
    let names: Vec<&str> = rows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(rows.iter().all(|w| w.alive));
    let b_row = rows.iter().find(|w| w.name == "b").unwrap();
    assert_eq!(
        (b_row.sent, b_row.in_flight, b_row.share),
        (7, 2, Some(0.5))
    );
}

#[test]
fn workers_claiming_at_once_keep_a_daily_quota_for_their_sum() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("quota");
    let url = server.url();
    let mut first = worker(&url, &name, "q0", 30_000);
    first.begin_ingest("csv").unwrap();
    first
        .insert_rows(&(2..302).map(row).collect::<Vec<_>>())
        .unwrap();
    drop(first);
    let handles: Vec<_> = (1..4)
        .map(|i| {
            let url = url.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                let mut s = worker(&url, &name, &format!("q{i}"), 30_000);
                let mut n = 0;
                loop {
                    let got = s.claim_capped(7, 0, 1, Some((50, 0))).unwrap();
                    if got.is_empty() {
                        break n;
                    }
                    n += got.len();
                }
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 50, "three workers claimed past the quota of 50");
}

/// A store on a server of its own (restarted by the test) with `n` rows.
fn restartable(n: u64) -> Option<(fixture::PgServer, PgStore)> {
    restartable_for(n, super::DEFAULT_RECONNECT_FOR)
}

/// [`restartable`] with a bound on reconnecting.
fn restartable_for(
    n: u64,
    reconnect_for: std::time::Duration,
) -> Option<(fixture::PgServer, PgStore)> {
    let server = fixture::start_or_skip()?;
    let mut o = options(&server.url(), "restart", "f");
    o.reconnect_for = reconnect_for;
    let mut s = PgStore::open(&o).unwrap();
    s.begin_ingest("csv").unwrap();
    let rows: Vec<NewRow> = (2..n + 2).map(row).collect();
    for chunk in rows.chunks(500) {
        s.insert_rows(chunk).unwrap();
    }
    s.finish_ingest(Some(&["email".into()]), &[]).unwrap();
    Some((server, s))
}

/// Every row in exactly one state, and the trigger-kept tally equal to a
/// count of the rows.
fn assert_tally_matches_rows(server: &fixture::PgServer, s: &PgStore, total: u64) {
    let summary = s.summary().unwrap();
    assert_eq!(summary.total, total, "{summary:?}");
    let mut client = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    let counted: Vec<(String, i64)> = client
        .query(
            "SELECT status, count(*) FROM edm.recipients WHERE campaign_id = $1
             GROUP BY status ORDER BY status",
            &[&s.campaign_id()],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (st, n) in &counted {
        let st = Status::parse(st).unwrap();
        assert_eq!(summary.count(st), *n as u64, "{st:?}: tally {summary:?}");
    }
    assert_eq!(counted.iter().map(|(_, n)| *n as u64).sum::<u64>(), total);
}

/// A restart between two operations: the next one reconnects and runs, the
/// worker is still the campaign's (its name still refused to another
/// process: its lease lives in `edm.workers`, not in the session), and the
/// outage is in the campaign's event log.
#[test]
fn a_restart_between_two_operations_is_waited_out_and_the_run_lock_kept() {
    let Some((server, mut s)) = restartable(20) else {
        return;
    };
    s.lock_for_run(77).unwrap();
    let first = s.claim_with_budget(5, 5, 10).unwrap();
    assert_eq!(first.len(), 5);
    server.restart().unwrap();
    let next = s.claim_with_budget(5, 5, 11).unwrap();
    assert_eq!(next.len(), 5, "the claim after the restart ran");
    s.record(&first.iter().map(|r| sent(r.id, 12)).collect::<Vec<_>>())
        .unwrap();
    let mut other = PgStore::open(&options(&server.url(), "restart", "f")).unwrap();
    let err = other.lock_for_run(1).unwrap_err();
    assert!(
        matches!(err, Error::WorkerLive { .. }),
        "the worker was lost: {err}"
    );
    let events = s.recent_events(10).unwrap();
    assert!(
        events
            .iter()
            .any(|(_, kind, text)| kind == "store" && text.contains("unreachable for")),
        "{events:?}"
    );
    assert_eq!(s.summary().unwrap().count(Status::Sent), 5);
    assert_eq!(s.summary().unwrap().count(Status::Sending), 5);
}

/// Restarts in the middle of a run of claims, marks and outcomes: every row
/// ends sent exactly once (attempts 1), nothing is left `sending`, and the
/// tally equals the rows.
#[test]
fn restarts_in_the_middle_of_claims_and_records_lose_nothing() {
    let n = 3000;
    let Some((server, mut s)) = restartable(n) else {
        return;
    };
    s.lock_for_run(78).unwrap();
    let server = std::sync::Arc::new(server);
    let restarter = {
        let server = server.clone();
        std::thread::spawn(move || {
            for _ in 0..2 {
                std::thread::sleep(std::time::Duration::from_millis(400));
                server.restart().unwrap();
            }
        })
    };
    let mut now = 100;
    let mut claimed_total = 0;
    loop {
        now += 1;
        let got = s.claim_with_budget(25, 25, now).unwrap();
        if got.is_empty() {
            break;
        }
        claimed_total += got.len();
        let ids: Vec<_> = got.iter().map(|r| r.id).collect();
        s.record_and_mark(&[], &ids).unwrap();
        let outcomes: Vec<_> = got.iter().map(|r| sent(r.id, now)).collect();
        s.record(&outcomes).unwrap();
    }
    restarter.join().unwrap();
    assert_eq!(claimed_total as u64, n, "each row claimed once");
    let summary = s.summary().unwrap();
    assert_eq!(summary.count(Status::Sent), n, "{summary:?}");
    assert_tally_matches_rows(&server, &s, n);
    let mut attempts = Vec::new();
    s.export_rows(&crate::ExportFilter::default(), &mut |r| {
        attempts.push(r.attempts)
    })
    .unwrap();
    assert!(attempts.iter().all(|a| *a == 1), "an outcome applied twice");
    let events = s.recent_events(10).unwrap();
    assert!(events.iter().filter(|(_, k, _)| k == "store").count() >= 1);
}

/// The ambiguous case: each write's COMMIT happened but its reply was lost
/// (`lose_next_reply`), so it runs again on a new session. Repeating must
/// be right: the same claim's rows come back (none other is taken, none
/// stays `sending` unknown), an outcome's attempt is counted once, an
/// ingest batch is not refused as a second copy, a pass keeps its
/// generation, an event is logged once.
#[test]
fn a_lost_commit_reply_is_repeated_without_doing_twice() {
    let Some(server) = fixture::start_or_skip() else {
        return;
    };
    let mut s = PgStore::open(&options(&server.url(), "ambiguous", "f")).unwrap();
    s.conn.lose_next_reply().unwrap();
    let pass = s.begin_ingest("csv").unwrap();
    assert_eq!(pass.generation, 0);
    s.conn.lose_next_reply().unwrap();
    s.insert_rows(&[row(2), row(3), row(4), row(5)]).unwrap();
    assert_eq!(s.ingest_pass().unwrap().unwrap().rows, 4);
    s.lock_for_run(79).unwrap();
    // Two claims in one millisecond, the second one's reply lost.
    let a = s.claim_with_budget(1, 1, 50).unwrap();
    s.conn.lose_next_reply().unwrap();
    let b = s.claim_with_budget(2, 2, 50).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(b.iter().all(|r| r.id != a[0].id));
    assert_eq!(
        s.summary().unwrap().count(Status::Sending),
        3,
        "the repeat took other rows"
    );
    s.conn.lose_next_reply().unwrap();
    s.record_and_mark(&[sent(a[0].id, 51)], &[b[0].id]).unwrap();
    s.conn.lose_next_reply().unwrap();
    s.log_event(52, "stop", "once").unwrap();
    let mut attempts = std::collections::BTreeMap::new();
    s.export_rows(&crate::ExportFilter::default(), &mut |r| {
        attempts.insert(r.line, (r.status, r.attempts));
    })
    .unwrap();
    assert_eq!(attempts[&2], (Status::Sent, 1), "{attempts:?}");
    assert_eq!(
        s.recent_events(10)
            .unwrap()
            .iter()
            .filter(|(_, k, t)| k == "stop" && t == "once")
            .count(),
        1
    );
    // The session was dropped each time: the worker is still live.
    let mut other = PgStore::open(&options(&server.url(), "ambiguous", "f")).unwrap();
    let err = other.lock_for_run(1).unwrap_err();
    assert!(matches!(err, Error::WorkerLive { .. }), "{err}");
    assert_tally_matches_rows(&server, &s, 4);
}

/// A server gone for longer than the bound: the operation fails with a
/// clear error naming the store, not hanging; later calls fail at once; and
/// once the server is back a new store (the next `edm send`) works.
#[test]
fn a_server_gone_longer_than_the_bound_fails_clearly() {
    let Some(server) = fixture::start_or_skip() else {
        return;
    };
    let mut o = options(&server.url(), "gone", "f");
    o.reconnect_for = std::time::Duration::from_millis(700);
    let mut s = PgStore::open(&o).unwrap();
    s.begin_ingest("csv").unwrap();
    s.insert_rows(&[row(2)]).unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let err = s.claim_with_budget(1, 1, 5).unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("postgres://postgres@127.0.0.1:"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let again = std::time::Instant::now();
    assert!(s.summary().is_err());
    assert!(
        again.elapsed() < std::time::Duration::from_millis(600),
        "a second call waited the bound again"
    );
    drop(s);
    server.start_again().unwrap();
    let mut s = PgStore::open(&o).unwrap();
    assert_eq!(s.claim_with_budget(1, 1, 6).unwrap().len(), 1);
}

/// Connection-level errors are told from statement errors by SQLSTATE and
/// by the connection's state.
#[test]
fn lost_connections_are_told_from_refused_statements() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let mut client = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    let refused = client.execute("SELECT no_such_column", &[]).unwrap_err();
    assert!(!super::conn::lost_connection(&refused), "{refused}");
    // The operator is told what the server said, not "db error".
    let said = super::conn::reason(&refused);
    assert!(said.starts_with("42703: column"), "{said}");
    let mut victim = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let lost = loop {
        match victim.execute("SELECT 1", &[]) {
            Err(e) => break e,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    assert!(super::conn::lost_connection(&lost), "{lost:?}");
    // A transaction left idle past idle_in_transaction_session_timeout (a
    // worker frozen in the middle of one): the server ends the session, and
    // the operation runs again on a new one. Here the client sees the
    // session closed; a client frozen inside a call reads the server's
    // 25P03 as its statement's error instead, which counts as lost too
    // (`lost_connection`; e2e `a_frozen_worker_is_fenced_when_it_wakes_up`).
    let mut idle = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    idle.batch_execute("SET idle_in_transaction_session_timeout = 100")
        .unwrap();
    let mut tx = idle.transaction().unwrap();
    tx.execute("SELECT 1", &[]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let ended = tx.execute("SELECT 1", &[]).unwrap_err();
    assert!(super::conn::lost_connection(&ended), "{ended:?}");
    drop(tx);
    // Refused connections name their cause.
    let port = server.port();
    let mut closed = postgres::Config::new();
    closed
        .host("127.0.0.1")
        .port(dead_port(port))
        .user("postgres");
    let Err(refused) = closed.connect(postgres::NoTls) else {
        panic!("connected to a port nobody listens on");
    };
    let said = super::conn::reason(&refused);
    assert!(said.contains("Connection refused"), "{said}");
}

/// A loopback port nobody listens on (not `taken`).
fn dead_port(taken: u16) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    if port == taken {
        port.wrapping_add(1)
    } else {
        port
    }
}

/// The error and its sources, as `edm` prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

/// True when the store's session is encrypted (`pg_stat_ssl`).
fn on_tls(s: &PgStore) -> bool {
    s.conn
        .call(|c, path, _| {
            use super::conn::AtPg;
            Ok(c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .at(path)?
            .get::<_, bool>(0))
        })
        .unwrap()
}

/// TLS to the server (`ssl=on` with a certificate for 127.0.0.1 signed by a
/// throwaway CA, [`fixture::PgServer::enable_tls`]): `verify-full` with the CA file connects encrypted; with
/// another CA it is refused, saying why; `verify-full` to a name the
/// certificate does not hold is refused while `verify-ca` (chain only)
/// connects; `require` without a CA connects encrypted, unchecked; absent
/// or `disable` stays plain.
#[test]
fn tls_to_postgres_follows_sslmode_and_sslrootcert() {
    let Some(server) = fixture::start_or_skip() else {
        return;
    };
    let files = server.enable_tls().unwrap();
    let base = server.url();
    let ca = files.ca.clone();
    let open = |query: &str| PgStore::open(&options(&format!("{base}?{query}"), "tls", "f"));
    let full = open(&format!("sslmode=verify-full&sslrootcert={}", ca.display()))
        .unwrap_or_else(|e| panic!("verify-full with the CA: {}", chain(&e)));
    assert!(on_tls(&full), "verify-full connected in the clear");

    let other = files.other_ca.clone();
    let err = open(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other.display()
    ))
    .unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("TLS") || text.contains("certificate"),
        "{text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");

    // The certificate names 127.0.0.1, not localhost.
    let by_name = base.replace("127.0.0.1", "localhost");
    let named = |mode: &str| {
        PgStore::open(&options(
            &format!("{by_name}?sslmode={mode}&sslrootcert={}", ca.display()),
            "tls",
            "f",
        ))
    };
    let err = named("verify-full").unwrap_err();
    assert!(
        chain(&err).contains("not valid for name"),
        "{}",
        chain(&err)
    );
    assert!(on_tls(&named("verify-ca").unwrap()));

    assert!(on_tls(&open("sslmode=require").unwrap()));
    assert!(!on_tls(&open("sslmode=disable").unwrap()));
    assert!(!on_tls(
        &PgStore::open(&options(&base, "tls", "f")).unwrap()
    ));
}

/// `prefer` against a server without TLS: plain, as libpq does.
#[test]
fn sslmode_prefer_falls_back_to_plain() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let url = format!("{}?sslmode=prefer", server.url());
    let s = PgStore::open(&options(&url, &unique("prefer"), "f")).unwrap();
    assert!(!on_tls(&s));
    let err = PgStore::open(&options(
        &format!("{}?sslmode=require", server.url()),
        &unique("require"),
        "f",
    ))
    .unwrap_err();
    assert!(chain(&err).contains("TLS"), "{}", chain(&err));
}

/// A worker's session cut by the server while another worker joins: the
/// reconnection goes on (several workers run one campaign; its lease is in
/// `edm.workers`, not in the session), both stay live, and the new session
/// fences idle transactions again.
#[test]
fn a_workers_session_cut_while_another_joins_goes_on() {
    let Some(server) = fixture::shared() else {
        return;
    };
    let name = unique("cut");
    let a = worker(&server.url(), &name, "a", 30_000);
    let pid: i32 = a
        .conn
        .call(|c, path, _| {
            use super::conn::AtPg;
            Ok(c.query_one("SELECT pg_backend_pid()", &[]).at(path)?.get(0))
        })
        .unwrap();
    let mut admin = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let b = worker(&server.url(), &name, "other-host:22", 30_000);
    assert_eq!(a.meta("anything").unwrap(), None);
    let live: Vec<String> = b
        .workers()
        .unwrap()
        .into_iter()
        .filter(|w| w.alive)
        .map(|w| w.name)
        .collect();
    assert_eq!(live, ["a", "other-host:22"]);
    let timeout: String = a
        .conn
        .call(|c, path, _| {
            use super::conn::AtPg;
            Ok(c.query_one("SHOW idle_in_transaction_session_timeout", &[])
                .at(path)?
                .get(0))
        })
        .unwrap();
    assert_eq!(timeout, "15s", "the new session is set up again");
}

/// The writer's mark path over PostgreSQL: while the server restarts, a
/// mark waits and is then committed; with the server gone past the bound,
/// the mark fails (so the final dot is never written) and the run's failure
/// names the store.
#[test]
fn a_mark_waits_for_a_restart_and_fails_before_the_dot_past_the_bound() {
    let Some((server, mut s)) = restartable_for(4, std::time::Duration::from_secs(1)) else {
        return;
    };
    s.lock_for_run(33).unwrap();
    let claimed = s.claim_with_budget(4, 4, 5).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let writer = crate::Writer::spawn(Box::new(s)).unwrap();
    let marks = writer.marks();
    server.restart().unwrap();
    rt.block_on(marks.mark(claimed[0].id)).unwrap();
    server.stop();
    let err = rt.block_on(marks.mark(claimed[1].id)).unwrap_err();
    assert!(err.contains("unreachable"), "{err}");
    let failure = writer.failure().expect("the run is told");
    assert!(
        failure.contains("postgres://postgres@127.0.0.1:"),
        "{failure}"
    );
    drop(marks);
    let _ = writer.finish();
    server.start_again().unwrap();
    // What was committed: the first mark, not the second.
    let mut client = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    let marked: Vec<i64> = client
        .query("SELECT id FROM edm.dot_marks ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(marked, vec![claimed[0].id.0]);
}

/// Every network step has a limit by default (a dead server is noticed),
/// and the URL's own values win.
#[test]
fn connections_have_timeouts_and_the_urls_values_win() {
    let (c, _) = options("postgres://edm@db/edm", "c", "f").config().unwrap();
    assert_eq!(
        c.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(10))
    );
    assert_eq!(
        c.get_tcp_user_timeout(),
        Some(&std::time::Duration::from_secs(30))
    );
    assert!(c.get_keepalives());
    assert_eq!(c.get_keepalives_idle(), std::time::Duration::from_secs(15));
    let (c, _) = options(
        "postgres://edm@db/edm?keepalives_idle=60&tcp_user_timeout=5&connect_timeout=3",
        "c",
        "f",
    )
    .config()
    .unwrap();
    assert_eq!(c.get_keepalives_idle(), std::time::Duration::from_secs(60));
    assert_eq!(
        c.get_tcp_user_timeout(),
        Some(&std::time::Duration::from_secs(5))
    );
    assert_eq!(
        c.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(3))
    );
}
