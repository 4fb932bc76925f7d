//! Opening a store, the run lock, and the campaign's metadata.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edm_model::{Category, Stage, Status, UnixMillis};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::error::{AtPath, Error, Result};
use crate::schema;
use crate::tally;
use crate::types::Durability;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One campaign's state in one SQLite file.
///
/// Open it with [`Store::open`] in the one process that writes (`edm send`),
/// or with [`Store::open_read_only`] in readers (`edm status`, `edm watch`),
/// which may run at the same time: WAL mode lets readers see every committed
/// transaction without blocking the writer.
pub struct Store {
    /// The one connection; writers take `&mut self` for their transactions.
    pub(crate) conn: Connection,
    /// The database file, for error messages.
    pub(crate) path: PathBuf,
    /// The run lock, held from [`Store::lock_for_run`] until the store is dropped
    /// (the OS releases it when the file closes, also when the process dies).
    run_lock: Option<File>,
    /// Recipients sent since the last [`Store::index_message_ids`] by this
    /// connection: their Message-IDs wait in `mid_pending` (schema 8).
    pub(crate) mid_waiting: u64,
    /// `domain_tally` changes of the run kept back (issue 11, [`tally::Behind`]).
    pub(crate) behind: tally::Behind,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("locked", &self.run_lock.is_some())
            .finish()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A run that ends without `finish_run` still leaves `domain_tally`
        // right; if this fails, the flag left set makes the next open
        // count the domains from the rows.
        if let Err(e) = self.flush_domain_tally() {
            tracing::warn!(error = %e, "cannot write the domain tallies kept back");
        }
    }
}

