//! `edm check` and `edm preview` on small campaigns in temp directories.
//!
//! - `clean`: a campaign with nothing wrong, and the bundled welcome example.
//! - one test per kind of problem, each on a fixture that has exactly it.
//! - `dkim`: the `[dkim]` section read from campaign.toml.
//! - `preview`: `.eml` files parsed back with mail-parser.
//! - `bench`: an ignored 1,000,000-row throughput run.

use std::path::{Path, PathBuf};

use edm_campaign::{
    Campaign, CheckOptions, CheckReport, PreviewOptions, ProblemKind, Severity, check, preview,
};

const TOML: &str = r#"
[campaign]
name = "spring"
from = "Acme News <news@acme.example>"
subject = "Hello {{first_name}}"
html = "body.html"
text = "body.txt"
recipients = "r.csv"
list_unsubscribe = "https://acme.example/u/{{id}}"

[smtp]
host = "127.0.0.1"
port = 2525
"#;

const HTML: &str =
    "<p>Hi {{first_name}},</p>\n<p><a href=\"https://acme.example/u/{{id}}\">Unsubscribe</a></p>\n";
const TEXT: &str = "Hi {{first_name}},\n\nUnsubscribe: https://acme.example/u/{{id}}\n";
const CSV: &str =
    "id,email,first_name\n1,ann@example.com,Ann\n2,bob@example.org,Bob\n3,cy@example.net,Cy\n";

/// A campaign directory; files are written by the test.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write("campaign.toml", TOML)
            .write("body.html", HTML)
            .write("body.txt", TEXT)
            .write("r.csv", CSV)
    }

    fn write(self, name: &str, text: &str) -> Fixture {
        std::fs::write(self.path(name), text).unwrap();
        self
    }

    fn toml(self, from: &str, to: &str) -> Fixture {
        let text = std::fs::read_to_string(self.path("campaign.toml")).unwrap();
        assert!(text.contains(from), "{from:?} not in campaign.toml");
        let text = text.replace(from, to);
        self.write("campaign.toml", &text)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn campaign(&self) -> Campaign {
        Campaign::load(self.dir.path()).unwrap()
    }

    fn check(&self) -> CheckReport {
        check(&self.campaign(), &CheckOptions::default()).unwrap()
    }
}

/// Kinds found, other than the DKIM warning every fixture without `[dkim]` has.
fn kinds(r: &CheckReport) -> Vec<ProblemKind> {
    r.problems
        .iter()
        .map(|g| g.kind)
        .filter(|k| *k != ProblemKind::DkimNotConfigured)
        .collect()
}

