//! The dispatcher over a stub [`Transport`], on tokio's paused clock: parking
//! of a domain at its limit, pause and resume, a quota pause that ends
//! exactly when due. On the paused clock time only moves when every task
//! waits, so a task that polls (wakes, finds nothing, sleeps again) shows up
//! as a hang or as a late start, and exact instants can be asserted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edm_delivery::{
    Afterwards, BoxFuture, Connection, DeliveryConfig, DomainLimit, EngineEnd, Transport,
};
use edm_model::{
    Category, Control, DeliveryEvent, Envelope, Failure, Notice, RecipientId, Reply, Stage,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the stub saw: when each transaction started, and the most
/// transactions in flight at once per domain.
#[derive(Default)]
struct Log {
    started: Vec<(String, Duration)>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
}

struct Stub {
    start: Instant,
    /// How long one transaction to a domain takes (default 10 ms).
    took: HashMap<String, Duration>,
    /// The first transactions get this failure (then every one is accepted).
    refuse_first: Mutex<Vec<Failure>>,
    log: Arc<Mutex<Log>>,
}

impl Stub {
    fn new() -> Stub {
        Stub {
            start: Instant::now(),
            took: HashMap::new(),
            refuse_first: Mutex::new(Vec::new()),
            log: Arc::new(Mutex::new(Log::default())),
        }
    }
}

struct StubConn {
    stub: Arc<Stub>,
}

struct Shared(Arc<Stub>);

impl Transport for Shared {
    fn describe(&self) -> String {
        "stub:0".into()
    }

    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
        let stub = self.0.clone();
        Box::pin(async move { Ok(Box::new(StubConn { stub }) as Box<dyn Connection>) })
    }
}

