//! The campaign state in PostgreSQL (issue 14, first part): a campaign sent
//! with `EDM_STORE_URL`, read back by `edm status --json` and `edm report
//! --all` with `--store`, `edm retry` through it; and `edm send` killed with
//! SIGKILL mid-run then resumed: nobody lost, duplicates at most the
//! recipients reported in doubt (the SQLite crash test's promise, `crash.rs`).
//!
//! Each test starts its own throwaway server (edm_store's `pg-fixture`:
//! initdb in a temp dir, as the `postgres` user when root, `fsync=off`); the
//! tests skip, saying so, when PostgreSQL is not installed, and fail under
//! `CI=true`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edm_store::postgres::fixture;

use crate::harness::*;

/// The lease of the workers these tests kill (`EDM_LEASE_MS`).
pub const LEASE_MS: &str = "2000";

/// `edm send --no-tui ARGS` in the background with the state in
/// PostgreSQL, with `envs` and its standard error to `stderr`: the one way
/// these tests and tests/e2e/workers.rs start a run on PostgreSQL.
pub(crate) fn send_on_postgres(
    c: &TestCampaign,
    url: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    stderr: Stdio,
) -> Child {
    Command::new(EDM)
        .arg("send")
        .arg(&c.dir)
        .arg("--no-tui")
        .args(args)
        .env("EDM_HOME", &c.home)
        .env("EDM_LOG", "warn")
        .env("EDM_STORE_URL", url)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawning edm")
}

/// `edm send --no-tui` in the background with the state in PostgreSQL.
fn spawn_send(c: &TestCampaign, url: &str) -> Child {
    // A killed worker's lease must expire before the next one takes its
    // rows over: short in tests (docs/scaling.md).
    send_on_postgres(c, url, &[], &[("EDM_LEASE_MS", LEASE_MS)], Stdio::null())
}

fn json_lines(out: &std::process::Output) -> BTreeMap<String, serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("report line"))
        .map(|v| (v["email"].as_str().unwrap_or_default().to_string(), v))
        .collect()
}

#[test]
fn a_campaign_sent_with_its_state_in_postgres_reads_back_everywhere() {
    let Some(pg) = fixture::start_or_skip() else {
        return;
    };
    let url = pg.url();
    let sink = Sink::start(
        &["match=bounce,stage=rcpt,reply=550 5.1.1 No such user"],
        None,
    );
    let mut emails = addresses("pg", 40);
    emails.push("bounce1@example.com".into());
    emails.push("bounce2@example.com".into());
    let c = TestCampaign::new(Spec::new(emails, sink.port()));
    let out = c.edm_env("send", &["--no-tui"], &[("EDM_STORE_URL", &url)]);
    // Exit 1: two recipients failed (the exit codes in README.md).
    assert_eq!(code(&out), 1, "send through PostgreSQL");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("state: postgres://postgres@127.0.0.1:"),
        "{said}"
    );
    assert_eq!(sink.deliveries().len(), 40);
    // Nothing went to a SQLite file.
    assert!(
        !c.dir.join(".edm/state.db").exists(),
        "the SQLite state was created although the state is in PostgreSQL"
    );

    let out = c.edm("status", &["--json", "--store", &url]);
    assert_eq!(code(&out), 0);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["total"].as_u64(), s["sent"].as_u64()),
        (Some(42), Some(40))
    );
    assert_eq!(s["failed"].as_u64(), Some(2));
    let place = s["state"].as_str().unwrap();
    assert!(
        place.starts_with("postgres://postgres@127.0.0.1:") && place.ends_with("campaign e2e"),
        "{place}"
    );

    let out = c.edm("report", &["--all", "--format", "json", "--store", &url]);
    assert_eq!(code(&out), 0);
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 42);
    assert_eq!(rows["pg0@example.com"]["status"], "sent");
    assert_eq!(rows["bounce1@example.com"]["status"], "failed");
    assert_eq!(rows["bounce1@example.com"]["category"], "recipient_unknown");

    // Without the store the SQLite state is asked for, and there is none.
    let out = c.edm("status", &["--json"]);
    assert_ne!(code(&out), 0, "status without --store read something");

    // `edm retry` goes through PostgreSQL too.
    let out = c.edm_env("retry", &[], &[("EDM_STORE_URL", &url)]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("2 recipients are pending again"));
    let out = c.edm("status", &["--json", "--store", &url]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["pending"].as_u64(), Some(2));

    // A URL with a password is refused before anything, and not echoed.
    let with_pw = url.replace("postgres@", "postgres:hunter2@");
    let out = c.edm("status", &["--json", "--store", &with_pw]);
    assert_ne!(code(&out), 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // And --state with --store is refused.
    let out = c.edm("status", &["--store", &url, "--state", "x.db"]);
    assert_ne!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store and --state together"));
}