fn example(r: &CheckReport, kind: ProblemKind) -> String {
    let group = r
        .group(kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {:#?}", r.problems));
    group.examples[0].to_string()
}

#[test]
fn clean_campaign_has_only_the_dkim_warning() {
    let r = Fixture::new().check();
    assert_eq!(kinds(&r), []);
    assert_eq!(r.count(ProblemKind::DkimNotConfigured), 1);
    assert_eq!(
        r.group(ProblemKind::DkimNotConfigured).unwrap().severity,
        Severity::Warning
    );
    assert!(r.is_clean());
    assert_eq!((r.rows, r.sendable, r.rendered), (3, 3, 3));
    assert!(r.largest_message.unwrap() > 300);
}

#[test]
fn welcome_example_reports_its_deliberate_bad_rows_as_warnings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../campaigns/welcome");
    let c = Campaign::load(&dir).unwrap();
    let r = check(&c, &CheckOptions::default()).unwrap();
    assert_eq!(
        kinds(&r),
        [ProblemKind::InvalidAddress, ProblemKind::Duplicate],
        "{:#?}",
        r.problems
    );
    assert_eq!(r.count(ProblemKind::InvalidAddress), 2);
    assert_eq!(r.count(ProblemKind::Duplicate), 1);
    let dup = example(&r, ProblemKind::Duplicate);
    assert!(
        dup.ends_with(
            "recipients.csv:132: email: NORA.SCHMIDT@NEWS.EXAMPLE.ORG was already on line 7"
        ),
        "{dup}"
    );
    assert!(r.is_clean());
    assert_eq!(r.sendable, r.rows - 3);
    assert_eq!(r.rendered, r.sendable);
}

#[test]
fn ragged_rows_are_errors() {
    let r = Fixture::new()
        .write(
            "r.csv",
            "id,email,first_name\n1,ann@example.com,Ann, Jr.\n2,bob@example.org,Bob\n",
        )
        .check();
    assert_eq!(kinds(&r), [ProblemKind::RaggedRow]);
    assert!(
        example(&r, ProblemKind::RaggedRow)
            .ends_with("r.csv:2: email: row has 4 fields, header has 3")
    );
    assert!(!r.is_clean());
}

#[test]
fn missing_email_column_is_an_error() {
    let r = Fixture::new()
        .write("r.csv", "id,mail,first_name\n1,ann@example.com,Ann\n")
        .check();
    assert_eq!(kinds(&r), [ProblemKind::RecipientsFile]);
    let e = example(&r, ProblemKind::RecipientsFile);
    assert!(e.contains("r.csv:1: no `email` column"), "{e}");
    assert!(!r.is_clean());
}

#[test]
fn invalid_utf8_is_an_error_with_line_and_column() {
    let f = Fixture::new();
    std::fs::write(
        f.path("r.csv"),
        b"id,email,first_name\n1,ann@example.com,An\xffn\n2,bob@example.org,Bob\n",
    )
    .unwrap();
    let r = f.check();
    assert_eq!(kinds(&r), [ProblemKind::InvalidUtf8]);
    let e = example(&r, ProblemKind::InvalidUtf8);
    assert!(e.contains("r.csv:2:3: first_name: "), "{e}");
    assert_eq!(r.rendered, 1);
}

#[test]
fn invalid_duplicate_and_suppressed_rows_are_warnings() {
    let r = Fixture::new()
        .write(
            "r.csv",
            "id,email,first_name\n1,ann@example.com,Ann\n2,not-an-address,X\n3,ANN@example.com,Ann\n4,bob@example.org,Bob\n",
        )
        .write("suppressed.txt", "# unsubscribed\nbob@example.org\n")
        .toml(
            "recipients = \"r.csv\"",
            "recipients = \"r.csv\"\nsuppression = \"suppressed.txt\"",
        )
        .check();
    assert_eq!(
        kinds(&r),
        [
            ProblemKind::InvalidAddress,
            ProblemKind::Duplicate,
            ProblemKind::Suppressed
        ]
    );
    assert!(
        example(&r, ProblemKind::InvalidAddress)
            .ends_with("r.csv:3: email: missing @: \"not-an-address\"")
    );
    assert!(
        example(&r, ProblemKind::Duplicate)
            .ends_with("r.csv:4: email: ANN@example.com was already on line 2")
    );
    assert!(
        example(&r, ProblemKind::Suppressed)
            .ends_with("r.csv:5: email: bob@example.org is on the suppression list")
    );
    assert!(r.is_clean());
    assert_eq!((r.sendable, r.rendered), (1, 1));
}

#[test]
fn unreadable_suppression_file_is_an_error() {
    let r = Fixture::new()
        .toml(
            "recipients = \"r.csv\"",
            "recipients = \"r.csv\"\nsuppression = \"nope.txt\"",
        )
        .check();
    assert_eq!(kinds(&r), [ProblemKind::SuppressionFile]);
    assert!(!r.is_clean());
}

#[test]
fn missing_fields_name_the_row_and_the_field() {
    let r = Fixture::new()
        .write("body.txt", "Hi {{first_name}} {{last_name}}\n")
        .check();
    assert_eq!(kinds(&r), [ProblemKind::MissingField]);
    assert_eq!(r.count(ProblemKind::MissingField), 3);
    let e = example(&r, ProblemKind::MissingField);
    assert!(e.contains("r.csv:2: last_name: missing field in "), "{e}");
    assert!(e.contains("body.txt (template line 1, column"), "{e}");
    assert_eq!(r.render_failed, 3);
    assert!(!r.is_clean());
}

#[test]
fn broken_templates_give_file_line_and_column() {
    let r = Fixture::new()
        .write("body.html", "<p>Hi</p>\n<p>{{#if first_name}}x</p>\n")
        .check();
    assert_eq!(kinds(&r), [ProblemKind::TemplateSyntax]);
    let group = r.group(ProblemKind::TemplateSyntax).unwrap();
    let f = &group.examples[0];
    assert!(f.file.ends_with("body.html"), "{f}");
    assert!(f.line.is_some() && f.column.is_some(), "{f}");
    assert!(f.message.contains("not closed"), "{f}");
    // The CSV is still read.
    assert_eq!(r.rows, 3);
    assert!(!r.is_clean());

    let r = Fixture::new()
        .toml(
            "subject = \"Hello {{first_name}}\"",
            "subject = \"Hello {{first_name\"",
        )
        .check();
    let e = example(&r, ProblemKind::TemplateSyntax);
    assert!(e.contains("campaign.toml:1:"), "{e}");
    assert!(e.contains("[campaign] subject"), "{e}");
}

#[test]
fn bad_sender_is_a_config_error() {
    let r = Fixture::new()
        .toml("news@acme.example>", "news@localhost>")
        .check();
    assert_eq!(kinds(&r), [ProblemKind::Config]);
    assert!(example(&r, ProblemKind::Config).contains("[campaign] from: invalid From"));
}

#[test]
fn messages_over_the_size_limit_are_errors() {
    let r = Fixture::new()
        .write("r.csv", "id,email,first_name\n1,ann@example.com,Ann\n2,bob@example.org,Bobbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n")
        .check();
    let small = r.largest_message.unwrap();
    assert_eq!(kinds(&r), []);
    let limit = small - 50;
    let r = Fixture::new()
        .write("r.csv", "id,email,first_name\n1,ann@example.com,Ann\n2,bob@example.org,Bobbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n")
        .toml("[smtp]", &format!("[limits]\nmax_message_bytes = {limit}\n\n[smtp]"))
        .check();
    assert_eq!(kinds(&r), [ProblemKind::MessageTooLarge]);
    assert_eq!(r.count(ProblemKind::MessageTooLarge), 1);
    let e = example(&r, ProblemKind::MessageTooLarge);
    assert!(e.contains("r.csv:3: message is"), "{e}");
    assert!(
        e.contains(&format!("over the max_message_bytes limit of {limit}")),
        "{e}"
    );
    assert!(!r.is_clean());
}

#[test]
fn long_lines_are_errors() {
    let long = "x".repeat(150);
    let r = Fixture::new()
        .toml(
            "list_unsubscribe = \"https://acme.example/u/{{id}}\"",
            &format!("list_unsubscribe = \"https://acme.example/u/{{{{id}}}}?{long}\""),
        )
        .toml("[smtp]", "[limits]\nmax_line_len = 120\n\n[smtp]")
        .check();
    // The link in the HTML no longer matches the header URL, but says "Unsubscribe".
    assert_eq!(kinds(&r), [ProblemKind::LineTooLong]);
    let e = example(&r, ProblemKind::LineTooLong);
    assert!(e.contains("over the max_line_len limit of 120"), "{e}");
}

#[test]
fn bulk_sender_checklist() {
    // No List-Unsubscribe at all.
    let r = Fixture::new()
        .toml("list_unsubscribe = \"https://acme.example/u/{{id}}\"\n", "")
        .check();
    assert_eq!(kinds(&r), [ProblemKind::NoListUnsubscribe]);
    assert!(r.is_clean());

    // http: no one-click.
    let r = Fixture::new()
        .toml(
            "https://acme.example/u/{{id}}\"",
            "http://acme.example/u/{{id}}\"",
        )
        .check();
    assert_eq!(kinds(&r), [ProblemKind::NoOneClick]);
    assert_eq!(r.count(ProblemKind::NoOneClick), 3);

    // No visible link in the HTML.
    let r = Fixture::new()
        .write(
            "body.html",
            "<p>Hi {{first_name}}, <a href=\"https://acme.example/\">home</a></p>\n",
        )
        .check();
    assert_eq!(kinds(&r), [ProblemKind::NoUnsubscribeLink]);
    assert!(example(&r, ProblemKind::NoUnsubscribeLink).contains("r.csv:2: html: "));
    assert!(r.is_clean());

    // HTML only.
    let r = Fixture::new().toml("text = \"body.txt\"\n", "").check();
    assert_eq!(kinds(&r), [ProblemKind::NoTextPart]);
}

#[test]
fn examples_are_the_first_ones_whatever_the_workers() {
    let mut csv = String::from("id,email,first_name\n");
    for i in 0..2000 {
        // Every row misses `last_name`; rows 100.. also have no first name column value.
        csv.push_str(&format!("{i},u{i}@example.com,U{i}\n"));
    }
    let f = Fixture::new()
        .write("r.csv", &csv)
        .write("body.txt", "Hi {{last_name}}\n");
    let c = f.campaign();
    let one = check(
        &c,
        &CheckOptions {
            workers: 1,
            examples: 5,
        },
    )
    .unwrap();
    let four = check(
        &c,
        &CheckOptions {
            workers: 4,
            examples: 5,
        },
    )
    .unwrap();
    let lines = |r: &CheckReport| -> Vec<u64> {
        r.group(ProblemKind::MissingField)
            .unwrap()
            .examples
            .iter()
            .map(|e| e.line.unwrap())
            .collect()
    };
    assert_eq!(lines(&one), [2, 3, 4, 5, 6]);
    assert_eq!(lines(&four), lines(&one));
    assert_eq!(one.count(ProblemKind::MissingField), 2000);
    assert_eq!(four.count(ProblemKind::MissingField), 2000);
}

fn key_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../template/tests/keys")
        .join(name)
}

