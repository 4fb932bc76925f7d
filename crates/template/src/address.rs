//! Sender addresses (From, Reply-To) parsed once, and the check made on each
//! recipient address before it goes into a header.
//!
//! [`Mailbox::parse`] is edm's one parser of `[campaign] from` and
//! `reply_to`: templates, `edm check` (DKIM alignment) and the EHLO name
//! all take the address from it.

use email_address::{EmailAddress, Options};

/// A mailbox: an optional display name and a bare address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub(crate) name: Option<String>,
    pub(crate) address: String,
}

impl Mailbox {
    /// Parses `Display Name <local@domain>` or a bare `local@domain`; on
    /// error, a reason a person can act on. The name may be quoted and holds
    /// no control character; the address needs a TLD, no domain literal,
    /// and at most 254 bytes.
    pub fn parse(value: &str) -> Result<Mailbox, MailboxProblem> {
        parse_mailbox(value)
    }

    /// The display name, if any (unquoted).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The bare address.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// Parses `Display Name <local@domain>` or a bare `local@domain`.
///
/// The name may be quoted; it may not hold control characters (a CR or LF
/// there is a configuration mistake, not something to paper over). The
/// address must have a TLD, no domain literal, and be at most 254 bytes.
pub(crate) fn parse_mailbox(value: &str) -> Result<Mailbox, MailboxProblem> {
    let value = value.trim();
    if value.chars().any(char::is_control) {
        return Err(MailboxProblem::ControlCharacter);
    }
    let (name, address) = match value.rfind('<') {
        Some(open) => {
            let Some(address) = value[open + 1..].strip_suffix('>') else {
                return Err(MailboxProblem::MissingClosingBracket);
            };
            let name = value[..open].trim();
            let name = name
                .strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .unwrap_or(name)
                .trim();
            ((!name.is_empty()).then(|| name.to_owned()), address.trim())
        }
        None => (None, value),
    };
    check_address(address)?;
    Ok(Mailbox {
        name,
        address: address.to_owned(),
    })
}

fn check_address(address: &str) -> Result<(), MailboxProblem> {
    if address.is_empty() {
        return Err(MailboxProblem::NoAddress);
    }
    // RFC 5321 §4.5.3.1.3.
    if address.len() > 254 {
        return Err(MailboxProblem::TooLong);
    }
    let options = Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text();
    EmailAddress::parse_with_options(address, options)
        .map(|_| ())
        .map_err(MailboxProblem::Address)
}

/// Why a From or Reply-To value is not a usable mailbox ([`Mailbox::parse`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MailboxProblem {
    /// A CR, LF or another control character: a configuration mistake (it
    /// could inject a header), not something to paper over.
    #[error("contains a control character")]
    ControlCharacter,
    /// `Name <address` without the closing bracket.
    #[error("missing closing >")]
    MissingClosingBracket,
    /// Nothing where the address should be.
    #[error("no address")]
    NoAddress,
    /// Over 254 bytes (RFC 5321 §4.5.3.1.3).
    #[error("address longer than 254 bytes")]
    TooLong,
    /// Not an address with a TLD, or a domain literal.
    #[error("{0}")]
    Address(email_address::Error),
    /// An internationalised domain with no A-label form (RFC 5890).
    #[error("{0}")]
    NoAsciiDomain(String),
}

/// Why a recipient address cannot go into a To header as is, if it cannot.
///
/// Ingest validated it already; this is the last guard against header
/// injection, so it only looks for what could break the header: control
/// characters (CR, LF), whitespace, angle brackets, a missing `@`.
pub(crate) fn unsafe_recipient(address: &str) -> Option<&'static str> {
    if address.is_empty() {
        return Some("empty address");
    }
    // One pass for the usual address (issue 11: checked per message):
    // printable ASCII without a space or an angle bracket passes each of the
    // checks below, which name what is wrong with any other.
    if !address.bytes().all(is_plain_address_byte) {
        if address.contains(['\r', '\n']) {
            return Some("address contains a line break");
        }
        if address.chars().any(char::is_control) {
            return Some("address contains a control character");
        }
        if address.chars().any(char::is_whitespace) {
            return Some("address contains whitespace");
        }
        if address.contains(['<', '>']) {
            return Some("address contains an angle bracket");
        }
    }
    match address.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => None,
        _ => Some("address is not local@domain"),
    }
}

/// Printable ASCII (`!` to `~`: no control, no space) but `<` and `>`.
fn is_plain_address_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~') && b != b'<' && b != b'>'
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The one-pass check of a plain address changes no answer.
        #[test]
        fn plain_addresses_pass_every_check(address in "[ -~]{1,12}") {
            if address.bytes().all(is_plain_address_byte) {
                proptest::prop_assert!(!address.contains(['\r', '\n', '<', '>']));
                proptest::prop_assert!(!address.chars().any(|c| c.is_control() || c.is_whitespace()));
            }
        }
    }

    #[test]
    fn the_public_parser_is_the_same_parser() {
        let m = Mailbox::parse("\"Acme, Inc.\" <news@acme.example>").unwrap();
        assert_eq!(m.name(), Some("Acme, Inc."));
        assert_eq!(m.address(), "news@acme.example");
        assert_eq!(
            Mailbox::parse("Acme <news@localhost>"),
            parse_mailbox("Acme <news@localhost>")
        );
        assert_eq!(
            Mailbox::parse("Acme <news@acme.example"),
            Err(MailboxProblem::MissingClosingBracket)
        );
        assert_eq!(
            Mailbox::parse("Acme\r\nBcc: x@evil.example <news@acme.example>"),
            Err(MailboxProblem::ControlCharacter)
        );
        assert!(matches!(
            Mailbox::parse("Acme <news@localhost>"),
            Err(MailboxProblem::Address(_))
        ));
    }

    #[test]
    fn mailboxes() {
        let m = parse_mailbox("Acme News <news@acme.example>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Acme News"));
        assert_eq!(m.address, "news@acme.example");
        let m = parse_mailbox("\"Acme, Inc.\" <news@acme.example>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Acme, Inc."));
        let m = parse_mailbox(" news@acme.example ").unwrap();
        assert_eq!(m.name, None);
        assert_eq!(m.address, "news@acme.example");
        let m = parse_mailbox("<news@acme.example>").unwrap();
        assert_eq!(m.name, None);
    }

    #[test]
    fn bad_mailboxes() {
        for bad in [
            "",
            "Acme",
            "Acme <news@acme.example",
            "Acme <news@localhost>",
            "Acme\r\nBcc: x@evil.example <news@acme.example>",
            "news@[127.0.0.1]",
        ] {
            assert!(parse_mailbox(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recipient_guard() {
        assert_eq!(unsafe_recipient("a@example.com"), None);
        assert_eq!(unsafe_recipient("用户@例子.中国"), None);
        assert!(unsafe_recipient("a@example.com\r\nBcc: x@evil.example").is_some());
        assert!(unsafe_recipient("a b@example.com").is_some());
        assert!(unsafe_recipient("<a@example.com>").is_some());
        assert!(unsafe_recipient("a.example.com").is_some());
        assert!(unsafe_recipient("").is_some());
    }
}
