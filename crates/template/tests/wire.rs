//! What a rendered message may hold on the wire (issue 9, points 2 and 4).
//!
//! - `idn`: internationalised domains as A-labels in the envelope and every
//!   header; non-ASCII display names RFC 2047-encoded; only a non-ASCII local
//!   part stays UTF-8 (it needs SMTPUTF8, RFC 6531/6532).
//! - `line_breaks`: no bare CR or LF from a field, whatever it holds.
//! - `properties`: arbitrary field values (CR, LF, NUL, long lines,
//!   non-ASCII): no panic, CRLF only, the message parses.

use edm_model::{Envelope, Recipient, RecipientId};
use edm_template::{Limits, MessageSpec, Source, Templates};
use mail_parser::MessageParser;

fn columns() -> Vec<String> {
    ["email", "name", "note"].map(String::from).to_vec()
}

fn recipient(email: &str, name: &str, note: &str) -> Recipient {
    Recipient {
        id: RecipientId(1),
        line: 2,
        email: email.to_owned(),
        values: vec![email.to_owned(), name.to_owned(), note.to_owned()],
        attempts: 0,
        first_attempt_at: None,
    }
}

fn source(name: &str, body: &str) -> Source {
    Source {
        name: name.to_owned(),
        body: body.to_owned(),
    }
}

fn spec() -> MessageSpec {
    MessageSpec {
        campaign: "wire".to_owned(),
        from: "Jörg Müller <news@bücher.example>".to_owned(),
        reply_to: Some("Élodie <help@exämple.example>".to_owned()),
        subject: "Hallo {{name}}: {{note}}".to_owned(),
        html: Some(source(
            "b.html",
            "<p>Hi {{name}}</p>\n<p>{{note}}</p>\n<p>END</p>\n",
        )),
        text: Some(source("b.txt", "Hi {{name}}\n{{note}}\nEND\n")),
        list_unsubscribe: Some("https://acme.example/u/{{email}}".to_owned()),
        limits: Limits::default(),
    }
}

fn render(email: &str, name: &str, note: &str) -> Envelope {
    Templates::compile(spec())
        .unwrap()
        .render(&columns(), &recipient(email, name, note))
        .unwrap()
}

/// The header section, up to the first empty line.
fn headers(body: &[u8]) -> &str {
    let text = std::str::from_utf8(body).expect("UTF-8");
    text.split("\r\n\r\n").next().unwrap()
}

fn bare_line_break(body: &[u8]) -> Option<usize> {
    body.iter().enumerate().find_map(|(i, &b)| match b {
        b'\n' if i == 0 || body[i - 1] != b'\r' => Some(i),
        b'\r' if body.get(i + 1) != Some(&b'\n') => Some(i),
        _ => None,
    })
}

mod idn {
    use super::*;

    #[test]
    fn idn_domains_are_a_labels_in_the_envelope_and_every_header() {
        let env = render("ann@bücher.example", "Zoë", "ok");
        assert_eq!(env.rcpt_to, "ann@xn--bcher-kva.example");
        assert_eq!(env.mail_from, "news@xn--bcher-kva.example");
        assert_eq!(env.domain, "xn--bcher-kva.example");
        let h = headers(&env.body);
        assert!(h.is_ascii(), "8-bit header without SMTPUTF8:\n{h}");
        assert!(h.contains("To: <ann@xn--bcher-kva.example>"), "{h}");
        assert!(h.contains("<news@xn--bcher-kva.example>"), "{h}");
        assert!(h.contains("<help@xn--exmple-cua.example>"), "{h}");
        assert!(h.contains("@xn--bcher-kva.example>\r\n"), "Message-ID: {h}");
        // Display names are encoded words (RFC 2047), decoded by a reader.
        assert!(h.contains("From: =?utf-8?"), "{h}");
        let msg = MessageParser::default().parse(&env.body).unwrap();
        let from = msg.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Jörg Müller"));
        assert_eq!(from.address(), Some("news@xn--bcher-kva.example"));
        assert_eq!(msg.subject(), Some("Hallo Zoë: ok"));
    }

    #[test]
    fn the_a_label_spelling_renders_the_same_envelope() {
        let a = render("ann@bücher.example", "A", "x");
        let b = render("ann@xn--bcher-kva.example", "A", "x");
        assert_eq!(a.rcpt_to, b.rcpt_to);
        assert_eq!(a.domain, b.domain);
    }

    #[test]
    fn only_a_non_ascii_local_part_stays_utf8() {
        let env = render("josé@bücher.example", "José", "ok");
        assert_eq!(env.rcpt_to, "josé@xn--bcher-kva.example");
        let h = headers(&env.body);
        let non_ascii: Vec<&str> = h.lines().filter(|l| !l.is_ascii()).collect();
        assert_eq!(non_ascii, ["To: <josé@xn--bcher-kva.example>"]);
        // The unsubscribe URL carried the address: percent-encoded.
        assert!(
            h.contains("<https://acme.example/u/jos%C3%A9@b%C3%BCcher.example>"),
            "{h}"
        );
    }

    #[test]
    fn a_domain_without_a_labels_is_an_invalid_address() {
        let t = Templates::compile(spec()).unwrap();
        let f = t
            .render(&columns(), &recipient("ann@bü_cher.example", "A", "x"))
            .unwrap_err();
        assert_eq!(f.category, edm_model::Category::InvalidAddress);
        assert!(f.reply.contains("internationalised domain"), "{}", f.reply);
    }
}

mod line_breaks {
    use super::*;

    #[test]
    fn fields_holding_smuggling_sequences_come_out_crlf() {
        for note in [
            "a\r.\rb",
            "a\n.\nb",
            "a\r\n.\r\nb",
            "a\r\n.\rb",
            "a\n.\r\nb",
            "\r.\r\n.\n",
            "ü\r.\r",
        ] {
            let env = render("ann@example.com", "Ann", note);
            assert_eq!(bare_line_break(&env.body), None, "{note:?}");
            let msg = MessageParser::default().parse(&env.body).unwrap();
            let text = msg.body_text(0).unwrap();
            assert!(text.trim_end().ends_with("END"), "{note:?}: {text:?}");
        }
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Field values made of the pieces that break things: line breaks of
    /// every kind, dots at line starts, NUL, long runs, non-ASCII.
    fn field() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just(".".to_owned()),
            Just("\0".to_owned()),
            Just("=?utf-8?q?x?=".to_owned()),
            Just("x".repeat(1200)),
            Just("é".to_owned()),
            Just("用户".to_owned()),
            Just("<>&\"".to_owned()),
            "[a-z ]{0,8}",
            any::<String>(),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_field_values_render_to_a_message_that_parses(name in field(), note in field()) {
            let t = Templates::compile(spec()).unwrap();
            let env = t
                .render(&columns(), &recipient("ann@bücher.example", &name, &note))
                .expect("renders");
            prop_assert_eq!(bare_line_break(&env.body), None);
            let h = headers(&env.body);
            prop_assert!(h.is_ascii(), "8-bit header: {}", h);
            let msg = MessageParser::default().parse(&env.body).expect("parses");
            prop_assert!(msg.subject().is_some());
            let text = msg.body_text(0).expect("a text part");
            prop_assert!(text.trim_end().ends_with("END"), "{:?}", text);
            prop_assert!(msg.body_html(0).is_some());
        }
    }
}
