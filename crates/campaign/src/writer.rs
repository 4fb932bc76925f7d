//! The one store writer: a thread that owns the `Store`, batches outcomes
//! into few transactions, answers claims in order with them, and publishes a
//! read view for progress displays at most twice a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edm_model::{DomainCounts, FailureRow, Recipient, RecipientId, UnixMillis};
use edm_store::{Outcome, ReplyCount, Store, Summary};
use tokio::sync::{mpsc, oneshot, watch};

/// Outcomes per transaction at most.
const BATCH: usize = 1000;
/// Marks per commit at most (each one holds up a final dot).
const MARKS_BATCH: usize = 64;
/// How often the read view is refreshed.
const VIEW_EVERY: Duration = Duration::from_millis(500);

/// What progress displays read from the store.
#[derive(Clone, Debug, Default)]
pub struct StoreView {
    /// Counts.
    pub summary: Summary,
    /// Newest failures first.
    pub recent_failures: Vec<FailureRow>,
    /// Most frequent failure replies.
    pub top_replies: Vec<ReplyCount>,
    /// Busiest domains.
    pub domains: Vec<(String, DomainCounts)>,
}

impl StoreView {
    /// Reads a view from any store handle (the writer's or a read-only one).
    pub fn read(store: &Store) -> Result<StoreView, edm_store::Error> {
        Ok(StoreView {
            summary: store.summary()?,
            recent_failures: store.recent_failures(200)?,
            top_replies: store.top_replies(8)?,
            domains: store.domain_counts(12)?,
        })
    }
}

pub(crate) enum Msg {
    Outcome(Outcome),
    Claim {
        limit: usize,
        max_due: usize,
        now: UnixMillis,
        reply: oneshot::Sender<Result<Vec<Recipient>, edm_store::Error>>,
    },
    Event {
        at: UnixMillis,
        kind: &'static str,
        text: String,
    },
    Summary(oneshot::Sender<Result<Summary, edm_store::Error>>),
    SentSince {
        since: UnixMillis,
        reply: oneshot::Sender<Result<u64, edm_store::Error>>,
    },
    Refresh,
    /// The durable mark before a final dot; answered once committed.
    Mark {
        id: RecipientId,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

pub(crate) struct Writer {
    pub tx: mpsc::Sender<Msg>,
    pub view: watch::Receiver<StoreView>,
    /// The first error the writer met; the run stops when it is set.
    pub failed: Arc<Mutex<Option<String>>>,
    join: std::thread::JoinHandle<Result<Store, edm_store::Error>>,
}

impl Writer {
    pub fn spawn(store: Store) -> Writer {
        let (tx, rx) = mpsc::channel(4096);
        let initial = StoreView::read(&store).unwrap_or_default();
        let (view_tx, view) = watch::channel(initial);
        let failed = Arc::new(Mutex::new(None));
        let f2 = failed.clone();
        let join = std::thread::Builder::new()
            .name("edm-store-writer".into())
            .spawn(move || run(store, rx, view_tx, f2))
            .expect("spawning a thread at startup");
        Writer {
            tx,
            view,
            failed,
            join,
        }
    }

    /// Sends a request and waits for its answer.
    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, edm_store::Error>>) -> Msg,
    ) -> Result<T, String> {
        let (reply, rx) = oneshot::channel();
        let gone = || "the store writer stopped".to_string();
        self.tx.send(msg(reply)).await.map_err(|_| gone())?;
        match rx.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(gone()),
        }
    }

    /// Asks for a batch of recipients to send (committing earlier outcomes
    /// first), at most `max_due` of them deferred ones (the retry budget).
    pub async fn claim(
        &self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
    ) -> Result<Vec<Recipient>, String> {
        self.ask(|reply| Msg::Claim {
            limit,
            max_due,
            now,
            reply,
        })
        .await
    }

    /// The current counts (after committing everything sent before).
    pub async fn summary(&self) -> Result<Summary, String> {
        self.ask(Msg::Summary).await
    }

    /// Messages sent since `since` (for the daily quota), after committing.
    pub async fn sent_since(&self, since: UnixMillis) -> Result<u64, String> {
        self.ask(|reply| Msg::SentSince { since, reply }).await
    }

    /// Records an outcome (never dropped: waits for room).
    pub async fn record(&self, o: Outcome) {
        let _ = self.tx.send(Msg::Outcome(o)).await;
    }

    /// Logs an event line in the store.
    pub async fn event(&self, kind: &'static str, text: String) {
        let _ = self
            .tx
            .send(Msg::Event {
                at: edm_model::now_ms(),
                kind,
                text,
            })
            .await;
    }

    /// Asks for a fresh read view (progress displays call this periodically).
    pub fn refresh(&self) {
        let _ = self.tx.try_send(Msg::Refresh);
    }

    /// The engine's [`edm_delivery::Marker`], backed by this writer.
    pub fn marker(&self) -> WriterMarker {
        WriterMarker {
            tx: self.tx.clone(),
        }
    }

    /// Closes the channel and waits for the last commit.
    pub fn finish(self) -> Result<Store, String> {
        drop(self.tx);
        match self.join.join() {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the store writer thread panicked".into()),
        }
    }
}

