//! Issue 9, points 3 and 9: per-row attachments come only from
//! `[campaign] attachment_dir` (`edm check` flags every other row with its
//! line; `edm send` and `edm preview` refuse a folder that cannot work), and
//! the Tencent Cloud SES profile's 9 MB cap, 8 MB warning and base64-only
//! attachments.

use std::path::Path;

use edm_campaign::{
    Campaign, CheckOptions, CheckReport, PreviewOptions, ProblemKind, check, preview,
};

const TOML: &str = r#"
[campaign]
name = "docs"
from = "Acme News <news@acme.example>"
subject = "Your documents, {{first_name}}"
text = "body.txt"
recipients = "r.csv"
list_unsubscribe = "https://acme.example/u/{{id}}"
attachment_column = "file"
EXTRA

[smtp]
host = "127.0.0.1"
port = 2525
"#;

fn campaign(root: &Path, extra: &str, csv: &str) -> Campaign {
    std::fs::create_dir_all(root.join("attachments")).unwrap();
    std::fs::create_dir_all(root.join(".edm")).unwrap();
    std::fs::create_dir_all(root.join("keys")).unwrap();
    std::fs::write(root.join(".edm/state.db"), "SQLite format 3\0").unwrap();
    std::fs::write(root.join("keys/dkim.pem"), "-----BEGIN PRIVATE KEY-----").unwrap();
    std::fs::write(root.join("attachments/inv.pdf"), b"%PDF-1.4 invoice").unwrap();
    std::fs::write(root.join("body.txt"), "Hi {{first_name}}\n").unwrap();
    std::fs::write(root.join("r.csv"), csv).unwrap();
    std::fs::write(root.join("campaign.toml"), TOML.replace("EXTRA", extra)).unwrap();
    Campaign::load(root).unwrap()
}

fn run_check(c: &Campaign) -> CheckReport {
    check(c, &CheckOptions::default()).unwrap()
}

fn lines(r: &CheckReport, kind: ProblemKind) -> Vec<u64> {
    r.group(kind)
        .map(|g| g.examples.iter().filter_map(|f| f.line).collect())
        .unwrap_or_default()
}

#[test]
fn check_flags_rows_that_reach_outside_attachment_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("attachments")).unwrap();
    std::os::unix::fs::symlink("../keys/dkim.pem", root.join("attachments/key.pem")).unwrap();
    std::fs::create_dir_all(root.join("files")).unwrap();
    std::fs::write(root.join("files/old.pdf"), b"old rule").unwrap();
    let c = campaign(
        root,
        "",
        "id,email,first_name,file\n\
         1,ann@example.com,Ann,inv.pdf\n\
         2,bob@example.com,Bob,../.edm/state.db\n\
         3,cy@example.com,Cy,key.pem\n\
         4,dan@example.com,Dan,/etc/passwd\n\
         5,eve@example.com,Eve,files/old.pdf\n",
    );
    let r = run_check(&c);
    assert_eq!(
        lines(&r, ProblemKind::AttachmentRefused),
        [3, 4, 5],
        "{:#?}",
        r.problems
    );
    let refused = &r.group(ProblemKind::AttachmentRefused).unwrap().examples;
    assert!(
        refused[0]
            .to_string()
            .contains("r.csv:3: attachment \"../.edm/state.db\" (column `file`): refused"),
        "{}",
        refused[0]
    );
    assert!(refused[1].message.contains("leads out of attachment_dir"));
    // The campaign written for the old rule: the row says what moved.
    assert_eq!(lines(&r, ProblemKind::AttachmentMissing), [6]);
    let moved = &r.group(ProblemKind::AttachmentMissing).unwrap().examples[0];
    assert!(
        moved
            .message
            .contains("now looked up in [campaign] attachment_dir"),
        "{moved}"
    );
    assert_eq!(r.rendered, 1);
    assert!(!r.is_clean());
}

