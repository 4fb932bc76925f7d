//! The whole send path: outcomes recorded, Ctrl-C and resume, reports that
//! feed back in, bad input.

use std::time::Duration;

use crate::harness::*;

#[test]
fn sends_everyone_once_and_records_every_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let maildir = tmp.path().join("maildir");
    let sink = Sink::start(
        &[
            "match=bounce,stage=rcpt,reply=550 5.1.1 No such user",
            "match=retry,stage=rcpt,times=1,reply=451 4.3.0 Try again later",
        ],
        Some(maildir.clone()),
    );
    let mut emails = addresses("user", 40);
    emails.push("bounce1@example.com".into());
    emails.push("bounce2@example.org".into());
    emails.push("retry1@example.com".into());
    emails.push("not-an-address".into());
    emails.push("USER3@example.com".into()); // duplicate of user3
    let c = TestCampaign::new(Spec::new(emails, sink.port()));
    let out = c.send(&[]);
    assert_eq!(code(&out), 1, "finished with failures -> exit 1");

    let s = c.status();
    assert_eq!(s["total"], 45);
    assert_eq!(s["sent"], 41);
    assert_eq!(s["failed"], 2);
    assert_eq!(s["invalid"], 1);
    assert_eq!(s["skipped"], 1);
    assert_eq!(s["pending"], 0);
    assert_eq!(s["deferred"], 0);
    assert_eq!(s["by_category"]["recipient_unknown"], 2);
    assert_eq!(s["complete"], true);

    let rows = c.rows();
    let bounce = &rows["bounce1@example.com"];
    assert_eq!(bounce["status"], "failed");
    assert_eq!(bounce["category"], "recipient_unknown");
    assert_eq!(bounce["smtp_code"], 550);
    assert_eq!(bounce["enhanced_code"], "5.1.1");
    assert_eq!(bounce["stage"], "rcpt_to");
    assert!(bounce["reply"].as_str().unwrap().contains("No such user"));
    let retried = &rows["retry1@example.com"];
    assert_eq!(retried["status"], "sent");
    assert_eq!(retried["attempts"], 2);
    assert!(
        retried["message_id"]
            .as_str()
            .unwrap()
            .contains("@acme.example")
    );
    assert_eq!(rows["not-an-address"]["status"], "invalid");

    // The Maildir has each accepted recipient exactly once, and nobody else.
    let got = maildir_deliveries(&maildir);
    assert_eq!(got.len(), 41);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    assert!(!got.contains_key("bounce1@example.com"));
    assert!(got.contains_key("retry1@example.com"));

    // Running again sends nothing more.
    let again = c.send(&[]);
    assert_eq!(code(&again), 1);
    assert_eq!(sink.handle().accepted(), 41);
}

#[test]
fn failures_report_feeds_back_in_as_recipients() {
    let sink = Sink::start(
        &["match=bounce,stage=rcpt,reply=550 5.1.1 No such user"],
        None,
    );
    let mut emails = addresses("ok", 10);
    emails.extend([
        "bounce-a@example.com".to_string(),
        "bounce-b@example.net".to_string(),
    ]);
    let c = TestCampaign::new(Spec::new(emails, sink.port()));
    c.send(&[]);
    let report = c.tmp.path().join("failed.csv");
    let out = c.edm(
        "report",
        &["--failures", "--output", report.to_str().unwrap()],
    );
    assert!(out.status.success());
    let text = std::fs::read_to_string(&report).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "id,email,first_name,status,category,smtp_code,enhanced_code,reply,attempts,last_attempt_at"
    );
    assert_eq!(text.lines().count(), 3, "{text}");

    // A new campaign whose recipients are the failures CSV, through a clean server.
    let clean = Sink::start(&[], None);
    let c2 = TestCampaign::new(Spec::new(vec![], clean.port()));
    std::fs::copy(&report, c2.path().join("recipients.csv")).unwrap();
    let out = c2.send(&[]);
    assert_eq!(code(&out), 0);
    let got: Vec<String> = clean.deliveries().into_keys().collect();
    assert_eq!(got, vec!["bounce-a@example.com", "bounce-b@example.net"]);
}

#[test]
fn ctrl_c_stops_cleanly_and_resume_sends_each_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let maildir = tmp.path().join("maildir");
    let sink = Sink::start(&[], Some(maildir.clone()));
    let emails = addresses("r", 400);
    let c = TestCampaign::new(Spec {
        delivery: "rate = 100",
        ..Spec::new(emails.clone(), sink.port())
    });
    let mut child = c.spawn_send(&[]);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "INT");
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(130), "Ctrl-C exits 130");
    let s = c.status();
    let sent = s["sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < 400, "stopped mid-way: {s}");
    assert_eq!(s["sending"], 0, "nothing left in flight: {s}");
    assert_eq!(s["in_doubt"], 0);
    assert_eq!(
        maildir_deliveries(&maildir).len() as u64,
        sent,
        "DB agrees with the Maildir"
    );

    let out = c.send(&["--rate", "0"]);
    assert_eq!(code(&out), 0);
    let got = maildir_deliveries(&maildir);
    assert_eq!(got.len(), 400);
    assert!(got.values().all(|n| *n == 1), "a recipient got two copies");
    assert_eq!(c.status()["sent"], 400);
}

#[test]
fn header_injection_stays_inside_its_header() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(vec![], sink.port()));
    std::fs::write(
        c.path().join("recipients.csv"),
        "id,email,first_name\r\n1,victim@example.com,\"Bob\r\nBcc: x@evil.example\"\r\n",
    )
    .unwrap();
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    let received = sink.handle().received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, vec!["victim@example.com"]);
    let data = String::from_utf8_lossy(received[0].data.as_ref().unwrap()).to_string();
    let headers = data.split("\r\n\r\n").next().unwrap();
    assert!(
        !headers
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "{headers}"
    );
}

#[test]
fn unknown_key_is_an_error_naming_key_and_file() {
    let c = TestCampaign::new(Spec {
        delivery: "ratez = 5",
        ..Spec::new(addresses("a", 1), dead_port())
    });
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ratez") && err.contains("campaign.toml"),
        "{err}"
    );
}

#[test]
fn missing_template_field_fails_that_recipient_only() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("t", 3), sink.port()));
    std::fs::write(
        c.path().join("templates/body.txt.hbs"),
        "Hi {{first_name}} {{last_name}}\n",
    )
    .unwrap();
    let out = c.send(&[]);
    assert_eq!(code(&out), 1);
    let rows = c.rows();
    let r = &rows["t0@example.com"];
    assert_eq!(r["status"], "failed");
    assert_eq!(r["category"], "template");
    assert!(r["reply"].as_str().unwrap().contains("last_name"), "{r}");
    assert_eq!(
        sink.handle().accepted(),
        0,
        "nothing sent with an empty field"
    );
}

#[test]
fn changed_inputs_are_refused_until_accepted() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("f", 3), sink.port()));
    assert_eq!(code(&c.send(&[])), 0);
    // Add a recipient and change the template.
    let mut csv = std::fs::read_to_string(c.path().join("recipients.csv")).unwrap();
    csv.push_str("9,new@example.com,New\r\n");
    std::fs::write(c.path().join("recipients.csv"), csv).unwrap();
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("recipients CSV") && err.contains("--accept-changes"),
        "{err}"
    );
    assert_eq!(sink.handle().accepted(), 3);
    let out = c.send(&["--accept-changes"]);
    assert_eq!(code(&out), 0);
    let got = sink.deliveries();
    assert_eq!(got.len(), 4);
    assert!(got.values().all(|n| *n == 1));
}
