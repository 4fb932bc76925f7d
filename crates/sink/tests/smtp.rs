//! The sink on real loopback TCP, driven by a raw SMTP client.
//!
//! - `transaction`: a full transaction to memory and to a Maildir.
//! - `protocol`: pipelining, sequencing errors, SIZE, AUTH, idle timeout, shutdown.
//! - `rules`: each kind of scripted fault.

use std::time::{Duration, Instant};

use edm_sink::{Rule, SinkConfig, SinkHandle, Storage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Upper bound on any wait for the server, so a bug fails instead of hanging.
const WAIT: Duration = Duration::from_secs(5);

struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    /// Connects and returns the client with the greeting.
    async fn connect(sink: &SinkHandle) -> (Client, String) {
        let stream = TcpStream::connect(sink.local_addr()).await.unwrap();
        // Split writes would otherwise wait on delayed ACKs (~40 ms each).
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// Connects, checks the 220 and says EHLO.
    async fn ready(sink: &SinkHandle) -> Client {
        let (mut client, greeting) = Client::connect(sink).await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        let ehlo = client.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250-"), "{ehlo}");
        client
    }

    async fn send(&mut self, raw: &str) {
        self.stream
            .get_mut()
            .write_all(raw.as_bytes())
            .await
            .unwrap();
    }

    /// One whole reply, continuation lines joined with `\n`, CRLFs removed.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.stream.read_line(&mut line))
                .await
                .expect("reply within 5 s")
                .unwrap();
            assert!(
                n > 0,
                "connection closed while waiting for a reply: {lines:?}"
            );
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Whether the server closed the connection (EOF) with nothing more to say.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest))
            .await
            .expect("close within 5 s")
            .unwrap_or(0);
        assert!(
            rest.is_empty(),
            "unexpected: {:?}",
            String::from_utf8_lossy(&rest)
        );
        n == 0
    }

    /// MAIL, RCPTs and DATA, each expected to succeed, then `body` and the
    /// final dot; returns the final reply.
    async fn transaction(&mut self, from: &str, rcpts: &[&str], body: &str) -> String {
        assert_eq!(
            self.cmd(&format!("MAIL FROM:<{from}>")).await,
            "250 2.1.0 Ok"
        );
        for rcpt in rcpts {
            assert_eq!(self.cmd(&format!("RCPT TO:<{rcpt}>")).await, "250 2.1.5 Ok");
        }
        assert!(self.cmd("DATA").await.starts_with("354 "));
        self.send(&format!("{body}.\r\n")).await;
        self.reply().await
    }
}

