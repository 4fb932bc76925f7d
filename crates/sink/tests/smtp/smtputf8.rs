use super::*;

async fn sink(smtputf8: bool) -> SinkHandle {
    edm_sink::start(SinkConfig {
        smtputf8,
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn smtputf8_is_advertised_and_a_utf8_transaction_is_accepted() {
    let sink = sink(true).await;
    let (mut c, _) = Client::connect(&sink).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.lines().any(|l| &l[4..] == "SMTPUTF8"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<f@edm.test> SMTPUTF8 BODY=8BITMIME").await,
        "250 2.1.0 Ok"
    );
    assert_eq!(c.cmd("RCPT TO:<josé@bücher.example>").await, "250 2.1.5 Ok");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send("To: <josé@bücher.example>\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 "));
    let got = sink.received();
    assert_eq!(got[0].rcpt_to, ["josé@bücher.example"]);
}

#[tokio::test]
async fn without_smtputf8_in_the_transaction_8bit_is_refused() {
    let sink = sink(true).await;
    let mut c = Client::ready(&sink).await;
    assert_eq!(
        c.cmd("MAIL FROM:<josé@edm.test>").await,
        "553 5.6.7 Non-ASCII addresses not permitted for that sender"
    );
    assert_eq!(c.cmd("MAIL FROM:<f@edm.test>").await, "250 2.1.0 Ok");
    assert_eq!(
        c.cmd("RCPT TO:<josé@x.test>").await,
        "553 5.6.7 Non-ASCII addresses not permitted for that recipient"
    );
    assert_eq!(c.cmd("RCPT TO:<a@x.test>").await, "250 2.1.5 Ok");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send("To: <josé@x.test>\r\n\r\nbody \u{e9} is fine\r\n.\r\n")
        .await;
    assert_eq!(
        c.reply().await,
        "554 5.6.7 Non-ASCII header without SMTPUTF8 (RFC 6532)"
    );
    assert_eq!(sink.accepted(), 0);
    // An 8-bit body with ASCII headers is 8BITMIME, not SMTPUTF8.
    let reply = c
        .transaction(
            "f@edm.test",
            &["a@x.test"],
            "Subject: x\r\n\r\nbody \u{e9}\r\n",
        )
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
}

#[tokio::test]
async fn smtputf8_can_be_turned_off() {
    let sink = sink(false).await;
    let (mut c, _) = Client::connect(&sink).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("SMTPUTF8"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<f@edm.test> SMTPUTF8").await,
        "555 5.5.4 Unsupported parameter SMTPUTF8"
    );
}
