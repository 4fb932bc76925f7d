use super::*;

fn reply(stage: Stage, code: u16, esc: [u8; 3], text: &str) -> Failure {
    classify_reply(stage, ReplyRef { code, esc, text })
}

fn resp(code: u16, esc: [u8; 3], text: &str) -> smtp_proto::Response<String> {
    smtp_proto::Response {
        code,
        esc,
        message: text.to_string(),
    }
}

// --- one test per arm of classify_error ---

#[test]
fn io_refused_is_connect_refused() {
    let e = mail_send::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
    let f = classify_error(Stage::Connect, &e);
    assert_eq!(f.category, Category::ConnectRefused);
    assert!(f.is_transient());
}

#[test]
fn io_reset_mid_session_is_disconnected() {
    let e = mail_send::Error::Io(io::Error::from(io::ErrorKind::ConnectionReset));
    assert_eq!(
        classify_error(Stage::Data, &e).category,
        Category::Disconnected
    );
    let e = mail_send::Error::Io(io::Error::from(io::ErrorKind::TimedOut));
    assert_eq!(
        classify_error(Stage::RcptTo, &e).category,
        Category::ReadTimeout
    );
    assert_eq!(
        classify_error(Stage::Connect, &e).category,
        Category::ConnectTimeout
    );
}

#[test]
fn tls_error() {
    let e = mail_send::Error::Tls(Box::new(rustls_error()));
    let f = classify_error(Stage::Tls, &e);
    assert_eq!(f.category, Category::Tls);
    assert!(f.is_transient());
}

fn rustls_error() -> tokio_rustls::rustls::Error {
    tokio_rustls::rustls::Error::General("bad certificate".into())
}

#[test]
fn base64_error_is_protocol() {
    let e = mail_send::Error::Base64(base64_error());
    assert_eq!(classify_error(Stage::Auth, &e).category, Category::Protocol);
}

fn base64_error() -> encodify::Error {
    encodify::Error::Truncated { offset: 3 }
}

#[test]
fn auth_challenge_error_is_auth() {
    let e = mail_send::Error::Auth(mail_send::smtp::auth::Error::InvalidChallenge);
    let f = classify_error(Stage::Auth, &e);
    assert_eq!(f.category, Category::Auth);
    assert!(f.permanent);
}

#[test]
fn unparseable_reply_is_disconnected() {
    let f = classify_error(Stage::Data, &mail_send::Error::UnparseableReply);
    assert_eq!(f.category, Category::Disconnected);
    assert!(f.is_transient());
}

#[test]
fn unexpected_reply_goes_through_reply_classifier() {
    let e = mail_send::Error::UnexpectedReply(resp(550, [5, 1, 1], "No such user"));
    let f = classify_error(Stage::RcptTo, &e);
    assert_eq!(f.category, Category::RecipientUnknown);
    assert_eq!(f.smtp_code, Some(550));
    assert_eq!(f.enhanced_code.as_deref(), Some("5.1.1"));
    assert_eq!(f.reply, "No such user");
    assert!(f.permanent);
}

#[test]
fn authentication_failed_535_is_permanent_auth() {
    let e = mail_send::Error::AuthenticationFailed(resp(
        535,
        [5, 7, 8],
        "Authentication credentials invalid",
    ));
    let f = classify_error(Stage::Auth, &e);
    assert_eq!(f.category, Category::Auth);
    assert!(f.permanent);
    assert_eq!(f.stage, Stage::Auth);
}

#[test]
fn authentication_failed_454_is_transient() {
    let e = mail_send::Error::AuthenticationFailed(resp(
        454,
        [4, 7, 0],
        "Temporary authentication failure",
    ));
    let f = classify_error(Stage::Auth, &e);
    assert!(f.is_transient());
}

#[test]
fn invalid_tls_name() {
    let f = classify_error(Stage::Tls, &mail_send::Error::InvalidTLSName);
    assert_eq!(f.category, Category::Tls);
}

#[test]
fn missing_credentials_and_unsupported_mechanism_are_auth() {
    for e in [
        mail_send::Error::MissingCredentials,
        mail_send::Error::UnsupportedAuthMechanism,
    ] {
        let f = classify_error(Stage::Auth, &e);
        assert_eq!(f.category, Category::Auth);
        assert!(f.permanent);
    }
}

#[test]
fn missing_envelope_parts_are_protocol() {
    for e in [
        mail_send::Error::MissingMailFrom,
        mail_send::Error::MissingRcptTo,
    ] {
        assert_eq!(
            classify_error(Stage::MailFrom, &e).category,
            Category::Protocol
        );
    }
}

#[test]
fn timeout_depends_on_stage() {
    assert_eq!(
        classify_error(Stage::Greeting, &mail_send::Error::Timeout).category,
        Category::ConnectTimeout
    );
    assert_eq!(
        classify_error(Stage::Data, &mail_send::Error::Timeout).category,
        Category::ReadTimeout
    );
    assert!(classify_error(Stage::Data, &mail_send::Error::Timeout).is_transient());
}

