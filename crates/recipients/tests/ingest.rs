//! Ingest of real files written to temporary directories.
//!
//! - `header`: empty file, header only, missing column, BOM, delimiters.
//! - `rows`: line numbers, quoting, ragged rows, long fields, unicode.
//! - `verdicts`: validity, duplicates, suppression and their order.
//! - `errors`: invalid UTF-8, unreadable paths, garbage input.

use std::path::{Path, PathBuf};

use edm_model::Category;
use edm_recipients::{Error, Ingest, ReadOptions, Row, RowProblem, Suppression, Verdict, open};
use tempfile::TempDir;

/// A file holding `bytes` in its own temporary directory.
struct Fixture {
    _dir: TempDir,
    path: PathBuf,
}

fn fixture(bytes: impl AsRef<[u8]>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list.csv");
    std::fs::write(&path, bytes).unwrap();
    Fixture { _dir: dir, path }
}

fn open_default(path: &Path) -> Result<Ingest, Error> {
    open(path, &ReadOptions::default(), None)
}

fn rows(path: &Path) -> Vec<Row> {
    open_default(path)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn invalid_reason(row: &Row) -> String {
    match &row.verdict {
        Verdict::Invalid { category, reason } => {
            assert_eq!(*category, Category::InvalidAddress);
            reason.to_string()
        }
        other => panic!("line {}: expected Invalid, got {other:?}", row.line),
    }
}

mod header {
    use super::*;

    #[test]
    fn empty_file_is_an_error_naming_it() {
        let f = fixture("");
        let err = open_default(&f.path).unwrap_err();
        assert!(matches!(err, Error::Empty { .. }), "{err:?}");
        assert!(err.to_string().contains(&*f.path.to_string_lossy()));
        assert!(err.to_string().contains("empty"));
        // A lone BOM is still empty.
        let f = fixture("\u{feff}");
        assert!(matches!(open_default(&f.path), Err(Error::Empty { .. })));
    }

    #[test]
    fn blank_lines_only_have_no_header() {
        let f = fixture("\r\n\n\r\n");
        let err = open_default(&f.path).unwrap_err();
        assert!(matches!(err, Error::NoHeader { .. }), "{err:?}");
        assert!(err.to_string().contains("no header"));
    }

    #[test]
    fn header_only_yields_no_rows() {
        let f = fixture("email,name\n");
        let ingest = open_default(&f.path).unwrap();
        assert_eq!(ingest.columns(), ["email", "name"]);
        assert_eq!(ingest.count(), 0);
    }

    #[test]
    fn missing_email_column_lists_the_columns() {
        let f = fixture("\nmail,first name,city\na@example.com,A,B\n");
        let err = open_default(&f.path).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("no `email` column"), "{text}");
        assert!(text.contains("`mail`, `first name`, `city`"), "{text}");
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.path(), f.path);
    }

    #[test]
    fn email_column_is_matched_case_insensitively_and_configurable() {
        let f = fixture(" E-Mail ;Name\nx@example.com;X\n");
        let opts = ReadOptions {
            email_column: "e-mail".into(),
            ..ReadOptions::default()
        };
        let mut ingest = open(&f.path, &opts, None).unwrap();
        assert_eq!(ingest.columns(), ["E-Mail", "Name"]);
        assert_eq!(ingest.email_index(), 0);
        let row = ingest.next().unwrap().unwrap();
        assert_eq!(row.email, "x@example.com");
        assert_eq!(row.verdict, Verdict::Valid);
    }

    #[test]
    fn bom_is_stripped_from_the_first_column() {
        let f = fixture("\u{feff}email,name\r\na@example.com,Ann\r\n");
        let ingest = open_default(&f.path).unwrap();
        assert_eq!(ingest.columns(), ["email", "name"]);
        let rows: Vec<Row> = ingest.map(Result::unwrap).collect();
        assert_eq!(rows[0].values, ["a@example.com", "Ann"]);
        assert_eq!(rows[0].line, 2);
    }

    #[test]
    fn delimiters_are_sniffed() {
        for (delim, text) in [
            (b',', "email,name,city\na@example.com,Ann,Oslo\n"),
            (b';', "email;name;city\na@example.com;Ann;Oslo\n"),
            (b'\t', "email\tname\tcity\na@example.com\tAnn\tOslo\n"),
            (b'|', "email|name|city\na@example.com|Ann|Oslo\n"),
        ] {
            let f = fixture(text);
            let mut ingest = open_default(&f.path).unwrap();
            assert_eq!(ingest.delimiter(), delim);
            assert_eq!(ingest.columns(), ["email", "name", "city"]);
            let row = ingest.next().unwrap().unwrap();
            assert_eq!(row.values, ["a@example.com", "Ann", "Oslo"]);
            assert_eq!(row.verdict, Verdict::Valid);
        }
    }

    #[test]
    fn a_configured_delimiter_wins() {
        let f = fixture("email;note\na@example.com;x,y\n");
        let opts = ReadOptions {
            delimiter: Some(b';'),
            ..ReadOptions::default()
        };
        let ingest = open(&f.path, &opts, None).unwrap();
        assert_eq!(ingest.delimiter(), b';');
        let rows: Vec<Row> = ingest.map(Result::unwrap).collect();
        assert_eq!(rows[0].values, ["a@example.com", "x,y"]);
    }
}

