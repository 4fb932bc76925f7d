//! Content checks on rendered parts, for `edm check`: things a mailbox
//! provider looks for in bulk mail that are not errors in the message itself.

/// True when the HTML has a visible unsubscribe link: an `<a>` element with
/// an `href` whose URL or text says "unsubscribe" (any case), or whose
/// `href` is the List-Unsubscribe URL itself.
///
/// Gmail and Yahoo's bulk-sender rules (2024) want both the List-Unsubscribe
/// headers and a clearly visible link in the body.
pub fn has_unsubscribe_link(html: &str, list_unsubscribe: Option<&str>) -> bool {
    // Searched case-insensitively in place; only each anchor is lower-cased
    // (`edm check` runs this on every rendered message: lower-casing the
    // whole HTML and `str::find` cost as much as a tenth of rendering it,
    // issue 11). ASCII case changes no byte offset, so the anchors are
    // those the lower-cased text has.
    let header = list_unsubscribe
        .filter(|u| !u.is_empty())
        .map(str::to_ascii_lowercase);
    let mut rest = html;
    while let Some(start) = find_anchor(rest) {
        let tag = &rest[start..];
        // The anchor runs to its closing tag, or to the next anchor, or to the end.
        let end = find_close(tag)
            .or_else(|| find_anchor(&tag[2..]).map(|i| i + 2))
            .unwrap_or(tag.len());
        let anchor = tag[..end].to_ascii_lowercase();
        let open_end = anchor.find('>').unwrap_or(anchor.len());
        if let Some(href) = href(&anchor[..open_end]) {
            let mentions = anchor.contains("unsubscribe");
            let is_header_url = header.as_deref() == Some(href);
            if !href.is_empty() && (mentions || is_header_url) {
                return true;
            }
        }
        rest = &tag[end.max(2)..];
    }
    false
}

/// Offset of the next `<a` (any case) that starts an anchor element (not
/// `<abbr>`): followed by whitespace.
fn find_anchor(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    memchr::memchr_iter(b'<', b).find(|&i| {
        matches!(b.get(i + 1), Some(b'a' | b'A'))
            && b.get(i + 2).is_some_and(|c| c.is_ascii_whitespace())
    })
}

/// Offset of the next `</a` (any case).
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    memchr::memchr_iter(b'<', b)
        .find(|&i| b.get(i + 1) == Some(&b'/') && matches!(b.get(i + 2), Some(b'a' | b'A')))
}

/// The value of the `href` attribute in an opening tag (lower-cased input).
fn href(open_tag: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = open_tag[from..].find("href") {
        let at = from + i;
        from = at + 4;
        let before_ok = at == 0 || open_tag.as_bytes()[at - 1].is_ascii_whitespace();
        let after = open_tag[from..].trim_start();
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        if !before_ok {
            continue;
        }
        let value = value.trim_start();
        return Some(match value.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let inner = &value[1..];
                &inner[..inner.find(q).unwrap_or(inner.len())]
            }
            _ => {
                let end = value
                    .find(|c: char| c.is_ascii_whitespace() || c == '>')
                    .unwrap_or(value.len());
                &value[..end]
            }
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The implementation before issue 11, kept to compare with.
    fn reference(html: &str, list_unsubscribe: Option<&str>) -> bool {
        let lower = html.to_ascii_lowercase();
        let mut rest = lower.as_str();
        while let Some(start) = old_find_anchor(rest) {
            let tag = &rest[start..];
            // The anchor runs to its closing tag, or to the next anchor, or to the end.
            let end = tag
                .find("</a")
                .or_else(|| old_find_anchor(&tag[2..]).map(|i| i + 2))
                .unwrap_or(tag.len());
            let anchor = &tag[..end];
            let open_end = anchor.find('>').unwrap_or(anchor.len());
            if let Some(href) = href(&anchor[..open_end]) {
                let mentions = anchor.contains("unsubscribe");
                let is_header_url = list_unsubscribe
                    .is_some_and(|u| !u.is_empty() && href == u.to_ascii_lowercase());
                if !href.is_empty() && (mentions || is_header_url) {
                    return true;
                }
            }
            rest = &tag[end.max(2)..];
        }
        false
    }

    /// Offset of the next `<a` that starts an anchor element (not `<abbr>`).
    fn old_find_anchor(s: &str) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = s[from..].find("<a") {
            let at = from + i;
            match s.as_bytes().get(at + 2) {
                Some(b) if b.is_ascii_whitespace() => return Some(at),
                _ => from = at + 2,
            }
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn finds_what_the_lower_casing_version_found(
            html in "(<a |<A\t|</a>|</A|<abbr |href=|HREF = '|\"|unSubscribe|https://x/u|>|x|é| )*",
            header in proptest::option::of("(https://x/u|HTTPS://X/U|)"),
        ) {
            proptest::prop_assert_eq!(
                has_unsubscribe_link(&html, header.as_deref()),
                reference(&html, header.as_deref())
            );
        }
    }

    #[test]
    fn finds_unsubscribe_links() {
        let yes = [
            r#"<p><a href="https://x.example/unsubscribe/1">Unsubscribe</a></p>"#,
            r#"<A HREF='https://x.example/u/1'>UNSUBSCRIBE</A>"#,
            r#"<a class="f" href=https://x.example/opt-out?u=1>unsubscribe here</a>"#,
            r#"<a href="https://x.example/unsubscribe">here"#,
        ];
        for html in yes {
            assert!(has_unsubscribe_link(html, None), "{html}");
        }
        // The header's URL counts even without the word.
        assert!(has_unsubscribe_link(
            r#"<a href="https://x.example/u/1">Stop these emails</a>"#,
            Some("https://x.example/u/1")
        ));
    }

    #[test]
    fn ignores_what_is_not_a_link() {
        let no = [
            "<p>To unsubscribe, reply STOP.</p>",
            r#"<a name="unsubscribe">Unsubscribe</a>"#,
            r#"<a href="">unsubscribe</a>"#,
            r#"<abbr title="unsubscribe">u</abbr><a href="https://x.example/">home</a>"#,
            r#"<a data-href="https://x.example/unsubscribe">x</a>"#,
            "",
        ];
        for html in no {
            assert!(
                !has_unsubscribe_link(html, Some("https://x.example/u/1")),
                "{html}"
            );
        }
    }
}
