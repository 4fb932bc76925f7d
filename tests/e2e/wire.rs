//! What leaves the machine (issue 9, points 2, 4 and 5), against edm's sink
//! and postfix's `smtp-sink`, with what arrived parsed by Python's `email`
//! (policy default): no defect anywhere.
//!
//! - IDN domains go out as A-labels in RCPT TO, MAIL FROM and the headers;
//!   a non-ASCII local part is delivered with SMTPUTF8 when offered, and
//!   fails `smtputf8_required` with nothing sent when not.
//! - A field holding `\r.\r`, `\n.\n` or `\r\n.\r\n` arrives as part of one
//!   whole message, CRLF only.
//! - AUTH without TLS to a host that is not loopback is refused before
//!   connecting, unless `allow_plaintext_auth = true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;
use crate::postfix::PostfixSink;

/// The recipients of the IDN tests, in CSV order.
const ANN: &str = "ann@bücher.example";
const ANN_A: &str = "ann@xn--bcher-kva.example";
const JOSE: &str = "josé@bücher.example";
const JOSE_A: &str = "josé@xn--bcher-kva.example";
const BOB: &str = "bob@example.com";

/// A campaign sending to `emails`, from an IDN sender with a non-ASCII
/// display name, replying to an IDN address.
fn idn_campaign(emails: &[&str], port: u16) -> TestCampaign {
    let c = TestCampaign::new(Spec::new(
        emails.iter().map(|e| e.to_string()).collect(),
        port,
    ));
    let toml = c.dir.join("campaign.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "from = \"Acme Test <news@acme.example>\"",
        "from = \"Jörg Müller <news@bücher.example>\"\nreply_to = \"Élodie <help@exämple.example>\"",
    );
    std::fs::write(&toml, text).unwrap();
    c
}

/// Parses each file with Python's `email` (policy default) and returns, per
/// file, a JSON object: `defects` (of the message, every part and every
/// header), `headers_ascii`, `to`, `from`, `text` (the text part).
fn python_parse(files: &[PathBuf]) -> Vec<serde_json::Value> {
    const SCRIPT: &str = r#"
import email, json, sys
from email import policy
out = []
for path in sys.argv[1:]:
    raw = open(path, 'rb').read()
    # RFC 6532: an SMTPUTF8 message is UTF-8 text; the bytes parser would
    # take its headers for undecodable bytes.
    msg = email.message_from_string(raw.decode('utf-8'), policy=policy.default)
    defects = [repr(d) for d in msg.defects]
    for part in msg.walk():
        defects += [repr(d) for d in part.defects]
        for name, value in part.items():
            defects += [name + ': ' + repr(d) for d in getattr(value, 'defects', ())]
    head = raw.split(b'\r\n\r\n', 1)[0].split(b'\n\n', 1)[0]
    text = msg.get_body(preferencelist=('plain',))
    out.append({
        'defects': defects,
        'headers_ascii': all(b < 128 for b in head),
        'to': str(msg['To']),
        'from': str(msg['From']),
        'reply_to': str(msg['Reply-To']),
        'text': text.get_content() if text is not None else None,
    })
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(files)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python JSON")
}

/// What edm's sink received, one file per message, and who it was for.
fn sink_messages(sink: &Sink, dir: &Path) -> Vec<(Vec<String>, PathBuf)> {
    std::fs::create_dir_all(dir).unwrap();
    sink.handle()
        .received()
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let path = dir.join(format!("{i}.eml"));
            std::fs::write(&path, r.data.expect("memory storage")).unwrap();
            (r.rcpt_to, path)
        })
        .collect()
}

fn assert_no_bare_line_break(bytes: &[u8], what: &str) {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && bytes[i - 1] == b'\r', "{what}: bare LF at {i}"),
            b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "{what}: bare CR at {i}"),
            _ => {}
        }
    }
}

