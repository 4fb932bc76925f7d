//! The direct renderer (`src/direct.rs`) against handlebars (issue 11).
//!
//! Templates are generated from a grammar: raw text with `{`, `}`, `\`,
//! line breaks and HTML characters; `{{x}}`, `{{{x}}}`, whitespace control
//! `{{~x~}}`, comments `{{!…}}` and `{{!-- … --}}`, escaped `\{{x}}`; and
//! what must fall back to handlebars: names that are helpers (`if`, `log`,
//! `len`, `lookup`...), dotted paths, `this`, `@index`, `../x`, `[x]`,
//! blocks, helper calls with params. Rows have values with `<>&"'`=`,
//! non-ASCII, CR/LF, empty ones, and may be shorter than the header
//! (a missing field), with names missing from the header too. Each
//! template is rendered as the subject, the text body, the HTML body and
//! the List-Unsubscribe URL, once with the direct renderer and once with
//! handlebars only, and the results must be the same: the parts, the whole
//! message (its Date line masked), and the errors, field, template, line
//! and column included.

use edm_model::{Recipient, RecipientId};
use edm_template::{Limits, MessageSpec, Source, Templates};
use proptest::prelude::*;

/// One piece of template source, and whether it is in the subset the
/// direct renderer must take (not fall back on).
fn piece() -> impl Strategy<Value = (String, bool)> {
    let name = prop_oneof![
        Just("first"),
        Just("email"),
        Just("plan"),
        Just("dup"),
        Just("nope"),
        Just("x_1"),
    ];
    let helper = prop_oneof![
        Just("if"),
        Just("each"),
        Just("with"),
        Just("log"),
        Just("len"),
        Just("lookup"),
        Just("not"),
        Just("raw"),
        Just("eq"),
    ];
    prop_oneof![
        // Raw text, edge characters included (they may combine with the
        // next tag into something else: that is what is tested).
        4 => "[a-z <>&\"'`=é\\r\\n]{0,12}".prop_map(|s| (s, true)),
        1 => "[a-z{}\\\\ \\r\\n]{0,6}".prop_map(|s| (s, false)),
        // Whole lines around mail-builder's 77-byte limit, so that the body
        // must be encoded (and is, by the quoted-printable shortcut), or
        // not; and non-ASCII lines (base64 may then be shorter).
        2 => "\\n[a-z =.]{70,82}\\r?\\n".prop_map(|s| (s, true)),
        2 => "\\n[a-z]{73,78}\\n".prop_map(|s| (s, true)),
        1 => "\\n[é€a =]{10,40}\\n".prop_map(|s| (s, true)),
        // Line breaks at the edges of raw text, to pair with a value's.
        2 => "[\\r\\na]{1,4}".prop_map(|s| (s, true)),
        4 => name.clone().prop_map(|n| (format!("{{{{{n}}}}}"), true)),
        2 => name.clone().prop_map(|n| (format!("{{{{{{{n}}}}}}}"), true)),
        1 => name.clone().prop_map(|n| (format!("{{{{~{n}~}}}}"), true)),
        1 => name.clone().prop_map(|n| (format!("{{{{~{n}}}}}"), true)),
        1 => name.clone().prop_map(|n| (format!("{{{{{{~{n}~}}}}}}"), true)),
        1 => name.clone().prop_map(|n| (format!("\\{{{{{n}}}}}"), true)),
        1 => "[a-z <{}]{0,6}".prop_map(|c| (format!("{{{{!{c}}}}}"), true)),
        1 => "[a-z {}]{0,6}".prop_map(|c| (format!("{{{{!-- {c} --}}}}"), true)),
        1 => helper.prop_map(|h| (format!("{{{{{h}}}}}"), false)),
        1 => name.clone().prop_map(|n| (format!("{{{{{n}.sub}}}}"), false)),
        1 => name.clone().prop_map(|n| (format!("{{{{[{n}]}}}}"), false)),
        1 => name.clone().prop_map(|n| (format!("{{{{../{n}}}}}"), false)),
        1 => name.clone().prop_map(|n| (format!("{{{{./{n}}}}}"), false)),
        1 => Just(("{{this}}".to_owned(), false)),
        1 => Just(("{{@index}}".to_owned(), false)),
        1 => name.clone().prop_map(|n| (format!("{{{{#if {n}}}}}[{{{{{n}}}}}]{{{{else}}}}-{{{{/if}}}}"), false)),
        1 => name.clone().prop_map(|n| (format!("{{{{eq {n} \"x\"}}}}"), false)),
        1 => name.prop_map(|n| (format!("{{{{lookup this \"{n}\"}}}}"), false)),
    ]
}

