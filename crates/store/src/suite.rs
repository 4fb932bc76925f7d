//! The suite of the [`CampaignStore`] seam: every test is written against
//! the trait and instantiated for each implementation by [`suite!`], so SQLite
//! and memory keep the same promises (and a PostgreSQL store, later, is added
//! by one more line at the bottom). The ingest checkpoint, the unique key and
//! the durable mark are part of it.

use edm_model::{Category, Failure, Recipient, RecipientId, Reply, Stage, Status, UnixMillis};

use crate::{
    CampaignStore, Error, ExportFilter, InDoubtPolicy, LateApplied, LateKind, LateOutcome,
    MemoryStore, NewRow, Outcome, OutcomeKind, Store, Unmatched,
};

/// An id no campaign has: a PostgreSQL server shared by the tests numbers
/// every campaign's rows from one sequence, so a small id may be anyone's.
const NOBODY: RecipientId = RecipientId(i64::MAX);

fn new_row(line: u64, email: &str) -> NewRow {
    NewRow {
        line,
        email: email.to_string(),
        values: vec![email.to_string(), format!("name {line}")],
        status: Status::Pending,
        category: None,
        reason: None,
        duplicate_of: None,
    }
}

/// A store holding `n` pending recipients on lines 2.., ingest complete.
fn with_rows<S: CampaignStore>(store: &mut S, n: u64) {
    store.begin_ingest("csv-1").unwrap();
    let rows: Vec<NewRow> = (0..n)
        .map(|i| {
            let domain = if i % 2 == 0 { "a.example" } else { "b.example" };
            new_row(i + 2, &format!("r{i}@{domain}"))
        })
        .collect();
    store.insert_rows(&rows).unwrap();
    let columns = ["email".to_string(), "name".to_string()];
    store.finish_ingest(Some(&columns), &[]).unwrap();
}

fn refusal(category: Category, code: u16, text: &str) -> Failure {
    Failure {
        stage: Stage::RcptTo,
        category,
        smtp_code: Some(code),
        enhanced_code: Some("5.1.1".into()),
        reply: text.into(),
        permanent: code >= 500,
        retry_after: None,
    }
}

fn outcome(r: &Recipient, at: UnixMillis, kind: OutcomeKind) -> Outcome {
    Outcome { id: r.id, at, kind }
}

fn sent(r: &Recipient, at: UnixMillis) -> Outcome {
    outcome(
        r,
        at,
        OutcomeKind::Sent {
            reply: Reply {
                code: 250,
                enhanced: Some("2.0.0".into()),
                text: "queued".into(),
                provider_message_id: Some(format!("provider-{}", r.id.0)),
                relay: None,
            },
            message_id: format!("<{}@edm>", r.id.0),
            relay: "smtp".into(),
        },
    )
}

fn status_of<S: CampaignStore>(store: &S, line: u64) -> Status {
    let mut found = None;
    store
        .export_rows(&ExportFilter::default(), &mut |row| {
            if row.line == line {
                found = Some(row.status);
            }
        })
        .unwrap();
    found.unwrap()
}

fn counts<S: CampaignStore>(store: &S, statuses: &[Status]) -> Vec<u64> {
    let s = store.summary().unwrap();
    statuses.iter().map(|st| s.count(*st)).collect()
}

