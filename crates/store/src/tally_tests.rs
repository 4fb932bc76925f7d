//! The tallies after any sequence of every operation that changes rows
//! (schema version 7 keeps them in the statements, not in triggers): a
//! proptest drives a SQLite store and a memory store through the same random
//! operations and checks after each one that the counts the stores answer
//! with (`summary`, `domain_counts`) are those of the rows themselves
//! (`export_rows`), and, for SQLite, that the `tally` and `domain_tally`
//! tables equal a `GROUP BY` over `recipients`. A statement that forgot its
//! delta fails it within a few operations.

use std::collections::BTreeMap;

use edm_model::{Category, DomainCounts, Failure, RecipientId, Reply, Stage, Status};
use proptest::prelude::*;

use crate::{
    CampaignStore, Durability, ExportFilter, InDoubtPolicy, LateKind, LateOutcome, MemoryStore,
    NewRow, Outcome, OutcomeKind, Store,
};

/// The statuses ingest may store.
const INGESTED: [Status; 4] = [
    Status::Pending,
    Status::Invalid,
    Status::Skipped,
    Status::Suppressed,
];

const DOMAINS: [&str; 3] = ["a.example", "b.example", "c.example"];

#[derive(Clone, Debug)]
enum Op {
    /// Rows of (ingested status index, domain index).
    Insert(Vec<(u8, u8)>),
    Claim {
        limit: u8,
        max_due: u8,
        now: u16,
    },
    /// (row pick, outcome kind, category pick); `unknown` adds an id the
    /// store does not have at the end, which rolls the whole batch back.
    Record {
        outcomes: Vec<(u8, u8, u8)>,
        unknown: bool,
    },
    Mark(Vec<u8>),
    Recover {
        resend: bool,
    },
    Reset {
        statuses: u16,
        categories: u32,
    },
    Skip(Vec<u8>),
    Late {
        pick: u8,
        kind: u8,
    },
    Discard,
    /// The run's writer's next hot commit writes the `domain_tally`
    /// changes it kept back (its half-second tick).
    Tick,
    /// The writer dies: what it kept back is lost, the store is dropped
    /// without writing it, read by another process, then opened again.
    Crash,
    /// The end of the run (`finish_run`).
    Finish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((0u8..4, 0u8..3), 1..8).prop_map(Op::Insert),
        3 => (0u8..8, 0u8..8, 0u16..400).prop_map(|(limit, max_due, now)| Op::Claim { limit, max_due, now }),
        4 => (prop::collection::vec((any::<u8>(), 0u8..7, any::<u8>()), 1..6), prop::bool::weighted(0.1))
            .prop_map(|(outcomes, unknown)| Op::Record { outcomes, unknown }),
        1 => prop::collection::vec(any::<u8>(), 1..4).prop_map(Op::Mark),
        1 => any::<bool>().prop_map(|resend| Op::Recover { resend }),
        1 => (any::<u16>(), any::<u32>()).prop_map(|(statuses, categories)| Op::Reset { statuses, categories }),
        1 => prop::collection::vec(any::<u8>(), 1..4).prop_map(Op::Skip),
        1 => (any::<u8>(), 0u8..3).prop_map(|(pick, kind)| Op::Late { pick, kind }),
        1 => Just(Op::Discard),
        2 => Just(Op::Tick),
        1 => Just(Op::Crash),
        1 => Just(Op::Finish),
    ]
}

fn failure(category: u8, stage: Stage) -> Failure {
    let category = Category::ALL[usize::from(category) % Category::ALL.len()];
    Failure {
        stage,
        category,
        smtp_code: Some(450),
        enhanced_code: Some("4.2.0".into()),
        reply: format!("refused: {}", category.as_str()),
        permanent: false,
        retry_after: None,
    }
}

