//! Issue 13's loop end to end through a real mailbox: a campaign sent
//! through edm's sink with a VERP return path, then real DSNs, an ARF
//! report and mail that is not for this campaign written into the Maildir
//! that Dovecot serves; `edm bounces DIR` reads it over IMAP (TLS) or POP3
//! (STLS) and changes exactly the right recipients, once. Also
//! `[bounces] poll` during `edm send` against the same server.
//!
//! Dovecot is the fixture of crates/bounce/tests: a missing Dovecot skips
//! loudly, and fails under `CI`.

#[path = "../../crates/bounce/tests/dovecot/mod.rs"]
mod dovecot;

use std::collections::BTreeMap;

use dovecot::{Dovecot, PASSWORD, USER};

use crate::bounces::{arf, dsn};
use crate::harness::*;

const PW_ENV: &str = "EDM_TEST_MAILBOX_PW";

/// `[bounces]` with a VERP return path and this mailbox.
fn bounces_section(kind: &str, security: &str, port: u16, dc: &Dovecot, more: &str) -> String {
    format!(
        "\n[bounces]\nreturn_path = \"bounces+{{token}}@acme.example\"\nkind = \"{kind}\"\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"{security}\"\nusername = \"{USER}\"\npassword_env = \"{PW_ENV}\"\nca_file = \"{}\"\n{more}",
        dc.ca.display()
    )
}

/// What the sink recorded, by recipient: (MAIL FROM, Message-ID).
fn sent(sink: &Sink) -> BTreeMap<String, (String, String)> {
    sink.handle()
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
        .collect()
}

/// An out-of-office reply (RFC 3834): not a bounce.
fn auto_reply(rcpt: &str) -> String {
    format!(
        "From: {rcpt}\r\nTo: news@acme.example\r\nSubject: Out of office: Hello\r\nMessage-ID: <ooo-{rcpt}>\r\nDate: Tue, 01 Dec 2026 03:00:00 +0000\r\nAuto-Submitted: auto-replied\r\nPrecedence: auto_reply\r\n\r\nI am away until Monday.\r\n"
    )
}

/// Flags after `:2,` in a Maildir file name (`S`: \Seen).
fn flags(name: &str) -> &str {
    name.split_once(":2,").map_or("", |(_, f)| f)
}

