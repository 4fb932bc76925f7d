//! Attachments: parsed back with mail-parser, the bytes intact; missing
//! files and limits are failures before anything is sent.

use std::path::Path;

use edm_model::{Category, Recipient, RecipientId};
use edm_template::{
    AttachmentEncoding, AttachmentFile, AttachmentLimits, Attachments, Error, Limits, MessageSpec,
    Source, Templates,
};
use mail_parser::{MessageParser, MimeHeaders};

fn columns() -> Vec<String> {
    ["email", "first_name", "attachment"]
        .map(String::from)
        .to_vec()
}

fn recipient(line: u64, email: &str, attachment: &str) -> Recipient {
    Recipient {
        id: RecipientId(line as i64),
        line,
        email: email.to_owned(),
        values: vec![email.to_owned(), "Ann".to_owned(), attachment.to_owned()],
        attempts: 0,
        first_attempt_at: None,
    }
}

fn templates() -> Templates {
    Templates::compile(MessageSpec {
        campaign: "files".to_owned(),
        from: "Acme <news@acme.example>".to_owned(),
        reply_to: None,
        subject: "Your documents, {{first_name}}".to_owned(),
        html: Some(Source {
            name: "b.html".into(),
            body: "<p>Hi {{first_name}}</p>".into(),
        }),
        text: Some(Source {
            name: "b.txt".into(),
            body: "Hi {{first_name}}".into(),
        }),
        list_unsubscribe: None,
        limits: Limits::default(),
    })
    .unwrap()
}

/// Bytes that survive only a binary-safe encoding.
fn binary(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 256) as u8).collect()
}

fn setup(dir: &Path, limits: AttachmentLimits) -> Result<Templates, Error> {
    std::fs::create_dir_all(dir.join("files/invoices")).unwrap();
    std::fs::write(dir.join("files/terms.pdf"), binary(3000)).unwrap();
    std::fs::write(dir.join("files/invoices/ann.csv"), "n,total\r\n1,9.50\r\n").unwrap();
    let terms = AttachmentFile::read(&dir.join("files/terms.pdf")).unwrap();
    templates().with_attachments(Attachments {
        files: vec![terms],
        column: Some("attachment".into()),
        base_dir: dir.to_owned(),
        moved_from: None,
        protected: Vec::new(),
        limits,
        encoding: AttachmentEncoding::Auto,
    })
}

#[test]
fn shared_and_per_recipient_files_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let t = setup(dir.path(), AttachmentLimits::default()).unwrap();
    let env = t
        .render(
            &columns(),
            &recipient(2, "ann@example.com", "files/invoices/ann.csv"),
        )
        .unwrap();
    let msg = MessageParser::default().parse(&env.body).unwrap();
    assert_eq!(msg.attachment_count(), 2);
    let pdf = msg.attachment(0).unwrap();
    assert_eq!(pdf.attachment_name(), Some("terms.pdf"));
    let ct = pdf.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("application", Some("pdf")));
    assert_eq!(pdf.contents(), binary(3000).as_slice());
    let csv = msg.attachment(1).unwrap();
    assert_eq!(csv.attachment_name(), Some("ann.csv"));
    assert_eq!(csv.contents(), b"n,total\r\n1,9.50\r\n");
    // The bodies are still there.
    assert!(msg.body_text(0).unwrap().contains("Hi Ann"));
    assert!(msg.body_html(0).unwrap().contains("Hi Ann"));

    // An empty column: the shared file only.
    let env = t
        .render(&columns(), &recipient(3, "bob@example.com", " "))
        .unwrap();
    let msg = MessageParser::default().parse(&env.body).unwrap();
    assert_eq!(msg.attachment_count(), 1);
}

#[test]
fn a_missing_or_escaping_per_recipient_file_fails_that_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let t = setup(dir.path(), AttachmentLimits::default()).unwrap();
    let f = t
        .render(
            &columns(),
            &recipient(7, "ann@example.com", "files/nope.pdf"),
        )
        .unwrap_err();
    assert_eq!(f.category, Category::Template);
    assert!(
        f.reply.starts_with(
            "line 7: attachment \"files/nope.pdf\" (column `attachment`): cannot read"
        ),
        "{}",
        f.reply
    );
    for (bad, why) in [
        ("../secret.txt", "contains .."),
        ("/etc/passwd", "absolute path"),
    ] {
        let f = t
            .render(&columns(), &recipient(8, "ann@example.com", bad))
            .unwrap_err();
        assert_eq!(f.category, Category::Template);
        assert!(f.reply.contains("refused: it"), "{}", f.reply);
        assert!(f.reply.contains(why), "{}", f.reply);
    }
}

