//! Issue 9, points 1, 6 and 7: an ingest interrupted in any way (SIGKILL,
//! Ctrl-C, SIGHUP, a bad byte mid-file) never stores a record twice and the
//! next `edm send` completes it; copies left by an older edm are repaired;
//! a corrected CSV is read again while nothing was sent; SIGHUP stops a send
//! like Ctrl-C (a second one at once, none under `nohup`), and a vanished
//! terminal or closed pipe does not turn the end of a run into a panic; the
//! state files are private. The dashboard's side is in `tui.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edm_store::{IngestPass, Store};

use crate::harness::{
    EDM, Sink, Spec, TestCampaign, addresses, code, dead_port, signal, wait_timeout,
};

/// Rows in the big list: many batches of 2,000.
const BIG: u64 = 120_000;

fn state(c: &TestCampaign) -> PathBuf {
    c.path().join(".edm/state.db")
}

/// The ingest pass as the store has it now (`None` before the first batch).
fn pass(c: &TestCampaign) -> Option<IngestPass> {
    let path = state(c);
    if !path.is_file() {
        return None;
    }
    Store::open_read_only(&path).ok()?.ingest_pass().ok()?
}

/// Waits until the running ingest has stored at least `rows`; fails if edm
/// exits first or the pass completes (the kill would no longer be mid-ingest).
fn wait_for_rows(c: &TestCampaign, child: &mut Child, rows: u64) -> IngestPass {
    let start = Instant::now();
    loop {
        if let Some(p) = pass(c)
            && p.rows >= rows
        {
            assert!(!p.complete, "the ingest finished before {rows} rows: {p:?}");
            return p;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("edm exited ({st}) before storing {rows} rows");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no {rows} rows after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `edm status --json` total and the number of rows the sink got twice.
fn check_once(c: &TestCampaign, sink: &Sink, sent: u64) {
    let s = c.status();
    assert_eq!(s["total"], BIG, "status.total is the rows of the CSV: {s}");
    assert_eq!(s["sent"], sent, "{s}");
    let got = sink.deliveries();
    assert_eq!(got.len() as u64, sent, "one delivery per sent recipient");
    assert!(
        got.values().all(|n| *n == 1),
        "someone got two copies: {:?}",
        got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

#[test]
fn ingest_killed_at_several_moments_stores_each_row_once() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("big", BIG as usize), sink.port()));
    // At once (maybe before the first batch), then after 6,000, 40,000 and
    // 90,000 rows: each run goes on from the checkpoint of the one before.
    let mut child = c.spawn_send(&["--limit", "300"]);
    std::thread::sleep(Duration::from_millis(40));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut last = 0;
    for rows in [6_000, 40_000, 90_000] {
        let mut child = c.spawn_send(&["--limit", "300"]);
        let seen = wait_for_rows(&c, &mut child, rows);
        child.kill().unwrap();
        child.wait().unwrap();
        let after = pass(&c).expect("a pass");
        assert!(!after.complete && after.rows >= seen.rows && after.rows >= last);
        assert_eq!(
            after.rows,
            c.status()["total"],
            "rows stored = the pass's count"
        );
        last = after.rows;
    }
    assert_eq!(
        sink.handle().accepted(),
        0,
        "nothing sent before the list is in"
    );
    let out = c.send(&["--limit", "300"]);
    assert_eq!(code(&out), 3, "--limit leaves work");
    check_once(&c, &sink, 300);
    let out = c.send(&["--limit", "300"]);
    assert_eq!(code(&out), 3);
    check_once(&c, &sink, 600);
}

#[test]
fn ctrl_c_and_sighup_during_ingest_stop_at_a_batch_and_the_next_run_completes() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("sig", BIG as usize), sink.port()));
    let mut stored = 0;
    for sig in ["INT", "HUP"] {
        let mut child = c.spawn_send(&[]);
        wait_for_rows(&c, &mut child, stored + 4_000);
        signal(&child, sig);
        let st = wait_timeout(&mut child, Duration::from_secs(60));
        assert_eq!(st.code(), Some(130), "SIG{sig} during ingest exits 130");
        let p = pass(&c).expect("a pass");
        assert!(!p.complete, "stopped before the end: {p:?}");
        assert_eq!(p.rows % 2_000, 0, "stopped at a batch boundary: {p:?}");
        let s = c.status();
        assert_eq!(s["total"], p.rows);
        assert_eq!(
            (&s["ingested"], &s["complete"]),
            (&false.into(), &false.into()),
            "{s}"
        );
        assert!(p.rows > stored);
        stored = p.rows;
    }
    // A second signal quits at once; the state is still consistent.
    let mut child = c.spawn_send(&[]);
    wait_for_rows(&c, &mut child, stored + 2_000);
    signal(&child, "TERM");
    signal(&child, "TERM");
    let st = wait_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(st.code(), Some(130), "a second signal exits 130 at once");
    assert_eq!(sink.handle().accepted(), 0);
    let out = c.send(&["--limit", "50"]);
    assert_eq!(code(&out), 3);
    check_once(&c, &sink, 50);
    assert!(pass(&c).unwrap().complete);
    assert_eq!(c.status()["ingested"], true);
}