fn bodies(msgs: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = msgs.iter().map(|(_, b)| b.clone()).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

fn suppressed(c: &TestCampaign) -> String {
    String::from_utf8_lossy(&c.edm_env_home("suppress", &["list"]).stdout).into_owned()
}

#[test]
fn imap_mailbox_changes_exactly_its_recipients_once() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let sink = Sink::start(&[], None);
    let extra = bounces_section("imap", "tls", dc.imaps, &dc, "");
    let mut spec = Spec::new(addresses("mb", 8), sink.port());
    spec.extra = &extra;
    let c = TestCampaign::new(spec);
    assert_eq!(code(&c.send(&[])), 0);
    let by_rcpt = sent(&sink);
    // Another campaign with the same return path and mailbox, through the
    // same sink: its bounce lands in the same INBOX.
    let mut other_spec = Spec::new(vec!["someone@example.org".into()], sink.port());
    other_spec.extra = &extra;
    let other = TestCampaign::new(other_spec);
    assert_eq!(code(&other.send(&[])), 0);
    let all = sent(&sink);
    let (other_rp, other_mid) = all["someone@example.org"].clone();

    let rcpt = |i: usize| format!("mb{i}@example.com");
    let rp = |i: usize| by_rcpt[&rcpt(i)].0.clone();
    let mid = |i: usize| by_rcpt[&rcpt(i)].1.clone();
    let applied: Vec<(&str, String)> = vec![
        // mb0, mb1: hard 5.1.1 by VERP -> bounced, suppressed.
        ("01.M1P1.test", dsn(&rp(0), &rcpt(0), &mid(0), "5.1.1", 1)),
        ("02.M2P1.test", dsn(&rp(1), &rcpt(1), &mid(1), "5.1.1", 2)),
        // mb2: a delay -> one soft bounce, not suppressed.
        ("03.M3P1.test", dsn(&rp(2), &rcpt(2), &mid(2), "4.4.7", 3)),
        // mb3: a complaint (ARF, tied by Message-ID) -> complained, suppressed.
        ("04.M4P1.test", arf(&rcpt(3), &mid(3))),
    ];
    let forged = rp(4).replacen('-', "-x", 1);
    let left: Vec<(&str, String)> = vec![
        // mb4: a forged bounce, right shape, wrong token.
        (
            "05.M5P1.test",
            dsn(&forged, &rcpt(4), "nope@acme.example", "5.1.1", 5),
        ),
        // mb5: an out-of-office reply.
        ("06.M6P1.test", auto_reply(&rcpt(5))),
        // The other campaign's recipient: its token is not ours.
        (
            "07.M7P1.test",
            dsn(&other_rp, "someone@example.org", &other_mid, "5.1.1", 7),
        ),
    ];
    for (name, text) in applied.iter().chain(left.iter()) {
        dc.deliver(name, text.as_bytes());
    }
    let before = c.rows();

    let out = c.edm_env("bounces", &["--json"], &[(PW_ENV, PASSWORD)]);
    assert_eq!(code(&out), 0, "{}", dc.log());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 7, "one line per message: {lines:?}");
    let results: Vec<&str> = lines.iter().filter_map(|l| l["result"].as_str()).collect();
    for want in [
        "bounced",
        "complained",
        "soft_bounce",
        "not_bounce",
        "unmatched",
    ] {
        assert!(results.contains(&want), "{want} in {results:?}");
    }

    let rows = c.rows();
    assert_eq!(rows[&rcpt(0)]["late"], "bounced");
    assert_eq!(rows[&rcpt(0)]["late_status"], "5.1.1");
    assert_eq!(rows[&rcpt(1)]["late"], "bounced");
    assert_eq!(rows[&rcpt(2)]["late"], serde_json::Value::Null);
    assert_eq!(rows[&rcpt(2)]["soft_bounces"], 1);
    assert_eq!(rows[&rcpt(3)]["late"], "complained");
    for i in 4..8 {
        assert_eq!(rows[&rcpt(i)], before[&rcpt(i)], "{}", rcpt(i));
    }
    let st = c.status();
    assert_eq!(
        (&st["bounced"], &st["complained"], &st["soft_bounced"]),
        (&2.into(), &1.into(), &1.into()),
        "{st}"
    );
    assert_eq!(st["sent"], 8, "a bounce does not unsend");
    // The other campaign is untouched.
    assert_eq!(other.status()["bounced"], 0);
    // `edm report --all` (CSV) says it too.
    let csv = String::from_utf8_lossy(&c.edm("report", &["--all"]).stdout).into_owned();
    let line = |email: &str| {
        csv.lines()
            .find(|l| l.contains(email))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line(&rcpt(0)).contains(",bounced,"), "{csv}");
    assert!(line(&rcpt(3)).contains(",complained,"), "{csv}");

    // Suppressed: the 5.1.1 ones and the complaint, not the delay.
    let listed = suppressed(&c);
    for i in [0, 1, 3] {
        assert!(listed.contains(&rcpt(i)), "{} in {listed}", rcpt(i));
    }
    for i in [2, 4, 5] {
        assert!(!listed.contains(&rcpt(i)), "{} not in {listed}", rcpt(i));
    }
    assert!(!listed.contains("someone@example.org"), "{listed}");

    // The applied messages moved to `processed`; the others stay in
    // INBOX, unread (another campaign may own them).
    let expect =
        |v: &[(&str, String)]| sorted(v.iter().map(|(_, t)| t.clone().into_bytes()).collect());
    let check_folders = || {
        assert_eq!(bodies(&dc.messages(Some("processed"))), expect(&applied));
        let inbox = dc.messages(None);
        assert_eq!(bodies(&inbox), expect(&left));
        for (name, _) in &inbox {
            assert!(
                !flags(name).contains('S'),
                "left message marked read: {name}"
            );
        }
    };
    check_folders();
    // The unmatched one is listed.
    let out = c.edm("bounces", &["--unmatched"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&rcpt(4)));

    // A second read changes nothing.
    let out = c.edm_env("bounces", &["--json"], &[(PW_ENV, PASSWORD)]);
    assert_eq!(code(&out), 0);
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        3,
        "only the left ones are read again: {lines:?}"
    );
    assert!(lines.iter().all(|l| l["result"] != "bounced"
        && l["result"] != "complained"
        && l["result"] != "soft_bounce"));
    assert_eq!(c.rows(), rows);
    assert_eq!(suppressed(&c), listed);
    check_folders();
}