#[test]
fn sigkill_mid_run_on_postgres_loses_nobody_and_duplicates_only_in_doubt() {
    let Some(pg) = fixture::start_or_skip() else {
        return;
    };
    let url = pg.url();
    let tmp = tempfile::tempdir().unwrap();
    let maildir = tmp.path().join("maildir");
    let sink = Sink::start(&[], Some(maildir.clone()));
    let n = 400;
    let c = TestCampaign::new(Spec {
        delivery: "rate = 250",
        ..Spec::new(addresses("k", n), sink.port())
    });
    let mut killed = 0;
    for (i, wait) in [300u64, 550, 420].into_iter().enumerate() {
        let mut child = spawn_send(&c, &url);
        std::thread::sleep(Duration::from_millis(wait));
        signal(&child, "KILL");
        let st = wait_timeout(&mut child, Duration::from_secs(30));
        eprintln!("kill {i} after {wait} ms -> {:?}", st.code());
        if st.code().is_none() {
            killed += 1;
        }
    }
    let mut done = false;
    for _ in 0..5 {
        let out = c.edm_env(
            "send",
            &["--no-tui"],
            &[("EDM_STORE_URL", &url), ("EDM_LEASE_MS", LEASE_MS)],
        );
        if code(&out) == 0 {
            done = true;
            break;
        }
    }
    assert!(done, "the campaign did not complete after the kills");
    let got = maildir_deliveries(&maildir);
    let out = c.edm("status", &["--json", "--store", &url]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("status after {killed} kills: {s}");
    assert_eq!(got.len(), n, "every recipient delivered at least once");
    assert_eq!(s["sent"].as_u64(), Some(n as u64));
    let in_doubt = s["in_doubt"].as_u64().unwrap() as usize;
    let dups: usize = got.values().map(|k| k.saturating_sub(1)).sum();
    eprintln!("duplicates {dups}, in doubt {in_doubt}");
    assert!(
        in_doubt <= killed * 4,
        "{in_doubt} in doubt after {killed} kills at concurrency 4"
    );
    assert!(
        dups <= in_doubt,
        "{dups} recipients got a second copy but only {in_doubt} were reported in doubt"
    );
    let out = c.edm("report", &["--all", "--format", "json", "--store", &url]);
    let rows = json_lines(&out);
    for (addr, count) in &got {
        if *count > 1 {
            assert_eq!(
                rows[addr]["in_doubt"], true,
                "{addr} was sent twice without being flagged"
            );
        }
    }
}

/// `edm bounces --store`: a DSN (tied by VERP) and an ARF report (tied by
/// Message-ID) change exactly their recipients in PostgreSQL, once; a forged
/// bounce is listed by `--unmatched`; no SQLite file appears.
#[test]
fn bounces_apply_to_a_campaign_in_postgres_once() {
    let Some(pg) = fixture::start_or_skip() else {
        return;
    };
    let url = pg.url();
    let sink = Sink::start(&[], None);
    let mut spec = Spec::new(addresses("pgl", 4), sink.port());
    spec.extra = "[bounces]\nreturn_path = \"bounces+{token}@acme.example\"\n";
    let c = TestCampaign::new(spec);
    let out = c.edm_env("send", &["--no-tui"], &[("EDM_STORE_URL", &url)]);
    assert_eq!(code(&out), 0);
    let by_rcpt: BTreeMap<String, (String, String)> = sink
        .handle()
        .received()
        .into_iter()
        .map(|r| {
            let mid = r.message_id.clone().unwrap_or_default();
            (r.rcpt_to[0].clone(), (r.mail_from.clone(), mid))
        })
        .collect();
    let rcpt = |i: usize| format!("pgl{i}@example.com");
    let (rp0, mid0) = by_rcpt[&rcpt(0)].clone();
    let (rp2, _) = by_rcpt[&rcpt(2)].clone();
    let mid1 = by_rcpt[&rcpt(1)].1.clone();
    let mail = c.tmp.path().join("mail");
    std::fs::create_dir_all(mail.join("new")).unwrap();
    let put = |name: &str, text: String| std::fs::write(mail.join("new").join(name), text).unwrap();
    put(
        "01.eml",
        crate::bounces::dsn(&rp0, &rcpt(0), &mid0, "5.1.1", 1),
    );
    put("02.eml", crate::bounces::arf(&rcpt(1), &mid1));
    let forged = rp2.replacen('-', "-x", 1);
    put(
        "03.eml",
        crate::bounces::dsn(&forged, &rcpt(2), "nope@acme.example", "5.1.1", 3),
    );
    let from = mail.to_str().unwrap();
    let out = c.edm("bounces", &["--from", from, "--store", &url]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !c.dir.join(".edm/state.db").exists(),
        "edm bounces created a SQLite state although the state is in PostgreSQL"
    );
    let out = c.edm("report", &["--all", "--format", "json", "--store", &url]);
    let rows = json_lines(&out);
    assert_eq!(rows[&rcpt(0)]["late"], "bounced");
    assert_eq!(rows[&rcpt(0)]["late_status"], "5.1.1");
    assert_eq!(rows[&rcpt(1)]["late"], "complained");
    assert_eq!(rows[&rcpt(2)]["late"], serde_json::Value::Null);
    assert_eq!(rows[&rcpt(3)]["late"], serde_json::Value::Null);
    let out = c.edm("status", &["--json", "--store", &url]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&s["bounced"], &s["complained"], &s["sent"]),
        (&1.into(), &1.into(), &4.into())
    );
    let out = c.edm("bounces", &["--unmatched", "--store", &url]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&rcpt(2)));
    // A second pass over the same messages changes nothing.
    let out = c.edm_env("bounces", &["--from", from], &[("EDM_STORE_URL", &url)]);
    assert_eq!(code(&out), 0);
    let again = c.edm("report", &["--all", "--format", "json", "--store", &url]);
    assert_eq!(json_lines(&again), rows);
}