#[test]
fn a_bad_byte_mid_file_stores_the_rows_before_it_and_resumes_once_fixed() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(Vec::new(), sink.port()));
    let csv_path = c.path().join("recipients.csv");
    let mut csv = b"id,email,first_name\r\n".to_vec();
    for i in 0..10_000u32 {
        // Line 7002 (record 7,000) holds a byte that is not UTF-8.
        let name: &[u8] = if i == 7_000 { b"Bad\xffName" } else { b"Name" };
        csv.extend_from_slice(format!("{i},bad{i}@example.com,").as_bytes());
        csv.extend_from_slice(name);
        csv.extend_from_slice(b"\r\n");
    }
    std::fs::write(&csv_path, &csv).unwrap();
    for _ in 0..2 {
        let out = c.send(&[]);
        assert_eq!(code(&out), 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("line 7002") && err.contains("first_name"),
            "{err}"
        );
        // The 7,000 rows before it are stored once, however often it is run.
        assert_eq!(c.status()["total"], 7_000);
        assert!(!pass(&c).unwrap().complete);
    }
    let fixed: Vec<u8> = String::from_utf8_lossy(&csv).into_owned().into_bytes();
    std::fs::write(&csv_path, fixed).unwrap();
    let out = c.send(&["--limit", "5"]);
    assert_eq!(code(&out), 3);
    let s = c.status();
    assert_eq!(s["total"], 10_000, "{s}");
    assert_eq!(s["sent"], 5);
    assert!(sink.deliveries().values().all(|n| *n == 1));
}

#[test]
fn sighup_during_a_send_stops_cleanly_and_resume_sends_each_once() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        delivery: "rate = 100",
        ..Spec::new(addresses("hup", 400), sink.port())
    });
    let mut child = c.spawn_send(&[]);
    let start = Instant::now();
    while sink.handle().accepted() < 20 {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "HUP");
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(130), "SIGHUP exits 130 like Ctrl-C");
    let s = c.status();
    let sent = s["sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < 400, "stopped mid-way: {s}");
    assert_eq!(s["sending"], 0, "nothing left in flight: {s}");
    assert_eq!(s["in_doubt"], 0, "nothing in doubt: {s}");
    assert_eq!(
        sink.handle().accepted(),
        sent,
        "the DB agrees with the sink"
    );
    let out = c.send(&["--rate", "0"]);
    assert_eq!(code(&out), 0);
    let got = sink.deliveries();
    assert_eq!(got.len(), 400);
    assert!(got.values().all(|n| *n == 1), "a recipient got two copies");
}

