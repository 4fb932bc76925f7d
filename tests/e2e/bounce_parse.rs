//! `edm bounces parse FILE... [--json]`: the parser's verdicts, one line per
//! file in argument order, unreadable files included (issue 13 point 3).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::*;

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/bounces/corpus")
        .join(format!("{name}.eml"))
}

fn bounces_parse(args: &[&Path], json: bool) -> Output {
    let mut cmd = Command::new(EDM);
    cmd.arg("bounces")
        .arg("parse")
        .args(args)
        .env("EDM_LOG", "warn");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("running edm");
    eprintln!(
        "--- edm bounces parse -> {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn one_json_line_per_file_in_argument_order_unreadable_ones_included() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.eml");
    // A directory cannot be read as a file either.
    let dir = tmp.path().join("a-directory.eml");
    std::fs::create_dir(&dir).unwrap();
    // A copy under a name with a space, CRLF kept as is.
    let copy = tmp.path().join("gmail failure.eml");
    std::fs::copy(corpus("gmail-dsn-failure"), &copy).unwrap();

    let files: Vec<PathBuf> = vec![
        corpus("sisimai-lhost-postfix-13"),
        missing.clone(),
        corpus("sisimai-arf-21"),
        corpus("autoreply-out-of-office"),
        dir.clone(),
        corpus("postfix-delayed"),
        copy.clone(),
        corpus("delivery-report-delivered"),
        corpus("not-bounce-newsletter"),
    ];
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = bounces_parse(&args, true);
    // Done, but some files could not be read.
    assert_eq!(code(&out), 1);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), files.len(), "{stdout}");
    for (line, file) in lines.iter().zip(&files) {
        assert_eq!(line["file"], file.display().to_string());
    }
    let verdicts: Vec<&str> = lines
        .iter()
        .map(|l| l["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "bounce",
            "not_bounce",
            "complaint",
            "auto_reply",
            "not_bounce",
            "bounce",
            "bounce",
            "delivery_report",
            "not_bounce"
        ]
    );
    // Only the unreadable ones carry an error, and it names the file.
    for (i, line) in lines.iter().enumerate() {
        let unreadable = i == 1 || i == 4;
        assert_eq!(line.get("error").is_some(), unreadable, "{line}");
        if unreadable {
            assert!(
                line["error"]
                    .as_str()
                    .unwrap()
                    .contains(&files[i].display().to_string())
            );
            assert_eq!(line["recipients"], Value::Array(vec![]));
        }
    }
    // Recipients in the message's order, with RFC 3463 statuses.
    let r = &lines[0]["recipients"];
    assert_eq!(r[0]["address"], "kijitora@example.jp");
    assert_eq!(r[0]["status"], "5.2.1");
    assert_eq!(r[0]["hard"], true);
    assert_eq!(r[1]["address"], "noraneko@example.jp");
    assert_eq!(r[1]["status"], "5.2.2");
    // A complaint's recipient has a null status and is not hard.
    assert_eq!(lines[2]["recipients"][0]["status"], Value::Null);
    assert_eq!(lines[2]["recipients"][0]["hard"], false);
    // A delay is a soft 4.x.x bounce.
    assert_eq!(lines[5]["recipients"][0]["status"], "4.4.1");
    assert_eq!(lines[5]["recipients"][0]["hard"], false);
    assert_eq!(
        lines[6]["recipients"][0]["address"],
        "missing.person@gmail.example"
    );
}

#[test]
fn readable_output_is_one_line_per_file_and_all_readable_exits_0() {
    let files = [
        corpus("sisimai-lhost-qmail-17"),
        corpus("autoreply-x-autoreply"),
    ];
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = bounces_parse(&args, false);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains("bounce: userunknown@libsisimai.net 5.1.1 hard"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("mailboxfull@libsisimai.net 5.2.2 hard"),
        "{}",
        lines[0]
    );
    assert!(lines[1].ends_with("auto_reply"), "{}", lines[1]);
}

#[test]
fn parse_needs_at_least_one_file() {
    let out = bounces_parse(&[], true);
    assert_eq!(code(&out), 2);
}

