//! Internationalised addresses: the ASCII form a domain takes on the wire
//! (IDNA A-labels, RFC 5890/5891) and the key under which two spellings of
//! one address are the same address.
//!
//! Only the domain has an ASCII form. A non-ASCII local part (`josé@…`) has
//! none: it can only travel over SMTPUTF8 (RFC 6531), with UTF-8 headers
//! (RFC 6532).

use std::borrow::Cow;

/// The A-label (punycode) form of a domain, lower-cased: `Bücher.example`
/// becomes `xn--bcher-kva.example`. An ASCII domain is only lower-cased (it
/// is already its own A-label form, or a name the DNS decides on).
///
/// Non-ASCII domains go through UTS #46 processing with the strict rules
/// (STD3 characters, hyphens, DNS lengths), as a host name needs; on error
/// returns a reason a person can act on.
pub fn ascii_domain(domain: &str) -> Result<Cow<'_, str>, String> {
    if domain.is_ascii() {
        return Ok(if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(domain.to_ascii_lowercase())
        } else {
            Cow::Borrowed(domain)
        });
    }
    idna::domain_to_ascii_strict(domain)
        .map(Cow::Owned)
        .map_err(|_| format!("the domain {domain:?} is not a valid internationalised domain name"))
}

/// The address with its domain in A-label form ([`ascii_domain`]), for the
/// envelope and the headers; the local part is kept as written. An address
/// without `@` is returned as is.
pub fn ascii_address(address: &str) -> Result<Cow<'_, str>, String> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Ok(Cow::Borrowed(address));
    };
    if domain.is_ascii() {
        return Ok(Cow::Borrowed(address));
    }
    let domain = ascii_domain(domain)?;
    Ok(Cow::Owned(format!("{local}@{domain}")))
}

/// The dedupe and suppression key of an address: trimmed, the local part
/// lower-cased, the domain in lower-cased A-label form, so that
/// `Ann@Bücher.example` and `ann@xn--bcher-kva.example` are one address.
///
/// Lower-casing the local part is not what RFC 5321 promises, but it is what
/// every large mailbox provider does, and sending twice to one person is the
/// worse mistake. A domain that has no A-label form is lower-cased as is
/// (ingest refuses such an address anyway).
///
/// ```
/// use edm_model::normalize_address;
/// assert_eq!(
///     normalize_address(" Ann@Bücher.Example "),
///     normalize_address("ann@xn--bcher-kva.example"),
/// );
/// assert_eq!(normalize_address("ann@xn--bcher-kva.example"), "ann@xn--bcher-kva.example");
/// ```
pub fn normalize_address(email: &str) -> String {
    let email = email.trim();
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = ascii_domain(domain).unwrap_or_else(|_| Cow::Owned(domain.to_lowercase()));
            format!("{}@{domain}", local.to_lowercase())
        }
        None => email.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_to_a_labels() {
        assert_eq!(
            ascii_domain("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            ascii_domain("BÜCHER.Example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(ascii_domain("例子.中国").unwrap(), "xn--fsqu00a.xn--fiqs8s");
        assert_eq!(ascii_domain("Example.COM").unwrap(), "example.com");
        assert!(matches!(
            ascii_domain("example.com").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(ascii_domain("bü cher.example").is_err());
    }

    #[test]
    fn addresses_keep_their_local_part() {
        assert_eq!(
            ascii_address("José@Bücher.example").unwrap(),
            "José@xn--bcher-kva.example"
        );
        assert_eq!(ascii_address("Ann@Example.com").unwrap(), "Ann@Example.com");
        assert_eq!(ascii_address("no-at").unwrap(), "no-at");
    }

    #[test]
    fn two_spellings_one_key() {
        let key = normalize_address("ann@xn--bcher-kva.example");
        assert_eq!(normalize_address(" Ann@Bücher.example "), key);
        assert_eq!(normalize_address("ANN@XN--BCHER-KVA.EXAMPLE"), key);
        assert_eq!(normalize_address("ÉLODIE@Exemple.FR"), "élodie@exemple.fr");
        assert_eq!(normalize_address("  Bob@Example.COM \r"), "bob@example.com");
    }
}