#[test]
fn a_corrected_csv_is_read_again_while_nothing_was_sent() {
    // The relay is down: the list is ingested, nothing is attempted.
    let c = TestCampaign::new(Spec::new(addresses("fix", 5), dead_port()));
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert_eq!(c.status()["total"], 5);
    // The operator fixes the list: one address corrected, one row more.
    std::fs::write(
        c.path().join("recipients.csv"),
        "id,email,first_name\r\n0,fix0@example.com,A\r\n1,fixed1@example.com,B\r\n\
         2,fix2@example.com,C\r\n3,fix3@example.com,D\r\n4,fix4@example.com,E\r\n\
         5,fix5@example.com,F\r\n",
    )
    .unwrap();
    let sink = Sink::start(&[], None);
    let toml = c.path().join("campaign.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &toml,
        text.replace(
            &format!("port = {port}"),
            &format!("port = {}", sink.port()),
        ),
    )
    .unwrap();
    let out = c.send(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 0, "no --accept-changes needed: {err}");
    assert!(err.contains("read again"), "{err}");
    let s = c.status();
    assert_eq!(
        (s["total"].as_u64(), s["sent"].as_u64()),
        (Some(6), Some(6))
    );
    let got = sink.deliveries();
    assert!(got.contains_key("fixed1@example.com") && !got.contains_key("fix1@example.com"));
    // Once something was sent, a change needs --accept-changes again.
    let mut csv = std::fs::read_to_string(c.path().join("recipients.csv")).unwrap();
    csv.push_str("6,late@example.com,G\r\n");
    std::fs::write(c.path().join("recipients.csv"), csv).unwrap();
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--accept-changes"));
}

#[cfg(unix)]
#[test]
fn state_files_are_private_after_a_run_under_a_permissive_umask() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("mode", 3), sink.port()));
    // `umask 000` would leave SQLite's and our files world-writable.
    let st = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" send \"$1\" --no-tui")
        .arg(EDM)
        .arg(c.path())
        .env("EDM_HOME", &c.home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    let edm = c.path().join(".edm");
    assert_eq!(mode(&edm), 0o700, ".edm");
    for name in ["state.db", "state.db-wal", "state.db-shm", "state.db.lock"] {
        let p = edm.join(name);
        if p.exists() || name == "state.db" || name == "state.db.lock" {
            assert_eq!(mode(&p), 0o600, "{name}");
        }
    }
}

/// Turns a state database back into what an older edm (schema version 1)
/// left after two interrupted first ingests: the first `copies` rows stored
/// a second time, as pending.
fn as_older_build_with_copies(db: &Path, copies: u32) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(&format!(
        "DROP INDEX recipients_source;
         DROP TABLE message_keys;
         DROP TABLE mid_pending;
         DROP INDEX recipients_provider_message_id;
         DROP INDEX recipients_late;
         DROP TABLE late_applied;
         DROP TABLE late_unmatched;
         ALTER TABLE recipients DROP COLUMN late;
         ALTER TABLE recipients DROP COLUMN late_at;
         ALTER TABLE recipients DROP COLUMN late_status;
         ALTER TABLE recipients DROP COLUMN late_diagnostic;
         ALTER TABLE recipients DROP COLUMN soft_bounces;
         ALTER TABLE recipients DROP COLUMN provider_message_id;
         ALTER TABLE recipients DROP COLUMN relay;
         ALTER TABLE recipients DROP COLUMN copy_of;
         ALTER TABLE recipients DROP COLUMN generation;
         DELETE FROM meta WHERE key LIKE 'ingest.%';
         INSERT INTO recipients (line, email, email_norm, domain, fields, status, updated_at)
           SELECT line, email, email_norm, domain, fields, 'pending', updated_at
           FROM recipients ORDER BY id LIMIT {copies};
         -- The older build's triggers counted the copies; this build keeps
         -- the tallies in its own statements (schema 7), so count them here.
         DELETE FROM tally;
         INSERT INTO tally (status, category, in_doubt, n)
           SELECT status, coalesce(category, ''), in_doubt, count(*) FROM recipients
           GROUP BY 1, 2, 3;
         DELETE FROM domain_tally;
         INSERT INTO domain_tally (domain, status, n)
           SELECT domain, status, count(*) FROM recipients GROUP BY 1, 2;
         PRAGMA user_version = 1;"
    ))
    .unwrap();
}

