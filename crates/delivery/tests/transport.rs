//! The engine over a stub [`Transport`] (no sockets), on tokio's paused
//! clock: proves the seam (the engine runs unchanged over another transport)
//! and checks the time-based promises exactly, in virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use edm_delivery::{Afterwards, BoxFuture, Connection, DeliveryConfig, EngineEnd, Transport};
use edm_model::{Category, DeliveryEvent, Envelope, Failure, RecipientId, Reply, Stage};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the stub does when asked to open a connection.
#[derive(Clone, Copy, PartialEq)]
enum Open {
    Ok,
    /// Fails with this category.
    Fail(Category),
    /// Never answers.
    Hang,
    /// Works for the first `n` opens, then fails with `connect_refused`.
    OkThenRefused(u32),
}

/// What the stub's connection does with an envelope.
#[derive(Clone)]
enum Send {
    Accept,
    Refuse(Failure),
    /// The connection drops (a relay that went away).
    Drop,
    /// The final dot goes out and no reply comes.
    NoReply,
    Panic,
}

struct Stub {
    open: Open,
    send: Send,
    opens: AtomicU32,
    /// The relay its connections name (as a pool's members do).
    member: Option<&'static str>,
}

impl Stub {
    fn new(open: Open, send: Send) -> Arc<Stub> {
        Arc::new(Stub {
            open,
            send,
            opens: AtomicU32::new(0),
            member: None,
        })
    }
}

struct StubConn {
    send: Send,
    member: Option<&'static str>,
}

impl Transport for Stub {
    fn describe(&self) -> String {
        "stub:0".into()
    }

    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
        let n = self.opens.fetch_add(1, Ordering::SeqCst);
        let open = self.open;
        let send = self.send.clone();
        let member = self.member;
        Box::pin(async move {
            let fail = |c| Err(Failure::local(Stage::Connect, c, "stub"));
            match open {
                Open::Ok => Ok(Box::new(StubConn { send, member }) as Box<dyn Connection>),
                Open::OkThenRefused(k) if n < k => Ok(Box::new(StubConn { send, member }) as _),
                Open::OkThenRefused(_) => fail(Category::ConnectRefused),
                Open::Fail(c) => fail(c),
                Open::Hang => std::future::pending().await,
            }
        })
    }
}

