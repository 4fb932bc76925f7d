//! A rough timing of the hot queries on a big campaign. Prints figures, asserts
//! nothing about time. Run with:
//! `cargo test -p edm-store --release -- --ignored --nocapture`

use std::time::Instant;

use edm_model::{Reply, Status};
use edm_store::{Durability, ExportFilter, NewRow, Outcome, OutcomeKind, Store};

const ROWS: u64 = 1_000_000;
const SENT: usize = 500_000;

#[test]
#[ignore = "slow: timing on 1M rows"]
fn timing_one_million_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("big.db"), Durability::Normal).unwrap();

    let t = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..ROWS {
        let email = format!("user{i}@d{}.example", i % 1000);
        batch.push(NewRow {
            line: i + 2,
            values: vec![email.clone(), format!("Name {i}")],
            email,
            status: Status::Pending,
            category: None,
            reason: None,
            duplicate_of: None,
        });
        if batch.len() == 1000 {
            store.insert_rows(&batch).unwrap();
            batch.clear();
        }
    }
    store.insert_rows(&batch).unwrap();
    let insert = t.elapsed();
    println!(
        "insert {ROWS} rows (1000/tx): {insert:?} ({:.0} rows/s)",
        ROWS as f64 / insert.as_secs_f64()
    );

    let t = Instant::now();
    let mut done = 0;
    while done < SENT {
        let claimed = store.claim(1000, 1).unwrap();
        let outcomes: Vec<Outcome> = claimed
            .iter()
            .map(|r| Outcome {
                id: r.id,
                at: 2,
                kind: OutcomeKind::Sent {
                    reply: Reply {
                        code: 250,
                        enhanced: Some("2.0.0".into()),
                        text: "ok".into(),
                        provider_message_id: None,
                        relay: None,
                    },
                    message_id: format!("{}@edm", r.id.0),
                    relay: String::new(),
                },
            })
            .collect();
        store.record(&outcomes).unwrap();
        done += claimed.len();
    }
    let sent = t.elapsed();
    println!(
        "claim(1000)+record sent for {SENT} rows: {sent:?} ({:.0} rows/s)",
        SENT as f64 / sent.as_secs_f64()
    );

    let t = Instant::now();
    let claimed = store.claim(64, 3).unwrap();
    println!("claim(64) with {SENT} sent: {:?}", t.elapsed());
    assert_eq!(claimed.len(), 64);
    let released: Vec<Outcome> = claimed
        .iter()
        .map(|r| Outcome {
            id: r.id,
            at: 3,
            kind: OutcomeKind::Released,
        })
        .collect();
    let t = Instant::now();
    store.record(&released).unwrap();
    println!("record 64 released: {:?}", t.elapsed());

    let t = Instant::now();
    let summary = store.summary().unwrap();
    println!("summary(): {:?}", t.elapsed());
    assert_eq!(summary.count(Status::Sent), SENT as u64);
    assert_eq!(summary.total, ROWS);

    let t = Instant::now();
    let n = store.sent_since(0).unwrap();
    println!("sent_since(): {:?} ({n})", t.elapsed());

    let t = Instant::now();
    store.domain_counts(10).unwrap();
    println!("domain_counts(10): {:?}", t.elapsed());

    let t = Instant::now();
    store.recent_failures(20).unwrap();
    println!("recent_failures(20): {:?}", t.elapsed());

    let t = Instant::now();
    let mut exported = 0u64;
    store
        .export(&ExportFilter::default(), |_| {
            exported += 1;
            Ok::<(), ()>(())
        })
        .unwrap();
    println!("export all {exported} rows: {:?}", t.elapsed());

    let reader = Store::open_read_only(store.path()).unwrap();
    let t = Instant::now();
    reader.summary().unwrap();
    println!("summary() from a read-only reader: {:?}", t.elapsed());

    let size = std::fs::metadata(store.path()).unwrap().len();
    println!("db file: {} MB", size / 1_000_000);
    drop(reader);

    // A corrected CSV before anything was sent (issue 9): the check for
    // "ever attempted" scans when the tallies cannot tell, then the list goes.
    let t = Instant::now();
    assert!(store.ever_attempted().unwrap());
    println!("ever_attempted() with {SENT} sent: {:?}", t.elapsed());
    let t = Instant::now();
    let n = store.discard_recipients().unwrap();
    println!("discard_recipients() of {n} rows: {:?}", t.elapsed());
}
