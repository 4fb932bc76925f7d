//! RFC 3463 status codes: reading them, and inferring one from a reply code
//! and the remote server's words when the message has none.
//!
//! The class decides hardness and nothing else does: 5 is permanent (hard),
//! 4 is persistent-transient (soft). A 4.x.x is never made hard.

/// The first enhanced status code (`class.subject.detail`, RFC 3463 §2) in
/// `s`, with classes 2, 4 and 5 only. A dotted IP address is not one: the
/// code must not touch another digit or dot.
pub(crate) fn find_enhanced(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let boundary_before = i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.');
        if matches!(c, b'2' | b'4' | b'5')
            && boundary_before
            && let Some(end) = code_end(b, i)
        {
            return Some(s[i..end].to_string());
        }
        i += 1;
    }
    None
}

/// `i` is at a class digit: the end of `C.S.D` (1–3 digits each) if it is one.
fn code_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    for _ in 0..2 {
        if b.get(j) != Some(&b'.') {
            return None;
        }
        j += 1;
        let start = j;
        while j < b.len() && b[j].is_ascii_digit() && j - start < 3 {
            j += 1;
        }
        if j == start {
            return None;
        }
    }
    // `5.1.1.` followed by a digit would be an IP address or a version.
    let touches = match b.get(j) {
        Some(c) if c.is_ascii_digit() => true,
        Some(b'.') => b.get(j + 1).is_some_and(u8::is_ascii_digit),
        _ => false,
    };
    (!touches).then_some(j)
}

/// The first SMTP reply code (RFC 5321 §4.2: `2yz`, `4yz`, `5yz`) standing
/// alone in `s` (followed by a space, a hyphen, or the end).
pub(crate) fn find_reply_code(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.');
        let digits = matches!(b[i], b'2' | b'4' | b'5')
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit();
        let after_ok = match b.get(i + 3) {
            None => true,
            Some(c) => c.is_ascii_whitespace() || *c == b'-' || *c == b'\'' || *c == b')',
        };
        if before_ok && digits && after_ok {
            return std::str::from_utf8(&b[i..i + 3]).ok()?.parse().ok();
        }
    }
    None
}

/// Words that say what went wrong, with the RFC 3463 subject.detail they
/// mean. Checked in order: the first match wins. The wording follows what
/// the large providers and MTAs write (and Sisimai's reason tables).
const WORDS: &[(&[&str], &str)] = &[
    (
        &[
            "mailbox full",
            "mailbox is full",
            "over quota",
            "overquota",
            "quota exceeded",
            "exceeded storage",
            "exceeds storage",
            "insufficient storage",
            "mailbox size limit",
            "out of storage",
            "mailbox has exceeded",
        ],
        "2.2",
    ),
    (
        &[
            "account has been disabled",
            "account is disabled",
            "account disabled",
            "mailbox disabled",
            "mailbox is disabled",
            "account has been suspended",
            "account is inactive",
            "mailbox inactive",
            "mailbox is inactive",
        ],
        "2.1",
    ),
    (
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "no such recipient",
            "no such mailbox",
            "does not exist",
            "doesn't exist",
            "address not found",
            "recipient not found",
            "recipientnotfound",
            "recipnotfound",
            "couldn't be found",
            "could not be found",
            "unknown recipient",
            "invalid recipient",
            "recipient unknown",
            "not a valid mailbox",
            "mailbox unavailable",
            "mailbox not found",
            "no mailbox here",
            "unknown or illegal alias",
            "unrouteable address",
            "user not found",
            "no longer available",
            "is not a valid",
            // Yahoo: "dd This user doesn't have a yahoo.com account".
            "user doesn't have a",
        ],
        "1.1",
    ),
    (
        &[
            "host not found",
            "host or domain name not found",
            "domain not found",
            "no mx",
            "name service error",
            "unrouteable mail domain",
            "domain does not exist",
        ],
        "1.2",
    ),
    (
        &[
            "message too large",
            "message is too large",
            "message size exceeds",
            "size limit",
            "too big",
        ],
        "3.4",
    ),
    (
        &[
            "relay access denied",
            "relaying denied",
            "relay not permitted",
        ],
        "7.1",
    ),
    (
        &[
            "spam",
            "blocked",
            "blacklist",
            "blocklist",
            "policy",
            "rejected for policy",
            "not authorized",
            "reputation",
            "dmarc",
        ],
        "7.1",
    ),
    (
        &[
            "delayed",
            "not yet been delivered",
            "still being retried",
            "will retry",
            "retry timeout exceeded",
            "expired",
            "too long in the queue",
            "could not be delivered for",
        ],
        "4.7",
    ),
    (
        &[
            "connection refused",
            "connection timed out",
            "timed out",
            "no route to host",
        ],
        "4.1",
    ),
];

/// Words that say the failure is temporary, or permanent, when no code does.
const TEMPORARY: &[&str] = &[
    "temporar",
    "try again later",
    "will retry",
    "will be retried",
    "still being retried",
    "delayed",
    "not yet been delivered",
];
const PERMANENT: &[&str] = &["permanent", "fatal", "given up", "giving up"];

