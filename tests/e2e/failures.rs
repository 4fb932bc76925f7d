//! One test per failure category and provider dialect, against the sink
//! scripted per recipient (local-part prefix). See docs/failures.md.

use std::process::Command;
use std::time::{Duration, Instant};

use edm_store::Store;

use crate::harness::*;

const TENCENT_RATE: &str = r#"554 5.0.0 Error: transaction failed, blame it on the weather: ##SES-response-json: {"Response":{"Error":{"Code":"RequestLimitExceeded.SmtpRateLimit","Message":"smtp rate limit exceeded"},"RequestId":"e2e"}}"#;

fn events(c: &TestCampaign) -> Vec<String> {
    let store = Store::open_read_only(c.path().join(".edm/state.db")).unwrap();
    store
        .recent_events(200)
        .unwrap()
        .into_iter()
        .map(|(_, kind, text)| format!("{kind}: {text}"))
        .collect()
}

/// Transient failures of every kind end `sent` after a retry.
#[test]
fn transient_failures_are_retried_until_sent() {
    let tencent = format!("match=tencent,stage=data,times=1,reply={TENCENT_RATE}");
    let sink = Sink::start(
        &[
            &tencent,
            "match=ses,stage=data,times=1,reply=454 Throttling failure: Maximum sending rate exceeded.",
            "match=gmail,stage=rcpt,times=1,reply=421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
            "match=grey,stage=rcpt,times=1,reply=450 4.7.1 Greylisted, please try again in 1 seconds",
            "match=full,stage=rcpt,times=1,reply=452 4.2.2 Mailbox full",
            "match=drop,stage=data,times=1,action=disconnect",
            "match=slow,stage=rcpt,times=1,action=stall,secs=4",
            "match=busy,stage=rcpt,times=2,reply=451 4.3.0 Local problem, try later",
        ],
        None,
    );
    let prefixes = [
        "tencent", "ses", "gmail", "grey", "full", "drop", "slow", "busy",
    ];
    let mut emails: Vec<String> = prefixes
        .iter()
        .map(|p| format!("{p}@example.com"))
        .collect();
    emails.extend(addresses("plain", 10));
    let c = TestCampaign::new(Spec {
        smtp: "command_timeout = \"1s\"",
        ..Spec::new(emails, sink.port())
    });
    let out = c.send(&[]);
    assert_eq!(code(&out), 0, "every transient failure ends sent");
    let rows = c.rows();
    for p in prefixes {
        let r = &rows[&format!("{p}@example.com")];
        assert_eq!(r["status"], "sent", "{p}: {r}");
    }
    // Throttling does not use up attempts; the others do.
    assert_eq!(
        rows["tencent@example.com"]["attempts"], 1,
        "{}",
        rows["tencent@example.com"]
    );
    assert_eq!(
        rows["ses@example.com"]["attempts"], 1,
        "{}",
        rows["ses@example.com"]
    );
    assert_eq!(
        rows["gmail@example.com"]["attempts"], 1,
        "{}",
        rows["gmail@example.com"]
    );
    assert_eq!(
        rows["drop@example.com"]["attempts"], 2,
        "{}",
        rows["drop@example.com"]
    );
    assert_eq!(
        rows["slow@example.com"]["attempts"], 2,
        "{}",
        rows["slow@example.com"]
    );
    assert_eq!(
        rows["busy@example.com"]["attempts"], 3,
        "{}",
        rows["busy@example.com"]
    );
    let stats = sink.handle().stats();
    assert_eq!(stats.rejected(554), 1);
    assert_eq!(stats.rejected(454), 1);
    assert_eq!(stats.rejected(421), 1);
    // Throttling lowered the rate, and said why.
    let ev = events(&c);
    assert!(
        ev.iter()
            .any(|e| e.starts_with("rate:") && e.contains("throttled")),
        "{ev:#?}"
    );
}

