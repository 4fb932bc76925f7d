//! Rendering real messages and parsing them back with mail-parser.
//!
//! - `bodies`: text only, HTML only, both; escaping.
//! - `headers`: From/To/Subject/Date/MIME-Version, Message-ID, List-Unsubscribe,
//!   header injection.
//! - `failures`: missing fields, preflight limits, unsafe addresses.
//! - `compile`: template and sender errors.
//! - `bench`: an ignored throughput run.

use edm_model::{Category, Envelope, Failure, Recipient, RecipientId, Stage};
use edm_template::{Error, Limits, MessageSpec, Source, TemplateName, Templates};
use mail_parser::{Message, MessageParser};

fn columns() -> Vec<String> {
    ["email", "first_name", "note"].map(String::from).to_vec()
}

fn recipient(line: u64, email: &str, first_name: &str, note: &str) -> Recipient {
    Recipient {
        id: RecipientId(line as i64),
        line,
        email: email.to_owned(),
        values: vec![email.to_owned(), first_name.to_owned(), note.to_owned()],
        attempts: 0,
        first_attempt_at: None,
    }
}

fn ann() -> Recipient {
    recipient(2, "ann@example.com", "Ann", "Tom & Jerry <3")
}

fn source(name: &str, body: &str) -> Source {
    Source {
        name: name.to_owned(),
        body: body.to_owned(),
    }
}

fn spec() -> MessageSpec {
    MessageSpec {
        campaign: "Spring Sale".to_owned(),
        from: "Acme News <news@acme.example>".to_owned(),
        reply_to: None,
        subject: "Hello {{first_name}}".to_owned(),
        html: None,
        text: None,
        list_unsubscribe: None,
        limits: Limits::default(),
    }
}

fn text_spec() -> MessageSpec {
    MessageSpec {
        text: Some(source("body.txt", "Hi {{first_name}},\nnote: {{note}}\n")),
        ..spec()
    }
}

fn render(spec: MessageSpec, r: &Recipient) -> Result<Envelope, Failure> {
    Templates::compile(spec).unwrap().render(&columns(), r)
}

fn parse(envelope: &Envelope) -> Message<'_> {
    MessageParser::default()
        .parse(&envelope.body)
        .expect("parses")
}

/// Every line ends in CRLF: no bare LF or CR anywhere.
fn assert_crlf(body: &[u8]) {
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && body[i - 1] == b'\r', "bare LF at byte {i}");
        }
        if b == b'\r' {
            assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR at byte {i}");
        }
    }
}

mod bodies {
    use super::*;

    #[test]
    fn text_only() {
        let env = render(text_spec(), &ann()).unwrap();
        assert_crlf(&env.body);
        let msg = parse(&env);
        let ctype = msg.header_raw("Content-Type").unwrap();
        assert!(ctype.contains("text/plain"), "{ctype}");
        assert_eq!(msg.text_body_count(), 1);
        assert_eq!(
            msg.body_text(0).unwrap().replace("\r\n", "\n"),
            "Hi Ann,\nnote: Tom & Jerry <3\n"
        );
        assert_eq!(env.rcpt_to, "ann@example.com");
        assert_eq!(env.mail_from, "news@acme.example");
        assert_eq!(env.domain, "example.com");
        assert_eq!(env.id, RecipientId(2));
    }

    #[test]
    fn html_only_is_escaped() {
        let spec = MessageSpec {
            html: Some(source("body.html", "<p>Hi {{first_name}}: {{note}}</p>\n")),
            ..spec()
        };
        let env = render(spec, &ann()).unwrap();
        assert_crlf(&env.body);
        let msg = parse(&env);
        assert!(
            msg.header_raw("Content-Type")
                .unwrap()
                .contains("text/html")
        );
        assert_eq!(msg.html_body_count(), 1);
        let html = msg.body_html(0).unwrap();
        assert_eq!(html.trim_end(), "<p>Hi Ann: Tom &amp; Jerry &lt;3</p>");
    }