mod rows {
    use super::*;

    #[test]
    fn crlf_line_numbers() {
        let f = fixture("email,name\r\na@example.com,A\r\n\r\nb@example.com,B\r\n");
        let rows = rows(&f.path);
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4]);
        assert_eq!(rows[1].values, ["b@example.com", "B"]);
    }

    #[test]
    fn quoted_newlines_and_quotes_keep_line_numbers_right() {
        let text = "email,note\n\
                    a@example.com,\"two\nlines\"\n\
                    b@example.com,\"say \"\"hi\"\"\"\n\
                    c@example.com,\"three\r\nline\r\nnote\"\r\n\
                    d@example.com,plain\n";
        let f = fixture(text);
        let rows = rows(&f.path);
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4, 5, 8]);
        assert_eq!(rows[0].values[1], "two\nlines");
        assert_eq!(rows[1].values[1], "say \"hi\"");
        assert_eq!(rows[2].values[1], "three\r\nline\r\nnote");
        assert!(rows.iter().all(|r| r.verdict == Verdict::Valid));
    }

    #[test]
    fn ragged_rows_are_invalid_and_padded_or_truncated() {
        let f = fixture(
            "email,first,last,city\n\
             a@example.com,A,B\n\
             b@example.com,A,B,C,D\n\
             c@example.com,A,B,C\n",
        );
        let rows = rows(&f.path);
        assert_eq!(invalid_reason(&rows[0]), "row has 3 fields, header has 4");
        // Typed, so `edm check` tells a ragged row from a bad address by variant.
        assert!(matches!(
            rows[0].verdict,
            Verdict::Invalid {
                reason: RowProblem::FieldCount {
                    found: 3,
                    expected: 4
                },
                ..
            }
        ));
        assert_eq!(rows[0].values, ["a@example.com", "A", "B", ""]);
        assert_eq!(invalid_reason(&rows[1]), "row has 5 fields, header has 4");
        assert_eq!(rows[1].values, ["b@example.com", "A", "B", "C"]);
        assert_eq!(rows[2].verdict, Verdict::Valid);
    }

    #[test]
    fn a_row_too_short_to_hold_the_address() {
        let f = fixture("name,email\nAnn\n");
        let rows = rows(&f.path);
        assert_eq!(rows[0].email, "");
        assert_eq!(invalid_reason(&rows[0]), "row has 1 fields, header has 2");
    }

    #[test]
    fn long_field() {
        let long = "x".repeat(10_000);
        let f = fixture(format!(
            "email,bio\na@example.com,\"{long}\"\nb@example.com,{long}\n"
        ));
        let rows = rows(&f.path);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].values[1].len(), 10_000);
        assert_eq!(rows[1].values[1], long);
        assert_eq!(rows[1].line, 3);
    }

    #[test]
    fn unicode_names_and_idn_domains() {
        let f = fixture(
            "email,name\n\
             zoë@bücher.de,Zoë Ångström\n\
             user@xn--bcher-kva.de,Ünal\n\
             李@例子.中国,李小龍\n\
             amélie@exemple.fr,Amélie\n",
        );
        let rows = rows(&f.path);
        assert_eq!(rows[0].values[1], "Zoë Ångström");
        assert_eq!(rows[2].values[1], "李小龍");
        for row in &rows {
            assert_eq!(row.verdict, Verdict::Valid, "line {}", row.line);
        }
    }

    #[test]
    fn addresses_are_trimmed() {
        let f = fixture("email,name\n  a@example.com\t,A\n\" b@example.com \",B\n");
        let rows = rows(&f.path);
        assert_eq!(rows[0].email, "a@example.com");
        assert_eq!(rows[1].email, "b@example.com");
        // Values stay as written; only the address is trimmed.
        assert_eq!(rows[1].values[0], " b@example.com ");
        assert!(rows.iter().all(|r| r.verdict == Verdict::Valid));
    }
}

mod verdicts {
    use super::*;

    #[test]
    fn invalid_addresses_have_reasons() {
        let f = fixture(
            "email,name\n\
             ,Empty\n\
             no-at.example.com,NoAt\n\
             user@localhost,NoTld\n\
             Bob <bob@example.com>,Display\n",
        );
        let rows = rows(&f.path);
        assert_eq!(invalid_reason(&rows[0]), "empty address");
        assert_eq!(invalid_reason(&rows[1]), "missing @");
        assert_eq!(invalid_reason(&rows[2]), "domain has no TLD");
        assert!(invalid_reason(&rows[3]).contains("display names"));
        let long_local = format!("email\n{}@example.com\n", "a".repeat(65));
        let f = fixture(long_local);
        let rows = super::rows(&f.path);
        assert_eq!(
            invalid_reason(&rows[0]),
            "local part longer than 64 bytes (65)"
        );
    }

