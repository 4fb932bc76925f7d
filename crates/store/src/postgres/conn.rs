//! One PostgreSQL connection owned by a thread of its own.
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

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use postgres::Client;

use crate::error::{Error, Result};

/// A closure run on the connection's thread with the client and the store's
/// location (for error messages).
type Job = Box<dyn FnOnce(&mut Client, &Path) + Send>;

/// The handle on the connection thread. Dropping it closes the channel; the
/// thread then drops the client (closing the session, which releases its
/// advisory locks) and ends; the drop waits for that.
pub(crate) struct Conn {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    location: PathBuf,
}

impl Conn {
    /// Connects on a new thread and waits until the session is up.
    pub(crate) fn connect(config: postgres::Config, location: PathBuf) -> Result<Conn> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready, ready_rx) = mpsc::channel();
        let loc = location.clone();
        let thread = std::thread::Builder::new()
            .name("edm-postgres".into())
            .spawn(move || {
                let mut client = match config.connect(postgres::NoTls) {
                    Ok(c) => {
                        let _ = ready.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut client, &loc);
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
            Ok(Err(source)) => {
                let _ = thread.join();
                Err(Error::Postgres {
                    path: location,
                    source,
                })
            }
            Err(_) => Err(Error::ConnectionLost { path: location }),
        }
    }

    /// The store's location.
    pub(crate) fn location(&self) -> &Path {
        &self.location
    }

    /// Runs `f` on the connection's thread and returns its answer.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client, &Path) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.spawn(move |client, path| {
            let _ = tx.send(f(client, path));
        })?;
        rx.recv().map_err(|_| self.lost())?
    }

    /// Queues `f` on the connection's thread without waiting (for streams:
    /// `f` answers through its own channel).
    pub(crate) fn spawn(&self, f: impl FnOnce(&mut Client, &Path) + Send + 'static) -> Result<()> {
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
        self.map_err(|source| Error::Postgres {
            path: path.to_path_buf(),
            source,
        })
    }
}
