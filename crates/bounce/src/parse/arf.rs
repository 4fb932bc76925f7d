//! Complaints: ARF feedback reports (RFC 5965), and the plain forwarded
//! complaints some feedback loops send instead.

use super::address;
use super::fields::{self, Field};
use crate::Recipient;

/// What a complaint says.
pub(crate) struct Complaint {
    pub recipients: Vec<Recipient>,
    pub feedback_type: Option<String>,
    pub envelope_id: Option<String>,
}

/// Reads a `message/feedback-report` part (RFC 5965 §3.1) with the returned
/// message's headers, if any. Recipients: every `Original-Rcpt-To` (§3.2,
/// optional and repeatable); without one, the returned message's `To`.
pub(crate) fn read(report: &str, returned: &[Field]) -> Complaint {
    let fields: Vec<Field> = fields::groups(report).into_iter().flatten().collect();
    let feedback_type = fields::get(&fields, "Feedback-Type")
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty());
    let mut addresses: Vec<String> = Vec::new();
    for v in fields::get_all(&fields, "Original-Rcpt-To") {
        for a in address::find_all(v) {
            push_unique(&mut addresses, a);
        }
    }
    if addresses.is_empty() {
        addresses = returned_to(returned);
    }
    let envelope_id = fields::get(&fields, "Original-Envelope-Id")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Complaint {
        recipients: addresses.into_iter().map(complainant).collect(),
        feedback_type,
        envelope_id,
    }
}

/// A complaint without a feedback-report part: some providers forward the
/// complained-about message as a plain `message/rfc822` attachment with a
/// notice (Amazon SES's email feedback forwarding passes on what the mailbox
/// provider sent; feedback loops run on ticketing systems write their own
/// notice). Recognised by the sender or subject, and only with a returned
/// message to name the recipient.
pub(crate) fn read_forwarded(top: &[Field], returned: &[Field]) -> Option<Complaint> {
    if returned.is_empty() {
        return None;
    }
    let from = fields::get(top, "From").unwrap_or("").to_ascii_lowercase();
    let subject = fields::get(top, "Subject")
        .unwrap_or("")
        .to_ascii_lowercase();
    let from_loop = from.contains("email-abuse.amazonses.com")
        || address::find_all(&from).iter().any(|a| {
            let local = a.split('@').next().unwrap_or("");
            [
                "complaints",
                "abuse",
                "fbl",
                "feedbackloop",
                "feedback-loop",
                "spam-report",
            ]
            .iter()
            .any(|p| local.starts_with(p))
        });
    let says_complaint = [
        "complaint",
        "abuse report",
        "spam report",
        "feedback report",
    ]
    .iter()
    .any(|w| subject.contains(w));
    if !(from_loop || says_complaint) {
        return None;
    }
    let recipients: Vec<Recipient> = returned_to(returned).into_iter().map(complainant).collect();
    if recipients.is_empty() {
        return None;
    }
    Some(Complaint {
        recipients,
        feedback_type: Some("abuse".to_string()),
        envelope_id: None,
    })
}

/// The returned message's `To` addresses.
fn returned_to(returned: &[Field]) -> Vec<String> {
    let mut out = Vec::new();
    for v in fields::get_all(returned, "To") {
        for a in address::find_all(v) {
            push_unique(&mut out, a);
        }
    }
    out
}

/// Adds `a` unless listed (case-insensitively), up to a bound no real
/// report reaches (the check is linear in the list).
fn push_unique(list: &mut Vec<String>, a: String) {
    if list.len() < super::text::MAX_RECIPIENTS && !list.iter().any(|o| o.eq_ignore_ascii_case(&a))
    {
        list.push(a);
    }
}

/// A complaint's recipient: no status (RFC 3463 has none for "this person
/// called it spam"), never a hard bounce.
fn complainant(address: String) -> Recipient {
    Recipient {
        address,
        status: None,
        hard: false,
        diagnostic: None,
    }
}
