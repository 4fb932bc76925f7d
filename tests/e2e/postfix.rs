//! postfix's `smtp-sink` as an independent server: edm must speak plain,
//! correct SMTP to something it did not write.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A running `smtp-sink` with these fault flags, on a free port; killed on drop.
pub(crate) struct PostfixSink {
    child: Child,
    pub(crate) port: u16,
}

impl PostfixSink {
    /// `None` when postfix is not installed (a failure under CI, which installs it).
    pub(crate) fn start(flags: &[&str]) -> Option<PostfixSink> {
        let Some(bin) = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "smtp-sink is missing in CI"
            );
            eprintln!("skipped: postfix smtp-sink is not installed");
            return None;
        };
        let port = dead_port();
        // -u: run as this user (root is refused otherwise); backlog 100.
        let child = Command::new(bin)
            .args(["-u", "nobody"])
            .args(flags)
            .args([&format!("127.0.0.1:{port}"), "100"])
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
        Some(PostfixSink { child, port })
    }
}

impl PostfixSink {
    /// Kills the server now (a relay dying mid-run).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sends_through_postfix_smtp_sink() {
    let Some(sink) = PostfixSink::start(&["-c"]) else {
        return;
    };
    let c = TestCampaign::new(Spec::new(addresses("pf", 300), sink.port));
    let out = c.send(&["--rate", "0"]);
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
    // -f rcpt: answer every RCPT with a 5xx.
    let Some(sink) = PostfixSink::start(&["-f", "rcpt"]) else {
        return;
    };
    let c = TestCampaign::new(Spec::new(addresses("pr", 5), sink.port));
    let out = c.send(&[]);
    assert_eq!(code(&out), 1);
    let s = c.status();
    assert_eq!(s["failed"], 5, "{s}");
    let rows = c.rows();
    let r = &rows["pr0@example.com"];
    assert_eq!(r["stage"], "rcpt_to");
    assert!(r["smtp_code"].as_u64().unwrap() >= 500);
}
