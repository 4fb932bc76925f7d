//! A worker: one per connection. It asks the dispatcher for a job, opens
//! its connection when it has none (connection failures are about the relay,
//! never about the recipient it holds), waits for the global rate, sends
//! through its [`Connection`] with the durable mark before the final dot,
//! and reports the outcome as a [`DeliveryEvent`]. What an outcome changes
//! for everyone (the rate, a quota pause, the breaker) is [`react`]'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edm_model::{Category, DeliveryEvent, Failure, Notice};
use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::dispatcher::Job;
use crate::engine::{About, EngineEnd, Shared, THROTTLE_SHARE, stopped};
use crate::queue::breaker::Trip;
use crate::transport::{Afterwards, BoxFuture, Connection};

/// The next job from the dispatcher; `None` when there is no more work for
/// this worker (the queue is drained or the run stops).
async fn next_job(shared: &Shared) -> Option<Job> {
    let (ask, answer) = oneshot::channel();
    shared.want.send(ask).ok()?;
    answer.await.ok()
}

pub(crate) async fn worker(id: usize, shared: Arc<Shared>) {
    let mut session: Option<Box<dyn Connection>> = None;
    let mut stop = shared.stop.subscribe();
    let mut reconnects = 0u32;
    'jobs: loop {
        let Some((env, _slot)) = next_job(&shared).await else {
            break;
        };
        shared.hold(env.id);
        if shared
            .cfg
            .panic_on_rcpt
            .as_deref()
            .is_some_and(|r| r == env.rcpt_to)
        {
            panic!("test hook: panic on {}", env.rcpt_to);
        }

        // A session first: connection failures are about the server, never
        // about this recipient, so the envelope waits (or goes back) meanwhile.
        while session.is_none() {
            if let Ok(mut e) = shared.early.lock() {
                e.first_attempt.get_or_insert_with(Instant::now);
            }
            // Watch for a stop meanwhile: a connect that hangs must not hold
            // up the end of the run (fail fast, a stop by the operator).
            let connected = tokio::select! {
                c = shared.transport.open() => c,
                _ = stopped(&mut stop) => {
                    shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                    shared.release_hold();
                    break 'jobs;
                }
            };
            match connected {
                Ok(s) => {
                    session = Some(s);
                    reconnects = 0;
                    shared.worked.store(true, Ordering::SeqCst);
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    shared.breaker_success().await;
                    tracing::debug!(worker = id, "connected");
                }
                Err(f) => {
                    tracing::warn!(worker = id, failure = %f, "cannot open an SMTP session");
                    shared
                        .emit(DeliveryEvent::Notice(Notice::ConnectionProblem {
                            failure: f.clone(),
                        }))
                        .await;
                    if f.category == Category::Auth && f.permanent {
                        shared.stop_with(EngineEnd::AuthRefused(f));
                        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                        shared.release_hold();
                        break 'jobs;
                    }
                    if shared.early_failure(&f) {
                        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                        shared.release_hold();
                        break 'jobs;
                    }
                    if shared.breaker_failure(&f).await == Trip::GiveUp {
                        shared.stop_with(EngineEnd::Outage(f));
                        shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                        shared.release_hold();
                        break 'jobs;
                    }
                    reconnects += 1;
                    let wait = reconnect_delay(reconnects);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut stop) => {
                            shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                            shared.release_hold();
                            break 'jobs;
                        }
                    }
                }
            }
        }
        let Some(sess) = session.as_mut() else {
            continue;
        };

        // The domain's limits were taken with the job; now the global rate.
        // A free slot (always, unlimited) is taken without the `select!`:
        // watching the stop costs a waiter on its channel, registered and
        // removed again, for every message.
        let free = !shared.stopping() && shared.gate.try_acquire();
        if !free {
            tokio::select! {
                _ = shared.gate.acquire() => {}
                _ = stopped(&mut stop) => {
                    shared.emit(DeliveryEvent::Returned { id: env.id }).await;
                    shared.release_hold();
                    break;
                }
            }
        }

        // The mark is asked for now and committed while the envelope
        // commands go out; the final dot waits for it.
        // Borrowed by the mark's future for the one send (no `Arc`).
        let mark_failed = std::sync::Mutex::new(None::<String>);
        let before_dot: BoxFuture<'_, Result<(), String>> = match &shared.cfg.marker {
            Some(m) => {
                let fut = m.mark(env.id);
                let failed = &mark_failed;
                Box::pin(async move {
                    let r = fut.await;
                    if let (Err(e), Ok(mut f)) = (&r, failed.lock()) {
                        *f = Some(e.clone());
                    }
                    r
                })
            }
            None => Box::pin(async { Ok(()) }),
        };
        // The relay's name is the connection's (a pool's member) or the
        // engine's; every event about this envelope carries it.
        let relay = shared.relay_of(sess.as_ref()).to_string();
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        shared.relay_in_flight(&relay, true);
        let result = sess.send(&env, before_dot).await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.relay_in_flight(&relay, false);
        // A pool picks its member inside `send`: ask again, so the events
        // name the member that answered (a new string only if it changed).
        let relay = match shared.relay_of(sess.as_ref()) {
            now if now == relay => relay,
            now => now.to_string(),
        };
        let mark_error = mark_failed.lock().ok().and_then(|mut f| f.take());
        if let Some(e) = mark_error {
            // Not sent (no final dot): back to pending, and the run stops.
            tracing::error!(error = %e, "cannot mark a transaction before its final dot");
            if let Some(s) = session.take() {
                shared.connections.fetch_sub(1, Ordering::Relaxed);
                drop(s);
            }
            shared.stop_with(EngineEnd::MarkFailed(e));
            shared.emit(DeliveryEvent::Returned { id: env.id }).await;
            shared.release_hold();
            break;
        }
        shared.completed(Instant::now());
        match result {
            Ok(reply) => {
                shared.breaker_success().await;
                shared.break_streak().await;
                let (about, message_id) = About::of(env, relay);
                shared.emit(about.accepted(reply, message_id)).await;
            }
            Err((failure, after)) => {
                if after != Afterwards::Usable
                    && let Some(s) = session.take()
                {
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(s);
                }
                react(&shared, &failure).await;
                if after == Afterwards::InDoubt {
                    // The final dot went out and no reply came: never
                    // reported as a plain failure, so never resent silently.
                    let (about, _) = About::of(env, relay);
                    shared.emit(about.in_doubt(failure)).await;
                } else if failure.permanent {
                    let key = failure.refusal_key(&env.rcpt_to, &env.mail_from);
                    let (about, _) = About::of(env, relay);
                    shared.refused(key, about, failure).await;
                } else {
                    let (about, _) = About::of(env, relay);
                    shared.emit(about.rejected(failure)).await;
                }
            }
        }
        shared.release_hold();
    }
    if let Some(s) = session {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        s.close().await;
    }
}

