//! The engine's promises (issue 10): fail fast when the relay cannot be used
//! at all, stop (not fail the list) on a refusal that would hit every
//! message, and report in doubt exactly when a message may have been sent.
//! See docs/failures.md and docs/resume.md.

use std::time::{Duration, Instant};

use edm_store::Store;

use crate::harness::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Replaces a line the harness wrote in campaign.toml.
fn edit_toml(c: &TestCampaign, from: &str, to: &str) {
    let toml = c.path().join("campaign.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(&toml, text.replacen(from, to, 1)).unwrap();
}

fn events(c: &TestCampaign) -> Vec<String> {
    let store = Store::open_read_only(c.path().join(".edm/state.db")).unwrap();
    store
        .recent_events(200)
        .unwrap()
        .into_iter()
        .map(|(_, kind, text)| format!("{kind}: {text}"))
        .collect()
}

/// Nothing listens on the port: exit 2 within seconds (not `max_outage`),
/// the relay named on stderr, nobody failed.
#[test]
fn nothing_listening_fails_fast() {
    let port = dead_port();
    let c = TestCampaign::new(Spec::new(addresses("d", 15), port));
    // Long enough that waiting it out would show.
    edit_toml(&c, "max_outage = \"3s\"", "max_outage = \"5m\"");
    let start = Instant::now();
    let out = c.send(&[]);
    let took = start.elapsed();
    assert_eq!(code(&out), 2);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let err = stderr(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("connect_refused"), "{err}");
    let s = c.status();
    assert_eq!(s["failed"], 0);
    assert_eq!(s["pending"], 15, "{s}");
    assert_eq!(s["sending"], 0, "{s}");
    let ev = events(&c);
    assert!(
        ev.iter()
            .any(|e| e.starts_with("stop:") && e.contains(&format!("127.0.0.1:{port}"))),
        "{ev:#?}"
    );
}

/// A host name that does not resolve (RFC 2606 `.invalid`): exit 2 at once.
#[test]
fn unresolvable_host_fails_fast() {
    let c = TestCampaign::new(Spec::new(addresses("n", 5), 2525));
    edit_toml(&c, "max_outage = \"3s\"", "max_outage = \"5m\"");
    // The harness writes host = "127.0.0.1": point it at a name under .invalid.
    edit_toml(&c, "host = \"127.0.0.1\"", "host = \"nothing.invalid\"");
    let start = Instant::now();
    let out = c.send(&[]);
    let took = start.elapsed();
    assert_eq!(code(&out), 2);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let err = stderr(&out);
    assert!(err.contains("nothing.invalid:2525"), "{err}");
    assert!(err.contains("dns"), "{err}");
    let s = c.status();
    assert_eq!(s["failed"], 0);
    assert_eq!(s["pending"], 5, "{s}");
}

/// Checks a run stopped by a refusal that would hit every message: exit 2,
/// the reply on stderr, an event, nobody failed, everyone pending.
fn assert_stopped_by(c: &TestCampaign, out: &std::process::Output, reply: &str, n: u64) {
    assert_eq!(code(out), 2, "{}", String::from_utf8_lossy(&out.stdout));
    let err = stderr(out);
    assert!(err.contains(reply), "the reply is shown: {err}");
    let s = c.status();
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["sent"], 0, "{s}");
    assert_eq!(s["sending"], 0, "{s}");
    assert_eq!(s["pending"], n, "{s}");
    let ev = events(c);
    assert!(
        ev.iter()
            .any(|e| e.contains("refuses every message") && e.contains(reply)),
        "{ev:#?}"
    );
    // The reply is kept with the recipients it stopped at.
    let rows = c.rows();
    assert!(
        rows.values()
            .any(|r| r["reply"].as_str().is_some_and(|t| t.contains(reply))),
        "{rows:#?}"
    );
}

/// The relay refuses the sender at MAIL FROM: the run stops at once.
#[test]
fn sender_refused_stops_the_run() {
    let sink = Sink::start(
        &["stage=mail,match=news,reply=553 5.1.8 Sender address domain does not exist"],
        None,
    );
    let c = TestCampaign::new(Spec::new(addresses("s", 20), sink.port()));
    let out = c.send(&[]);
    assert_stopped_by(&c, &out, "Sender address domain does not exist", 20);
    // Which recipients were tried before the stop depends on the workers'
    // timing: every one tried keeps the category and the stage.
    let rows = c.rows();
    let tried: Vec<_> = rows.values().filter(|r| !r["category"].is_null()).collect();
    assert!(!tried.is_empty(), "{rows:#?}");
    for r in tried {
        assert_eq!(r["category"], "sender_refused", "{r}");
        assert_eq!(r["stage"], "mail_from", "{r}");
    }
}