/// `Config` does not know `[dkim]` yet, so the section is appended after
/// loading: `dkim_signer` reads the file itself.
fn with_dkim(f: &Fixture, section: &str) -> CheckReport {
    let mut text = std::fs::read_to_string(f.path("campaign.toml")).unwrap();
    text.push_str(section);
    std::fs::write(f.path("campaign.toml"), text).unwrap();
    let c = f.campaign();
    check(&c, &CheckOptions::default()).unwrap()
}

#[test]
fn dkim_section_is_read_and_checked() {
    let f = Fixture::new();
    std::fs::copy(key_file("ed25519.pem"), f.path("dkim.pem")).unwrap();
    let r = with_dkim(
        &f,
        "\n[dkim]\nselector = \"s1\"\ndomain = \"acme.example\"\nkey_file = \"dkim.pem\"\nalgorithm = \"ed25519\"\n",
    );
    assert_eq!(kinds(&r), []);
    assert_eq!(r.count(ProblemKind::DkimNotConfigured), 0);
    let info = r.dkim.as_ref().unwrap();
    assert_eq!(info.dns_name, "s1._domainkey.acme.example");
    assert!(info.dns_record.starts_with("v=DKIM1; k=ed25519; p="));

    let f = Fixture::new();
    std::fs::copy(key_file("rsa2048.pem"), f.path("dkim.pem")).unwrap();
    let r = with_dkim(
        &f,
        "\n[dkim]\nselector = \"s1\"\ndomain = \"other.example\"\nkey_file = \"dkim.pem\"\n",
    );
    assert_eq!(kinds(&r), [ProblemKind::DkimNotAligned]);
    assert!(r.is_clean());

    let f = Fixture::new();
    std::fs::copy(key_file("rsa2048.pem"), f.path("dkim.pem")).unwrap();
    let r = with_dkim(
        &f,
        "\n[dkim]\nselector = \"s1\"\ndomain = \"acme.example\"\nkey_file = \"dkim.pem\"\nalgorithm = \"ed25519\"\n",
    );
    assert_eq!(kinds(&r), [ProblemKind::DkimInvalid]);
    assert!(example(&r, ProblemKind::DkimInvalid).contains("not a usable Ed25519 key"));
    assert!(!r.is_clean());

    let r = with_dkim(
        &Fixture::new(),
        "\n[dkim]\nselector = \"s1\"\ndomain = \"acme.example\"\nkey_file = \"missing.pem\"\n",
    );
    assert_eq!(kinds(&r), [ProblemKind::DkimInvalid]);
}

