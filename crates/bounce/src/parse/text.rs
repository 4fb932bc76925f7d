//! Bounces without a delivery-status part: the plain-text notices of
//! Exchange/Office 365, Gmail, Yahoo, qmail, Exim, Postfix and Sendmail,
//! recognised by their wording and read by their layout.
//!
//! Every offset here is into an ASCII-lowercased copy of the text, which has
//! the same byte offsets as the original (`to_ascii_lowercase`).

use super::fields::{self, Field};
use super::{address, status};
use crate::Recipient;

/// Boilerplate that only mail delivery software writes: enough on its own.
const MARKERS: &[&str] = &[
    // Exchange 2007+ and Office 365 NDRs ("... or groups", "... or
    // distribution lists").
    "delivery has failed to these recipients",
    // Gmail (older notices).
    "delivery to the following recipient failed permanently",
    "delivery to the following recipients failed permanently",
    // Yahoo.
    "sorry, we were unable to deliver your message",
    // qmail.
    "this is the qmail-send program",
    "i'm afraid i wasn't able to deliver your message",
    // Exim.
    "this message was created automatically by mail delivery software",
    // Postfix.
    "this is the mail system at host",
    // Sendmail.
    "the following addresses had permanent fatal errors",
    "the following addresses had transient non-fatal errors",
];

/// Phrases a person could write too ("your message wasn't delivered to my
/// colleague"): they count only from a mailer daemon or under a failure
/// notice's subject.
const WEAK_MARKERS: &[&str] = &[
    "wasn't delivered to",
    "remote server returned '",
    "delivery to the following recipient has been delayed",
    "a message that you sent could not be delivered",
    "a message that you sent has not yet been delivered",
    "could not be delivered to one or more recipients",
    "the following message to <",
];

/// Subjects of failure notices, when the sender is a mailer daemon.
const SUBJECTS: &[&str] = &[
    "undeliver",
    "delivery status notification",
    "returned mail",
    "mail delivery failed",
    "failure notice",
    "delivery failure",
    "delivery failed",
    "non-delivery",
    "nondeliverable",
    "delayed mail",
    "warning: message",
    "could not be delivered",
    "mail delivery failure",
];

/// Words of a delay notice: the MTA is still trying.
const DELAY: &[&str] = &[
    "(delay)",
    "has been delayed",
    "delayed mail",
    "has not yet been delivered",
    "still being retried",
    "transient non-fatal errors",
    "warning: message",
    "delivery attempts will continue",
    "will continue to try",
];

/// Where the copy of the returned message starts: nothing after it is about
/// the delivery.
const COPY: &[&str] = &[
    "--- below this line is a copy of the message",
    "------ this is a copy of the message",
    "------ this is a copy of your message",
    "original message headers:",
    "----- original message -----",
    "----- original message follows -----",
    "----- the header of the original message is following",
    "--- original message",
    "------- original message",
];

