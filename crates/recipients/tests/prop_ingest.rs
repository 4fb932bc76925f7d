//! Property tests over CSV ingest (issue 9, "Tests"): whatever a field holds
//! (CR, LF, NUL, quotes, delimiters, non-ASCII, long lines), a file written
//! by a CSV writer reads back as the same records, in order, with growing
//! line numbers; and arbitrary bytes never make the reader panic or loop.

use std::io::Write;

use edm_recipients::{ReadOptions, Verdict, open};
use proptest::prelude::*;

/// Field values with the characters that break naive CSV handling.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,12}",
        "[\r\n\0\",;|\t a-zé€😀]{0,40}",
        // A long line, past the 998 characters of RFC 5322 §2.1.1.
        "[a-z]{1000,1200}",
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}@example\\.com",
        "[a-z]{1,3}@[a-z]{1,3}\\.example",
        // Invalid ones: recorded as such, never an error.
        "[a-z@\r\n ]{0,10}",
    ]
}

fn write_csv(path: &std::path::Path, rows: &[(String, String)]) {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_path(path)
        .unwrap();
    w.write_record(["email", "note"]).unwrap();
    for (email, note) in rows {
        w.write_record([email, note]).unwrap();
    }
    w.flush().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_record_reads_back_whole_and_in_order(
        rows in prop::collection::vec((address(), field()), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        write_csv(&path, &rows);
        let opts = ReadOptions { delimiter: Some(b','), ..ReadOptions::default() };
        let ingest = open(&path, &opts, None).unwrap();
        let mut last_line = 1;
        let mut n = 0;
        for (row, (email, note)) in ingest.zip(&rows) {
            let row = row.unwrap();
            prop_assert!(row.line > last_line, "line {} after {}", row.line, last_line);
            last_line = row.line;
            prop_assert_eq!(&row.values[0], email);
            prop_assert_eq!(&row.values[1], note);
            prop_assert_eq!(&row.email, email.trim());
            if row.verdict == Verdict::Valid {
                prop_assert!(edm_recipients::validate(&row.email).is_ok());
            }
            n += 1;
        }
        prop_assert_eq!(n, rows.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        header in prop::bool::ANY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.csv");
        let mut f = std::fs::File::create(&path).unwrap();
        if header {
            f.write_all(b"email,name\n").unwrap();
        }
        f.write_all(&bytes).unwrap();
        drop(f);
        if let Ok(ingest) = open(&path, &ReadOptions::default(), None) {
            // Errors are fine (they name file and line); it must end.
            let seen = ingest.take(10_000).count();
            prop_assert!(seen < 10_000);
        }
    }
}