#[test]
fn dkim_signature_counts_towards_the_size_limit() {
    let f = Fixture::new();
    let unsigned = f.check().largest_message.unwrap();
    std::fs::copy(key_file("rsa2048.pem"), f.path("dkim.pem")).unwrap();
    let f = f.toml(
        "[smtp]",
        &format!("[limits]\nmax_message_bytes = {}\n\n[smtp]", unsigned + 100),
    );
    let r = with_dkim(
        &f,
        "\n[dkim]\nselector = \"s1\"\ndomain = \"acme.example\"\nkey_file = \"dkim.pem\"\n",
    );
    assert_eq!(kinds(&r), [ProblemKind::MessageTooLarge]);
    assert!(example(&r, ProblemKind::MessageTooLarge).contains("with its DKIM signature"));
}

#[test]
fn preview_writes_messages_that_parse_back() {
    let f = Fixture::new().write(
        "r.csv",
        "id,email,first_name\n1,ann@example.com,Ann\n2,bob@example.org,Bøb\n3,ANN@example.com,Dup\n",
    );
    let out = f.path("out");
    let report = preview(
        &f.campaign(),
        &PreviewOptions {
            lines: vec![3, 4, 99],
            sample: 0,
            out: out.clone(),
        },
    )
    .unwrap();
    assert_eq!(report.missing_lines, [99]);
    assert!(report.failed.is_empty());
    let written: Vec<_> = report.written.iter().map(|w| w.line).collect();
    assert_eq!(written, [3, 4]);
    assert_eq!(
        report.written[1].note.as_deref(),
        Some("not sent: duplicate of line 2")
    );

    let bob = &report.written[0];
    assert_eq!(bob.path, out.join("line-000003-bob@example.org.eml"));
    let bytes = std::fs::read(&bob.path).unwrap();
    let message = mail_parser::MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(message.subject(), Some("Hello Bøb"));
    assert_eq!(bob.subject, "Hello Bøb");
    // mail-builder writes CRLF line ends (RFC 5322 §2.1).
    let lf = |s: Option<std::borrow::Cow<'_, str>>| s.map(|s| s.replace("\r\n", "\n"));
    assert_eq!(
        lf(message.body_text(0)).as_deref().map(str::trim_end),
        Some("Hi Bøb,\n\nUnsubscribe: https://acme.example/u/2")
    );
    assert_eq!(
        lf(message.body_html(0)).as_deref().map(str::trim_end),
        Some("<p>Hi Bøb,</p>\n<p><a href=\"https://acme.example/u/2\">Unsubscribe</a></p>")
    );
    let to = message.to().unwrap().first().unwrap();
    assert_eq!(to.address(), Some("bob@example.org"));

    // A sample picks sendable rows only.
    let report = preview(
        &f.campaign(),
        &PreviewOptions {
            lines: vec![],
            sample: 10,
            out: f.path("sample"),
        },
    )
    .unwrap();
    let written: Vec<_> = report.written.iter().map(|w| w.line).collect();
    assert_eq!(written, [2, 3]);
}