fn kind(k: u8, category: u8, now: i64) -> OutcomeKind {
    match k {
        0 => OutcomeKind::Sent {
            reply: Reply {
                code: 250,
                enhanced: None,
                text: "ok".into(),
                provider_message_id: None,
                relay: None,
            },
            message_id: format!("<{now}@edm>"),
            relay: String::new(),
        },
        1 => OutcomeKind::Deferred {
            failure: failure(category, Stage::RcptTo),
            next_attempt_at: now + i64::from(category),
            count_attempt: category.is_multiple_of(2),
            relay: "r1".into(),
        },
        2 => OutcomeKind::Failed {
            failure: failure(category, Stage::Data),
            relay: String::new(),
        },
        3 => OutcomeKind::Failed {
            failure: failure(category, Stage::Render),
            relay: String::new(),
        },
        4 => OutcomeKind::Released,
        5 => OutcomeKind::Held {
            failure: failure(category, Stage::MailFrom),
        },
        _ => OutcomeKind::InDoubt {
            failure: failure(category, Stage::Data),
            next_attempt_at: category.is_multiple_of(2).then_some(now + 5),
            relay: String::new(),
        },
    }
}

/// Runs one operation; errors the operation is allowed to end with (an
/// unknown recipient) are ignored, since the point is what it leaves.
fn run<S: CampaignStore>(store: &mut S, op: &Op, step: u64, next_line: &mut u64) {
    let ids: Vec<RecipientId> = {
        let mut ids: Vec<RecipientId> = store
            .rows_by_email()
            .unwrap()
            .values()
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    };
    let pick = |p: u8| ids.get(usize::from(p) % ids.len().max(1)).copied();
    let now = 1_000 + step as i64 * 10;
    match op {
        Op::Insert(rows) => {
            let rows: Vec<NewRow> = rows
                .iter()
                .map(|&(s, d)| {
                    *next_line += 1;
                    let status = INGESTED[usize::from(s)];
                    NewRow {
                        line: *next_line,
                        email: format!("r{}@{}", *next_line, DOMAINS[usize::from(d)]),
                        values: vec![],
                        status,
                        category: (status == Status::Invalid).then_some(Category::InvalidAddress),
                        reason: None,
                        duplicate_of: None,
                    }
                })
                .collect();
            store.insert_rows(&rows).unwrap();
        }
        Op::Claim {
            limit,
            max_due,
            now: at,
        } => {
            store
                .claim_with_budget(
                    usize::from(*limit),
                    usize::from(*max_due),
                    1_000 + i64::from(*at) * 5,
                )
                .unwrap();
        }
        Op::Record { outcomes, unknown } => {
            let mut batch: Vec<Outcome> = outcomes
                .iter()
                .filter_map(|&(p, k, c)| {
                    Some(Outcome {
                        id: pick(p)?,
                        at: now,
                        kind: kind(k, c, now),
                    })
                })
                .collect();
            if *unknown {
                batch.push(Outcome {
                    id: RecipientId(1_000_000),
                    at: now,
                    kind: OutcomeKind::Released,
                });
            }
            let result = store.record(&batch);
            assert_eq!(result.is_err(), *unknown, "{result:?}");
        }
        Op::Mark(picks) => {
            let marks: Vec<RecipientId> = picks.iter().filter_map(|&p| pick(p)).collect();
            store.record_and_mark(&[], &marks).unwrap();
        }
        Op::Recover { resend } => {
            let policy = if *resend {
                InDoubtPolicy::Resend
            } else {
                InDoubtPolicy::Skip
            };
            store.recover_in_doubt(policy).unwrap();
        }
        Op::Reset {
            statuses,
            categories,
        } => {
            let statuses: Vec<Status> = Status::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| statuses & (1 << i) != 0 && statuses & (1 << 12) != 0)
                .map(|(_, s)| *s)
                .collect();
            let categories: Vec<Category> = Category::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| categories & (1 << i) != 0 && categories & (1 << 31) != 0)
                .map(|(_, c)| *c)
                .collect();
            store.reset_for_retry(&statuses, &categories).unwrap();
        }
        Op::Skip(picks) => {
            let skip: Vec<RecipientId> = picks.iter().filter_map(|&p| pick(p)).collect();
            store.skip_unsent(&skip, "removed from the file").unwrap();
        }
        Op::Late { pick: p, kind } => {
            if let Some(id) = pick(*p) {
                let kind = [
                    LateKind::HardBounce,
                    LateKind::SoftBounce,
                    LateKind::Complaint,
                ][usize::from(*kind)];
                store
                    .apply_late(&LateOutcome {
                        id,
                        at: now,
                        key: format!("late-{step}"),
                        kind,
                        status: None,
                        diagnostic: None,
                        soft_bounce_limit: 2,
                    })
                    .unwrap();
            }
        }
        Op::Discard => {
            store.discard_recipients().unwrap();
            store.begin_ingest(&format!("csv-{step}")).unwrap();
        }
        Op::Finish => store.finish_run().unwrap(),
        // The SQLite store's own (the proptest's loop).
        Op::Tick | Op::Crash => {}
    }
}

