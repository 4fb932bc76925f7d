//! Issue 9, points 3, 7, 8 and 9: what a CSV row may attach, what the
//! provider takes, configuration that cannot work, and the shared
//! suppression list under concurrent edits.

use crate::harness::*;

/// The messages the sink accepted, as text.
fn received_texts(sink: &Sink) -> Vec<(Vec<String>, String)> {
    sink.handle()
        .received()
        .into_iter()
        .map(|r| {
            let data = r.data.as_deref().map(String::from_utf8_lossy);
            (r.rcpt_to.clone(), data.unwrap_or_default().into_owned())
        })
        .collect()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Adds `attachment_column = "file"` (and `lines`) to `[campaign]`.
fn with_campaign_lines(c: &TestCampaign, lines: &str) {
    let toml = c.path().join("campaign.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("[smtp]", &format!("{lines}\n\n[smtp]"));
    std::fs::write(toml, text).unwrap();
}

#[test]
fn a_csv_row_cannot_attach_the_state_database_or_the_dkim_key() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(vec![], sink.port()));
    let dir = c.path();
    std::fs::create_dir_all(dir.join("attachments")).unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("attachments/inv.pdf"), b"%PDF-1.4 invoice for ann").unwrap();
    std::fs::write(
        dir.join("keys/dkim.pem"),
        "-----BEGIN PRIVATE KEY-----\nSECRET-E2E-KEY\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../keys/dkim.pem", dir.join("attachments/key.pem")).unwrap();
    std::os::unix::fs::symlink("../.edm/state.db", dir.join("attachments/state.db")).unwrap();
    std::fs::write(
        dir.join("recipients.csv"),
        "id,email,first_name,file\r\n\
         0,ann@example.com,Ann,inv.pdf\r\n\
         1,bob@example.com,Bob,../.edm/state.db\r\n\
         2,cy@example.com,Cy,key.pem\r\n\
         3,dan@example.com,Dan,../keys/dkim.pem\r\n\
         4,eve@example.com,Eve,state.db\r\n\
         5,fay@example.com,Fay,.edm/state.db\r\n\
         6,gus@example.com,Gus,keys/dkim.pem\r\n",
    )
    .unwrap();
    with_campaign_lines(&c, "attachment_column = \"file\"");

    // edm check names every such row by its line.
    let out = c.edm("check", &[]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    for line in [3, 4, 5] {
        assert!(
            text.contains(&format!("recipients.csv:{line}: attachment")),
            "line {line}: {text}"
        );
    }
    assert!(text.contains("refused"), "{text}");
    // Relative to the campaign folder (where they are) is not relative to
    // attachment_dir: not found there, never attached.
    for line in [7, 8] {
        assert!(
            text.contains(&format!("recipients.csv:{line}: attachment")),
            "line {line}: {text}"
        );
    }

    // A first run creates the state database: eve's symlink now points at
    // an existing file, and is refused all the same.
    assert_eq!(code(&c.send(&[])), 1, "failures -> exit 1");
    let rows = c.rows();
    assert_eq!(rows["ann@example.com"]["status"], "sent");
    for who in ["bob", "cy", "dan", "eve"] {
        let row = &rows[&format!("{who}@example.com")];
        assert_eq!(row["status"], "failed", "{who}: {row}");
        assert_eq!(row["category"], "template", "{who}: {row}");
        assert!(
            row["reply"].as_str().unwrap().contains("refused"),
            "{who}: {row}"
        );
    }
    for who in ["fay", "gus"] {
        let row = &rows[&format!("{who}@example.com")];
        assert_eq!(row["status"], "failed", "{who}: {row}");
        assert_eq!(row["category"], "template", "{who}: {row}");
    }
    assert!(dir.join(".edm/state.db").exists());
    let received = received_texts(&sink);
    assert_eq!(received.len(), 1);
    let (to, data) = &received[0];
    assert_eq!(to, &["ann@example.com"]);
    assert!(data.contains("filename=\"inv.pdf\""), "{data}");
    assert_eq!(data.matches("Content-Disposition: attachment").count(), 1);
    for leak in [
        "state.db",
        "dkim.pem",
        "key.pem",
        "SECRET-E2E-KEY",
        // Their text in base64: "-----BEGIN", "SQLite format 3".
        "LS0tLS1CRUdJTi",
        "U1FMaXRlIGZvcm1hdCAz",
    ] {
        assert!(!data.contains(leak), "{leak} leaked: {data}");
    }
}

#[test]
fn a_campaign_written_for_the_old_attachment_rule_is_told_what_moved() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(vec![], sink.port()));
    let dir = c.path();
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/inv.pdf"), b"%PDF-1.4").unwrap();
    std::fs::write(
        dir.join("recipients.csv"),
        "id,email,first_name,file\r\n0,ann@example.com,Ann,files/inv.pdf\r\n",
    )
    .unwrap();
    with_campaign_lines(&c, "attachment_column = \"file\"");
    // No attachments/ folder: send stops before anything, saying why.
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(err.contains("attachment_dir"), "{err}");
    assert!(err.contains("no longer"), "{err}");
    assert_eq!(sink.handle().stats().connections, 0);
    let out = c.edm("check", &[]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(text.contains("recipients.csv:2"), "{text}");
    assert!(
        text.contains("now looked up in [campaign] attachment_dir"),
        "{text}"
    );
}