/// Asks the writer thread for durable marks; every mark asked for while the
/// writer commits is committed together with the others (group commit).
pub(crate) struct WriterMarker {
    tx: mpsc::Sender<Msg>,
}

impl edm_delivery::Marker for WriterMarker {
    fn mark(&self, id: RecipientId) -> edm_delivery::BoxFuture<'static, Result<(), String>> {
        let (reply, rx) = oneshot::channel();
        let gone = || "the store writer stopped".to_string();
        // Sent now (not when first polled), so the commit overlaps the
        // envelope commands; waits for room only when the channel is full.
        let queued = match self.tx.try_send(Msg::Mark { id, reply }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(msg)) => Some((self.tx.clone(), msg)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Box::pin(async move { Err(gone()) });
            }
        };
        Box::pin(async move {
            if let Some((tx, msg)) = queued {
                tx.send(msg).await.map_err(|_| gone())?;
            }
            rx.await.map_err(|_| gone())?
        })
    }
}

fn run(
    mut store: Store,
    mut rx: mpsc::Receiver<Msg>,
    view: watch::Sender<StoreView>,
    failed: Arc<Mutex<Option<String>>>,
) -> Result<Store, edm_store::Error> {
    let mut pending: Vec<Outcome> = Vec::with_capacity(BATCH);
    let mut marks: Vec<(RecipientId, oneshot::Sender<Result<(), String>>)> = Vec::new();
    let mut last_view = Instant::now();
    let commit = |store: &mut Store, pending: &mut Vec<Outcome>| {
        if pending.is_empty() {
            return;
        }
        match store.record(pending) {
            Ok(()) => pending.clear(),
            Err(e) => {
                // Keep them: they are retried with the next commit, and the run
                // stops. Rows not recorded stay `sending` and come back in doubt.
                tracing::error!(error = %e, "cannot record outcomes");
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert_with(|| format!("cannot record outcomes: {e}"));
                }
            }
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Outcome(o) => {
                    pending.push(o);
                    if pending.len() >= BATCH {
                        commit(&mut store, &mut pending);
                    }
                }
                Msg::Claim {
                    limit,
                    max_due,
                    now,
                    reply,
                } => {
                    commit(&mut store, &mut pending);
                    let _ = reply.send(store.claim_with_budget(limit, max_due, now));
                }
                Msg::SentSince { since, reply } => {
                    commit(&mut store, &mut pending);
                    let _ = reply.send(store.sent_since(since));
                }
                Msg::Event { at, kind, text } => {
                    if let Err(e) = store.log_event(at, kind, &text) {
                        tracing::warn!(error = %e, "cannot log an event");
                    }
                }
                Msg::Summary(reply) => {
                    commit(&mut store, &mut pending);
                    let _ = reply.send(store.summary());
                }
                Msg::Refresh => {}
                Msg::Mark { id, reply } => marks.push((id, reply)),
            }
            // Marks hold up final dots: never keep them behind a long drain.
            if marks.len() >= MARKS_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        // Outcomes with the marks: an outcome already queued is committed no
        // later than the marks after it, so a crash leaves marked and
        // unanswered (about) one recipient per connection: those in flight.
        if marks.is_empty() {
            commit(&mut store, &mut pending);
        } else {
            // One transaction for both: marks cost no extra commit.
            let ids: Vec<RecipientId> = marks.iter().map(|(id, _)| *id).collect();
            let both = store.record_and_mark(&pending, &ids);
            let result = match both {
                Ok(()) => {
                    pending.clear();
                    Ok(())
                }
                // The outcomes alone, so a bad mark never holds them back.
                Err(e) => {
                    commit(&mut store, &mut pending);
                    Err(e)
                }
            };
            let result = result.map_err(|e| {
                tracing::error!(error = %e, "cannot mark transactions");
                let message = format!("cannot mark transactions before their final dot: {e}");
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert_with(|| message.clone());
                }
                message
            });
            for (_, reply) in marks.drain(..) {
                let _ = reply.send(result.clone());
            }
        }
        if last_view.elapsed() >= VIEW_EVERY {
            if let Ok(v) = StoreView::read(&store) {
                view.send_replace(v);
            }
            last_view = Instant::now();
        }
    }
    if !pending.is_empty() {
        store.record(&pending)?;
    }
    if let Ok(v) = StoreView::read(&store) {
        view.send_replace(v);
    }
    Ok(store)
}