/// `Some` when this is a failure or delay notice; its recipients (possibly
/// none, when the layout is unknown: the envelope address may still tie it
/// to a recipient).
pub(crate) fn read(top: &[Field], body: &str) -> Option<Vec<Recipient>> {
    let lower = body.to_ascii_lowercase();
    let subject = fields::get(top, "Subject")
        .unwrap_or("")
        .to_ascii_lowercase();
    let from = fields::get(top, "From").unwrap_or("").to_ascii_lowercase();
    let daemon = [
        "mailer-daemon",
        "postmaster",
        "mail delivery",
        "mail.delivery",
    ]
    .iter()
    .any(|w| from.contains(w));
    let marked = MARKERS.iter().any(|m| lower.contains(m));
    let weakly_marked = WEAK_MARKERS.iter().any(|m| lower.contains(m));
    let subject_says = SUBJECTS.iter().any(|s| subject.contains(s));
    if !(marked || ((daemon || subject_says) && weakly_marked) || (daemon && subject_says)) {
        return None;
    }
    let delay = DELAY
        .iter()
        .any(|w| lower.contains(w) || subject.contains(w));
    let hint = if delay { '4' } else { '5' };

    let end = COPY
        .iter()
        .filter_map(|m| lower.find(m))
        .min()
        .unwrap_or(body.len());
    let notice = &body[..end];
    let notice_lower = &lower[..end];

    let mut found = per_recipient(notice, notice_lower);
    if found.is_empty() {
        // Exim's own header (and some others copy it).
        for v in fields::get_all(top, "X-Failed-Recipients") {
            for a in address::find_all(v) {
                add(&mut found, a, None);
            }
        }
    }
    let single = found.len() == 1;
    let recipients = found
        .into_iter()
        .map(|(address, diagnostic)| {
            // A lone recipient's status may be anywhere in the notice
            // (Gmail's "Address not found" heading); with several, only
            // their own words count.
            let words = match (&diagnostic, single) {
                (Some(d), _) => d.as_str(),
                (None, true) => notice,
                (None, false) => "",
            };
            let mut code = status::infer(words, hint);
            if delay && !code.starts_with('4') {
                code = status::with_class(&code, '4');
            }
            Recipient {
                address,
                hard: status::is_hard(&code),
                status: Some(code),
                diagnostic,
            }
        })
        .collect();
    Some(recipients)
}

/// More recipients than any real notice lists.
pub(crate) const MAX_RECIPIENTS: usize = 1000;

/// Recipients and their servers' words, as the notice's layout gives them.
pub(crate) type Found = Vec<(String, Option<String>)>;

/// The recipients a notice's text names, by the first layout that finds
/// any. `lower` is `notice` ASCII-lowercased.
fn per_recipient(notice: &str, lower: &str) -> Found {
    let mut found = exchange(notice, lower);
    if found.is_empty() {
        found = gmail(notice, lower);
    }
    if found.is_empty() {
        found = sendmail(notice, lower);
    }
    if found.is_empty() {
        found = angle_paragraphs(notice);
    }
    if found.is_empty() {
        found = exim(notice, lower);
    }
    found
}

/// What the human-readable part of a DSN says per recipient: the
/// diagnostic for a delivery-status group that has none.
pub(crate) fn notes(body: &str) -> Found {
    let lower = body.to_ascii_lowercase();
    let end = COPY
        .iter()
        .filter_map(|m| lower.find(m))
        .min()
        .unwrap_or(body.len());
    per_recipient(&body[..end], &lower[..end])
}

/// Whitespace collapsed, capped: a diagnostic is a line, not a transcript.
fn one_line(s: &str) -> Option<String> {
    let mut out = String::new();
    for w in s.split_whitespace() {
        if out.len() + w.len() + 1 > 1000 {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    (!out.is_empty()).then_some(out)
}

/// Paragraphs (separated by blank lines) with their byte offsets.
fn paragraphs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0;
    for line in s.split_inclusive('\n') {
        let blank = line.trim().is_empty();
        match (blank, start) {
            (true, Some(st)) => {
                out.push(&s[st..offset]);
                start = None;
            }
            (false, None) => start = Some(offset),
            _ => {}
        }
        offset += line.len();
    }
    if let Some(st) = start {
        out.push(&s[st..]);
    }
    out
}

fn add(found: &mut Found, address: String, diagnostic: Option<String>) {
    if found.len() >= MAX_RECIPIENTS {
        return;
    }
    if let Some(existing) = found
        .iter_mut()
        .find(|(a, _)| a.eq_ignore_ascii_case(&address))
    {
        if existing.1.is_none() {
            existing.1 = diagnostic;
        }
    } else {
        found.push((address, diagnostic));
    }
}

/// Exchange 2007+ / Office 365: the recipients listed under "Delivery has
/// failed to these recipients or groups:", each one's server reply under
/// "Diagnostic information for administrators:" as the line after its
/// address (`Remote Server returned '550 5.1.10 ...'` or `#550 5.1.1 ... ##`).
fn exchange(notice: &str, lower: &str) -> Found {
    let mut found = Found::new();
    // "... or groups:" (2010+), "... or distribution lists:" (2007).
    let head = "delivery has failed to these recipients";
    let Some(start) = lower.find(head) else {
        return found;
    };
    // The list starts on the line after the heading.
    let after = start + head.len();
    let after = lower[after..].find('\n').map_or(lower.len(), |e| after + e);
    let rest = &notice[after..];
    let rest_lower = &lower[after..];
    let split = rest_lower
        .find("diagnostic information for administrators")
        .unwrap_or(rest.len());
    for line in rest[..split].lines() {
        if let Some(a) = address::find_all(line).into_iter().next() {
            add(&mut found, a, None);
        }
    }
    let diag = &rest[split..];
    let lines: Vec<&str> = diag.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(a) = address::find_all(line).into_iter().next() else {
            continue;
        };
        // The address line itself, not a reply that quotes an address.
        if line.len() > a.len() + 4 {
            continue;
        }
        if let Some(next) = lines[i + 1..].iter().find(|l| !l.is_empty()) {
            let d = next
                .trim_start_matches("Remote Server returned")
                .trim()
                .trim_matches('\'')
                .trim_start_matches('#')
                .trim_end_matches('#')
                .trim();
            add(&mut found, a, one_line(d));
        }
    }
    found
}