impl Store {
    /// Opens (creating if missing) a campaign store for writing.
    ///
    /// Sets WAL mode, the durability, a 5 s busy timeout, and migrates the
    /// schema to the current version. A new store records `created_at` in meta.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        // The file holds every recipient's address and data: readable by its
        // owner only, whatever the umask. SQLite gives the -wal and -shm files
        // the mode of the database file (its unix VFS, `findCreateFileMode`).
        private_file(&path).map_err(|source| Error::Create {
            path: path.clone(),
            source,
        })?;
        let mut conn = Connection::open(&path).at(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT).at(&path)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .at(&path)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::NotWal { path, mode });
        }
        // Files left by an older build (created under the umask) are tightened.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.clone().into_os_string();
            side.push(suffix);
            let _ = tighten(Path::new(&side));
        }
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync).at(&path)?;
        // 16 MiB of page cache (negative = KiB): ingest inserts into the email
        // index in random order, and the default 2 MiB cache makes that thrash.
        conn.pragma_update(None, "cache_size", -16_384).at(&path)?;
        // A run's writer cycles through about 20 statements (claim, six
        // outcome kinds, marks, the read view): rusqlite's default cache of
        // 16 evicted some at every batch and SQLite parsed them again, ~4%
        // of the writer's instructions (issue 11).
        conn.set_prepared_statement_cache_capacity(64);
        // `rarray(?)`: a batch's ids bound as one value, so the writer reads,
        // marks and unmarks a whole batch in one statement (write.rs).
        rusqlite::vtab::array::load_module(&conn).at(&path)?;
        let migrated = schema::migrate(&mut conn, &path)?;
        let mut store = Store {
            conn,
            path,
            run_lock: None,
            mid_waiting: 0,
            behind: tally::Behind::default(),
        };
        if store.domains_behind()? && !store.lock_held_elsewhere()? {
            // A writer died with domain changes in memory: count them from
            // the rows before anything reads them. Under the run lock, so no
            // writer starts keeping changes back meanwhile.
            let mut file = store.open_lock_file()?;
            if file.try_lock().is_ok() {
                tally::recount_domains(&store.conn, &store.path)?;
                let _ = file.flush();
            }
        }
        if migrated.created {
            store.set_meta("created_at", &edm_model::now_ms().to_string())?;
        }
        Ok(store)
    }

    /// Opens an existing store for reading only, alongside a running writer.
    ///
    /// Fails with [`Error::NotFound`] when the file does not exist (it is never
    /// created) and [`Error::NotACampaign`] when it has no schema.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(Error::NotFound { path });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&path, flags).at(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT).at(&path)?;
        schema::check_readable(&conn, &path)?;
        Ok(Store {
            conn,
            path,
            run_lock: None,
            mid_waiting: 0,
            behind: tally::Behind::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file next to the database: `<db>.lock`.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the exclusive run lock of this campaign, so two `edm send` cannot
    /// run it at once. Held until the store is dropped.
    ///
    /// An OS lock on `<db>.lock` rather than a row in the database: the OS
    /// releases it when the process dies, so a crash never leaves a stale lock.
    /// `pid` is written into the file so the refusal can name the holder.
    pub fn lock_for_run(&mut self, pid: u32) -> Result<()> {
        if self.run_lock.is_some() {
            return Ok(());
        }
        let lock = self.lock_path();
        let io = |source| Error::Io {
            path: lock.clone(),
            source,
        };
        let mut file = self.open_lock_file()?;
        let _ = tighten(&lock);
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                // The holder's pid is a courtesy: an unreadable file still refuses.
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(Error::Locked {
                    path: self.path.clone(),
                    lock,
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{pid}").map_err(io)?;
        file.flush().map_err(io)?;
        self.run_lock = Some(file);
        // No other writer now: changes a dead one kept back are counted from
        // the rows, and this one may keep its own back.
        if self.domains_behind()? {
            tally::recount_domains(&self.conn, &self.path)?;
        }
        self.behind.enabled = true;
        Ok(())
    }

    /// The run lock's file, opened for locking (created when missing).
    fn open_lock_file(&self) -> Result<File> {
        let lock = self.lock_path();
        private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(|source| Error::Io { path: lock, source })
    }

    /// `domain_tally` is behind the rows on disk ([`tally::BEHIND_META`]):
    /// a writer keeps changes back, or died with some.
    pub(crate) fn domains_behind(&self) -> Result<bool> {
        Ok(self.meta(tally::BEHIND_META)?.is_some())
    }

    /// Another open file holds the run lock: a live writer (the OS frees
    /// it when its process dies). A missing lock file is no writer.
    pub(crate) fn lock_held_elsewhere(&self) -> Result<bool> {
        if self.run_lock.is_some() {
            return Ok(false);
        }
        let lock = self.lock_path();
        let file = match File::open(&lock) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(Error::Io { path: lock, source }),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(source)) => Err(Error::Io { path: lock, source }),
        }
    }

    /// Writes the `domain_tally` changes the run kept back (end of run; also
    /// done when the store is dropped).
    pub fn flush_domain_tally(&mut self) -> Result<()> {
        if self.behind.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = crate::write::Hot::begin(&self.conn, &path)?;
        self.behind.due();
        let staged = self
            .behind
            .stage(&tx, &path, &mut tally::Deltas::default())?;
        tx.commit(&path)?;
        self.behind.committed(staged);
        Ok(())
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
            .at(&self.path)
    }

    /// Writes a metadata value (insert or replace).
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .at(&self.path)?;
        Ok(())
    }

    /// True once [`Store::mark_ingested`] has run: every row is in.
    pub fn is_ingested(&self) -> Result<bool> {
        Ok(self.meta("ingested")?.as_deref() == Some("1"))
    }

    /// Records the CSV header and marks ingest complete, in one transaction.
    pub fn mark_ingested(&mut self, columns: &[String]) -> Result<()> {
        let json = serde_json::to_string(columns).expect("a list of strings always serialises");
        let tx = self.conn.transaction().at(&self.path)?;
        for (key, value) in [("columns", json.as_str()), ("ingested", "1")] {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .at(&self.path)?;
        }
        tx.commit().at(&self.path)
    }

    /// The CSV header recorded at ingest (empty before).
    pub fn columns(&self) -> Result<Vec<String>> {
        match self.meta("columns")? {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json).map_err(|_| Error::Corrupt {
                path: self.path.clone(),
                column: "meta.columns",
                value: json,
            }),
        }
    }

    /// Appends a line to the campaign's event log.
    pub fn log_event(&mut self, at: UnixMillis, kind: &str, text: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO events (at, kind, text) VALUES (?1, ?2, ?3)")
            .and_then(|mut st| st.execute(params![at, kind, text]))
            .at(&self.path)?;
        Ok(())
    }

    /// The last `limit` events as `(at, kind, text)`, oldest first (newest last,
    /// like [`edm_model::Progress::events`]).
    pub fn recent_events(&self, limit: usize) -> Result<Vec<(UnixMillis, String, String)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT at, kind, text FROM
                   (SELECT id, at, kind, text FROM events ORDER BY id DESC LIMIT ?1)
                 ORDER BY id",
            )
            .at(&self.path)?;
        let rows = st
            .query_map([limit_param(limit)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .at(&self.path)?;
        rows.collect::<rusqlite::Result<_>>().at(&self.path)
    }

    /// Parses a persisted status, or says which column held what.
    pub(crate) fn status(&self, column: &'static str, s: &str) -> Result<Status> {
        Status::parse(s).ok_or_else(|| self.corrupt(column, s))
    }

    /// Parses a persisted category.
    pub(crate) fn category(&self, column: &'static str, s: &str) -> Result<Category> {
        Category::parse(s).ok_or_else(|| self.corrupt(column, s))
    }

    /// Parses a persisted stage.
    pub(crate) fn stage(&self, column: &'static str, s: &str) -> Result<Stage> {
        Stage::parse(s).ok_or_else(|| self.corrupt(column, s))
    }

    /// Parses the JSON array of a row's values.
    pub(crate) fn values(&self, json: &str) -> Result<Vec<String>> {
        parse_values(&self.path, json)
    }

    pub(crate) fn corrupt(&self, column: &'static str, value: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            column,
            value: value.into(),
        }
    }
}