/// `530 5.7.0 Authentication required` at MAIL FROM: no `[smtp] username`.
#[test]
fn authentication_required_at_mail_stops_the_run() {
    let sink = Sink::start(
        &["stage=mail,reply=530 5.7.0 Authentication required"],
        None,
    );
    let c = TestCampaign::new(Spec::new(addresses("a", 20), sink.port()));
    let out = c.send(&[]);
    assert_stopped_by(&c, &out, "Authentication required", 20);
}

/// Amazon SES with an unverified sender: `554 Message rejected: Email address
/// is not verified...` after the final dot.
#[test]
fn ses_unverified_sender_stops_the_run() {
    let sink = Sink::start(
        &[
            "stage=data,reply=554 Message rejected: Email address is not verified. The following identities failed the check in region US-EAST-1: news@acme.example",
        ],
        None,
    );
    let c = TestCampaign::new(Spec::new(addresses("v", 20), sink.port()));
    let out = c.send(&[]);
    assert_stopped_by(&c, &out, "Email address is not verified", 20);
    assert_eq!(c.rows()["v0@example.com"]["category"], "sender_refused");
}

/// The same generic permanent refusal for 12 recipients (the address in the
/// reply differs): stopped at the 10th, those refused pending again.
#[test]
fn identical_refusals_stop_the_run() {
    let sink = Sink::start(
        &["stage=rcpt,reply=554 5.7.1 Service unavailable; client host blocked"],
        None,
    );
    let c = TestCampaign::new(Spec::new(addresses("b", 12), sink.port()));
    let out = c.send(&[]);
    assert_stopped_by(&c, &out, "client host blocked", 12);
}

/// Unknown recipients in a row are about each recipient: they fail, the run
/// goes on.
#[test]
fn identical_unknown_recipients_do_not_stop_the_run() {
    let sink = Sink::start(
        &["stage=rcpt,match=gone,reply=550 5.1.1 No such user"],
        None,
    );
    let mut emails = addresses("gone", 12);
    emails.extend(addresses("ok", 3));
    let c = TestCampaign::new(Spec::new(emails, sink.port()));
    let out = c.send(&[]);
    assert_eq!(code(&out), 1);
    let s = c.status();
    assert_eq!(s["failed"], 12, "{s}");
    assert_eq!(s["sent"], 3, "{s}");
}

/// A relay that takes the whole message and never answers the final dot:
/// those recipients are in doubt (counted, listed), resent in this run and
/// still flagged; never resent without being reported.
#[test]
fn no_reply_to_the_final_dot_is_in_doubt_and_resent() {
    let sink = Sink::start(
        &["stage=data,match=stall,times=1,action=stall,secs=3"],
        None,
    );
    let mut emails = addresses("stall", 5);
    emails.extend(addresses("fine", 5));
    let c = TestCampaign::new(Spec {
        smtp: "data_timeout = \"500ms\"",
        ..Spec::new(emails, sink.port())
    });
    // The harness sets data_timeout = "10s" itself: this one wins.
    edit_toml(&c, "data_timeout = \"10s\"\n", "");
    let out = c.send(&[]);
    assert_eq!(code(&out), 0, "resent and accepted");
    let s = c.status();
    assert_eq!(s["in_doubt"], 5, "{s}");
    assert_eq!(s["sent"], 10, "{s}");
    let listed = c.edm("report", &["--in-doubt", "--format", "json"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    let mut emails: Vec<String> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["email"].to_string())
        .collect();
    emails.sort();
    assert_eq!(emails.len(), 5, "{listed}");
    assert!(emails.iter().all(|e| e.contains("stall")), "{emails:?}");
    // Every duplicate the sink holds is one edm reported in doubt.
    let dups: Vec<_> = sink
        .deliveries()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(dups.len() <= 5, "{dups:?}");
    assert!(dups.iter().all(|(a, _)| a.starts_with("stall")), "{dups:?}");
}

/// With `--in-doubt skip` they stay in doubt and the run ends with exit 3.
#[test]
fn no_reply_to_the_final_dot_with_skip_exits_3() {
    let sink = Sink::start(&["stage=data,match=stall,action=stall,secs=3"], None);
    let mut emails = addresses("stall", 3);
    emails.extend(addresses("fine", 4));
    let c = TestCampaign::new(Spec {
        smtp: "data_timeout = \"500ms\"",
        ..Spec::new(emails, sink.port())
    });
    edit_toml(&c, "data_timeout = \"10s\"\n", "");
    let out = c.send(&["--in-doubt", "skip"]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stdout));
    let s = c.status();
    assert_eq!(s["in_doubt"], 3, "{s}");
    assert_eq!(s["sent"], 4, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    let listed = c.edm("report", &["--in-doubt", "--format", "json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 3);
}