#[test]
fn idn_addresses_go_out_as_a_labels_and_utf8_local_parts_with_smtputf8() {
    let sink = Sink::start(&[], None);
    let c = idn_campaign(&[ANN, JOSE, BOB], sink.port());
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    let s = c.status();
    assert_eq!(s["sent"], 3, "{s}");

    let got = sink_messages(&sink, &c.tmp.path().join("got"));
    let mut rcpts: Vec<&str> = got.iter().map(|(to, _)| to[0].as_str()).collect();
    rcpts.sort();
    assert_eq!(rcpts, [ANN_A, BOB, JOSE_A]);
    for r in sink.handle().received() {
        assert_eq!(r.mail_from, "news@xn--bcher-kva.example");
    }
    let files: Vec<PathBuf> = got.iter().map(|(_, p)| p.clone()).collect();
    let parsed = python_parse(&files);
    for ((to, _), p) in got.iter().zip(&parsed) {
        // Python's header parser follows RFC 5322 only and flags any
        // non-ASCII local part, RFC 6532 or not: the one defect allowed,
        // and only in the To of the SMTPUTF8 message.
        let defects: Vec<&str> = p["defects"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d.as_str())
            .filter(|d| !(to[0] == JOSE_A && d.starts_with("To: NonASCIILocalPartDefect")))
            .collect();
        assert!(defects.is_empty(), "{to:?}: {p}");
        assert_eq!(p["from"], "Jörg Müller <news@xn--bcher-kva.example>", "{p}");
        assert_eq!(p["reply_to"], "Élodie <help@xn--exmple-cua.example>", "{p}");
        // Only the SMTPUTF8 message has a UTF-8 header (RFC 6532).
        assert_eq!(p["headers_ascii"], to[0] != JOSE_A, "{to:?}: {p}");
    }
    let ann = &parsed[rcpts_index(&got, ANN_A)];
    assert_eq!(ann["to"], ANN_A);
    let jose = &parsed[rcpts_index(&got, JOSE_A)];
    assert_eq!(jose["to"], JOSE_A);
}