    #[test]
    fn both_make_multipart_alternative() {
        let spec = MessageSpec {
            html: Some(source("body.html", "<p>Hi {{first_name}}: {{note}}</p>")),
            ..text_spec()
        };
        let env = render(spec, &ann()).unwrap();
        assert_crlf(&env.body);
        let msg = parse(&env);
        let ctype = msg.header_raw("Content-Type").unwrap();
        assert!(ctype.contains("multipart/alternative"), "{ctype}");
        let boundary = ctype
            .split("boundary=")
            .nth(1)
            .unwrap()
            .trim()
            .trim_matches('"');
        let raw = String::from_utf8_lossy(&env.body);
        assert!(raw.contains(&format!("\r\n--{boundary}\r\n")));
        assert!(raw.contains(&format!("\r\n--{boundary}--\r\n")));
        // Text escapes nothing, HTML escapes the same value.
        let text = msg.body_text(0).unwrap().replace("\r\n", "\n");
        assert_eq!(text, "Hi Ann,\nnote: Tom & Jerry <3\n");
        assert_eq!(
            msg.body_html(0).unwrap(),
            "<p>Hi Ann: Tom &amp; Jerry &lt;3</p>"
        );
    }

    #[test]
    fn raw_html_and_unicode() {
        let spec = MessageSpec {
            subject: "Grüße, {{first_name}} ✨".to_owned(),
            html: Some(source("b.html", "<b>{{{note}}}</b> {{first_name}}")),
            ..spec()
        };
        let r = recipient(9, "zoë@bücher.de", "Zoë", "<i>ok</i>");
        let env = render(spec, &r).unwrap();
        // Everything is encoded except the local part: the domain goes out as
        // A-labels, the local part as UTF-8 (RFC 6532), which needs SMTPUTF8 at
        // the relay.
        let raw = String::from_utf8(env.body.clone()).unwrap();
        let non_ascii: Vec<&str> = raw.lines().filter(|l| !l.is_ascii()).collect();
        assert_eq!(non_ascii, ["To: <zoë@xn--bcher-kva.de>"]);
        let msg = parse(&env);
        assert_eq!(msg.subject(), Some("Grüße, Zoë ✨"));
        assert_eq!(msg.body_html(0).unwrap(), "<b><i>ok</i></b> Zoë");
        assert_eq!(env.domain, "xn--bcher-kva.de");
    }

    #[test]
    fn long_body_lines_are_encoded() {
        let long = "word ".repeat(400);
        let r = recipient(3, "ann@example.com", "Ann", &long);
        let env = render(text_spec(), &r).unwrap();
        let msg = parse(&env);
        assert!(msg.body_text(0).unwrap().contains(long.trim_end()));
        let longest = env.body.split(|&b| b == b'\n').map(<[u8]>::len).max();
        assert!(longest.unwrap() <= 80, "{longest:?}");
    }
}

mod headers {
    use super::*;

    #[test]
    fn standard_headers() {
        let spec = MessageSpec {
            reply_to: Some("support@acme.example".to_owned()),
            ..text_spec()
        };
        let env = render(spec, &ann()).unwrap();
        let msg = parse(&env);
        let from = msg.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Acme News"));
        assert_eq!(from.address(), Some("news@acme.example"));
        let to = msg.to().unwrap().first().unwrap();
        assert_eq!(to.address(), Some("ann@example.com"));
        assert_eq!(msg.subject(), Some("Hello Ann"));
        assert!(msg.date().is_some());
        assert_eq!(msg.header_raw("MIME-Version").map(str::trim), Some("1.0"));
        let reply_to = msg.header_raw("Reply-To").unwrap();
        assert!(reply_to.contains("support@acme.example"), "{reply_to}");
    }

