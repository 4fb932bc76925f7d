use std::collections::HashMap;
use std::sync::atomic::AtomicU32;

use edm_model::RecipientId;

use super::*;

/// What a stub member does.
#[derive(Clone)]
enum Act {
    Accept,
    /// Accepts after 10 ms (virtual time passes).
    Slow,
    /// Opening a connection fails so.
    OpenFails(Failure),
    /// Every transaction is refused so.
    Refuse(Failure),
}

struct Stub {
    act: Mutex<Act>,
    opens: AtomicU32,
}

impl Stub {
    fn new(act: Act) -> Arc<Stub> {
        Arc::new(Stub {
            act: Mutex::new(act),
            opens: AtomicU32::new(0),
        })
    }

    fn set(&self, act: Act) {
        if let Ok(mut a) = self.act.lock() {
            *a = act;
        }
    }

    fn act(&self) -> Act {
        self.act.lock().map(|a| a.clone()).unwrap_or(Act::Accept)
    }
}

struct StubTransport(Arc<Stub>);

impl Transport for StubTransport {
    fn describe(&self) -> String {
        "stub".into()
    }

    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
        let stub = self.0.clone();
        Box::pin(async move {
            stub.opens.fetch_add(1, Ordering::SeqCst);
            // Connecting takes a moment: other workers run meanwhile.
            tokio::time::sleep(Duration::from_millis(1)).await;
            match stub.act() {
                Act::OpenFails(f) => Err(f),
                _ => Ok(Box::new(StubConn(stub)) as Box<dyn Connection>),
            }
        })
    }
}

struct StubConn(Arc<Stub>);