#[test]
fn missing_starttls_is_tls() {
    let f = classify_error(Stage::Ehlo, &mail_send::Error::MissingStartTls);
    assert_eq!(f.category, Category::Tls);
    assert_eq!(f.stage, Stage::Tls);
}

// --- replies: enhanced codes, basic codes, dialects ---

#[test]
fn tencent_rate_limit_554_is_throttled_and_transient() {
    let text = r#"Error: transaction failed, blame it on the weather: ##SES-response-json: {"Response":{"Error":{"Code":"RequestLimitExceeded.SmtpRateLimit","Message":"smtp rate limit"},"RequestId":"abc"}}"#;
    let f = reply(Stage::Data, 554, [5, 0, 0], text);
    assert_eq!(f.category, Category::Throttled);
    assert!(f.is_transient());
    assert_eq!(f.smtp_code, Some(554));
}

#[test]
fn tencent_failed_operation_keeps_message_and_is_permanent() {
    let text = r#"Error: transaction failed: ##SES-response-json: {"Response":{"Error":{"Code":"FailedOperation.EmailTooLarge","Message":"The email is too large"}}}"#;
    let f = reply(Stage::Data, 554, [5, 0, 0], text);
    assert_eq!(f.category, Category::MessageTooLarge);
    assert!(f.permanent);
    assert!(f.reply.starts_with("The email is too large"), "{}", f.reply);

    let text = r#"Error: ##SES-response-json: {"Response":{"Error":{"Code":"FailedOperation","Message":"msg.Body is null"}}}"#;
    let f = reply(Stage::Data, 554, [5, 0, 0], text);
    assert_eq!(f.category, Category::ContentRejected);
    assert!(f.reply.starts_with("msg.Body is null"));
}

#[test]
fn tencent_long_line_is_content() {
    let f = reply(
        Stage::Data,
        554,
        [0, 0, 0],
        "too longer line in input stream",
    );
    assert_eq!(f.category, Category::ContentRejected);
    assert!(f.permanent);
}

#[test]
fn ses_throttling_and_quota() {
    let f = reply(
        Stage::Data,
        454,
        [0, 0, 0],
        "Throttling failure: Maximum sending rate exceeded.",
    );
    assert_eq!(f.category, Category::Throttled);
    let f = reply(
        Stage::MailFrom,
        454,
        [0, 0, 0],
        "Throttling failure: Daily message quota exceeded.",
    );
    assert_eq!(f.category, Category::QuotaExceeded);
    assert!(f.is_transient());
}

#[test]
fn gmail_rate_replies_are_throttled() {
    let f = reply(
        Stage::RcptTo,
        421,
        [4, 7, 28],
        "Our system has detected an unusual rate of unsolicited mail",
    );
    assert_eq!(f.category, Category::Throttled);
    let f = reply(
        Stage::RcptTo,
        450,
        [4, 2, 1],
        "The user you are trying to contact is receiving mail at a rate that prevents additional messages",
    );
    assert_eq!(f.category, Category::Throttled);
    let f = reply(
        Stage::MailFrom,
        421,
        [4, 7, 0],
        "Try again later, sending rate too high",
    );
    assert_eq!(f.category, Category::Throttled);
}

#[test]
fn office365_rate_and_quota() {
    assert_eq!(
        reply(
            Stage::Data,
            451,
            [4, 5, 127],
            "Excessive message rate from sender"
        )
        .category,
        Category::Throttled
    );
    let f = reply(
        Stage::Data,
        550,
        [5, 7, 255],
        "Service unavailable. Access denied, traffic not accepted from this IP",
    );
    assert_eq!(f.category, Category::Throttled);
    assert!(f.is_transient());
    let f = reply(
        Stage::Data,
        554,
        [5, 2, 0],
        "STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
    );
    assert_eq!(f.category, Category::QuotaExceeded);
}

#[test]
fn enhanced_code_takes_precedence_over_basic() {
    // 550 alone at RCPT would be recipient_unknown; 5.7.1 says policy.
    let f = reply(Stage::RcptTo, 550, [5, 7, 1], "Message rejected as spam");
    assert_eq!(f.category, Category::Policy);
    let f = reply(
        Stage::Data,
        550,
        [5, 7, 26],
        "Unauthenticated email is not accepted due to DMARC policy",
    );
    assert_eq!(f.category, Category::Policy);
    assert!(f.permanent);
}

#[test]
fn mailbox_full_transient_and_permanent() {
    let f = reply(Stage::RcptTo, 452, [4, 2, 2], "Mailbox full");
    assert_eq!(f.category, Category::MailboxFull);
    assert!(f.is_transient());
    let f = reply(Stage::RcptTo, 552, [5, 2, 2], "Mailbox full");
    assert_eq!(f.category, Category::MailboxFull);
    assert!(f.permanent);
}

