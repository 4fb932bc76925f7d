use super::*;

#[tokio::test]
async fn ehlo_advertises_the_extensions() {
    let sink = edm_sink::start(SinkConfig {
        max_message_size: 12345,
        hostname: "sink.test".into(),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let (mut c, greeting) = Client::connect(&sink).await;
    assert_eq!(greeting, "220 sink.test ESMTP edm-sink");
    let ehlo = c.cmd("EHLO client.test").await;
    let lines: Vec<&str> = ehlo.lines().collect();
    assert!(lines[0].starts_with("250-sink.test"), "{ehlo}");
    for cap in [
        "PIPELINING",
        "8BITMIME",
        "SIZE 12345",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(lines[1..].iter().any(|l| &l[4..] == cap), "{cap} in {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(c.cmd("HELO client.test").await, "250 sink.test");
    assert_eq!(
        c.cmd("VRFY someone").await,
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let sink = sink_with(&["stage=rcpt,match=bounce,reply=550 5.1.1 No such user"]).await;
    let mut c = Client::ready(&sink).await;
    // One write holding several commands, as a PIPELINING client sends.
    c.send("MAIL FROM:<f@edm.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<bounce@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n").await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(c.reply().await);
    }
    assert_eq!(
        replies,
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "550 5.1.1 No such user",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"
        ]
    );
    // Body, dot and the next transaction in one write too.
    c.send("x\r\n.\r\nRSET\r\nMAIL FROM:<f@edm.test>\r\nRCPT TO:<d@x.test>\r\nNOOP\r\nQUIT\r\n")
        .await;
    let mut rest = String::new();
    tokio::time::timeout(WAIT, c.stream.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let codes: Vec<&str> = rest.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes, ["250", "250", "250", "250", "250", "221"], "{rest}");
    assert!(rest.starts_with("250 2.0.0 Ok: queued as "), "{rest}");
    assert_eq!(sink.received()[0].rcpt_to, ["a@x.test", "c@x.test"]);
}

#[tokio::test]
async fn out_of_order_and_unknown_commands() {
    let sink = sink_with(&[]).await;
    let (mut c, _) = Client::connect(&sink).await;
    assert_eq!(
        c.cmd("MAIL FROM:<f@x.test>").await,
        "503 5.5.1 Send EHLO or HELO first"
    );
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.cmd("RCPT TO:<a@x.test>").await,
        "503 5.5.1 Need MAIL before RCPT"
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Need MAIL before DATA");
    assert_eq!(c.cmd("MAIL FROM:<f@x.test>").await, "250 2.1.0 Ok");
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Need RCPT before DATA");
    assert_eq!(
        c.cmd("MAIL FROM:<f@x.test>").await,
        "503 5.5.1 Nested MAIL command"
    );
    assert_eq!(
        c.cmd("FROB").await,
        "500 5.5.2 Syntax error, command unrecognized"
    );
    assert_eq!(
        c.cmd("RCPT TO:<not an address>").await,
        "501 5.1.3 Invalid recipient address"
    );
    let long = format!("NOOP {}", "x".repeat(3000));
    assert_eq!(c.cmd(&long).await, "500 5.5.2 Line too long");
    // An over-long line split across writes is answered once, then skipped.
    c.send(&"y".repeat(5000)).await;
    c.send(&format!("{}\r\nNOOP\r\n", "y".repeat(100))).await;
    assert_eq!(c.reply().await, "500 5.5.2 Line too long");
    assert_eq!(c.reply().await, "250 2.0.0 Ok");
    assert_eq!(sink.stats().rejected(503), 5);
    assert_eq!(sink.stats().rejected(500), 3);
}

#[tokio::test]
async fn size_limit_at_mail_and_after_data() {
    let sink = edm_sink::start(SinkConfig {
        max_message_size: 1000,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut c = Client::ready(&sink).await;
    assert_eq!(
        c.cmd("MAIL FROM:<f@x.test> SIZE=2000").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    let big = format!("Subject: big\r\n\r\n{}\r\n", "z".repeat(1500));
    let done = c.transaction("f@x.test", &["a@x.test"], &big).await;
    assert_eq!(
        done,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // Past the limit before the final dot arrives: read to the dot, then refused.
    c.cmd("MAIL FROM:<f@x.test>").await;
    c.cmd("RCPT TO:<a@x.test>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&big).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send(&format!("{big}.\r\n")).await;
    assert_eq!(
        c.reply().await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    // The session goes on, and a message within the limit is accepted.
    let done = c
        .transaction("f@x.test", &["a@x.test"], "Subject: small\r\n\r\nok\r\n")
        .await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    assert_eq!(sink.accepted(), 1);
    assert_eq!(sink.stats().rejected(552), 3);
}

#[tokio::test]
async fn auth_is_required_and_checked() {
    let sink = edm_sink::start(SinkConfig {
        auth: Some(("user".into(), "secret".into())),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let (mut c, _) = Client::connect(&sink).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.lines().any(|l| &l[4..] == "AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<f@x.test>").await,
        "530 5.7.0 Authentication required"
    );
    // "\0user\0wrong" and "\0user\0secret"
    assert_eq!(
        c.cmd("AUTH PLAIN AHVzZXIAd3Jvbmc=").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("dXNlcg==").await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd("d3Jvbmc=").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(
        c.cmd("AHVzZXIAc2VjcmV0").await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN AHVzZXIAc2VjcmV0").await,
        "503 5.5.1 Already authenticated"
    );
    let done = c.transaction("f@x.test", &["a@x.test"], "\r\nhi\r\n").await;
    assert!(done.starts_with("250 2.0.0"), "{done}");

    // AUTH LOGIN all the way, on a second connection.
    let (mut c, _) = Client::connect(&sink).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("AUTH LOGIN dXNlcg==").await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd("c2VjcmV0").await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(c.cmd("MAIL FROM:<f@x.test>").await, "250 2.1.0 Ok");
    assert_eq!(sink.stats().rejected(535), 2);
}

#[tokio::test]
async fn idle_session_gets_421() {
    let sink = edm_sink::start(SinkConfig {
        idle_timeout: Duration::from_millis(200),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let mut c = Client::ready(&sink).await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 edm-sink.localhost Idle timeout, closing connection"
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn shutdown_closes_sessions_and_the_listener() {
    let sink = sink_with(&[]).await;
    let addr = sink.local_addr();
    let mut c = Client::ready(&sink).await;
    sink.shutdown().await;
    assert_eq!(
        c.reply().await,
        "421 4.3.2 Service shutting down, closing connection"
    );
    assert!(c.closed().await);
    assert!(TcpStream::connect(addr).await.is_err());
}

/// Many messages over one reused connection, pipelined per transaction.
#[tokio::test]
async fn thousands_of_messages_per_connection() {
    let sink = sink_with(&[]).await;
    let mut c = Client::ready(&sink).await;
    let n = 2000;
    let started = Instant::now();
    for i in 0..n {
        c.send(&format!(
            "MAIL FROM:<f@x.test>\r\nRCPT TO:<r{i}@x.test>\r\nDATA\r\n"
        ))
        .await;
        for _ in 0..3 {
            c.reply().await;
        }
        c.send("Subject: s\r\n\r\nbody\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250 2.0.0"));
    }
    let elapsed = started.elapsed();
    assert_eq!(sink.accepted(), n);
    assert!(
        elapsed < Duration::from_secs(4),
        "{n} messages took {elapsed:?}"
    );
}
