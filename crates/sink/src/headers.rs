//! What the sink reads from a message's header section.

/// The `Message-ID` header's value without angle brackets, unfolded
/// (RFC 5322 §3.6.4); only the header section is searched.
pub(crate) fn message_id(message: &[u8]) -> Option<String> {
    let mut lines = message.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // end of the header section
        }
        let Some(value) = line
            .get(..11)
            .filter(|name| name.eq_ignore_ascii_case(b"message-id:"))
            .map(|_| &line[11..])
        else {
            continue;
        };
        let mut value = String::from_utf8_lossy(value).into_owned();
        while let Some(next) =
            lines.next_if(|l| l.first().is_some_and(|&b| b == b' ' || b == b'\t'))
        {
            let next = next.strip_suffix(b"\r").unwrap_or(next);
            value.push_str(&String::from_utf8_lossy(next));
        }
        let id = value
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        return (!id.is_empty()).then(|| id.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn message_id_is_found_unfolded_and_unbracketed() {
        let m = b"Subject: x\r\nMessage-ID:\r\n <abc.1@example.test>\r\n\r\nMessage-ID: <no>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("abc.1@example.test"));
        assert_eq!(
            message_id(b"message-id: <a@b>\r\n\r\n").as_deref(),
            Some("a@b")
        );
        assert_eq!(
            message_id(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n"),
            None
        );
    }
}
