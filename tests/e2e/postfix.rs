//! postfix's `smtp-sink` as an independent server: edm must speak plain,
//! correct SMTP to something it did not write.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

fn smtp_sink() -> Option<&'static str> {
    ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

#[test]
fn sends_through_postfix_smtp_sink() {
    let Some(bin) = smtp_sink() else {
        // CI installs postfix; a developer machine may not have it.
        assert!(
            std::env::var_os("CI").is_none(),
            "smtp-sink is missing in CI"
        );
        eprintln!("skipped: postfix smtp-sink is not installed");
        return;
    };
    let port = dead_port();
    // -c: count, -u: run as this user (root refuses otherwise), backlog 100.
    let mut child = Command::new(bin)
        .args(["-c", "-u", "nobody", &format!("127.0.0.1:{port}"), "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink");
    // Wait until it listens.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = TestCampaign::new(Spec::new(addresses("pf", 300), port));
    let out = c.send(&["--rate", "0"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code(&out), 0);
    let s = c.status();
    assert_eq!(s["sent"], 300);
    assert_eq!(s["failed"], 0);
    let rows = c.rows();
    // smtp-sink's final reply is recorded as given.
    assert_eq!(rows["pf7@example.com"]["smtp_code"], 250);
}

#[test]
fn postfix_smtp_sink_rcpt_rejection_is_recorded_as_failure() {
    let Some(bin) = smtp_sink() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "smtp-sink is missing in CI"
        );
        return;
    };
    let port = dead_port();
    // -f rcpt: answer every RCPT with a 5xx.
    let mut child = Command::new(bin)
        .args([
            "-u",
            "nobody",
            "-f",
            "rcpt",
            &format!("127.0.0.1:{port}"),
            "100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = TestCampaign::new(Spec::new(addresses("pr", 5), port));
    let out = c.send(&[]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code(&out), 1);
    let s = c.status();
    assert_eq!(s["failed"], 5, "{s}");
    let rows = c.rows();
    let r = &rows["pr0@example.com"];
    assert_eq!(r["stage"], "rcpt_to");
    assert!(r["smtp_code"].as_u64().unwrap() >= 500);
}