impl Connection for StubConn {
    fn send<'a>(
        &'a mut self,
        _env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
        Box::pin(async move {
            match self.0.act() {
                Act::Refuse(f) => Err((f, Afterwards::Usable)),
                Act::OpenFails(f) => Err((f, Afterwards::Broken)),
                Act::Accept | Act::Slow => {
                    if matches!(self.0.act(), Act::Slow) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    before_dot.await.map_err(|e| {
                        (
                            Failure::local(Stage::Data, Category::Protocol, e),
                            Afterwards::Broken,
                        )
                    })?;
                    Ok(Reply {
                        code: 250,
                        enhanced: None,
                        text: "ok".into(),
                        provider_message_id: None,
                        relay: None,
                    })
                }
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

fn member(name: &str, stub: &Arc<Stub>, weight: f64) -> PoolMember {
    let mut m = PoolMember::new(name, Arc::new(StubTransport(stub.clone())));
    m.weight = weight;
    m.concurrency = 4;
    m
}

fn env(n: u64) -> Envelope {
    Envelope {
        attempt: Default::default(),
        id: RecipientId(n as i64),
        mail_from: "news@acme.example".into(),
        rcpt_to: format!("r{n}@example.com"),
        domain: "example.com".into(),
        message_id: format!("{n}@edm"),
        body: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
    }
}

fn no_mark() -> BoxFuture<'static, Result<(), String>> {
    Box::pin(async { Ok(()) })
}

fn refused_sender() -> Failure {
    Failure {
        stage: Stage::MailFrom,
        category: Category::SenderRefused,
        smtp_code: Some(553),
        enhanced_code: Some("5.7.1".into()),
        reply: "sender not verified".into(),
        permanent: true,
        retry_after: None,
    }
}

fn refused_connection() -> Failure {
    Failure::local(
        Stage::Connect,
        Category::ConnectRefused,
        "connection refused",
    )
}

/// Sends `n` messages through one pool connection; the relay of each reply.
async fn send_all(pool: &PoolTransport, n: u64) -> Vec<Result<String, Failure>> {
    let mut conn = pool.open().await.expect("a pool connection");
    let mut out = Vec::new();
    for i in 0..n {
        let e = env(i);
        out.push(match conn.send(&e, no_mark()).await {
            Ok(r) => Ok(r.relay.unwrap_or_default()),
            Err((f, _)) => Err(f),
        });
    }
    out
}

fn shares(results: &[Result<String, Failure>]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for r in results.iter().flatten() {
        *c.entry(r.clone()).or_insert(0) += 1;
    }
    c
}

#[tokio::test(start_paused = true)]
async fn weights_are_respected_within_five_percent_over_2000_picks() {
    let (a, b, c) = (
        Stub::new(Act::Accept),
        Stub::new(Act::Accept),
        Stub::new(Act::Accept),
    );
    let pool = PoolTransport::new(
        vec![
            member("a", &a, 5.0),
            member("b", &b, 3.0),
            member("c", &c, 2.0),
        ],
        Duration::from_secs(60),
    );
    let results = send_all(&pool, 2000).await;
    let s = shares(&results);
    for (name, weight) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
        let got = s.get(name).copied().unwrap_or(0) as f64 / 2000.0;
        assert!(
            (got - weight).abs() <= weight * 0.05,
            "{name}: share {got}, weight share {weight}: {s:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_at_its_concurrency_limit_overflows_to_the_others() {
    let (a, b) = (Stub::new(Act::Accept), Stub::new(Act::Accept));
    let mut ma = member("a", &a, 10.0);
    ma.concurrency = 1;
    let pool = PoolTransport::new(vec![ma, member("b", &b, 1.0)], Duration::from_secs(60));
    // Hold a's only slot, as a transaction in flight would.
    let (i, held) = match pool.inner.pick(&[]) {
        Pick::Member(i, slot) => (i, slot),
        _ => panic!("a member should be free"),
    };
    assert_eq!(pool.inner.members[i].name, "a", "the heavier member first");
    let results = send_all(&pool, 50).await;
    assert_eq!(shares(&results).get("b"), Some(&50), "{results:?}");
    drop(held);
    // Room again: a takes its share back.
    let results = send_all(&pool, 110).await;
    let s = shares(&results);
    assert!(s.get("a").copied().unwrap_or(0) >= 95, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_member_at_its_rate_overflows_to_the_others_and_keeps_its_rate() {
    let (a, b) = (Stub::new(Act::Accept), Stub::new(Act::Accept));
    let mut ma = member("a", &a, 10.0);
    ma.rate = Some(2.0);
    ma.burst = 1;
    let pool = PoolTransport::new(vec![ma, member("b", &b, 1.0)], Duration::from_secs(60));
    // 100 messages at once (no time passes): a gets its burst, b the rest.
    let results = send_all(&pool, 100).await;
    let s = shares(&results);
    let to_a = s.get("a").copied().unwrap_or(0);
    assert!(to_a <= 2, "a is limited to 2/s with burst 1: {s:?}");
    assert_eq!(to_a + s.get("b").copied().unwrap_or(0), 100, "{s:?}");
    // Over 10 seconds of a's tokens, a sends about 2 a second.
    tokio::time::advance(Duration::from_secs(10)).await;
    let results = send_all(&pool, 100).await;
    let to_a = shares(&results).get("a").copied().unwrap_or(0);
    assert!(
        (1..=3).contains(&to_a),
        "a had at most burst tokens: {to_a}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_refusing_the_sender_is_taken_out_and_its_traffic_moves() {
    let (a, b) = (
        Stub::new(Act::Refuse(refused_sender())),
        Stub::new(Act::Accept),
    );
    let pool = PoolTransport::new(
        vec![member("a", &a, 1.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    );
    let (tx, mut rx) = mpsc::channel(64);
    pool.attach(tx);
    let results = send_all(&pool, 20).await;
    // Nobody refused: the one a refused went to b at once.
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("b")),
        "{results:?}"
    );
    let down = pool.down();
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].0, "a");
    let mut seen = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let DeliveryEvent::Notice(n) = ev {
            seen.push(n);
        }
    }
    assert!(
        seen.iter()
            .any(|n| matches!(n, Notice::RelayDown { relay, failure }
            if relay == "a" && failure.category == Category::SenderRefused)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|n| matches!(n, Notice::RelayUp { relay } if relay == "b"))
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_member_is_taken_out_after_three_tries() {
    let (a, b) = (
        Stub::new(Act::OpenFails(refused_connection())),
        Stub::new(Act::Slow),
    );
    let pool = PoolTransport::new(
        vec![member("a", &a, 100.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    );
    // 4 s of sending: a is tried again after resting 0.5 s, then 1 s.
    let results = send_all(&pool, 400).await;
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("b")),
        "{results:?}"
    );
    assert_eq!(a.opens.load(Ordering::SeqCst), DOWN_AFTER);
    assert_eq!(pool.down()[0].1.category, Category::ConnectRefused);
}

#[tokio::test(start_paused = true)]
async fn a_member_dying_mid_run_moves_its_traffic() {
    let (a, b) = (Stub::new(Act::Accept), Stub::new(Act::Accept));
    let pool = PoolTransport::new(
        vec![member("a", &a, 1.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    );
    let first = send_all(&pool, 10).await;
    assert_eq!(shares(&first).get("a"), Some(&5));
    // a's connections break and it cannot be reached again.
    a.set(Act::OpenFails(Failure::local(
        Stage::MailFrom,
        Category::Disconnected,
        "connection lost",
    )));
    b.set(Act::Slow);
    let rest = send_all(&pool, 400).await;
    assert!(rest.iter().all(|r| r.is_ok()), "{rest:?}");
    assert_eq!(pool.down().len(), 1, "a is out");
}

#[tokio::test(start_paused = true)]
async fn all_members_down_is_a_refusal_that_stops_the_run() {
    let (a, b) = (
        Stub::new(Act::Refuse(refused_sender())),
        Stub::new(Act::OpenFails(refused_connection())),
    );
    let pool = PoolTransport::new(
        vec![member("a", &a, 1.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    );
    let results = send_all(&pool, 3).await;
    for r in &results {
        let f = r.as_ref().expect_err("nobody left to send");
        assert!(f.stops_run(), "{f:?}");
        assert!(f.reply.contains("no relay left in the pool"), "{}", f.reply);
        assert!(
            f.reply.contains("\"a\"") && f.reply.contains("\"b\""),
            "{}",
            f.reply
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_recipient_refusal_is_the_engines_to_decide() {
    let unknown = Failure {
        stage: Stage::RcptTo,
        category: Category::RecipientUnknown,
        smtp_code: Some(550),
        enhanced_code: Some("5.1.1".into()),
        reply: "no such user".into(),
        permanent: true,
        retry_after: None,
    };
    let a = Stub::new(Act::Refuse(unknown));
    let pool = PoolTransport::new(vec![member("a", &a, 1.0)], Duration::from_secs(60));
    let results = send_all(&pool, 5).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(f) if f.category == Category::RecipientUnknown))
    );
    assert!(
        pool.down().is_empty(),
        "one recipient's refusal is not the relay's"
    );
}

#[tokio::test(start_paused = true)]
async fn a_daily_quota_takes_the_member_out_once_used() {
    let (a, b) = (Stub::new(Act::Accept), Stub::new(Act::Accept));
    let mut ma = member("a", &a, 1.0);
    ma.daily_quota = Some(10);
    ma.sent_today = 7;
    let pool = PoolTransport::new(vec![ma, member("b", &b, 1.0)], Duration::from_secs(60));
    let s = shares(&send_all(&pool, 40).await);
    assert_eq!(s.get("a"), Some(&3), "{s:?}");
    assert_eq!(s.get("b"), Some(&37), "{s:?}");
    assert_eq!(pool.down()[0].1.category, Category::QuotaExceeded);
}

#[tokio::test(start_paused = true)]
async fn the_mark_is_awaited_once_whichever_member_sends() {
    let (a, b) = (
        Stub::new(Act::Refuse(refused_sender())),
        Stub::new(Act::Accept),
    );
    let pool = PoolTransport::new(
        vec![member("a", &a, 1.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    );
    let marks = Arc::new(AtomicU32::new(0));
    let mut conn = pool.open().await.expect("a pool connection");
    let m = marks.clone();
    let mark: BoxFuture<'static, Result<(), String>> = Box::pin(async move {
        m.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let e = env(1);
    let r = conn.send(&e, mark).await.map_err(|(f, _)| f);
    assert_eq!(r.map(|r| r.relay), Ok(Some("b".to_string())));
    assert_eq!(marks.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_quota_used_up_before_the_run_is_out_from_the_start_and_never_hangs() {
    let (a, b) = (
        Stub::new(Act::Accept),
        Stub::new(Act::Refuse(refused_sender())),
    );
    let mut ma = member("a", &a, 1.0);
    ma.daily_quota = Some(10);
    ma.sent_today = 10;
    let pool = PoolTransport::new(vec![ma, member("b", &b, 1.0)], Duration::from_secs(60));
    let (tx, mut rx) = mpsc::channel(64);
    pool.attach(tx);
    assert!(matches!(
        rx.try_recv(),
        Ok(DeliveryEvent::Notice(Notice::RelayDown { relay, .. })) if relay == "a"
    ));
    // b refuses the sender: nobody is left, and the pool says so at once.
    let results = send_all(&pool, 2).await;
    assert!(
        results.iter().all(|r| matches!(r, Err(f) if f.stops_run())),
        "{results:?}"
    );
    assert_eq!(a.opens.load(Ordering::SeqCst), 0);
}

fn policy_refusal() -> Failure {
    Failure {
        stage: Stage::Data,
        category: Category::Policy,
        smtp_code: Some(554),
        enhanced_code: Some("5.7.1".into()),
        reply: "Message rejected: IP on a blocklist".into(),
        permanent: true,
        retry_after: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_refusing_everyone_the_same_way_is_taken_out_and_nobody_fails() {
    let (a, b) = (
        Stub::new(Act::Refuse(policy_refusal())),
        Stub::new(Act::Accept),
    );
    let pool = PoolTransport::new(
        vec![member("a", &a, 1.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    )
    .with_refusal_limit(5);
    let results = send_all(&pool, 40).await;
    // Each message a refused went to b at once.
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("b")),
        "{results:?}"
    );
    let down = pool.down();
    assert_eq!(down.len(), 1);
    assert_eq!(
        (down[0].0.as_str(), down[0].1.category),
        ("a", Category::Policy)
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_every_member_gives_is_the_recipients() {
    let (a, b) = (
        Stub::new(Act::Refuse(policy_refusal())),
        Stub::new(Act::Refuse(policy_refusal())),
    );
    let pool = PoolTransport::new(
        vec![member("a", &a, 1.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    )
    .with_refusal_limit(0);
    let results = send_all(&pool, 4).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(f) if f.category == Category::Policy && !f.stops_run())),
        "{results:?}"
    );
    assert!(pool.down().is_empty(), "limit 0: never taken out");
}

#[tokio::test(start_paused = true)]
async fn failures_at_the_same_moment_count_once() {
    let (a, b) = (
        Stub::new(Act::OpenFails(refused_connection())),
        Stub::new(Act::Slow),
    );
    let pool = Arc::new(PoolTransport::new(
        vec![member("a", &a, 1.0), member("b", &b, 1.0)],
        Duration::from_secs(60),
    ));
    // Eight workers at once: a's four slots fail together, once.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.open().await.expect("a pool connection");
            let e = env(w);
            conn.send(&e, no_mark())
                .await
                .map(|r| r.relay)
                .map_err(|(f, _)| f)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), Ok(Some("b".to_string())));
    }
    assert!(a.opens.load(Ordering::SeqCst) >= 2, "tried concurrently");
    assert!(
        pool.down().is_empty(),
        "one moment's failures are one failure"
    );
}

/// One worker among several (`Transport::set_share`): a member's rate and
/// burst run at the worker's share, so the workers' sum keeps the member's
/// limit.
#[tokio::test(start_paused = true)]
async fn a_share_of_the_limits_runs_each_members_rate_at_that_share() {
    let (a, b) = (Stub::new(Act::Accept), Stub::new(Act::Accept));
    let mut ma = member("a", &a, 10.0);
    ma.rate = Some(10.0);
    ma.burst = 4;
    let pool = PoolTransport::new(vec![ma, member("b", &b, 1.0)], Duration::from_secs(60));
    pool.set_share(0.5);
    // At half: 5/s with a burst of 2 (3 at once), the rest to b.
    let to_a = |r: &[Result<String, Failure>]| shares(r).get("a").copied().unwrap_or(0);
    assert_eq!(to_a(&send_all(&pool, 20).await), 3);
    tokio::time::advance(Duration::from_secs(2)).await;
    // Two seconds at 5/s: its burst again (3), never the 10/s of the whole.
    assert_eq!(to_a(&send_all(&pool, 40).await), 3);
    // The whole share back: no fresh burst at the change (a's slots were
    // spent), then after a quiet second its whole burst of 5 at once.
    pool.set_share(1.0);
    assert_eq!(to_a(&send_all(&pool, 20).await), 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(to_a(&send_all(&pool, 20).await), 5);
}