#[test]
fn copies_left_by_an_older_edm_are_skipped_on_open_and_said_once() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("old", 50), sink.port()));
    // The older build sent 10, then its list was found holding 20 copies.
    assert_eq!(code(&c.send(&["--limit", "10"])), 3);
    as_older_build_with_copies(&state(&c), 20);
    assert_eq!(c.status()["total"], 70, "what the older build showed");
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("20 extra copies of recipients") && err.contains("marked skipped"),
        "{err}"
    );
    let s = c.status();
    assert_eq!(
        (s["sent"].as_u64(), s["skipped"].as_u64()),
        (Some(50), Some(20)),
        "{s}"
    );
    let got = sink.deliveries();
    assert_eq!(got.len(), 50);
    assert!(got.values().all(|n| *n == 1), "a copy was sent");
    // Said once: the next run is quiet about it.
    let out = c.send(&[]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("extra copies"));
    let out = c.edm("report", &["--all", "--format", "json"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        report.matches("extra copy of line").count(),
        20,
        "the copies stay visible with their reason"
    );
}

#[test]
fn a_second_sighup_quits_at_once_leaving_the_in_flight_few_in_doubt() {
    // Every first DATA stalls: the graceful stop would wait for them.
    let sink = Sink::start(
        &["stage=data,match=slow,times=1,action=stall,secs=30"],
        None,
    );
    // As many as the connections (concurrency 4): all are in flight at once.
    let c = TestCampaign::new(Spec::new(addresses("slow", 4), sink.port()));
    let err_path = c.tmp.path().join("stderr.txt");
    let mut child = Command::new(EDM)
        .arg("send")
        .arg(c.path())
        .arg("--no-tui")
        .env("EDM_HOME", &c.home)
        .env("EDM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while sink.handle().stats().connections == 0 || c.status()["sending"] == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing in flight"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the DATA of the claimed recipients start, then hang up twice.
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "HUP");
    let start = Instant::now();
    while !std::fs::read_to_string(&err_path)
        .unwrap_or_default()
        .contains("stopping")
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no stop message");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "HUP");
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(130));
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(err.contains("quitting at once"), "{err}");
    // It did not wait: the stalled transactions were cut, still `sending`.
    let s = c.status();
    assert!(s["sending"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(sink.handle().accepted(), 0);
    // The next run flags them in doubt and sends them (the sink never
    // accepted them, so nobody gets two).
    let out = c.send(&[]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in doubt"));
    let got = sink.deliveries();
    assert_eq!(got.len(), 4);
    assert!(got.values().all(|n| *n == 1));
}

#[test]
fn under_nohup_sighup_stays_ignored() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        delivery: "rate = 50",
        ..Spec::new(addresses("nohup", 300), sink.port())
    });
    // What `nohup` does: SIGHUP ignored, inherited through exec.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("trap '' HUP; exec \"$0\" send \"$1\" --no-tui")
        .arg(EDM)
        .arg(c.path())
        .env("EDM_HOME", &c.home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while sink.handle().accepted() < 10 {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "HUP");
    let before = sink.handle().accepted();
    let start = Instant::now();
    while sink.handle().accepted() < before + 10 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "edm stopped on a SIGHUP it was told to ignore"
        );
        assert!(start.elapsed() < Duration::from_secs(30), "sending stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(child.try_wait().unwrap().is_none());
    signal(&child, "INT");
    let st = wait_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(130));
    assert_eq!(c.status()["sending"], 0);
}

/// After SIGHUP the terminal may be gone, and `edm send ... | head` closes
/// the pipe: printing the end of the run must not turn it into a panic
/// (exit 101) once everything is recorded.
#[test]
fn a_closed_stdout_does_not_turn_a_finished_run_into_a_panic() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("pipe", 5), sink.port()));
    let mut child = Command::new(EDM)
        .arg("send")
        .arg(c.path())
        .arg("--no-tui")
        .env("EDM_HOME", &c.home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end of stdout at once, like `| head -0`.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(c.status()["sent"], 5);
}