#[test]
fn an_attachment_dir_that_cannot_work_is_refused_before_sending() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let csv = "id,email,first_name,file\n1,ann@example.com,Ann,attachments/inv.pdf\n";
    // Missing: check says so at the setting, the row says what moved, and
    // preview (as send) does not start.
    let c = campaign(root, "attachment_dir = \"invoices\"", csv);
    let r = run_check(&c);
    let at = &r.group(ProblemKind::AttachmentMissing).unwrap().examples;
    let setting = at.iter().find(|f| f.line.is_none()).unwrap();
    assert_eq!(setting.field.as_deref(), Some("[campaign] attachment_dir"));
    assert!(setting.message.contains("cannot be opened"), "{setting}");
    assert!(at.iter().any(|f| f.line == Some(2)), "{at:#?}");
    let e = preview(
        &c,
        &PreviewOptions {
            lines: vec![2],
            sample: 0,
            out: root.join("out"),
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("attachment_dir"), "{e}");
    assert!(e.to_string().contains("no longer"), "{e}");

    // The campaign folder itself: refused, the protected files too.
    let c = campaign(
        root,
        "attachment_dir = \".\"",
        "id,email,first_name,file\n1,ann@example.com,Ann,.edm/state.db\n",
    );
    let r = run_check(&c);
    let g = r.group(ProblemKind::AttachmentRefused).unwrap();
    assert!(
        g.examples
            .iter()
            .any(|f| f.message.contains("is the campaign folder")),
        "{g:#?}"
    );
    assert_eq!(lines(&r, ProblemKind::AttachmentRefused), [2]);
}

/// A Tencent campaign: a shared file of `shared` bytes and a text file for
/// everyone, and for each row its own file of the given size.
fn tencent(root: &Path, shared: usize, sizes: &[usize]) -> Campaign {
    let bytes = |n: usize| -> Vec<u8> { (0..n).map(|j| (j * 31 % 251) as u8).collect() };
    std::fs::create_dir_all(root.join("attachments")).unwrap();
    let mut csv = String::from("id,email,first_name,file\n");
    for (i, n) in sizes.iter().enumerate() {
        csv.push_str(&format!("{i},u{i}@example.com,U{i},f{i}.bin\n"));
        std::fs::write(root.join(format!("attachments/f{i}.bin")), bytes(*n)).unwrap();
    }
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::write(root.join("shared/terms.bin"), bytes(shared)).unwrap();
    std::fs::write(root.join("shared/notes.txt"), "plain text notes\n").unwrap();
    campaign(
        root,
        "attachments = [\"shared/terms.bin\", \"shared/notes.txt\"]\n\n[limits]\nprovider = \"tencent\"",
        &csv,
    )
}

#[test]
fn tencent_caps_the_encoded_message_and_warns_near_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    // Files of 2 MB + 4 KB, 2 + 4 MB, 2 + 4.9 MB: every one under the
    // profile's 5 MB per file and 10 MB together, but base64 makes them
    // about 2.7, 8.2 and 9.4 MB.
    let c = tencent(tmp.path(), 2_000_000, &[4_000, 4_000_000, 4_900_000]);
    let r = run_check(&c);
    assert_eq!(
        lines(&r, ProblemKind::MessageTooLarge),
        [4],
        "{:#?}",
        r.problems
    );
    let e = &r.group(ProblemKind::MessageTooLarge).unwrap().examples[0];
    assert!(
        e.message.contains("max_message_bytes limit of 9000000"),
        "{e}"
    );
    assert_eq!(lines(&r, ProblemKind::MessageNearLimit), [3]);
    let w = &r.group(ProblemKind::MessageNearLimit).unwrap().examples[0];
    assert!(w.message.contains("over 8000000"), "{w}");
    assert_eq!(r.rendered, 2);
    assert_eq!(r.count(ProblemKind::AttachmentTooLarge), 0);

    // What preview writes (what send sends): the text file in base64.
    let report = preview(
        &c,
        &PreviewOptions {
            lines: vec![2],
            sample: 0,
            out: tmp.path().join("out"),
        },
    )
    .unwrap();
    let raw = std::fs::read(&report.written[0].path).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("plain text notes"), "sent as it is");
    let after = text.split("filename=\"notes.txt\"").nth(1).unwrap();
    let head = after.split("\r\n\r\n").next().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-transfer-encoding: base64"),
        "{head}"
    );
}
