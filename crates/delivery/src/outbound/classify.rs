//! The single classifier: every mail-send error and every SMTP reply becomes
//! a [`Failure`] here, once, at the boundary.
//!
//! Order of evidence, strongest first:
//! 1. provider dialects ([`DIALECTS`]): replies whose code lies (Tencent Cloud
//!    SES rate limiting as `554`, Amazon SES throttling as `454`, ...);
//! 2. the enhanced status code (RFC 3463), when the server sent one;
//! 3. the basic code and the stage of the conversation (RFC 5321 §4.2).

use std::io;
use std::time::Duration;

use edm_model::{Category, Failure, Stage};

/// An SMTP reply as the classifier sees it.
#[derive(Clone, Copy, Debug)]
pub struct ReplyRef<'a> {
    /// Basic code.
    pub code: u16,
    /// Enhanced code, `[0, 0, 0]` when absent.
    pub esc: [u8; 3],
    /// Reply text (all lines).
    pub text: &'a str,
}

/// Classifies a mail-send error raised at `stage`.
///
/// The match is exhaustive on purpose (no `_` arm): a new upstream variant
/// must be decided here, not fall into a default.
pub fn classify_error(stage: Stage, err: &mail_send::Error) -> Failure {
    use mail_send::Error as E;
    match err {
        E::Io(e) => classify_io(stage, e),
        // rustls says why the handshake failed: a certificate the system does
        // not trust is a configuration problem that no retry fixes.
        E::Tls(e) if matches!(**e, tokio_rustls::rustls::Error::InvalidCertificate(_)) => local(
            stage,
            Category::TlsCertificate,
            format!("the relay's TLS certificate is not trusted: {e}"),
        ),
        E::Tls(e) => local(stage, Category::Tls, format!("TLS error: {e}")),
        E::Base64(e) => local(
            stage,
            Category::Protocol,
            format!("bad base64 from server: {e}"),
        ),
        E::Auth(e) => local(
            Stage::Auth,
            Category::Auth,
            format!("authentication failed: {e}"),
        ),
        // mail-send reports a closed connection and garbage alike as unparseable.
        E::UnparseableReply => local(
            stage,
            Category::Disconnected,
            "connection closed by the server (or an unparseable reply)",
        ),
        E::UnexpectedReply(r) => classify_reply(
            stage,
            ReplyRef {
                code: r.code,
                esc: r.esc,
                text: &r.message,
            },
        ),
        E::AuthenticationFailed(r) => {
            let mut f = classify_reply(
                Stage::Auth,
                ReplyRef {
                    code: r.code,
                    esc: r.esc,
                    text: &r.message,
                },
            );
            // 454 4.7.0 (a temporary auth failure) is retried; 5xx stops the run.
            f.category = Category::Auth;
            f.permanent = r.code >= 500;
            f
        }
        E::InvalidTLSName => local(stage, Category::Tls, "invalid TLS server name"),
        E::MissingCredentials => local(Stage::Auth, Category::Auth, "credentials missing"),
        E::MissingMailFrom => local(stage, Category::Protocol, "envelope has no sender"),
        E::MissingRcptTo => local(stage, Category::Protocol, "envelope has no recipient"),
        E::UnsupportedAuthMechanism => local(
            Stage::Auth,
            Category::Auth,
            "the server offers no supported AUTH mechanism (or no AUTH at all)",
        ),
        E::Timeout => timeout(stage),
        E::MissingStartTls => local(
            Stage::Tls,
            Category::Tls,
            "the server does not offer STARTTLS",
        ),
    }
}

/// The failure for a timeout at `stage`.
pub fn timeout(stage: Stage) -> Failure {
    match stage {
        Stage::Connect | Stage::Greeting => local(
            stage,
            Category::ConnectTimeout,
            format!("timed out waiting for the server ({stage})"),
        ),
        _ => local(
            stage,
            Category::ReadTimeout,
            format!("timed out waiting for the reply to {stage}"),
        ),
    }
}

/// Classifies an I/O error at `stage`.
pub fn classify_io(stage: Stage, e: &io::Error) -> Failure {
    use io::ErrorKind as K;
    let category = match e.kind() {
        K::ConnectionRefused => Category::ConnectRefused,
        // ENETUNREACH / EHOSTUNREACH: no route to the relay.
        K::NetworkUnreachable | K::HostUnreachable => Category::NetworkUnreachable,
        K::TimedOut => {
            if stage == Stage::Connect {
                Category::ConnectTimeout
            } else {
                Category::ReadTimeout
            }
        }
        K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::NotConnected => Category::Disconnected,
        _ if stage == Stage::Connect => Category::ConnectRefused,
        _ => Category::Disconnected,
    };
    local(stage, category, format!("{e}"))
}

fn local(stage: Stage, category: Category, reply: impl Into<String>) -> Failure {
    let mut f = Failure::local(stage, category, reply);
    // A local error is about the connection, not the recipient: retrying can
    // help, except when the credentials are refused or impossible.
    f.permanent = category == Category::Auth;
    f
}