/// The checkpoint moves with each batch; a line the pass already stored is
/// refused and its whole batch is rolled back; a new pass may reuse lines.
pub(crate) fn ingest_checkpoint_and_unique_key<S: CampaignStore>(store: &mut S) {
    assert_eq!(store.ingest_pass().unwrap(), None);
    let pass = store.begin_ingest("csv-1").unwrap();
    assert_eq!(
        (pass.generation, pass.after_line, pass.complete),
        (0, 0, false)
    );
    store
        .insert_rows(&[new_row(2, "a@x.example"), new_row(3, "b@x.example")])
        .unwrap();
    let pass = store.ingest_pass().unwrap().unwrap();
    assert_eq!((pass.after_line, pass.rows, pass.complete), (3, 2, false));
    assert_eq!(pass.source, "csv-1");

    // Line 3 again (a resumed pass that re-read it): refused, line 4 not stored.
    let err = store
        .insert_rows(&[new_row(4, "c@x.example"), new_row(3, "b@x.example")])
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
    assert_eq!(store.summary().unwrap().total, 2, "the batch rolled back");
    let pass = store.ingest_pass().unwrap().unwrap();
    assert_eq!((pass.after_line, pass.rows), (3, 2), "checkpoint unmoved");

    // Only ingest statuses are accepted.
    let mut bad = new_row(9, "d@x.example");
    bad.status = Status::Sent;
    let err = store.insert_rows(&[bad]).unwrap_err();
    assert!(matches!(err, Error::InvalidNewRow { line: 9, .. }), "{err}");

    let mut invalid = new_row(5, "not an address");
    invalid.status = Status::Invalid;
    invalid.category = Some(Category::InvalidAddress);
    invalid.reason = Some("no @".into());
    store
        .insert_rows(&[new_row(4, "c@x.example"), invalid])
        .unwrap();
    assert!(!store.is_ingested().unwrap());
    let columns = ["email".to_string(), "name".to_string()];
    store
        .finish_ingest(Some(&columns), &[("fingerprint.recipients", "csv-1")])
        .unwrap();
    assert!(store.is_ingested().unwrap());
    assert_eq!(store.columns().unwrap(), columns);
    assert_eq!(
        store.meta("fingerprint.recipients").unwrap().as_deref(),
        Some("csv-1")
    );
    let pass = store.ingest_pass().unwrap().unwrap();
    assert_eq!((pass.after_line, pass.rows, pass.complete), (5, 4, true));
    let s = store.summary().unwrap();
    assert_eq!((s.total, s.count(Status::Invalid)), (4, 1));
    assert_eq!(s.by_category.get(&Category::InvalidAddress), Some(&1));
    assert!(!store.ever_attempted().unwrap());

    // A changed file: a new generation, where line 2 is a new record.
    let pass = store.begin_ingest("csv-2").unwrap();
    assert_eq!(pass.generation, 1);
    store.insert_rows(&[new_row(2, "new@x.example")]).unwrap();
    assert_eq!(store.summary().unwrap().total, 5);
    let by_email = store.rows_by_email().unwrap();
    assert_eq!(by_email.len(), 5);
    assert_eq!(by_email["a@x.example"].1, Status::Pending);

    // A list nothing was sent to can be discarded whole.
    assert_eq!(store.discard_recipients().unwrap(), 5);
    assert!(!store.is_ingested().unwrap());
    assert_eq!(store.summary().unwrap().total, 0);
}