impl Connection for StubConn {
    fn send<'a>(
        &'a mut self,
        env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
        Box::pin(async move {
            let stub = &self.stub;
            {
                let mut log = stub.log.lock().unwrap();
                log.started
                    .push((env.rcpt_to.clone(), stub.start.elapsed()));
                let n = log.in_flight.entry(env.domain.clone()).or_default();
                *n += 1;
                let n = *n;
                let max = log.max_in_flight.entry(env.domain.clone()).or_default();
                *max = (*max).max(n);
            }
            let took = stub
                .took
                .get(&env.domain)
                .copied()
                .unwrap_or(Duration::from_millis(10));
            tokio::time::sleep(took).await;
            if let Some(n) = stub.log.lock().unwrap().in_flight.get_mut(&env.domain) {
                *n -= 1;
            }
            before_dot.await.map_err(|e| {
                (
                    Failure::local(Stage::Data, Category::Protocol, e),
                    Afterwards::Broken,
                )
            })?;
            let refusal = {
                let mut r = stub.refuse_first.lock().unwrap();
                (!r.is_empty()).then(|| r.remove(0))
            };
            match refusal {
                Some(f) => Err((f, Afterwards::Usable)),
                None => Ok(Reply {
                    code: 250,
                    enhanced: None,
                    text: "ok".into(),
                    provider_message_id: None,
                    relay: None,
                }),
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

fn config(concurrency: usize) -> DeliveryConfig {
    let mut cfg = DeliveryConfig::new();
    cfg.concurrency = concurrency;
    cfg
}

fn envelope(i: i64, domain: &str) -> Envelope {
    Envelope {
        attempt: Default::default(),
        id: RecipientId(i),
        mail_from: "news@acme.example".into(),
        rcpt_to: format!("r{i}@{domain}"),
        domain: domain.into(),
        message_id: format!("m{i}@acme.example"),
        body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
    }
}

/// Runs `envs` through the engine to the end; the events with the virtual
/// instant each arrived.
async fn run(
    stub: Arc<Stub>,
    cfg: DeliveryConfig,
    envs: Vec<Envelope>,
) -> (Vec<(Duration, DeliveryEvent)>, EngineEnd) {
    let start = stub.start;
    let (jobs_tx, jobs_rx) = mpsc::channel(envs.len().max(1));
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine = edm_delivery::start_with(Arc::new(Shared(stub)), cfg, jobs_rx, ev_tx);
    for env in envs {
        jobs_tx.send(env).await.unwrap();
    }
    drop(jobs_tx);
    let mut events = Vec::new();
    while let Some(ev) = ev_rx.recv().await {
        events.push((start.elapsed(), ev));
    }
    (events, engine.join().await)
}

fn accepted(events: &[(Duration, DeliveryEvent)]) -> usize {
    events
        .iter()
        .filter(|(_, e)| matches!(e, DeliveryEvent::Accepted { .. }))
        .count()
}

/// A domain at its concurrency limit is parked: the envelopes queued behind
/// it, for other domains, go meanwhile (no head-of-line blocking), and the
/// slow domain never has more than its limit in flight.
#[tokio::test(start_paused = true)]
async fn a_domain_at_its_limit_lets_other_domains_through() {
    let mut stub = Stub::new();
    stub.took
        .insert("slow.example".into(), Duration::from_secs(1));
    let stub = Arc::new(stub);
    let mut cfg = config(4);
    cfg.domains.insert(
        "slow.example".into(),
        DomainLimit {
            rate: None,
            concurrency: Some(1),
        },
    );
    // The slow domain first in the queue, then the others.
    let mut envs: Vec<Envelope> = (0..4).map(|i| envelope(i, "slow.example")).collect();
    envs.extend((4..24).map(|i| envelope(i, "fast.example")));
    let (events, end) = run(stub.clone(), cfg, envs).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(accepted(&events), 24);
    let log = stub.log.lock().unwrap();
    assert_eq!(log.max_in_flight["slow.example"], 1, "its limit kept");
    // 20 fast transactions of 10 ms on the 3 other workers: done in well
    // under the first slow one's second, not after the 4 s of the slow ones.
    let last_fast = log
        .started
        .iter()
        .filter(|(r, _)| r.ends_with("@fast.example"))
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    assert!(last_fast < Duration::from_millis(100), "{last_fast:?}");
    // The slow ones one after the other, each as soon as the slot is free.
    let slow: Vec<Duration> = log
        .started
        .iter()
        .filter(|(r, _)| r.ends_with("@slow.example"))
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(
        slow,
        (0..4).map(Duration::from_secs).collect::<Vec<_>>(),
        "woken by the slot given back, not by a poll"
    );
}

/// A domain rate: the parked envelope goes exactly when its next token is
/// due (the dispatcher sleeps until then, it does not poll).
#[tokio::test(start_paused = true)]
async fn a_domain_rate_wakes_exactly_when_due() {
    let stub = Arc::new(Stub::new());
    let mut cfg = config(2);
    cfg.domains.insert(
        "slow.example".into(),
        DomainLimit {
            rate: Some(4.0),
            concurrency: None,
        },
    );
    let envs: Vec<Envelope> = (0..5).map(|i| envelope(i, "slow.example")).collect();
    let (events, end) = run(stub.clone(), cfg, envs).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(accepted(&events), 5);
    let starts: Vec<Duration> = stub
        .log
        .lock()
        .unwrap()
        .started
        .iter()
        .map(|(_, t)| *t)
        .collect();
    // One burst token, then every 250 ms on the grid.
    let ms = |m| Duration::from_millis(m);
    assert_eq!(starts, vec![ms(0), ms(0), ms(250), ms(500), ms(750)]);
}

/// Pause stops new work (nothing starts while paused, even with workers
/// idle and waiting for work when envelopes are queued); resume restarts it
/// at once. (Before the dispatcher, a worker already waiting on the queue
/// took the next envelope and sent it while paused.)
#[tokio::test(start_paused = true)]
async fn pause_stops_new_work_and_resume_restarts_it() {
    let stub = Arc::new(Stub::new());
    let start = stub.start;
    let (jobs_tx, jobs_rx) = mpsc::channel(16);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine =
        edm_delivery::start_with(Arc::new(Shared(stub.clone())), config(2), jobs_rx, ev_tx);
    // The workers are up and waiting for work when the pause comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.control(Control::Pause);
    match ev_rx.recv().await {
        Some(DeliveryEvent::Notice(Notice::Paused { .. })) => {}
        other => panic!("{other:?}"),
    }
    for i in 0..6 {
        jobs_tx.send(envelope(i, "example.com")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        stub.log.lock().unwrap().started.is_empty(),
        "nothing starts while paused"
    );
    assert!(ev_rx.try_recv().is_err(), "no event while paused");
    engine.control(Control::Resume);
    drop(jobs_tx);
    let mut events = Vec::new();
    while let Some(ev) = ev_rx.recv().await {
        events.push((start.elapsed(), ev));
    }
    assert_eq!(engine.join().await, EngineEnd::Drained);
    assert!(matches!(
        events[0].1,
        DeliveryEvent::Notice(Notice::Resumed)
    ));
    assert_eq!(accepted(&events), 6);
    let first = stub.log.lock().unwrap().started[0].1;
    assert_eq!(first, Duration::from_secs(11), "restarted at once");
}

/// A quota pause with the provider's "try again in 60 s": nothing starts
/// meanwhile, and the next transaction starts exactly when it is due.
/// (Before the dispatcher, workers spun on a pause that had come due until a
/// 250 ms tick cleared it: on the paused clock, time never moved again.)
#[tokio::test(start_paused = true)]
async fn a_quota_pause_ends_exactly_when_due() {
    let stub = Arc::new(Stub::new());
    stub.refuse_first.lock().unwrap().push(Failure {
        smtp_code: Some(452),
        retry_after: Some(Duration::from_secs(60)),
        ..Failure::local(Stage::MailFrom, Category::QuotaExceeded, "quota exceeded")
    });
    let envs: Vec<Envelope> = (0..3).map(|i| envelope(i, "example.com")).collect();
    let (events, end) = run(stub.clone(), config(1), envs).await;
    assert_eq!(end, EngineEnd::Drained);
    assert_eq!(accepted(&events), 2);
    let starts: Vec<Duration> = stub
        .log
        .lock()
        .unwrap()
        .started
        .iter()
        .map(|(_, t)| *t)
        .collect();
    // Refused at 10 ms (the transaction's length): paused until 60.010 s.
    let ms = |m| Duration::from_millis(m);
    assert_eq!(starts, vec![ms(0), ms(60_010), ms(60_020)]);
    let resumed = events
        .iter()
        .find(|(_, e)| matches!(e, DeliveryEvent::Notice(Notice::Resumed)))
        .map(|(t, _)| *t);
    assert_eq!(resumed, Some(ms(60_010)));
}

/// Runs `envs` after a [`Control::SetShare`]; when each one started,
/// relative to the first.
async fn starts_at_share(cfg: DeliveryConfig, share: f64, envs: Vec<Envelope>) -> Vec<Duration> {
    let rate = cfg.rate;
    let stub = Arc::new(Stub::new());
    let (jobs_tx, jobs_rx) = mpsc::channel(envs.len().max(1));
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let engine = edm_delivery::start_with(Arc::new(Shared(stub.clone())), cfg, jobs_rx, ev_tx);
    engine.controller().send(Control::SetShare(share)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for env in envs {
        jobs_tx.send(env).await.unwrap();
    }
    drop(jobs_tx);
    let mut shared_rate = None;
    while let Some(ev) = ev_rx.recv().await {
        if let DeliveryEvent::Notice(Notice::RateChanged { to, cause, .. }) = ev
            && cause.contains("share")
        {
            shared_rate = Some(to);
        }
    }
    assert_eq!(engine.join().await, EngineEnd::Drained);
    let log = stub.log.lock().unwrap();
    let first = log.started.iter().map(|(_, t)| *t).min().unwrap();
    let mut starts: Vec<Duration> = log.started.iter().map(|(_, t)| *t - first).collect();
    starts.sort();
    if share < 1.0
        && let Some(rate) = rate
    {
        assert_eq!(shared_rate, Some(rate * share), "the change is said");
    }
    starts
}

/// Several workers on one campaign (PostgreSQL, docs/scaling.md): a worker
/// at half the campaign's limits runs its rate, its burst and each domain's
/// rate at half (so the workers' sum stays within the limits).
#[tokio::test(start_paused = true)]
async fn a_share_of_the_limits_halves_rate_burst_and_domain_rates() {
    let ms = |m| Duration::from_millis(m);
    // The campaign: 10/s with a burst of 4; at half, 5/s with a burst of 2
    // (3 at once, GCRA's burst + 1), then one every 200 ms.
    let mut cfg = config(8);
    cfg.rate = Some(10.0);
    cfg.burst = 4;
    let envs: Vec<Envelope> = (0..6).map(|i| envelope(i, "fast.example")).collect();
    let starts = starts_at_share(cfg.clone(), 0.5, envs.clone()).await;
    assert_eq!(starts, vec![ms(0), ms(0), ms(0), ms(200), ms(400), ms(600)]);
    // The whole share (one worker): as configured, 5 at once then 100 ms.
    let starts = starts_at_share(cfg, 1.0, envs).await;
    assert_eq!(starts, vec![ms(0), ms(0), ms(0), ms(0), ms(0), ms(100)]);

    // A domain at 4/s: at half, 2/s (two at once, then every 500 ms).
    let mut cfg = config(2);
    cfg.domains.insert(
        "slow.example".into(),
        DomainLimit {
            rate: Some(4.0),
            concurrency: None,
        },
    );
    let envs: Vec<Envelope> = (0..5).map(|i| envelope(i, "slow.example")).collect();
    let starts = starts_at_share(cfg, 0.5, envs).await;
    assert_eq!(starts, vec![ms(0), ms(0), ms(500), ms(1000), ms(1500)]);
}
