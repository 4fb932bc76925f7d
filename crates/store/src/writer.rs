//! The one store writer of a run: a thread that owns the store (any
//! [`CampaignStore`]), batches outcomes into few transactions, answers claims
//! in order with them, commits durable marks in groups, and publishes a read
//! view, when asked ([`Writer::refresh`]), at most twice a second.
//!
//! Nothing sent to it is lost silently: every request answers, and one the
//! writer can no longer carry out (its thread ended) is an
//! [`Error::WriterStopped`] that is also kept in [`Writer::failure`], which
//! the run reads to stop and report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edm_model::{DomainCounts, FailureRow, Recipient, RecipientId, UnixMillis};
use tokio::sync::{mpsc, oneshot, watch};

use crate::CampaignStore;
use crate::error::{Error, Result};
use crate::types::{Outcome, ReplyCount, Summary};

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
    /// Reads a view from any store (the writer's or a read-only one).
    pub fn read(store: &dyn CampaignStore) -> Result<StoreView> {
        Ok(StoreView {
            summary: store.summary()?,
            recent_failures: store.recent_failures(200)?,
            top_replies: store.top_replies(8)?,
            domains: store.domain_counts(12)?,
        })
    }
}

/// A request to the writer thread.
enum Msg {
    Outcome(Outcome),
    Claim {
        limit: usize,
        max_due: usize,
        now: UnixMillis,
        /// A daily quota for the sum of the workers (`claim_capped`).
        cap: Option<(u64, UnixMillis)>,
        reply: oneshot::Sender<Result<Vec<Recipient>>>,
    },
    Event {
        at: UnixMillis,
        kind: &'static str,
        text: String,
    },
    Summary(oneshot::Sender<Result<Summary>>),
    SentSince {
        since: UnixMillis,
        reply: oneshot::Sender<Result<u64>>,
    },
    Refresh,
    /// The durable mark before a final dot; answered once committed.
    Mark {
        id: RecipientId,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
}

/// The first error the writer met (or met trying to reach it); the run
/// stops when it is set.
type Failure = Arc<Mutex<Option<String>>>;

/// Keeps the first failure: later ones are consequences.
fn note(failed: &Failure, message: impl FnOnce() -> String) {
    if let Ok(mut f) = failed.lock() {
        f.get_or_insert_with(message);
    }
}

/// The handle on a run's writer thread.
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    view: watch::Receiver<StoreView>,
    failed: Failure,
    location: std::path::PathBuf,
    join: std::thread::JoinHandle<Result<Box<dyn CampaignStore>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("location", &self.location)
            .finish()
    }
}

impl Writer {
    /// Starts the writer thread, which owns `store` until [`Writer::finish`].
    pub fn spawn(store: Box<dyn CampaignStore>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(4096);
        let initial = StoreView::read(store.as_ref()).unwrap_or_default();
        let (view_tx, view) = watch::channel(initial);
        let failed: Failure = Arc::new(Mutex::new(None));
        let f2 = failed.clone();
        let location = store.location().to_path_buf();
        let join = std::thread::Builder::new()
            .name("edm-store-writer".into())
            .spawn(move || run(store, rx, view_tx, f2))?;
        Ok(Writer {
            tx,
            view,
            failed,
            location,
            join,
        })
    }

    /// The first error the writer met, if any: the run stops and reports it.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Sets the run's failure (the first one is kept), for a caller that met
    /// one talking to the store.
    pub fn fail(&self, message: String) {
        note(&self.failed, || message);
    }

    /// The view progress displays read, refreshed at most twice a second.
    pub fn view(&self) -> watch::Receiver<StoreView> {
        self.view.clone()
    }

    /// "The writer stopped", kept as the run's failure too.
    fn stopped(&self, what: String) -> Error {
        let e = Error::WriterStopped {
            path: self.location.clone(),
            what,
        };
        note(&self.failed, || e.to_string());
        e
    }

