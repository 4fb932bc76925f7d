//! Amazon SES v2 errors to edm's categories: one table, checked in order,
//! the first row that matches wins. Each row quotes the reply it handles;
//! docs/transports.md is the manual for this table, keep the two together.
//!
//! SES v2 answers an error with an HTTP status, the error code in the
//! `x-amzn-ErrorType` header (`MessageRejected:http://internal.amazon.com/...`)
//! and a JSON body `{"message": "..."}` (some services say `Message`, and
//! `__type` or `code` for the code).

use edm_model::{Category, Failure, Stage};

/// An SES error reply as the table sees it.
#[derive(Clone, Copy, Debug)]
pub struct ApiError<'a> {
    /// HTTP status.
    pub status: u16,
    /// The error code (`MessageRejected`), empty when none was sent.
    pub code: &'a str,
    /// The provider's message, empty when none was sent.
    pub message: &'a str,
}

/// One row of the table.
pub struct Row {
    /// Matches the error.
    pub matches: fn(&ApiError<'_>) -> bool,
    /// What it is.
    pub category: Category,
    /// Where it is reported: `Auth` for credentials, `MailFrom` for the
    /// sender or the account (both stop the run when permanent), `Data` for
    /// the message.
    pub stage: Stage,
    /// False when retrying can help.
    pub permanent: bool,
}

fn msg_has(e: &ApiError<'_>, needle: &str) -> bool {
    e.message.to_ascii_lowercase().contains(needle)
}

fn code_is(e: &ApiError<'_>, codes: &[&str]) -> bool {
    codes.iter().any(|c| e.code.eq_ignore_ascii_case(c))
}

/// The table.
pub static TABLE: &[Row] = &[
    // `400 LimitExceededException` / v1 `Throttling: Daily message quota
    // exceeded.`: the 24-hour quota is used up. The run pauses, nobody fails.
    Row {
        matches: |e| {
            msg_has(e, "daily message quota exceeded") || code_is(e, &["LimitExceededException"])
        },
        category: Category::QuotaExceeded,
        stage: Stage::Data,
        permanent: false,
    },
    // `429 TooManyRequestsException: Too many requests have been made`,
    // `400 Throttling: Maximum sending rate exceeded.`: slow down.
    Row {
        matches: |e| {
            code_is(
                e,
                &[
                    "TooManyRequestsException",
                    "Throttling",
                    "ThrottlingException",
                ],
            ) || e.status == 429
                || msg_has(e, "maximum sending rate exceeded")
        },
        category: Category::Throttled,
        stage: Stage::Data,
        permanent: false,
    },
    // `400 MessageRejected: Email address is not verified. The following
    // identities failed the check in region US-EAST-1: news@acme.example`:
    // the sender is no verified identity, every message would be refused.
    // moto says `Did not have authority to send from email news@acme.example`.
    Row {
        matches: |e| {
            msg_has(e, "email address is not verified")
                || msg_has(e, "did not have authority to send from")
        },
        category: Category::SenderRefused,
        stage: Stage::MailFrom,
        permanent: true,
    },
    // `400 MailFromDomainNotVerifiedException: The MAIL FROM domain is not
    // verified`.
    Row {
        matches: |e| code_is(e, &["MailFromDomainNotVerifiedException"]),
        category: Category::SenderRefused,
        stage: Stage::MailFrom,
        permanent: true,
    },
    // `400 AccountSuspendedException: The message can't be sent because the
    // account's ability to send email has been permanently restricted.`,
    // `400 SendingPausedException: The message can't be sent because the
    // account's ability to send email is currently paused.`: the account
    // refuses everyone.
    Row {
        matches: |e| code_is(e, &["AccountSuspendedException", "SendingPausedException"]),
        category: Category::SenderRefused,
        stage: Stage::MailFrom,
        permanent: true,
    },
    // `403 UnrecognizedClientException: The security token included in the
    // request is invalid.`, `403 InvalidSignatureException: The request
    // signature we calculated does not match the signature you provided.`,
    // `403 AccessDeniedException: User ... is not authorized to perform
    // ses:SendEmail`, expired temporary credentials: the credentials.
    Row {
        matches: |e| {
            code_is(
                e,
                &[
                    "UnrecognizedClientException",
                    "InvalidSignatureException",
                    "SignatureDoesNotMatch",
                    "AccessDeniedException",
                    "AccessDenied",
                    "InvalidClientTokenId",
                    "IncompleteSignature",
                    "MissingAuthenticationToken",
                    "ExpiredToken",
                    "ExpiredTokenException",
                ],
            ) || e.status == 401
                || e.status == 403
        },
        category: Category::Auth,
        stage: Stage::Auth,
        permanent: true,
    },
    // `400 MessageRejected: ...` (a virus, a header SES refuses): about this
    // message. If it is the same for everyone, the engine's identical-refusals
    // rule stops the run.
    Row {
        matches: |e| code_is(e, &["MessageRejected"]),
        category: Category::ContentRejected,
        stage: Stage::Data,
        permanent: true,
    },
    // `500 InternalFailure`, `503 ServiceUnavailable`: try again.
    Row {
        matches: |e| e.status >= 500,
        category: Category::OtherTransient,
        stage: Stage::Data,
        permanent: false,
    },
    // `400 BadRequestException: Missing final '@domain'`, `404
    // NotFoundException: Configuration set <x> does not exist.`, and any other
    // refusal: permanent for the message.
    Row {
        matches: |_| true,
        category: Category::OtherPermanent,
        stage: Stage::Data,
        permanent: true,
    },
];

/// The error code out of `x-amzn-ErrorType` (`Code:uri` → `Code`) or the body.
pub fn error_code(header: Option<&str>, body: &serde_json::Value) -> String {
    if let Some(h) = header {
        let code = h.split(':').next().unwrap_or("").trim();
        if !code.is_empty() {
            return code.to_string();
        }
    }
    for key in ["__type", "code", "Code"] {
        if let Some(s) = body.get(key).and_then(|v| v.as_str()) {
            // `__type` may be `com.amazonaws.ses#MessageRejected`.
            return s.rsplit('#').next().unwrap_or(s).to_string();
        }
    }
    String::new()
}

/// The message out of the body.
pub fn error_message(body: &serde_json::Value) -> String {
    ["message", "Message"]
        .iter()
        .find_map(|k| body.get(k).and_then(|v| v.as_str()))
        .unwrap_or("")
        .to_string()
}

/// Classifies an SES error reply.
pub fn classify(e: &ApiError<'_>) -> Failure {
    // The last row matches everything: the table is exhaustive.
    let row = TABLE
        .iter()
        .find(|r| (r.matches)(e))
        .unwrap_or(&TABLE[TABLE.len() - 1]);
    let code = if e.code.is_empty() { "error" } else { e.code };
    let reply = if e.message.is_empty() {
        format!("HTTP {} {code}", e.status)
    } else {
        format!("HTTP {} {code}: {}", e.status, e.message)
    };
    let mut f = Failure::local(row.stage, row.category, reply);
    f.permanent = row.permanent;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(status: u16, code: &str, message: &str) -> Failure {
        classify(&ApiError {
            status,
            code,
            message,
        })
    }

    /// Every row, with the reply it quotes.
    #[test]
    fn the_table() {
        let cases: &[(u16, &str, &str, Category, bool, bool)] = &[
            // status, code, message, category, permanent, stops the run
            (
                400,
                "LimitExceededException",
                "Daily message quota exceeded.",
                Category::QuotaExceeded,
                false,
                false,
            ),
            (
                400,
                "Throttling",
                "Daily message quota exceeded.",
                Category::QuotaExceeded,
                false,
                false,
            ),
            (
                429,
                "TooManyRequestsException",
                "Too many requests have been made",
                Category::Throttled,
                false,
                false,
            ),
            (
                400,
                "Throttling",
                "Maximum sending rate exceeded.",
                Category::Throttled,
                false,
                false,
            ),
            (429, "", "", Category::Throttled, false, false),
            (
                400,
                "MessageRejected",
                "Email address is not verified. The following identities failed the check in region US-EAST-1: news@acme.example",
                Category::SenderRefused,
                true,
                true,
            ),
            (
                400,
                "MessageRejected",
                "Did not have authority to send from email news@acme.example",
                Category::SenderRefused,
                true,
                true,
            ),
            (
                400,
                "MailFromDomainNotVerifiedException",
                "The MAIL FROM domain is not verified",
                Category::SenderRefused,
                true,
                true,
            ),
            (
                400,
                "AccountSuspendedException",
                "The message can't be sent because the account's ability to send email has been permanently restricted.",
                Category::SenderRefused,
                true,
                true,
            ),
            (
                400,
                "SendingPausedException",
                "The message can't be sent because the account's ability to send email is currently paused.",
                Category::SenderRefused,
                true,
                true,
            ),
            (
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                Category::Auth,
                true,
                true,
            ),
            (
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
                Category::Auth,
                true,
                true,
            ),
            (
                403,
                "AccessDeniedException",
                "User is not authorized to perform ses:SendEmail",
                Category::Auth,
                true,
                true,
            ),
            (403, "", "", Category::Auth, true, true),
            (
                400,
                "MessageRejected",
                "Message contains a virus.",
                Category::ContentRejected,
                true,
                false,
            ),
            (
                500,
                "InternalFailure",
                "",
                Category::OtherTransient,
                false,
                false,
            ),
            (
                503,
                "ServiceUnavailable",
                "",
                Category::OtherTransient,
                false,
                false,
            ),
            (
                400,
                "BadRequestException",
                "Missing final '@domain'",
                Category::OtherPermanent,
                true,
                false,
            ),
            (
                404,
                "NotFoundException",
                "Configuration set x does not exist.",
                Category::OtherPermanent,
                true,
                false,
            ),
        ];
        for &(status, code, message, category, permanent, stops) in cases {
            let f = c(status, code, message);
            assert_eq!(f.category, category, "{status} {code} {message}");
            assert_eq!(f.permanent, permanent, "{status} {code} {message}");
            assert_eq!(f.stops_run(), stops, "{status} {code} {message}");
            assert!(f.reply.contains(message), "the provider's message is kept");
        }
    }

    #[test]
    fn the_code_comes_from_the_header_or_the_body() {
        let empty = serde_json::json!({});
        assert_eq!(
            error_code(
                Some("MessageRejected:http://internal.amazon.com/coral/com.amazonaws.sesv2/"),
                &empty
            ),
            "MessageRejected"
        );
        let body = serde_json::json!({"__type": "com.amazonaws.ses#TooManyRequestsException", "Message": "slow"});
        assert_eq!(error_code(None, &body), "TooManyRequestsException");
        assert_eq!(error_message(&body), "slow");
        assert_eq!(error_code(None, &empty), "");
    }
}
