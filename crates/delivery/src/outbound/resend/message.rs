//! An edm message as Resend's `POST /emails` body.
//!
//! Resend takes the message as fields, not as MIME: the rendered message
//! (the bytes the SMTP path sends) is parsed back into From, Subject, the
//! bodies, the attachments and the headers edm adds. Parsing the finished
//! bytes keeps the transport seam as it is (an [`Envelope`]) and makes the
//! body depend only on what the recipient reads: the `Date` header and the
//! MIME boundaries, which change between renderings, are not in it, so the
//! same recipient gets the same request body, byte for byte, on every
//! attempt and after a crash (the idempotency key's condition).

use std::collections::BTreeMap;

use base64::Engine as _;
use edm_model::Envelope;
use mail_parser::{HeaderName, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

/// Headers Resend builds itself from the body's fields, or that must not be
/// copied: the rest of the top-level headers go in `headers`.
const NOT_COPIED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    // Resend signs with its own DKIM key; edm's signature covers headers
    // Resend rewrites.
    "dkim-signature",
    "return-path",
    "received",
];

/// The body of `POST /emails`. Field order is the struct's (serde keeps it),
/// and `headers` is sorted: the same message gives the same bytes.
#[derive(Serialize, Debug, PartialEq)]
pub struct SendEmail {
    /// `Name <address>` or the address.
    pub from: String,
    /// The recipient, alone.
    pub to: Vec<String>,
    /// Decoded subject.
    pub subject: String,
    /// Reply-To, when edm sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The HTML body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The text body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// List-Unsubscribe, List-Unsubscribe-Post and any other header edm adds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Files, base64.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The campaign's name as the `campaign` tag.
    pub tags: Vec<Tag>,
}

