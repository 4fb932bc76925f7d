//! `[campaign] attachments` / `attachment_column` and their `[limits]`:
//! `edm check` reports missing and too-large files, `edm preview` writes
//! messages whose attachments parse back with the files' bytes.

use std::path::{Path, PathBuf};

use edm_campaign::{
    Campaign, CheckOptions, CheckReport, PreviewOptions, ProblemKind, check, preview,
};
use mail_parser::MimeHeaders;

const TOML: &str = r#"
[campaign]
name = "docs"
from = "Acme News <news@acme.example>"
subject = "Your documents, {{first_name}}"
text = "body.txt"
recipients = "r.csv"
list_unsubscribe = "https://acme.example/u/{{id}}"
attachments = ["files/terms.pdf"]
attachment_column = "invoice"
attachment_dir = "files"

[smtp]
host = "127.0.0.1"
port = 2525
"#;

const CSV: &str = "id,email,first_name,invoice\n\
1,ann@example.com,Ann,ann.csv\n\
2,bob@example.org,Bob,\n\
3,cy@example.net,Cy,missing.pdf\n";

fn pdf() -> Vec<u8> {
    let mut b = b"%PDF-1.4\n".to_vec();
    b.extend((0..4000).map(|i| (i % 251) as u8));
    b
}

fn campaign(extra_limits: &str) -> (tempfile::TempDir, Campaign) {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    std::fs::create_dir_all(p("files")).unwrap();
    std::fs::write(p("files/terms.pdf"), pdf()).unwrap();
    std::fs::write(p("files/ann.csv"), "invoice,total\n7,9.50\n").unwrap();
    std::fs::write(
        p("body.txt"),
        "Hi {{first_name}}\nhttps://acme.example/u/{{id}}\n",
    )
    .unwrap();
    std::fs::write(p("r.csv"), CSV).unwrap();
    let toml = TOML.replace("[smtp]", &format!("[limits]\n{extra_limits}\n\n[smtp]"));
    std::fs::write(p("campaign.toml"), toml).unwrap();
    let c = Campaign::load(dir.path()).unwrap();
    (dir, c)
}

fn run_check(c: &Campaign) -> CheckReport {
    check(c, &CheckOptions::default()).unwrap()
}

fn first(r: &CheckReport, kind: ProblemKind) -> String {
    r.group(kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {:#?}", r.problems))
        .examples[0]
        .to_string()
}

#[test]
fn check_reports_a_missing_per_recipient_file() {
    let (_dir, c) = campaign("");
    let r = run_check(&c);
    assert_eq!(
        r.count(ProblemKind::AttachmentMissing),
        1,
        "{:#?}",
        r.problems
    );
    let e = first(&r, ProblemKind::AttachmentMissing);
    assert!(e.contains("r.csv:4: attachment \"missing.pdf\""), "{e}");
    assert_eq!(r.rendered, 2);
    assert!(!r.is_clean());
}

#[test]
fn check_reports_attachments_over_the_limits() {
    // The shared PDF is over the per-file limit: reported once, at the setting.
    let (_dir, c) = campaign("max_attachment_bytes = 1000");
    let r = run_check(&c);
    let e = first(&r, ProblemKind::AttachmentTooLarge);
    assert!(e.contains("terms.pdf"), "{e}");
    assert!(e.contains("max_attachment_bytes limit of 1000"), "{e}");

    // The total with Ann's own file is over: her row.
    let total = pdf().len() + 5;
    let (_dir, c) = campaign(&format!("max_attachments_bytes = {total}"));
    let r = run_check(&c);
    assert_eq!(
        r.count(ProblemKind::AttachmentTooLarge),
        1,
        "{:#?}",
        r.problems
    );
    let e = first(&r, ProblemKind::AttachmentTooLarge);
    assert!(e.contains("r.csv:2"), "{e}");

    // A missing shared file.
    let (dir, c) = campaign("");
    std::fs::remove_file(dir.path().join("files/terms.pdf")).unwrap();
    let r = run_check(&c);
    let e = first(&r, ProblemKind::AttachmentMissing);
    assert!(e.contains("terms.pdf"), "{e}");

    // The Tencent profile: 1 MB body, 5 MB per file; a 6 MB file is refused.
    let (dir, c) = campaign("provider = \"tencent\"");
    std::fs::write(dir.path().join("files/terms.pdf"), vec![0u8; 6_000_000]).unwrap();
    let r = run_check(&c);
    let e = first(&r, ProblemKind::AttachmentTooLarge);
    assert!(e.contains("max_attachment_bytes limit of 5000000"), "{e}");
}

#[test]
fn preview_messages_carry_the_files() {
    let (dir, c) = campaign("");
    let out = dir.path().join("out");
    let report = preview(
        &c,
        &PreviewOptions {
            lines: vec![2, 3],
            sample: 0,
            out,
        },
    )
    .unwrap();
    assert_eq!(report.written.len(), 2);
    let parse = |path: &Path| std::fs::read(path).unwrap();
    let ann = parse(&report.written[0].path);
    let msg = mail_parser::MessageParser::default().parse(&ann).unwrap();
    assert_eq!(msg.attachment_count(), 2);
    let terms = msg.attachment(0).unwrap();
    assert_eq!(terms.attachment_name(), Some("terms.pdf"));
    assert_eq!(terms.contents(), pdf().as_slice());
    assert_eq!(
        msg.attachment(1).unwrap().contents(),
        b"invoice,total\n7,9.50\n"
    );
    let bob = parse(&report.written[1].path);
    let msg = mail_parser::MessageParser::default().parse(&bob).unwrap();
    assert_eq!(msg.attachment_count(), 1);
}
