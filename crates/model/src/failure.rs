//! Failures as data: the stage of the SMTP conversation, the category a user
//! sees, and the server's reply kept whole. Persisted, so plain and serialisable.

use std::fmt;
use std::time::Duration;

/// Where in the SMTP conversation (or before it) something failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the CSV row or validating the address.
    Ingest,
    /// Rendering templates or building MIME.
    Render,
    /// TCP connect (and DNS).
    Connect,
    /// Waiting for the 220 greeting.
    Greeting,
    /// STARTTLS or the implicit TLS handshake.
    Tls,
    /// EHLO / HELO.
    Ehlo,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA, the body, and the final reply.
    Data,
    /// RSET or QUIT between transactions.
    Reset,
}

impl Stage {
    /// Every stage.
    pub const ALL: [Stage; 11] = [
        Stage::Ingest,
        Stage::Render,
        Stage::Connect,
        Stage::Greeting,
        Stage::Tls,
        Stage::Ehlo,
        Stage::Auth,
        Stage::MailFrom,
        Stage::RcptTo,
        Stage::Data,
        Stage::Reset,
    ];

    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Render => "render",
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Tls => "tls",
            Stage::Ehlo => "ehlo",
            Stage::Auth => "auth",
            Stage::MailFrom => "mail_from",
            Stage::RcptTo => "rcpt_to",
            Stage::Data => "data",
            Stage::Reset => "reset",
        }
    }

    /// Parses a persisted name.
    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for the stages before any transaction: a failure there is about
    /// the server or the connection, never about one recipient.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Stage::Connect | Stage::Greeting | Stage::Tls | Stage::Ehlo | Stage::Auth
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure categories a user sees in the dashboard, `edm status` and reports.
///
/// `docs/failures.md` is the manual for this table: keep the two together.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Nothing listens on the port.
    ConnectRefused,
    /// The TCP connect or greeting did not complete in time.
    ConnectTimeout,
    /// The host name did not resolve.
    Dns,
    /// TLS handshake or certificate failure, or STARTTLS not offered.
    Tls,
    /// Authentication refused (535) or impossible.
    Auth,
    /// MAIL FROM refused permanently.
    SenderRefused,
    /// The mailbox does not exist (5.1.1, 5.1.10).
    RecipientUnknown,
    /// Mailbox full (4.2.2 transient, 5.2.2 permanent).
    MailboxFull,
    /// Message too large (5.3.4, 552).
    MessageTooLarge,
    /// Refused by policy: spam, DMARC (5.7.x).
    Policy,
    /// The content was refused (a line too long, a body the provider rejects).
    ContentRejected,
    /// The provider asks to slow down: deferred and the rate lowered, never failed.
    Throttled,
    /// A daily or hourly sending quota is used up: the run pauses, nobody fails.
    QuotaExceeded,
    /// Greylisting: try again later.
    Greylisted,
    /// The server closed the connection mid-transaction.
    Disconnected,
    /// The server did not answer a command in time.
    ReadTimeout,
    /// The server said something that is not SMTP, or out of order.
    Protocol,
    /// Another transient (4xx) reply.
    OtherTransient,
    /// Another permanent (5xx) reply.
    OtherPermanent,
    /// The address is not valid (ingest).
    InvalidAddress,
    /// A template could not be rendered for this recipient (missing field).
    Template,
    /// The rendered message breaks the relay's limits (size, line length).
    Preflight,
    /// The address has a non-ASCII local part (`josé@…`) and the server does
    /// not offer SMTPUTF8 (RFC 6531): nothing was sent to this recipient.
    #[serde(rename = "smtputf8_required")]
    SmtpUtf8Required,
    /// The network or host of the relay cannot be reached (no route).
    NetworkUnreachable,
    /// The relay's TLS certificate is not trusted by the system (expired,
    /// self-signed, another name).
    TlsCertificate,
}

/// Whether a category is retried: one table ([`Category::retry`]) that every
/// other part of edm asks.
///
/// ```
/// use edm_model::{Category, Retry};
/// assert_eq!(Category::Throttled.retry(), Retry::Yes);
/// assert_eq!(Category::RecipientUnknown.retry(), Retry::No);
/// assert!(Category::SenderRefused.stops_run());
/// assert!(!Category::RecipientUnknown.stops_run());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Always retried (transient).
    Yes,
    /// Never retried (permanent).
    No,
    /// Decided by the reply code (4xx retried, 5xx not).
    ByCode,
}

impl Category {
    /// Every category, in display order.
    pub const ALL: [Category; 25] = [
        Category::ConnectRefused,
        Category::ConnectTimeout,
        Category::Dns,
        Category::Tls,
        Category::Auth,
        Category::SenderRefused,
        Category::RecipientUnknown,
        Category::MailboxFull,
        Category::MessageTooLarge,
        Category::Policy,
        Category::ContentRejected,
        Category::Throttled,
        Category::QuotaExceeded,
        Category::Greylisted,
        Category::Disconnected,
        Category::ReadTimeout,
        Category::Protocol,
        Category::OtherTransient,
        Category::OtherPermanent,
        Category::InvalidAddress,
        Category::Template,
        Category::Preflight,
        Category::SmtpUtf8Required,
        Category::NetworkUnreachable,
        Category::TlsCertificate,
    ];

