//! In-process tests of the engine's promises (issue 10), against edm's sink
//! on 127.0.0.1:0: fail fast when the relay cannot be used at all, stop on a
//! refusal that would hit every message, in doubt when the final dot gets no
//! reply, and a panic that ends the run instead of hanging it.
//!
//! Real sockets need the real clock (a paused clock fires every timeout while
//! the runtime waits on I/O), so timeouts here are short instead.

use std::time::Duration;

use edm_delivery::{DeliveryConfig, EngineEnd, Security, SmtpSettings};
use edm_model::{Category, DeliveryEvent, Envelope, RecipientId};
use edm_sink::{Rule, SinkConfig, SinkHandle};
use tokio::sync::mpsc;

fn settings(host: &str, port: u16) -> SmtpSettings {
    SmtpSettings {
        host: host.into(),
        port,
        security: Security::None,
        credentials: None,
        helo_name: "edm.test".into(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        data_timeout: Duration::from_secs(2),
        accept_invalid_certs: false,
        allow_plaintext_auth: false,
    }
}

/// The engine's settings and the SMTP transport's, which live apart
/// (`DeliveryConfig` is transport-neutral); derefs to the engine's.
struct Config {
    smtp: SmtpSettings,
    engine: DeliveryConfig,
}

impl std::ops::Deref for Config {
    type Target = DeliveryConfig;
    fn deref(&self) -> &DeliveryConfig {
        &self.engine
    }
}

impl std::ops::DerefMut for Config {
    fn deref_mut(&mut self) -> &mut DeliveryConfig {
        &mut self.engine
    }
}

fn config(host: &str, port: u16) -> Config {
    let mut cfg = DeliveryConfig::new();
    cfg.concurrency = 2;
    // Long: a test that waited it out would time out instead.
    cfg.max_outage = Duration::from_secs(300);
    Config {
        smtp: settings(host, port),
        engine: cfg,
    }
}

fn envelope(i: i64, rcpt: &str) -> Envelope {
    let domain = edm_model::domain_of(rcpt);
    Envelope {
        attempt: Default::default(),
        id: RecipientId(i),
        mail_from: "news@acme.example".into(),
        rcpt_to: rcpt.into(),
        domain,
        message_id: format!("m{i}@acme.example"),
        body: format!("Subject: hello\r\nMessage-ID: <m{i}@acme.example>\r\n\r\nHello {i}\r\n")
            .into_bytes(),
    }
}

async fn sink(rules: &[&str]) -> SinkHandle {
    edm_sink::start(SinkConfig {
        rules: rules.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        ..SinkConfig::default()
    })
    .await
    .unwrap()
}

fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs the engine over `rcpts` to its end (bounded: a hang fails the test)
/// and returns the events and how it ended.
async fn run(cfg: Config, rcpts: &[String]) -> (Vec<DeliveryEvent>, EngineEnd) {
    let (jobs_tx, jobs_rx) = mpsc::channel(rcpts.len().max(1));
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine = edm_delivery::start(cfg.smtp, cfg.engine, jobs_rx, ev_tx).unwrap();
    for (i, r) in rcpts.iter().enumerate() {
        jobs_tx.send(envelope(i as i64, r)).await.unwrap();
    }
    drop(jobs_tx);
    let collect = async {
        let mut events = Vec::new();
        while let Some(ev) = ev_rx.recv().await {
            events.push(ev);
        }
        (events, engine.join().await)
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .expect("the engine ended (no hang)")
}

fn rcpts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@example.com")).collect()
}

/// Counts events per kind: (accepted, rejected, returned, held, in doubt).
fn tally(events: &[DeliveryEvent]) -> (usize, usize, usize, usize, usize) {
    let mut t = (0, 0, 0, 0, 0);
    for e in events {
        match e {
            DeliveryEvent::Accepted { .. } => t.0 += 1,
            DeliveryEvent::Rejected { .. } => t.1 += 1,
            DeliveryEvent::Returned { .. } => t.2 += 1,
            DeliveryEvent::Held { .. } => t.3 += 1,
            DeliveryEvent::InDoubt { .. } => t.4 += 1,
            DeliveryEvent::Notice(_) => {}
        }
    }
    t
}

fn stop_notice(events: &[DeliveryEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        DeliveryEvent::Notice(n @ edm_model::Notice::Stopping { .. }) => Some(n.to_string()),
        _ => None,
    })
}