async fn sink_with(rules: &[&str]) -> SinkHandle {
    edm_sink::start(SinkConfig {
        rules: rules.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

const BODY: &str = "Message-ID: <m1@edm.test>\r\nSubject: hi\r\n\r\n..leading dot\r\n..\r\nend\r\n";
const UNSTUFFED: &str =
    "Message-ID: <m1@edm.test>\r\nSubject: hi\r\n\r\n.leading dot\r\n.\r\nend\r\n";

mod transaction {
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
}

mod protocol {
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
        c.send(
            "x\r\n.\r\nRSET\r\nMAIL FROM:<f@edm.test>\r\nRCPT TO:<d@x.test>\r\nNOOP\r\nQUIT\r\n",
        )
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
}

mod rules {
    use super::*;

    #[tokio::test]
    async fn reply_at_rcpt() {
        let sink = sink_with(&["match=bounce,stage=rcpt,reply=550 5.1.1 No such user"]).await;
        let mut c = Client::ready(&sink).await;
        assert_eq!(c.cmd("MAIL FROM:<f@x.test>").await, "250 2.1.0 Ok");
        assert_eq!(
            c.cmd("RCPT TO:<Bounce.7@x.test>").await,
            "550 5.1.1 No such user"
        );
        assert_eq!(
            c.cmd("RCPT TO:<bounce.7@x.test>").await,
            "550 5.1.1 No such user"
        );
        assert_eq!(c.cmd("RCPT TO:<ok@bounce.test>").await, "250 2.1.5 Ok");
        assert_eq!(sink.stats().rejected(550), 2);
    }

    #[tokio::test]
    async fn times_refuses_each_address_then_accepts() {
        let sink =
            sink_with(&["match=retry,stage=rcpt,times=1,reply=451 4.3.0 Try again later"]).await;
        let mut c = Client::ready(&sink).await;
        c.cmd("MAIL FROM:<f@x.test>").await;
        assert_eq!(
            c.cmd("RCPT TO:<retry1@x.test>").await,
            "451 4.3.0 Try again later"
        );
        assert_eq!(c.cmd("RCPT TO:<retry1@x.test>").await, "250 2.1.5 Ok");
        assert_eq!(
            c.cmd("RCPT TO:<retry2@x.test>").await,
            "451 4.3.0 Try again later"
        );
        // Counters are server-wide, not per connection.
        let mut c2 = Client::ready(&sink).await;
        c2.cmd("MAIL FROM:<f@x.test>").await;
        assert_eq!(c2.cmd("RCPT TO:<retry2@x.test>").await, "250 2.1.5 Ok");
    }

    #[tokio::test]
    async fn data_stage_reply_is_not_stored() {
        let tencent = r#"554 5.0.0 Error: transaction failed, blame it on the weather: ##SES-response-json: {"Response":{"Error":{"Code":"RequestLimitExceeded.SmtpRateLimit","Message":"rate limit"}}}"#;
        let sink = sink_with(&[
            "match=throttle,stage=data,times=2,reply=454 4.7.0 Throttling failure: Maximum sending rate exceeded",
            &format!("match=tencent,stage=data,reply={tencent}"),
            "match=multi,stage=data,reply=554 5.7.1 first line\\nsecond, line",
        ])
        .await;
        let mut c = Client::ready(&sink).await;
        for _ in 0..2 {
            let done = c
                .transaction("f@x.test", &["throttle@x.test"], "\r\nhi\r\n")
                .await;
            assert_eq!(
                done,
                "454 4.7.0 Throttling failure: Maximum sending rate exceeded"
            );
        }
        let done = c
            .transaction("f@x.test", &["throttle@x.test"], "\r\nhi\r\n")
            .await;
        assert!(done.starts_with("250 2.0.0"), "{done}");
        let done = c
            .transaction("f@x.test", &["a@x.test", "tencent@x.test"], "\r\nhi\r\n")
            .await;
        assert_eq!(done, tencent);
        let done = c
            .transaction("f@x.test", &["multi@x.test"], "\r\nhi\r\n")
            .await;
        assert_eq!(done, "554-5.7.1 first line\n554 second, line");
        assert_eq!(sink.accepted(), 1);
        assert_eq!(sink.received()[0].rcpt_to, ["throttle@x.test"]);
        assert_eq!(sink.stats().rejected(454), 2);
        assert_eq!(sink.stats().rejected(554), 2);
    }

    #[tokio::test]
    async fn reply_421_closes_the_connection() {
        let sink =
            sink_with(&["match=bye,stage=rcpt,reply=421 4.7.0 Too many connections, closing"])
                .await;
        let mut c = Client::ready(&sink).await;
        c.cmd("MAIL FROM:<f@x.test>").await;
        // The NOOP pipelined behind the RCPT is never answered.
        c.send("RCPT TO:<bye@x.test>\r\nNOOP\r\n").await;
        assert_eq!(c.reply().await, "421 4.7.0 Too many connections, closing");
        assert!(c.closed().await);
    }

    #[tokio::test]
    async fn disconnect_at_data_once() {
        let sink = sink_with(&["match=drop,stage=data,action=disconnect,times=1"]).await;
        let mut c = Client::ready(&sink).await;
        c.cmd("MAIL FROM:<f@x.test>").await;
        c.cmd("RCPT TO:<drop@x.test>").await;
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send("\r\nhi\r\n.\r\n").await;
        assert!(c.closed().await, "closed without a reply");
        assert_eq!(sink.accepted(), 0);
        assert_eq!(sink.stats().disconnects, 1);

        let mut c = Client::ready(&sink).await;
        let done = c
            .transaction("f@x.test", &["drop@x.test"], "\r\nhi\r\n")
            .await;
        assert!(done.starts_with("250 2.0.0"), "{done}");
    }

    #[tokio::test]
    async fn disconnect_at_rcpt() {
        let sink = sink_with(&["match=cut,stage=rcpt,action=disconnect"]).await;
        let mut c = Client::ready(&sink).await;
        c.send("MAIL FROM:<f@x.test>\r\nRCPT TO:<cut@x.test>\r\n")
            .await;
        assert_eq!(
            c.reply().await,
            "250 2.1.0 Ok",
            "earlier replies still sent"
        );
        assert!(c.closed().await);
    }

    #[tokio::test]
    async fn stall_delays_the_reply() {
        let sink = sink_with(&[
            "match=slow,stage=rcpt,action=stall,secs=0.3",
            "match=late,stage=rcpt,action=stall,secs=0.2,reply=451 4.4.1 Late",
        ])
        .await;
        let mut c = Client::ready(&sink).await;
        c.cmd("MAIL FROM:<f@x.test>").await;
        let started = Instant::now();
        assert_eq!(c.cmd("RCPT TO:<slow@x.test>").await, "250 2.1.5 Ok");
        assert!(started.elapsed() >= Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(c.cmd("RCPT TO:<late@x.test>").await, "451 4.4.1 Late");
        assert!(started.elapsed() >= Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(c.cmd("RCPT TO:<quick@x.test>").await, "250 2.1.5 Ok");
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn percent_is_deterministic() {
        async fn run() -> Vec<bool> {
            let sink = sink_with(&["percent=30,stage=data,reply=451 4.3.0 Busy"]).await;
            let mut c = Client::ready(&sink).await;
            let mut refused = Vec::new();
            for i in 0..40 {
                let rcpt = format!("user{i}@x.test");
                let done = c.transaction("f@x.test", &[&rcpt], "\r\nhi\r\n").await;
                refused.push(done == "451 4.3.0 Busy");
            }
            refused
        }
        let first = run().await;
        assert_eq!(first, run().await);
        let hits = first.iter().filter(|&&r| r).count();
        assert!((3..=25).contains(&hits), "{hits} of 40 at 30%");
    }

    #[tokio::test]
    async fn mail_stage_matches_the_sender() {
        let sink = sink_with(&["stage=mail,match=badsender,reply=553 5.7.1 Sender refused"]).await;
        let mut c = Client::ready(&sink).await;
        assert_eq!(
            c.cmd("MAIL FROM:<badsender@x.test>").await,
            "553 5.7.1 Sender refused"
        );
        assert_eq!(
            c.cmd("RCPT TO:<a@x.test>").await,
            "503 5.5.1 Need MAIL before RCPT"
        );
        assert_eq!(c.cmd("MAIL FROM:<good@x.test>").await, "250 2.1.0 Ok");
        assert_eq!(sink.stats().transactions, 1);
    }

    #[tokio::test]
    async fn greeting_refusal_and_stall() {
        let sink = sink_with(&["stage=greeting,reply=554 5.3.2 No service"]).await;
        let (mut c, greeting) = Client::connect(&sink).await;
        assert_eq!(greeting, "554 5.3.2 No service");
        assert_eq!(
            c.cmd("EHLO client.test").await,
            "503 5.5.1 No service here, only QUIT"
        );
        assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");

        let sink = sink_with(&["stage=greeting,action=stall,secs=0.3"]).await;
        let started = Instant::now();
        let (_c, greeting) = Client::connect(&sink).await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        assert!(started.elapsed() >= Duration::from_millis(300));

        let sink = sink_with(&["stage=greeting,reply=421 4.3.2 Go away"]).await;
        let (mut c, greeting) = Client::connect(&sink).await;
        assert_eq!(greeting, "421 4.3.2 Go away");
        assert!(c.closed().await);
    }

    #[tokio::test]
    async fn demo_script() {
        let sink = edm_sink::start(SinkConfig {
            rules: edm_sink::demo_rules(),
            ..SinkConfig::default()
        })
        .await
        .unwrap();
        let mut c = Client::ready(&sink).await;
        c.cmd("MAIL FROM:<f@x.test>").await;
        assert_eq!(&c.cmd("RCPT TO:<bounce1@x.test>").await[..9], "550 5.1.1");
        assert_eq!(&c.cmd("RCPT TO:<full1@x.test>").await[..9], "452 4.2.2");
        assert_eq!(&c.cmd("RCPT TO:<full1@x.test>").await[..9], "250 2.1.5");
        assert_eq!(&c.cmd("RCPT TO:<retry1@x.test>").await[..9], "451 4.3.0");
        c.cmd("RSET").await;
        let done = c
            .transaction("f@x.test", &["throttle1@x.test"], "\r\nx\r\n")
            .await;
        assert_eq!(&done[..9], "454 4.7.0");
        let done = c
            .transaction("f@x.test", &["blocked1@x.test"], "\r\nx\r\n")
            .await;
        assert_eq!(&done[..9], "550 5.7.1");
        let done = c
            .transaction("f@x.test", &["throttle1@x.test"], "\r\nx\r\n")
            .await;
        assert_eq!(&done[..9], "250 2.0.0");
    }
}