/// One provider dialect: a reply that means something other than its code says.
pub struct Dialect {
    /// Who answers like this.
    pub provider: &'static str,
    /// Matches the reply.
    pub matches: fn(&ReplyRef<'_>) -> bool,
    /// What it really is.
    pub category: Category,
}

fn text_has(r: &ReplyRef<'_>, needle: &str) -> bool {
    r.text.to_ascii_lowercase().contains(needle)
}

fn esc_is(r: &ReplyRef<'_>, esc: [u8; 3]) -> bool {
    r.esc == esc
}

/// Provider dialects, checked in order; the first match wins.
/// Each entry cites the reply it handles (see `docs/failures.md`).
pub static DIALECTS: &[Dialect] = &[
    // Tencent Cloud SES refuses every message when the sender is not set up:
    // `554 5.0.0 Error: ##SES-response-json: {"Response":{"Error":{"Code":
    // "FailedOperation...","Message":"msg.From is null"}}}`. It is about the
    // sender, so it stops the run (before the catch-all content entry below).
    Dialect {
        provider: "Tencent Cloud SES",
        matches: |r| text_has(r, "msg.from is null"),
        category: Category::SenderRefused,
    },
    // Tencent Cloud SES: `554 5.0.0 Error: transaction failed, blame it on the weather:
    // ##SES-response-json: {"Response":{"Error":{"Code":"RequestLimitExceeded.SmtpRateLimit"..}}}`
    Dialect {
        provider: "Tencent Cloud SES",
        matches: |r| tencent_code(r.text).is_some_and(|c| c.starts_with("RequestLimitExceeded")),
        category: Category::Throttled,
    },
    Dialect {
        provider: "Tencent Cloud SES",
        matches: |r| {
            tencent_message(r.text).is_some_and(|m| m.to_ascii_lowercase().contains("too large"))
        },
        category: Category::MessageTooLarge,
    },
    Dialect {
        provider: "Tencent Cloud SES",
        matches: |r| tencent_code(r.text).is_some(),
        category: Category::ContentRejected,
    },
    Dialect {
        provider: "Tencent Cloud SES",
        matches: |r| text_has(r, "too longer line in input stream"),
        category: Category::ContentRejected,
    },
    // Amazon SES: `554 Message rejected: Email address is not verified. The
    // following identities failed the check in region US-EAST-1: ...`: the
    // sender is not a verified identity, so every message would be refused.
    Dialect {
        provider: "Amazon SES",
        matches: |r| text_has(r, "email address is not verified"),
        category: Category::SenderRefused,
    },
    // Amazon SES: `454 Throttling failure: Maximum sending rate exceeded.`
    Dialect {
        provider: "Amazon SES",
        matches: |r| text_has(r, "throttling failure") && !text_has(r, "quota"),
        category: Category::Throttled,
    },
    // Amazon SES: `454 Throttling failure: Daily message quota exceeded.`
    Dialect {
        provider: "Amazon SES",
        matches: |r| text_has(r, "daily message quota exceeded"),
        category: Category::QuotaExceeded,
    },
    // Office 365: `554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException`
    Dialect {
        provider: "Office 365",
        matches: |r| text_has(r, "submissionquotaexceeded") || text_has(r, "quota exceeded"),
        category: Category::QuotaExceeded,
    },
    // Gmail: `421 4.7.28 ... unusual rate of unsolicited mail`, `421 4.7.0 Try again later`.
    Dialect {
        provider: "Gmail",
        matches: |r| esc_is(r, [4, 7, 28]),
        category: Category::Throttled,
    },
    // Gmail: `450 4.2.1 The user you are trying to contact is receiving mail at a rate ...`
    Dialect {
        provider: "Gmail",
        matches: |r| esc_is(r, [4, 2, 1]) && text_has(r, "rate"),
        category: Category::Throttled,
    },
    // Office 365: `451 4.5.127 Excessive message rate from sender`,
    // `5.7.708 ... traffic not accepted from this IP` (a sending-rate reputation block).
    Dialect {
        provider: "Office 365",
        // smtp-proto keeps each part of the enhanced code in a u8 and saturates
        // 708 to 255: match 5.7.708 by its text.
        matches: |r| esc_is(r, [4, 5, 127]) || text_has(r, "traffic not accepted from this ip"),
        category: Category::Throttled,
    },
    // Generic wording used by many relays for rate limits.
    Dialect {
        provider: "generic",
        matches: |r| {
            [
                "rate limit",
                "ratelimit",
                "too many messages",
                "throttl",
                "sending rate",
                "slow down",
            ]
            .iter()
            .any(|n| text_has(r, n))
                || ((r.esc[0] == 4 || r.code / 100 == 4) && text_has(r, "rate"))
        },
        category: Category::Throttled,
    },
    Dialect {
        provider: "generic",
        matches: |r| r.code / 100 == 4 && (text_has(r, "greylist") || text_has(r, "graylist")),
        category: Category::Greylisted,
    },
    // `530 5.7.0 Authentication required` (RFC 4954 §6) at MAIL FROM: the
    // relay wants AUTH and none was done (no `[smtp] username`).
    Dialect {
        provider: "generic",
        matches: |r| r.code == 530,
        category: Category::Auth,
    },
];

/// The error code inside a Tencent Cloud SES `##SES-response-json:` reply.
fn tencent_code(text: &str) -> Option<String> {
    tencent_json(text).and_then(|v| find_key(&v, "Code"))
}

/// The error message inside a Tencent Cloud SES reply.
fn tencent_message(text: &str) -> Option<String> {
    tencent_json(text).and_then(|v| find_key(&v, "Message"))
}

fn tencent_json(text: &str) -> Option<serde_json::Value> {
    let (_, json) = text.split_once("##SES-response-json:")?;
    let json = json.trim();
    // The JSON may be followed by more reply lines: take the first complete value.
    let mut stream = serde_json::Deserializer::from_str(json).into_iter::<serde_json::Value>();
    stream.next()?.ok()
}

fn find_key(v: &serde_json::Value, key: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(s)) = map.get(key) {
                return Some(s.clone());
            }
            map.values().find_map(|v| find_key(v, key))
        }
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// Classifies a negative reply received at `stage`.
pub fn classify_reply(stage: Stage, r: ReplyRef<'_>) -> Failure {
    let enhanced = (r.esc != [0, 0, 0]).then(|| format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2]));
    let mut reply = r.text.trim().to_string();
    let dialect = DIALECTS.iter().find(|d| (d.matches)(&r));
    let category = match dialect {
        Some(d) => d.category,
        None => by_enhanced(stage, r.esc).unwrap_or_else(|| by_code(stage, r.code)),
    };
    // Tencent's FailedOperation messages are the useful part of the reply: keep them up front.
    if dialect.is_some_and(|d| d.provider == "Tencent Cloud SES")
        && let Some(msg) = tencent_message(r.text)
    {
        reply = format!("{msg} ({reply})");
    }
    let class = if r.esc[0] == 4 || r.esc[0] == 5 {
        r.esc[0]
    } else {
        (r.code / 100) as u8
    };
    let permanent = match category {
        Category::Throttled
        | Category::QuotaExceeded
        | Category::Greylisted
        | Category::Disconnected
        | Category::ReadTimeout => false,
        Category::Auth => class == 5,
        _ => class != 4,
    };
    Failure {
        stage,
        category,
        smtp_code: Some(r.code),
        enhanced_code: enhanced,
        retry_after: retry_after(r.text),
        reply,
        permanent,
    }
}

