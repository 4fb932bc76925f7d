//! [`PgStore`]: the [`CampaignStore`](crate::CampaignStore) seam on
//! PostgreSQL, for a campaign whose state lives in a database the operator
//! already runs, and for several workers sharing one campaign.
//!
//! It keeps the SQLite store's semantics, checked by the same suite
//! (`suite.rs`): the ingest checkpoint and unique key, the claim order, the
//! durable marks, the tallies. What differs is where: one schema `edm` per
//! installation ([`schema`]), many campaigns in it, each a row of
//! `edm.campaigns` identified by its name and a fingerprint; instead of a run
//! lock, `lock_for_run` joins the campaign as a worker (`workers.rs`: a row
//! of `edm.workers` with a lease its heartbeat renews, the recovery of a
//! dead worker's rows, fenced marks and claims); claims use `FOR UPDATE
//! SKIP LOCKED`, so a worker never waits on rows another is claiming.
//!
//! The connection lives on its own thread ([`conn`]): the `postgres` crate
//! cannot be called from inside a tokio runtime, and this store is. That
//! thread also reconnects when the server goes away (a restart, a network
//! cut) and runs the interrupted operation again, up to
//! [`PgOptions::reconnect_for`]; `PgStore::session_hook` then sets up again
//! what lived in the lost session (a worker's session setting). TLS to the server is
//! libpq's `sslmode` and `sslrootcert` on rustls (`tls.rs`).
//!
//! Passwords: never in the URL (refused, see [`PgOptions::parse`]); from
//! `PGPASSWORD` or the variable `[store] password_env` names, handed in as
//! [`PgOptions::password`].

mod conn;
mod ops;
mod retry;
mod schema;
mod tls;
mod workers;

#[cfg(any(test, feature = "pg-fixture"))]
pub mod fixture;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub(crate) use conn::reason;
use conn::{AtPg, Conn, Hook, Outage};

use crate::error::{Error, Result};

/// The schema version this build writes into PostgreSQL.
pub const PG_SCHEMA_VERSION: i32 = schema::VERSION;

/// How long a run waits for a PostgreSQL server that went away before it
/// stops (`[store] reconnect_for`): a restart takes seconds, a failover to
/// a standby a minute or two; past five minutes an operator should look.
pub const DEFAULT_RECONNECT_FOR: Duration = Duration::from_secs(300);

/// How to reach a campaign in PostgreSQL.
#[derive(Clone)]
pub struct PgOptions {
    /// The connection: a `postgres://user@host:port/db` URL or a libpq
    /// `key=value` string, without a password.
    pub url: String,
    /// The password (from `PGPASSWORD` or `[store] password_env`), if any.
    pub password: Option<String>,
    /// The campaign's name (`[campaign] name`).
    pub campaign: String,
    /// What tells this campaign from another of the same name.
    pub fingerprint: String,
    /// This process's name in claims (`claimed_by`): host and pid by default.
    pub worker: String,
    /// How long a lost server is waited for (reconnecting with backoff)
    /// before an operation fails with [`Error::Unreachable`];
    /// [`DEFAULT_RECONNECT_FOR`] unless set.
    pub reconnect_for: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("campaign", &self.campaign)
            .field("fingerprint", &self.fingerprint)
            .field("worker", &self.worker)
            .field("reconnect_for", &self.reconnect_for)
            .finish()
    }
}

impl PgOptions {
    /// Checks `url` and returns the options for `campaign`. A URL (or
    /// `password=` key) holding a password is refused: it would sit in a
    /// config file, a shell history or `ps` output. The refusal never
    /// repeats the URL.
    pub fn parse(
        url: &str,
        password: Option<String>,
        campaign: &str,
        fingerprint: &str,
    ) -> Result<PgOptions> {
        let (rest, _) = tls::split(url)?;
        let config = postgres::Config::from_str(&rest).map_err(|e| Error::StoreConfig {
            message: format!("the store URL does not parse as a PostgreSQL URL ({e})"),
        })?;
        if config.get_password().is_some() {
            return Err(Error::StoreConfig {
                message: "the store URL holds a password; remove it from the URL and give it \
                          in PGPASSWORD or in the variable [store] password_env names"
                    .into(),
            });
        }
        Ok(PgOptions {
            url: url.to_string(),
            password,
            campaign: campaign.to_string(),
            fingerprint: fingerprint.to_string(),
            worker: default_worker(),
            reconnect_for: DEFAULT_RECONNECT_FOR,
        })
    }