/// Pending rows by id first, then due deferred ones within the budget.
pub(crate) fn claim_order_and_retry_budget<S: CampaignStore>(store: &mut S) {
    with_rows(store, 5);
    let now = 1_000_000;
    let first = store.claim_with_budget(2, 2, now).unwrap();
    assert_eq!(first.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(first[0].attempts, 0);
    assert_eq!(first[0].first_attempt_at, Some(now));
    assert_eq!(first[0].values[1], "name 2");
    assert_eq!(counts(store, &[Status::Sending, Status::Pending]), [2, 3]);
    let deferred = |r: &Recipient, due: UnixMillis| {
        outcome(
            r,
            now,
            OutcomeKind::Deferred {
                relay: String::new(),
                failure: refusal(Category::Throttled, 451, "slow down"),
                next_attempt_at: due,
                count_attempt: true,
            },
        )
    };
    store
        .record(&[deferred(&first[0], now + 10), deferred(&first[1], now + 5)])
        .unwrap();
    let s = store.summary().unwrap();
    assert_eq!(
        (s.next_due, s.last_deferred_due),
        (Some(now + 5), Some(now + 10))
    );
    // No budget for retries: only pending rows, even when deferred ones are due.
    let later = now + 20;
    let next = store.claim_with_budget(10, 0, later).unwrap();
    assert_eq!(next.iter().map(|r| r.line).collect::<Vec<_>>(), [4, 5, 6]);
    // Then the due ones, earliest due first, with their attempts so far.
    let due = store.claim_with_budget(10, 1, later).unwrap();
    assert_eq!(due.iter().map(|r| r.line).collect::<Vec<_>>(), [3]);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(
        due[0].first_attempt_at,
        Some(now),
        "kept from the first attempt"
    );
    assert!(
        store.claim_with_budget(10, 10, now).unwrap().is_empty(),
        "not due yet"
    );
    assert_eq!(
        store
            .claim_with_budget(10, 10, later)
            .unwrap()
            .iter()
            .map(|r| r.line)
            .collect::<Vec<_>>(),
        [2]
    );
    assert!(store.ever_attempted().unwrap());
}

/// Every outcome kind, the tallies and the views.
pub(crate) fn outcomes_and_tallies<S: CampaignStore>(store: &mut S) {
    with_rows(store, 7);
    let now = 2_000_000;
    let c = store.claim_with_budget(7, 7, now).unwrap();
    let unknown = refusal(Category::RecipientUnknown, 550, "no such user");
    let outcomes = [
        sent(&c[0], now + 1),
        sent(&c[1], now + 2),
        outcome(
            &c[2],
            now + 3,
            OutcomeKind::Failed {
                relay: String::new(),
                failure: unknown.clone(),
            },
        ),
        outcome(
            &c[3],
            now + 4,
            OutcomeKind::Held {
                failure: refusal(Category::Auth, 530, "auth required"),
            },
        ),
        outcome(
            &c[4],
            now + 5,
            OutcomeKind::InDoubt {
                relay: String::new(),
                failure: Failure::local(
                    Stage::Data,
                    Category::ReadTimeout,
                    "no reply to the final dot",
                ),
                next_attempt_at: None,
            },
        ),
        outcome(&c[5], now + 6, OutcomeKind::Released),
    ];
    // An unknown id fails the whole batch: nothing of it is recorded.
    let mut with_unknown = outcomes.to_vec();
    with_unknown.push(Outcome {
        id: NOBODY,
        at: now,
        kind: OutcomeKind::Released,
    });
    let err = store.record(&with_unknown).unwrap_err();
    assert!(matches!(err, Error::UnknownRecipient { .. }), "{err}");
    assert_eq!(counts(store, &[Status::Sending]), [7]);

    store.record(&outcomes).unwrap();
    // A release never undoes a recorded result.
    store
        .record(&[outcome(&c[0], now + 7, OutcomeKind::Released)])
        .unwrap();
    let s = store.summary().unwrap();
    assert_eq!(
        counts(
            store,
            &[
                Status::Sent,
                Status::Failed,
                Status::Pending,
                Status::InDoubt,
                Status::Sending
            ]
        ),
        [2, 1, 2, 1, 1]
    );
    assert_eq!((s.total, s.in_doubt), (7, 1));
    assert_eq!(s.by_category.get(&Category::RecipientUnknown), Some(&1));
    assert_eq!(status_of(store, 2), Status::Sent);
    assert_eq!(
        status_of(store, 5),
        Status::Pending,
        "held: back to pending"
    );
    assert_eq!(store.sent_since(now + 2).unwrap(), 1);
    assert_eq!(store.sent_since(0).unwrap(), 2);
    // By relay: only rows a relay accepted name one (issue 12's by_relay).
    let by_relay = store.relay_counts(now + 2).unwrap();
    assert_eq!(by_relay.keys().collect::<Vec<_>>(), ["smtp"]);
    assert_eq!(by_relay["smtp"].by_status.get(&Status::Sent), Some(&2));
    assert_eq!(by_relay["smtp"].by_status.len(), 1);
    assert_eq!(by_relay["smtp"].sent_since, 1);
    assert_eq!(store.relay_counts(0).unwrap()["smtp"].sent_since, 2);

    // The held row keeps the reply that stopped the run, and no attempt.
    let mut rows = Vec::new();
    store
        .export_rows(&ExportFilter::default(), &mut |r| rows.push(r.clone()))
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.line).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6, 7, 8]
    );
    let held = &rows[3];
    assert_eq!((held.attempts, held.smtp_code), (0, Some(530)));
    assert_eq!(held.reply.as_deref(), Some("auth required"));
    assert_eq!(
        rows[0].message_id.as_deref(),
        Some(&*format!("<{}@edm>", c[0].id.0))
    );
    // Which relay sent it and the provider's own id (issue 12).
    assert_eq!(rows[0].relay.as_deref(), Some("smtp"));
    assert_eq!(
        rows[0].provider_message_id.as_deref(),
        Some(&*format!("provider-{}", c[0].id.0))
    );
    assert_eq!(
        (
            rows[2].relay.as_deref(),
            rows[2].provider_message_id.as_deref()
        ),
        (None, None)
    );
    assert_eq!((rows[4].in_doubt, rows[4].attempts), (true, 1));
    assert_eq!(rows[5].status, Status::Pending, "released");
    let mut in_doubt = 0;
    let filter = ExportFilter {
        in_doubt_only: true,
        ..ExportFilter::default()
    };
    store.export_rows(&filter, &mut |_| in_doubt += 1).unwrap();
    assert_eq!(in_doubt, 1);
    let filter = ExportFilter {
        statuses: vec![Status::Failed],
        categories: vec![Category::RecipientUnknown],
        in_doubt_only: false,
    };
    let mut failed = Vec::new();
    store
        .export_rows(&filter, &mut |r| failed.push(r.line))
        .unwrap();
    assert_eq!(failed, [4]);

    let recent = store.recent_failures(10).unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].reply, "550 5.1.1 no such user");
    assert_eq!(recent[0].category, Category::RecipientUnknown);
    let top = store.top_replies(5).unwrap();
    assert_eq!(
        top,
        [(Some(550), Some("5.1.1".into()), "no such user".into(), 1)]
    );
    let domains = store.domain_counts(5).unwrap();
    assert_eq!(domains[0].0, "a.example");
    assert_eq!((domains[0].1.sent, domains[0].1.failed), (1, 1));
    assert_eq!(domains[1].0, "b.example");

    // Rows removed from the file: skipped unless final or being sent.
    let n = store
        .skip_unsent(&[c[0].id, c[3].id, c[6].id], "removed")
        .unwrap();
    assert_eq!(n, 1, "only the held (pending) row");
}

