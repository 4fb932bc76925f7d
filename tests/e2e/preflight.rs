//! Before the campaign: `edm send --test-to` (sample messages to one address
//! through the real relay, the state never touched).

use crate::harness::*;

/// The value of a header (first occurrence, unfolded) in a raw message.
fn header(data: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

#[test]
fn test_send_renders_samples_for_one_address_and_leaves_no_state() {
    let sink = Sink::start(&[], None);
    let c = TestCampaign::new(Spec::new(addresses("user", 5), sink.port()));
    let out = c.send(&["--test-to", "qa@acme.example", "--sample", "2"]);
    assert_eq!(code(&out), 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("accepted: 250"), "{stdout}");
    assert!(
        stdout.contains("2 of 2 sample messages accepted"),
        "{stdout}"
    );

    let received = sink.handle().received();
    assert_eq!(received.len(), 2);
    let mut subjects = Vec::new();
    for r in &received {
        assert_eq!(r.rcpt_to, ["qa@acme.example"]);
        let data = r.data.as_deref().expect("memory storage keeps bytes");
        assert_eq!(header(data, "To").as_deref(), Some("<qa@acme.example>"));
        let id = r.message_id.as_deref().unwrap();
        assert!(id.ends_with(".e2e.test@acme.example"), "{id}");
        subjects.push(header(data, "Subject").unwrap());
    }
    subjects.sort();
    assert_eq!(subjects, ["[TEST] Hello Name0", "[TEST] Hello Name1"]);
    // The campaign's state was neither opened nor created.
    assert!(!c.path().join(".edm").exists());

    // --no-prefix, the default of 3 samples.
    let out = c.send(&["--test-to", "qa@acme.example", "--no-prefix"]);
    assert_eq!(code(&out), 0);
    let received = sink.handle().received();
    assert_eq!(received.len(), 5);
    let last = received.last().unwrap().data.as_deref().unwrap();
    assert_eq!(header(last, "Subject").as_deref(), Some("Hello Name2"));
    assert!(!c.path().join(".edm").exists());
}

#[test]
fn test_send_reports_a_refusal_and_an_unreachable_relay() {
    let sink = Sink::start(
        &["match=qa-blocked,stage=data,reply=554 5.7.1 Message rejected as spam"],
        None,
    );
    let c = TestCampaign::new(Spec::new(addresses("user", 3), sink.port()));
    let out = c.send(&["--test-to", "qa-blocked@acme.example", "--sample", "1"]);
    assert_eq!(code(&out), 1, "refused -> exit 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("554"), "{stdout}");
    assert_eq!(sink.handle().accepted(), 0);

    let dead = TestCampaign::new(Spec::new(addresses("user", 3), dead_port()));
    let out = dead.send(&["--test-to", "qa@acme.example"]);
    assert_eq!(code(&out), 2, "nothing listening -> exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect"));
    assert!(!dead.path().join(".edm").exists());

    // A test address that is not an address: could not run.
    let out = c.send(&["--test-to", "not-an-address"]);
    assert_eq!(code(&out), 2);
}

/// A campaign with `terms.pdf` for everyone and an `attachment` column.
fn with_attachments(port: u16, limits: &str) -> TestCampaign {
    let c = TestCampaign::new(Spec {
        extra: limits,
        ..Spec::new(vec![], port)
    });
    let dir = c.path();
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/terms.pdf"), vec![b'%'; 2000]).unwrap();
    std::fs::write(dir.join("files/big.zip"), vec![7u8; 20_000]).unwrap();
    std::fs::write(
        dir.join("recipients.csv"),
        "id,email,first_name,attachment\r\n0,ann@example.com,Ann,\r\n1,bob@example.com,Bob,big.zip\r\n2,cy@example.com,Cy,none.pdf\r\n",
    )
    .unwrap();
    let toml = dir.join("campaign.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "[smtp]",
        "attachments = [\"files/terms.pdf\"]\nattachment_column = \"attachment\"\nattachment_dir = \"files\"\n\n[smtp]",
    );
    std::fs::write(&toml, text).unwrap();
    c
}

#[test]
fn attachment_limits_are_refused_before_smtp() {
    // A shared file over the limit: the run does not start.
    let sink = Sink::start(&[], None);
    let c = with_attachments(sink.port(), "[limits]\nmax_attachment_bytes = 1000\n");
    let out = c.send(&[]);
    assert_eq!(code(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_attachment_bytes limit of 1000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sink.handle().stats().connections, 0);

    // A recipient's own file over the limit, another's missing: those two
    // fail before SMTP, the third is sent with the PDF.
    let c = with_attachments(sink.port(), "[limits]\nmax_attachment_bytes = 10000\n");
    assert_eq!(code(&c.send(&[])), 1);
    let rows = c.rows();
    assert_eq!(rows["ann@example.com"]["status"], "sent");
    assert_eq!(rows["bob@example.com"]["status"], "failed");
    assert_eq!(rows["bob@example.com"]["category"], "preflight");
    assert!(
        rows["bob@example.com"]["reply"]
            .as_str()
            .unwrap()
            .contains("max_attachment_bytes limit of 10000")
    );
    assert_eq!(rows["cy@example.com"]["category"], "template");
    assert!(
        rows["cy@example.com"]["reply"]
            .as_str()
            .unwrap()
            .contains("none.pdf")
    );
    let received = sink.handle().received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["ann@example.com"]);
    let data = String::from_utf8_lossy(received[0].data.as_deref().unwrap()).into_owned();
    assert!(data.contains("filename=\"terms.pdf\""), "{data}");
}