/// One attachment.
#[derive(Serialize, Debug, PartialEq)]
pub struct Attachment {
    /// The file's bytes, base64.
    pub content: String,
    /// Its name.
    pub filename: String,
    /// Its media type, as edm sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// One email tag.
#[derive(Serialize, Debug, PartialEq)]
pub struct Tag {
    /// Tag name.
    pub name: String,
    /// Tag value.
    pub value: String,
}

/// Resend's tag names and values take ASCII letters, digits, `_` and `-`,
/// at most 256 characters: anything else becomes `_`.
pub fn sanitise_tag(value: &str) -> String {
    let s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// `Name <address>`, the display name quoted when it holds a special
/// character (RFC 5322 §3.2.3, §3.4).
fn mailbox(name: Option<&str>, address: &str) -> String {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => address.to_string(),
        Some(n) if n.chars().any(|c| "()<>[]:;@\\,.\"".contains(c)) => {
            format!(
                "\"{}\" <{address}>",
                n.replace('\\', "\\\\").replace('"', "\\\"")
            )
        }
        Some(n) => format!("{n} <{address}>"),
    }
}

/// The request body for `env`, or why the message cannot be read.
pub fn send_email(env: &Envelope, tag: &str) -> Result<SendEmail, String> {
    let msg = MessageParser::default()
        .parse(&env.body[..])
        .ok_or_else(|| "the rendered message cannot be parsed as MIME".to_string())?;
    let from = match msg.from().and_then(|a| a.first()) {
        Some(a) => mailbox(a.name(), a.address().unwrap_or(&env.mail_from)),
        None => env.mail_from.clone(),
    };
    let reply_to = msg
        .reply_to()
        .and_then(|a| a.first())
        .and_then(|a| a.address().map(|addr| mailbox(a.name(), addr)));
    // Only parts of their own type: mail-parser offers an HTML part as the
    // text body when there is no text part (converted), which edm did not send.
    let text = msg.text_bodies().find_map(|p| match &p.body {
        PartType::Text(t) => Some(t.to_string()),
        _ => None,
    });
    let html = msg.html_bodies().find_map(|p| match &p.body {
        PartType::Html(h) => Some(h.to_string()),
        _ => None,
    });
    let attachments = msg
        .attachments()
        .map(|p| Attachment {
            content: base64::engine::general_purpose::STANDARD.encode(p.contents()),
            filename: p.attachment_name().unwrap_or("attachment").to_string(),
            content_type: p.content_type().map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{sub}", ct.ctype()),
                None => ct.ctype().to_string(),
            }),
        })
        .collect();
    let raw = msg.raw_message();
    let mut headers = BTreeMap::new();
    for h in msg.headers() {
        let name = match &h.name {
            HeaderName::Other(n) => n.to_string(),
            other => other.as_str().to_string(),
        };
        if NOT_COPIED.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let value = raw
            .get(h.offset_start as usize..h.offset_end as usize)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        // Unfolded (RFC 5322 §2.2.3): a JSON value is one line.
        let value = value
            .split("\r\n")
            .flat_map(|l| l.split('\n'))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        headers.insert(name, value);
    }
    Ok(SendEmail {
        from,
        to: vec![env.rcpt_to.clone()],
        subject: msg.subject().unwrap_or("").to_string(),
        reply_to,
        html,
        text,
        headers,
        attachments,
        tags: vec![Tag {
            name: "campaign".into(),
            value: tag.to_string(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(date: &str, boundary: &str) -> Vec<u8> {
        format!(
            "From: \"Acme, Inc.\" <news@acme.example>\r\n\
To: a@example.com\r\n\
Reply-To: Help Desk <help@acme.example>\r\n\
Subject: =?utf-8?q?Hello_J=C3=B6rg?=\r\n\
Date: {date}\r\n\
Message-ID: <m1@acme.example>\r\n\
List-Unsubscribe: <https://acme.example/u?t=1>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
DKIM-Signature: v=1; a=rsa-sha256; d=acme.example;\r\n\
\tb=abc\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\
\r\n\
--{boundary}\r\n\
Content-Type: multipart/alternative; boundary=\"{boundary}-alt\"\r\n\
\r\n\
--{boundary}-alt\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hi J\u{f6}rg\r\n\
--{boundary}-alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Hi J\u{f6}rg</p>\r\n\
--{boundary}-alt--\r\n\
--{boundary}\r\n\
Content-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"terms.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0=\r\n\
--{boundary}--\r\n"
        )
        .into_bytes()
    }

    fn env(body: Vec<u8>) -> Envelope {
        Envelope {
            attempt: Default::default(),
            id: edm_model::RecipientId(1),
            mail_from: "news@acme.example".into(),
            rcpt_to: "a@example.com".into(),
            domain: "example.com".into(),
            message_id: "m1@acme.example".into(),
            body,
        }
    }

    #[test]
    fn the_fields_come_from_the_rendered_message() {
        let m = send_email(
            &env(message("Mon, 1 Jan 2024 00:00:00 +0000", "b1")),
            "spring",
        )
        .unwrap();
        assert_eq!(m.from, "\"Acme, Inc.\" <news@acme.example>");
        assert_eq!(m.to, vec!["a@example.com".to_string()]);
        assert_eq!(m.subject, "Hello Jörg");
        assert_eq!(m.reply_to.as_deref(), Some("Help Desk <help@acme.example>"));
        assert_eq!(m.text.as_deref().map(str::trim_end), Some("Hi Jörg"));
        assert_eq!(m.html.as_deref().map(str::trim_end), Some("<p>Hi Jörg</p>"));
        let names: Vec<&str> = m.headers.keys().map(String::as_str).collect();
        assert_eq!(names, ["List-Unsubscribe", "List-Unsubscribe-Post"]);
        assert_eq!(
            m.headers["List-Unsubscribe"],
            "<https://acme.example/u?t=1>"
        );
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].filename, "terms.pdf");
        assert_eq!(m.attachments[0].content, "JVBERi0=");
        assert_eq!(
            m.attachments[0].content_type.as_deref(),
            Some("application/pdf")
        );
        assert_eq!(
            m.tags,
            vec![Tag {
                name: "campaign".into(),
                value: "spring".into()
            }]
        );
    }

    /// Another Date and other boundaries (a new rendering after a crash):
    /// the same bytes, so Resend's idempotency replay applies.
    #[test]
    fn the_body_is_the_same_bytes_whatever_the_date_and_boundaries() {
        let a = send_email(&env(message("Mon, 1 Jan 2024 00:00:00 +0000", "b1")), "t").unwrap();
        let b = send_email(&env(message("Tue, 2 Jan 2024 10:00:00 +0000", "zz9")), "t").unwrap();
        assert_eq!(
            serde_json::to_vec(&a).unwrap(),
            serde_json::to_vec(&b).unwrap()
        );
        let json = String::from_utf8(serde_json::to_vec(&a).unwrap()).unwrap();
        assert!(json.starts_with("{\"from\":"), "{json}");
        assert!(!json.contains("2024"), "no Date in the body: {json}");
    }

    #[test]
    fn html_only_has_no_invented_text() {
        let body = b"From: news@acme.example\r\nTo: a@example.com\r\nSubject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>x</p>\r\n".to_vec();
        let m = send_email(&env(body), "t").unwrap();
        assert_eq!(m.text, None);
        assert!(m.html.is_some());
        assert_eq!(m.from, "news@acme.example");
    }

    #[test]
    fn tags_are_sanitised() {
        assert_eq!(sanitise_tag("Spring sale 2026/ü.x"), "Spring_sale_2026___x");
        assert_eq!(sanitise_tag(""), "_");
    }
}
