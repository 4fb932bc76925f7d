//! Issue 13: bounces and complaints applied to the campaign: the VERP return
//! path on the wire, `edm bounces DIR --from`, the state, the suppression
//! list, the reputation breaker, `Feedback-ID`.
//! Real RFC 3464 DSNs and RFC 5965 ARF reports go through
//! `edm bounces --from` and edm's own parser.

use std::collections::BTreeSet;
use std::path::Path;

use crate::harness::*;

const BOUNCES: &str = r#"
[bounces]
return_path = "bounces+{token}@acme.example"
"#;

/// `bounces+<id>-<13 base32>@acme.example`: the token's shape.
fn is_verp(address: &str) -> bool {
    let Some(token) = address
        .strip_prefix("bounces+")
        .and_then(|a| a.strip_suffix("@acme.example"))
    else {
        return false;
    };
    let Some((id, mac)) = token.split_once('-') else {
        return false;
    };
    id.parse::<u64>().is_ok()
        && mac.len() == 13
        && mac
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

#[test]
fn mail_from_is_each_recipients_verp_address_and_feedback_id_is_signed() {
    let sink = Sink::start(&[], None);
    let mut spec = Spec::new(addresses("verp", 5), sink.port());
    spec.extra = BOUNCES;
    let c = TestCampaign::new(spec);
    let toml = std::fs::read_to_string(c.dir.join("campaign.toml")).unwrap();
    std::fs::write(
        c.dir.join("campaign.toml"),
        toml.replace(
            "list_unsubscribe =",
            "feedback_id = \"e2e:acme:news:edm\"\nlist_unsubscribe =",
        ),
    )
    .unwrap();
    assert_eq!(code(&c.send(&[])), 0);
    let received = sink.handle().received();
    assert_eq!(received.len(), 5);
    let senders: BTreeSet<String> = received.iter().map(|r| r.mail_from.clone()).collect();
    assert_eq!(
        senders.len(),
        5,
        "one return path per recipient: {senders:?}"
    );
    for r in &received {
        assert!(is_verp(&r.mail_from), "{}", r.mail_from);
        let data = String::from_utf8_lossy(r.data.as_deref().unwrap_or_default()).into_owned();
        assert!(
            data.contains("\r\nFeedback-ID: e2e:acme:news:edm\r\n"),
            "{data}"
        );
        // The From header is unchanged: only the envelope sender is VERP.
        assert!(
            data.contains("From: \"Acme Test\" <news@acme.example>"),
            "{data}"
        );
    }
    // The secret behind the tokens is in the state, never in reports.
    let out = c.edm("report", &["--all"]);
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = csv.lines().next().unwrap_or_default().to_string();
    assert!(
        header.ends_with(
            ",relay,provider_message_id,late,late_at,late_status,late_diagnostic,soft_bounces"
        ),
        "{header}"
    );
    let st = c.status();
    assert_eq!(
        (&st["bounced"], &st["complained"], &st["soft_bounced"]),
        (&0.into(), &0.into(), &0.into())
    );
}

#[test]
fn bounces_without_a_mailbox_exits_2_and_other_mail_changes_nothing() {
    let sink = Sink::start(&[], None);
    let mut spec = Spec::new(addresses("plain", 3), sink.port());
    spec.extra = BOUNCES;
    let c = TestCampaign::new(spec);
    assert_eq!(code(&c.send(&[])), 0);
    // No [bounces] kind: the mailbox cannot be read.
    let out = c.edm("bounces", &[]);
    assert_eq!(code(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no bounce mailbox"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An ordinary message (and an auto-reply) is not a bounce: nothing changes.
    let mail = c.tmp.path().join("mail");
    std::fs::create_dir_all(mail.join("new")).unwrap();
    std::fs::write(
        mail.join("new/1.eml"),
        "From: someone@example.com\r\nTo: news@acme.example\r\nSubject: hello\r\nMessage-ID: <hello@example.com>\r\n\r\nThanks for the news.\r\n",
    )
    .unwrap();
    let before = c.rows();
    let out = c.edm("bounces", &["--from", mail.to_str().unwrap(), "--json"]);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["result"], "not_bounce");
    assert_eq!(c.rows(), before);
    // A file that cannot be read is an error naming it.
    let missing = c.tmp.path().join("missing.eml");
    let out = c.edm("bounces", &["--from", missing.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.eml"));
    // Nothing unmatched was listed.
    let out = c.edm("bounces", &["--unmatched"]);
    assert_eq!(code(&out), 0);
    assert!(out.stdout.is_empty());
}

/// The reputation breaker: a relay refusing 10% of recipients as unknown
/// (550 5.1.1) stops the run once 200 were tried (over 5%), exit 2, the
/// message naming the figures and the worst domain; the rest stays pending;
/// `--accept-reputation` goes on to the end.
#[test]
fn a_relay_bouncing_one_in_ten_trips_the_reputation_breaker() {
    let sink = Sink::start(
        &["stage=rcpt,match=gone,reply=550 5.1.1 No such user"],
        None,
    );
    let emails: Vec<String> = (0..600)
        .map(|i| {
            if i % 10 == 3 {
                format!("gone{i}@bad.example")
            } else {
                format!("ok{i}@example.com")
            }
        })
        .collect();
    let spec = Spec::new(emails, sink.port());
    let c = TestCampaign::new(spec);
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("reputation breaker"), "{text}");
    assert!(text.contains("limit 5.0%"), "{text}");
    assert!(text.contains("worst domains: bad.example"), "{text}");
    let st = c.status();
    let pending = st["pending"].as_u64().unwrap();
    assert!(pending > 0, "the rest is pending: {st}");
    // Stopped soon after 200 (transactions in flight finish).
    let tried = st["sent"].as_u64().unwrap() + st["failed"].as_u64().unwrap();
    assert!((200..=260).contains(&tried), "{st}");

    // The next run starts from the same window: it stops at once...
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert_eq!(c.status()["pending"].as_u64().unwrap(), pending);
    // ...unless the operator accepts it.
    let out = c.send(&["--accept-reputation"]);
    assert_eq!(code(&out), 1, "complete, with failures");
    let st = c.status();
    assert_eq!(st["pending"], 0);
    assert_eq!(st["failed"], 60);
}

/// `[bounces] poll`: a running send reads the mailbox in the background; a
/// mailbox that cannot be read is said (without its password) and never
/// stops the run.
#[test]
fn a_mailbox_that_cannot_be_read_does_not_disturb_the_run() {
    let sink = Sink::start(&[], None);
    let extra = format!(
        "{BOUNCES}poll = \"10s\"\nkind = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"b\"\npassword_env = \"EDM_TEST_BOUNCE_PW\"\n",
        dead_port()
    );
    let mut spec = Spec::new(addresses("poll", 5), sink.port());
    spec.extra = &extra;
    let c = TestCampaign::new(spec);
    let out = c.edm_env(
        "send",
        // Half a second of sending: the first read happens at the start.
        &["--no-tui", "--rate", "10"],
        &[("EDM_TEST_BOUNCE_PW", "pw-never-shown")],
    );
    assert_eq!(code(&out), 0);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("bounce mailbox 127.0.0.1:"), "{stderr}");
    assert!(!stderr.contains("pw-never-shown"), "{stderr}");
    assert_eq!(c.status()["sent"], 5);
    // `edm bounces DIR` on the same mailbox: exit 2, the server named.
    let out = c.edm_env("bounces", &[], &[("EDM_TEST_BOUNCE_PW", "pw-never-shown")]);
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("cannot be read"), "{stderr}");
    assert!(!stderr.contains("pw-never-shown"), "{stderr}");
}

/// An RFC 3464 DSN as Postfix writes it, for a message edm sent to
/// `rcpt` with `return_path` as its envelope sender.
pub(crate) fn dsn(
    return_path: &str,
    rcpt: &str,
    message_id: &str,
    status: &str,
    n: usize,
) -> String {
    let action = if status.starts_with('4') {
        "delayed"
    } else {
        "failed"
    };
    format!(
        "Return-Path: <>\r\n\
Delivered-To: {return_path}\r\n\
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n\
To: {return_path}\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Message-ID: <dsn{n}.{status}@mx.example.net>\r\n\
Date: Tue, 01 Dec 2026 03:00:00 +0000\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"B{n}\"\r\n\
\r\n\
--B{n}\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is the mail system at host mx.example.net.\r\n\
I'm sorry to have to inform you that your message could not be delivered.\r\n\
\r\n\
--B{n}\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.net\r\n\
Arrival-Date: Tue, 01 Dec 2026 02:59:59 +0000\r\n\
\r\n\
Final-Recipient: rfc822; {rcpt}\r\n\
Original-Recipient: rfc822;{rcpt}\r\n\
Action: {action}\r\n\
Status: {status}\r\n\
Remote-MTA: dns; mx.example.com\r\n\
Diagnostic-Code: smtp; 550 {status} <{rcpt}>: Recipient address rejected\r\n\
\r\n\
--B{n}\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: \"Acme Test\" <news@acme.example>\r\n\
To: {rcpt}\r\n\
Subject: Hello\r\n\
Message-ID: <{message_id}>\r\n\
\r\n\
--B{n}--\r\n"
    )
}

/// An RFC 5965 ARF report as a feedback loop sends it (no VERP: the
/// returned message's Message-ID ties it).
pub(crate) fn arf(rcpt: &str, message_id: &str) -> String {
    format!(
        "From: fbl@isp.example\r\n\
To: abuse@acme.example\r\n\
Subject: FW: Hello\r\n\
Message-ID: <arf-{message_id}>\r\n\
Date: Tue, 01 Dec 2026 03:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"ARF\"\r\n\
\r\n\
--ARF\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is an email abuse report for an email message received from IP 192.0.2.1.\r\n\
\r\n\
--ARF\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <bounces@acme.example>\r\n\
Original-Rcpt-To: <{rcpt}>\r\n\
Arrival-Date: Tue, 01 Dec 2026 02:59:59 +0000\r\n\
\r\n\
--ARF\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: \"Acme Test\" <news@acme.example>\r\n\
To: {rcpt}\r\n\
Subject: Hello\r\n\
Message-ID: <{message_id}>\r\n\
\r\n\
--ARF--\r\n"
    )
}

fn write_mail(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join("new")).unwrap();
    std::fs::write(dir.join("new").join(name), text).unwrap();
}