#[test]
fn size_and_unknown_recipient() {
    assert_eq!(
        reply(Stage::Data, 552, [5, 3, 4], "Message too big").category,
        Category::MessageTooLarge
    );
    assert_eq!(
        reply(Stage::Data, 552, [0, 0, 0], "Message too big").category,
        Category::MessageTooLarge
    );
    assert_eq!(
        reply(Stage::RcptTo, 550, [5, 1, 10], "Null MX").category,
        Category::RecipientUnknown
    );
    assert_eq!(
        reply(Stage::RcptTo, 550, [0, 0, 0], "No such user").category,
        Category::RecipientUnknown
    );
}

#[test]
fn basic_codes_by_stage() {
    assert_eq!(
        reply(Stage::MailFrom, 553, [0, 0, 0], "Sender refused").category,
        Category::SenderRefused
    );
    assert_eq!(
        reply(Stage::Data, 554, [0, 0, 0], "Rejected").category,
        Category::ContentRejected
    );
    assert_eq!(
        reply(Stage::RcptTo, 503, [5, 5, 1], "Bad sequence").category,
        Category::Protocol
    );
    let f = reply(Stage::RcptTo, 451, [4, 3, 0], "Local error");
    assert_eq!(f.category, Category::OtherTransient);
    assert!(f.is_transient());
    let f = reply(Stage::Data, 521, [0, 0, 0], "Go away");
    assert_eq!(f.category, Category::OtherPermanent);
    assert!(f.permanent);
}

#[test]
fn greylisting() {
    let f = reply(
        Stage::RcptTo,
        450,
        [4, 7, 1],
        "Greylisted, please try again in 300 seconds",
    );
    assert_eq!(f.category, Category::Greylisted);
    assert_eq!(f.retry_after, Some(Duration::from_secs(300)));
}

#[test]
fn retry_after_phrases() {
    assert_eq!(
        retry_after("try again in 5 minutes"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        retry_after("Please retry after 30s"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        retry_after("try again in 2 hours"),
        Some(Duration::from_secs(7200))
    );
    assert_eq!(retry_after("try again later"), None);
}

#[test]
fn reply_text_kept_whole() {
    let text = "line one\nline two";
    assert_eq!(reply(Stage::Data, 451, [4, 3, 0], text).reply, text);
}

#[test]
fn retry_after_saturates_on_huge_numbers() {
    // The number comes from the server: no overflow panic, capped at a day.
    let day = Some(Duration::from_secs(24 * 3600));
    assert_eq!(retry_after("try again in 18446744073709551 minutes"), day);
    assert_eq!(retry_after("try again in 18446744073709551615 hours"), day);
}

#[test]
fn untrusted_certificate_is_tls_certificate() {
    use tokio_rustls::rustls::{CertificateError, Error as R};
    let e = mail_send::Error::Tls(Box::new(R::InvalidCertificate(
        CertificateError::UnknownIssuer,
    )));
    let f = classify_error(Stage::Tls, &e);
    assert_eq!(f.category, Category::TlsCertificate);
    assert!(f.category.fails_fast());
}

#[test]
fn no_route_is_network_unreachable() {
    for kind in [
        io::ErrorKind::NetworkUnreachable,
        io::ErrorKind::HostUnreachable,
    ] {
        let e = mail_send::Error::Io(io::Error::from(kind));
        assert_eq!(
            classify_error(Stage::Connect, &e).category,
            Category::NetworkUnreachable
        );
    }
}

#[test]
fn refusals_that_hit_every_message_stop_the_run() {
    let ses = reply(
        Stage::Data,
        554,
        [0, 0, 0],
        "Message rejected: Email address is not verified. The following identities failed the check in region US-EAST-1: news@acme.example",
    );
    assert_eq!(ses.category, Category::SenderRefused);
    assert!(ses.stops_run());
    let tencent = reply(
        Stage::Data,
        554,
        [5, 0, 0],
        r#"Error: ##SES-response-json: {"Response":{"Error":{"Code":"FailedOperation.MissingFrom","Message":"msg.From is null"}}}"#,
    );
    assert_eq!(tencent.category, Category::SenderRefused);
    assert!(tencent.stops_run());
    let auth = reply(Stage::MailFrom, 530, [5, 7, 0], "Authentication required");
    assert_eq!(auth.category, Category::Auth);
    assert!(auth.stops_run());
    let sender = reply(
        Stage::MailFrom,
        553,
        [5, 1, 8],
        "Sender domain does not exist",
    );
    assert!(sender.stops_run());
    let policy_at_mail = reply(Stage::MailFrom, 550, [5, 7, 1], "Sender blocked");
    assert!(
        policy_at_mail.stops_run(),
        "any permanent refusal at MAIL FROM"
    );
    let too_big = reply(Stage::MailFrom, 552, [5, 3, 4], "too big");
    assert!(!too_big.stops_run(), "SIZE is about this message");
    let temp = reply(Stage::MailFrom, 451, [4, 3, 0], "try later");
    assert!(!temp.stops_run());
    let unknown = reply(Stage::RcptTo, 550, [5, 1, 1], "No such user");
    assert!(!unknown.stops_run());
}
