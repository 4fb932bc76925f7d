//! One PostgreSQL connection owned by a thread of its own, which reconnects
//! when the server goes away and repeats the operation it was running.
//!
//! The `postgres` crate is synchronous on top of tokio-postgres: each call
//! runs `block_on` on a runtime it owns, and tokio panics when `block_on` is
//! called from a thread that is already driving a runtime ("Cannot start a
//! runtime from within a runtime"). [`crate::CampaignStore`] is synchronous
//! and is called from the writer thread *and* from inside tokio contexts
//! (`edm status`, the run's preparation), so the client never runs on the
//! caller's thread: it lives on a plain thread, and each call sends it a
//! closure and waits for the answer on a std channel, which is legal from
//! any thread, a tokio worker included (it blocks like a SQLite call does).
//!
//! **Reconnecting.** An operation that fails because the connection is gone
//! ([`lost_connection`]: the server closed it, an I/O error, `57P01
//! admin_shutdown` from a restart, `57P03 cannot_connect_now` while it
//! starts, a `08` connection exception) is not the caller's error: the
//! thread connects again with backoff (100 ms doubling to 2 s) for up to the
//! store's bound ([`super::PgOptions::reconnect_for`]), runs the store's
//! session hook (what lived in the lost session, a worker's session
//! setting, is set again) and runs the operation **again**, telling it so (`again`):
//! the operations whose effect cannot simply be repeated (a claim whose
//! COMMIT reply was lost, say) look first at what the lost attempt left. The
//! callers meanwhile wait: a run is paused, not stopped. Past the bound the
//! operation fails with [`Error::Unreachable`], and later calls try once to
//! connect, without waiting again.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::error::SqlState;

use super::tls::Tls;
use crate::error::{Error, Result};

/// The first wait between two connection attempts; it doubles up to
/// [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a session hook is told: how long the server was unreachable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outage {
    /// When the connection was found lost.
    pub(crate) since: edm_model::UnixMillis,
    /// From then to the new session.
    pub(crate) lasted: Duration,
}

/// Re-establishes what lived in the lost session, on the new one, before
/// the interrupted operation runs again. An [`Error::SessionLost`] from it
/// is fatal: every later call fails with it.
pub(crate) type Hook = Box<dyn FnMut(&mut Client, &Path, &Outage) -> Result<()> + Send>;

/// A closure run on the connection's thread.
type Job = Box<dyn FnOnce(&mut Link) + Send>;

/// Whether an operation may run again after a lost connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Reconnect and run it again (told so by its `again` argument).
    Yes,
    /// Reconnect for the next call, but fail this one (a stream already
    /// half handed out).
    No,
}