    #[test]
    fn message_id_is_deterministic() {
        let templates = Templates::compile(text_spec()).unwrap();
        let a1 = templates.render(&columns(), &ann()).unwrap();
        let a2 = templates.render(&columns(), &ann()).unwrap();
        let upper = recipient(2, "ANN@Example.com", "Ann", "");
        let a3 = templates.render(&columns(), &upper).unwrap();
        let b = templates
            .render(&columns(), &recipient(3, "bob@example.com", "Bob", ""))
            .unwrap();
        assert_eq!(a1.message_id, a2.message_id);
        assert_eq!(a1.message_id, a3.message_id);
        assert_ne!(a1.message_id, b.message_id);
        assert!(a1.message_id.ends_with(".spring-sale@acme.example"));
        assert!(!a1.message_id.contains(['<', '>']));
        assert_eq!(parse(&a1).message_id(), Some(a1.message_id.as_str()));
        // Another campaign, another id.
        let other = Templates::compile(MessageSpec {
            campaign: "Autumn".to_owned(),
            ..text_spec()
        })
        .unwrap();
        let c = other.render(&columns(), &ann()).unwrap();
        assert_ne!(a1.message_id, c.message_id);
    }

    #[test]
    fn test_copy_goes_to_another_address_with_a_prefix_and_its_own_id() {
        let templates = Templates::compile(text_spec()).unwrap();
        let real = templates.render(&columns(), &ann()).unwrap();
        let test = templates
            .render_to(&columns(), &ann(), "qa@acme.example", "[TEST] ")
            .unwrap();
        let again = templates
            .render_to(&columns(), &ann(), "qa@acme.example", "[TEST] ")
            .unwrap();
        assert_eq!(test.envelope.rcpt_to, "qa@acme.example");
        assert_eq!(test.envelope.domain, "acme.example");
        assert_eq!(test.subject, "[TEST] Hello Ann");
        let msg = parse(&test.envelope);
        let to = msg.to().unwrap().first().unwrap();
        assert_eq!(to.address(), Some("qa@acme.example"));
        assert_eq!(msg.subject(), Some("[TEST] Hello Ann"));
        // The body is still the recipient's.
        assert!(msg.body_text(0).unwrap().contains("Hi Ann"));
        // Deterministic, and never the real message's id.
        assert_eq!(test.envelope.message_id, again.envelope.message_id);
        assert_ne!(test.envelope.message_id, real.message_id);
        assert!(
            test.envelope
                .message_id
                .ends_with(".spring-sale.test@acme.example"),
            "{}",
            test.envelope.message_id
        );
        assert_eq!(msg.message_id(), Some(test.envelope.message_id.as_str()));
        // No prefix when asked; a bad test address is refused.
        let plain = templates
            .render_to(&columns(), &ann(), "qa@acme.example", "")
            .unwrap();
        assert_eq!(plain.subject, "Hello Ann");
        let bad = templates
            .render_to(
                &columns(),
                &ann(),
                "qa@acme.example\r\nBcc: x@evil.example",
                "",
            )
            .unwrap_err();
        assert_eq!(bad.category, Category::InvalidAddress);
    }

    #[test]
    fn list_unsubscribe_https_gets_one_click() {
        let spec = MessageSpec {
            list_unsubscribe: Some("https://acme.example/u?e={{email}}&c=1".to_owned()),
            ..text_spec()
        };
        let env = render(spec, &ann()).unwrap();
        let msg = parse(&env);
        assert_eq!(
            msg.header_raw("List-Unsubscribe").map(str::trim),
            Some("<https://acme.example/u?e=ann@example.com&c=1>")
        );
        assert_eq!(
            msg.header_raw("List-Unsubscribe-Post").map(str::trim),
            Some("List-Unsubscribe=One-Click")
        );
    }

    #[test]
    fn list_unsubscribe_mailto_has_no_one_click() {
        let spec = MessageSpec {
            list_unsubscribe: Some("mailto:unsub@acme.example?subject={{first_name}}".to_owned()),
            ..text_spec()
        };
        let env = render(spec, &ann()).unwrap();
        let msg = parse(&env);
        assert_eq!(
            msg.header_raw("List-Unsubscribe").map(str::trim),
            Some("<mailto:unsub@acme.example?subject=Ann>")
        );
        assert!(msg.header_raw("List-Unsubscribe-Post").is_none());
    }