/// The counts a store answers with equal those of its rows.
fn check_counts<S: CampaignStore>(store: &S, after: &Op) {
    let mut counts: BTreeMap<Status, u64> = Status::ALL.iter().map(|s| (*s, 0)).collect();
    let mut by_category: BTreeMap<Category, u64> = BTreeMap::new();
    let mut in_doubt = 0;
    let mut domains: BTreeMap<String, DomainCounts> = BTreeMap::new();
    store
        .export_rows(&ExportFilter::default(), &mut |row| {
            *counts.entry(row.status).or_default() += 1;
            in_doubt += u64::from(row.in_doubt);
            if let Some(c) = row.category
                && matches!(
                    row.status,
                    Status::Failed | Status::Deferred | Status::Invalid
                )
            {
                *by_category.entry(c).or_default() += 1;
            }
            let d = domains.entry(edm_model::domain_of(&row.email)).or_default();
            match row.status {
                Status::Sent => d.sent += 1,
                Status::Failed => d.failed += 1,
                Status::Deferred => d.deferred += 1,
                _ => {}
            }
        })
        .unwrap();
    let summary = store.summary().unwrap();
    assert_eq!(summary.counts, counts, "after {after:?}");
    assert_eq!(
        summary.total,
        counts.values().sum::<u64>(),
        "after {after:?}"
    );
    assert_eq!(summary.in_doubt, in_doubt, "after {after:?}");
    assert_eq!(summary.by_category, by_category, "after {after:?}");
    let answered: BTreeMap<String, DomainCounts> = store
        .domain_counts(usize::MAX)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(answered, domains, "after {after:?}");
}

/// SQLite's tally tables equal a `GROUP BY` over the rows, key by key;
/// `domain_tally` with what the run's writer keeps back in memory added
/// (lost or written twice, it would differ).
fn check_tables(store: &Store, after: &Op) {
    let rows = |sql: &str| -> Vec<(String, String, i64, i64)> {
        let mut st = store.conn.prepare(sql).unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    assert_eq!(
        rows("SELECT status, category, in_doubt, n FROM tally WHERE n != 0 ORDER BY 1, 2, 3"),
        rows(
            "SELECT status, coalesce(category, ''), in_doubt, count(*) FROM recipients
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        "tally after {after:?}"
    );
    let mut table: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (domain, status, _, n) in rows("SELECT domain, status, 0, n FROM domain_tally") {
        *table.entry((domain, status)).or_default() += n;
    }
    for domain in DOMAINS {
        for status in ["sent", "failed", "deferred", "other"] {
            let kept = store.behind.kept(domain, status);
            if kept != 0 {
                *table
                    .entry((domain.to_string(), status.to_string()))
                    .or_default() += kept;
            }
        }
    }
    let table: Vec<(String, String, i64, i64)> = table
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|((d, s), n)| (d, s, 0, n))
        .collect();
    assert_eq!(
        table,
        rows(&format!(
            "SELECT domain, {}, 0, count(*) FROM recipients GROUP BY 1, 2 ORDER BY 1, 2",
            crate::tally::DOMAIN_STATUS_SQL
        )),
        "domain_tally (with what is kept back) after {after:?}"
    );
    // The flag is on disk whenever something is kept back.
    if !store.behind.is_empty() {
        assert!(store.domains_behind().unwrap(), "flag after {after:?}");
    }
}

/// Opens the proptest's store as the run's writer does (the run lock), with
/// `domain_tally` changes kept back until a `Tick`, `Finish` or `Discard`.
fn open_writer(db: &std::path::Path) -> Store {
    let mut store = Store::open(db, Durability::Normal).unwrap();
    // Opened again after a "crash": counted from the rows, nothing behind.
    assert!(!store.domains_behind().unwrap());
    check_tables(&store, &Op::Crash);
    store.lock_for_run(std::process::id()).unwrap();
    store.behind.at_most = std::time::Duration::from_secs(3600);
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn tallies_follow_every_operation(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let mut sqlite = open_writer(&db);
        let mut memory = MemoryStore::new();
        let (mut line_s, mut line_m) = (1, 1);
        sqlite.begin_ingest("csv-0").unwrap();
        memory.begin_ingest("csv-0").unwrap();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Tick => sqlite.behind.due(),
                Op::Crash => {
                    // Nothing kept back reaches the file, as when the
                    // process dies (the drop would write it).
                    sqlite.behind.lose();
                    drop(sqlite);
                    // Another process reads before any writable open:
                    // counted from the rows, not from the stale table.
                    let reader = Store::open_read_only(&db).unwrap();
                    check_counts(&reader, op);
                    drop(reader);
                    sqlite = open_writer(&db);
                }
                _ => {}
            }
            run(&mut sqlite, op, step as u64, &mut line_s);
            run(&mut memory, op, step as u64, &mut line_m);
            check_tables(&sqlite, op);
            check_counts(&sqlite, op);
            check_counts(&memory, op);
        }
        // The end of the run leaves the table itself right.
        sqlite.finish_run().unwrap();
        assert!(sqlite.behind.is_empty());
        assert!(!sqlite.domains_behind().unwrap());
        check_tables(&sqlite, &Op::Finish);
    }
}

