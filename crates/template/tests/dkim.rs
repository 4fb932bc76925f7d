//! DKIM signing: what the signature covers, the keys accepted and refused,
//! and verification by an independent implementation (Python's dkimpy).
//!
//! The dkimpy tests need `python3` with `dkimpy[ed25519]` (PyNaCl for
//! Ed25519). Under `CI` they fail when it is missing; elsewhere they print a
//! notice and pass.
//!
//! The keys in `tests/keys/` are test-only keys made with openssl.

use std::path::{Path, PathBuf};
use std::process::Command;

use edm_model::{Category, Recipient, RecipientId};
use edm_template::{
    Dkim, DkimAlgorithm, DkimConfig, Error, Limits, MessageSpec, Source, Templates,
};
use mail_parser::MessageParser;

fn key(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config(key_file: &str, algorithm: DkimAlgorithm) -> DkimConfig {
    DkimConfig {
        selector: "edm2024".to_owned(),
        domain: "acme.example".to_owned(),
        key_pem: key(key_file),
        algorithm,
    }
}

fn rsa() -> Dkim {
    Dkim::new(config("rsa2048.pem", DkimAlgorithm::Rsa)).expect("RSA key")
}

fn ed25519() -> Dkim {
    Dkim::new(config("ed25519.pem", DkimAlgorithm::Ed25519)).expect("Ed25519 key")
}

fn spec() -> MessageSpec {
    MessageSpec {
        campaign: "Spring Sale".to_owned(),
        from: "Acme News <news@acme.example>".to_owned(),
        reply_to: Some("support@acme.example".to_owned()),
        subject: "Hello {{first_name}}, ünïcode too".to_owned(),
        html: Some(Source {
            name: "body.html".to_owned(),
            body: "<p>Hi {{first_name}}</p>\n<p><a href=\"https://acme.example/u/{{id}}\">Unsubscribe</a></p>\n".to_owned(),
        }),
        text: Some(Source {
            name: "body.txt".to_owned(),
            body: "Hi {{first_name}},\n\ntrailing spaces   \n\n\n".to_owned(),
        }),
        list_unsubscribe: Some("https://acme.example/u/{{id}}".to_owned()),
        limits: Limits::default(),
    }
}

fn columns() -> Vec<String> {
    ["id", "email", "first_name"].map(String::from).to_vec()
}

fn ann() -> Recipient {
    Recipient {
        id: RecipientId(1),
        line: 2,
        email: "ann@example.com".to_owned(),
        values: vec!["42".into(), "ann@example.com".into(), "Ann".into()],
        attempts: 0,
        first_attempt_at: None,
    }
}

fn signed(dkim: Dkim) -> Vec<u8> {
    Templates::compile(spec())
        .unwrap()
        .with_dkim(dkim)
        .render(&columns(), &ann())
        .expect("renders")
        .body
}

/// The DKIM-Signature header's value, unfolded, as `tag=value` pairs.
fn signature_tags(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message);
    assert!(
        text.starts_with("DKIM-Signature: "),
        "the signature is the first header:\n{text}"
    );
    let end = text.find("\r\n\r\n").unwrap();
    let mut value = String::new();
    for (i, line) in text[..end].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        value.push_str(line.trim_start_matches("DKIM-Signature:"));
    }
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.split_whitespace().collect()))
        .collect()
}

fn tag(tags: &[(String, String)], name: &str) -> String {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name}= in {tags:?}"))
}

#[test]
fn signature_covers_the_headers_bulk_senders_need() {
    for (dkim, algorithm) in [(rsa(), "rsa-sha256"), (ed25519(), "ed25519-sha256")] {
        let message = signed(dkim);
        let tags = signature_tags(&message);
        assert_eq!(tag(&tags, "a"), algorithm);
        assert_eq!(tag(&tags, "c"), "relaxed/relaxed");
        assert_eq!(tag(&tags, "d"), "acme.example");
        assert_eq!(tag(&tags, "s"), "edm2024");
        let h = tag(&tags, "h").to_ascii_lowercase();
        let signed: Vec<&str> = h.split(':').collect();
        for needed in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "mime-version",
            "content-type",
            "reply-to",
            // RFC 8058 §4: both must be signed for one-click to count.
            "list-unsubscribe",
            "list-unsubscribe-post",
        ] {
            assert!(signed.contains(&needed), "{needed} not in h={h}");
        }
        // Still a message every reader parses.
        let parsed = MessageParser::default().parse(&message).unwrap();
        assert_eq!(parsed.subject(), Some("Hello Ann, ünïcode too"));
    }
}

