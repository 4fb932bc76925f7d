//! The parser never panics: random bytes, every corpus message cut short at
//! many points, and corpus messages with bytes flipped.

use std::path::Path;

use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/bounces/corpus");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    v.sort();
    v.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_truncation_of_the_corpus_parses() {
    for raw in corpus() {
        // Every byte for short messages; a few hundred cuts for long ones,
        // including every cut near the start (headers) and the end.
        let step = (raw.len() / 400).max(1);
        let cuts = (0..raw.len()).step_by(step).chain(0..raw.len().min(300));
        for cut in cuts {
            let _ = edm_bounce::parse(&raw[..cut]);
        }
    }
}

#[test]
fn edge_inputs_parse() {
    for raw in [
        &b""[..],
        b"\n",
        b"\r\n\r\n",
        b":",
        b"Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: message/delivery-status\n\n",
        b"Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822;\nAction:\nStatus: 5.\n",
        b"Subject: \xff\xfe\n\n<\xc3@\xa9>: 5.5.5.5.5 550 550",
        b"From: MAILER-DAEMON\nSubject: undeliverable\n\n<a@b.c>:",
        b"From: MAILER-DAEMON\nSubject: undeliverable\n\nMessage-ID:",
        b"From: MAILER-DAEMON\nSubject: undeliverable\n\nDelivery has failed to these recipients or groups:",
        b"From: MAILER-DAEMON\nSubject: undeliverable\n\nThe following address(es) failed:\n  \xc3\xa9@\xc3\xa9.fr\n    x",
    ] {
        let _ = edm_bounce::parse(raw);
    }
}

/// Deep MIME nesting (multipart in multipart, message in message) and a
/// large notice: no stack overflow, no quadratic blow-up worth a timeout.
#[test]
fn deep_and_large_inputs_parse() {
    let mut deep = String::new();
    for i in 0..3000 {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n"
        ));
    }
    deep.push_str("Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b.example\nAction: failed\n");
    let _ = edm_bounce::parse(deep.as_bytes());

    let mut nested = String::new();
    for _ in 0..3000 {
        nested.push_str("Content-Type: message/rfc822\n\n");
    }
    nested.push_str("Subject: x\n\nbody\n");
    let _ = edm_bounce::parse(nested.as_bytes());

    let mut big = String::from(
        "From: MAILER-DAEMON@x.example\nSubject: Returned mail\n\n----- The following addresses had permanent fatal errors -----\n",
    );
    for i in 0..20_000 {
        big.push_str(&format!("<u{i}@example.com>\n"));
    }
    big.push_str("\n   ----- Transcript of session follows -----\n");
    for i in 0..20_000 {
        big.push_str(&format!("... <u{i}@example.com>... deferred\n"));
    }
    let v = edm_bounce::parse(big.as_bytes());
    assert_eq!(v.verdict, edm_bounce::VerdictKind::Bounce);
    assert!(!v.recipients.is_empty() && v.recipients.len() <= 1000);

    // Many addresses in To, many `<addr>:` paragraphs, many ARF recipients.
    let mut many = String::from("From: MAILER-DAEMON@x.example\nSubject: failure notice\nTo: ");
    for i in 0..20_000 {
        many.push_str(&format!("t{i}@example.com, "));
    }
    many.push_str("\n\nHi. This is the qmail-send program at x.example.\n\n");
    for i in 0..20_000 {
        many.push_str(&format!("<p{i}@example.com>:\n550 no such user\n\n"));
    }
    let v = edm_bounce::parse(many.as_bytes());
    assert_eq!(v.verdict, edm_bounce::VerdictKind::Bounce);
    assert!(v.recipients.len() <= 1000 && v.delivered_to.len() <= 1000);

    let mut arf = String::from(
        "Content-Type: multipart/report; report-type=feedback-report; boundary=\"a\"\n\n--a\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n",
    );
    for i in 0..20_000 {
        arf.push_str(&format!("Original-Rcpt-To: r{i}@example.com\n"));
    }
    arf.push_str("\n--a--\n");
    let v = edm_bounce::parse(arf.as_bytes());
    assert_eq!(v.verdict, edm_bounce::VerdictKind::Complaint);
    assert!(v.recipients.len() <= 1000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_parse(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = edm_bounce::parse(&raw);
    }

    #[test]
    fn mutated_corpus_messages_parse(
        which in 0usize..1000,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..32),
    ) {
        let all = corpus();
        let mut raw = all[which % all.len()].clone();
        for (at, byte) in flips {
            if !raw.is_empty() {
                let i = at % raw.len();
                raw[i] = byte;
            }
        }
        let _ = edm_bounce::parse(&raw);
    }
}