#[tokio::test]
async fn refused_connection_fails_fast_and_returns_everyone() {
    let port = dead_port();
    let start = std::time::Instant::now();
    let (events, end) = run(config("127.0.0.1", port), &rcpts("d", 6)).await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    match end {
        EngineEnd::Unreachable { relay, failure } => {
            assert_eq!(relay, format!("127.0.0.1:{port}"));
            assert_eq!(failure.category, Category::ConnectRefused);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tally(&events), (0, 0, 6, 0, 0), "{events:#?}");
    let notice = stop_notice(&events).expect("a stop notice");
    assert!(notice.contains(&format!("127.0.0.1:{port}")), "{notice}");
}

#[tokio::test]
async fn unresolvable_name_fails_fast() {
    let (events, end) = run(config("nothing.invalid", 25), &rcpts("n", 3)).await;
    match end {
        EngineEnd::Unreachable { relay, failure } => {
            assert_eq!(relay, "nothing.invalid:25");
            assert_eq!(failure.category, Category::Dns);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tally(&events), (0, 0, 3, 0, 0));
}

#[tokio::test]
async fn silent_server_connect_timeouts_count_toward_fail_fast() {
    let sink = sink(&["stage=greeting,action=stall,secs=30"]).await;
    let mut cfg = config("127.0.0.1", sink.local_addr().port());
    cfg.smtp.connect_timeout = Duration::from_millis(200);
    let start = std::time::Instant::now();
    let (events, end) = run(cfg, &rcpts("g", 4)).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    match end {
        EngineEnd::Unreachable { failure, .. } => {
            assert_eq!(failure.category, Category::ConnectTimeout)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tally(&events), (0, 0, 4, 0, 0));
}

/// No session within `fail_fast_within`, even when each attempt hangs longer.
#[tokio::test]
async fn fail_fast_deadline_covers_hanging_connects() {
    let sink = sink(&["stage=greeting,action=stall,secs=30"]).await;
    let mut cfg = config("127.0.0.1", sink.local_addr().port());
    cfg.smtp.connect_timeout = Duration::from_secs(20);
    cfg.fail_fast_within = Duration::from_millis(500);
    let start = std::time::Instant::now();
    let (events, end) = run(cfg, &rcpts("h", 2)).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(end, EngineEnd::Unreachable { .. }), "{end:?}");
    assert_eq!(tally(&events), (0, 0, 2, 0, 0));
}

/// Once a session has worked, a relay that goes away is an outage, waited
/// out for `max_outage`, not a fail-fast end.
#[tokio::test]
async fn after_a_working_session_an_outage_uses_the_breaker() {
    let sink = sink(&[]).await;
    let port = sink.local_addr().port();
    let mut cfg = config("127.0.0.1", port);
    cfg.concurrency = 1;
    cfg.max_outage = Duration::from_millis(800);
    let (jobs_tx, jobs_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine = edm_delivery::start(cfg.smtp, cfg.engine, jobs_rx, ev_tx).unwrap();
    jobs_tx.send(envelope(0, "a@example.com")).await.unwrap();
    loop {
        match ev_rx.recv().await.unwrap() {
            DeliveryEvent::Accepted { .. } => break,
            DeliveryEvent::Notice(_) => {}
            other => panic!("{other:?}"),
        }
    }
    sink.shutdown().await;
    for i in 1..4 {
        jobs_tx
            .send(envelope(i, &format!("b{i}@example.com")))
            .await
            .unwrap();
    }
    drop(jobs_tx);
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while ev_rx.recv().await.is_some() {}
        engine.join().await
    })
    .await
    .unwrap();
    assert!(matches!(end, EngineEnd::Outage(_)), "{end:?}");
}

#[tokio::test]
async fn identical_refusals_stop_the_run_and_hold_everyone() {
    let sink = sink(&["stage=rcpt,reply=554 5.7.1 Service unavailable; client host blocked"]).await;
    let cfg = config("127.0.0.1", sink.local_addr().port());
    let (events, end) = run(cfg, &rcpts("b", 14)).await;
    match &end {
        EngineEnd::Refused(f) => assert!(f.reply.contains("client host blocked"), "{f}"),
        other => panic!("{other:?}"),
    }
    let (accepted, rejected, returned, held, in_doubt) = tally(&events);
    assert_eq!((accepted, rejected, in_doubt), (0, 0, 0), "{events:#?}");
    assert!(held >= 10, "{held} held");
    assert_eq!(held + returned, 14);
    let notice = stop_notice(&events).expect("a stop notice");
    assert!(notice.contains("client host blocked"), "{notice}");
}

#[tokio::test]
async fn sender_refused_stops_at_the_first_refusal() {
    let sink = sink(&["stage=mail,reply=553 5.1.8 Sender address domain does not exist"]).await;
    let mut cfg = config("127.0.0.1", sink.local_addr().port());
    cfg.concurrency = 1;
    let (events, end) = run(cfg, &rcpts("s", 5)).await;
    assert!(matches!(end, EngineEnd::Refused(_)), "{end:?}");
    assert_eq!(tally(&events), (0, 0, 4, 1, 0), "{events:#?}");
    assert_eq!(sink.stats().rejected(553), 1, "one MAIL FROM, then stopped");
}

#[tokio::test]
async fn unknown_recipients_never_stop_the_run() {
    let sink = sink(&["stage=rcpt,reply=550 5.1.1 No such user"]).await;
    let cfg = config("127.0.0.1", sink.local_addr().port());
    let (events, end) = run(cfg, &rcpts("u", 14)).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(tally(&events), (0, 14, 0, 0, 0));
}

/// An acceptance between refusals breaks the streak: 5 + 5 identical
/// refusals with one accepted between them do not reach 10.
#[tokio::test]
async fn an_acceptance_breaks_the_streak() {
    let sink = sink(&["stage=rcpt,match=bad,reply=554 5.7.1 Blocked"]).await;
    let mut cfg = config("127.0.0.1", sink.local_addr().port());
    cfg.concurrency = 1;
    let mut list = rcpts("bad", 5);
    list.push("ok@example.com".into());
    list.extend(rcpts("bad-again", 5));
    let (events, end) = run(cfg, &list).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(tally(&events), (1, 10, 0, 0, 0));
}

#[tokio::test]
async fn no_reply_to_the_final_dot_is_in_doubt_never_rejected() {
    let sink = sink(&["stage=data,match=stall,action=stall,secs=3"]).await;
    let mut cfg = config("127.0.0.1", sink.local_addr().port());
    cfg.smtp.data_timeout = Duration::from_millis(300);
    let mut list = rcpts("stall", 3);
    list.extend(rcpts("fine", 3));
    let (events, end) = run(cfg, &list).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(tally(&events), (3, 0, 0, 0, 3), "{events:#?}");
    for e in &events {
        if let DeliveryEvent::InDoubt { id, failure, .. } = e {
            assert!(id.0 < 3, "only the stalled ones: {id}");
            assert_eq!(failure.category, Category::ReadTimeout);
        }
    }
}

/// A refusal after the final dot is an answer: not in doubt.
#[tokio::test]
async fn a_refused_final_dot_is_not_in_doubt() {
    let sink = sink(&["stage=data,reply=451 4.3.0 Try later"]).await;
    let cfg = config("127.0.0.1", sink.local_addr().port());
    let (events, _) = run(cfg, &rcpts("r", 3)).await;
    assert_eq!(tally(&events), (0, 3, 0, 0, 0));
}

/// A panicking worker ends the run with an error: its envelope goes back,
/// the others are answered or returned, and nothing hangs.
#[tokio::test]
async fn a_panicking_worker_ends_the_run_without_a_hang() {
    let sink = sink(&[]).await;
    let mut cfg = config("127.0.0.1", sink.local_addr().port());
    cfg.panic_on_rcpt = Some("p3@example.com".into());
    let list = rcpts("p", 8);
    let (events, end) = run(cfg, &list).await;
    match &end {
        EngineEnd::Crashed(e) => assert!(e.contains("test hook"), "{e}"),
        other => panic!("{other:?}"),
    }
    let (accepted, rejected, returned, held, in_doubt) = tally(&events);
    assert_eq!((rejected, held, in_doubt), (0, 0, 0));
    assert_eq!(accepted + returned, 8, "every envelope answered for");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DeliveryEvent::Returned { id } if id.0 == 3)),
        "the panicking worker's envelope goes back"
    );
    assert!(stop_notice(&events).is_some_and(|n| n.contains("internal error")));
}

/// A store that cannot write the durable mark: nothing may be accepted
/// (the final dot waits for the mark and is never sent), the run ends with
/// the store's reason, and every envelope goes back.
#[tokio::test]
async fn a_mark_that_fails_sends_no_final_dot_and_stops_the_run() {
    struct Failing;
    impl edm_delivery::Marker for Failing {
        fn mark(&self, _id: RecipientId) -> edm_delivery::BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Err("disk full".to_string()) })
        }
    }
    let sink = sink(&[]).await;
    let mut cfg = config("127.0.0.1", sink.local_addr().port());
    cfg.marker = Some(std::sync::Arc::new(Failing));
    let (events, end) = run(cfg, &rcpts("m", 5)).await;
    assert_eq!(end, EngineEnd::MarkFailed("disk full".into()));
    assert_eq!(tally(&events), (0, 0, 5, 0, 0), "{events:#?}");
    assert_eq!(sink.accepted(), 0);
}
