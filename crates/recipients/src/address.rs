//! Address validation and the normalised key used for dedupe and suppression.

use email_address::{EmailAddress, Options};

/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle
/// brackets, so an address is at most 254.
const MAX_ADDRESS: usize = 254;
/// RFC 5321 §4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;

/// The dedupe and suppression key of an address: trimmed, lower-cased, the
/// domain in A-label form, so `ann@bücher.example` and
/// `ann@xn--bcher-kva.example` are one address ([`edm_model::normalize_address`]).
///
/// Lower-casing the local part is not what RFC 5321 promises, but it is what
/// every large mailbox provider does, and sending twice to one person is the
/// worse mistake.
pub fn normalize(email: &str) -> String {
    edm_model::normalize_address(email)
}

/// [`normalize`] into `out` (cleared first), for ingest's every row: an
/// ASCII address (nearly all) is its trimmed self lower-cased, which is
/// what `normalize_address` makes of it (ASCII lower-casing of both parts,
/// an ASCII domain being its own A-label form), without its three strings
/// per row (issue 11, `edm check` of 1M rows).
pub(crate) fn normalize_into(email: &str, out: &mut String) {
    out.clear();
    let email = email.trim();
    if email.is_ascii() {
        out.push_str(email);
        out.make_ascii_lowercase();
    } else {
        out.push_str(&normalize(email));
    }
}

/// Checks that an address can be used in RCPT TO: a bare `local@domain.tld`,
/// no display name, no domain literal, a TLD required, at most 254 bytes with
/// a local part of at most 64. Internationalised local parts and domains are
/// accepted. Surrounding whitespace is ignored.
///
/// On error, says why ([`AddressProblem`]; its text is a short reason a
/// person can act on).
pub fn validate(email: &str) -> Result<(), AddressProblem> {
    let email = email.trim();
    if email.is_empty() {
        return Err(AddressProblem::Empty);
    }
    if email.chars().any(char::is_control) {
        return Err(AddressProblem::ControlCharacter);
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(AddressProblem::Syntax("missing @"));
    };
    // The domain goes on the wire as A-labels (RFC 5890): one that has no
    // A-label form cannot be sent to.
    if !domain.is_ascii() {
        edm_model::ascii_domain(domain).map_err(AddressProblem::NoAsciiDomain)?;
    }
    if email.len() > MAX_ADDRESS {
        return Err(AddressProblem::TooLong {
            len: email.len(),
            max: MAX_ADDRESS,
        });
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressProblem::LocalPartTooLong {
            len: local.len(),
            max: MAX_LOCAL_PART,
        });
    }
    let options = Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text();
    EmailAddress::parse_with_options(email, options)
        .map(|_| ())
        .map_err(|e| AddressProblem::Syntax(reason(&e, local)))
}

/// Why an address cannot be used ([`validate`]).
///
/// Not `#[non_exhaustive]` on purpose: a new problem forces a decision
/// wherever it is matched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressProblem {
    /// Nothing but whitespace.
    #[error("empty address")]
    Empty,
    /// A CR, LF or another control character.
    #[error("address contains a control character")]
    ControlCharacter,
    /// Over 254 bytes (RFC 5321 §4.5.3.1.3).
    #[error("address longer than {max} bytes ({len})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A local part over 64 bytes (RFC 5321 §4.5.3.1.1).
    #[error("local part longer than {max} bytes ({len})")]
    LocalPartTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An internationalised domain with no A-label form (RFC 5890).
    #[error("{0}")]
    NoAsciiDomain(String),
    /// Not the shape of an address: the parser's reason, for people.
    #[error("{0}")]
    Syntax(&'static str),
}

