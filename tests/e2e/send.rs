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

#[test]
fn each_kind_of_input_change_is_detected() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("k", 2), sink.port()));
    assert_eq!(
        code(&c.send(&["--limit", "1"])),
        3,
        "--limit leaves work: exit 3"
    );
    let toml_path = c.path().join("campaign.toml");
    let original = std::fs::read_to_string(&toml_path).unwrap();

    // The template.
    std::fs::write(
        c.path().join("templates/body.txt.hbs"),
        "Changed {{first_name}}\n",
    )
    .unwrap();
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("templates"));
    // The subject.
    std::fs::write(
        &toml_path,
        original.replace("subject = \"Hello", "subject = \"Hi"),
    )
    .unwrap();
    let out = c.send(&[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("templates or subject"));
    // The sender.
    std::fs::write(
        &toml_path,
        original.replace("news@acme.example", "other@acme.example"),
    )
    .unwrap();
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sender"));
    assert_eq!(sink.handle().accepted(), 1, "nothing sent while refused");

    // Accepted: the unsent recipient gets the new template.
    let out = c.send(&["--accept-changes"]);
    assert_eq!(code(&out), 0);
    let received = sink.handle().received();
    assert_eq!(received.len(), 2);
    let body = String::from_utf8_lossy(received[1].data.as_ref().unwrap()).to_string();
    assert!(body.contains("Changed Name1"), "{body}");
    assert!(body.contains("other@acme.example"));
}

#[test]
fn accepted_csv_change_adds_new_rows_and_skips_removed_ones() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("m", 4), sink.port()));
    assert_eq!(code(&c.send(&["--limit", "2"])), 3);
    // Remove m3 (unsent), keep the rest, add a new one.
    std::fs::write(
        c.path().join("recipients.csv"),
        "id,email,first_name\r\n0,m0@example.com,A\r\n1,m1@example.com,B\r\n2,m2@example.com,C\r\n7,new@example.com,N\r\n",
    )
    .unwrap();
    let out = c.send(&["--accept-changes"]);
    assert_eq!(code(&out), 0);
    let rows = c.rows();
    assert_eq!(rows["m3@example.com"]["status"], "skipped");
    assert_eq!(
        rows["m3@example.com"]["reply"],
        "removed from the recipients file"
    );
    assert_eq!(rows["new@example.com"]["status"], "sent");
    let got = sink.deliveries();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(!got.contains_key("m3@example.com"));
    assert!(got.values().all(|n| *n == 1));
}

#[test]
fn retry_puts_failed_recipients_back_and_they_are_sent() {
    let bad = Sink::start(
        &["match=later,stage=rcpt,reply=550 5.7.1 Blocked for now"],
        None,
    );
    let mut emails = addresses("x", 3);
    emails.push("later@example.com".into());
    let c = TestCampaign::new(Spec::new(emails, bad.port()));
    assert_eq!(code(&c.send(&[])), 1);
    assert_eq!(c.status()["failed"], 1);
    // Only `policy` failures, by category.
    let out = c.edm("retry", &["--category", "recipient_unknown"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("0 recipients"));
    let out = c.edm("retry", &["--category", "policy"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 recipients"));
    assert_eq!(c.status()["pending"], 1);
    // The block is lifted: point the campaign at a server that accepts.
    let good = Sink::start(&[], None);
    let toml = c.path().join("campaign.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            &format!("port = {}", bad.port()),
            &format!("port = {}", good.port()),
        ),
    )
    .unwrap();
    assert_eq!(code(&c.send(&[])), 0);
    assert_eq!(good.deliveries().len(), 1);
    assert_eq!(c.status()["failed"], 0);
}

/// `[dkim]` signs what `edm send` sends; Python's dkimpy verifies it as received.
#[test]
fn sent_messages_carry_a_dkim_signature_that_verifies() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template/tests/keys");
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        extra: &format!(
            "[dkim]\nselector = \"edm\"\ndomain = \"acme.example\"\nkey_file = \"{}\"\n",
            keys.join("rsa2048.pem").display()
        ),
        ..Spec::new(addresses("dk", 2), sink.port())
    });
    assert_eq!(code(&c.send(&[])), 0);
    let received = sink.handle().received();
    assert_eq!(received.len(), 2);
    let message = received[0].data.clone().unwrap();
    assert!(message.starts_with(b"DKIM-Signature:"), "signed first");
    let public = std::fs::read_to_string(keys.join("rsa2048.pub.b64")).unwrap();
    let record = format!("v=DKIM1; k=rsa; p={}", public.trim());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.eml"), &message).unwrap();
    std::fs::write(dir.path().join("r.txt"), record).unwrap();
    let script = r#"
import sys
try:
    import dkim
except ImportError:
    sys.exit(3)
record = open(sys.argv[2], "rb").read()
ok = dkim.verify(open(sys.argv[1], "rb").read(),
                 dnsfunc=lambda name, timeout=5: record if name.startswith(b"edm._domainkey.acme.example") else None)
sys.exit(0 if ok else 1)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("m.eml"))
        .arg(dir.path().join("r.txt"))
        .output();
    match out.map(|o| o.status.code()) {
        Ok(Some(0)) => {}
        Ok(Some(3)) | Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: python3 with dkimpy is not installed");
        }
        other => panic!("dkimpy did not verify the signature: {other:?}"),
    }
}