#[test]
fn limits_are_refused_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    // One shared file over the limit: the campaign does not compile.
    let e = setup(
        dir.path(),
        AttachmentLimits {
            max_attachment_bytes: Some(1000),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("terms.pdf"), "{e}");
    assert!(
        e.to_string().contains("max_attachment_bytes limit of 1000"),
        "{e}"
    );

    // The total with the recipient's own file: that recipient fails.
    let t = setup(
        dir.path(),
        AttachmentLimits {
            max_attachments_bytes: Some(3010),
            ..Default::default()
        },
    )
    .unwrap();
    let f = t
        .render(
            &columns(),
            &recipient(4, "ann@example.com", "files/invoices/ann.csv"),
        )
        .unwrap_err();
    assert_eq!(f.category, Category::Preflight);
    assert!(
        f.reply.contains("max_attachments_bytes limit of 3010"),
        "{}",
        f.reply
    );
    assert!(
        t.render(&columns(), &recipient(5, "bob@example.com", ""))
            .is_ok()
    );

    // The body limit ignores the attachments' size.
    let t = setup(
        dir.path(),
        AttachmentLimits {
            max_body_bytes: Some(2000),
            ..Default::default()
        },
    )
    .unwrap();
    let env = t
        .render(&columns(), &recipient(5, "bob@example.com", ""))
        .unwrap();
    assert!(env.body.len() > 4000, "the PDF is in the message");
    let t = setup(
        dir.path(),
        AttachmentLimits {
            max_body_bytes: Some(300),
            ..Default::default()
        },
    )
    .unwrap();
    let f = t
        .render(&columns(), &recipient(5, "bob@example.com", ""))
        .unwrap_err();
    assert_eq!(f.category, Category::Preflight);
    assert!(f.reply.contains("without attachments"), "{}", f.reply);
}

/// A campaign folder as edm lays it out: settings, state, a DKIM key, and
/// `attachments/` holding one invoice, a symlink out and one within.
fn campaign_folder(root: &Path) -> (std::path::PathBuf, Vec<std::path::PathBuf>) {
    let dir = root.join("attachments");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(root.join(".edm")).unwrap();
    std::fs::create_dir_all(root.join("keys")).unwrap();
    std::fs::write(root.join("campaign.toml"), "[campaign]\n").unwrap();
    std::fs::write(root.join(".edm/state.db"), "SQLite format 3\0").unwrap();
    std::fs::write(root.join("keys/dkim.pem"), "-----BEGIN PRIVATE KEY-----").unwrap();
    std::fs::write(dir.join("sub/inv.pdf"), binary(100)).unwrap();
    std::os::unix::fs::symlink(root.join(".edm/state.db"), dir.join("state.db")).unwrap();
    std::os::unix::fs::symlink("../keys/dkim.pem", dir.join("key.pem")).unwrap();
    std::os::unix::fs::symlink("sub/inv.pdf", dir.join("latest.pdf")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("up")).unwrap();
    let protected = [".edm", "keys/dkim.pem", "campaign.toml"]
        .map(|p| root.join(p).canonicalize().unwrap())
        .to_vec();
    (dir, protected)
}

#[test]
fn per_recipient_paths_stay_inside_attachment_dir() {
    use edm_template::{PathRefusal, resolve_inside};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (dir, protected) = campaign_folder(&root);
    let ok = |v: &str| resolve_inside(&dir, v, &protected);
    assert_eq!(ok("sub/inv.pdf"), Ok(dir.join("sub/inv.pdf")));
    assert_eq!(ok("./sub/inv.pdf"), Ok(dir.join("sub/inv.pdf")));
    // A symlink that stays inside is followed, to its canonical target.
    assert_eq!(ok("latest.pdf"), Ok(dir.join("sub/inv.pdf")));
    for (value, refusal) in [
        (
            "../campaign.toml",
            PathRefusal::NotRelative("it contains .."),
        ),
        (
            "../.edm/state.db",
            PathRefusal::NotRelative("it contains .."),
        ),
        (
            "sub/../../keys/dkim.pem",
            PathRefusal::NotRelative("it contains .."),
        ),
        (
            "/etc/passwd",
            PathRefusal::NotRelative("it is an absolute path"),
        ),
        (
            &root.join(".edm/state.db").display().to_string(),
            PathRefusal::NotRelative("it is an absolute path"),
        ),
        (
            "inv\0.pdf",
            PathRefusal::NotRelative("it contains a NUL byte"),
        ),
        (
            "inv\n.pdf",
            PathRefusal::NotRelative("it contains a control character"),
        ),
        // Symlinks pointing out: the state database, the DKIM key, the folder above.
        ("state.db", PathRefusal::Outside),
        ("key.pem", PathRefusal::Outside),
        ("up/campaign.toml", PathRefusal::Outside),
        ("sub", PathRefusal::NotAFile),
        (".", PathRefusal::NotAFile),
    ] {
        assert_eq!(ok(value), Err(refusal), "{value:?}");
    }
    assert!(matches!(ok("nope.pdf"), Err(PathRefusal::Missing(_))));
    assert!(matches!(
        resolve_inside(&root.join("absent"), "a.pdf", &protected),
        Err(PathRefusal::DirUnavailable(_))
    ));

    // attachment_dir = the campaign folder itself: the state database and
    // the DKIM key are inside it, and still refused.
    let all = |v: &str| resolve_inside(&root, v, &protected);
    assert_eq!(all(".edm/state.db"), Err(PathRefusal::Protected));
    assert_eq!(all("keys/dkim.pem"), Err(PathRefusal::Protected));
    assert_eq!(all("campaign.toml"), Err(PathRefusal::Protected));
    assert_eq!(all("attachments/key.pem"), Err(PathRefusal::Protected));
    assert!(all("attachments/sub/inv.pdf").is_ok());
}