#[test]
fn dsns_and_arf_reports_change_exactly_their_recipients_once() {
    let sink = Sink::start(&[], None);
    let mut spec = Spec::new(addresses("late", 8), sink.port());
    spec.extra = BOUNCES;
    let c = TestCampaign::new(spec);
    assert_eq!(code(&c.send(&[])), 0);
    let by_rcpt: std::collections::BTreeMap<String, (String, String)> = sink
        .handle()
        .received()
        .into_iter()
        .map(|r| {
            (
                r.rcpt_to[0].clone(),
                (
                    r.mail_from.clone(),
                    r.message_id.clone().unwrap_or_default(),
                ),
            )
        })
        .collect();
    let rp = |i: usize| by_rcpt[&format!("late{i}@example.com")].0.clone();
    let mid = |i: usize| by_rcpt[&format!("late{i}@example.com")].1.clone();
    let rcpt = |i: usize| format!("late{i}@example.com");
    let mail = c.tmp.path().join("mail");
    // late0: hard bounce 5.1.1 by VERP -> bounced, suppressed.
    write_mail(&mail, "01.eml", &dsn(&rp(0), &rcpt(0), &mid(0), "5.1.1", 1));
    // late1: complaint tied by Message-ID -> complained, suppressed.
    write_mail(&mail, "02.eml", &arf(&rcpt(1), &mid(1)));
    // late2: policy refusal 5.7.1 -> bounced, not suppressed.
    write_mail(&mail, "03.eml", &dsn(&rp(2), &rcpt(2), &mid(2), "5.7.1", 3));
    // late3: a delay 4.4.7 -> one soft bounce.
    write_mail(&mail, "04.eml", &dsn(&rp(3), &rcpt(3), &mid(3), "4.4.7", 4));
    // late4: a forged bounce, right shape, wrong token -> ignored.
    let forged = rp(4).replacen("-", "-x", 1);
    write_mail(
        &mail,
        "05.eml",
        &dsn(&forged, &rcpt(4), "nope@acme.example", "5.1.1", 5),
    );
    let before = c.rows();
    let out = c.edm("bounces", &["--from", mail.to_str().unwrap()]);
    assert_eq!(code(&out), 0);
    let rows = c.rows();
    assert_eq!(rows[&rcpt(0)]["late"], "bounced");
    assert_eq!(rows[&rcpt(0)]["late_status"], "5.1.1");
    assert_eq!(rows[&rcpt(1)]["late"], "complained");
    assert_eq!(rows[&rcpt(2)]["late"], "bounced");
    assert_eq!(rows[&rcpt(3)]["late"], serde_json::Value::Null);
    assert_eq!(rows[&rcpt(3)]["soft_bounces"], 1);
    // Nothing else changed, statuses included.
    for i in 4..8 {
        assert_eq!(rows[&rcpt(i)], before[&rcpt(i)], "{}", rcpt(i));
    }
    for r in rows.values() {
        assert_eq!(r["status"], "sent");
    }
    let st = c.status();
    assert_eq!(
        (&st["bounced"], &st["complained"], &st["soft_bounced"]),
        (&2.into(), &1.into(), &1.into())
    );
    assert_eq!(st["sent"], 8, "a bounce does not unsend (daily quota)");
    // The shared suppression list has the 5.1.1 and the complaint.
    let out = c.edm_env_home("suppress", &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains(&rcpt(0)) && listed.contains(&rcpt(1)),
        "{listed}"
    );
    assert!(
        !listed.contains(&rcpt(2)),
        "5.7.1 does not suppress: {listed}"
    );
    // The forged one is listed as unmatched.
    let out = c.edm("bounces", &["--unmatched"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&rcpt(4)));
    // A second run changes nothing.
    let out = c.edm("bounces", &["--from", mail.to_str().unwrap(), "--json"]);
    assert_eq!(code(&out), 0);
    assert_eq!(c.rows(), rows);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"bounced\""));
}

impl TestCampaign {
    /// `edm ARGS` without a campaign directory, with this campaign's EDM_HOME.
    pub(crate) fn edm_env_home(&self, sub: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(EDM)
            .arg(sub)
            .args(args)
            .env("EDM_HOME", &self.home)
            .output()
            .expect("running edm")
    }
}
