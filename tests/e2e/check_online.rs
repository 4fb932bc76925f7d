//! `edm check --online`: every relay reached and authenticated, nothing
//! sent (issue 12 point 5): edm's sink with AUTH, moto's SES with a verified
//! or unverified sender, the Resend test server.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::resend::{ENV, ResendServer, relay};

fn sink_with_auth() -> Sink {
    Sink::start_with(&[], None, |cfg| {
        cfg.auth = Some(("news".into(), "right-pass".into()));
    })
}

fn smtp_campaign(port: u16) -> TestCampaign {
    TestCampaign::new(Spec {
        smtp: "username = \"news\"\npassword_env = \"EDM_TEST_PASSWORD\"",
        ..Spec::new(addresses("o", 2), port)
    })
}

#[test]
fn smtp_auth_right_and_wrong() {
    let sink = sink_with_auth();
    let c = smtp_campaign(sink.port());
    let out = c.edm_env(
        "check",
        &["--online"],
        &[("EDM_TEST_PASSWORD", "right-pass")],
    );
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("relay \"smtp\" (smtp 127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("connected, EHLO, AUTH accepted, QUIT"),
        "{stdout}"
    );
    assert_eq!(sink.deliveries().len(), 0, "nothing sent");

    let out = c.edm_env(
        "check",
        &["--online"],
        &[("EDM_TEST_PASSWORD", "wrong-pass")],
    );
    assert_eq!(code(&out), 2, "a relay that fails: exit 2");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("535"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("wrong-pass"),
        "the password never shows: {stdout}"
    );

    // --json carries the same, under "online".
    let out = c.edm_env(
        "check",
        &["--online", "--json"],
        &[("EDM_TEST_PASSWORD", "right-pass")],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["online"][0]["ok"], true, "{v}");
    assert_eq!(v["online"][0]["relay"], "smtp", "{v}");
}

#[test]
fn an_unreachable_relay_fails_the_online_check_only() {
    let c = smtp_campaign(dead_port());
    let out = c.edm_env("check", &[], &[("EDM_TEST_PASSWORD", "x")]);
    assert_eq!(code(&out), 0, "offline, nothing is reached");
    let out = c.edm_env("check", &["--online"], &[("EDM_TEST_PASSWORD", "x")]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stdout).contains("connect_refused"));
}

#[test]
fn resend_key_and_sender_domain() {
    let server = ResendServer::start(
        &[
            "--domain",
            "acme.example=verified",
            "--restricted-key",
            "re_send_only",
        ],
        serde_json::json!([]),
    );
    let c = TestCampaign::new(Spec::new(addresses("o", 2), 1));
    c.replace_smtp(&relay(&server));
    let out = c.edm_env("check", &["--online"], ENV);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("sender domain acme.example: verified"),
        "{stdout}"
    );

    let out = c.edm_env("check", &["--online"], &[("RESEND_API_KEY", "re_wrong")]);
    assert_eq!(code(&out), 2);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("API key is invalid."), "{stdout}");
    assert!(!stdout.contains("re_wrong"), "{stdout}");

    let out = c.edm_env(
        "check",
        &["--online"],
        &[("RESEND_API_KEY", "re_send_only")],
    );
    assert_eq!(code(&out), 0, "a sending-only key is valid");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sending-only key"));
    assert!(
        server.deliveries().is_empty(),
        "nothing was sent by the checks"
    );

    let pending = ResendServer::start(&["--domain", "acme.example=pending"], serde_json::json!([]));
    let c = TestCampaign::new(Spec::new(addresses("p", 2), 1));
    c.replace_smtp(&relay(&pending));
    let out = c.edm_env("check", &["--online"], ENV);
    assert_eq!(code(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("sender domain acme.example: pending, not verified")
    );
}

const CREDS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    ),
];

struct Moto(Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's server, or `None` (skipped) outside CI when it is not installed.
fn moto() -> Option<Moto> {
    let port = dead_port();
    let child = match Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto_server is missing in CI: {e}"
            );
            return None;
        }
    };
    let m = Moto(child, port);
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(m);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("moto_server did not listen on {port}");
}