#[test]
fn a_value_relative_to_the_campaign_folder_says_what_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (dir, protected) = campaign_folder(&root);
    std::fs::create_dir_all(root.join("files")).unwrap();
    std::fs::write(root.join("files/old.pdf"), binary(10)).unwrap();
    let t = templates()
        .with_attachments(Attachments {
            column: Some("attachment".into()),
            base_dir: dir.clone(),
            moved_from: Some(root.clone()),
            protected,
            ..Default::default()
        })
        .unwrap();
    let render = |value: &str| {
        t.render(&columns(), &recipient(9, "ann@example.com", value))
            .unwrap_err()
            .reply
    };
    // Written for the old rule: relative to the campaign folder.
    let reply = render("files/old.pdf");
    assert!(
        reply.contains("now looked up in [campaign] attachment_dir"),
        "{reply}"
    );
    assert!(reply.contains(&dir.display().to_string()), "{reply}");
    let reply = render("attachments/sub/inv.pdf");
    assert!(reply.contains("write \"sub/inv.pdf\""), "{reply}");
    // Never a hint towards a protected file.
    let reply = render(".edm/state.db");
    assert!(reply.contains("cannot read"), "{reply}");
    assert!(!reply.contains("now looked up"), "{reply}");
    // What went out under the name the CSV gave.
    let env = t
        .render(&columns(), &recipient(9, "ann@example.com", "latest.pdf"))
        .unwrap();
    let msg = MessageParser::default().parse(&env.body).unwrap();
    assert_eq!(
        msg.attachment(0).unwrap().attachment_name(),
        Some("latest.pdf")
    );
}

#[test]
fn base64_only_encodes_text_attachments_in_base64() {
    let dir = tempfile::tempdir().unwrap();
    let text = "invoice,total\r\n1,9.50\r\n".repeat(3);
    std::fs::write(dir.path().join("notes.txt"), &text).unwrap();
    let notes = AttachmentFile::read(&dir.path().join("notes.txt")).unwrap();
    let render = |encoding| {
        let t = templates()
            .with_attachments(Attachments {
                files: vec![notes.clone()],
                encoding,
                ..Default::default()
            })
            .unwrap();
        t.render(&columns(), &recipient(2, "ann@example.com", ""))
            .unwrap()
            .body
    };
    let auto = String::from_utf8(render(AttachmentEncoding::Auto)).unwrap();
    let base64 = render(AttachmentEncoding::Base64);
    // mail-builder alone sends a short text file as it is.
    assert!(auto.contains("1,9.50"), "{auto}");
    let msg = MessageParser::default().parse(&base64).unwrap();
    let part = msg.attachment(0).unwrap();
    assert_eq!(part.attachment_name(), Some("notes.txt"));
    let ct = part.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("plain")));
    assert_eq!(part.contents(), text.as_bytes());
    let raw = String::from_utf8(base64).unwrap();
    assert!(!raw.contains("1,9.50"), "{raw}");
    let part_head = raw.split("filename=\"notes.txt\"").nth(1).unwrap();
    assert!(
        part_head
            .to_ascii_lowercase()
            .contains("content-transfer-encoding: base64"),
        "{raw}"
    );
    // Every line of the message fits RFC 5322's 998, base64 at 76.
    assert!(raw.split("\r\n").all(|l| l.len() <= 998));
    assert!(
        !raw.replace("\r\n", "").contains('\n'),
        "only CRLF line ends"
    );
}