/// Marks with outcomes in one commit; an outcome clears its mark; after a
/// crash only marked and unanswered rows are in doubt, the others go back.
pub(crate) fn durable_mark_bounds_in_doubt<S: CampaignStore>(store: &mut S) {
    with_rows(store, 4);
    let now = 3_000_000;
    let c = store.claim_with_budget(4, 4, now).unwrap();
    store.record_and_mark(&[], &[c[0].id, c[1].id]).unwrap();
    store
        .record_and_mark(&[sent(&c[1], now + 1)], &[c[2].id])
        .unwrap();
    // Marking twice is harmless.
    store.record_and_mark(&[], &[c[2].id]).unwrap();
    store
        .record(&[outcome(
            &c[2],
            now + 2,
            OutcomeKind::Failed {
                relay: String::new(),
                failure: refusal(Category::RecipientUnknown, 550, "no"),
            },
        )])
        .unwrap();
    // "Crash" here: c[0] marked, no reply; c[3] claimed, never marked.
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 1);
    assert_eq!(status_of(store, 2), Status::InDoubt);
    assert_eq!(
        status_of(store, 5),
        Status::Pending,
        "never marked: not in doubt"
    );
    assert_eq!(status_of(store, 3), Status::Sent);
    assert_eq!(status_of(store, 4), Status::Failed);
    let s = store.summary().unwrap();
    assert_eq!((s.in_doubt, s.count(Status::Sending)), (1, 0));
    let mut first = None;
    store
        .export_rows(&ExportFilter::default(), &mut |r| {
            if r.line == 5 {
                first = Some(r.last_attempt_at);
            }
        })
        .unwrap();
    assert_eq!(first, Some(None), "the claim is undone");
    // The marks were cleared: a second recovery finds nothing.
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Skip).unwrap(), 0);
}

/// A store whose runs never used marks (an older build's): every row left
/// `sending` is in doubt, and `Resend` makes it pending again, flagged.
pub(crate) fn without_marks_every_sending_row_is_in_doubt<S: CampaignStore>(store: &mut S) {
    with_rows(store, 3);
    store.claim_with_budget(2, 2, 1).unwrap();
    assert_eq!(store.recover_in_doubt(InDoubtPolicy::Resend).unwrap(), 2);
    let s = store.summary().unwrap();
    assert_eq!((s.in_doubt, s.count(Status::Pending)), (2, 3));
    let again = store.claim_with_budget(10, 10, 2).unwrap();
    assert_eq!(again.len(), 3, "resent");
}