/// Permanent failures end `failed` with the right category, stage and reply.
#[test]
fn permanent_failures_are_classified() {
    let sink = Sink::start(
        &[
            "match=unknown,stage=rcpt,reply=550 5.1.1 The email account that you tried to reach does not exist",
            "match=nullmx,stage=rcpt,reply=556 5.1.10 Recipient address has null MX",
            "match=full,stage=rcpt,reply=552 5.2.2 Mailbox full",
            "match=big,stage=data,reply=552 5.3.4 Message size exceeds fixed limit",
            "match=spam,stage=data,reply=550 5.7.1 Message rejected as spam",
            "match=dmarc,stage=data,reply=550 5.7.26 Unauthenticated email is not accepted due to DMARC policy",
            "match=content,stage=data,reply=554 5.6.0 Message content rejected",
            r#"match=tencentbig,stage=data,reply=554 5.0.0 Error: ##SES-response-json: {"Response":{"Error":{"Code":"FailedOperation.EmailTooLarge","Message":"The email is too large"}}}"#,
            "match=other,stage=rcpt,reply=554 Denied",
        ],
        None,
    );
    let cases = [
        ("unknown", "recipient_unknown", "rcpt_to", 550),
        ("nullmx", "recipient_unknown", "rcpt_to", 556),
        ("full", "mailbox_full", "rcpt_to", 552),
        ("big", "message_too_large", "data", 552),
        ("spam", "policy", "data", 550),
        ("dmarc", "policy", "data", 550),
        ("content", "content_rejected", "data", 554),
        ("tencentbig", "message_too_large", "data", 554),
        ("other", "other_permanent", "rcpt_to", 554),
    ];
    let mut emails: Vec<String> = cases
        .iter()
        .map(|c| format!("{}@example.com", c.0))
        .collect();
    emails.push("fine@example.com".into());
    let c = TestCampaign::new(Spec::new(emails, sink.port()));
    let out = c.send(&[]);
    assert_eq!(code(&out), 1);
    let rows = c.rows();
    for (prefix, category, stage, smtp) in cases {
        let r = &rows[&format!("{prefix}@example.com")];
        assert_eq!(r["status"], "failed", "{prefix}: {r}");
        assert_eq!(r["category"], category, "{prefix}: {r}");
        assert_eq!(r["stage"], stage, "{prefix}: {r}");
        assert_eq!(r["smtp_code"], smtp, "{prefix}: {r}");
        assert_eq!(
            r["attempts"], 1,
            "{prefix}: permanent failures are not retried"
        );
    }
    assert_eq!(
        rows["tencentbig@example.com"]["reply"]
            .as_str()
            .unwrap()
            .split(" (")
            .next(),
        Some("The email is too large")
    );
    assert_eq!(rows["fine@example.com"]["status"], "sent");
    let s = c.status();
    assert_eq!(s["by_category"]["policy"], 2);
}

/// A refused sender would be refused for every recipient: the run stops
/// (exit 2) with the category kept, nobody failed (see also `promises`).
#[test]
fn sender_refused_stops_with_its_category() {
    let sink = Sink::start(
        &["stage=mail,match=news,reply=553 5.1.8 Sender address domain does not exist"],
        None,
    );
    let c = TestCampaign::new(Spec::new(addresses("s", 3), sink.port()));
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    let rows = c.rows();
    // The run stops at the first identical refusals, so which recipients were
    // tried before it stopped depends on the workers' timing: every row is
    // pending, and every one that was tried keeps the category and stage.
    assert!(rows.values().all(|r| r["status"] == "pending"), "{rows:?}");
    let tried: Vec<_> = rows.values().filter(|r| !r["category"].is_null()).collect();
    assert!(!tried.is_empty(), "{rows:?}");
    for r in tried {
        assert_eq!(r["category"], "sender_refused");
        assert_eq!(r["stage"], "mail_from");
    }
}