/// For a relay that replaces the Message-ID (Amazon SES), the signature
/// leaves Message-ID and Date out, and keeps everything else.
#[test]
fn without_id_and_date_for_a_relay_that_replaces_them() {
    let dkim = Dkim::with_headers(
        config("rsa2048.pem", DkimAlgorithm::Rsa),
        &edm_template::SIGNED_HEADERS_WITHOUT_ID_AND_DATE,
    )
    .unwrap();
    let message = signed(dkim);
    let tags = signature_tags(&message);
    let h = tag(&tags, "h").to_ascii_lowercase();
    let signed: Vec<&str> = h.split(':').collect();
    assert!(!signed.contains(&"message-id"), "h={h}");
    assert!(!signed.contains(&"date"), "h={h}");
    for needed in [
        "from",
        "subject",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(signed.contains(&needed), "{needed} not in h={h}");
    }
}

#[test]
fn dns_records_carry_the_public_key() {
    let dkim = rsa();
    assert_eq!(dkim.dns_name(), "edm2024._domainkey.acme.example");
    // The same SubjectPublicKeyInfo `openssl pkey -pubout` prints.
    assert_eq!(
        dkim.dns_record(),
        format!("v=DKIM1; k=rsa; p={}", key("rsa2048.pub.b64").trim())
    );
    assert_eq!(
        ed25519().dns_record(),
        format!("v=DKIM1; k=ed25519; p={}", key("ed25519.pub.b64").trim())
    );
    // PKCS#1 PEM of the same key is accepted and gives the same record.
    let pkcs1 = Dkim::new(config("rsa2048.pkcs1.pem", DkimAlgorithm::Rsa)).unwrap();
    assert_eq!(pkcs1.dns_record(), dkim.dns_record());
}