/// A template source and whether the direct renderer must have a plan.
fn template() -> impl Strategy<Value = (String, bool)> {
    prop::collection::vec(piece(), 0..8).prop_map(|pieces| {
        let source: String = pieces.iter().map(|(s, _)| s.as_str()).collect();
        // Raw text ending in `\`, `{` or starting with `}` changes the tag
        // next to it: not in the subset then.
        let simple = pieces.iter().all(|(_, simple)| *simple)
            && !source.contains("{{{{")
            && !source.contains("}}}}")
            && !pieces.windows(2).any(|w| {
                let (a, b) = (&w[0].0, &w[1].0);
                (a.ends_with('{') || a.ends_with('\\')) && b.starts_with("{{")
                    || a.ends_with("}}") && b.starts_with('}')
            });
        (source, simple)
    })
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,8}",
        "[<>&\"'`=\\\\ a-zé€\\r\\n.{}]{0,10}",
        "[\\r\\na]{1,3}",
        "[€é= \\t]{20,90}",
        "[a-z ]{60,120}",
        Just(String::new()),
    ]
}

/// The header: `email` and `dup` may be there once, twice or not at all.
fn columns() -> impl Strategy<Value = Vec<String>> {
    let column = prop_oneof![
        Just("first"),
        Just("email"),
        Just("plan"),
        Just("dup"),
        Just("x_1"),
        Just("log"),
        Just("if"),
    ];
    prop::collection::vec(column, 0..7).prop_map(|v| v.into_iter().map(String::from).collect())
}

fn spec(subject: &str) -> MessageSpec {
    MessageSpec {
        campaign: "direct".to_owned(),
        from: "News <news@acme.example>".to_owned(),
        reply_to: None,
        subject: subject.to_owned(),
        html: None,
        text: None,
        list_unsubscribe: None,
        limits: Limits::default(),
    }
}

fn source(name: &str, body: &str) -> Option<Source> {
    Some(Source {
        name: name.to_owned(),
        body: body.to_owned(),
    })
}

/// The four places a template goes, each in its own campaign so that an
/// error in one does not hide another, and both bodies (multipart).
fn specs(t: &str) -> [MessageSpec; 5] {
    [
        MessageSpec {
            text: source("t.txt", "x"),
            ..spec(t)
        },
        MessageSpec {
            text: source("body.txt", t),
            ..spec("s")
        },
        MessageSpec {
            html: source("body.html", t),
            ..spec("s")
        },
        MessageSpec {
            text: source("t.txt", "x"),
            list_unsubscribe: Some(format!("https://u.example/{t}")),
            ..spec("s")
        },
        MessageSpec {
            text: source("body.txt", &format!("{t}\n{t}")),
            html: source("body.html", t),
            ..spec("s")
        },
    ]
}

