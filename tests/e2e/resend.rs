//! Resend through a test server that follows Resend's documented API
//! (tests/servers/resend_server.py: statuses, JSON errors, rate-limit
//! headers, idempotency replay), scripted per recipient (issue 12 point 3).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

pub const KEY: &str = "re_test_0123456789abcdef";
pub const ENV: &[(&str, &str)] = &[("RESEND_API_KEY", KEY)];

/// A running resend_server.py on a free loopback port; killed on drop.
pub struct ResendServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl ResendServer {
    /// Starts the server with `args` and per-recipient `rules` (JSON).
    pub fn start(args: &[&str], rules: serde_json::Value) -> ResendServer {
        let dir = tempfile::tempdir().unwrap();
        let rules_file = dir.path().join("rules.json");
        std::fs::write(&rules_file, rules.to_string()).unwrap();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/servers/resend_server.py");
        let port = dead_port();
        let child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--key", KEY])
            .arg("--rules")
            .arg(&rules_file)
            .arg("--log")
            .arg(dir.path().join("log.jsonl"))
            .arg("--state")
            .arg(dir.path().join("state.jsonl"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut s = ResendServer { child, port, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return s;
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("resend_server.py exited: {st}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("resend_server.py did not listen on {port}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every line the server logged.
    pub fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }

    fn kind(&self, kind: &str) -> Vec<serde_json::Value> {
        self.log()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// Deliveries (new emails accepted), counted by recipient.
    pub fn deliveries(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for d in self.kind("delivery") {
            *m.entry(d["to"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        m
    }

    /// Requests to POST /emails for `to`, in order.
    pub fn requests_for(&self, to: &str) -> Vec<serde_json::Value> {
        self.kind("request")
            .into_iter()
            .filter(|e| e["path"] == "/emails" && e["to"] == to)
            .collect()
    }
}

impl Drop for ResendServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn relay(server: &ResendServer) -> String {
    format!(
        r#"[[relay]]
name = "resend-test"
kind = "resend"
endpoint = "{}"
request_timeout = "5s""#,
        server.endpoint()
    )
}

fn resend_campaign(server: &ResendServer, emails: Vec<String>) -> TestCampaign {
    let c = TestCampaign::new(Spec {
        delivery: "rate = 100",
        ..Spec::new(emails, 1)
    });
    c.replace_smtp(&relay(server));
    c
}

fn bare(v: &serde_json::Value) -> String {
    v.as_str()
        .unwrap_or_default()
        .trim_matches(['<', '>'])
        .to_string()
}

#[test]
fn a_campaign_goes_through_resend_with_every_field_and_a_stable_key() {
    let emails = addresses("rs", 12);
    // The first recipient's first attempt gets a 500: its retry must carry
    // the same key and the same body bytes.
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([{"to": emails[0], "status": 500, "name": "application_error",
                            "message": "An unexpected error occurred.", "times": 1}]),
    );
    let c = resend_campaign(&server, emails.clone());
    let out = c.edm_env("send", &["--no-tui"], ENV);
    assert_eq!(code(&out), 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(KEY), "the key never shows: {stderr}");

    let rows = c.rows();
    let deliveries = server.kind("delivery");
    assert_eq!(deliveries.len(), 12, "one delivery each");
    let by_id: BTreeMap<String, serde_json::Value> = deliveries
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d.clone()))
        .collect();
    let mut seen = BTreeSet::new();
    for (email, row) in &rows {
        assert_eq!(row["status"], "sent", "{row}");
        assert_eq!(row["relay"], "resend-test", "{row}");
        let d = &by_id[row["provider_message_id"].as_str().unwrap()];
        let i: usize = row["fields"]["id"].as_str().unwrap().parse().unwrap();
        let m = &d["email"];
        assert_eq!(m["from"], "Acme Test <news@acme.example>", "{m}");
        assert_eq!(m["to"], serde_json::json!([email]), "{m}");
        assert_eq!(m["subject"], format!("Hello Name{i}"), "{m}");
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .contains(&format!("This is message {i} for {email}.")),
            "{m}"
        );
        assert!(
            m["html"]
                .as_str()
                .unwrap()
                .contains(&format!("<p>Hello Name{i}</p>")),
            "{m}"
        );
        assert_eq!(
            m["headers"]["List-Unsubscribe"],
            format!("<https://acme.example/u/{i}>"),
            "{m}"
        );
        assert_eq!(
            m["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click",
            "{m}"
        );
        let names: Vec<&String> = m["headers"].as_object().unwrap().keys().collect();
        assert_eq!(
            names,
            ["List-Unsubscribe", "List-Unsubscribe-Post"],
            "only the headers Resend does not build: no Date, no MIME, no Message-ID"
        );
        assert_eq!(
            m["tags"],
            serde_json::json!([{"name": "campaign", "value": "e2e"}]),
            "{m}"
        );
        assert_eq!(
            d["key"].as_str().unwrap(),
            format!("edm/{}", bare(&row["message_id"])),
            "the key is derived from the recipient's Message-ID"
        );
        seen.insert(email.clone());
    }
    assert_eq!(seen, emails.iter().cloned().collect::<BTreeSet<_>>());

    // The retried recipient: two requests, the same key, the same bytes.
    let reqs = server.requests_for(&emails[0]);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        (reqs[0]["status"].as_u64(), reqs[1]["status"].as_u64()),
        (Some(500), Some(200))
    );
    assert_eq!(reqs[0]["key"], reqs[1]["key"]);
    assert_eq!(
        reqs[0]["sha256"], reqs[1]["sha256"],
        "the body is byte-for-byte the same"
    );
}

#[test]
fn a_bad_key_stops_the_run_with_exit_2_and_nobody_failed() {
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([]),
    );
    let c = resend_campaign(&server, addresses("k", 8));
    let out = c.edm_env("send", &["--no-tui"], &[("RESEND_API_KEY", "re_wrong")]);
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("API key is invalid."),
        "the message is shown: {stderr}"
    );
    assert!(
        !stderr.contains("re_wrong"),
        "the key never shows: {stderr}"
    );
    let s = c.status();
    assert_eq!(
        (s["failed"].as_u64(), s["sent"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert!(server.deliveries().is_empty());
}

#[test]
fn an_unverified_domain_stops_the_run_with_exit_2_and_nobody_failed() {
    let server = ResendServer::start(&["--domain", "acme.example=pending"], serde_json::json!([]));
    let c = resend_campaign(&server, addresses("d", 8));
    let out = c.edm_env("send", &["--no-tui"], ENV);
    assert_eq!(code(&out), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("The acme.example domain is not verified"),
        "the message is shown: {stderr}"
    );
    let s = c.status();
    assert_eq!(
        (s["failed"].as_u64(), s["sent"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["pending"], 8, "{s}");
}

#[test]
fn a_missing_key_is_a_clear_error_before_any_send() {
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([]),
    );
    let c = resend_campaign(&server, addresses("m", 2));
    let out = c.edm_env("send", &["--no-tui"], &[("RESEND_API_KEY", "")]);
    assert_ne!(code(&out), 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[[relay]] \"resend-test\"") && stderr.contains("$RESEND_API_KEY"),
        "{stderr}"
    );
    assert!(server.log().is_empty(), "nothing was sent");
}

#[test]
fn a_422_fails_that_recipient_only() {
    let emails = addresses("v", 6);
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([{"to": emails[2], "status": 422, "name": "validation_error",
                            "message": "Invalid `to` field."}]),
    );
    let c = resend_campaign(&server, emails.clone());
    let out = c.edm_env("send", &["--no-tui"], ENV);
    assert_ne!(code(&out), 2, "not a run-stopping refusal");
    let rows = c.rows();
    assert_eq!(rows[&emails[2]]["status"], "failed");
    assert!(
        rows[&emails[2]]["reply"]
            .as_str()
            .unwrap_or_default()
            .contains("Invalid `to` field."),
        "{}",
        rows[&emails[2]]
    );
    assert_eq!(server.requests_for(&emails[2]).len(), 1, "never retried");
    let sent = rows.values().filter(|r| r["status"] == "sent").count();
    assert_eq!(sent, 5);
}

#[test]
fn a_429_with_retry_after_is_throttled_then_sent() {
    let emails = addresses("t", 4);
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([{"to": emails[1], "status": 429, "name": "rate_limit_exceeded",
                            "message": "Too many requests.", "retry_after": "2", "times": 2}]),
    );
    let c = resend_campaign(&server, emails.clone());
    let out = c.edm_env("send", &["--no-tui"], ENV);
    assert_eq!(code(&out), 0);
    let rows = c.rows();
    assert!(rows.values().all(|r| r["status"] == "sent"), "{rows:?}");
    let reqs = server.requests_for(&emails[1]);
    let statuses: Vec<u64> = reqs.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [429, 429, 200]);
    // Not a speed check: a lower bound that only holds if `retry-after` was
    // honoured.
    for w in reqs.windows(2) {
        let gap = w[1]["t"].as_f64().unwrap() - w[0]["t"].as_f64().unwrap();
        assert!(gap >= 1.9, "retried {gap:.2}s after a retry-after of 2s");
    }
    assert_eq!(server.deliveries()[&emails[1]], 1);
}

/// Deterministic kill times, seeded from the clock and printed.
fn next(seed: &mut u64, lo: u64, hi: u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    lo + (*seed >> 33) % (hi - lo)
}

#[test]
fn sigkill_mid_run_then_resume_delivers_everyone_once() {
    let n = 60;
    let emails = addresses("c", n);
    // Each accepted request is held 80 ms, so kills land with requests in
    // flight: those recipients are in doubt and resent on resume, and the
    // idempotency key turns the resend into a replay.
    let server = ResendServer::start(
        &["--domain", "acme.example=verified", "--delay-ms", "80"],
        serde_json::json!([]),
    );
    let c = resend_campaign(&server, emails.clone());
    let mut seed = std::env::var("EDM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1)
        });
    eprintln!("crash test seed: {seed} (replay with EDM_CRASH_SEED={seed})");
    for i in 0..5 {
        let mut child = Command::new(EDM)
            .arg("send")
            .arg(c.path())
            .arg("--no-tui")
            .env("EDM_HOME", &c.home)
            .env("EDM_LOG", "warn")
            .envs(ENV.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("edm");
        std::thread::sleep(Duration::from_millis(next(&mut seed, 150, 600)));
        signal(&child, "KILL");
        let st = wait_timeout(&mut child, Duration::from_secs(30));
        eprintln!("kill {i}: {:?}", st.code());
    }
    let mut done = false;
    for _ in 0..5 {
        if code(&c.edm_env("send", &["--no-tui"], ENV)) == 0 {
            done = true;
            break;
        }
    }
    assert!(done, "the campaign completes after the kills");
    let got = server.deliveries();
    let requests = server
        .kind("request")
        .iter()
        .filter(|r| r["path"] == "/emails")
        .count();
    let replays = server
        .kind("request")
        .iter()
        .filter(|r| r["replayed"] == true)
        .count();
    eprintln!(
        "{requests} requests, {} deliveries, {replays} replays",
        got.values().sum::<usize>()
    );
    assert_eq!(got.len(), n, "everyone delivered");
    let dups: Vec<_> = got.iter().filter(|(_, k)| **k > 1).collect();
    assert!(dups.is_empty(), "second deliveries: {dups:?}");
    let rows = c.rows();
    assert!(rows.values().all(|r| r["status"] == "sent"), "{rows:?}");
}

#[test]
fn test_to_goes_through_resend_and_names_the_relay() {
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([]),
    );
    let c = resend_campaign(&server, addresses("s", 3));
    let out = c.edm_env("send", &["--test-to", "me@acme.example"], ENV);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("via relay \"resend-test\""), "{stdout}");
    let got = server.deliveries();
    assert_eq!(got.get("me@acme.example"), Some(&3), "{got:?}");
    for d in server.kind("delivery") {
        let key = d["key"].as_str().unwrap();
        // A test copy's Message-ID (and so its key) is not the recipient's:
        // the real send later is not taken for a replay of the test.
        assert!(key.contains(".test@"), "{key}");
        assert!(
            d["email"]["subject"]
                .as_str()
                .unwrap()
                .starts_with("[TEST]")
        );
    }
}