/// The header `name` of a raw message (first occurrence, unfolded).
fn header(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next()?.split("\n\n").next()?;
    let mut value: Option<String> = None;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

/// Messages edm really sent (through its sink, into a Maildir), returned
/// inside a Postfix-style DSN and an ARF report without Original-Rcpt-To:
/// the parser names the recipient and finds edm's own Message-ID, the third
/// way back to a recipient (issue 13 point 1).
#[test]
fn bounces_and_complaints_about_messages_edm_sent_name_their_message_id() {
    let tmp = tempfile::tempdir().unwrap();
    let maildir = tmp.path().join("maildir");
    let sink = Sink::start(&[], Some(maildir.clone()));
    let c = TestCampaign::new(Spec::new(addresses("reader", 2), sink.port()));
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);

    let mut sent: Vec<(String, String, String)> = Vec::new(); // (rcpt, message-id, raw)
    for e in std::fs::read_dir(maildir.join("new")).unwrap().flatten() {
        let raw = std::fs::read_to_string(e.path()).unwrap();
        let rcpt = header(&raw, "Delivered-To")
            .unwrap()
            .trim_matches(['<', '>'])
            .to_string();
        let id = header(&raw, "Message-ID").expect("edm sets a Message-ID");
        let id = id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string();
        sent.push((rcpt, id, raw));
    }
    sent.sort();
    assert_eq!(sent.len(), 2);

    let mut files = Vec::new();
    for (i, (rcpt, _, raw)) in sent.iter().enumerate() {
        let dsn = format!(
            "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n\
             To: news@example.com\r\n\
             Subject: Undelivered Mail Returned to Sender\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b{i}\"\r\n\
             \r\n\
             --b{i}\r\n\
             Content-Type: text/plain\r\n\
             \r\n\
             This is the mail system at host mx.example.org.\r\n\
             \r\n\
             --b{i}\r\n\
             Content-Type: message/delivery-status\r\n\
             \r\n\
             Reporting-MTA: dns; mx.example.org\r\n\
             \r\n\
             Final-Recipient: rfc822; {rcpt}\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: User unknown\r\n\
             \r\n\
             --b{i}\r\n\
             Content-Type: message/rfc822\r\n\
             \r\n\
             {raw}\r\n\
             --b{i}--\r\n"
        );
        let arf = format!(
            "From: fbl@isp.example\r\n\
             To: fbl@example.com\r\n\
             Subject: Abuse Report\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=feedback-report; boundary=\"a{i}\"\r\n\
             \r\n\
             --a{i}\r\n\
             Content-Type: message/feedback-report\r\n\
             \r\n\
             Feedback-Type: abuse\r\n\
             Version: 1\r\n\
             \r\n\
             --a{i}\r\n\
             Content-Type: message/rfc822\r\n\
             \r\n\
             {raw}\r\n\
             --a{i}--\r\n"
        );
        for (kind, text) in [("dsn", dsn), ("arf", arf)] {
            let p = tmp.path().join(format!("{kind}-{i}.eml"));
            std::fs::write(&p, text).unwrap();
            files.push(p);
        }
    }
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = bounces_parse(&args, true);
    assert_eq!(code(&out), 0);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, (rcpt, id, _)) in sent.iter().enumerate() {
        let (dsn, arf) = (&lines[2 * i], &lines[2 * i + 1]);
        assert_eq!(dsn["verdict"], "bounce");
        assert_eq!(dsn["recipients"][0]["address"], rcpt.as_str());
        assert_eq!(dsn["recipients"][0]["status"], "5.1.1");
        assert_eq!(dsn["original_message_id"], id.as_str());
        assert_eq!(arf["verdict"], "complaint");
        // No Original-Rcpt-To: the returned message's To names the person.
        assert_eq!(
            arf["recipients"][0]["address"]
                .as_str()
                .map(str::to_ascii_lowercase),
            Some(rcpt.to_ascii_lowercase())
        );
        assert_eq!(arf["original_message_id"], id.as_str());
    }
}
