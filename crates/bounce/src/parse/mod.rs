//! The bounce parser: one raw message in, one [`Verdict`] out.
//!
//! In order, the first that speaks wins:
//! 1. a `message/delivery-status` part (RFC 3464): bounce or delivery report;
//! 2. a `message/feedback-report` part (RFC 5965): complaint;
//! 3. a failure or delay notice in plain text (Exchange, Gmail, Yahoo,
//!    qmail, Exim, Postfix, Sendmail), recognised by its wording;
//! 4. a forwarded complaint without ARF (a returned message and a sender or
//!    subject that says complaint);
//! 5. an auto-reply or out-of-office;
//! 6. anything else is `not_bounce`.
//!
//! A DSN says `Auto-Submitted: auto-replied` too, so the auto-reply check
//! comes after the report parts and the notice's wording.
//!
//! MIME structure and transfer encodings are mail-parser's; the fields of
//! the report parts are read here, leniently (see [`fields`]).

mod address;
mod arf;
mod autoreply;
mod dsn;
mod fields;
mod status;
mod text;

use mail_parser::{MessageParser, MimeHeaders};

use crate::{Verdict, VerdictKind};
use fields::Field;

/// Reads one raw message. Never panics: anything it cannot make sense of
/// is `not_bounce`.
pub fn parse(raw: &[u8]) -> Verdict {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Verdict::not_bounce();
    };
    let all = fields::text(raw);
    let mut top = fields::header_block(&all);
    // The decoded subject (RFC 2047 words: "=?UTF-8?Q?Abwesenheitsnotiz?=").
    if let Some(subject) = msg.subject() {
        match top
            .iter_mut()
            .find(|f| f.name.eq_ignore_ascii_case("Subject"))
        {
            Some(f) => f.value = subject.to_string(),
            None => top.push(Field {
                name: "Subject".into(),
                value: subject.to_string(),
            }),
        }
    }

    let mut delivery_status: Option<String> = None;
    let mut feedback: Option<String> = None;
    let mut returned: Vec<Field> = Vec::new();
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let kind = ct.ctype().to_ascii_lowercase();
        let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (kind.as_str(), sub.as_str()) {
            // The first of each kind counts.
            ("message", "delivery-status" | "global-delivery-status")
                if delivery_status.is_none() =>
            {
                delivery_status = Some(fields::text(part.contents()));
            }
            ("message", "feedback-report") if feedback.is_none() => {
                feedback = Some(fields::text(part.contents()));
            }
            ("message", "rfc822" | "global" | "rfc822-headers")
            | ("text", "rfc822-headers" | "rfc822")
                if returned.is_empty() =>
            {
                returned = fields::header_block(&fields::text(part.contents()));
            }
            _ => {}
        }
    }
    let body: String = (0..msg.text_body.len())
        .filter_map(|i| msg.body_text(i))
        .collect::<Vec<_>>()
        .join("\n");

    let mut verdict = Verdict::not_bounce();
    verdict.delivered_to = delivered_to(&top);
    verdict.original_message_id = fields::get(&returned, "Message-ID")
        .and_then(fields::message_id)
        .or_else(|| text::quoted_message_id(&body));

    if let Some(report) = delivery_status
        .as_deref()
        .and_then(|r| dsn::read(r, &text::notes(&body)))
    {
        verdict.verdict = report.kind;
        verdict.recipients = report.recipients;
        verdict.envelope_id = report.envelope_id;
        if verdict.original_message_id.is_none() {
            verdict.original_message_id = report.original_message_id;
        }
        return verdict;
    }
    if let Some(report) = feedback.as_deref() {
        let c = arf::read(report, &returned);
        verdict.envelope_id = c.envelope_id;
        // RFC 6591 `auth-failure` reports are about the sending domain's
        // DKIM/SPF/DMARC, and `not-spam` says the person rescued the
        // message from their spam folder: neither is anyone complaining.
        if c.feedback_type
            .as_deref()
            .is_some_and(|t| t == "auth-failure" || t == "not-spam")
        {
            verdict.feedback_type = c.feedback_type;
            return verdict;
        }
        verdict.verdict = VerdictKind::Complaint;
        verdict.recipients = c.recipients;
        verdict.feedback_type = c.feedback_type;
        return verdict;
    }
    if let Some(recipients) = text::read(&top, &body) {
        verdict.verdict = VerdictKind::Bounce;
        verdict.recipients = recipients;
        return verdict;
    }
    if let Some(c) = arf::read_forwarded(&top, &returned) {
        verdict.verdict = VerdictKind::Complaint;
        verdict.recipients = c.recipients;
        verdict.feedback_type = c.feedback_type;
        return verdict;
    }
    if autoreply::is_auto_reply(&top) {
        verdict.verdict = VerdictKind::AutoReply;
        return verdict;
    }
    verdict
}

/// `Delivered-To`, `X-Original-To`, `Envelope-To`, then `To`, lowercased,
/// each address once: where a VERP return path's token shows.
fn delivered_to(top: &[Field]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in ["Delivered-To", "X-Original-To", "Envelope-To", "To"] {
        for v in fields::get_all(top, name) {
            for a in address::find_all(v) {
                let a = a.to_lowercase();
                // A bound no real header reaches (the check is linear).
                if out.len() < text::MAX_RECIPIENTS && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}