impl Connection for StubConn {
    fn send<'a>(
        &'a mut self,
        _env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
        Box::pin(async move {
            // A transaction takes a little (virtual) time.
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Err(e) = before_dot.await {
                return Err((
                    Failure::local(Stage::Data, Category::Protocol, e),
                    Afterwards::Broken,
                ));
            }
            match &self.send {
                Send::Accept => Ok(Reply {
                    code: 250,
                    enhanced: None,
                    text: "ok".into(),
                    provider_message_id: None,
                    relay: None,
                }),
                Send::Refuse(f) => Err((f.clone(), Afterwards::Usable)),
                Send::Drop => Err((
                    Failure::local(Stage::MailFrom, Category::Disconnected, "gone"),
                    Afterwards::Broken,
                )),
                Send::NoReply => Err((
                    Failure::local(Stage::Data, Category::ReadTimeout, "no reply"),
                    Afterwards::InDoubt,
                )),
                Send::Panic => panic!("stub transport panics"),
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn relay(&self) -> Option<&str> {
        self.member
    }
}

fn config() -> DeliveryConfig {
    let mut cfg = DeliveryConfig::new();
    cfg.concurrency = 2;
    cfg
}

fn envelope(i: i64) -> Envelope {
    Envelope {
        attempt: Default::default(),
        id: RecipientId(i),
        mail_from: "news@acme.example".into(),
        rcpt_to: format!("r{i}@example.com"),
        domain: "example.com".into(),
        message_id: format!("m{i}@acme.example"),
        body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
    }
}

async fn run(
    transport: Arc<Stub>,
    cfg: DeliveryConfig,
    n: i64,
) -> (Vec<DeliveryEvent>, EngineEnd, Duration) {
    let start = Instant::now();
    let (jobs_tx, jobs_rx) = mpsc::channel(n.max(1) as usize);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine = edm_delivery::start_with(transport, cfg, jobs_rx, ev_tx);
    for i in 0..n {
        jobs_tx.send(envelope(i)).await.unwrap();
    }
    drop(jobs_tx);
    let mut events = Vec::new();
    while let Some(ev) = ev_rx.recv().await {
        events.push(ev);
    }
    let end = engine.join().await;
    (events, end, start.elapsed())
}

fn count(events: &[DeliveryEvent], f: impl Fn(&DeliveryEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

#[tokio::test(start_paused = true)]
async fn the_engine_runs_over_another_transport() {
    let stub = Stub::new(Open::Ok, Send::Accept);
    let (events, end, _) = run(stub.clone(), config(), 20).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::Accepted { .. })),
        20
    );
    assert_eq!(stub.opens.load(Ordering::SeqCst), 2, "one per worker");
}

/// Every event about an envelope carries what the store and the progress
/// views need (issue 10 point 2): its domain, Message-ID, attempt history
/// and the relay, named by the config, or by the connection (a pool member).
#[tokio::test(start_paused = true)]
async fn events_carry_domain_attempt_and_relay() {
    let (events, _, _) = run(Stub::new(Open::Ok, Send::Accept), config(), 2).await;
    for e in &events {
        match e {
            DeliveryEvent::Accepted {
                id,
                domain,
                message_id,
                relay,
                ..
            } => {
                assert_eq!(domain, "example.com");
                assert_eq!(*message_id, format!("m{}@acme.example", id.0));
                assert_eq!(relay, "stub:0", "the transport's description by default");
            }
            other => panic!("{other:?}"),
        }
    }
    let mut cfg = config();
    cfg.relay = "primary".into();
    let refusal = Failure::local(
        Stage::RcptTo,
        Category::RecipientUnknown,
        "550 no such user",
    );
    let stub = Stub::new(Open::Ok, Send::Refuse(refusal));
    let (jobs_tx, jobs_rx) = mpsc::channel(1);
    let (ev_tx, mut ev_rx) = mpsc::channel(8);
    let engine = edm_delivery::start_with(stub, cfg, jobs_rx, ev_tx);
    let mut env = envelope(7);
    env.attempt = edm_model::Attempt {
        before: 2,
        first_at: Some(1_000),
        retry: true,
    };
    jobs_tx.send(env.clone()).await.unwrap();
    drop(jobs_tx);
    match ev_rx.recv().await.unwrap() {
        DeliveryEvent::Rejected {
            id,
            domain,
            attempt,
            relay,
            rcpt_to,
            ..
        } => {
            assert_eq!(id, RecipientId(7));
            assert_eq!(domain, env.domain);
            assert_eq!(attempt, env.attempt, "handed back as it was handed in");
            assert_eq!(relay, "primary");
            assert_eq!(rcpt_to, env.rcpt_to);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.join().await, EngineEnd::Drained);
    let stub = Arc::new(Stub {
        member: Some("member-a"),
        ..Arc::into_inner(Stub::new(Open::Ok, Send::Accept)).unwrap()
    });
    let (events, _, _) = run(stub, config(), 3).await;
    assert!(events.iter().all(|e| matches!(e,
        DeliveryEvent::Accepted { relay, .. } if relay == "member-a")));
}

/// Three failed opens end the run, whatever `max_outage` says.
#[tokio::test(start_paused = true)]
async fn three_refused_opens_end_the_run() {
    let stub = Stub::new(Open::Fail(Category::ConnectRefused), Send::Accept);
    let (events, end, took) = run(stub.clone(), config(), 5).await;
    assert!(
        matches!(&end, EngineEnd::Unreachable { relay, failure }
            if relay == "stub:0" && failure.category == Category::ConnectRefused),
        "{end:?}"
    );
    assert_eq!(stub.opens.load(Ordering::SeqCst), 3);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::Returned { .. })),
        5
    );
}

/// Opens that never answer: the run ends 30 s after the first attempt.
#[tokio::test(start_paused = true)]
async fn hanging_opens_end_the_run_after_30_seconds() {
    let stub = Stub::new(Open::Hang, Send::Accept);
    let (events, end, took) = run(stub, config(), 3).await;
    assert!(
        matches!(&end, EngineEnd::Unreachable { failure, .. }
            if failure.category == Category::ConnectTimeout),
        "{end:?}"
    );
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(31),
        "{took:?}"
    );
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::Returned { .. })),
        3
    );
}

/// Categories that are not about reaching the relay do not fail fast.
#[tokio::test(start_paused = true)]
async fn only_unusable_relay_categories_fail_fast() {
    let stub = Stub::new(Open::Fail(Category::Disconnected), Send::Accept);
    let mut cfg = config();
    cfg.max_outage = Duration::from_secs(60);
    let (_, end, took) = run(stub, cfg, 2).await;
    assert!(matches!(end, EngineEnd::Outage(_)), "{end:?}");
    assert!(took >= Duration::from_secs(60), "{took:?}");
}