/// The event log, the run lock, the metadata.
pub(crate) fn events_lock_and_meta<S: CampaignStore>(store: &mut S) {
    store.lock_for_run(std::process::id()).unwrap();
    store.lock_for_run(std::process::id()).unwrap();
    for (i, kind) in ["pause", "breaker", "stop"].iter().enumerate() {
        store
            .log_event(i as i64, kind, &format!("event {i}"))
            .unwrap();
    }
    let events = store.recent_events(2).unwrap();
    assert_eq!(
        events,
        [
            (1, "breaker".into(), "event 1".into()),
            (2, "stop".into(), "event 2".into())
        ]
    );
    assert_eq!(store.meta("nothing").unwrap(), None);
    store.set_meta("fingerprint.template", "t-1").unwrap();
    store.set_meta("fingerprint.template", "t-2").unwrap();
    assert_eq!(
        store.meta("fingerprint.template").unwrap().as_deref(),
        Some("t-2")
    );
    assert!(store.meta("created_at").unwrap().is_some());
    assert_eq!(store.take_repair_notice().unwrap(), 0);
    assert!(store.columns().unwrap().is_empty());
}

/// `edm retry`: chosen statuses and categories go back to pending with
/// their attempts reset; others stay; the tallies follow.
pub(crate) fn reset_for_retry_by_status_and_category<S: CampaignStore>(store: &mut S) {
    with_rows(store, 5);
    let c = store.claim_with_budget(5, 5, 1).unwrap();
    let unknown = refusal(Category::RecipientUnknown, 550, "no such user");
    let policy = refusal(Category::Policy, 554, "blocked");
    let failed = |r: &Recipient, f: &Failure| {
        outcome(
            r,
            2,
            OutcomeKind::Failed {
                relay: String::new(),
                failure: f.clone(),
            },
        )
    };
    store
        .record(&[
            sent(&c[0], 2),
            failed(&c[1], &unknown),
            failed(&c[2], &policy),
            failed(&c[3], &policy),
            outcome(
                &c[4],
                2,
                OutcomeKind::Deferred {
                    relay: String::new(),
                    failure: Failure {
                        permanent: false,
                        ..refusal(Category::Greylisted, 451, "later")
                    },
                    next_attempt_at: 100,
                    count_attempt: true,
                },
            ),
        ])
        .unwrap();
    // Failed and of category policy only: two.
    assert_eq!(
        store
            .reset_for_retry(&[Status::Failed], &[Category::Policy])
            .unwrap(),
        2
    );
    assert_eq!(status_of(store, 4), Status::Pending);
    assert_eq!(status_of(store, 5), Status::Pending);
    assert_eq!(status_of(store, 3), Status::Failed, "another category");
    assert_eq!(status_of(store, 6), Status::Deferred, "another status");
    assert_eq!(
        counts(store, &[Status::Pending, Status::Failed, Status::Sent]),
        [2, 1, 1]
    );
    let mut attempts = Vec::new();
    store
        .export_rows(&ExportFilter::default(), &mut |r| {
            if r.status == Status::Pending {
                attempts.push(r.attempts);
            }
        })
        .unwrap();
    assert_eq!(attempts, [0, 0], "attempts start again");
    // Every status by default (never sent ones): the rest but the sent one.
    assert_eq!(store.reset_for_retry(&[], &[]).unwrap(), 2);
    assert_eq!(counts(store, &[Status::Pending, Status::Sent]), [4, 1]);
    let again = store.claim_with_budget(10, 10, 3).unwrap();
    assert_eq!(again.len(), 4, "claimable again");
}

/// Instantiates every test of the suite for one implementation.
fn late(r: RecipientId, key: &str, kind: LateKind, status: &str) -> LateOutcome {
    LateOutcome {
        id: r,
        at: 5_000,
        key: key.to_string(),
        kind,
        status: Some(status.to_string()),
        diagnostic: Some(format!("diag {key}")),
        soft_bounce_limit: 3,
    }
}

fn late_of<S: CampaignStore>(store: &S, line: u64) -> Option<crate::LateState> {
    let mut found = None;
    store
        .export_rows(&ExportFilter::default(), &mut |row| {
            if row.line == line {
                found = Some(row.late.clone());
            }
        })
        .unwrap();
    found.flatten()
}

