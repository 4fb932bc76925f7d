//! Delivery status notifications, RFC 3464: the `message/delivery-status`
//! part of a `multipart/report; report-type=delivery-status`.

use super::fields::{self, Field};
use super::text::Found;
use super::{address, status};
use crate::{Recipient, VerdictKind};

/// What a delivery-status part says.
pub(crate) struct Dsn {
    pub kind: VerdictKind,
    pub recipients: Vec<Recipient>,
    pub envelope_id: Option<String>,
    /// Gmail's per-message `X-Original-Message-ID`.
    pub original_message_id: Option<String>,
}

/// Reads the body of a `message/delivery-status` part. `notes` are the
/// notice's own words per recipient, for a group without a Diagnostic-Code.
/// `None` when it names no recipient (then the notice's text is all there
/// is).
pub(crate) fn read(report: &str, notes: &Found) -> Option<Dsn> {
    let groups = fields::groups(report);
    let mut envelope_id = None;
    let mut original_message_id = None;
    let mut failed = Vec::new();
    let mut delivered = Vec::new();
    for group in &groups {
        // RFC 3464 §2.2: the per-message fields come first; `Original-
        // Envelope-Id` is one of them.
        if envelope_id.is_none()
            && let Some(id) = fields::get(group, "Original-Envelope-Id")
        {
            let id = id.trim();
            if !id.is_empty() {
                envelope_id = Some(id.to_string());
            }
        }
        if original_message_id.is_none() {
            original_message_id =
                fields::get(group, "X-Original-Message-ID").and_then(fields::message_id);
        }
        if failed.len() + delivered.len() >= super::text::MAX_RECIPIENTS {
            break;
        }
        let Some(r) = recipient(group, notes) else {
            continue;
        };
        match r {
            (Outcome::Failed, r) => failed.push(r),
            (Outcome::Delivered, r) => delivered.push(r),
        }
    }
    let (kind, recipients) = if !failed.is_empty() {
        // Recipients that were delivered in a mixed report are no news.
        (VerdictKind::Bounce, failed)
    } else if !delivered.is_empty() {
        (VerdictKind::DeliveryReport, delivered)
    } else {
        return None;
    };
    Some(Dsn {
        kind,
        recipients,
        envelope_id,
        original_message_id,
    })
}

enum Outcome {
    /// `failed` or `delayed`.
    Failed,
    /// `delivered`, `relayed` or `expanded` (RFC 3464 §2.3.3).
    Delivered,
}

/// One per-recipient group (RFC 3464 §2.3), or `None` for a group that names
/// no recipient (the per-message group).
fn recipient(group: &[Field], notes: &Found) -> Option<(Outcome, Recipient)> {
    // RFC 3464 §2.3.1: Original-Recipient is the address "as specified by
    // the sender" (what edm gave in RCPT TO, before any alias or forward
    // rewrote it into the Final-Recipient), so it is the one that matches a
    // recipient of the campaign. Only an rfc822 one: a utf-8 or x400 type
    // would not be what edm sent.
    let original = fields::get(group, "Original-Recipient")
        .filter(|v| {
            v.split_once(';')
                .is_some_and(|(t, _)| t.trim().eq_ignore_ascii_case("rfc822"))
        })
        .and_then(address::first);
    let address = original
        .or_else(|| fields::get(group, "Final-Recipient").and_then(address::first))
        .or_else(|| fields::get(group, "Original-Recipient").and_then(address::first))?;
    let action = fields::get(group, "Action")
        .map(|a| {
            a.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let diagnostic = fields::get(group, "Diagnostic-Code")
        .map(strip_type)
        .filter(|d| !d.is_empty())
        .or_else(|| {
            notes
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(&address))
                .and_then(|(_, d)| d.clone())
        });
    let raw_status = fields::get(group, "Status");
    let hint = match action.as_str() {
        "failed" => '5',
        "delayed" => '4',
        "delivered" | "relayed" | "expanded" => '2',
        // No Action: the status class (or the reply code) says it.
        _ => raw_status
            .and_then(status::find_enhanced)
            .and_then(|s| s.chars().next())
            .unwrap_or('5'),
    };
    let mut code = status::resolve(raw_status, diagnostic.as_deref(), hint);
    let outcome = match action.as_str() {
        "delayed" => {
            // Still being retried: never a hard bounce, whatever class the
            // MTA gave the last attempt (RFC 3464 §2.3.3 "delayed" is not
            // final).
            if !code.starts_with('4') {
                code = status::with_class(&code, '4');
            }
            Outcome::Failed
        }
        "failed" => Outcome::Failed,
        "delivered" | "relayed" | "expanded" => Outcome::Delivered,
        _ if code.starts_with('2') => Outcome::Delivered,
        _ => Outcome::Failed,
    };
    let hard = matches!(outcome, Outcome::Failed) && status::is_hard(&code);
    Some((
        outcome,
        Recipient {
            address,
            status: Some(code),
            hard,
            diagnostic,
        },
    ))
}

/// `smtp; 550 5.1.1 ...` → `550 5.1.1 ...` (RFC 3464 §2.3.6: the
/// diagnostic-type before the semicolon).
fn strip_type(value: &str) -> String {
    let v = value.trim();
    let v = match v.split_once(';') {
        Some((kind, rest))
            if !kind.is_empty()
                && kind.len() <= 16
                && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            rest
        }
        _ => v,
    };
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delayed_is_soft_even_when_the_mta_says_5() {
        let d = read("Reporting-MTA: dns; a\n\nFinal-Recipient: rfc822; x@y.example\nAction: delayed\nStatus: 5.2.2\n", &Found::new()).unwrap();
        assert_eq!(d.kind, VerdictKind::Bounce);
        assert_eq!(d.recipients[0].status.as_deref(), Some("4.2.2"));
        assert!(!d.recipients[0].hard);
    }

    #[test]
    fn failed_with_a_4_status_stays_soft() {
        let d = read(
            "Final-Recipient: rfc822; x@y.example\nAction: failed\nStatus: 4.4.1\n",
            &Found::new(),
        )
        .unwrap();
        assert_eq!(d.recipients[0].status.as_deref(), Some("4.4.1"));
        assert!(!d.recipients[0].hard);
    }

    #[test]
    fn no_recipient_no_dsn() {
        assert!(read("Reporting-MTA: dns; a\n", &Found::new()).is_none());
        assert!(read("", &Found::new()).is_none());
    }

    #[test]
    fn diagnostic_type_is_stripped() {
        assert_eq!(strip_type("smtp; 550  5.1.1\tgone"), "550 5.1.1 gone");
        assert_eq!(strip_type("X-Postfix; host said"), "host said");
        assert_eq!(strip_type("550 a; b"), "550 a; b");
    }
}