    /// The persisted name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::ConnectRefused => "connect_refused",
            Category::ConnectTimeout => "connect_timeout",
            Category::Dns => "dns",
            Category::Tls => "tls",
            Category::Auth => "auth",
            Category::SenderRefused => "sender_refused",
            Category::RecipientUnknown => "recipient_unknown",
            Category::MailboxFull => "mailbox_full",
            Category::MessageTooLarge => "message_too_large",
            Category::Policy => "policy",
            Category::ContentRejected => "content_rejected",
            Category::Throttled => "throttled",
            Category::QuotaExceeded => "quota_exceeded",
            Category::Greylisted => "greylisted",
            Category::Disconnected => "disconnected",
            Category::ReadTimeout => "read_timeout",
            Category::Protocol => "protocol",
            Category::OtherTransient => "other_transient",
            Category::OtherPermanent => "other_permanent",
            Category::InvalidAddress => "invalid_address",
            Category::Template => "template",
            Category::Preflight => "preflight",
            Category::SmtpUtf8Required => "smtputf8_required",
            Category::NetworkUnreachable => "network_unreachable",
            Category::TlsCertificate => "tls_certificate",
        }
    }

    /// Parses a persisted name.
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether failures of this category are retried.
    pub fn retry(self) -> Retry {
        match self {
            Category::ConnectRefused
            | Category::ConnectTimeout
            | Category::Dns
            | Category::Tls
            | Category::Throttled
            | Category::QuotaExceeded
            | Category::Greylisted
            | Category::Disconnected
            | Category::ReadTimeout
            | Category::OtherTransient
            | Category::NetworkUnreachable
            | Category::TlsCertificate => Retry::Yes,
            Category::Auth
            | Category::SenderRefused
            | Category::RecipientUnknown
            | Category::MessageTooLarge
            | Category::ContentRejected
            | Category::OtherPermanent
            | Category::InvalidAddress
            | Category::Template
            | Category::Preflight
            | Category::SmtpUtf8Required => Retry::No,
            Category::MailboxFull | Category::Policy | Category::Protocol => Retry::ByCode,
        }
    }

    /// Whether a failure of this category says the server (not one recipient)
    /// is failing, and so counts toward the circuit breaker.
    pub fn trips_breaker(self) -> bool {
        matches!(
            self,
            Category::ConnectRefused
                | Category::ConnectTimeout
                | Category::Dns
                | Category::Tls
                | Category::Auth
                | Category::Disconnected
                | Category::ReadTimeout
                | Category::Protocol
                | Category::NetworkUnreachable
                | Category::TlsCertificate
        )
    }

    /// Whether this failure, met while opening a session before any session
    /// has worked in this run, says the relay cannot be used at all (a wrong
    /// host or port, no route, an untrusted certificate): the run ends after a
    /// few attempts instead of waiting out `max_outage` (docs/failures.md).
    pub fn fails_fast(self) -> bool {
        matches!(
            self,
            Category::ConnectRefused
                | Category::ConnectTimeout
                | Category::Dns
                | Category::NetworkUnreachable
                | Category::TlsCertificate
                | Category::Tls
        )
    }

    /// Whether a permanent failure of this category would hit every message
    /// of the run (the credentials or the sender are refused): the run stops
    /// at the first one, and nobody is marked failed because of it.
    pub fn stops_run(self) -> bool {
        matches!(self, Category::Auth | Category::SenderRefused)
    }

    /// Whether this category is about one recipient only (its mailbox or its
    /// address): such refusals never count toward
    /// `stop_after_identical_refusals`, however many there are in a row.
    pub fn is_recipient_specific(self) -> bool {
        matches!(
            self,
            Category::RecipientUnknown
                | Category::MailboxFull
                | Category::InvalidAddress
                | Category::SmtpUtf8Required
        )
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server's reply: the basic code, the enhanced status code when sent, the text whole.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reply {
    /// Basic status code (RFC 5321 §4.2), or the HTTP status of an API
    /// transport (the same column as [`Failure::smtp_code`]).
    pub code: u16,
    /// Enhanced status code (RFC 3463), like `5.1.1`, when the server sent one.
    pub enhanced: Option<String>,
    /// The reply text, every line, without the codes.
    pub text: String,
    /// The id the provider gave the accepted message, when it is not ours
    /// (Amazon SES replaces the Message-ID and returns its own MessageId).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// The pool member that sent it (`[[relay]] name`), set by a relay pool;
    /// `None` from a single transport (the run knows its one relay's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// One classified failure.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Failure {
    /// Where it happened.
    pub stage: Stage,
    /// What kind of failure it is.
    pub category: Category,
    /// The provider's status code, when it answered: the basic SMTP reply
    /// code (RFC 5321 §4.2) for SMTP, the HTTP status for an API transport
    /// ([`Failure::stage`] says which conversation it came from). Kept under
    /// this name because it is the store's and the reports' `smtp_code`
    /// column; one field for both, so no transport fills two.
    pub smtp_code: Option<u16>,
    /// Enhanced status code, when a server sent one.
    pub enhanced_code: Option<String>,
    /// The reply text whole, or the local error's description.
    pub reply: String,
    /// False when retrying can help.
    pub permanent: bool,
    /// The earliest next attempt the server asked for ("try again in 5 minutes").
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure that happened before SMTP (ingest, render, preflight).
    pub fn local(stage: Stage, category: Category, reason: impl Into<String>) -> Failure {
        Failure {
            stage,
            category,
            smtp_code: None,
            enhanced_code: None,
            reply: reason.into(),
            permanent: category.retry() != Retry::Yes,
            retry_after: None,
        }
    }

    /// True when retrying can help.
    pub fn is_transient(&self) -> bool {
        !self.permanent
    }

    /// True when this failure stops the run at once instead of failing the
    /// recipient: a permanent refusal of a category that would hit every
    /// message ([`Category::stops_run`]). A `454` temporary auth failure does
    /// not stop the run.
    pub fn stops_run(&self) -> bool {
        // MAIL FROM carries only the sender (and SIZE): a permanent refusal
        // there (RFC 5321 §3.3) would be the same for every recipient.
        // A refusal decided for one recipient before MAIL FROM went out
        // (`smtputf8_required`) or about one message's size is not about the
        // sender.
        self.permanent
            && (self.category.stops_run()
                || (self.stage == Stage::MailFrom
                    && self.category != Category::MessageTooLarge
                    && !self.category.is_recipient_specific()))
    }

    /// True when this failure may count toward
    /// `stop_after_identical_refusals`: permanent, and not about one
    /// recipient's mailbox or address.
    pub fn counts_as_identical_refusal(&self) -> bool {
        self.permanent && !self.category.is_recipient_specific()
    }

    /// The refusal with the recipient's and the sender's address taken out,
    /// so the same refusal for different recipients compares equal
    /// (`550 5.7.1 <a@x> refused` and `550 5.7.1 <b@x> refused`).
    pub fn refusal_key(&self, rcpt_to: &str, mail_from: &str) -> String {
        let mut text = self.reply.to_ascii_lowercase();
        for addr in [rcpt_to, mail_from] {
            let addr = addr.to_ascii_lowercase();
            if !addr.is_empty() {
                text = text.replace(&addr, "<>");
            }
        }
        format!(
            "{} {} {} {}",
            self.category,
            self.smtp_code.map(|c| c.to_string()).unwrap_or_default(),
            self.enhanced_code.as_deref().unwrap_or(""),
            text
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.category, self.stage)?;
        if let Some(code) = self.smtp_code {
            write!(f, ": {code}")?;
        }
        if let Some(e) = &self.enhanced_code {
            write!(f, " {e}")?;
        }
        if !self.reply.is_empty() {
            write!(f, " {}", self.reply)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Some(c));
        }
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn serde_names_are_the_persisted_names() {
        for c in Category::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
    }

    #[test]
    fn throttling_is_retried_and_does_not_trip_breaker() {
        assert_eq!(Category::Throttled.retry(), Retry::Yes);
        assert!(!Category::Throttled.trips_breaker());
        assert!(Category::ConnectRefused.trips_breaker());
    }

    #[test]
    fn stopping_the_run_is_decided_by_the_table() {
        let mut f = Failure::local(Stage::MailFrom, Category::SenderRefused, "553 refused");
        assert!(f.stops_run());
        f.permanent = false;
        assert!(!f.stops_run(), "a transient refusal never stops the run");
        let unknown = Failure::local(Stage::RcptTo, Category::RecipientUnknown, "no such user");
        assert!(!unknown.counts_as_identical_refusal());
        let other = Failure::local(Stage::Data, Category::OtherPermanent, "554 denied");
        assert!(other.counts_as_identical_refusal());
        let utf8 = Failure::local(Stage::MailFrom, Category::SmtpUtf8Required, "josé@x");
        assert!(!utf8.stops_run(), "about one recipient's address");
        assert!(!utf8.counts_as_identical_refusal());
        assert!(Category::Dns.fails_fast());
        assert!(!Category::Disconnected.fails_fast());
    }

    #[test]
    fn refusal_key_ignores_the_addresses() {
        let f = |reply: &str| Failure {
            reply: reply.into(),
            smtp_code: Some(554),
            ..Failure::local(Stage::Data, Category::OtherPermanent, "")
        };
        assert_eq!(
            f("Message from <news@acme.example> to <A@x.example> refused")
                .refusal_key("a@x.example", "news@acme.example"),
            f("Message from <news@acme.example> to <b@x.example> refused")
                .refusal_key("b@x.example", "news@acme.example"),
        );
        assert_ne!(
            f("refused").refusal_key("a@x", "n@y"),
            f("other").refusal_key("a@x", "n@y")
        );
    }

    #[test]
    fn local_failure_permanence_follows_category() {
        assert!(Failure::local(Stage::Render, Category::Template, "x").permanent);
        assert!(!Failure::local(Stage::Connect, Category::ConnectTimeout, "x").permanent);
    }
}
