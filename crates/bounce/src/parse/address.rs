//! Finding email addresses in bounce text and fields.

/// RFC 5322 `atext` and the dot: what a local part is made of.
fn is_local(c: char) -> bool {
    c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c)
}

/// What a domain is made of (IDN domains stay as given).
fn is_domain(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '.'
}

/// Every address-shaped token of `s`, in order, duplicates removed
/// (case-insensitively), as written.
pub(crate) fn find_all(s: &str) -> Vec<String> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, &(_, c)) in chars.iter().enumerate() {
        if c != '@' {
            continue;
        }
        let mut start = i;
        while start > 0 && is_local(chars[start - 1].1) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < chars.len() && is_domain(chars[end].1) {
            end += 1;
        }
        let from = chars[start].0;
        let to = chars.get(end).map_or(s.len(), |&(o, _)| o);
        if let Some(a) = tidy(&s[from..to])
            && seen.insert(a.to_ascii_lowercase())
        {
            out.push(a);
        }
    }
    out
}

/// The first address of a field value such as `rfc822; a@b.example` or
/// `"Name" <a@b.example>`.
pub(crate) fn first(s: &str) -> Option<String> {
    // RFC 3464 §2.3.2: `address-type ";" generic-address`.
    let s = match s.split_once(';') {
        Some((kind, rest)) if !kind.contains('@') => rest,
        _ => s,
    };
    find_all(s).into_iter().next()
}

/// Trims dots around the token and checks its shape: a non-empty local part
/// and a domain with a dot in it (`user@localhost` is no address edm sends to).
fn tidy(token: &str) -> Option<String> {
    let token = token.trim_matches('.');
    let (local, domain) = token.rsplit_once('@')?;
    let local = local.trim_start_matches('.');
    let domain = domain.trim_end_matches(['.', '-']);
    if local.is_empty() || domain.is_empty() || !domain.contains('.') || domain.starts_with('.') {
        return None;
    }
    Some(format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_addresses_in_prose() {
        assert_eq!(
            find_all(
                "<a.b@x.example>: host mx[192.0.2.1] said: 550 <c@y.example>... gone. A.B@X.example"
            ),
            vec!["a.b@x.example", "c@y.example"]
        );
        assert_eq!(
            find_all("neko@example.com<mailto:neko@example.com>"),
            vec!["neko@example.com"]
        );
        assert!(find_all("@ @@ a@ @b x@localhost").is_empty());
    }

    #[test]
    fn first_strips_the_address_type() {
        assert_eq!(
            first("rfc822; kijitora@example.jp").as_deref(),
            Some("kijitora@example.jp")
        );
        assert_eq!(
            first("rfc822;<neko@example.jp>").as_deref(),
            Some("neko@example.jp")
        );
        assert_eq!(first("rfc822;"), None);
    }
}