#[test]
fn preview_signs_when_dkim_is_set() {
    let f = Fixture::new();
    std::fs::copy(key_file("ed25519.pem"), f.path("dkim.pem")).unwrap();
    let mut text = std::fs::read_to_string(f.path("campaign.toml")).unwrap();
    text.push_str("\n[dkim]\nselector = \"s1\"\ndomain = \"acme.example\"\nkey_file = \"dkim.pem\"\nalgorithm = \"ed25519\"\n");
    std::fs::write(f.path("campaign.toml"), text).unwrap();
    let c = f.campaign();
    let report = preview(
        &c,
        &PreviewOptions {
            lines: vec![2],
            sample: 0,
            out: f.path("out"),
        },
    )
    .unwrap();
    let bytes = std::fs::read(&report.written[0].path).unwrap();
    assert!(bytes.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256; s=s1; d=acme.example"));
}

/// `cargo test --release -p edm-campaign --test preflight -- --ignored --nocapture`
#[test]
#[ignore = "writes a 1,000,000-row CSV; run in release mode"]
fn bench_check_one_million_rows() {
    use std::io::Write;
    const ROWS: usize = 1_000_000;
    let welcome = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../campaigns/welcome");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "campaign.toml",
        "templates/welcome.html.hbs",
        "templates/welcome.txt.hbs",
    ] {
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(welcome.join(name), to).unwrap();
    }
    let mut csv =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("recipients.csv")).unwrap());
    writeln!(csv, "id,email,first_name,last_name,plan").unwrap();
    for i in 0..ROWS {
        writeln!(
            csv,
            "{i},user{i}@example{}.com,First{i},Last{i},pro",
            i % 97
        )
        .unwrap();
    }
    csv.flush().unwrap();
    drop(csv);
    let c = Campaign::load(dir.path()).unwrap();
    for workers in [1, 2] {
        let r = check(
            &c,
            &CheckOptions {
                workers,
                examples: 10,
            },
        )
        .unwrap();
        assert_eq!(r.rendered, ROWS as u64);
        println!(
            "edm check: {ROWS} rows, {workers} worker(s): {:.1}s, {:.0} rows/s (largest message {} bytes)",
            r.elapsed_secs,
            ROWS as f64 / r.elapsed_secs,
            r.largest_message.unwrap_or(0)
        );
    }
}