#[test]
fn ses_quota_and_sender_identity() {
    let Some(m) = moto() else {
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", m.1);
    let c = TestCampaign::new(Spec::new(addresses("o", 2), 1));
    c.replace_smtp(&format!(
        "[[relay]]\nname = \"ses-test\"\nkind = \"ses\"\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\""
    ));
    let out = c.edm_env("check", &["--online"], CREDS);
    assert_eq!(code(&out), 2, "the sender is no identity yet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("neither acme.example nor news@acme.example"),
        "{stdout}"
    );
    assert!(!stdout.contains(CREDS[1].1));

    let ok = Command::new("python3")
        .args([
            "-c",
            "import os, boto3; boto3.client('sesv2', region_name='us-east-1', endpoint_url=os.environ['ENDPOINT'], aws_access_key_id='x', aws_secret_access_key='y').create_email_identity(EmailIdentity='acme.example')",
        ])
        .env("ENDPOINT", &endpoint)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = c.edm_env("check", &["--online"], CREDS);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("sender identity acme.example: verified"),
        "{stdout}"
    );
    assert!(stdout.contains("GetAccount"), "{stdout}");
}

/// A pool: every relay is checked, one line each, in the file's order;
/// one relay refusing the login is exit 2 even though the other is fine
/// (it used to check the first relay only).
#[test]
fn every_relay_of_a_pool_is_checked() {
    let good = sink_with_auth();
    let bad = sink_with_auth();
    let relay = |name: &str, port: u16, env: &str| {
        format!(
            "[[relay]]\nname = \"{name}\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"news\"\npassword_env = \"{env}\"\n"
        )
    };
    let c = TestCampaign::new(Spec::new(addresses("p", 2), 1));
    c.replace_smtp(&format!(
        "{}\n{}",
        relay("first", good.port(), "EDM_TEST_PW_FIRST"),
        relay("second", bad.port(), "EDM_TEST_PW_SECOND")
    ));
    let env = [
        ("EDM_TEST_PW_FIRST", "right-pass"),
        ("EDM_TEST_PW_SECOND", "wrong-pass"),
    ];
    let out = c.edm_env("check", &["--online"], &env);
    assert_eq!(code(&out), 2, "one relay fails: exit 2");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = format!("relay \"first\" (smtp 127.0.0.1:{}): ok", good.port());
    let second = format!("relay \"second\" (smtp 127.0.0.1:{}): FAILED", bad.port());
    let (Some(a), Some(b)) = (stdout.find(&first), stdout.find(&second)) else {
        panic!("one line per relay: {stdout}");
    };
    assert!(a < b, "in the file's order: {stdout}");
    assert!(stdout.contains("535"), "{stdout}");
    assert!(!stdout.contains("wrong-pass") && !stdout.contains("right-pass"));
    assert_eq!(good.deliveries().len() + bad.deliveries().len(), 0);

    let v: serde_json::Value =
        serde_json::from_slice(&c.edm_env("check", &["--online", "--json"], &env).stdout).unwrap();
    assert_eq!(v["online"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(
        (&v["online"][0]["ok"], &v["online"][1]["ok"]),
        (&true.into(), &false.into()),
        "{v}"
    );

    // Both right: exit 0. A missing password names its relay.
    let out = c.edm_env(
        "check",
        &["--online"],
        &[
            ("EDM_TEST_PW_FIRST", "right-pass"),
            ("EDM_TEST_PW_SECOND", "right-pass"),
        ],
    );
    assert_eq!(code(&out), 0);
    let out = c.edm_env(
        "check",
        &["--online"],
        &[("EDM_TEST_PW_FIRST", "right-pass")],
    );
    assert_eq!(code(&out), 2);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("[[relay]] \"second\" password_env names $EDM_TEST_PW_SECOND"),
        "{stdout}"
    );
}
