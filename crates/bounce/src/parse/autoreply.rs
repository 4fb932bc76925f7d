//! Auto-replies and out-of-office notices: never a bounce.
//!
//! RFC 3834 §5 asks responders to send `Auto-Submitted: auto-replied`;
//! older ones send `X-Autoreply`, `X-Autorespond` or `Precedence:
//! auto_reply`, and some only say it in the subject. DSNs carry
//! `Auto-Submitted: auto-replied` too (RFC 3464 §2, RFC 3834 §5.1), which is
//! why the caller asks here only after the report part and the notice's text
//! said nothing.

use super::fields::{self, Field};

/// Subjects of out-of-office and automatic replies (English, German,
/// French, Spanish, Italian, Dutch, Portuguese), compared lowercased.
const SUBJECTS: &[&str] = &[
    "out of office",
    "out of the office",
    "automatic reply",
    "auto reply",
    "auto-reply",
    "autoreply",
    "auto response",
    "auto-response",
    "autoresponse",
    "on vacation",
    "vacation reply",
    "abwesenheit",
    "automatische antwort",
    "réponse automatique",
    "reponse automatique",
    "absence du bureau",
    "respuesta automática",
    "respuesta automatica",
    "fuera de la oficina",
    "risposta automatica",
    "fuori ufficio",
    "automatisch antwoord",
    "afwezig",
    "resposta automática",
    "ausente",
];

pub(crate) fn is_auto_reply(top: &[Field]) -> bool {
    let auto_submitted = fields::get(top, "Auto-Submitted")
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v.starts_with("auto-replied"));
    let x_autoreply = ["X-Autoreply", "X-Autorespond", "X-Autoresponder"]
        .iter()
        .any(|h| fields::get(top, h).is_some());
    let precedence =
        fields::get(top, "Precedence").is_some_and(|v| v.trim().eq_ignore_ascii_case("auto_reply"));
    let subject = fields::get(top, "Subject").unwrap_or("").to_lowercase();
    let subject_says = SUBJECTS.iter().any(|s| subject.contains(s));
    auto_submitted || x_autoreply || precedence || subject_says
}