/// The message with its Date line and MIME boundary masked (the only
/// parts that differ between two renderings).
fn masked(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body)
        .split("\r\n")
        .map(|line| {
            if line.starts_with("Date:") {
                "Date: -"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    if let Some(at) = text.find("boundary=\"") {
        let start = at + "boundary=\"".len();
        if let Some(len) = text[start..].find('"') {
            let boundary = text[start..start + len].to_owned();
            text = text.replace(&boundary, "BOUNDARY");
        }
    }
    text
}

fn check(
    t: &str,
    simple: bool,
    columns: &[String],
    recipient: &Recipient,
) -> Result<(), TestCaseError> {
    for (slot, spec) in specs(t).into_iter().enumerate() {
        let direct = match Templates::compile(spec.clone()) {
            Ok(t) => t,
            Err(_) => {
                // A template that does not parse: nothing to render.
                prop_assert!(!simple, "{t:?} did not compile");
                return Ok(());
            }
        };
        if simple {
            // Slots in the order of `direct_plans`: subject, text, html, URL
            // (and text and html).
            let plans = direct.direct_plans();
            match slot {
                4 => prop_assert!(plans[1] && plans[2], "{t:?}: no plans"),
                _ => prop_assert!(plans[slot], "{t:?} has no plan in slot {slot}"),
            }
        }
        let hbs = Templates::compile(spec).unwrap().without_direct_renderer();
        prop_assert_eq!(hbs.direct_plans(), [false; 4]);
        let a = direct.render_parts(columns, recipient);
        let b = hbs.render_parts(columns, recipient);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.subject, &b.subject);
                prop_assert_eq!(&a.text, &b.text);
                prop_assert_eq!(&a.html, &b.html);
                prop_assert_eq!(&a.list_unsubscribe, &b.list_unsubscribe);
                prop_assert_eq!(masked(&a.envelope.body), masked(&b.envelope.body));
            }
            (a, b) => prop_assert_eq!(a.err(), b.err()),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn direct_renderer_renders_as_handlebars_does(
        (t, simple) in template(),
        columns in columns(),
        values in prop::collection::vec(value(), 0..8),
        email in prop_oneof![Just("ann@example.com"), Just(" bob@example.com ")],
    ) {
        let recipient = Recipient {
            id: RecipientId(1),
            line: 2,
            email: email.to_owned(),
            values,
            attempts: 0,
            first_attempt_at: None,
        };
        check(&t, simple, &columns, &recipient)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Line breaks only: raw text and values of CR, LF and `a`, where a
    /// value's CR and the raw text's LF (or the reverse) make one CRLF.
    #[test]
    fn line_breaks_between_raw_text_and_values(
        pieces in prop::collection::vec(
            prop_oneof![
                "[\\r\\na]{0,3}",
                Just("{{f}}".to_owned()),
                Just("{{g}}".to_owned()),
                Just("{{!c}}".to_owned()),
            ],
            0..8,
        ),
        f in "[\\r\\na]{0,3}",
        g in "[\\r\\na]{0,3}",
    ) {
        let t: String = pieces.concat();
        let recipient = Recipient {
            id: RecipientId(1),
            line: 2,
            email: "ann@example.com".to_owned(),
            values: vec![f, g],
            attempts: 0,
            first_attempt_at: None,
        };
        check(&t, true, &["f".to_owned(), "g".to_owned()], &recipient)?;
    }
}

/// Cases worth keeping whatever proptest generates.
#[test]
fn known_cases() {
    let columns: Vec<String> = ["first", "email", "dup", "dup", "log"]
        .map(String::from)
        .to_vec();
    let row = |values: &[&str]| Recipient {
        id: RecipientId(1),
        line: 7,
        email: "ann@example.com".to_owned(),
        values: values.iter().map(|v| v.to_string()).collect(),
        attempts: 0,
        first_attempt_at: None,
    };
    let full = row(&["A<&>\"'`=é", "other@x", "one", "two\r", "L"]);
    let short = row(&["A"]);
    for (t, simple) in [
        ("Hi {{first}} {{{first}}} <{{email}}>", true),
        ("{{dup}}\n.\n{{dup}}", true),
        ("a\r{{dup}}\nb", true),
        (
            "\n{{~first~}}\n x \\{{first}} {{! c }}{{!-- {{x}} --}}",
            true,
        ),
        ("{{log}}", false),
        ("{{first.x}} {{this}}", false),
        ("{{#if first}}{{first}}{{/if}}", false),
        ("{{nope}}", true),
        ("line\n\n{{dup}}\r", true),
    ] {
        check(t, simple, &columns, &full).unwrap();
        check(t, simple, &columns, &short).unwrap();
    }
    // A field the row lacks is handlebars' strict-mode error, with its
    // template, line and column.
    let spec = MessageSpec {
        text: source("body.txt", "x\n  {{dup}}"),
        ..spec("s")
    };
    let t = Templates::compile(spec).unwrap();
    assert_eq!(t.direct_plans(), [true, true, false, false]);
    let e = t.render_parts(&columns, &short).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 7: missing field `dup` in body.txt (template line 2, column 3)"
    );
}