    /// Sends a request and waits for its answer.
    async fn ask<T>(
        &self,
        what: &str,
        msg: impl FnOnce(oneshot::Sender<Result<T>>) -> Msg,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(msg(reply)).await.is_err() {
            return Err(self.stopped(what.to_string()));
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.stopped(what.to_string())),
        }
    }

    /// Asks for a batch of recipients to send (committing earlier outcomes
    /// first), at most `max_due` of them deferred ones (the retry budget).
    pub async fn claim(
        &self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
    ) -> Result<Vec<Recipient>> {
        self.claim_capped(limit, max_due, now, None).await
    }

    /// [`Writer::claim`] within a daily quota for the sum of the workers
    /// ([`CampaignStore::claim_capped`]).
    pub async fn claim_capped(
        &self,
        limit: usize,
        max_due: usize,
        now: UnixMillis,
        cap: Option<(u64, UnixMillis)>,
    ) -> Result<Vec<Recipient>> {
        self.ask("a claim", |reply| Msg::Claim {
            limit,
            max_due,
            now,
            cap,
            reply,
        })
        .await
    }

    /// The current counts (after committing everything sent before).
    pub async fn summary(&self) -> Result<Summary> {
        self.ask("a summary", Msg::Summary).await
    }

    /// Messages sent since `since` (for the daily quota), after committing.
    pub async fn sent_since(&self, since: UnixMillis) -> Result<u64> {
        self.ask("a quota count", |reply| Msg::SentSince { since, reply })
            .await
    }

    /// Records an outcome: waits for room, never drops it. When the writer
    /// is gone the outcome cannot be recorded: that is an error, kept as the
    /// run's failure (the row stays `sending` on disk and the next run deals
    /// with it as in doubt or as never sent).
    pub async fn record(&self, o: Outcome) -> Result<()> {
        let id = o.id;
        self.tx
            .send(Msg::Outcome(o))
            .await
            .map_err(|_| self.stopped(format!("the outcome of recipient {id}")))
    }

    /// Logs an event line in the store. Events are the log, not state: one
    /// that cannot be written is logged here and the run goes on.
    pub async fn event(&self, kind: &'static str, text: String) {
        let at = edm_model::now_ms();
        if self.tx.send(Msg::Event { at, kind, text }).await.is_err() {
            tracing::warn!(kind, "the store writer stopped; an event was not logged");
        }
    }

    /// Asks for a fresh read view (progress displays call this periodically;
    /// a full channel means one is coming anyway).
    pub fn refresh(&self) {
        let _ = self.tx.try_send(Msg::Refresh);
    }

    /// A handle that asks this writer for durable marks (the engine holds
    /// it); it does not keep the writer from finishing.
    pub fn marks(&self) -> Marks {
        Marks {
            tx: self.tx.clone(),
            failed: self.failed.clone(),
            location: std::sync::Arc::from(self.location.as_path()),
        }
    }

    /// Closes the channel, waits for the last commit, and gives the store back.
    pub fn finish(self) -> Result<Box<dyn CampaignStore>> {
        let Writer {
            tx, join, location, ..
        } = self;
        drop(tx);
        match join.join() {
            Ok(r) => r,
            Err(_) => Err(Error::WriterStopped {
                path: location,
                what: "the last outcomes (the writer thread panicked)".into(),
            }),
        }
    }
}

/// Asks the writer thread for durable marks; every mark asked for while the
/// writer commits is committed together with the others (group commit).
#[derive(Clone, Debug)]
pub struct Marks {
    tx: mpsc::Sender<Msg>,
    failed: Failure,
    /// Shared, not copied per mark: the error naming it is rare.
    location: std::sync::Arc<std::path::Path>,
}

impl Marks {
    /// Asks for the durable mark of `id` before its final dot. The returned
    /// future resolves once the mark is committed, together with the other
    /// marks asked for meanwhile. The request is queued now, not when the
    /// future is first polled, so the commit overlaps the envelope commands;
    /// it waits for room only when the channel is full. A writer that is gone
    /// is an error (kept as the run's failure): the dot is never written.
    pub fn mark(
        &self,
        id: RecipientId,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        // The error is made only when the writer is gone: formatting it for
        // every mark cost ~3.5k instructions per message (issue 11).
        let location = self.location.clone();
        let gone = move || {
            Error::WriterStopped {
                path: location.to_path_buf(),
                what: format!("the mark of recipient {id}"),
            }
            .to_string()
        };
        let failed = self.failed.clone();
        let queued = match self.tx.try_send(Msg::Mark { id, reply }) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(msg)) => Ok(Some((self.tx.clone(), msg))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        };
        async move {
            let lost = |gone: &dyn Fn() -> String| {
                let gone = gone();
                note(&failed, || gone.clone());
                gone
            };
            match queued {
                Err(()) => return Err(lost(&gone)),
                Ok(Some((tx, msg))) => {
                    if tx.send(msg).await.is_err() {
                        return Err(lost(&gone));
                    }
                }
                Ok(None) => {}
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(lost(&gone)),
            }
        }
    }
}

