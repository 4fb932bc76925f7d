//! The store's error type: every variant says which database file it is about.

use std::path::{Path, PathBuf};

/// What can go wrong with a campaign store.
///
/// Every variant carries the database path, so a message reads on its own
/// ("campaign.db: ...") wherever it surfaces.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite refused an operation.
    #[error("{}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Opening read-only a store that does not exist.
    #[error("{}: no campaign store at this path", path.display())]
    NotFound {
        /// The database file that was asked for.
        path: PathBuf,
    },
    /// SQLite would not switch the file to WAL mode (for example on a
    /// network file system), so readers could not watch a running campaign.
    #[error("{}: cannot use WAL journal mode (got {mode:?})", path.display())]
    NotWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The file is a SQLite database but not an edm campaign store (no schema).
    #[error("{}: not an edm campaign store (schema missing)", path.display())]
    NotACampaign {
        /// The database file.
        path: PathBuf,
    },
    /// The store was written by a newer edm.
    #[error(
        "{}: schema version {found} is newer than this edm supports ({supported})",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// Another process holds the run lock of this campaign.
    #[error(
        "{}: the campaign is already being sent{} (lock file {})",
        path.display(),
        pid.map(|p| format!(" by process {p}")).unwrap_or_default(),
        lock.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The process id written by the holder, when readable.
        pid: Option<u32>,
    },
    /// The lock file could not be created or locked.
    #[error("{}: lock file: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A value read back from the database is not one this build knows.
    #[error("{}: corrupt value {value:?} in column {column}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The column (`table.column`).
        column: &'static str,
        /// The value found.
        value: String,
    },
    /// A row handed to [`Store::insert_rows`](crate::Store::insert_rows) has a
    /// status that only delivery can give.
    #[error("{}: line {line}: a new row cannot have status {status}", path.display())]
    InvalidNewRow {
        /// The database file.
        path: PathBuf,
        /// The CSV line of the row.
        line: u64,
        /// The status it asked for.
        status: edm_model::Status,
    },
    /// An outcome names a recipient the store does not have.
    #[error("{}: no recipient {id}", path.display())]
    UnknownRecipient {
        /// The database file.
        path: PathBuf,
        /// The id asked for.
        id: edm_model::RecipientId,
    },
    /// The record at this source position is already stored in this ingest
    /// pass: the database refuses a second copy (the unique key on
    /// generation and line), so nobody is sent twice.
    #[error(
        "{}: line {line} of the recipients file is already stored (ingest pass {generation}); \
         a second copy is refused",
        path.display()
    )]
    AlreadyStored {
        /// The database file.
        path: PathBuf,
        /// The CSV line of the row.
        line: u64,
        /// The ingest pass.
        generation: i64,
    },
    /// The database file could not be created (mode 0600) or opened for writing.
    #[error("{}: cannot create the state file: {source}", path.display())]
    Create {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The run's store writer ([`Writer`](crate::Writer)) is gone (its thread
    /// ended or panicked), so this request (an outcome, a claim, a mark) was
    /// not carried out. Never silent: the run reports it and stops.
    #[error("{}: the store writer stopped; {what} was not recorded", path.display())]
    WriterStopped {
        /// The database file.
        path: PathBuf,
        /// What was lost ("the outcome of recipient 12", say).
        what: String,
    },
    /// PostgreSQL refused an operation, or the connection failed. `path` is
    /// the store's location (`postgres://user@host:port/db campaign NAME`),
    /// never holding a password.
    ///
    /// The text carries the server's SQLSTATE and message (`40P01:
    /// deadlock detected`), not only the driver's "db error".
    #[error("{}: {}", path.display(), crate::postgres::reason(cause))]
    Postgres {
        /// The store's location.
        path: PathBuf,
        /// What PostgreSQL (or the connection) said; in the text already,
        /// so not also given as the error's source (a chain printed with
        /// `{:#}` would say it twice).
        cause: postgres::Error,
    },
    /// The `[store]` settings cannot be used (a URL holding a password, a
    /// URL that does not parse): `message` says what to change.
    #[error("store: {message}")]
    StoreConfig {
        /// What is wrong and what to do, without the password.
        message: String,
    },
    /// The thread that owns a PostgreSQL connection is gone (it panicked),
    /// so the request was not carried out.
    #[error("{}: the PostgreSQL connection thread stopped", path.display())]
    ConnectionLost {
        /// The store's location.
        path: PathBuf,
    },
    /// The PostgreSQL server went away and did not come back within the
    /// store's bound (`[store] reconnect_for`): the operation was not
    /// carried out. What was committed before is kept.
    #[error(
        "{}: the PostgreSQL server has been unreachable for {:.0} s, longer than \
         [store] reconnect_for; giving up ({reason}). Nothing committed is lost: \
         `edm send` again resumes once the server is back",
        path.display(),
        waited.as_secs_f64()
    )]
    Unreachable {
        /// The store's location (never holding a password).
        path: PathBuf,
        /// How long it was tried.
        waited: std::time::Duration,
        /// The last connection error.
        reason: String,
    },
    /// The connection came back but what lived in the lost session could
    /// not be taken again (the run lock, taken meanwhile by another
    /// process): this run must stop.
    #[error(
        "{}: the connection to PostgreSQL was lost and {what}; this run stops \
         (nothing committed is lost)",
        path.display()
    )]
    SessionLost {
        /// The store's location.
        path: PathBuf,
        /// What could not be re-established, and why.
        what: String,
    },
    /// Another live worker already runs this campaign under this name
    /// (`edm send --worker NAME`; PostgreSQL).
    #[error(
        "{}: a worker named {worker:?} is already sending this campaign (process {pid} on {host}, \
         its lease runs for {left_ms} ms more); give this one another --worker name, or wait",
        path.display()
    )]
    WorkerLive {
        /// The store's location.
        path: PathBuf,
        /// The name asked for.
        worker: String,
        /// The live worker's process id.
        pid: u64,
        /// The live worker's host.
        host: String,
        /// How long its lease still runs.
        left_ms: i64,
    },
    /// This worker's lease was lost (its heartbeat could not renew it in
    /// time and another worker took its rows over, or another process
    /// joined under its name): its durable marks are refused, so it never
    /// completes a message that may have been handed to another worker
    /// (fencing). The worker stops.
    #[error(
        "{}: worker {worker:?} lost its lease ({what}): another worker may have taken its \
         recipients over; stopping without completing the messages in flight",
        path.display()
    )]
    LeaseLost {
        /// The store's location.
        path: PathBuf,
        /// This worker's name.
        worker: String,
        /// What was refused.
        what: String,
    },
}

impl Error {
    /// True when the error is "another run holds this campaign".
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Locked { .. })
    }

    /// True when a value in the file could not be understood.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error of [`Store::export`](crate::Store::export): the store failed, or
/// the caller's sink did.
#[derive(Debug, thiserror::Error)]
pub enum ExportError<E> {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] Error),
    /// The sink refused a row; the export stopped there.
    #[error("export sink: {0}")]
    Sink(#[source] E),
}

/// Attaches the database path to a rusqlite result.
pub(crate) trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> AtPath<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Sqlite {
            path: path.to_path_buf(),
            source,
        })
    }
}