/// Schema V5: bounces and complaints on `sent` recipients, idempotent by
/// message key; soft bounces counted to the limit; the status, the daily
/// quota count and the tallies of statuses unchanged.
pub(crate) fn late_outcomes_apply_once<S: CampaignStore>(store: &mut S) {
    with_rows(store, 6);
    let rs = store.claim_with_budget(6, 6, 1_000).unwrap();
    let mut outs: Vec<Outcome> = rs[..5].iter().map(|r| sent(r, 2_000)).collect();
    outs.push(outcome(
        &rs[5],
        2_000,
        OutcomeKind::Failed {
            relay: String::new(),
            failure: refusal(Category::RecipientUnknown, 550, "no such user"),
        },
    ));
    store.record(&outs).unwrap();
    let before = store.summary().unwrap();
    let quota_before = store.sent_since(0).unwrap();
    let id = |i: usize| rs[i].id;

    assert_eq!(
        store
            .find_by_message_id(&format!("<{}@edm>", id(1).0))
            .unwrap(),
        Some(id(1))
    );
    assert_eq!(store.find_by_message_id("<nobody@edm>").unwrap(), None);
    assert_eq!(
        store
            .find_by_provider_message_id(&format!("provider-{}", id(2).0))
            .unwrap(),
        Some(id(2))
    );
    assert_eq!(
        store.find_by_provider_message_id("provider-0").unwrap(),
        None
    );
    assert_eq!(
        store.recipient_state(id(0)).unwrap(),
        Some((rs[0].email.clone(), Status::Sent))
    );
    assert_eq!(store.recipient_state(NOBODY).unwrap(), None);

    use LateKind::*;
    assert_eq!(
        store
            .apply_late(&late(id(0), "m1", HardBounce, "5.1.1"))
            .unwrap(),
        LateApplied::Bounced
    );
    // The same message again: nothing changes.
    assert_eq!(
        store
            .apply_late(&late(id(0), "m1", HardBounce, "5.1.1"))
            .unwrap(),
        LateApplied::AlreadyApplied
    );
    assert_eq!(
        store.apply_late(&late(id(1), "m2", Complaint, "")).unwrap(),
        LateApplied::Complained
    );
    // Soft bounces: counted, the third in a row is a hard one.
    assert_eq!(
        store
            .apply_late(&late(id(2), "s1", SoftBounce, "4.2.2"))
            .unwrap(),
        LateApplied::SoftBounce(1)
    );
    assert_eq!(
        store
            .apply_late(&late(id(2), "s1", SoftBounce, "4.2.2"))
            .unwrap(),
        LateApplied::AlreadyApplied
    );
    assert_eq!(
        store
            .apply_late(&late(id(3), "s2", SoftBounce, "4.4.7"))
            .unwrap(),
        LateApplied::SoftBounce(1)
    );
    assert_eq!(
        store
            .apply_late(&late(id(3), "s3", SoftBounce, "4.4.7"))
            .unwrap(),
        LateApplied::SoftBounce(2)
    );
    assert_eq!(
        store
            .apply_late(&late(id(3), "s4", SoftBounce, "4.4.7"))
            .unwrap(),
        LateApplied::Bounced
    );
    // A bounce after a complaint does not undo it; a complaint after a
    // bounce outranks it.
    assert_eq!(
        store
            .apply_late(&late(id(1), "m3", HardBounce, "5.1.1"))
            .unwrap(),
        LateApplied::Unchanged
    );
    assert_eq!(
        store.apply_late(&late(id(0), "m4", Complaint, "")).unwrap(),
        LateApplied::Complained
    );
    // Never sent: nothing changes.
    assert_eq!(
        store
            .apply_late(&late(id(5), "m5", HardBounce, "5.1.1"))
            .unwrap(),
        LateApplied::NotSent(Status::Failed)
    );
    assert_eq!(
        store
            .apply_late(&late(NOBODY, "m6", HardBounce, "5.1.1"))
            .unwrap(),
        LateApplied::NoSuchRecipient
    );

    assert_eq!(
        store.late_counts().unwrap(),
        crate::LateCounts {
            bounced: 1,
            complained: 2,
            soft_bounced: 1,
        }
    );
    let l = late_of(store, rs[3].line).unwrap();
    assert_eq!(l.outcome.as_deref(), Some("bounced"));
    assert_eq!(l.soft_bounces, 3);
    assert_eq!(l.status.as_deref(), Some("4.4.7"));
    assert_eq!(l.diagnostic.as_deref(), Some("diag s4"));
    assert_eq!(l.at, Some(5_000));
    let l = late_of(store, rs[2].line).unwrap();
    assert_eq!((l.outcome, l.soft_bounces), (None, 1));
    assert_eq!(late_of(store, rs[4].line), None);
    // What counted stays counted: statuses, tallies, the daily quota.
    assert_eq!(store.summary().unwrap(), before);
    assert_eq!(store.sent_since(0).unwrap(), quota_before);

    // The reputation window: latest first, hard bounces late or refused.
    let w = store.reputation_window(10).unwrap();
    assert_eq!(w.len(), 6);
    assert_eq!(w.iter().filter(|e| e.hard_bounce).count(), 2, "{w:?}");
    assert_eq!(w.iter().filter(|e| e.complaint).count(), 2, "{w:?}");
    assert_eq!(store.reputation_window(2).unwrap().len(), 2);

    // Unmatched messages are listed once.
    let u = Unmatched {
        key: "x1".into(),
        at: 7,
        summary: "bounce for who@else.example".into(),
    };
    assert!(store.record_unmatched(&u).unwrap());
    assert!(!store.record_unmatched(&u).unwrap());
    assert_eq!(store.unmatched().unwrap(), vec![u]);
}

