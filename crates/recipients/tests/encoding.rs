//! Recipients files that are not UTF-8: a configured encoding
//! ([`ReadOptions::encoding`]) and UTF-16 recognised by its BOM.

use std::path::{Path, PathBuf};

use edm_recipients::{Error, Ingest, ReadOptions, Row, Verdict, open};
use tempfile::TempDir;

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

fn with_encoding(label: Option<&str>) -> ReadOptions {
    ReadOptions {
        encoding: label.map(str::to_owned),
        ..ReadOptions::default()
    }
}

fn open_as(path: &Path, label: Option<&str>) -> Result<Ingest, Error> {
    open(path, &with_encoding(label), None)
}

fn rows(path: &Path, label: Option<&str>) -> Vec<Row> {
    open_as(path, label)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    bytes
}

fn utf16be_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFE, 0xFF];
    bytes.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    bytes
}

#[test]
fn windows_1252_values_and_lines_after_a_quoted_newline() {
    let f = fixture(
        b"email;name\r\n\
          a@example.com;\"Ren\xE9\r\n\x80 club\"\r\n\
          \r\n\
          b@example.com;Zo\xEB \x80\r\n",
    );
    for label in ["windows-1252", "iso-8859-1", "latin1", " CP1252 "] {
        let mut ingest = open_as(&f.path, Some(label)).unwrap();
        assert_eq!(ingest.delimiter(), b';');
        assert_eq!(ingest.columns(), ["email", "name"]);
        let a = ingest.next().unwrap().unwrap();
        assert_eq!(a.line, 2);
        assert_eq!(a.values, ["a@example.com", "Ren\u{e9}\r\n\u{20ac} club"]);
        assert_eq!(a.verdict, Verdict::Valid);
        let b = ingest.next().unwrap().unwrap();
        assert_eq!(b.line, 5, "{label}");
        assert_eq!(b.values, ["b@example.com", "Zo\u{eb} \u{20ac}"]);
        assert!(ingest.next().is_none());
    }
    // Without the encoding, the same file is invalid UTF-8, as before.
    let mut ingest = open_as(&f.path, None).unwrap();
    let err = ingest.next().unwrap().unwrap_err();
    assert!(matches!(err, Error::InvalidUtf8 { line: 2, .. }), "{err:?}");
}

#[test]
fn windows_1252_in_the_header() {
    let f = fixture(b"E-mail,Pr\xE9nom\na@example.com,\xC9lodie\n");
    let mut ingest = open(
        &f.path,
        &ReadOptions {
            email_column: "e-mail".into(),
            encoding: Some("windows-1252".into()),
            ..ReadOptions::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(ingest.columns(), ["E-mail", "Pr\u{e9}nom"]);
    let row = ingest.next().unwrap().unwrap();
    assert_eq!(row.values, ["a@example.com", "\u{c9}lodie"]);
}

#[test]
fn utf16_with_bom_needs_no_configuration() {
    let text = "email\tname\r\na@example.com\tZo\u{eb}\r\n\r\nb@example.com\t\"x\ny \u{1f600}\"\r\nc@example.com\t\u{4e2d}\u{6587}\r\n";
    for bytes in [utf16le_with_bom(text), utf16be_with_bom(text)] {
        let f = fixture(&bytes);
        let ingest = open_as(&f.path, None).unwrap();
        assert_eq!(ingest.delimiter(), b'\t');
        assert_eq!(ingest.columns(), ["email", "name"]);
        let got: Vec<Row> = ingest.map(Result::unwrap).collect();
        let lines: Vec<u64> = got.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        assert_eq!(got[0].values, ["a@example.com", "Zo\u{eb}"]);
        assert_eq!(got[1].values, ["b@example.com", "x\ny \u{1f600}"]);
        assert_eq!(got[2].values, ["c@example.com", "\u{4e2d}\u{6587}"]);
        assert!(got.iter().all(|r| r.verdict == Verdict::Valid));
        // A configured encoding gives way to the BOM.
        assert_eq!(got, rows(&f.path, Some("windows-1252")));
    }
}

#[test]
fn utf16le_without_bom_when_configured() {
    let bytes: Vec<u8> = "email\na@example.com\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let f = fixture(&bytes);
    let got = rows(&f.path, Some("utf-16le"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].email, "a@example.com");
    assert_eq!(got[0].line, 2);
}

#[test]
fn a_lone_utf16_bom_is_empty() {
    let f = fixture(b"\xFF\xFE");
    assert!(matches!(open_as(&f.path, None), Err(Error::Empty { .. })));
}

#[test]
fn an_unknown_label_is_an_error_naming_file_and_label() {
    let f = fixture("email\na@example.com\n");
    for label in ["klingon", "", "iso-2022-kr"] {
        let err = open_as(&f.path, Some(label)).unwrap_err();
        let Error::UnknownEncoding { path, label: got } = &err else {
            panic!("expected UnknownEncoding, got {err:?}");
        };
        assert_eq!(path, &f.path);
        assert_eq!(got, label);
        let text = err.to_string();
        assert!(text.contains(&*f.path.to_string_lossy()), "{text}");
        assert!(text.contains(&format!("{label:?}")), "{text}");
        assert_eq!(err.path(), f.path);
        assert_eq!(err.line(), None);
    }
}

#[test]
fn invalid_bytes_under_an_explicit_encoding_are_replaced() {
    // 0xFF is never valid UTF-8; 0x81 0x20 is not a Shift_JIS character.
    let f = fixture(b"email,name\na@example.com,x\xFFy\nb@example.com,ok\n");
    let got = rows(&f.path, Some("utf-8"));
    assert_eq!(got[0].values, ["a@example.com", "x\u{fffd}y"]);
    assert_eq!(got[1].line, 3);
    let f = fixture(b"email,name\na@example.com,\x82\xA0\x81 z\n");
    let got = rows(&f.path, Some("shift_jis"));
    assert_eq!(got[0].values[1], "\u{3042}\u{fffd} z");
    assert_eq!(got[0].verdict, Verdict::Valid);
}

#[test]
fn long_files_decode_across_buffer_boundaries() {
    // Multi-byte output straddles every internal buffer edge at some point.
    let mut text = String::from("email,name\n");
    for i in 0..20_000 {
        text.push_str(&format!("u{i}@example.com,\"\u{e9}\n\u{20ac}{i}\"\n"));
    }
    let cp1252: Vec<u8> = text
        .chars()
        .map(|c| match c {
            '\u{e9}' => 0xE9,
            '\u{20ac}' => 0x80,
            c => u8::try_from(c).unwrap(),
        })
        .collect();
    for (bytes, label) in [
        (cp1252, Some("windows-1252")),
        (utf16le_with_bom(&text), None),
    ] {
        let f = fixture(&bytes);
        let got = rows(&f.path, label);
        assert_eq!(got.len(), 20_000);
        for (i, row) in got.iter().enumerate() {
            assert_eq!(row.line, 2 + 2 * i as u64);
            assert_eq!(row.values[1], format!("\u{e9}\n\u{20ac}{i}"));
        }
    }
}
