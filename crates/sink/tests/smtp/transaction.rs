use super::*;

#[tokio::test]
async fn to_memory_with_dot_unstuffing() {
    let sink = sink_with(&[]).await;
    let mut c = Client::ready(&sink).await;
    let done = c
        .transaction("from@edm.test", &["a@x.test", "b@y.test"], BODY)
        .await;
    assert!(done.starts_with("250 2.0.0 Ok: queued as "), "{done}");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    assert!(c.closed().await);

    let received = sink.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.mail_from, "from@edm.test");
    assert_eq!(r.rcpt_to, ["a@x.test", "b@y.test"]);
    assert_eq!(r.data.as_deref(), Some(UNSTUFFED.as_bytes()));
    assert_eq!(r.size, UNSTUFFED.len());
    assert_eq!(r.message_id.as_deref(), Some("m1@edm.test"));
    assert!(done.ends_with(&r.queue_id));
    assert_eq!(sink.accepted(), 1);
    let stats = sink.stats();
    assert_eq!(
        (stats.connections, stats.transactions, stats.accepted),
        (1, 1, 1)
    );
    sink.shutdown().await;
}

#[tokio::test]
async fn message_split_across_reads() {
    let sink = sink_with(&[]).await;
    let mut c = Client::ready(&sink).await;
    c.send("MAIL FROM:<f@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        c.reply().await;
    }
    // Every boundary of the stuffing and of the final dot falls between reads.
    for piece in [BODY, "\r", "\n.", ".x\r\n", "\r\n", ".", "\r", "\n"] {
        c.send(piece).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let expected = format!("{UNSTUFFED}\r\n.x\r\n\r\n");
    assert_eq!(
        sink.received()[0].data.as_deref(),
        Some(expected.as_bytes())
    );
}

#[tokio::test]
async fn empty_message_and_null_sender() {
    let sink = sink_with(&[]).await;
    let mut c = Client::ready(&sink).await;
    let done = c.transaction("", &["a@x.test"], "").await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let r = &sink.received()[0];
    assert_eq!(
        (r.mail_from.as_str(), r.size, r.message_id.clone()),
        ("", 0, None)
    );
}

#[tokio::test]
async fn to_maildir_one_file_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let sink = edm_sink::start(SinkConfig {
        storage: Storage::Maildir(dir.path().join("md")),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut c = Client::ready(&sink).await;
    let done = c
        .transaction("from@edm.test", &["a@x.test", "b@y.test"], BODY)
        .await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let done = c
        .transaction("from@edm.test", &["c@x.test"], "\r\nsecond\r\n")
        .await;
    assert!(done.starts_with("250 2.0.0"), "{done}");

    let md = dir.path().join("md");
    assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(md.join("cur")).unwrap().count(), 0);
    let mut files: Vec<(String, String)> = std::fs::read_dir(md.join("new"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    files.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(files.len(), 3);
    for (name, _) in &files {
        let pid = std::process::id();
        assert!(name.ends_with(".edm-sink"), "{name}");
        assert!(name.contains(&format!(".{pid}_")), "{name}");
    }
    let head = |rcpt: &str| format!("Return-Path: <from@edm.test>\r\nDelivered-To: {rcpt}\r\n");
    assert_eq!(files[0].1, format!("{}{UNSTUFFED}", head("a@x.test")));
    assert_eq!(files[1].1, format!("{}{UNSTUFFED}", head("b@y.test")));
    assert_eq!(files[2].1, format!("{}\r\nsecond\r\n", head("c@x.test")));

    let received = sink.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].data, None);
    assert_eq!(received[0].message_id.as_deref(), Some("m1@edm.test"));
    sink.shutdown().await;
}