/// The reputation window merges sent and failed recipients, latest outcome
/// first, and leaves out the others (deferred): each status is read through
/// its own index on SQLite, so the merge must keep the order and the limit.
pub(crate) fn reputation_window_is_the_latest_outcomes<S: CampaignStore>(store: &mut S) {
    with_rows(store, 8);
    let rs = store.claim_with_budget(8, 8, 500).unwrap();
    let failed = |r: &Recipient, at, category, code| {
        outcome(
            r,
            at,
            OutcomeKind::Failed {
                relay: String::new(),
                failure: refusal(category, code, "refused"),
            },
        )
    };
    // Rows alternate a.example / b.example (with_rows).
    store
        .record(&[
            sent(&rs[0], 1_000),
            sent(&rs[1], 3_000),
            sent(&rs[2], 5_000),
            sent(&rs[3], 7_000),
            failed(&rs[4], 2_000, Category::Policy, 550),
            failed(&rs[5], 6_000, Category::Policy, 550),
            failed(&rs[6], 8_000, Category::RecipientUnknown, 550),
            outcome(
                &rs[7],
                9_000,
                OutcomeKind::Deferred {
                    relay: String::new(),
                    failure: refusal(Category::Throttled, 451, "slow down"),
                    next_attempt_at: 20_000,
                    count_attempt: true,
                },
            ),
        ])
        .unwrap();
    let seen = |limit| {
        store
            .reputation_window(limit)
            .unwrap()
            .into_iter()
            .map(|e| (e.domain, e.hard_bounce))
            .collect::<Vec<_>>()
    };
    let entry = |d: &str, hard| (d.to_string(), hard);
    // Latest first: row 6 (failed, unknown user), 3 (sent), 5 (failed), 2 (sent).
    assert_eq!(
        seen(4),
        vec![
            entry("a.example", true),
            entry("b.example", false),
            entry("b.example", false),
            entry("a.example", false),
        ]
    );
    // Everything but the deferred row, oldest last (row 0, sent at 1,000).
    let all = seen(100);
    assert_eq!(all.len(), 7, "{all:?}");
    assert_eq!(all[6], entry("a.example", false));
    assert_eq!(all[5], entry("a.example", false), "row 4, failed at 2,000");
    assert_eq!(seen(0).len(), 0);
}

