//! Internationalised domains (issue 9, point 2): `ann@bücher.example` and
//! `ann@xn--bcher-kva.example` are one address for dedupe and suppression,
//! whichever spelling comes first and whichever the suppression list holds.

use edm_recipients::{ReadOptions, Row, Suppression, Verdict, open};

fn rows(csv: &str, suppression: Option<&Suppression>) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list.csv");
    std::fs::write(&path, csv).unwrap();
    open(&path, &ReadOptions::default(), suppression)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn the_two_spellings_of_an_idn_domain_are_one_address_for_dedupe() {
    let rows = rows(
        "email\n\
         ann@bücher.example\n\
         ann@xn--bcher-kva.example\n\
         ANN@BÜCHER.EXAMPLE\n\
         bob@xn--bcher-kva.example\n\
         Bob@bücher.example\n",
        None,
    );
    assert_eq!(rows[0].verdict, Verdict::Valid);
    assert_eq!(rows[1].verdict, Verdict::Duplicate { first_line: 2 });
    assert_eq!(rows[2].verdict, Verdict::Duplicate { first_line: 2 });
    assert_eq!(rows[3].verdict, Verdict::Valid);
    assert_eq!(rows[4].verdict, Verdict::Duplicate { first_line: 5 });
}

#[test]
fn suppression_matches_either_spelling() {
    let list = Suppression::from_addresses(["ann@xn--bcher-kva.example", "Bob@Bücher.example"]);
    assert!(list.contains("ann@bücher.example"));
    assert!(list.contains("bob@xn--bcher-kva.example"));
    let rows = rows(
        "email\nann@bücher.example\nbob@XN--BCHER-KVA.example\ncarl@bücher.example\n",
        Some(&list),
    );
    assert_eq!(rows[0].verdict, Verdict::Suppressed);
    assert_eq!(rows[1].verdict, Verdict::Suppressed);
    assert_eq!(rows[2].verdict, Verdict::Valid);
}

#[test]
fn a_suppression_file_in_one_spelling_suppresses_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suppression.csv");
    std::fs::write(&path, "email\nann@bücher.example\n").unwrap();
    let list = Suppression::load(&path).unwrap();
    assert!(list.contains("ann@xn--bcher-kva.example"));
}