/// True when `e` says the connection is gone rather than the statement
/// refused: the server closed it (`is_closed`), the socket failed (an I/O
/// error underneath), or the server said so with its SQLSTATE: `57P01
/// admin_shutdown` (a restart or `pg_terminate_backend`), `57P02
/// crash_shutdown`, `57P03 cannot_connect_now` (starting up, in recovery),
/// `25P03 idle_in_transaction_session_timeout` and `57P05
/// idle_session_timeout` (the server ended a session left idle: a worker
/// frozen in the middle of a transaction, `workers::fence_idle_transactions`;
/// the transaction was rolled back, and running it again on a new session
/// finds the lease lost if it was taken over), class `08` connection
/// exceptions (PostgreSQL's appendix A).
pub(crate) fn lost_connection(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
            || *code == SqlState::IDLE_SESSION_TIMEOUT
            || code.code().starts_with("08");
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// True when the server rolled the transaction back to break a conflict
/// with another one (40P01 deadlock detected, 40001 serialization failure):
/// nothing of it was applied, and running it again is the documented
/// answer.
pub(crate) fn rolled_back_by_conflict(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// How many times one call runs again after [`rolled_back_by_conflict`]
/// before its error is returned.
const CONFLICT_RETRIES: u32 = 5;

/// What went wrong, for the operator: the server's SQLSTATE and message
/// when it said something (`57P01: terminating connection due to
/// administrator command`), else the error and its causes (`error
/// connecting to server: Connection refused (os error 111)`); never the
/// location (the caller's message has it) nor a password (no error of the
/// driver holds one).
pub(crate) fn reason(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

impl Error {
    /// [`reason`] for a PostgreSQL error, else the error's text.
    fn reason(&self) -> String {
        match self {
            Error::Postgres { cause, .. } => reason(cause),
            other => other.to_string(),
        }
    }
}

/// While reconnecting, which refusals are worth waiting out: everything
/// but a server that answers and refuses us (a wrong password, a database
/// that does not exist), where waiting changes nothing. `53300
/// too_many_connections` passes: sessions of the restarted clients come
/// back one by one.
fn worth_waiting(e: &postgres::Error) -> bool {
    match e.code() {
        Some(code) => lost_connection(e) || *code == SqlState::TOO_MANY_CONNECTIONS,
        None => true,
    }
}

impl Error {
    /// True when this store error is a lost PostgreSQL connection (see
    /// [`lost_connection`]).
    pub(crate) fn is_lost_connection(&self) -> bool {
        matches!(self, Error::Postgres { cause, .. } if lost_connection(cause))
    }
}

/// The connection thread's side: the client (none while lost), how to make
/// another, and what to do once it is back.
pub(crate) struct Link {
    client: Option<Client>,
    config: postgres::Config,
    tls: Tls,
    location: PathBuf,
    reconnect_for: Duration,
    hook: Option<Hook>,
    /// Set once a reconnection gave up: later calls try once, not again for
    /// the whole bound (a run stopping still writes what it can, quickly).
    gave_up: bool,
    /// Set when the session could not be re-established (the hook failed:
    /// a session that cannot be set up as it was): every later call fails with it.
    fatal: Option<String>,
    /// When the connection was found lost (monotonic, and as a timestamp
    /// for the event log), until a new session is up.
    down_since: Option<(Instant, edm_model::UnixMillis)>,
    /// Tests: the next call that succeeds loses its reply, as if the
    /// connection broke while COMMIT's answer was on its way.
    #[cfg(test)]
    lose_next_reply: bool,
}

impl Link {
    /// Runs `f`, reconnecting and running it again (with `again` true) while
    /// the connection is lost, up to the bound.
    fn run<R>(
        &mut self,
        f: &mut dyn FnMut(&mut Client, &Path, bool) -> Result<R>,
        repeat: Repeat,
    ) -> Result<R> {
        let mut again = false;
        // When this call first lost its connection: a server that takes new
        // sessions but loses each one under this operation (a backend that
        // crashes on it, a proxy that cuts it) would otherwise be retried
        // forever, each reconnection restarting the outage's clock.
        let mut first_loss: Option<Instant> = None;
        let mut conflicts = 0;
        loop {
            if let Some(what) = &self.fatal {
                return Err(Error::SessionLost {
                    path: self.location.clone(),
                    what: what.clone(),
                });
            }
            if self.client.as_ref().is_some_and(|c| c.is_closed()) {
                // Found closed while idle (a restart between two calls):
                // nothing of `f` ran, but the outage counts from here.
                self.client = None;
                self.warn_lost("the server closed the connection");
            }
            if self.client.is_none() {
                self.reconnect()?;
            }
            let Some(client) = self.client.as_mut() else {
                continue;
            };
            match f(client, &self.location, again) {
                Err(e) if e.is_lost_connection() => {
                    self.client = None;
                    self.warn_lost(&e.reason());
                    let first = *first_loss.get_or_insert_with(Instant::now);
                    if repeat == Repeat::No || first.elapsed() >= self.reconnect_for {
                        return Err(e);
                    }
                    again = true;
                }
                Err(Error::Postgres { cause, .. })
                    if repeat == Repeat::Yes
                        && rolled_back_by_conflict(&cause)
                        && conflicts < CONFLICT_RETRIES =>
                {
                    // The schema orders the campaign's own writers (the
                    // tally lock, schema V4); what is left (a zombie worker
                    // in the middle of its takeover) is run again. `again`
                    // stays conservative: an earlier transaction of `f`
                    // may have committed.
                    conflicts += 1;
                    tracing::debug!(
                        store = %self.location.display(),
                        error = %reason(&cause),
                        "a transaction rolled back by a conflict runs again"
                    );
                    std::thread::sleep(Duration::from_millis(10 * u64::from(conflicts)));
                    again = true;
                }
                #[cfg(test)]
                Ok(_) if self.lose_next_reply => {
                    self.lose_next_reply = false;
                    self.client = None;
                    again = true;
                }
                r => return r,
            }
        }
    }

    /// Notes the loss, logging it once per outage.
    fn warn_lost(&mut self, why: &str) {
        if self.down_since.is_some() {
            return;
        }
        self.down_since = Some((Instant::now(), edm_model::now_ms()));
        if !self.gave_up {
            tracing::warn!(
                store = %self.location.display(),
                error = why,
                "lost the PostgreSQL server; waiting for it and reconnecting (for up to {:?})",
                self.reconnect_for
            );
        }
    }

    /// Connects again with backoff until the bound (counted from the loss),
    /// then runs the session hook.
    fn reconnect(&mut self) -> Result<()> {
        let (started, since) = *self
            .down_since
            .get_or_insert_with(|| (Instant::now(), edm_model::now_ms()));
        let mut wait = BACKOFF_FIRST;
        loop {
            let error = match self.tls.connect(&self.config) {
                Ok(mut client) => {
                    let outage = Outage {
                        since,
                        lasted: started.elapsed(),
                    };
                    let hooked = match self.hook.as_mut() {
                        Some(hook) => hook(&mut client, &self.location, &outage),
                        None => Ok(()),
                    };
                    match hooked {
                        Ok(()) => {
                            // A warning too, not info: the operator saw the
                            // loss at the default level (warn) and must see
                            // its end there as well.
                            tracing::warn!(
                                store = %self.location.display(),
                                "PostgreSQL is back after {:.1} s; going on",
                                outage.lasted.as_secs_f64()
                            );
                            self.client = Some(client);
                            self.gave_up = false;
                            self.down_since = None;
                            return Ok(());
                        }
                        Err(e) if e.is_lost_connection() => e,
                        Err(e) => {
                            if let Error::SessionLost { what, .. } = &e {
                                self.fatal = Some(what.clone());
                            }
                            return Err(e);
                        }
                    }
                }
                Err(e) if !worth_waiting(&e) => {
                    return Err(Error::Postgres {
                        path: self.location.clone(),
                        cause: e,
                    });
                }
                Err(e) => Error::Postgres {
                    path: self.location.clone(),
                    cause: e,
                },
            };
            let waited = started.elapsed();
            if self.gave_up || waited + wait > self.reconnect_for {
                if !self.gave_up {
                    tracing::error!(
                        store = %self.location.display(),
                        "PostgreSQL still unreachable after {:.0} s; giving up",
                        waited.as_secs_f64()
                    );
                }
                self.gave_up = true;
                return Err(Error::Unreachable {
                    path: self.location.clone(),
                    waited,
                    reason: error.reason(),
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }
}

/// The handle on the connection thread. Dropping it closes the channel; the
/// thread then drops the client (closing the session, which releases its
/// advisory locks) and ends; the drop waits for that.
pub(crate) struct Conn {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    location: PathBuf,
}

impl Conn {
    /// Connects on a new thread and waits until the session is up. The
    /// first connection is not waited for: a server that is not there when
    /// a command starts is the operator's to fix, said at once.
    pub(crate) fn connect(
        config: postgres::Config,
        tls: Tls,
        location: PathBuf,
        reconnect_for: Duration,
    ) -> Result<Conn> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready, ready_rx) = mpsc::channel();
        let loc = location.clone();
        let thread = std::thread::Builder::new()
            .name("edm-postgres".into())
            .spawn(move || {
                let client = match tls.connect(&config) {
                    Ok(c) => {
                        let _ = ready.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let mut link = Link {
                    client: Some(client),
                    config,
                    tls,
                    location: loc,
                    reconnect_for,
                    hook: None,
                    gave_up: false,
                    fatal: None,
                    down_since: None,
                    #[cfg(test)]
                    lose_next_reply: false,
                };
                while let Ok(job) = rx.recv() {
                    job(&mut link);
                }
            })
            .map_err(|source| Error::Io {
                path: location.clone(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Conn {
                jobs: Some(jobs),
                thread: Some(thread),
                location,
            }),
            Ok(Err(cause)) => {
                let _ = thread.join();
                Err(Error::Postgres {
                    path: location,
                    cause,
                })
            }
            Err(_) => Err(Error::ConnectionLost { path: location }),
        }
    }

    /// The store's location.
    pub(crate) fn location(&self) -> &Path {
        &self.location
    }

    /// Runs `f` on the connection's thread and returns its answer; a lost
    /// connection is waited out and `f` runs again with `again` true (see
    /// the module documentation).
    pub(crate) fn call<R: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Client, &Path, bool) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.spawn(move |link| {
            let _ = tx.send(link.run(&mut f, Repeat::Yes));
        })?;
        rx.recv().map_err(|_| self.lost())?
    }

    /// Queues `f` on the connection's thread without waiting (for streams:
    /// `f` answers through its own channel), once: a lost connection fails
    /// it (the next call reconnects).
    pub(crate) fn spawn_once(
        &self,
        mut f: impl FnMut(&mut Client, &Path) -> Result<()> + Send + 'static,
        on_error: impl FnOnce(Error) + Send + 'static,
    ) -> Result<()> {
        self.spawn(move |link| {
            if let Err(e) = link.run(&mut |c, p, _| f(c, p), Repeat::No) {
                on_error(e);
            }
        })
    }

    /// Sets the hook run after each reconnection (see [`Hook`]).
    pub(crate) fn set_hook(&self, hook: Hook) -> Result<()> {
        self.spawn(move |link| link.hook = Some(hook))
    }

    /// Tests: the next call that succeeds is treated as if the connection
    /// broke while its COMMIT's reply was awaited: the session is dropped
    /// (its locks with it) and the call runs again with `again` true.
    #[cfg(test)]
    pub(crate) fn lose_next_reply(&self) -> Result<()> {
        self.spawn(|link| link.lose_next_reply = true)
    }

    fn spawn(&self, f: impl FnOnce(&mut Link) + Send + 'static) -> Result<()> {
        self.jobs
            .as_ref()
            .ok_or_else(|| self.lost())?
            .send(Box::new(f))
            .map_err(|_| self.lost())
    }

    pub(crate) fn lost(&self) -> Error {
        Error::ConnectionLost {
            path: self.location.clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Attaches the store's location to a `postgres` result.
pub(crate) trait AtPg<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> AtPg<T> for std::result::Result<T, postgres::Error> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|cause| Error::Postgres {
            path: path.to_path_buf(),
            cause,
        })
    }
}