    #[test]
    fn no_list_unsubscribe_unless_asked() {
        let env = render(text_spec(), &ann()).unwrap();
        assert!(parse(&env).header_raw("List-Unsubscribe").is_none());
    }

    #[test]
    fn header_injection_through_the_subject_fails() {
        let spec = MessageSpec {
            subject: "Hi {{first_name}}".to_owned(),
            ..text_spec()
        };
        for name in [
            "Bob\r\nBcc: x@evil.example",
            "Bob\nBcc: x@evil.example",
            "Bob\rBcc: x@evil.example",
            "Bob\r\n\r\nBcc: x@evil.example",
        ] {
            let r = recipient(5, "bob@example.com", name, "");
            let env = render(spec.clone(), &r).unwrap();
            assert_crlf(&env.body);
            let msg = parse(&env);
            let names: Vec<&str> = msg.headers().iter().map(|h| h.name()).collect();
            assert!(
                !names.iter().any(|n| n.eq_ignore_ascii_case("bcc")),
                "{name:?}: {names:?}"
            );
            assert_eq!(
                names
                    .iter()
                    .filter(|n| n.eq_ignore_ascii_case("subject"))
                    .count(),
                1
            );
            let subject = msg.subject().unwrap();
            assert!(subject.contains("Bob"), "{subject:?}");
            assert!(subject.contains("Bcc: x@evil.example"), "{subject:?}");
            // And on the wire: no header line starts a Bcc header (the text
            // body, which is not headers, may say what it likes).
            let raw = String::from_utf8_lossy(&env.body);
            let (head, _) = raw.split_once("\r\n\r\n").unwrap();
            assert!(
                !head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
                "{head}"
            );
        }
    }

    #[test]
    fn header_injection_through_the_unsubscribe_url_fails() {
        let spec = MessageSpec {
            list_unsubscribe: Some("https://acme.example/u/{{note}}".to_owned()),
            ..text_spec()
        };
        let r = recipient(6, "bob@example.com", "Bob", "x>\r\nBcc: x@evil.example");
        let failure = render(spec, &r).unwrap_err();
        assert_eq!(failure.category, Category::Template);
        assert!(
            failure.reply.starts_with("line 6: list_unsubscribe URL"),
            "{}",
            failure.reply
        );
    }

    #[test]
    fn recipient_address_with_a_line_break_is_refused() {
        let r = recipient(7, "bob@example.com\r\nBcc: x@evil.example", "Bob", "");
        let failure = render(text_spec(), &r).unwrap_err();
        assert_eq!(failure.stage, Stage::Render);
        assert_eq!(failure.category, Category::InvalidAddress);
        assert!(failure.permanent);
        assert!(
            failure
                .reply
                .starts_with("line 7: address contains a line break"),
            "{}",
            failure.reply
        );
    }
}

mod failures {
    use super::*;

    #[test]
    fn missing_field_names_field_template_and_line() {
        let spec = MessageSpec {
            subject: "Hi {{first_name}} {{last_name}}".to_owned(),
            ..text_spec()
        };
        let r = recipient(12, "ann@example.com", "Ann", "");
        let failure = render(spec, &r).unwrap_err();
        assert_eq!(failure.stage, Stage::Render);
        assert_eq!(failure.category, Category::Template);
        assert!(failure.permanent);
        assert!(
            failure
                .reply
                .starts_with("line 12: missing field `last_name` in subject"),
            "{}",
            failure.reply
        );

        let spec = MessageSpec {
            text: Some(source("mail/body.txt", "Hi\n\n  {{city}}\n")),
            ..spec_with_subject("x")
        };
        let failure = render(spec, &r).unwrap_err();
        assert!(
            failure
                .reply
                .starts_with("line 12: missing field `city` in mail/body.txt"),
            "{}",
            failure.reply
        );
        assert!(
            failure.reply.contains("template line 3"),
            "{}",
            failure.reply
        );
    }