/// A writer that died with `domain_tally` changes kept back: a reader in
/// another process counts them from the rows, and the next writable open
/// counts the table again before anything reads it.
#[test]
fn domain_changes_kept_back_by_a_dead_writer_are_counted_from_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let mut store = Store::open(&db, Durability::Normal).unwrap();
    store.begin_ingest("csv-0").unwrap();
    let rows: Vec<NewRow> = (0..3)
        .map(|i| NewRow {
            line: i + 2,
            email: format!("r{i}@a.example"),
            values: vec![],
            status: Status::Pending,
            category: None,
            reason: None,
            duplicate_of: None,
        })
        .collect();
    store.insert_rows(&rows).unwrap();
    store.lock_for_run(std::process::id()).unwrap();
    store.behind.at_most = std::time::Duration::from_secs(3600);
    let claimed = store.claim(3, 1_000).unwrap();
    let sent: Vec<Outcome> = claimed[..2]
        .iter()
        .map(|r| Outcome {
            id: r.id,
            at: 1_000,
            kind: kind(0, 0, 1_000),
        })
        .collect();
    store.record(&sent).unwrap();
    let sent_in_table = |s: &Store| -> i64 {
        s.conn
            .query_row(
                "SELECT coalesce(sum(n), 0) FROM domain_tally WHERE status = 'sent'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // Kept back: the table is behind, the flag says so, the writer's own
    // reads are right.
    assert_eq!(sent_in_table(&store), 0);
    assert!(store.domains_behind().unwrap());
    assert_eq!(store.domain_counts(1).unwrap()[0].1.sent, 2);
    // While the writer lives, another process reads the table (at most
    // half a second behind).
    let reader = Store::open_read_only(&db).unwrap();
    assert_eq!(reader.domain_counts(1).unwrap()[0].1.sent, 0);
    drop(reader);
    store.behind.lose();
    drop(store);
    let reader = Store::open_read_only(&db).unwrap();
    assert_eq!(reader.domain_counts(1).unwrap()[0].1.sent, 2);
    assert_eq!(sent_in_table(&reader), 0);
    drop(reader);
    let store = Store::open(&db, Durability::Normal).unwrap();
    assert_eq!(sent_in_table(&store), 2);
    assert!(!store.domains_behind().unwrap());
    assert_eq!(store.domain_counts(1).unwrap()[0].1.sent, 2);
}
