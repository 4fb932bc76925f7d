//! Resend errors to edm's categories: one table, checked in order, the
//! first row that matches wins. Each row quotes the reply it handles, from
//! Resend's error reference (resend.com/docs/api-reference/errors) and its
//! idempotency page (resend.com/docs/dashboard/emails/idempotency-keys);
//! docs/transports.md is the manual for this table, keep the two together.
//!
//! Resend answers an error with an HTTP status and a JSON body
//! `{"statusCode": 403, "name": "validation_error", "message": "..."}`.

use std::time::Duration;

use edm_model::{Category, Failure, Stage};

/// A Resend error reply as the table sees it.
#[derive(Clone, Copy, Debug)]
pub struct ApiError<'a> {
    /// HTTP status.
    pub status: u16,
    /// The error's `name` (`validation_error`), empty when none was sent.
    pub name: &'a str,
    /// The error's `message`, empty when none was sent.
    pub message: &'a str,
}

/// One row of the table.
pub struct Row {
    /// Matches the error.
    pub matches: fn(&ApiError<'_>) -> bool,
    /// What it is.
    pub category: Category,
    /// Where it is reported: `Auth` for the key, `MailFrom` for the sender,
    /// the domain or the account (both stop the run when permanent), `Data`
    /// for the message.
    pub stage: Stage,
    /// False when retrying can help.
    pub permanent: bool,
}

fn msg_has(e: &ApiError<'_>, needle: &str) -> bool {
    e.message.to_ascii_lowercase().contains(needle)
}

fn name_is(e: &ApiError<'_>, names: &[&str]) -> bool {
    names.iter().any(|n| e.name.eq_ignore_ascii_case(n))
}

/// `409 invalid_idempotent_request`: "Same idempotency key used with a
/// different request payload." edm sends the same body for a recipient on
/// every attempt, so this means a first request under this key went through:
/// the caller records the recipient sent (flagged in doubt), never failed.
pub fn is_invalid_idempotent_request(e: &ApiError<'_>) -> bool {
    e.status == 409 && name_is(e, &["invalid_idempotent_request"])
}

/// The table.
pub static TABLE: &[Row] = &[
    // `409 concurrent_idempotent_requests`: "Same idempotency key used while
    // original request is still in progress." Safe to retry later.
    Row {
        matches: |e| e.status == 409 && name_is(e, &["concurrent_idempotent_requests"]),
        category: Category::OtherTransient,
        stage: Stage::Data,
        permanent: false,
    },
    // `429 daily_quota_exceeded`: "You have reached your daily email sending
    // quota." The run pauses, nobody fails.
    Row {
        matches: |e| {
            name_is(e, &["daily_quota_exceeded"]) || msg_has(e, "daily email sending quota")
        },
        category: Category::QuotaExceeded,
        stage: Stage::Data,
        permanent: false,
    },
    // `429 rate_limit_exceeded`: "Too many requests. Please limit the number
    // of requests per second." Slow down, honouring `retry-after`.
    Row {
        matches: |e| e.status == 429 || name_is(e, &["rate_limit_exceeded"]),
        category: Category::Throttled,
        stage: Stage::Data,
        permanent: false,
    },
    // `401 missing_api_key`, `401 restricted_api_key`, `403 invalid_api_key`
    // ("API key is invalid."): the key.
    Row {
        matches: |e| {
            name_is(
                e,
                &["missing_api_key", "restricted_api_key", "invalid_api_key"],
            ) || e.status == 401
        },
        category: Category::Auth,
        stage: Stage::Auth,
        permanent: true,
    },
    // `403 validation_error: You can only send testing emails to your own
    // email address (...)` (the sandbox, no verified domain), `403
    // validation_error: The acme.example domain is not verified. Please, add
    // and verify your domain.`, `403 invalid_from_address`, `403
    // invalid_to_address`: the account or the sender, the same for everyone.
    Row {
        matches: |e| {
            e.status == 403
                && (msg_has(e, "only send testing emails")
                    || msg_has(e, "is not verified")
                    || name_is(e, &["invalid_from_address", "invalid_to_address"]))
        },
        category: Category::SenderRefused,
        stage: Stage::MailFrom,
        permanent: true,
    },
    // Any other 403: a key without the right to do this.
    Row {
        matches: |e| e.status == 403,
        category: Category::Auth,
        stage: Stage::Auth,
        permanent: true,
    },
    // `500 application_error`, `500 internal_server_error`, 502/503: try
    // again.
    Row {
        matches: |e| e.status >= 500,
        category: Category::OtherTransient,
        stage: Stage::Data,
        permanent: false,
    },
    // `422 validation_error`, `422 missing_required_field`, `422
    // invalid_attachment`, `400 validation_error`, and any other refusal:
    // permanent for this recipient. If it is the same for everyone, the
    // engine's identical-refusals rule stops the run.
    Row {
        matches: |_| true,
        category: Category::OtherPermanent,
        stage: Stage::Data,
        permanent: true,
    },
];

/// Classifies a Resend error reply; `retry_after` is what the reply's
/// headers asked for (`retry-after`, else `ratelimit-reset`).
pub fn classify(e: &ApiError<'_>, retry_after: Option<Duration>) -> Failure {
    // The last row matches everything: the table is exhaustive.
    let row = TABLE
        .iter()
        .find(|r| (r.matches)(e))
        .unwrap_or(&TABLE[TABLE.len() - 1]);
    let name = if e.name.is_empty() { "error" } else { e.name };
    let reply = if e.message.is_empty() {
        format!("HTTP {} {name}", e.status)
    } else {
        format!("HTTP {} {name}: {}", e.status, e.message)
    };
    let mut f = Failure::local(row.stage, row.category, reply);
    f.permanent = row.permanent;
    if !f.permanent {
        f.retry_after = retry_after;
    }
    f
}

/// How long the reply asks to wait: `retry-after` in seconds (Resend sends
/// seconds), else `ratelimit-reset` (seconds until the window resets, IETF
/// draft-ietf-httpapi-ratelimit-headers, which Resend follows) when
/// `ratelimit-remaining` is 0.
pub fn wait_asked(
    retry_after: Option<&str>,
    remaining: Option<&str>,
    reset: Option<&str>,
) -> Option<Duration> {
    let secs = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            // A provider's wait beyond an hour is not a rate limit; the
            // retry policy's own limits apply.
            .map(|s| Duration::from_secs_f64(s.min(3600.0)))
    };
    if let Some(d) = retry_after.and_then(secs) {
        return Some(d);
    }
    match remaining.map(str::trim) {
        Some("0") => reset.and_then(secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row, with the reply it quotes.
    #[test]
    fn the_table() {
        let cases: &[(u16, &str, &str, Category, bool, bool)] = &[
            // status, name, message, category, permanent, stops the run
            (
                409,
                "concurrent_idempotent_requests",
                "Same idempotency key used while original request is still in progress.",
                Category::OtherTransient,
                false,
                false,
            ),
            (
                429,
                "daily_quota_exceeded",
                "You have reached your daily email sending quota.",
                Category::QuotaExceeded,
                false,
                false,
            ),
            (
                429,
                "rate_limit_exceeded",
                "Too many requests. Please limit the number of requests per second.",
                Category::Throttled,
                false,
                false,
            ),
            (429, "", "", Category::Throttled, false, false),
            (
                401,
                "missing_api_key",
                "Missing API key in the authorization header.",
                Category::Auth,
                true,
                true,
            ),
            (
                401,
                "restricted_api_key",
                "This API key is restricted to only send emails.",
                Category::Auth,
                true,
                true,
            ),
            (
                403,
                "invalid_api_key",
                "API key is invalid.",
                Category::Auth,
                true,
                true,
            ),
            (
                403,
                "validation_error",
                "You can only send testing emails to your own email address (me@acme.example).",
                Category::SenderRefused,
                true,
                true,
            ),
            (
                403,
                "validation_error",
                "The acme.example domain is not verified. Please, add and verify your domain.",
                Category::SenderRefused,
                true,
                true,
            ),
            (
                403,
                "invalid_from_address",
                "The from address is not valid.",
                Category::SenderRefused,
                true,
                true,
            ),
            (403, "", "", Category::Auth, true, true),
            (
                500,
                "application_error",
                "An unexpected error occurred.",
                Category::OtherTransient,
                false,
                false,
            ),
            (503, "", "", Category::OtherTransient, false, false),
            (
                422,
                "validation_error",
                "Invalid `to` field.",
                Category::OtherPermanent,
                true,
                false,
            ),
            (
                422,
                "missing_required_field",
                "Missing `subject` field.",
                Category::OtherPermanent,
                true,
                false,
            ),
            (
                400,
                "invalid_idempotency_key",
                "The key must be between 1-256 chars.",
                Category::OtherPermanent,
                true,
                false,
            ),
        ];
        for &(status, name, message, category, permanent, stops) in cases {
            let f = classify(
                &ApiError {
                    status,
                    name,
                    message,
                },
                Some(Duration::from_secs(3)),
            );
            assert_eq!(f.category, category, "{status} {name} {message}");
            assert_eq!(f.permanent, permanent, "{status} {name} {message}");
            assert_eq!(f.stops_run(), stops, "{status} {name} {message}");
            assert!(f.reply.contains(message), "the provider's message is kept");
            assert_eq!(
                f.retry_after.is_some(),
                !permanent,
                "a wait only matters for a retry: {status} {name}"
            );
        }
        let dup = ApiError {
            status: 409,
            name: "invalid_idempotent_request",
            message: "Same idempotency key used with a different request payload.",
        };
        assert!(is_invalid_idempotent_request(&dup));
        assert!(!is_invalid_idempotent_request(&ApiError {
            status: 409,
            name: "concurrent_idempotent_requests",
            message: ""
        }));
    }

    #[test]
    fn the_wait_comes_from_retry_after_or_the_ratelimit_window() {
        let s = Duration::from_secs;
        assert_eq!(wait_asked(Some("2"), Some("0"), Some("9")), Some(s(2)));
        assert_eq!(wait_asked(None, Some("0"), Some("1")), Some(s(1)));
        assert_eq!(wait_asked(None, Some("1"), Some("1")), None);
        assert_eq!(wait_asked(Some("soon"), None, None), None);
        assert_eq!(wait_asked(Some("-3"), None, None), None);
        assert_eq!(wait_asked(Some("86400"), None, None), Some(s(3600)));
    }
}
