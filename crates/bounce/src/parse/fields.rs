//! Header fields in the RFC 5322 syntax: a message's own header, the
//! per-message and per-recipient groups of a `message/delivery-status` part
//! (RFC 3464 §2.1: groups separated by a blank line), the fields of a
//! `message/feedback-report` (RFC 5965 §3.1) and a returned message's headers.
//!
//! Lenient on purpose: bounces come from every kind of software, so a line
//! that is neither a field nor a continuation is skipped, never an error.

/// One header field, its value unfolded (RFC 5322 §2.2.3) and trimmed.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub name: String,
    pub value: String,
}

/// Text with CRLF (or a lone CR) turned into LF, decoded lossily: a bounce
/// may quote 8-bit bytes in any charset, and none of the fields we read is
/// outside ASCII.
pub(crate) fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.contains('\r') {
        s.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        s.into_owned()
    }
}

/// The fields of the header block at the start of `text` (up to the first
/// blank line).
pub(crate) fn header_block(text: &str) -> Vec<Field> {
    groups(text).into_iter().next().unwrap_or_default()
}

/// Every group of fields, groups separated by blank lines. Empty groups
/// (several blank lines in a row) are dropped.
pub(crate) fn groups(text: &str) -> Vec<Vec<Field>> {
    let mut out = Vec::new();
    let mut group: Vec<Field> = Vec::new();
    // The last line was a field (so a folded line continues it).
    let mut open = false;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !group.is_empty() {
                out.push(std::mem::take(&mut group));
            }
            open = false;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if open && let Some(last) = group.last_mut() {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(line.trim());
            }
            continue;
        }
        match line.split_once(':') {
            Some((name, value)) if is_field_name(name) => {
                group.push(Field {
                    name: name.to_string(),
                    value: value.trim().to_string(),
                });
                open = true;
            }
            _ => open = false,
        }
    }
    if !group.is_empty() {
        out.push(group);
    }
    out
}

/// RFC 5322 §3.6.8: printable ASCII but no colon or space.
fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// The first value of a field, by case-insensitive name.
pub(crate) fn get<'a>(fields: &'a [Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.value.as_str())
}

/// Every value of a field, in order.
pub(crate) fn get_all<'a>(fields: &'a [Field], name: &str) -> impl Iterator<Item = &'a str> {
    fields
        .iter()
        .filter(move |f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.value.as_str())
}

/// A Message-ID without its angle brackets (`<a@b>` → `a@b`).
pub(crate) fn message_id(value: &str) -> Option<String> {
    let v = value.trim();
    let v = match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split_whitespace().next().unwrap_or(""),
    };
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_unfold_and_split_on_blank_lines() {
        let g = groups(
            "Reporting-MTA: dns; a.example\r\n\r\nFinal-Recipient: rfc822; x@y.example\r\nDiagnostic-Code: smtp; 550\r\n    5.1.1 gone\r\n\r\n\r\n",
        );
        assert_eq!(g.len(), 2);
        assert_eq!(get(&g[1], "diagnostic-code"), Some("smtp; 550 5.1.1 gone"));
        assert_eq!(get(&g[0], "Final-Recipient"), None);
    }

    #[test]
    fn junk_lines_are_skipped_and_do_not_swallow_continuations() {
        let g = groups("not a field\n  still junk\nAction: failed\n");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].len(), 1);
        assert_eq!(get(&g[0], "action"), Some("failed"));
    }

    #[test]
    fn message_ids_lose_their_brackets() {
        assert_eq!(message_id(" <a.b@c> ").as_deref(), Some("a.b@c"));
        assert_eq!(message_id("a@b").as_deref(), Some("a@b"));
        assert_eq!(message_id("<>"), None);
        assert_eq!(message_id(""), None);
    }
}