/// `edm send` in the background with the state in PostgreSQL, its stderr
/// kept in `log` at the default level (warn), with a password in the
/// environment, to show it never leaks.
fn spawn_send_logged(c: &TestCampaign, url: &str, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    send_on_postgres(
        c,
        url,
        &[],
        &[("PGPASSWORD", "pg-secret-never-shown")],
        log.into(),
    )
}

/// The longest gap between two consecutive deliveries at the sink: how long
/// the run was paused.
fn longest_pause(sink: &Sink) -> Duration {
    let mut at: Vec<i64> = sink.handle().received().iter().map(|r| r.at_ms).collect();
    at.sort_unstable();
    let gap = at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    Duration::from_millis(u64::try_from(gap).unwrap_or(0))
}

/// Issue 14 point 5: PostgreSQL restarted in the middle of a run (about 8 s
/// of sending): the run pauses, reconnects and goes on; it exits 0,
/// everyone is delivered (a duplicate only if reported in doubt), and the
/// store's counts equal what the sink got. Prints how long the restart
/// paused the run (docs/scaling.md quotes it).
#[test]
fn a_postgres_restart_mid_run_pauses_the_run_and_loses_nothing() {
    let Some(pg) = fixture::start_or_skip() else {
        return;
    };
    let url = pg.url();
    let sink = Sink::start(&[], None);
    let n = 2000;
    let c = TestCampaign::new(Spec {
        delivery: "rate = 250",
        ..Spec::new(addresses("rs", n), sink.port())
    });
    let log = c.tmp.path().join("send.log");
    let mut child = spawn_send_logged(&c, &url, &log);
    // Until a quarter is sent, so the restart lands mid-run.
    let started = std::time::Instant::now();
    while sink.handle().received().len() < n / 4 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = sink.handle().received().len();
    let restart = std::time::Instant::now();
    pg.restart().expect("restart");
    let restart_took = restart.elapsed();
    let st = wait_timeout(&mut child, Duration::from_secs(120));
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        st.code(),
        Some(0),
        "the run did not survive the restart:\n{said}"
    );
    assert!(before < n, "the run ended before the restart");
    let got = sink.deliveries();
    let out = c.edm("status", &["--json", "--store", &url]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.len(), n, "someone was not delivered: {s}");
    assert_eq!(s["total"].as_u64(), Some(n as u64), "{s}");
    assert_eq!(s["sent"].as_u64(), Some(n as u64), "{s}");
    let in_doubt = s["in_doubt"].as_u64().unwrap() as usize;
    let dups: usize = got.values().map(|k| k.saturating_sub(1)).sum();
    assert!(dups <= in_doubt, "{dups} duplicates, {in_doubt} in doubt");
    // Seen by the operator: a warning at the loss, the pause in the log.
    assert!(said.contains("lost the PostgreSQL server"), "{said}");
    assert!(said.contains("PostgreSQL is back after"), "{said}");
    assert!(!said.contains("pg-secret-never-shown"), "{said}");
    for line in said.lines().filter(|l| l.contains("PostgreSQL")) {
        eprintln!("{line}");
    }
    let pause = longest_pause(&sink);
    eprintln!(
        "restart (pg_ctl stop -m fast + start) took {:.2} s; longest pause in deliveries \
         {:.2} s; {dups} duplicates, {in_doubt} in doubt",
        restart_took.as_secs_f64(),
        pause.as_secs_f64()
    );
}