/// Same key, another body "should never happen"; if Resend says so, a first
/// request went through: sent, flagged in doubt in the reply, never failed.
#[test]
fn invalid_idempotent_request_is_recorded_sent_never_failed() {
    let emails = addresses("i", 3);
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([{"to": emails[1], "status": 409, "name": "invalid_idempotent_request",
                            "message": "Same idempotency key used with a different request payload."}]),
    );
    let c = resend_campaign(&server, emails.clone());
    let out = c.edm_env("send", &["--no-tui"], ENV);
    assert_eq!(code(&out), 0);
    let rows = c.rows();
    let r = &rows[&emails[1]];
    assert_eq!(r["status"], "sent", "{r}");
    assert!(
        r["reply"]
            .as_str()
            .unwrap_or_default()
            .starts_with("in doubt:"),
        "{r}"
    );
    assert_eq!(server.requests_for(&emails[1]).len(), 1, "never resent");
    assert_eq!(c.status()["failed"], 0);
}

/// A request that times out after it was sent is in doubt, and resent in
/// the same run (`--in-doubt resend`): the resend carries the same key and
/// body, so Resend answers 409 concurrent_idempotent_requests while the
/// first is still in progress (retried), then replays the first response.
/// One delivery.
#[test]
fn a_timeout_in_doubt_is_resent_and_replayed_not_delivered_twice() {
    let emails = addresses("w", 3);
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([{"to": emails[0], "delay_ms": 1500, "times": 1}]),
    );
    let c = TestCampaign::new(Spec {
        delivery: "rate = 100",
        ..Spec::new(emails.clone(), 1)
    });
    c.replace_smtp(&relay(&server).replace("request_timeout = \"5s\"", "request_timeout = \"1s\""));
    let out = c.edm_env("send", &["--no-tui"], ENV);
    assert_eq!(code(&out), 0);
    let rows = c.rows();
    assert_eq!(rows[&emails[0]]["status"], "sent", "{}", rows[&emails[0]]);
    assert_eq!(rows[&emails[0]]["in_doubt"], true, "{}", rows[&emails[0]]);
    assert_eq!(server.deliveries()[&emails[0]], 1, "delivered once");
    let reqs = server.requests_for(&emails[0]);
    assert!(reqs.len() >= 2, "{reqs:?}");
    assert!(
        reqs.iter().any(|r| r["replayed"] == true),
        "the resend got the first response back: {reqs:?}"
    );
    // The id edm kept is the one of the only delivery.
    let delivery = server
        .kind("delivery")
        .into_iter()
        .find(|d| d["to"] == emails[0].as_str())
        .unwrap();
    assert_eq!(rows[&emails[0]]["provider_message_id"], delivery["id"]);
}

