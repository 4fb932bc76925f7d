//! Amazon SES v2 through moto's server, an independent implementation of
//! the API (PyPI `moto[server]`): identities verified first, then a campaign
//! sent and read back from what moto recorded; an unverified sender stops
//! the run (issue 12 point 2).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

pub(crate) const CREDS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    ),
];

/// A running `moto_server` on a free loopback port; killed on drop.
pub(crate) struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// `None` (test skipped) when moto is not installed, except under CI,
    /// which installs it (.ci/run).
    pub(crate) fn start() -> Option<Moto> {
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
                eprintln!("skipped: moto_server is not installed (pip install 'moto[server]')");
                return None;
            }
        };
        let mut moto = Moto { child, port };
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(moto);
            }
            if let Ok(Some(st)) = moto.child.try_wait() {
                panic!("moto_server exited: {st}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moto_server did not listen on {port}");
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a Python snippet with `ENDPOINT` set; returns its stdout.
    fn python(&self, code: &str) -> String {
        let out = Command::new("python3")
            .args(["-c", code])
            .env("ENDPOINT", self.endpoint())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "python: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Verifies an identity (a domain or an address) with SES v2
    /// CreateEmailIdentity, through boto3 (moto's own dependency).
    pub(crate) fn verify(&self, identity: &str) {
        self.python(&format!(
            r#"
import os, boto3
c = boto3.client("sesv2", region_name="us-east-1", endpoint_url=os.environ["ENDPOINT"],
                 aws_access_key_id="x", aws_secret_access_key="y")
c.create_email_identity(EmailIdentity="{identity}")
"#
        ));
    }

    /// What moto recorded (`GET /moto-api/data.json`, `ses.RawMessage`),
    /// each message parsed with Python's `email` package.
    pub(crate) fn messages(&self) -> Vec<serde_json::Value> {
        let out = self.python(
            r#"
import os, json, email, urllib.request
from email import policy
d = json.load(urllib.request.urlopen(os.environ["ENDPOINT"] + "/moto-api/data.json"))
out = []
for m in d.get("ses", {}).get("RawMessage", []):
    msg = email.message_from_string(m["raw_data"], policy=policy.default)
    text = msg.get_body(("plain",))
    out.append({"id": m["id"], "source": m["source"], "to": str(msg["To"]),
                "subject": str(msg["Subject"]), "message_id": str(msg["Message-ID"]),
                "text": text.get_content() if text else ""})
print(json.dumps(out))
"#,
        );
        serde_json::from_str(&out).expect("moto messages")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ses_campaign(moto: &Moto, emails: Vec<String>) -> TestCampaign {
    let c = TestCampaign::new(Spec::new(emails, 1));
    c.replace_smtp(&format!(
        r#"[[relay]]
name = "ses-test"
kind = "ses"
region = "us-east-1"
endpoint = "{}"
request_timeout = "10s""#,
        moto.endpoint()
    ));
    c
}

#[test]
fn a_campaign_goes_through_ses_v2_and_moto_records_every_message() {
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.verify("acme.example");
    let emails = addresses("ses", 20);
    let c = ses_campaign(&moto, emails.clone());
    let out = c.edm_env("send", &["--no-tui"], CREDS);
    assert_eq!(code(&out), 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(CREDS[1].1),
        "the secret never shows: {stderr}"
    );

    // Every recipient sent, with the relay and SES's MessageId kept.
    let rows = c.rows();
    assert_eq!(rows.len(), 20);
    let mut ids = BTreeMap::new();
    for (email, row) in &rows {
        assert_eq!(row["status"], "sent", "{row}");
        assert_eq!(row["relay"], "ses-test", "{row}");
        let id = row["provider_message_id"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{row}");
        ids.insert(id.to_string(), (email.clone(), row.clone()));
    }
    assert_eq!(ids.len(), 20, "one MessageId each");

    // What moto recorded: the raw messages, parsed, match the recipients
    // and the ids edm kept.
    let messages = moto.messages();
    assert_eq!(messages.len(), 20);
    let mut seen = BTreeSet::new();
    for m in &messages {
        let (email, row) = &ids[m["id"].as_str().unwrap()];
        let i: usize = row["fields"]["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(m["source"], "news@acme.example");
        assert_eq!(m["to"], email.as_str(), "{m}");
        assert_eq!(m["subject"], format!("Hello Name{i}").as_str());
        let bare = |v: &serde_json::Value| {
            v.as_str()
                .unwrap_or_default()
                .trim_matches(['<', '>'])
                .to_string()
        };
        assert_eq!(
            bare(&m["message_id"]),
            bare(&row["message_id"]),
            "the raw message is edm's"
        );
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .contains(&format!("This is message {i} for {email}.")),
            "{m}"
        );
        seen.insert(email.clone());
    }
    assert_eq!(seen, emails.into_iter().collect::<BTreeSet<_>>());

    // `--all` gains the relay columns after the existing ones, then the
    // late outcomes' (issue 13).
    let out = c.edm("report", &["--all"]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .contains(",last_attempt_at,relay,provider_message_id,"),
        "{csv}"
    );
}

#[test]
fn an_unverified_sender_stops_the_run_and_nobody_fails() {
    let Some(moto) = Moto::start() else {
        return;
    };
    // Another domain is verified, not the sender's.
    moto.verify("other.example");
    let c = ses_campaign(&moto, addresses("u", 10));
    let out = c.edm_env("send", &["--no-tui"], CREDS);
    assert_eq!(code(&out), 2, "a run-stopping refusal exits 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Did not have authority to send from email news@acme.example"),
        "the provider's message is shown: {stderr}"
    );
    let s = c.status();
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["sent"], 0, "{s}");
    assert_eq!(s["pending"], 10, "{s}");
    assert!(moto.messages().is_empty());
}

#[test]
fn missing_credentials_are_a_clear_error_before_any_send() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let c = ses_campaign(&moto, addresses("n", 2));
    let empty = c.tmp.path().join("no-credentials");
    let out = c.edm_env(
        "send",
        &["--no-tui"],
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_SHARED_CREDENTIALS_FILE", empty.to_str().unwrap()),
        ],
    );
    assert_ne!(code(&out), 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[[relay]] \"ses-test\"") && stderr.contains("no AWS credentials"),
        "{stderr}"
    );
    assert_eq!(c.status()["sent"], 0);
}

/// Issue 13: through SES, `[bounces] return_path` is left aside: SES sets
/// its own MAIL FROM, and a VERP address as `FromEmailAddress` would be
/// refused as an unverified identity (only the From address is verified).
#[test]
fn a_return_path_is_left_aside_through_ses() {
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.verify("news@acme.example");
    let c = ses_campaign(&moto, addresses("sesverp", 3));
    let file = c.dir.join("campaign.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{text}\n[bounces]\nreturn_path = \"bounces+{{token}}@acme.example\"\n"),
    )
    .unwrap();
    let out = c.edm_env("send", &["--no-tui"], CREDS);
    assert_eq!(code(&out), 0);
    let messages = moto.messages();
    assert_eq!(messages.len(), 3);
    for m in &messages {
        assert_eq!(m["source"], "news@acme.example", "{m}");
    }
}