    /// Where the campaign lives, for messages: `postgres://user@host:port/db
    /// campaign NAME`. Built from the parsed settings, so it never shows a
    /// password.
    pub fn location(&self) -> PathBuf {
        let shown = tls::split(&self.url)
            .ok()
            .and_then(|(rest, _)| postgres::Config::from_str(&rest).ok())
            .map(|c| describe(&c))
            .unwrap_or_else(|| "postgres".to_string());
        PathBuf::from(format!("{shown} campaign {}", self.campaign))
    }

    /// The connection settings and the TLS connector (see [`tls`]). Every
    /// network step has a limit: the connect timeout, and TCP keepalives
    /// with `tcp_user_timeout` (Linux's `TCP_USER_TIMEOUT`, RFC 5482), so a
    /// server that vanished without closing (a cut cable, a dead host) is
    /// noticed in about half a minute rather than after the kernel's
    /// default of about two hours idle or fifteen minutes of retransmits.
    /// The URL's own values win.
    fn config(&self) -> Result<(postgres::Config, tls::Tls)> {
        let (rest, tls_settings) = tls::split(&self.url)?;
        let mut config = postgres::Config::from_str(&rest).map_err(|e| Error::StoreConfig {
            message: format!("the store URL does not parse as a PostgreSQL URL ({e})"),
        })?;
        if let Some(p) = &self.password {
            config.password(p);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("edm");
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        // Keepalives are on unless the URL says `keepalives=0`; the idle
        // time left at tokio-postgres's default (libpq's: 2 hours) is
        // shortened, the URL's own is kept.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(15));
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(5));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(3);
        }
        let tls = tls::Tls::new(&tls_settings, &mut config)?;
        Ok((config, tls))
    }
}

/// `host:pid`, the default worker name.
fn default_worker() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// This machine's host name (`edm.workers.host`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// `postgres://user@host:port/db` from parsed settings (no password).
fn describe(c: &postgres::Config) -> String {
    let user = c.get_user().unwrap_or("");
    let host = match c.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let db = c.get_dbname().unwrap_or(user);
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("postgres://{at}{host}:{port}/{db}")
}

/// Whether [`PgStore::open_with`] may create the campaign.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// `edm send`: create the campaign's row if missing.
    Create,
    /// `edm status`, `report`, `retry`: the campaign must exist.
    Existing,
}

/// One campaign's state in PostgreSQL (see the module documentation).
pub struct PgStore {
    conn: Conn,
    campaign_id: i64,
    worker: String,
    /// The ids the last claims returned, and the time they were claimed at
    /// (see `retry::claimed_before`).
    claimed: (edm_model::UnixMillis, Vec<i64>),
    /// The highest pending id the last claim took: the next one looks
    /// after it first (see `claim_with_budget`), 0 at first.
    claim_after: i64,
    /// True once this store wrote the "marks used" meta key (see `ops.rs`).
    marks_meta_set: bool,
    /// How it was opened: the heartbeat opens a second connection with it.
    options: PgOptions,
    /// This worker's incarnation once it joined the campaign
    /// (`lock_for_run`, `workers.rs`).
    joined: Option<i64>,
    /// The lease's timings ([`crate::LeaseSettings::from_env`]).
    lease: crate::LeaseSettings,
    /// The daily quota of the next claim (`claim_capped`), taken by it.
    claim_cap: Option<(u64, i64)>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.conn.location())
            .field("campaign_id", &self.campaign_id)
            .field("worker", &self.worker)
            .finish()
    }
}

impl PgStore {
    /// Connects, migrates the `edm` schema and opens (creating if missing)
    /// the campaign named in `options`.
    pub fn open(options: &PgOptions) -> Result<PgStore> {
        PgStore::open_with(options, OpenMode::Create)
    }