    fn spec_with_subject(subject: &str) -> MessageSpec {
        MessageSpec {
            subject: subject.to_owned(),
            ..spec()
        }
    }

    #[test]
    fn a_short_row_is_a_missing_field_not_a_panic() {
        let r = Recipient {
            values: vec!["ann@example.com".to_owned()],
            ..ann()
        };
        let failure = render(text_spec(), &r).unwrap_err();
        assert!(
            failure.reply.contains("missing field `first_name`"),
            "{}",
            failure.reply
        );
    }

    /// A rendering thread reuses its last recipient's context (issue 11):
    /// nothing of one recipient may show in the next one's message, a short
    /// row after a full one is still a missing field, and other columns
    /// (another list) get their own keys.
    #[test]
    fn one_thread_renders_each_recipient_with_only_its_own_values() {
        let templates = Templates::compile(text_spec()).unwrap();
        let text = |e: &Envelope| parse(e).body_text(0).unwrap().into_owned();
        let first = templates.render(&columns(), &ann()).unwrap();
        assert!(text(&first).contains("Hi Ann,"), "{}", text(&first));
        let bob = recipient(3, "bob@example.com", "Bob", "");
        let second = templates.render(&columns(), &bob).unwrap();
        assert_eq!(text(&second), "Hi Bob,\r\nnote: \r\n");
        assert_eq!(second.rcpt_to, "bob@example.com");
        let short = Recipient {
            values: vec!["cy@example.com".to_owned()],
            ..recipient(4, "cy@example.com", "", "")
        };
        let failure = templates.render(&columns(), &short).unwrap_err();
        assert!(
            failure.reply.contains("missing field `first_name`"),
            "{}",
            failure.reply
        );
        let other = ["email", "first_name", "note", "city"].map(String::from);
        let mut dee = recipient(5, "dee@example.com", "Dee", "x");
        dee.values.push("Oslo".to_owned());
        let third = templates.render(&other, &dee).unwrap();
        assert_eq!(text(&third), "Hi Dee,\r\nnote: x\r\n");
        // Back to the first list: the extra key of the other is gone.
        let city = Templates::compile(MessageSpec {
            subject: "{{city}}".to_owned(),
            ..text_spec()
        })
        .unwrap();
        assert!(city.render(&other, &dee).is_ok());
        assert!(
            city.render(&columns(), &ann()).is_err(),
            "a stale `city` was seen"
        );
    }

    #[test]
    fn size_limit() {
        let spec = MessageSpec {
            limits: Limits {
                max_message_bytes: Some(600),
                ..Limits::default()
            },
            ..text_spec()
        };
        let templates = Templates::compile(spec).unwrap();
        templates.render(&columns(), &ann()).unwrap();
        let big = recipient(4, "ann@example.com", "Ann", &"x".repeat(1000));
        let failure = templates.render(&columns(), &big).unwrap_err();
        assert_eq!(failure.category, Category::Preflight);
        assert_eq!(failure.stage, Stage::Render);
        assert!(
            failure.reply.starts_with("line 4: message is "),
            "{}",
            failure.reply
        );
        assert!(
            failure.reply.contains("max_message_bytes limit of 600"),
            "{}",
            failure.reply
        );
    }

    #[test]
    fn line_length_limit() {
        // A long URL cannot be folded: it is one line of the header.
        let spec = MessageSpec {
            list_unsubscribe: Some("https://acme.example/u/{{note}}".to_owned()),
            limits: Limits {
                max_message_bytes: None,
                max_line_len: 200,
            },
            ..text_spec()
        };
        let r = recipient(8, "ann@example.com", "Ann", &"a".repeat(300));
        let failure = render(spec, &r).unwrap_err();
        assert_eq!(failure.category, Category::Preflight);
        assert!(
            failure.reply.contains("over the max_line_len limit of 200"),
            "{}",
            failure.reply
        );
    }
}