/// Authentication refused: the run stops at once, exit 2, nobody failed.
#[test]
fn auth_refused_stops_the_run_and_fails_nobody() {
    let sink = Sink::start_with(&[], None, |cfg| {
        cfg.auth = Some(("edm".into(), "right-password".into()));
    });
    let c = TestCampaign::new(Spec {
        smtp: "username = \"edm\"\npassword_env = \"EDM_E2E_PASSWORD\"",
        ..Spec::new(addresses("a", 20), sink.port())
    });
    let out = Command::new(EDM)
        .args(["send", c.path().to_str().unwrap(), "--no-tui"])
        .env("EDM_E2E_PASSWORD", "wrong-password")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 2, "{stdout}");
    assert!(stdout.contains("authentication"), "{stdout}");
    assert!(
        !stdout.contains("wrong-password"),
        "the password never appears"
    );
    let s = c.status();
    assert_eq!(s["failed"], 0);
    assert_eq!(s["sent"], 0);
    assert_eq!(s["pending"], 20, "{s}");
    assert_eq!(s["sending"], 0);

    // The right password sends everything.
    let out = Command::new(EDM)
        .args(["send", c.path().to_str().unwrap(), "--no-tui"])
        .env("EDM_E2E_PASSWORD", "right-password")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    assert_eq!(c.status()["sent"], 20);
}

/// Nothing listening, before any session worked: the run ends after 3
/// failed attempts (not `max_outage`) with exit 2, and nobody is marked
/// failed. The breaker and `max_outage` are for a relay that has worked.
#[test]
fn server_down_stops_the_run_and_fails_nobody() {
    let port = dead_port();
    let c = TestCampaign::new(Spec::new(addresses("d", 15), port));
    let start = Instant::now();
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert!(start.elapsed() < Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cannot be used"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}")),
        "the relay is named"
    );
    let s = c.status();
    assert_eq!(s["failed"], 0);
    assert_eq!(s["pending"], 15, "{s}");
    let ev = events(&c);
    assert!(ev.iter().any(|e| e.contains("connect_refused")), "{ev:#?}");
}

/// The sink's receive times follow the configured rate (generous tolerance:
/// the precise figure is in tests/bench/rate.sh).
#[test]
fn rate_limit_is_respected() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        delivery: "rate = 40",
        ..Spec::new(addresses("r", 81), sink.port())
    });
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    let mut at: Vec<i64> = sink.handle().received().iter().map(|r| r.at_ms).collect();
    at.sort();
    assert_eq!(at.len(), 81);
    let span = (at[80] - at[0]) as f64 / 1000.0;
    let achieved = 80.0 / span;
    assert!(
        (30.0..=50.0).contains(&achieved),
        "achieved {achieved:.1}/s for 40/s"
    );
    // No one-second window holds far more than rate + burst. Receive times carry
    // scheduling jitter on a loaded machine: the exact figure is the bench's.
    let max_window = (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t - at[i] < 1000).count())
        .max()
        .unwrap();
    assert!(
        max_window <= 50,
        "{max_window} messages in one second at 40/s"
    );
}

/// A provider quota reply pauses the run (here for `quota_pause`), fails nobody.
#[test]
fn quota_exceeded_pauses_and_fails_nobody() {
    let sink = Sink::start(
        &[
            "match=quota,stage=data,times=1,reply=454 Throttling failure: Daily message quota exceeded.",
        ],
        None,
    );
    let mut emails = vec!["quota@example.com".to_string()];
    emails.extend(addresses("after", 6));
    let c = TestCampaign::new(Spec {
        delivery: "quota_pause = \"1s\"",
        ..Spec::new(emails, sink.port())
    });
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    let rows = c.rows();
    assert_eq!(rows["quota@example.com"]["status"], "sent");
    assert_eq!(
        rows["quota@example.com"]["attempts"], 1,
        "a quota deferral uses no attempt"
    );
    let ev = events(&c);
    assert!(ev.iter().any(|e| e.contains("quota exceeded")), "{ev:#?}");
}

