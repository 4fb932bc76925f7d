//! Internationalised domains in the store (issue 9, point 2): both spellings
//! of an address have one key, also for rows stored before the key became
//! the A-label form.

use edm_model::{RecipientId, Status};
use edm_store::{Durability, NewRow, Store};

fn pending(line: u64, email: &str) -> NewRow {
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

#[test]
fn rows_by_email_keys_both_spellings_alike_even_for_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("campaign.db");
    let mut store = Store::open(&path, Durability::Normal).unwrap();
    store
        .insert_rows(&[
            pending(2, "ann@bücher.example"),
            pending(3, "Bob@XN--BCHER-KVA.example"),
        ])
        .unwrap();
    assert_eq!(
        edm_store::normalize("ann@bücher.example"),
        edm_store::normalize("ANN@xn--bcher-kva.example")
    );
    // A campaign written by an older edm keyed `ann@bücher.example` as is.
    drop(store);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE recipients SET email_norm = lower(email) WHERE line = 2",
            [],
        )
        .unwrap();
    let store = Store::open(&path, Durability::Normal).unwrap();
    let by_email = store.rows_by_email().unwrap();
    assert_eq!(
        by_email.get(&edm_store::normalize("ann@xn--bcher-kva.example")),
        Some(&(RecipientId(1), Status::Pending)),
        "{by_email:?}"
    );
    assert_eq!(
        by_email.get(&edm_store::normalize("bob@bücher.example")),
        Some(&(RecipientId(2), Status::Pending)),
        "{by_email:?}"
    );
}