/// A status for `text` (a diagnostic or a notice's words): its enhanced
/// code if it has one; otherwise a class from its reply code (or, failing
/// that, the words, or `class_hint`: 5 for a failure notice, 4 for a delay
/// notice) and a subject.detail from the words (`0.0` when they say nothing
/// we know).
pub(crate) fn infer(text: &str, class_hint: char) -> String {
    if let Some(code) = find_enhanced(text).filter(|c| !c.starts_with('2')) {
        return code;
    }
    let lower = text.to_lowercase();
    let class = match find_reply_code(text) {
        Some(c) if (400..500).contains(&c) => '4',
        Some(c) if (500..600).contains(&c) => '5',
        _ if TEMPORARY.iter().any(|w| lower.contains(w)) => '4',
        _ if PERMANENT.iter().any(|w| lower.contains(w)) => '5',
        _ => class_hint,
    };
    let detail = WORDS
        .iter()
        .find(|(words, _)| words.iter().any(|w| lower.contains(w)))
        .map_or("0.0", |(_, d)| *d);
    format!("{class}.{detail}")
}

/// The status of one recipient: the message's own `Status` unless it is
/// missing, malformed or `0.0.0` (which some MTAs write for "unknown"), in
/// which case it is inferred from the diagnostic. A bare `5.0.0` or `4.0.0`
/// (Exim writes `5.0.0` for every failure) is refined from the diagnostic
/// (`552 5.2.2 ... over quota` → `5.2.2`), keeping the Status's class.
pub(crate) fn resolve(status: Option<&str>, diagnostic: Option<&str>, class_hint: char) -> String {
    let diagnostic = diagnostic.unwrap_or("");
    if let Some(code) = status.and_then(find_enhanced) {
        if code.ends_with(".0.0") && !code.starts_with('2') {
            let refined = infer(diagnostic, code.chars().next().unwrap_or(class_hint));
            if !refined.ends_with(".0.0") {
                return with_class(&refined, code.chars().next().unwrap_or(class_hint));
            }
        }
        return code;
    }
    infer(diagnostic, class_hint)
}

/// The same status with another class (`5.2.2` → `4.2.2`).
pub(crate) fn with_class(status: &str, class: char) -> String {
    let mut s = String::with_capacity(status.len());
    s.push(class);
    s.push_str(status.get(1..).unwrap_or(""));
    s
}

/// Hard means class 5, and only that.
pub(crate) fn is_hard(status: &str) -> bool {
    status.starts_with('5')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_found_and_ip_addresses_are_not() {
        assert_eq!(
            find_enhanced("smtp; 550 5.1.1 <a@b>... gone").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            find_enhanced("host [192.0.2.25] said 5.7.26 x").as_deref(),
            Some("5.7.26")
        );
        assert_eq!(find_enhanced("[192.0.2.25]"), None);
        assert_eq!(find_enhanced("Exim 4.77 and 5.1"), None);
        assert_eq!(find_enhanced("4.4.7."), Some("4.4.7".into()));
        assert_eq!(find_enhanced("0.0.0"), None);
    }

    #[test]
    fn reply_codes_stand_alone() {
        assert_eq!(find_reply_code("said: 550 5.1.1 gone"), Some(550));
        assert_eq!(find_reply_code("#550-5.1.1"), Some(550));
        assert_eq!(find_reply_code("[192.0.2.250] x"), None);
        assert_eq!(find_reply_code("port 2525"), None);
    }

    #[test]
    fn inference_follows_the_code_then_the_words() {
        assert_eq!(infer("550 User unknown", '5'), "5.1.1");
        assert_eq!(infer("450 user unknown", '5'), "4.1.1");
        assert_eq!(infer("552 mailbox full", '4'), "5.2.2");
        assert_eq!(infer("mailbox is full, try again later", '5'), "4.2.2");
        assert_eq!(infer("mailbox full", '5'), "5.2.2");
        assert_eq!(infer("message delayed", '5'), "4.4.7");
        assert_eq!(infer("550", '4'), "5.0.0");
        assert_eq!(
            infer(
                "554 delivery error: dd This user doesn't have a yahoo.com account",
                '5'
            ),
            "5.1.1"
        );
        assert_eq!(infer("", '5'), "5.0.0");
        assert_eq!(infer("smtp; 250 2.0.0 ok", '5'), "5.0.0");
    }

    #[test]
    fn missing_or_zero_status_is_inferred() {
        assert_eq!(resolve(Some("5.2.1"), Some("550 5.1.1"), '5'), "5.2.1");
        assert_eq!(resolve(Some("0.0.0"), Some("550 5.1.1 x"), '5'), "5.1.1");
        assert_eq!(resolve(None, Some("550 no such user"), '5'), "5.1.1");
        assert_eq!(
            resolve(Some("5.0.0"), Some("552 5.2.2 over quota"), '5'),
            "5.2.2"
        );
        assert_eq!(
            resolve(Some("5.0.0"), Some("452 4.2.2 over quota"), '5'),
            "5.2.2"
        );
        assert_eq!(resolve(Some("5.0.0"), Some("550 go away"), '5'), "5.0.0");
        assert_eq!(with_class("5.2.2", '4'), "4.2.2");
        assert!(is_hard("5.0.0") && !is_hard("4.2.2"));
    }
}
