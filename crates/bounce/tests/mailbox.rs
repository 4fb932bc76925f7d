//! `mailbox::process` against a real Dovecot (tests/dovecot): IMAP over TLS
//! and STARTTLS, POP3 over TLS and STLS.

mod dovecot;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use dovecot::{Cert, Dovecot, PASSWORD, USER, free_port};
use edm_bounce::mailbox::{
    Disposition, Kind, MailboxConfig, MailboxError, Security, Summary, process,
};

fn config(kind: Kind, security: Security, port: u16, dc: &Dovecot) -> MailboxConfig {
    MailboxConfig {
        kind,
        host: "127.0.0.1".into(),
        port,
        security,
        username: USER.into(),
        password: PASSWORD.into(),
        folder: "INBOX".into(),
        processed_folder: "processed".into(),
        delete: false,
        ca_file: Some(dc.ca.clone()),
        timeout: Duration::from_secs(10),
        allow_plaintext_auth: false,
    }
}

/// A message with CRLF line ends (what IMAP and POP3 hand out), lines that
/// start with a dot (POP3 stuffs them) and a marker the handler decides on.
fn message(i: usize, bounce: bool) -> Vec<u8> {
    let kind = if bounce { "bounce" } else { "other" };
    format!(
        "From: MAILER-DAEMON@mx.example\r\nTo: bounces+t{i}@acme.example\r\nSubject: message {i}\r\nMessage-ID: <m{i}@test>\r\nX-Test: {kind}\r\n\r\nBody of message {i}.\r\n.a line starting with a dot\r\n..two dots\r\n.\r\nend\r\n"
    )
    .into_bytes()
}

/// Delivers `n` messages, every other one a "bounce"; returns them by name.
fn deliver(dc: &Dovecot, n: usize) -> BTreeMap<String, (Vec<u8>, bool)> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let bounce = i % 2 == 0;
        let name = format!("{i}.M{i}P1.test");
        let bytes = message(i, bounce);
        dc.deliver(&name, &bytes);
        out.insert(name, (bytes, bounce));
    }
    out
}