    /// Like [`PgStore::open`]; with [`OpenMode::Existing`] a campaign that
    /// is not in the database is [`Error::NotFound`] and nothing is created
    /// (the schema still is migrated: readers of a newer schema are refused).
    ///
    /// A campaign of the same name but another fingerprint is refused with
    /// [`Error::StoreConfig`]: two different campaigns sharing a name would
    /// otherwise be told apart by nothing an operator sees.
    pub fn open_with(options: &PgOptions, mode: OpenMode) -> Result<PgStore> {
        let location = options.location();
        let (config, tls) = options.config()?;
        let conn = Conn::connect(config, tls, location, options.reconnect_for)?;
        let name = options.campaign.clone();
        let fingerprint = options.fingerprint.clone();
        let campaign_id = conn.call(move |client, path, _| {
            schema::migrate(client, path)?;
            let mut tx = client.transaction().at(path)?;
            // Two `edm send` creating the same campaign at once: the second
            // waits here, then finds the row.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&schema::MIGRATION_LOCK],
            )
            .at(path)?;
            let found = tx
                .query_opt(
                    "SELECT id FROM edm.campaigns WHERE name = $1 AND fingerprint = $2",
                    &[&name, &fingerprint],
                )
                .at(path)?;
            if let Some(row) = found {
                let id: i64 = row.get(0);
                tx.commit().at(path)?;
                return Ok(id);
            }
            let others: i64 = tx
                .query_one(
                    "SELECT count(*) FROM edm.campaigns WHERE name = $1",
                    &[&name],
                )
                .at(path)?
                .get(0);
            if others > 0 {
                return Err(Error::StoreConfig {
                    message: format!(
                        "{}: a campaign named {name:?} is already in this database with other \
                         sender inputs (From, Reply-To); give this one another [campaign] name",
                        path.display()
                    ),
                });
            }
            if mode == OpenMode::Existing {
                return Err(Error::NotFound {
                    path: path.to_path_buf(),
                });
            }
            let now = edm_model::now_ms();
            let id: i64 = tx
                .query_one(
                    "INSERT INTO edm.campaigns (name, fingerprint, created_at)
                     VALUES ($1, $2, $3) RETURNING id",
                    &[&name, &fingerprint, &now],
                )
                .at(path)?
                .get(0);
            tx.execute(
                "INSERT INTO edm.meta (campaign_id, key, value) VALUES ($1, 'created_at', $2)",
                &[&id, &now.to_string()],
            )
            .at(path)?;
            tx.commit().at(path)?;
            Ok(id)
        })?;
        let store = PgStore {
            conn,
            campaign_id,
            worker: options.worker.clone(),
            claimed: (0, Vec::new()),
            claim_after: 0,
            marks_meta_set: false,
            options: options.clone(),
            joined: None,
            lease: crate::LeaseSettings::from_env(),
            claim_cap: None,
        };
        store.conn.set_hook(store.session_hook())?;
        Ok(store)
    }

    /// What to do on a new session after the connection was lost, before
    /// the interrupted operation runs again: the session's state is gone
    /// with it. A worker (`workers.rs`) keeps its lease in `edm.workers`,
    /// which outlives the session; only its session's setting (idle
    /// transactions end after half a lease) is set again, and the outage is
    /// written in the campaign's event log (kind `store`), so `edm status`
    /// shows that the run was paused. Called again whenever that state
    /// changes ([`PgStore::lock_for_run`]).
    fn session_hook(&self) -> Hook {
        let id = self.campaign_id;
        let worker_lease = self.joined.map(|_| self.lease.lease_ms());
        Box::new(move |client, path, outage: &Outage| {
            let Some(ms) = worker_lease else {
                return Ok(());
            };
            workers::fence_idle_transactions(client, path, ms)?;
            let text = format!(
                "the PostgreSQL server was unreachable for {:.1} s (connection lost at {} ms); \
                 reconnected, this worker's lease kept (edm.workers), and the interrupted \
                 write repeated",
                outage.lasted.as_secs_f64(),
                outage.since
            );
            // The log, not state: a failure here must not stop the run.
            if let Err(e) = client.execute(
                "INSERT INTO edm.events (campaign_id, at, kind, text) VALUES ($1, $2, 'store', $3)",
                &[&id, &edm_model::now_ms(), &text],
            ) {
                if conn::lost_connection(&e) {
                    return Err(Error::Postgres {
                        path: path.to_path_buf(),
                        cause: e,
                    });
                }
                tracing::warn!(error = %e, "cannot log the store's reconnection");
            }
            Ok(())
        })
    }

    /// The campaign's row in `edm.campaigns`.
    pub fn campaign_id(&self) -> i64 {
        self.campaign_id
    }

    /// The store's location (`postgres://user@host:port/db campaign NAME`).
    pub fn location(&self) -> &Path {
        self.conn.location()
    }
}