#[test]
fn a_list_respelled_with_u_labels_sends_nobody_twice() {
    let sink = Sink::start(&[], None);
    let c = idn_campaign(&[ANN_A, BOB], sink.port());
    assert_eq!(code(&c.send(&[])), 0);
    // The same people, the domain now written in Unicode, and one new.
    let csv = "id,email,first_name\r\n0,Ann@Bücher.example,Ann\r\n1,bob@example.com,Bob\r\n2,carl@bücher.example,Carl\r\n";
    std::fs::write(c.dir.join("recipients.csv"), csv).unwrap();
    assert_eq!(code(&c.send(&["--accept-changes"])), 0);
    let got = sink.deliveries();
    assert_eq!(got.get(ANN_A), Some(&1), "{got:?}");
    assert_eq!(got.get(BOB), Some(&1), "{got:?}");
    assert_eq!(got.get("carl@xn--bcher-kva.example"), Some(&1), "{got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
}

fn rcpts_index(got: &[(Vec<String>, PathBuf)], to: &str) -> usize {
    got.iter().position(|(r, _)| r[0] == to).expect(to)
}

#[test]
fn edm_check_warns_about_non_ascii_local_parts_only() {
    let c = idn_campaign(&[ANN, JOSE, BOB], 2525);
    let out = c.edm("check", &["--json"]);
    assert_eq!(code(&out), 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = report.to_string();
    assert!(text.contains("needs_smtputf8"), "{text}");
    assert!(text.contains("josé@bücher.example"), "{text}");
    assert!(!text.contains("ann@bücher.example"), "{text}");
}

#[test]
fn a_utf8_local_part_fails_smtputf8_required_when_the_server_does_not_offer_it() {
    let sink = Sink::start_with(&[], None, |cfg| cfg.smtputf8 = false);
    let c = idn_campaign(&[ANN, JOSE, BOB], sink.port());
    let out = c.send(&[]);
    // Someone failed; the run was not stopped for it.
    assert_eq!(code(&out), 1);
    let s = c.status();
    assert_eq!(s["sent"], 2, "{s}");
    assert_eq!(s["failed"], 1, "{s}");
    let rows = c.rows();
    let jose = &rows[JOSE];
    assert_eq!(jose["status"], "failed", "{jose}");
    assert_eq!(jose["category"], "smtputf8_required", "{jose}");
    assert!(jose["smtp_code"].is_null(), "{jose}");
    // Nothing was sent for him: no MAIL beyond the two delivered, and no
    // 8-bit refusal from the sink (it would have said 553/554 5.6.7).
    let stats = sink.handle().stats();
    assert_eq!(stats.transactions, 2, "{stats:?}");
    assert_eq!(stats.rejected(553) + stats.rejected(554), 0, "{stats:?}");
    let got = sink_messages(&sink, &c.tmp.path().join("got"));
    let files: Vec<PathBuf> = got.iter().map(|(_, p)| p.clone()).collect();
    for p in python_parse(&files) {
        assert_eq!(p["defects"], serde_json::json!([]), "{p}");
        assert_eq!(p["headers_ascii"], true, "{p}");
    }
}

/// `smtp-sink -d DIR/%M.` writes one file per transaction.
fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// smtp-sink runs as `nobody`: a dump folder it can write to.
fn dump_dir(c: &TestCampaign) -> PathBuf {
    let dir = c.tmp.path().join("dump");
    std::fs::create_dir_all(&dir).unwrap();
    let _ = Command::new("chmod").arg("777").arg(&dir).status();
    let _ = Command::new("chmod").arg("755").arg(c.tmp.path()).status();
    dir
}

#[test]
fn postfix_smtp_sink_gets_a_labels_and_no_8bit_it_did_not_offer() {
    // Probe for smtp-sink first (skips when missing), then restart it with
    // the dump folder of this campaign.
    let Some(probe) = PostfixSink::start(&[]) else {
        return;
    };
    drop(probe);
    let c = idn_campaign(&[ANN, JOSE, BOB], 1);
    let dir = dump_dir(&c);
    let template = format!("{}/", dir.display());
    let sink = PostfixSink::start(&["-d", &template]).expect("smtp-sink");
    let toml = c.dir.join("campaign.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("port = 1\n", &format!("port = {}\n", sink.port));
    std::fs::write(&toml, text).unwrap();

    let out = c.send(&[]);
    assert_eq!(code(&out), 1);
    let rows = c.rows();
    assert_eq!(rows[ANN]["status"], "sent", "{}", rows[ANN]);
    assert_eq!(rows[BOB]["status"], "sent");
    // postfix 3.7's smtp-sink does not offer SMTPUTF8.
    assert_eq!(
        rows[JOSE]["category"], "smtputf8_required",
        "{}",
        rows[JOSE]
    );

    drop(sink);
    let files = dumps(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let raw: Vec<String> = files
        .iter()
        .map(|f| String::from_utf8(std::fs::read(f).unwrap()).expect("UTF-8 dump"))
        .collect();
    assert!(
        raw.iter()
            .any(|r| r.contains(&format!("X-Rcpt-Args: <{ANN_A}>"))),
        "{raw:?}"
    );
    for r in &raw {
        assert!(r.is_ascii(), "8-bit bytes reached smtp-sink:\n{r}");
        assert!(
            r.contains("X-Mail-Args: <news@xn--bcher-kva.example>"),
            "{r}"
        );
    }
    for p in python_parse(&files) {
        assert_eq!(p["defects"], serde_json::json!([]), "{p}");
    }
}

/// A CSV whose `first_name` holds every line-break trick of SMTP smuggling.
const SMUGGLE: &str = "A\r.\rMAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@x.example>\n.\nDATA\r\n.\r\nsmuggled\n.\r\nQUIT\r.\r\n";

fn smuggling_campaign(port: u16) -> TestCampaign {
    let c = TestCampaign::new(Spec::new(vec![], port));
    let mut csv = String::from("id,email,first_name\r\n");
    csv.push_str(&format!("0,first@example.com,\"{SMUGGLE}\"\r\n"));
    csv.push_str("1,second@example.com,Plain\r\n");
    std::fs::write(c.dir.join("recipients.csv"), csv).unwrap();
    c
}

fn assert_whole(text: &str, to: &str) {
    let text = text.replace("\r\n", "\n");
    // Each bare CR and LF of the field arrived as a line break of its own.
    assert!(
        text.starts_with(
            "Hello A\n.\nMAIL FROM:<evil@x.example>\nRCPT TO:<victim@x.example>\n.\nDATA\n"
        ),
        "{to}: {text:?}"
    );
    assert!(text.contains("smuggled"), "{to}: {text:?}");
    assert!(
        text.trim_end().ends_with(&format!("for {to}.")),
        "{to}: the tail is missing: {text:?}"
    );
}

#[test]
fn a_field_with_bare_line_breaks_and_dots_arrives_as_one_whole_message_at_edms_sink() {
    let sink = Sink::start(&[], None);
    let c = smuggling_campaign(sink.port());
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    // Two recipients, two transactions, two messages: nothing smuggled in.
    let stats = sink.handle().stats();
    assert_eq!(stats.transactions, 2, "{stats:?}");
    assert_eq!(stats.accepted, 2, "{stats:?}");
    let got = sink_messages(&sink, &c.tmp.path().join("got"));
    for (_, path) in &got {
        assert_no_bare_line_break(&std::fs::read(path).unwrap(), "received");
    }
    let i = rcpts_index(&got, "first@example.com");
    let files: Vec<PathBuf> = got.iter().map(|(_, p)| p.clone()).collect();
    let parsed = python_parse(&files);
    for p in &parsed {
        assert_eq!(p["defects"], serde_json::json!([]), "{p}");
    }
    assert_whole(parsed[i]["text"].as_str().unwrap(), "first@example.com");
}

#[test]
fn a_field_with_bare_line_breaks_and_dots_arrives_as_one_whole_message_at_postfix() {
    let Some(probe) = PostfixSink::start(&[]) else {
        return;
    };
    drop(probe);
    let c = smuggling_campaign(1);
    let dir = dump_dir(&c);
    let template = format!("{}/", dir.display());
    let sink = PostfixSink::start(&["-d", &template]).expect("smtp-sink");
    let toml = c.dir.join("campaign.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("port = 1\n", &format!("port = {}\n", sink.port));
    std::fs::write(&toml, text).unwrap();
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    drop(sink);
    // smtp-sink reads lines up to LF: a bare `\n.\n` would have ended DATA
    // early and the rest would have been a second transaction.
    let files = dumps(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let parsed = python_parse(&files);
    let mut firsts = 0;
    for (f, p) in files.iter().zip(&parsed) {
        assert_eq!(p["defects"], serde_json::json!([]), "{}: {p}", f.display());
        let raw = std::fs::read(f).unwrap();
        // smtp-sink stores lines ending in LF: a CR left in a line came
        // bare from the client.
        assert!(
            !raw.contains(&b'\r'),
            "bare CR reached smtp-sink: {}",
            f.display()
        );
        if p["to"] == "first@example.com" {
            firsts += 1;
            assert_whole(p["text"].as_str().unwrap(), "first@example.com");
        }
    }
    assert_eq!(firsts, 1);
}

#[test]
fn auth_without_tls_off_loopback_is_refused_before_connecting() {
    // 192.0.2.1 (TEST-NET-1) is never reached: the refusal comes first.
    let c = TestCampaign::new(Spec {
        smtp: "username = \"u\"\npassword_env = \"EDM_WIRE_TEST_PW\"",
        ..Spec::new(addresses("pw", 2), 2525)
    });
    let toml = c.dir.join("campaign.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("host = \"127.0.0.1\"", "host = \"192.0.2.1\"");
    std::fs::write(&toml, &text).unwrap();
    let out = Command::new(EDM)
        .args(["send", "--no-tui"])
        .arg(&c.dir)
        .env("EDM_HOME", &c.home)
        .env("EDM_WIRE_TEST_PW", "s3cret-pw")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{stderr}");
    assert!(stderr.contains("allow_plaintext_auth"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret-pw"));
    // Refused at start: nothing ingested, nobody touched.
    assert!(!c.dir.join(".edm/state.db").exists());

    // A test send is refused the same way.
    let out = Command::new(EDM)
        .args(["send", "--no-tui", "--test-to", "me@example.com"])
        .arg(&c.dir)
        .env("EDM_HOME", &c.home)
        .env("EDM_WIRE_TEST_PW", "s3cret-pw")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{stderr}");
    assert!(stderr.contains("allow_plaintext_auth"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}

#[test]
fn auth_without_tls_is_allowed_on_loopback_and_when_asked() {
    let sink = Sink::start_with(&[], None, |cfg| {
        cfg.auth = Some(("u".into(), "s3cret-pw".into()))
    });
    for (host, extra) in [
        ("127.0.0.1", ""),
        ("localhost", ""),
        ("127.0.0.1", "allow_plaintext_auth = true"),
    ] {
        let smtp = format!("username = \"u\"\npassword_env = \"EDM_WIRE_TEST_PW\"\n{extra}");
        let c = TestCampaign::new(Spec {
            smtp: &smtp,
            ..Spec::new(addresses("ok", 2), sink.port())
        });
        let toml = c.dir.join("campaign.toml");
        let text = std::fs::read_to_string(&toml)
            .unwrap()
            .replace("host = \"127.0.0.1\"", &format!("host = \"{host}\""));
        std::fs::write(&toml, &text).unwrap();
        let out = Command::new(EDM)
            .args(["send", "--no-tui"])
            .arg(&c.dir)
            .env("EDM_HOME", &c.home)
            .env("EDM_WIRE_TEST_PW", "s3cret-pw")
            .output()
            .unwrap();
        assert_eq!(
            code(&out),
            0,
            "{host} {extra}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(c.status()["sent"], 2);
    }
}

/// A campaign authenticating with `security = "none"` to `host`.
fn auth_campaign(host: &str, extra: &str) -> TestCampaign {
    let smtp = format!("username = \"u\"\npassword_env = \"EDM_WIRE_TEST_PW\"\n{extra}");
    let c = TestCampaign::new(Spec {
        smtp: &smtp,
        ..Spec::new(addresses("chk", 2), 2525)
    });
    let toml = c.dir.join("campaign.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("host = \"127.0.0.1\"", &format!("host = \"{host}\""));
    std::fs::write(&toml, &text).unwrap();
    c
}

#[test]
fn edm_check_flags_plaintext_auth_and_unchecked_certificates() {
    let refused = auth_campaign("smtp.example.com", "");
    let out = refused.edm("check", &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{text}");
    assert!(text.contains("allow_plaintext_auth"), "{text}");
    assert!(text.contains("without TLS"), "{text}");

    let allowed = auth_campaign(
        "smtp.example.com",
        "allow_plaintext_auth = true\naccept_invalid_certs = true",
    );
    let out = allowed.edm("check", &["--json"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("plaintext_auth"), "{text}");
    assert!(!text.contains("plaintext_auth_refused"), "{text}");
    assert!(text.contains("invalid_certs_accepted"), "{text}");

    // Loopback: nothing to say.
    let local = auth_campaign("127.0.0.1", "");
    let out = local.edm("check", &["--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("plaintext_auth"), "{text}");
}

#[test]
fn accept_invalid_certs_is_warned_about_at_every_run() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        smtp: "accept_invalid_certs = true",
        ..Spec::new(addresses("cert", 2), sink.port())
    });
    for _ in 0..2 {
        let out = c.send(&[]);
        assert_eq!(code(&out), 0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("accept_invalid_certs = true"), "{stderr}");
    }
}