#[test]
fn pop3_with_delete_removes_only_what_it_applied() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let sink = Sink::start(&[], None);
    let extra = bounces_section("pop3", "starttls", dc.pop3, &dc, "delete = true\n");
    let mut spec = Spec::new(addresses("pop", 4), sink.port());
    spec.extra = &extra;
    let c = TestCampaign::new(spec);
    assert_eq!(code(&c.send(&[])), 0);
    let by_rcpt = sent(&sink);
    let rcpt = |i: usize| format!("pop{i}@example.com");
    let (rp0, mid0) = by_rcpt[&rcpt(0)].clone();
    let mid1 = by_rcpt[&rcpt(1)].1.clone();
    dc.deliver(
        "01.M1P1.test",
        dsn(&rp0, &rcpt(0), &mid0, "5.1.1", 1).as_bytes(),
    );
    dc.deliver("02.M2P1.test", arf(&rcpt(1), &mid1).as_bytes());
    let ooo = auto_reply(&rcpt(2));
    dc.deliver("03.M3P1.test", ooo.as_bytes());

    let out = c.edm_env("bounces", &[], &[(PW_ENV, PASSWORD)]);
    assert_eq!(code(&out), 0, "{}", dc.log());
    let st = c.status();
    assert_eq!(
        (&st["bounced"], &st["complained"], &st["soft_bounced"]),
        (&1.into(), &1.into(), &0.into()),
        "{st}"
    );
    let listed = suppressed(&c);
    assert!(
        listed.contains(&rcpt(0)) && listed.contains(&rcpt(1)),
        "{listed}"
    );
    // Deleted: the two applied; the auto-reply stays.
    assert_eq!(bodies(&dc.messages(None)), vec![ooo.clone().into_bytes()]);

    let rows = c.rows();
    let out = c.edm_env("bounces", &["--json"], &[(PW_ENV, PASSWORD)]);
    assert_eq!(code(&out), 0);
    assert_eq!(json_lines(&out).len(), 1);
    assert_eq!(c.rows(), rows);
    assert_eq!(bodies(&dc.messages(None)), vec![ooo.into_bytes()]);
}

#[test]
fn a_mailbox_refusing_the_login_exits_2_without_the_password() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let sink = Sink::start(&[], None);
    let extra = bounces_section("imap", "tls", dc.imaps, &dc, "");
    let mut spec = Spec::new(addresses("bad", 2), sink.port());
    spec.extra = &extra;
    let c = TestCampaign::new(spec);
    assert_eq!(code(&c.send(&[])), 0);
    let wrong = "Wr0ng-pa55-never-shown";
    let out = c.edm_env("bounces", &[], &[(PW_ENV, wrong)]);
    assert_eq!(code(&out), 2);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cannot be read"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", dc.imaps)), "{text}");
    assert!(text.contains(USER), "names the user: {text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    // Nothing changed.
    assert_eq!(c.status()["bounced"], 0);
}

/// `[bounces] poll`: bounces in the mailbox before a run are applied while
/// it sends.
#[test]
fn poll_during_send_applies_what_the_mailbox_holds() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let sink = Sink::start(&[], None);
    let extra = bounces_section("imap", "tls", dc.imaps, &dc, "poll = \"10s\"\n");
    let mut spec = Spec::new(addresses("poll", 10), sink.port());
    spec.extra = &extra;
    let c = TestCampaign::new(spec);
    // A first run sends four (the mailbox is empty then).
    let out = c.edm_env("send", &["--no-tui", "--limit", "4"], &[(PW_ENV, PASSWORD)]);
    assert_eq!(code(&out), 3, "--limit reached");
    let by_rcpt = sent(&sink);
    let rcpt = |i: usize| format!("poll{i}@example.com");
    let (rp0, mid0) = by_rcpt[&rcpt(0)].clone();
    let mid1 = by_rcpt[&rcpt(1)].1.clone();
    dc.deliver(
        "01.M1P1.test",
        dsn(&rp0, &rcpt(0), &mid0, "5.1.1", 1).as_bytes(),
    );
    dc.deliver("02.M2P1.test", arf(&rcpt(1), &mid1).as_bytes());
    // The rest, at full speed: a run shorter than the read still waits
    // for the read it started (it used to abort it half way).
    let out = c.edm_env("send", &["--no-tui", "--rate", "0"], &[(PW_ENV, PASSWORD)]);
    assert_eq!(code(&out), 0, "{}", dc.log());
    let st = c.status();
    assert_eq!(st["sent"], 10);
    assert_eq!(
        (&st["bounced"], &st["complained"]),
        (&1.into(), &1.into()),
        "{st}"
    );
    assert_eq!(dc.messages(Some("processed")).len(), 2);
    assert!(dc.messages(None).is_empty());
}