/// PostgreSQL gone for longer than `[store] reconnect_for`: the run stops
/// with an error naming the store (never the password), and once the
/// server is back `edm send` again resumes: everyone delivered, a
/// duplicate only if reported in doubt.
#[test]
fn postgres_gone_longer_than_the_bound_stops_the_run_and_send_again_resumes() {
    let Some(pg) = fixture::start_or_skip() else {
        return;
    };
    let url = pg.url();
    let sink = Sink::start(&[], None);
    let n = 600;
    let mut spec = Spec {
        delivery: "rate = 200",
        ..Spec::new(addresses("gone", n), sink.port())
    };
    spec.extra = "[store]\nreconnect_for = \"2s\"\n";
    let c = TestCampaign::new(spec);
    let log = c.tmp.path().join("send.log");
    let mut child = spawn_send_logged(&c, &url, &log);
    let started = std::time::Instant::now();
    while sink.handle().received().len() < n / 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop();
    let st = wait_timeout(&mut child, Duration::from_secs(60));
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("the stopped run said:\n{said}");
    assert_ne!(
        st.code(),
        Some(0),
        "the run went on without its store:\n{said}"
    );
    assert!(st.code().is_some(), "the run did not stop by itself");
    assert!(said.contains("unreachable"), "{said}");
    assert!(said.contains("postgres://postgres@127.0.0.1:"), "{said}");
    assert!(!said.contains("pg-secret-never-shown"), "{said}");
    pg.start_again().expect("start again");
    let out = c.edm_env("send", &["--no-tui"], &[("EDM_STORE_URL", &url)]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let got = sink.deliveries();
    let out = c.edm("status", &["--json", "--store", &url]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.len(), n, "{s}");
    assert_eq!(s["sent"].as_u64(), Some(n as u64), "{s}");
    let in_doubt = s["in_doubt"].as_u64().unwrap() as usize;
    let dups: usize = got.values().map(|k| k.saturating_sub(1)).sum();
    eprintln!("after the stop: {dups} duplicates, {in_doubt} in doubt");
    assert!(dups <= in_doubt, "{dups} duplicates, {in_doubt} in doubt");
}

/// TLS to PostgreSQL through `edm` (docs/scaling.md, "TLS to the
/// server"): a campaign sent with `sslmode=verify-full` and the CA in
/// `sslrootcert` reads back with `edm status`; the same URL with a CA that
/// did not sign the server's certificate is refused, saying why.
#[test]
fn a_campaign_in_postgres_over_verified_tls() {
    let Some(pg) = fixture::start_or_skip() else {
        return;
    };
    let files = pg.enable_tls().expect("TLS on the test server");
    let url = |ca: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url(),
            ca.display()
        )
    };
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("tls", 5), sink.port()));
    let good = url(&files.ca);
    let out = c.edm_env("send", &["--no-tui"], &[("EDM_STORE_URL", &good)]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sink.deliveries().len(), 5);
    let out = c.edm("status", &["--json", "--store", &good]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["sent"].as_u64(), Some(5), "{s}");
    let out = c.edm("status", &["--json", "--store", &url(&files.other_ca)]);
    assert_ne!(code(&out), 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
}