/// RFC 3463 enhanced codes: `class.subject.detail`.
fn by_enhanced(stage: Stage, esc: [u8; 3]) -> Option<Category> {
    let [class, subject, detail] = esc;
    if class != 4 && class != 5 {
        return None;
    }
    Some(match (subject, detail) {
        (1, 1) | (1, 2) | (1, 6) | (1, 10) => Category::RecipientUnknown,
        (1, 7) | (1, 8) => Category::SenderRefused,
        (1, _) if stage == Stage::MailFrom => Category::SenderRefused,
        (1, _) => Category::RecipientUnknown,
        (2, 2) => Category::MailboxFull,
        (2, 3) | (3, 4) => Category::MessageTooLarge,
        (2, _) if class == 5 => Category::RecipientUnknown,
        (5, _) => Category::Protocol,
        (6, _) => Category::ContentRejected,
        (7, 0) | (7, 8) if stage == Stage::Auth => Category::Auth,
        (7, _) => Category::Policy,
        _ => return None,
    })
}

/// RFC 5321 §4.2 basic codes, by stage.
fn by_code(stage: Stage, code: u16) -> Category {
    match (stage, code) {
        (Stage::Auth, 530 | 534 | 535 | 538) => Category::Auth,
        (_, 500..=504) => Category::Protocol,
        (Stage::MailFrom, 500..=599) => Category::SenderRefused,
        (Stage::RcptTo, 550 | 551 | 553) => Category::RecipientUnknown,
        (Stage::RcptTo, 552) => Category::MailboxFull,
        (_, 552) => Category::MessageTooLarge,
        (Stage::Data, 554) => Category::ContentRejected,
        (Stage::Data, 550) => Category::Policy,
        (_, 400..=499) => Category::OtherTransient,
        _ => Category::OtherPermanent,
    }
}

/// Finds "try again in 5 minutes", "retry after 30 seconds", "wait 2 min" in a reply.
pub fn retry_after(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    for phrase in [
        "try again in ",
        "retry in ",
        "try again after ",
        "retry after ",
        "wait ",
    ] {
        let mut rest = lower.as_str();
        while let Some(pos) = rest.find(phrase) {
            rest = &rest[pos + phrase.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let Ok(n) = digits.parse::<u64>() else {
                continue;
            };
            let unit = rest[digits.len()..].trim_start();
            // The number comes from the server: saturate, never overflow.
            let secs = if unit.starts_with("s") {
                n
            } else if unit.starts_with("min") || unit.starts_with("m ") || unit == "m" {
                n.saturating_mul(60)
            } else if unit.starts_with("h") {
                n.saturating_mul(3600)
            } else {
                continue;
            };
            return Some(Duration::from_secs(secs.min(24 * 3600)));
        }
    }
    None
}

#[cfg(test)]
mod tests;