#[test]
fn bad_keys_are_refused_with_reasons() {
    let cases = [
        (
            DkimConfig {
                key_pem: "not a key".to_owned(),
                ..config("rsa2048.pem", DkimAlgorithm::Rsa)
            },
            "not a PEM private key",
        ),
        (
            config("rsa2048.pkcs1.pem", DkimAlgorithm::Ed25519),
            "set algorithm = \"rsa\"",
        ),
        (
            config("rsa2048.pem", DkimAlgorithm::Ed25519),
            "not a usable Ed25519 key",
        ),
        (
            config("ed25519.pem", DkimAlgorithm::Rsa),
            "not a usable RSA key",
        ),
        (config("rsa1024.pem", DkimAlgorithm::Rsa), "2048 to 4096"),
        (
            config("ec-p256.pem", DkimAlgorithm::Ed25519),
            "not a usable Ed25519 key",
        ),
        (
            DkimConfig {
                selector: " ".to_owned(),
                ..config("rsa2048.pem", DkimAlgorithm::Rsa)
            },
            "selector is empty",
        ),
        (
            DkimConfig {
                domain: "acme.example; x=y".to_owned(),
                ..config("rsa2048.pem", DkimAlgorithm::Rsa)
            },
            "not a DNS name",
        ),
    ];
    for (cfg, want) in cases {
        let err = Dkim::new(cfg.clone()).expect_err(want);
        assert!(matches!(err, Error::Dkim { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("DKIM: "), "{text}");
        assert!(text.contains(want), "{cfg:?}: {text:?} lacks {want:?}");
        // The key never shows up in messages.
        assert!(!text.contains("MI"), "{text}");
    }
    assert!(!format!("{:?}", config("rsa2048.pem", DkimAlgorithm::Rsa)).contains("MII"));
}

#[test]
fn limits_apply_to_the_signed_message() {
    let unsigned = Templates::compile(spec())
        .unwrap()
        .render(&columns(), &ann())
        .unwrap()
        .body
        .len();
    let limits = Limits {
        max_message_bytes: Some(unsigned + 50),
        ..Limits::default()
    };
    let failure = Templates::compile(MessageSpec { limits, ..spec() })
        .unwrap()
        .with_dkim(rsa())
        .render(&columns(), &ann())
        .unwrap_err();
    assert_eq!(failure.category, Category::Preflight);
    assert!(
        failure.reply.contains("max_message_bytes"),
        "{}",
        failure.reply
    );
}

/// Runs dkimpy on a message with a DNS answer of ours. `None` when dkimpy is
/// not available outside CI.
fn dkimpy_verify(message: &[u8], dkim: &Dkim) -> Option<(bool, String)> {
    const SCRIPT: &str = r#"
import sys
try:
    import dkim
    if sys.argv[4] == "ed25519":
        import nacl  # dkimpy needs PyNaCl for ed25519-sha256
except ImportError as e:
    print("MISSING", e)
    sys.exit(3)
message = open(sys.argv[1], "rb").read()
record = open(sys.argv[2], "rb").read()
name = sys.argv[3].encode() + b"."
def dnsfunc(qname, timeout=5):
    if qname.rstrip(b".") == name.rstrip(b"."):
        return record
    print("unexpected DNS query", qname)
    return None
ok = dkim.verify(message, dnsfunc=dnsfunc)
print("VERIFIED" if ok else "FAILED")
sys.exit(0 if ok else 1)
"#;
    let dir = tempfile::tempdir().unwrap();
    let msg: PathBuf = dir.path().join("message.eml");
    let rec: PathBuf = dir.path().join("record.txt");
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&rec, dkim.dns_record()).unwrap();
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&msg)
        .arg(&rec)
        .arg(dkim.dns_name())
        .arg(dkim.algorithm().as_str())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if ci => panic!("python3 is needed under CI for the dkimpy check: {e}"),
        Err(e) => {
            eprintln!("NOTICE: skipping the dkimpy check: cannot run python3: {e}");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(3) {
        assert!(
            !ci,
            "dkimpy is needed under CI: pip install 'dkimpy[ed25519]' ({stdout})"
        );
        eprintln!(
            "NOTICE: skipping the dkimpy check ({}): pip install 'dkimpy[ed25519]'",
            stdout.trim()
        );
        return None;
    }
    Some((out.status.success(), format!("{stdout}{stderr}")))
}

#[test]
fn dkimpy_verifies_rsa_and_ed25519_signatures() {
    for (file, algorithm) in [
        ("rsa2048.pem", DkimAlgorithm::Rsa),
        ("ed25519.pem", DkimAlgorithm::Ed25519),
    ] {
        let dkim = Dkim::new(config(file, algorithm)).unwrap();
        let message = signed(Dkim::new(config(file, algorithm)).unwrap());
        let Some((ok, output)) = dkimpy_verify(&message, &dkim) else {
            return;
        };
        assert!(
            ok,
            "dkimpy refused the {:?} signature: {output}\n{}",
            dkim.algorithm(),
            String::from_utf8_lossy(&message)
        );

        // And it notices a change to the body: the test can fail.
        let text = String::from_utf8(message).unwrap();
        let tampered = text.replacen("Hi Ann", "Hi Bob", 1);
        assert_ne!(tampered, text);
        let (ok, output) = dkimpy_verify(tampered.as_bytes(), &dkim).unwrap();
        assert!(!ok, "dkimpy accepted a tampered subject: {output}");
    }
}

/// `[campaign] feedback_id`: the `Feedback-ID` header is in the message and
/// in the signature's h= (Gmail's Feedback Loop counts only signed ones);
/// a changed Feedback-ID fails verification.
#[test]
fn feedback_id_is_added_and_signed() {
    let render = |dkim: Dkim, id: Option<&str>| {
        Templates::compile(spec())
            .unwrap()
            .with_feedback_id(id.map(str::to_string))
            .with_dkim(dkim)
            .render(&columns(), &ann())
            .expect("renders")
            .body
    };
    let message = render(rsa(), Some("nov-news:acme:newsletter:edm"));
    let text = String::from_utf8_lossy(&message).into_owned();
    assert!(
        text.contains("\r\nFeedback-ID: nov-news:acme:newsletter:edm\r\n"),
        "{text}"
    );
    let h = tag(&signature_tags(&message), "h").to_ascii_lowercase();
    assert!(h.split(':').any(|x| x == "feedback-id"), "h={h}");
    // Without the setting there is no such header (h= may still name it:
    // signing an absent header keeps anyone from adding it, RFC 6376 §5.4).
    let plain = render(rsa(), None);
    assert!(!String::from_utf8_lossy(&plain).contains("\r\nFeedback-ID:"));
    let dkim = rsa();
    if let Some((ok, output)) = dkimpy_verify(&message, &dkim) {
        assert!(ok, "dkimpy refused: {output}");
        let tampered = text.replacen("acme:newsletter", "acme:promo", 1);
        let (ok, output) = dkimpy_verify(tampered.as_bytes(), &dkim).unwrap();
        assert!(!ok, "dkimpy accepted a changed Feedback-ID: {output}");
    }
}
