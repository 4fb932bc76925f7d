//! Attachments: parsed back with mail-parser, the bytes intact; missing
//! files and limits are failures before anything is sent.

use std::path::Path;

use edm_model::{Category, Recipient, RecipientId};
use edm_template::{
    AttachmentFile, AttachmentLimits, Attachments, Error, Limits, MessageSpec, Source, Templates,
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
        limits,
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
    for bad in ["../secret.txt", "/etc/passwd"] {
        let f = t
            .render(&columns(), &recipient(8, "ann@example.com", bad))
            .unwrap_err();
        assert_eq!(f.category, Category::Template);
        assert!(
            f.reply.contains("inside the campaign directory"),
            "{}",
            f.reply
        );
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