mod compile {
    use super::*;

    fn compile_err(spec: MessageSpec) -> Error {
        Templates::compile(spec).expect_err("compile error")
    }

    #[test]
    fn unclosed_block_names_file_line_and_column() {
        let spec = MessageSpec {
            html: Some(source("body.html", "<p>\n{{#if x}}\nhello\n")),
            ..spec()
        };
        let err = compile_err(spec);
        let Error::Template {
            template,
            line,
            column,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*template, TemplateName::File("body.html".into()));
        assert_eq!((*line, *column), (Some(4), Some(1)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("body.html:4:1: "), "{text}");
        assert!(text.contains("not closed"), "{text}");
        // Without a final newline, and in the subject.
        let err = compile_err(MessageSpec {
            subject: "Hi {{#each xs}}{{this}}".to_owned(),
            ..text_spec()
        });
        let text = err.to_string();
        assert!(text.starts_with("subject:1:"), "{text}");
        assert!(text.contains("not closed"), "{text}");
    }

    #[test]
    fn broken_subject_and_text() {
        let err = compile_err(MessageSpec {
            subject: "Hi {{first_name".to_owned(),
            ..text_spec()
        });
        assert!(err.to_string().starts_with("subject:1:"), "{err}");
        let err = compile_err(MessageSpec {
            text: Some(source("t.txt", "ok\n{{/if}}")),
            ..spec()
        });
        assert!(err.to_string().starts_with("t.txt:2:"), "{err}");
    }

    #[test]
    fn a_body_is_required() {
        assert!(matches!(compile_err(spec()), Error::NoBody));
    }

    #[test]
    fn bad_from_and_reply_to() {
        for from in [
            "",
            "Acme",
            "Acme <news@localhost>",
            "Acme\r\nBcc: x <n@acme.example>",
        ] {
            let err = compile_err(MessageSpec {
                from: from.to_owned(),
                ..text_spec()
            });
            assert!(matches!(err, Error::From { .. }), "{from:?}: {err:?}");
        }
        let err = compile_err(MessageSpec {
            reply_to: Some("nope".to_owned()),
            ..text_spec()
        });
        assert!(matches!(err, Error::ReplyTo { .. }), "{err:?}");
    }

    #[test]
    fn mail_from_is_the_bare_address() {
        let t = Templates::compile(text_spec()).unwrap();
        assert_eq!(t.mail_from(), "news@acme.example");
    }
}

mod bench {
    use super::*;
    use std::time::Instant;

    /// `cargo test -p edm-template --release --test render -- --ignored --nocapture`
    #[test]
    #[ignore = "throughput run; prints the rate"]
    fn render_rate() {
        let paragraph = "Lorem ipsum dolor sit amet, {{first_name}}, consectetur adipiscing \
                         elit, sed do eiusmod tempor incididunt ut labore et dolore magna.\n";
        let text = paragraph.repeat(12);
        let html = format!(
            "<html><body>{}</body></html>",
            format!("<p>{paragraph}</p>").repeat(12)
        );
        let spec = MessageSpec {
            html: Some(source("body.html", &html)),
            text: Some(source("body.txt", &text)),
            list_unsubscribe: Some("https://acme.example/u?e={{email}}".to_owned()),
            ..text_spec()
        };
        let templates = Templates::compile(spec).unwrap();
        let cols = columns();
        let recipients: Vec<Recipient> = (0..1000)
            .map(|i| recipient(i + 2, &format!("user{i}@example.com"), "Ann", "note"))
            .collect();
        let n = 100_000;
        let start = Instant::now();
        let mut bytes = 0;
        for i in 0..n {
            let env = templates
                .render(&cols, &recipients[i % recipients.len()])
                .unwrap();
            bytes += env.body.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "rendered {n} messages of ~{} bytes in {secs:.2}s: {:.0} msg/s on one thread",
            bytes / n,
            n as f64 / secs
        );
    }
}