/// Gmail: "Delivery to the following recipient failed permanently:" with
/// the technical details below, or the newer "Your message wasn't delivered
/// to ADDRESS because ..." with "The response from the remote server was:".
fn gmail(notice: &str, lower: &str) -> Found {
    let mut found = Found::new();
    let response = after_heading(
        notice,
        lower,
        &[
            "the error that the other server returned was:",
            "the response from the remote server was:",
            "the response was:",
            "technical details of permanent failure:",
            "technical details of temporary failure:",
        ],
    );
    for head in [
        "delivery to the following recipient failed permanently:",
        "delivery to the following recipients failed permanently:",
        "delivery to the following recipient has been delayed:",
    ] {
        if let Some(at) = lower.find(head) {
            let rest = &notice[at + head.len()..];
            // The addresses are the next paragraph.
            if let Some(p) = paragraphs(rest).first() {
                for a in address::find_all(p) {
                    add(&mut found, a, response.clone());
                }
            }
        }
    }
    let mut from = 0;
    let needle = "wasn't delivered to ";
    while let Some(at) = lower[from..].find(needle) {
        let start = from + at + needle.len();
        let line_end = notice[start..]
            .find('\n')
            .map_or(notice.len(), |e| start + e);
        if let Some(a) = address::find_all(&notice[start..line_end])
            .into_iter()
            .next()
        {
            add(&mut found, a, response.clone());
        }
        from = start;
    }
    found
}

/// The paragraph after the first of `heads` found, as one line.
fn after_heading(notice: &str, lower: &str, heads: &[&str]) -> Option<String> {
    heads.iter().find_map(|h| {
        let at = lower.find(h)?;
        let rest = &notice[at + h.len()..];
        paragraphs(rest).first().and_then(|p| one_line(p))
    })
}

/// Sendmail: the addresses under "----- The following addresses had
/// permanent fatal errors -----", each one's reason in the `(reason: ...)`
/// line below it or in the session transcript.
fn sendmail(notice: &str, lower: &str) -> Found {
    let mut found = Found::new();
    let Some(at) = [
        "the following addresses had permanent fatal errors",
        "the following addresses had transient non-fatal errors",
    ]
    .iter()
    .find_map(|h| lower.find(h).map(|i| i + h.len())) else {
        return found;
    };
    let rest = &notice[at..];
    // Skip the rest of the heading line (` -----`).
    let rest = rest.split_once('\n').map_or("", |(_, r)| r);
    let block = paragraphs(rest).first().copied().unwrap_or("");
    let lines: Vec<&str> = block.lines().map(str::trim).collect();
    let transcript = transcript(notice);
    for (i, line) in lines.iter().enumerate() {
        if found.len() >= MAX_RECIPIENTS {
            break;
        }
        if line.starts_with("(reason:") || line.starts_with("(expanded from") {
            continue;
        }
        for a in address::find_all(line) {
            let reason = lines
                .get(i + 1)
                .filter(|l| l.starts_with("(reason:"))
                .and_then(|l| one_line(l.trim_start_matches("(reason:").trim_end_matches(')')))
                .or_else(|| transcript.get(&a.to_ascii_lowercase()).cloned());
            add(&mut found, a, reason);
        }
    }
    found
}

