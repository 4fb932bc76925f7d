//! The shared suppression list: `edm suppress`, and bounces of one campaign
//! not sent to by the next.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::*;

/// `edm suppress ARGS` with `EDM_HOME=home`.
fn suppress(home: &Path, args: &[&str]) -> Output {
    let out = Command::new(EDM)
        .arg("suppress")
        .args(args)
        .env("EDM_HOME", home)
        .env("EDM_LOG", "warn")
        .output()
        .expect("running edm");
    eprintln!(
        "--- edm suppress {args:?} -> {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn listed(home: &Path) -> Vec<String> {
    let out = suppress(home, &["list"]);
    assert_eq!(code(&out), 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("email,reason,added_at,campaign"));
    lines
        .map(|l| l.split(',').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_bounce_in_one_campaign_is_suppressed_in_the_next() {
    let sink = Sink::start(
        &["match=bounce,stage=rcpt,reply=550 5.1.1 No such user"],
        None,
    );
    let mut emails = addresses("ok", 3);
    emails.push("bounce-a@example.com".into());
    let a = TestCampaign::new(Spec::new(emails.clone(), sink.port()));
    assert_eq!(code(&a.send(&[])), 1);
    let file = a.home.join("suppression.csv");
    let text = std::fs::read_to_string(&file).expect("the shared list was written");
    assert!(
        text.contains("bounce-a@example.com,recipient_unknown: 550 5.1.1 No such user,"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with(",e2e"),
        "the campaign is named: {text}"
    );
    assert_eq!(listed(&a.home), ["bounce-a@example.com"]);

    // Campaign B, same EDM_HOME, a server that would accept everyone.
    let clean = Sink::start(&[], None);
    let mut b = TestCampaign::new(Spec::new(emails.clone(), clean.port()));
    b.home = a.home.clone();
    assert_eq!(code(&b.send(&[])), 0);
    let rows = b.rows();
    assert_eq!(rows["bounce-a@example.com"]["status"], "suppressed");
    assert_eq!(b.status()["sent"], 3);
    assert!(!clean.deliveries().contains_key("bounce-a@example.com"));

    // A third run of A adds nothing twice.
    a.send(&[]);
    assert_eq!(listed(&a.home), ["bounce-a@example.com"]);
}

#[test]
fn auto_suppress_can_be_turned_off() {
    let sink = Sink::start(
        &["match=bounce,stage=rcpt,reply=550 5.1.1 No such user"],
        None,
    );
    let c = TestCampaign::new(Spec::new(
        vec!["bounce-b@example.com".into(), "ok@example.com".into()],
        sink.port(),
    ));
    let toml = c.path().join("campaign.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace("[smtp]", "auto_suppress = false\n\n[smtp]"),
    )
    .unwrap();
    assert_eq!(code(&c.send(&[])), 1);
    assert!(!c.home.join("suppression.csv").exists());
}

#[test]
fn suppress_add_list_remove_import_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    assert!(listed(&home).is_empty());

    let out = suppress(
        &home,
        &[
            "add",
            "Ann@example.com",
            "bob@example.com",
            "--reason",
            "complaint",
        ],
    );
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("2 added"));
    let out = suppress(&home, &["add", "ANN@example.com"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 already listed"));
    assert_eq!(listed(&home), ["Ann@example.com", "bob@example.com"]);
    let text = std::fs::read_to_string(home.join("suppression.csv")).unwrap();
    assert!(text.contains("bob@example.com,complaint,"), "{text}");

    // Not an address: refused, nothing written.
    assert_eq!(code(&suppress(&home, &["add", "nope"])), 2);

    let import = tmp.path().join("unsubscribed.csv");
    std::fs::write(&import, "name,email\nCarl,carl@example.com\nX,broken\n").unwrap();
    let out = suppress(&home, &["import", import.to_str().unwrap()]);
    assert_eq!(code(&out), 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 invalid skipped"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = suppress(&home, &["remove", "ann@EXAMPLE.com"]);
    assert_eq!(code(&out), 0);
    assert_eq!(listed(&home), ["bob@example.com", "carl@example.com"]);
    // Removing an address that is not listed says so with exit 1.
    assert_eq!(code(&suppress(&home, &["remove", "zed@example.com"])), 1);
}