#[test]
fn attachments_go_as_base64_content_with_their_filename() {
    let server = ResendServer::start(
        &["--domain", "acme.example=verified"],
        serde_json::json!([]),
    );
    let c = resend_campaign(&server, addresses("a", 2));
    std::fs::create_dir_all(c.path().join("files")).unwrap();
    let pdf: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    std::fs::write(c.path().join("files/terms.pdf"), &pdf).unwrap();
    let file = c.path().join("campaign.toml");
    let toml = std::fs::read_to_string(&file).unwrap().replace(
        "recipients = \"recipients.csv\"",
        "recipients = \"recipients.csv\"\nattachments = [\"files/terms.pdf\"]",
    );
    std::fs::write(&file, toml).unwrap();
    let out = c.edm_env("send", &["--no-tui"], ENV);
    assert_eq!(code(&out), 0);
    let deliveries = server.kind("delivery");
    assert_eq!(deliveries.len(), 2);
    for d in deliveries {
        let a = &d["email"]["attachments"];
        assert_eq!(a.as_array().map(Vec::len), Some(1), "{a}");
        assert_eq!(a[0]["filename"], "terms.pdf");
        assert_eq!(a[0]["content_type"], "application/pdf");
        let decoded = Command::new("python3")
            .args([
                "-c",
                "import sys, base64; sys.stdout.buffer.write(base64.b64decode(sys.argv[1]))",
                a[0]["content"].as_str().unwrap(),
            ])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(decoded, pdf, "the file's bytes, whole");
    }
}