/// After a session worked, the relay going away is an outage: the breaker
/// waits `max_outage` (virtual) before giving up.
#[tokio::test(start_paused = true)]
async fn after_a_session_worked_max_outage_applies() {
    let stub = Stub::new(Open::OkThenRefused(2), Send::Drop);
    let mut cfg = config();
    cfg.max_outage = Duration::from_secs(120);
    let (events, end, took) = run(stub, cfg, 4).await;
    assert!(matches!(end, EngineEnd::Outage(_)), "{end:?}");
    assert!(took >= Duration::from_secs(120), "{took:?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            DeliveryEvent::Notice(edm_model::Notice::BreakerOpen { .. })
        )),
        "{events:#?}"
    );
}

/// The same refusal for 10 different recipients stops the run; nobody is
/// reported rejected, everyone is held or returned.
#[tokio::test(start_paused = true)]
async fn identical_refusals_stop_the_run() {
    let refusal = Failure {
        smtp_code: Some(554),
        ..Failure::local(Stage::Data, Category::OtherPermanent, "Transaction failed")
    };
    let stub = Stub::new(Open::Ok, Send::Refuse(refusal));
    let (events, end, _) = run(stub, config(), 30).await;
    assert!(matches!(end, EngineEnd::Refused(_)), "{end:?}");
    let held = count(&events, |e| matches!(e, DeliveryEvent::Held { .. }));
    let returned = count(&events, |e| matches!(e, DeliveryEvent::Returned { .. }));
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::Rejected { .. })),
        0
    );
    assert!((10..=11).contains(&held), "{held}");
    assert_eq!(held + returned, 30);
}

/// A threshold of 0 turns the stop off: every refusal is reported.
#[tokio::test(start_paused = true)]
async fn identical_refusals_limit_zero_never_stops() {
    let refusal = Failure::local(Stage::Data, Category::OtherPermanent, "no");
    let stub = Stub::new(Open::Ok, Send::Refuse(refusal));
    let mut cfg = config();
    cfg.stop_after_identical_refusals = 0;
    let (events, end, _) = run(stub, cfg, 15).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::Rejected { .. })),
        15
    );
}

/// A panicking transport ends the run with an error, never a hang.
#[tokio::test(start_paused = true)]
async fn a_panicking_transport_ends_the_run() {
    let stub = Stub::new(Open::Ok, Send::Panic);
    let (events, end, _) = run(stub, config(), 6).await;
    assert!(
        matches!(&end, EngineEnd::Crashed(e) if e.contains("stub transport panics")),
        "{end:?}"
    );
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::Returned { .. })),
        6,
        "every envelope back to pending"
    );
}

/// No reply to the final dot: reported in doubt, never rejected, and the
/// connection is reopened for the next one.
#[tokio::test(start_paused = true)]
async fn no_reply_after_the_final_dot_is_in_doubt() {
    let stub = Stub::new(Open::Ok, Send::NoReply);
    let (events, end, _) = run(stub.clone(), config(), 4).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::InDoubt { .. })),
        4
    );
    assert_eq!(
        count(&events, |e| matches!(e, DeliveryEvent::Rejected { .. })),
        0
    );
    assert!(
        stub.opens.load(Ordering::SeqCst) >= 4,
        "a fresh connection each time"
    );
}

/// A short row of identical refusals with nothing else to send (the feeder
/// waits for their outcomes before it claims more): reported after the
/// workers have been idle a moment, never held for ever.
#[tokio::test(start_paused = true)]
async fn a_short_row_of_refusals_is_reported_when_idle() {
    let refusal = Failure::local(Stage::Data, Category::OtherPermanent, "no");
    let stub = Stub::new(Open::Ok, Send::Refuse(refusal));
    let (jobs_tx, jobs_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    let _engine = edm_delivery::start_with(stub, config(), jobs_rx, ev_tx);
    for i in 0..3 {
        jobs_tx.send(envelope(i)).await.unwrap();
    }
    // The queue stays open: only the idle flush can report them.
    let mut rejected = 0;
    let start = Instant::now();
    while rejected < 3 {
        match tokio::time::timeout(Duration::from_secs(10), ev_rx.recv()).await {
            Ok(Some(DeliveryEvent::Rejected { .. })) => rejected += 1,
            Ok(Some(_)) => {}
            other => panic!("held for ever: {other:?}"),
        }
    }
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop(jobs_tx);
}
