//! SMTP replies as the sink writes them (RFC 5321 §4.2).

use std::fmt;

/// One SMTP reply: a three-digit code and its text, which may span lines.
///
/// The text is written exactly as given, enhanced status code included
/// (RFC 3463), so scripted provider replies reach the client unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    code: u16,
    /// Everything after the code; lines are separated by `\n`.
    text: String,
}

impl Reply {
    /// A reply built by the server itself (`text` holds the enhanced code).
    pub(crate) fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            text: text.into(),
        }
    }

    /// Parses `"550 5.1.1 No such user"`: three digits, then a space and the
    /// text (or nothing). A literal two-character `\n` also separates lines,
    /// since a shell argument cannot easily carry a newline.
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let digits = spec
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let Some(digits) = digits else {
            return Err(format!(
                "reply {spec:?} must start with a three-digit code, as in \"550 5.1.1 No such user\""
            ));
        };
        let rest = &spec[3..];
        let text = match rest.strip_prefix(' ') {
            Some(text) => text,
            None if rest.is_empty() => "",
            None => return Err(format!("reply {spec:?}: expected a space after the code")),
        };
        // The first three bytes are ASCII digits, so this parse cannot fail.
        let code: u16 = digits.parse().unwrap_or(0);
        Ok(Reply::new(code, text.replace("\\n", "\n")))
    }

    pub(crate) fn code(&self) -> u16 {
        self.code
    }

    /// 421 means the server is closing the transmission channel (RFC 5321 §3.8).
    pub(crate) fn closes_connection(&self) -> bool {
        self.code == 421
    }

    pub(crate) fn is_rejection(&self) -> bool {
        self.code >= 400
    }

    /// Appends the reply in wire format: `CODE-line` for every line but the
    /// last, `CODE line` for the last (RFC 5321 §4.2.1).
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.to_string();
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            out.extend_from_slice(code.as_bytes());
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text.replace('\n', "\\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line_is_written_as_given() {
        let r = Reply::parse("554 5.0.0 Error: a, b: {\"x\":1}").unwrap();
        assert_eq!(r.code(), 554);
        assert_eq!(wire(&r), "554 5.0.0 Error: a, b: {\"x\":1}\r\n");
    }

    #[test]
    fn multi_line_uses_continuation_markers() {
        for spec in [
            "554 5.3.2 first\nsecond\nthird",
            "554 5.3.2 first\\nsecond\\nthird",
        ] {
            let r = Reply::parse(spec).unwrap();
            assert_eq!(wire(&r), "554-5.3.2 first\r\n554-second\r\n554 third\r\n");
        }
    }

    #[test]
    fn bad_replies_are_refused() {
        assert!(Reply::parse("55 x").is_err());
        assert!(Reply::parse("5500 x").is_err());
        assert!(Reply::parse("abc").is_err());
        assert_eq!(wire(&Reply::parse("421").unwrap()), "421 \r\n");
    }
}