/// `daily_quota` is exact, and counted from the store so it survives restarts.
#[test]
fn daily_quota_is_exact_across_runs() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        delivery: "daily_quota = 5",
        ..Spec::new(addresses("dq", 8), sink.port())
    });
    let out = c.send(&[]);
    assert_eq!(code(&out), 3, "not finished: quota used up");
    assert!(String::from_utf8_lossy(&out.stdout).contains("daily quota"));
    assert_eq!(c.status()["sent"], 5);
    let out = c.send(&[]);
    assert_eq!(code(&out), 3);
    assert_eq!(
        sink.handle().accepted(),
        5,
        "a restart does not reset the quota"
    );
    assert_eq!(c.status()["pending"], 3);
}

/// A server that accepts TCP but never greets: connect_timeout, breaker, exit 2.
#[test]
fn silent_server_is_a_connect_timeout_outage() {
    let sink = Sink::start(&["stage=greeting,action=stall,secs=30"], None);
    let c = TestCampaign::new(Spec {
        smtp: "connect_timeout = \"300ms\"",
        ..Spec::new(addresses("g", 5), sink.port())
    });
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    let s = c.status();
    assert_eq!(s["failed"], 0);
    assert_eq!(s["pending"], 5);
    let ev = events(&c);
    assert!(ev.iter().any(|e| e.contains("connect_timeout")), "{ev:#?}");
}

/// STARTTLS required but not offered: a TLS failure, never a plain-text send.
#[test]
fn starttls_required_but_missing_never_sends_in_the_clear() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        smtp: "security = \"starttls\"",
        ..Spec::new(addresses("tls", 3), sink.port())
    });
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert_eq!(
        sink.handle().stats().transactions,
        0,
        "no MAIL FROM in the clear"
    );
    let ev = events(&c);
    assert!(ev.iter().any(|e| e.contains("tls")), "{ev:#?}");
    assert_eq!(c.status()["failed"], 0);
}

/// Per-domain limits: a slow domain gets its own rate, the others are not held to it.
#[test]
fn per_domain_rate_applies_to_that_domain_only() {
    let sink = Sink::start(&[], None);
    let mut emails: Vec<String> = (0..6).map(|i| format!("g{i}@gmail.example")).collect();
    emails.extend(addresses("fast", 20));
    let c = TestCampaign::new(Spec {
        extra: "[delivery.domains.\"gmail.example\"]\nrate = 5\nconcurrency = 1",
        ..Spec::new(emails, sink.port())
    });
    assert_eq!(code(&c.send(&[])), 0);
    let received = sink.handle().received();
    let mut gmail: Vec<i64> = received
        .iter()
        .filter(|r| r.rcpt_to[0].ends_with("@gmail.example"))
        .map(|r| r.at_ms)
        .collect();
    gmail.sort();
    assert_eq!(gmail.len(), 6);
    let span = gmail[5] - gmail[0];
    assert!(
        span >= 750,
        "6 messages at 5/s (one burst, then 200 ms apart) take at least 0.8 s, took {span} ms"
    );
}

/// A domain at its limit does not hold up the others, even on one connection.
#[test]
fn a_limited_domain_does_not_block_the_others() {
    let sink = Sink::start(&[], None);
    let mut emails: Vec<String> = (0..4).map(|i| format!("s{i}@slow.example")).collect();
    emails.extend(addresses("quick", 20));
    let c = TestCampaign::new(Spec {
        extra: "[delivery.domains.\"slow.example\"]\nrate = 2",
        ..Spec::new(emails, sink.port())
    });
    // `delivery` already sets concurrency = 4 in the harness: override on the command line.
    assert_eq!(code(&c.send(&["--concurrency", "1"])), 0);
    let received = sink.handle().received();
    let last_slow = received
        .iter()
        .filter(|r| r.rcpt_to[0].ends_with("@slow.example"))
        .map(|r| r.at_ms)
        .max()
        .unwrap();
    let last_quick = received
        .iter()
        .filter(|r| r.rcpt_to[0].starts_with("quick"))
        .map(|r| r.at_ms)
        .max()
        .unwrap();
    assert_eq!(received.len(), 24);
    assert!(
        last_quick < last_slow,
        "the quick domain waited behind the slow one: last quick {last_quick}, last slow {last_slow}"
    );
}