fn run(
    mut store: Box<dyn CampaignStore>,
    mut rx: mpsc::Receiver<Msg>,
    view: watch::Sender<StoreView>,
    failed: Failure,
) -> Result<Box<dyn CampaignStore>> {
    let mut pending: Vec<Outcome> = Vec::with_capacity(BATCH);
    let mut marks: Vec<(
        RecipientId,
        oneshot::Sender<std::result::Result<(), String>>,
    )> = Vec::new();
    let mut last_view = Instant::now();
    // The view is read only when a display asked for one since the last
    // (`Writer::refresh`): a run's own progress is a fold of its events
    // (`edm_model::ProgressFold`), so a run nobody asks costs no reads.
    let mut view_asked = false;
    let commit = |store: &mut Box<dyn CampaignStore>, pending: &mut Vec<Outcome>| {
        if pending.is_empty() {
            return;
        }
        match store.record(pending) {
            Ok(()) => pending.clear(),
            Err(e) => {
                // Keep them: they are retried with the next commit, and the run
                // stops. Rows not recorded stay `sending` and come back in doubt.
                tracing::error!(error = %e, "cannot record outcomes");
                note(&failed, || format!("cannot record outcomes: {e}"));
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
                    cap,
                    reply,
                } => {
                    commit(&mut store, &mut pending);
                    let _ = reply.send(store.claim_capped(limit, max_due, now, cap));
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
                Msg::Refresh => view_asked = true,
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
                note(&failed, || message.clone());
                message
            });
            for (_, reply) in marks.drain(..) {
                let _ = reply.send(result.clone());
            }
        }
        if view_asked && last_view.elapsed() >= VIEW_EVERY {
            if let Ok(v) = StoreView::read(store.as_ref()) {
                view.send_replace(v);
            }
            last_view = Instant::now();
            view_asked = false;
        }
    }
    if !pending.is_empty() {
        store.record(&pending)?;
    }
    // Everything is recorded: what failing here leaves is redone by the next
    // run (and lookups meanwhile still find every row), so it is only logged.
    if let Err(e) = store.finish_run() {
        tracing::warn!(error = %e, "cannot finish the run's deferred store work");
    }
    if let Ok(v) = StoreView::read(store.as_ref()) {
        view.send_replace(v);
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use edm_model::Status;

    use super::*;
    use crate::{MemoryStore, NewRow, OutcomeKind};

    fn sent(id: RecipientId) -> Outcome {
        Outcome::sent_for_test(id, 5, "<m@edm>".into())
    }

    fn memory_with(n: u64) -> Box<dyn CampaignStore> {
        let mut store = MemoryStore::new();
        store.begin_ingest("csv").unwrap();
        let rows: Vec<NewRow> = (0..n)
            .map(|i| NewRow {
                line: i + 2,
                email: format!("r{i}@example.com"),
                values: vec![],
                status: Status::Pending,
                category: None,
                reason: None,
                duplicate_of: None,
            })
            .collect();
        store.insert_rows(&rows).unwrap();
        store.finish_ingest(Some(&["email".into()]), &[]).unwrap();
        Box::new(store)
    }

    /// A writer whose thread is gone (as after a panic in it).
    async fn stopped_writer() -> Writer {
        let (tx, rx) = mpsc::channel(4);
        let (_, view) = watch::channel(StoreView::default());
        let join = std::thread::spawn(move || {
            drop(rx);
            Err(Error::WriterStopped {
                path: ":memory:".into(),
                what: "everything".into(),
            })
        });
        while !tx.is_closed() {
            tokio::task::yield_now().await;
        }
        Writer {
            tx,
            view,
            failed: Arc::new(Mutex::new(None)),
            location: ":memory:".into(),
            join,
        }
    }

    #[tokio::test]
    async fn an_outcome_the_writer_cannot_take_is_an_error_and_the_runs_failure() {
        let writer = stopped_writer().await;
        assert_eq!(writer.failure(), None);
        let err = writer.record(sent(RecipientId(7))).await.unwrap_err();
        assert!(matches!(err, Error::WriterStopped { .. }), "{err}");
        let failure = writer.failure().expect("the run is told");
        assert!(failure.contains("the outcome of recipient #7"), "{failure}");
        // The first failure is kept; claims and marks fail too.
        assert!(writer.claim(1, 1, 0).await.is_err());
        assert!(writer.marks().mark(RecipientId(8)).await.is_err());
        assert_eq!(writer.failure().as_deref(), Some(failure.as_str()));
        assert!(writer.finish().is_err());
    }

    #[tokio::test]
    async fn a_mark_the_writer_cannot_take_names_its_recipient_and_the_store() {
        // The error is made only when needed (issue 11): it must still say
        // which mark and which file, and become the run's failure.
        let writer = stopped_writer().await;
        let err = writer.marks().mark(RecipientId(9)).await.unwrap_err();
        assert!(err.contains("the mark of recipient #9"), "{err}");
        assert!(err.contains(":memory:"), "{err}");
        assert_eq!(writer.failure().as_deref(), Some(err.as_str()));
    }

    #[tokio::test]
    async fn the_writer_runs_on_any_store_and_commits_marks_with_outcomes() {
        let writer = Writer::spawn(memory_with(3)).unwrap();
        let claimed = writer.claim(3, 3, 1).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let marks = writer.marks();
        let (a, b) = tokio::join!(marks.mark(claimed[0].id), marks.mark(claimed[1].id));
        a.unwrap();
        b.unwrap();
        writer.record(sent(claimed[0].id)).await.unwrap();
        writer
            .record(Outcome {
                id: claimed[2].id,
                at: 6,
                kind: OutcomeKind::Released,
            })
            .await
            .unwrap();
        let summary = writer.summary().await.unwrap();
        assert_eq!(
            (summary.count(Status::Sent), summary.count(Status::Sending)),
            (1, 1)
        );
        assert_eq!(writer.sent_since(0).await.unwrap(), 1);
        writer.event("stop", "stopping".into()).await;
        assert_eq!(writer.failure(), None);
        drop(marks);
        let mut store = writer.finish().unwrap();
        assert_eq!(store.recent_events(5).unwrap().len(), 1);
        // The marked, unanswered one is the only one in doubt.
        assert_eq!(
            store.recover_in_doubt(crate::InDoubtPolicy::Skip).unwrap(),
            1
        );
    }
}
