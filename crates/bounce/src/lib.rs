//! Bounces and complaints: what a message in the bounce mailbox says.
//!
//! [`parse`] turns one raw message into a [`Verdict`]: what kind of message it
//! is, which recipients it is about (with their RFC 3463 status), and every
//! clue that ties it back to the message edm sent (the address it was
//! delivered to, which carries the VERP token; the DSN's envelope id; the
//! returned message's Message-ID). Parsing never touches a campaign: matching
//! a verdict to a recipient and applying it is the campaign crate's job.

pub mod mailbox;
mod parse;

pub use parse::parse;

use serde::Serialize;

/// What a message in the bounce mailbox is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// A delivery failure or delay notice (recipients with 5.x.x or 4.x.x).
    Bounce,
    /// A spam complaint (ARF, RFC 5965).
    Complaint,
    /// An auto-reply or out-of-office: never a bounce.
    AutoReply,
    /// A DSN that reports success (`Action: delivered`, `relayed`, `expanded`).
    DeliveryReport,
    /// Anything else, including a file that cannot be read.
    NotBounce,
}

/// One recipient a bounce or complaint is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    /// The recipient's address as the message gives it (a DSN's
    /// Original-Recipient, else its Final-Recipient; Original-Rcpt-To; or
    /// the address in the text), without `rfc822;`.
    pub address: String,
    /// RFC 3463 status (`5.1.1`), inferred from the text when the message has
    /// none; `None` for a complaint.
    pub status: Option<String>,
    /// A hard bounce: the status class is 5. A 4.x.x is never hard.
    pub hard: bool,
    /// The remote server's words (Diagnostic-Code, or the notice's text).
    pub diagnostic: Option<String>,
}

/// The parser's reading of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub verdict: VerdictKind,
    /// In the order the message gives them.
    pub recipients: Vec<Recipient>,
    /// Addresses this message was delivered to (`Delivered-To`,
    /// `X-Original-To`, `Envelope-To`, then `To`), lowercased: a VERP return
    /// path's token is found here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delivered_to: Vec<String>,
    /// The DSN's `Original-Envelope-Id` (edm sends the recipient's id as ENVID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<String>,
    /// The Message-ID of the message that bounced or was complained about,
    /// from the returned headers (without angle brackets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_message_id: Option<String>,
    /// ARF `Feedback-Type` (`abuse`, `fraud`, …) for a complaint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_type: Option<String>,
}

impl Verdict {
    /// A message that says nothing about a delivery.
    pub fn not_bounce() -> Verdict {
        Verdict {
            verdict: VerdictKind::NotBounce,
            recipients: Vec::new(),
            delivered_to: Vec::new(),
            envelope_id: None,
            original_message_id: None,
            feedback_type: None,
        }
    }
}