/// The session transcript's lines with a reply code, by the address they
/// name (`<<< 550 5.1.1 <a@b>... User unknown`): built once, so a notice
/// with many addresses stays linear.
fn transcript(notice: &str) -> std::collections::HashMap<String, String> {
    let mut by_address = std::collections::HashMap::new();
    for line in notice.lines() {
        let l = line.trim().trim_start_matches('<').trim();
        if status::find_reply_code(l).is_none() {
            continue;
        }
        for a in address::find_all(l) {
            if let Some(d) = one_line(l) {
                by_address.entry(a.to_ascii_lowercase()).or_insert(d);
            }
        }
    }
    by_address
}

/// Postfix, qmail and Yahoo: a paragraph per recipient that starts with
/// `<address>:`, the rest of the paragraph being the remote server's words.
fn angle_paragraphs(notice: &str) -> Found {
    let mut found = Found::new();
    for p in paragraphs(notice) {
        let t = p.trim_start();
        if !t.starts_with('<') {
            continue;
        }
        let Some(close) = t.find(">:") else { continue };
        let Some(a) = address::first(&t[1..close]) else {
            continue;
        };
        add(&mut found, a, one_line(&t[close + 2..]));
    }
    found
}

/// Exim: after "The following address(es) failed:" (or, in a delay warning,
/// "...has not yet been delivered is/are:"), an indented address line per
/// recipient and its reasons indented further below it.
fn exim(notice: &str, lower: &str) -> Found {
    let mut found = Found::new();
    let Some(at) = [
        "address(es) failed:",
        "has not yet been delivered is:",
        "have not yet been delivered are:",
        "has not yet been delivered are:",
    ]
    .iter()
    .find_map(|h| lower.find(h).map(|i| i + h.len())) else {
        return found;
    };
    let lines: Vec<&str> = notice[at..].lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() {
            i += 1;
            continue;
        }
        if indent == 0 {
            // Back to prose: the list is over.
            break;
        }
        let Some(a) = address::find_all(trimmed).into_iter().next() else {
            i += 1;
            continue;
        };
        let mut j = i + 1;
        let mut words = String::new();
        while j < lines.len() {
            let l = lines[j];
            let ind = l.len() - l.trim_start().len();
            if l.trim().is_empty() || ind <= indent {
                break;
            }
            words.push(' ');
            words.push_str(l.trim());
            j += 1;
        }
        add(&mut found, a, one_line(&words));
        i = j;
    }
    found
}

/// The Message-ID quoted in a plain-text bounce's copy of the returned
/// message (searched after the copy marker when there is one, so the
/// notice's own words do not count).
pub(crate) fn quoted_message_id(body: &str) -> Option<String> {
    let lower = body.to_ascii_lowercase();
    let from = COPY.iter().filter_map(|m| lower.find(m)).min().unwrap_or(0);
    let mut lines = body[from..].lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start_matches(['>', ' ', '\t']);
        if t.get(..11)
            .is_some_and(|h| h.eq_ignore_ascii_case("message-id:"))
        {
            let v = t.get(11..).unwrap_or("").trim();
            let v = if v.is_empty() {
                lines.next().unwrap_or("").trim()
            } else {
                v
            };
            if let Some(id) = fields::message_id(v) {
                return Some(id);
            }
        }
    }
    None
}
