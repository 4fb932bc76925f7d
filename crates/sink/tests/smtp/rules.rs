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
    let sink = sink_with(&["match=retry,stage=rcpt,times=1,reply=451 4.3.0 Try again later"]).await;
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
        sink_with(&["match=bye,stage=rcpt,reply=421 4.7.0 Too many connections, closing"]).await;
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