/// What a failed transaction changes for everyone: the rate, a quota pause,
/// the breaker.
async fn react(shared: &Shared, failure: &Failure) {
    let now = Instant::now();
    match failure.category {
        Category::Throttled => {
            // Slow down when throttling is what the server answers now, not
            // when an odd message among many is: providers throttle because
            // a rate is exceeded, and then refuse most of what goes over it.
            let share = shared.throttled_share(now);
            let observed = shared.observed_rate(now);
            let change = if share >= THROTTLE_SHARE {
                shared
                    .aimd
                    .lock()
                    .ok()
                    .and_then(|mut a| a.on_throttle(now, observed))
            } else {
                None
            };
            if let Some(to) = change {
                let cause = format!(
                    "throttled: {} {}",
                    failure.smtp_code.map(|c| c.to_string()).unwrap_or_default(),
                    failure.reply.chars().take(80).collect::<String>()
                );
                shared.set_effective(Some(to), &cause).await;
            }
        }
        Category::QuotaExceeded => {
            let wait = failure.retry_after.unwrap_or(shared.cfg.quota_pause);
            let newly = shared
                .paused_until
                .lock()
                .map(|mut p| {
                    let fresh = p.is_none();
                    *p = Some(now + wait);
                    fresh
                })
                .unwrap_or(false);
            if newly {
                shared
                    .emit(DeliveryEvent::Notice(Notice::Paused {
                        reason: format!(
                            "sending quota exceeded; resuming in {}s: {}",
                            wait.as_secs(),
                            failure.reply
                        ),
                    }))
                    .await;
            }
        }
        c if c.trips_breaker() => {
            if shared.breaker_failure(failure).await == Trip::GiveUp {
                shared.stop_with(EngineEnd::Outage(failure.clone()));
            }
        }
        // The server answered about one recipient: it works.
        _ => shared.breaker_success().await,
    }
}

/// Reconnect backoff: 0.5 s doubling to 30 s, with full jitter above 0.25 s.
fn reconnect_delay(n: u32) -> Duration {
    let exp = Duration::from_millis(500)
        .saturating_mul(1u32 << n.saturating_sub(1).min(6))
        .min(Duration::from_secs(30));
    let ms = rand::rng().random_range(250..=exp.as_millis().max(250) as u64);
    Duration::from_millis(ms)
}