/// Failed, deferred and in-doubt outcomes name their relay too (`status
/// --json` `by_relay` counted only `sent` before); an outcome with no relay
/// (a render failure) keeps the one the row had; a retry through another
/// relay moves the row to it.
pub(crate) fn every_outcome_names_its_relay<S: CampaignStore>(store: &mut S) {
    with_rows(store, 5);
    let now = 3_000_000;
    let c = store.claim_with_budget(5, 5, now).unwrap();
    let unknown = refusal(Category::RecipientUnknown, 550, "no such user");
    let busy = refusal(Category::Throttled, 451, "slow down");
    let failed = |relay: &str, f: &Failure| OutcomeKind::Failed {
        failure: f.clone(),
        relay: relay.into(),
    };
    let deferred = |relay: &str| OutcomeKind::Deferred {
        failure: busy.clone(),
        next_attempt_at: now,
        count_attempt: true,
        relay: relay.into(),
    };
    store
        .record(&[
            outcome(&c[0], now, failed("a", &unknown)),
            outcome(&c[1], now, deferred("b")),
            outcome(
                &c[2],
                now,
                OutcomeKind::InDoubt {
                    failure: Failure::local(Stage::Data, Category::ReadTimeout, "no reply"),
                    next_attempt_at: None,
                    relay: "a".into(),
                },
            ),
            outcome(&c[3], now, deferred("b")),
            outcome(
                &c[4],
                now,
                failed(
                    "",
                    &Failure::local(Stage::Render, Category::Template, "bad"),
                ),
            ),
        ])
        .unwrap();
    let count = |store: &S, relay: &str, st: Status| {
        store
            .relay_counts(0)
            .unwrap()
            .get(relay)
            .and_then(|r| r.by_status.get(&st).copied())
            .unwrap_or(0)
    };
    assert_eq!(count(store, "a", Status::Failed), 1);
    assert_eq!(count(store, "a", Status::InDoubt), 1);
    assert_eq!(count(store, "b", Status::Deferred), 2);
    assert_eq!(
        store.relay_counts(0).unwrap().len(),
        2,
        "a render failure names no relay"
    );
    // c[1] retried and sent through "a"; c[3] fails to render on retry:
    // it keeps "b", the relay that last had it.
    let again = store.claim_with_budget(5, 5, now + 1).unwrap();
    assert_eq!(again.len(), 2);
    let (r1, r3) = if again[0].id == c[1].id {
        (&again[0], &again[1])
    } else {
        (&again[1], &again[0])
    };
    let mut to_a = sent(r1, now + 2);
    if let OutcomeKind::Sent { relay, .. } = &mut to_a.kind {
        *relay = "a".into();
    }
    store
        .record(&[
            to_a,
            outcome(
                r3,
                now + 2,
                failed(
                    "",
                    &Failure::local(Stage::Render, Category::Template, "bad"),
                ),
            ),
        ])
        .unwrap();
    assert_eq!(count(store, "a", Status::Sent), 1);
    assert_eq!(count(store, "b", Status::Deferred), 0);
    assert_eq!(count(store, "b", Status::Failed), 1);
}

macro_rules! suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;
            #[test]
            fn ingest_checkpoint_and_unique_key() {
                let (mut store, _keep) = $make;
                super::ingest_checkpoint_and_unique_key(&mut store);
            }
            #[test]
            fn claim_order_and_retry_budget() {
                let (mut store, _keep) = $make;
                super::claim_order_and_retry_budget(&mut store);
            }
            #[test]
            fn outcomes_and_tallies() {
                let (mut store, _keep) = $make;
                super::outcomes_and_tallies(&mut store);
            }
            #[test]
            fn durable_mark_bounds_in_doubt() {
                let (mut store, _keep) = $make;
                super::durable_mark_bounds_in_doubt(&mut store);
            }
            #[test]
            fn without_marks_every_sending_row_is_in_doubt() {
                let (mut store, _keep) = $make;
                super::without_marks_every_sending_row_is_in_doubt(&mut store);
            }
            #[test]
            fn reset_for_retry_by_status_and_category() {
                let (mut store, _keep) = $make;
                super::reset_for_retry_by_status_and_category(&mut store);
            }
            #[test]
            fn events_lock_and_meta() {
                let (mut store, _keep) = $make;
                super::events_lock_and_meta(&mut store);
            }
            #[test]
            fn late_outcomes_apply_once() {
                let (mut store, _keep) = $make;
                super::late_outcomes_apply_once(&mut store);
            }
            #[test]
            fn reputation_window_is_the_latest_outcomes() {
                let (mut store, _keep) = $make;
                super::reputation_window_is_the_latest_outcomes(&mut store);
            }
            #[test]
            fn every_outcome_names_its_relay() {
                let (mut store, _keep) = $make;
                super::every_outcome_names_its_relay(&mut store);
            }
        }
    };
}

fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("c.db"), crate::Durability::Normal).unwrap();
    (store, dir)
}

suite!(on_sqlite, sqlite());
suite!(in_memory, (MemoryStore::new(), ()));

/// A campaign of its own (a fresh name) in the test process's PostgreSQL
/// server; `None` skips (PostgreSQL not installed, outside CI).
fn postgres() -> Option<(crate::PgStore, ())> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let server = crate::postgres::fixture::shared()?;
    let name = format!(
        "suite-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let options = crate::PgOptions::parse(&server.url(), None, &name, "fp").unwrap();
    Some((crate::PgStore::open(&options).unwrap(), ()))
}

suite!(
    on_postgres,
    match postgres() {
        Some(s) => s,
        None => return,
    }
);