/// Turns the parser's error into a reason for an operator. Exhaustive on
/// purpose: a new upstream variant must be given words.
fn reason(error: &email_address::Error, local: &str) -> &'static str {
    use email_address::Error as E;
    match error {
        E::InvalidCharacter if !EmailAddress::is_valid_local_part(local) => {
            "invalid character in the local part"
        }
        E::InvalidCharacter => "invalid character in the domain",
        E::MissingSeparator => "missing @",
        E::LocalPartEmpty => "nothing before the @",
        E::LocalPartTooLong => "local part longer than 64 bytes",
        E::DomainEmpty => "nothing after the @",
        E::DomainTooLong => "domain longer than 254 bytes",
        E::SubDomainEmpty => "domain has an empty label (a leading, trailing or double dot)",
        E::SubDomainTooLong => "a domain label is longer than 63 bytes",
        E::DomainTooFew => "domain has no TLD",
        E::DomainInvalidSeparator => "misplaced dot in the domain",
        E::UnbalancedQuotes => "unbalanced quotes in the local part",
        E::InvalidComment => "malformed comment in the address",
        E::InvalidIPAddress => "invalid IP address literal",
        E::UnsupportedDomainLiteral => "domain literals like [192.0.2.1] are not accepted",
        E::UnsupportedDisplayName => "display names are not accepted: put the bare address",
        E::MissingDisplayName => "angle brackets are not accepted: put the bare address",
        E::MissingEndBracket => "missing closing >",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_international_addresses() {
        for ok in [
            "a@example.com",
            "  padded@example.com\t",
            "first.last+tag@sub.example.co.uk",
            "user@bücher.de",
            "user@xn--bcher-kva.de",
            "josé@example.es",
            "用户@例子.中国",
            "\"quoted local\"@example.com",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_with_reasons() {
        let cases = [
            ("", "empty address"),
            ("   ", "empty address"),
            ("no-at.example.com", "missing @"),
            ("user@localhost", "domain has no TLD"),
            ("@example.com", "nothing before the @"),
            ("user@", "nothing after the @"),
            ("user@[192.0.2.1]", "domain literals"),
            ("Bob <bob@example.com>", "display names"),
            ("a b@example.com", "invalid character in the local part"),
            ("user@exa mple.com", "invalid character in the domain"),
            ("user@example..com", "empty label"),
            ("user@example.com.", "empty label"),
            ("us\r\ner@example.com", "control character"),
        ];
        for (input, want) in cases {
            let got = validate(input).expect_err(input).to_string();
            assert!(got.contains(want), "{input:?}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn length_limits() {
        let local = "a".repeat(65);
        let got = validate(&format!("{local}@example.com")).unwrap_err();
        assert_eq!(got, AddressProblem::LocalPartTooLong { len: 65, max: 64 });
        assert_eq!(got.to_string(), "local part longer than 64 bytes (65)");
        assert_eq!(validate(&format!("{}@example.com", "a".repeat(64))), Ok(()));

        let label = "d".repeat(60);
        let long = format!("user@{label}.{label}.{label}.{label}.{label}.com");
        assert!(long.len() > 254);
        assert!(
            validate(&long)
                .unwrap_err()
                .to_string()
                .starts_with("address longer than 254")
        );
    }

    #[test]
    fn normalize_trims_and_lowercases() {
        assert_eq!(normalize("  Bob@Example.COM \r"), "bob@example.com");
        assert_eq!(normalize("ÉLODIE@Exemple.FR"), "élodie@exemple.fr");
    }

    proptest::proptest! {
        #[test]
        fn normalize_into_is_normalize(
            email in "[ \t\r\naAzZ09@.+_\\-éÉüÜ\u{130}ß]{0,24}"
        ) {
            let mut out = String::from("left over");
            normalize_into(&email, &mut out);
            proptest::prop_assert_eq!(out, normalize(&email));
        }
    }

    #[test]
    fn idn_domain_spellings_are_one_address() {
        assert_eq!(
            normalize("ann@bücher.example"),
            normalize("ann@xn--bcher-kva.example")
        );
        assert_eq!(
            normalize("Ann@BÜCHER.example"),
            normalize("ANN@XN--BCHER-KVA.EXAMPLE")
        );
        // The local part is not punycoded: a different address.
        assert_ne!(normalize("jösé@example.com"), normalize("jose@example.com"));
    }

    #[test]
    fn a_domain_without_an_a_label_form_is_invalid() {
        let got = validate("ann@bü_cher.example").unwrap_err().to_string();
        assert!(got.contains("internationalised domain"), "{got}");
    }
}