    #[test]
    fn duplicates_ignore_case_and_point_at_the_first_line() {
        let f = fixture(
            "email\n\
             Ann@Example.com\n\
             bob@example.com\n\
             ANN@EXAMPLE.COM\n\
             \x20ann@example.com \n",
        );
        let rows = rows(&f.path);
        assert_eq!(rows[0].verdict, Verdict::Valid);
        assert_eq!(rows[1].verdict, Verdict::Valid);
        assert_eq!(rows[2].verdict, Verdict::Duplicate { first_line: 2 });
        assert_eq!(rows[3].verdict, Verdict::Duplicate { first_line: 2 });
    }

    #[test]
    fn an_invalid_row_does_not_claim_the_address() {
        // The first row is ragged: the valid second row is the first occurrence.
        let f = fixture("email,name\na@example.com\na@example.com,A\n");
        let rows = rows(&f.path);
        invalid_reason(&rows[0]);
        assert_eq!(rows[1].verdict, Verdict::Valid);
    }

    #[test]
    fn suppressed_then_duplicate() {
        let list = Suppression::from_addresses(["  ANN@example.com", "carl@example.com"]);
        assert_eq!(list.len(), 2);
        assert!(list.contains("ann@EXAMPLE.com "));
        let f = fixture("email\nann@example.com\nbob@example.com\nAnn@example.com\nbad@\n");
        let rows: Vec<Row> = open(&f.path, &ReadOptions::default(), Some(&list))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows[0].verdict, Verdict::Suppressed);
        assert_eq!(rows[1].verdict, Verdict::Valid);
        assert_eq!(rows[2].verdict, Verdict::Duplicate { first_line: 2 });
        invalid_reason(&rows[3]);
    }

    #[test]
    fn suppression_file_as_lines() {
        let f = fixture(
            "\u{feff}# unsubscribed\n\nAnn@Example.com\r\n  bob@example.com  \n# carl@example.com\n",
        );
        let list = Suppression::load(&f.path).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains("ann@example.com"));
        assert!(list.contains("BOB@example.com"));
        assert!(!list.contains("carl@example.com"));
    }

    #[test]
    fn suppression_file_as_csv() {
        let f = fixture(
            "# exported 2024-05-01\ndate;Email;reason\n\
             2024-01-01;Ann@Example.com;unsubscribe\n\
             \n\
             # a comment\n\
             2024-01-02;\"bob@example.com\";bounce\n\
             2024-01-03;;missing\n",
        );
        let list = Suppression::load(&f.path).unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list.contains("ann@example.com"));
        assert!(list.contains("bob@example.com"));
        assert!(!list.contains("2024-01-01"));
    }

    #[test]
    fn empty_suppression_file_is_an_empty_list() {
        let f = fixture("# nothing yet\n\n");
        assert!(Suppression::load(&f.path).unwrap().is_empty());
        let f = fixture("");
        assert!(Suppression::load(&f.path).unwrap().is_empty());
    }

    #[test]
    fn suppression_file_errors_name_file_and_line() {
        let f = fixture(b"a@example.com\n\xff\xfe@example.com\n");
        let err = Suppression::load(&f.path).unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.txt");
        let err = Suppression::load(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.txt"), "{err}");
    }
}

mod errors {
    use super::*;

    #[test]
    fn missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.csv");
        let err = open_default(&path).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.csv"), "{err}");
    }

    #[test]
    fn a_directory_is_a_read_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_default(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Read { line: 1, .. }), "{err:?}");
        assert!(err.to_string().contains(&*dir.path().to_string_lossy()));
    }

    #[test]
    fn invalid_utf8_names_line_and_field_and_goes_on() {
        let f =
            fixture(b"email,name\na@example.com,Ann\nb@example.com,Bj\xf6rn\nc@example.com,Cy\n");
        let results: Vec<Result<Row, Error>> = open_default(&f.path).unwrap().collect();
        assert_eq!(results.len(), 3);
        let err = results[1].as_ref().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("column 2 (`name`)"), "{text}");
        assert!(text.contains("UTF-8"), "{text}");
        assert!(text.contains("list.csv"), "{text}");
        assert_eq!(results[2].as_ref().unwrap().line, 4);
    }

    #[test]
    fn invalid_utf8_in_the_header() {
        let f = fixture(b"email,n\xe9\na@example.com,x\n");
        let err = open_default(&f.path).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidUtf8 {
                    line: 1,
                    column: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 9] = [
            b"\0\0\0\0",
            b"\xff\xfe\xfd",
            b"email\n\"unterminated,\n\n",
            b"\"\"\"\n\"\"\"\"",
            b"email\n\xEF\xBB\xBF\xEF\xBB\xBF\n",
            b"\r\r\r\r\nemail\r\r\n\r",
            b"email,\xc3\n\xc3\x28,\x80\n",
            b"|;\t,|;\t,\n@,@@,@@@\n",
            b"\xEF\xBB",
        ];
        for input in inputs {
            let f = fixture(input);
            if let Ok(ingest) = open_default(&f.path) {
                for row in ingest.take(100) {
                    let _ = row;
                }
            }
            let _ = Suppression::load(&f.path);
        }
    }
}