/// Runs one pass; the handler keeps every message it was given and marks
/// the "bounce" ones processed.
async fn pass(cfg: &MailboxConfig) -> (Result<Summary, MailboxError>, Vec<Vec<u8>>) {
    let mut got = Vec::new();
    let r = process(cfg, |bytes: &[u8]| {
        got.push(bytes.to_vec());
        if bytes.windows(14).any(|w| w == b"X-Test: bounce") {
            Disposition::Processed
        } else {
            Disposition::Leave
        }
    })
    .await;
    (r, got)
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

fn bodies(msgs: &BTreeMap<String, (Vec<u8>, bool)>, bounce: Option<bool>) -> Vec<Vec<u8>> {
    sorted(
        msgs.values()
            .filter(|(_, b)| bounce.is_none_or(|want| *b == want))
            .map(|(m, _)| m.clone())
            .collect(),
    )
}

/// Maildir flags (after `:2,`) of a stored message: `S` is \Seen, `T` is
/// \Deleted (trashed).
fn flags(name: &str) -> &str {
    name.split_once(":2,").map_or("", |(_, f)| f)
}

async fn imap_moves_processed_and_leaves_the_rest(security: Security, no_move: bool) {
    // imap_capability replaces what Dovecot advertises after login: without
    // MOVE the client must fall back to COPY + \Deleted + UID EXPUNGE.
    let extra = if no_move {
        "imap_capability = IMAP4rev1 LITERAL+ UIDPLUS"
    } else {
        ""
    };
    let Some(dc) = Dovecot::start_with(extra) else {
        return;
    };
    let port = match security {
        Security::Tls => dc.imaps,
        _ => dc.imap,
    };
    let cfg = config(Kind::Imap, security, port, &dc);
    let msgs = deliver(&dc, 6);

    let (r, got) = pass(&cfg).await;
    let summary = r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    assert_eq!(
        summary,
        Summary {
            seen: 6,
            processed: 3,
            left: 3
        }
    );
    // Every message exactly once, byte for byte.
    assert_eq!(sorted(got), bodies(&msgs, None));

    let processed = dc.messages(Some("processed"));
    assert_eq!(
        sorted(processed.iter().map(|(_, b)| b.clone()).collect()),
        bodies(&msgs, Some(true))
    );
    let inbox = dc.messages(None);
    assert_eq!(
        sorted(inbox.iter().map(|(_, b)| b.clone()).collect()),
        bodies(&msgs, Some(false)),
        "only the left messages stay in INBOX"
    );
    for (name, _) in &inbox {
        assert!(
            !flags(name).contains('S'),
            "a message left alone was marked \\Seen: {name}"
        );
    }

    // A second pass sees only the left ones, and leaves them again.
    let (r, got) = pass(&cfg).await;
    let summary = r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    assert_eq!(
        summary,
        Summary {
            seen: 3,
            processed: 0,
            left: 3
        }
    );
    assert_eq!(sorted(got), bodies(&msgs, Some(false)));
}

#[tokio::test]
async fn imap_tls_moves_processed_and_leaves_the_rest_unseen() {
    imap_moves_processed_and_leaves_the_rest(Security::Tls, false).await;
}

#[tokio::test]
async fn imap_starttls_moves_processed_and_leaves_the_rest_unseen() {
    imap_moves_processed_and_leaves_the_rest(Security::Starttls, false).await;
}

#[tokio::test]
async fn imap_without_move_falls_back_to_copy_and_expunge() {
    imap_moves_processed_and_leaves_the_rest(Security::Tls, true).await;
}

#[tokio::test]
async fn imap_without_move_or_uidplus_flags_and_never_expunges_others() {
    // Neither MOVE nor UIDPLUS: a bare EXPUNGE would also remove what
    // someone else flagged \Deleted, so the copied message stays flagged.
    let Some(dc) = Dovecot::start_with("imap_capability = IMAP4rev1 LITERAL+") else {
        return;
    };
    let cfg = config(Kind::Imap, Security::Tls, dc.imaps, &dc);
    let msgs = deliver(&dc, 4);
    // Someone else's message, flagged \Deleted but not expunged: edm must
    // neither read it nor expunge it.
    let theirs = message(99, true);
    dc.deliver("99.M99P1.test:2,T", &theirs);

    let (r, got) = pass(&cfg).await;
    let summary = r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    assert_eq!((summary.seen, summary.processed), (4, 2));
    assert_eq!(sorted(got), bodies(&msgs, None));
    let processed = dc.messages(Some("processed"));
    assert_eq!(
        sorted(processed.into_iter().map(|(_, b)| b).collect()),
        bodies(&msgs, Some(true))
    );
    let inbox = dc.messages(None);
    let flagged: Vec<Vec<u8>> = sorted(
        inbox
            .iter()
            .filter(|(n, _)| flags(n).contains('T'))
            .map(|(_, b)| b.clone())
            .collect(),
    );
    let mut want = bodies(&msgs, Some(true));
    want.push(theirs.clone());
    assert_eq!(flagged, sorted(want), "flagged \\Deleted, not expunged");
    assert_eq!(inbox.len(), 5, "nothing expunged");

    let (r, got) = pass(&cfg).await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    assert_eq!(sorted(got), bodies(&msgs, Some(false)));
}

#[tokio::test]
async fn imap_moves_more_than_one_batch() {
    // 120 applied: moved in batches of 100, the last one partial.
    for no_move in [false, true] {
        let extra = if no_move {
            "imap_capability = IMAP4rev1 LITERAL+ UIDPLUS"
        } else {
            ""
        };
        let Some(dc) = Dovecot::start_with(extra) else {
            return;
        };
        let cfg = config(Kind::Imap, Security::Tls, dc.imaps, &dc);
        let msgs = deliver(&dc, 240);
        let (r, got) = pass(&cfg).await;
        let summary = r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
        assert_eq!((summary.seen, summary.processed), (240, 120));
        assert_eq!(got.len(), 240);
        let processed = dc.messages(Some("processed"));
        assert_eq!(
            sorted(processed.into_iter().map(|(_, b)| b).collect()),
            bodies(&msgs, Some(true))
        );
        let inbox = dc.messages(None);
        assert_eq!(
            sorted(inbox.into_iter().map(|(_, b)| b).collect()),
            bodies(&msgs, Some(false))
        );
    }
}

#[tokio::test]
async fn imap_without_auth_plain_or_login_is_a_clear_error() {
    // Only AUTH=LOGIN (the SASL mechanism): Dovecot then also advertises
    // LOGINDISABLED, since its LOGIN command rides on PLAIN.
    let Some(dc) = Dovecot::start_with("auth_mechanisms = login") else {
        return;
    };
    let cfg = config(Kind::Imap, Security::Tls, dc.imaps, &dc);
    let e = pass(&cfg).await.0.expect_err("no usable mechanism");
    assert!(matches!(e, MailboxError::Protocol { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("neither LOGIN nor AUTHENTICATE PLAIN"),
        "{e}"
    );
}

#[tokio::test]
async fn imap_delete_removes_processed_without_a_processed_folder() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let mut cfg = config(Kind::Imap, Security::Starttls, dc.imap, &dc);
    cfg.delete = true;
    let msgs = deliver(&dc, 4);
    let (r, got) = pass(&cfg).await;
    let summary = r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    assert_eq!((summary.seen, summary.processed), (4, 2));
    assert_eq!(sorted(got), bodies(&msgs, None));
    let inbox = dc.messages(None);
    assert_eq!(
        sorted(inbox.iter().map(|(_, b)| b.clone()).collect()),
        bodies(&msgs, Some(false))
    );
    assert!(
        !dc.folder_dir(Some("processed")).exists(),
        "delete = true must not create a processed folder"
    );
}

#[tokio::test]
async fn imap_plain_on_loopback_works_and_elsewhere_is_refused() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let mut cfg = config(Kind::Imap, Security::Plain, dc.imap, &dc);
    let msgs = deliver(&dc, 2);
    let (r, got) = pass(&cfg).await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    assert_eq!(sorted(got), bodies(&msgs, None));

    // Not loopback: refused before any connection (the address is
    // TEST-NET-1, RFC 5737: nothing would answer anyway).
    cfg.host = "192.0.2.1".into();
    let started = Instant::now();
    let e = pass(&cfg).await.0.expect_err("plaintext to a remote host");
    assert!(matches!(e, MailboxError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("allow_plaintext_auth"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1), "it connected");
}

async fn pop3_reads_every_message(security: Security, delete: bool) {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let port = match security {
        Security::Tls => dc.pop3s,
        _ => dc.pop3,
    };
    let mut cfg = config(Kind::Pop3, security, port, &dc);
    cfg.delete = delete;
    let msgs = deliver(&dc, 6);

    let (r, got) = pass(&cfg).await;
    let summary = r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    assert_eq!(
        summary,
        Summary {
            seen: 6,
            processed: 3,
            left: 3
        }
    );
    // Exactly once each, dot-unstuffed back to the stored bytes.
    assert_eq!(sorted(got), bodies(&msgs, None));

    let left = sorted(dc.messages(None).into_iter().map(|(_, b)| b).collect());
    let (r, again) = pass(&cfg).await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", dc.log()));
    if delete {
        assert_eq!(left, bodies(&msgs, Some(false)), "processed ones deleted");
        assert_eq!(sorted(again), bodies(&msgs, Some(false)));
    } else {
        // POP3 has no folders: without delete everything stays, and the
        // next pass hands everything over again (the caller dedups).
        assert_eq!(left, bodies(&msgs, None), "nothing deleted");
        assert_eq!(sorted(again), bodies(&msgs, None));
    }
}

#[tokio::test]
async fn pop3_tls_with_delete_removes_only_processed() {
    pop3_reads_every_message(Security::Tls, true).await;
}

#[tokio::test]
async fn pop3_stls_without_delete_keeps_everything() {
    pop3_reads_every_message(Security::Starttls, false).await;
}

#[tokio::test]
async fn pop3_stls_with_delete_removes_only_processed() {
    pop3_reads_every_message(Security::Starttls, true).await;
}

#[tokio::test]
async fn wrong_password_names_the_server_and_hides_the_password() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let wrong = "Wr0ng-Pa55-xyzzy";
    for (kind, security, port) in [
        (Kind::Imap, Security::Tls, dc.imaps),
        (Kind::Imap, Security::Starttls, dc.imap),
        (Kind::Pop3, Security::Tls, dc.pop3s),
        (Kind::Pop3, Security::Starttls, dc.pop3),
    ] {
        let mut cfg = config(kind, security, port, &dc);
        cfg.password = wrong.into();
        let e = pass(&cfg).await.0.expect_err("wrong password");
        eprintln!("{e}");
        let text = e.to_string();
        let debug = format!("{e:?}");
        assert!(matches!(e, MailboxError::Auth { .. }), "{kind:?}: {debug}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains(USER), "{text}");
        assert!(!text.contains(wrong) && !debug.contains(wrong), "{debug}");
    }
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error_in_seconds() {
    for kind in [Kind::Imap, Kind::Pop3] {
        let port = free_port();
        let cfg = MailboxConfig {
            kind,
            host: "127.0.0.1".into(),
            port,
            security: Security::Tls,
            username: USER.into(),
            password: PASSWORD.into(),
            folder: "INBOX".into(),
            processed_folder: "processed".into(),
            delete: false,
            ca_file: None,
            timeout: Duration::from_secs(3),
            allow_plaintext_auth: false,
        };
        let started = Instant::now();
        let e = pass(&cfg).await.0.expect_err("nothing listens");
        eprintln!("{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
        assert!(matches!(e, MailboxError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and says nothing: the greeting (or the TLS
    // handshake) never comes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    for (kind, security) in [
        (Kind::Imap, Security::Tls),
        (Kind::Imap, Security::Starttls),
        (Kind::Pop3, Security::Starttls),
    ] {
        let cfg = MailboxConfig {
            kind,
            host: "127.0.0.1".into(),
            port,
            security,
            username: USER.into(),
            password: PASSWORD.into(),
            folder: "INBOX".into(),
            processed_folder: "processed".into(),
            delete: false,
            ca_file: None,
            timeout: Duration::from_millis(500),
            allow_plaintext_auth: false,
        };
        let e = pass(&cfg).await.0.expect_err("silent server");
        eprintln!("{e}");
        assert!(matches!(e, MailboxError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }
    drop(listener);
}

/// A server that follows `script` (for each line received, the answer to
/// send) and then goes silent, connection open, until the test ends.
fn stalling_server(greeting: &'static str, script: &'static [&'static str]) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let _ = conn.write_all(greeting.as_bytes());
        let mut lines = BufReader::new(conn.try_clone().expect("clone"));
        for answer in script {
            let mut line = String::new();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let _ = conn.write_all(answer.as_bytes());
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    port
}

#[tokio::test]
async fn a_server_that_stops_answering_mid_session_times_out() {
    let imap = stalling_server(
        "* OK ready\r\n",
        &["* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nC0 OK done\r\n"],
    );
    let pop3 = stalling_server("+OK ready\r\n", &["+OK\r\n"]);
    for (kind, port, step) in [(Kind::Imap, imap, "logging in"), (Kind::Pop3, pop3, "PASS")] {
        let mut cfg = MailboxConfig::new(kind, "127.0.0.1", USER, PASSWORD);
        cfg.port = port;
        cfg.security = Security::Plain;
        cfg.timeout = Duration::from_millis(500);
        let e = pass(&cfg).await.0.expect_err("stalled server");
        eprintln!("{e}");
        assert!(
            matches!(&e, MailboxError::Timeout { step: s, .. } if s == step),
            "{kind:?}: {e:?}"
        );
    }
}

#[tokio::test]
async fn a_certificate_no_trusted_ca_signed_is_a_tls_error() {
    let Some(dc) = Dovecot::start() else {
        return;
    };
    for (kind, security, port) in [
        (Kind::Imap, Security::Tls, dc.imaps),
        (Kind::Imap, Security::Starttls, dc.imap),
        (Kind::Pop3, Security::Tls, dc.pop3s),
        (Kind::Pop3, Security::Starttls, dc.pop3),
    ] {
        let mut cfg = config(kind, security, port, &dc);
        cfg.ca_file = None;
        let e = pass(&cfg).await.0.expect_err("untrusted certificate");
        eprintln!("{e}");
        assert!(matches!(e, MailboxError::Tls { .. }), "{kind:?}: {e:?}");
        assert!(e.to_string().contains("ca_file"), "{e}");
    }
}

#[tokio::test]
async fn a_self_signed_server_certificate_can_be_the_ca_file() {
    // Not marked as a CA: trusted through ca_file.
    let Some(dc) = Dovecot::start_full("", Cert::SelfSigned { marked_ca: false }) else {
        return;
    };
    for (kind, port) in [(Kind::Imap, dc.imaps), (Kind::Pop3, dc.pop3s)] {
        let cfg = config(kind, Security::Tls, port, &dc);
        pass(&cfg)
            .await
            .0
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }
    drop(dc);
    // openssl's default (CA:TRUE): refused, and the error says what to do.
    let Some(dc) = Dovecot::start_full("", Cert::SelfSigned { marked_ca: true }) else {
        return;
    };
    let cfg = config(Kind::Imap, Security::Tls, dc.imaps, &dc);
    let e = pass(&cfg)
        .await
        .0
        .expect_err("a CA certificate as the server's");
    assert!(matches!(e, MailboxError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("CA:FALSE"), "{e}");
}

/// Every `log` record, at every level, from every crate.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{} {}", record.target(), record.args()));
        }
    }
    fn flush(&self) {}
}

static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();

#[tokio::test]
async fn the_password_never_reaches_the_log_even_at_trace() {
    use base64::Engine;
    let Some(dc) = Dovecot::start() else {
        return;
    };
    let capture = *CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        let _ = log::set_logger(c);
        c
    });
    log::set_max_level(log::LevelFilter::Trace);
    for (kind, port) in [(Kind::Imap, dc.imaps), (Kind::Pop3, dc.pop3s)] {
        let cfg = config(kind, Security::Tls, port, &dc);
        pass(&cfg).await.0.unwrap_or_else(|e| panic!("{e}"));
    }
    // AUTHENTICATE PLAIN sends the password base64-encoded.
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    let lines = capture.0.lock().map(|v| v.clone()).unwrap_or_default();
    for line in &lines {
        assert!(
            !line.contains(PASSWORD) && !line.contains(&plain),
            "the password was logged: {line}"
        );
    }
}

/// A measurement, not a check (run by hand, see docs/bounces.md): one pass
/// over 1,000 messages, half applied, IMAP (MOVE) and POP3 (delete).
#[tokio::test]
#[ignore = "measurement: cargo test -p edm-bounce --test mailbox -- --ignored --nocapture"]
async fn measure_a_pass_over_1000_messages() {
    for (kind, port) in [(Kind::Imap, 0), (Kind::Pop3, 1)] {
        let Some(dc) = Dovecot::start() else {
            return;
        };
        let port = if port == 0 { dc.imaps } else { dc.pop3s };
        let mut cfg = config(kind, Security::Tls, port, &dc);
        cfg.delete = kind == Kind::Pop3;
        deliver(&dc, 1000);
        let started = Instant::now();
        let (r, got) = pass(&cfg).await;
        let took = started.elapsed();
        r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len(), 1000);
        eprintln!(
            "{kind:?}: 1000 messages (500 applied) in {took:.2?}, {:.0} msg/s",
            1000.0 / took.as_secs_f64()
        );
    }
}