/// With an SES relay (which replaces the Message-ID), edm's DKIM signature
/// leaves Message-ID and Date out; with SMTP it keeps them
/// (docs/transports.md).
#[test]
fn dkim_on_an_ses_relay_leaves_message_id_and_date_unsigned() {
    let dkim = "\n[dkim]\nselector = \"s1\"\ndomain = \"acme.example\"\nkey_file = \"dkim.pem\"\n";
    let message = b"From: a@acme.example\r\nMessage-ID: <x@acme.example>\r\nDate: Tue, 1 Dec 2026 00:00:00 +0000\r\nSubject: x\r\n\r\nx\r\n";
    let signed_headers = |f: &Fixture| {
        std::fs::copy(key_file("rsa2048.pem"), f.path("dkim.pem")).unwrap();
        let mut text = std::fs::read_to_string(f.path("campaign.toml")).unwrap();
        text.push_str(dkim);
        std::fs::write(f.path("campaign.toml"), text).unwrap();
        let signer = edm_campaign::dkim_signer(&f.campaign()).unwrap().unwrap();
        let header = signer
            .signature_header(message)
            .unwrap()
            .to_ascii_lowercase();
        let h = header
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        h.split(':')
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>()
    };
    let smtp = signed_headers(&Fixture::new());
    assert!(smtp.contains(&"message-id".to_string()), "{smtp:?}");
    let ses = Fixture::new().toml(
        "[smtp]\nhost = \"127.0.0.1\"\nport = 2525\n",
        "[[relay]]\nname = \"ses\"\nkind = \"ses\"\nregion = \"us-east-1\"\n",
    );
    let ses = signed_headers(&ses);
    assert!(!ses.contains(&"message-id".to_string()), "{ses:?}");
    assert!(!ses.contains(&"date".to_string()), "{ses:?}");
    assert!(ses.contains(&"from".to_string()), "{ses:?}");
}