#[test]
fn a_message_over_the_tencent_cap_never_reaches_the_server() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec {
        extra: "[limits]\nprovider = \"tencent\"\n",
        ..Spec::new(vec![], sink.port())
    });
    let dir = c.path();
    let bytes = |n: usize| -> Vec<u8> { (0..n).map(|j| (j * 31 % 251) as u8).collect() };
    std::fs::create_dir_all(dir.join("attachments")).unwrap();
    std::fs::write(dir.join("attachments/terms.bin"), bytes(2_000_000)).unwrap();
    std::fs::write(dir.join("attachments/small.bin"), bytes(4_000)).unwrap();
    // Under the profile's 5 MB per file and 10 MB together; 9.4 MB encoded.
    std::fs::write(dir.join("attachments/large.bin"), bytes(4_900_000)).unwrap();
    std::fs::write(dir.join("attachments/notes.txt"), "plain notes\n").unwrap();
    std::fs::write(
        dir.join("recipients.csv"),
        "id,email,first_name,file\r\n0,ann@example.com,Ann,small.bin\r\n1,bob@example.com,Bob,large.bin\r\n",
    )
    .unwrap();
    with_campaign_lines(
        &c,
        "attachment_column = \"file\"\nattachments = [\"attachments/terms.bin\", \"attachments/notes.txt\"]",
    );
    let out = c.edm("check", &[]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(text.contains("recipients.csv:3"), "{text}");
    assert!(
        text.contains("max_message_bytes limit of 9000000"),
        "{text}"
    );

    assert_eq!(code(&c.send(&[])), 1);
    let rows = c.rows();
    assert_eq!(rows["ann@example.com"]["status"], "sent");
    let bob = &rows["bob@example.com"];
    assert_eq!(bob["status"], "failed");
    assert_eq!(bob["category"], "preflight");
    assert!(
        bob["reply"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes limit of 9000000"),
        "{bob}"
    );
    let received = received_texts(&sink);
    assert_eq!(received.len(), 1, "bob's message never reached the server");
    let (to, data) = &received[0];
    assert_eq!(to, &["ann@example.com"]);
    // The text attachment went out base64-encoded, as Tencent requires.
    assert!(!data.contains("plain notes"), "text attachment sent as is");
    let head = data.split("filename=\"notes.txt\"").nth(1).unwrap();
    let head = head.split("\r\n\r\n").next().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-transfer-encoding: base64"),
        "{head}"
    );
}

#[test]
fn send_refuses_a_rate_or_concurrency_that_cannot_work() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("user", 3), sink.port()));
    for (arg, why) in [
        ("--rate=-1", "negative"),
        ("--rate=NaN", "not a number"),
        ("--rate=inf", "infinite"),
        ("--rate=0.0001", "under 0.001"),
        ("--rate=1e-300", "under 0.001"),
        ("--rate=fast", "not a number"),
        ("--concurrency=0", "at least 1"),
        ("--concurrency=5000", "over 1000"),
    ] {
        let out = c.send(&[arg]);
        assert_eq!(code(&out), 2, "{arg}");
        let err = stderr(&out);
        assert!(err.contains(why), "{arg}: {err}");
        assert!(err.contains(arg.split('=').next().unwrap()), "{arg}: {err}");
    }
    assert_eq!(sink.handle().stats().connections, 0);
    assert!(!c.path().join(".edm").exists(), "nothing started");
    // 0 keeps meaning unlimited.
    assert_eq!(code(&c.send(&["--rate", "0"])), 0);
    assert_eq!(sink.handle().accepted(), 3);
    // The same rule in campaign.toml, refused at load naming the key.
    let toml = c.path().join("campaign.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("[delivery]", "[delivery]\nrate = -3")).unwrap();
    let out = c.edm("status", &[]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("[delivery] rate = -3: negative"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn demo_out_refuses_a_folder_that_is_not_an_earlier_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path| {
        let out = std::process::Command::new(EDM)
            .args(["demo", "--no-tui", "--rate", "0", "--out"])
            .arg(out)
            .env("EDM_HOME", tmp.path().join("home"))
            .env("EDM_LOG", "warn")
            .output()
            .unwrap();
        eprintln!("{}\n{}", stdout(&out), stderr(&out));
        out
    };
    // Someone's folder: refused, untouched.
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(mine.join("campaign")).unwrap();
    std::fs::write(mine.join("thesis.tex"), "years of work").unwrap();
    std::fs::write(mine.join("campaign/campaign.toml"), "[campaign]\n").unwrap();
    let out = run(&mine);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("not an earlier edm demo"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("thesis.tex")).unwrap(),
        "years of work"
    );
    // Only names the demo uses, but not a demo (no marker, another
    // campaign.toml): refused too.
    std::fs::remove_file(mine.join("thesis.tex")).unwrap();
    assert_eq!(code(&run(&mine)), 2);
    assert!(mine.join("campaign/campaign.toml").exists());

    // A new folder, then the same folder again: an earlier demo is wiped.
    let demo = tmp.path().join("demo");
    assert_eq!(code(&run(&demo)), 0);
    assert!(demo.join(".edm-demo").is_file());
    assert!(demo.join("campaign/.edm/state.db").is_file());
    let out = run(&demo);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("Messages landed"), "{}", stdout(&out));
}

#[test]
fn concurrent_suppress_adds_lose_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("edm-home");
    let procs = 24;
    let children: Vec<_> = (0..procs)
        .map(|i| {
            std::process::Command::new(EDM)
                .args(["suppress", "add"])
                .arg(format!("p{i}-a@example.com"))
                .arg(format!("p{i}-b@example.com"))
                .env("EDM_HOME", &home)
                .env("EDM_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let out = std::process::Command::new(EDM)
        .args(["suppress", "list"])
        .env("EDM_HOME", &home)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "email,reason,added_at,campaign");
    assert_eq!(lines.len(), 1 + 2 * procs, "{text}");
    for i in 0..procs {
        for s in ["a", "b"] {
            let address = format!("p{i}-{s}@example.com,");
            assert!(text.contains(&address), "{address} lost: {text}");
        }
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("suppression.csv")), 0o600);
}