/// Creates `dir` and any missing parents with mode 0700 (umask-independent),
/// and tightens an existing folder named `.edm` (edm's own, holding state and
/// log) to 0700. Other existing folders are left alone: `--state /tmp/x.db`
/// must not change `/tmp`.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    for d in &missing {
        set_mode(d, 0o700)?;
    }
    if missing.is_empty() && dir.file_name().is_some_and(|n| n == ".edm") {
        let _ = set_mode(dir, 0o700);
    }
    Ok(())
}

/// Creates `path` if missing, readable and writable by its owner only, and
/// tightens an existing one to 0600 when it can (a file someone else owns
/// but lets us write keeps its mode: refusing to run would help nobody).
pub fn private_file(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    private_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match tighten(path) {
        Err(_) if existed => Ok(()),
        other => other,
    }
}

/// `OpenOptions` that create files with mode 0600 (on unix).
pub fn private_options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// Sets an existing file to 0600 unless it already is (the umask may have
/// taken bits away, an older build may have left group or world bits).
fn tighten(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        set_mode(path, 0o600)?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Parses the JSON array of a row's values, for callers holding a transaction.
pub(crate) fn parse_values(path: &Path, json: &str) -> Result<Vec<String>> {
    if let Some(values) = plain_values(json) {
        return Ok(values);
    }
    serde_json::from_str(json).map_err(|_| Error::Corrupt {
        path: path.to_path_buf(),
        column: "recipients.fields",
        value: json.to_string(),
    })
}

/// The values of `["a","b",...]` as ingest writes them (serde_json,
/// compact) when no value needs an escape: then every `"` is a delimiter.
/// `None` for anything else (escapes, spaces, other types, bad JSON), which
/// serde_json parses or refuses. Each claimed row's values are parsed: this
/// is ~3× cheaper than serde_json's generic path (issue 11).
fn plain_values(json: &str) -> Option<Vec<String>> {
    if json.contains('\\') {
        return None;
    }
    let inner = json.strip_prefix('[')?.strip_suffix(']')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let inner = inner.strip_prefix('"')?.strip_suffix('"')?;
    let mut values = Vec::with_capacity(8);
    for value in inner.split("\",\"") {
        // A quote left is not a delimiter; a raw control character is not
        // JSON (RFC 8259 §7): serde_json decides.
        if value.bytes().any(|b| b == b'"' || b < 0x20) {
            return None;
        }
        values.push(value.to_owned());
    }
    Some(values)
}

/// A `LIMIT` parameter: SQLite takes an i64.
pub(crate) fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod values_tests {
    use proptest::prelude::*;

    use super::{parse_values, plain_values};

    proptest! {
        /// The fast path reads what ingest writes, exactly as serde_json.
        #[test]
        fn values_round_trip(values in prop::collection::vec(any::<String>(), 0..6)) {
            let json = serde_json::to_string(&values).unwrap();
            prop_assert_eq!(parse_values(std::path::Path::new("t.db"), &json).unwrap(), values);
        }

        /// Whatever the text, the fast path never answers differently from
        /// serde_json (it declines instead).
        #[test]
        fn plain_values_agree_with_serde(json in "[\\[\\]\",a-c\\\\ \\x01é1]{0,12}") {
            if let Some(fast) = plain_values(&json) {
                let slow: Vec<String> = serde_json::from_str(&json).unwrap();
                prop_assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn corrupt_values_are_an_error_naming_the_column() {
        for bad in ["", "[", "[\"a\"", "[\"a\",1]", "{}", "[\"a\" ,\"b\"x]"] {
            let err = parse_values(std::path::Path::new("t.db"), bad).unwrap_err();
            assert!(
                err.to_string().contains("recipients.fields"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse_values(std::path::Path::new("t.db"), "[\"a\", \"b\\\"c\"]").unwrap(),
            vec!["a".to_string(), "b\"c".to_string()]
        );
    }
}
