//! Where a campaign's state lives: the SQLite file (the default, nothing to
//! set up) or PostgreSQL (`[store] url`, `--store URL`, `EDM_STORE_URL`;
//! docs/scaling.md). Every command that opens the state asks here, and gets
//! a `Box<dyn CampaignStore>`: the rest of edm never knows which.
//!
//! In PostgreSQL a campaign is identified by its name and the hash of its
//! sender (From, Reply-To, name: [`crate::fingerprint::sender_hash`]), the
//! part of the inputs that is in every Message-ID: two campaigns that share
//! a name by accident are refused rather than mixed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edm_store::{CampaignStore, Durability, OpenMode, PgOptions, PgStore, Store};

use crate::Error;
use crate::config::Campaign;

/// The environment variable that names the store when neither `--store` nor
/// `[store] url` does.
pub const STORE_URL_ENV: &str = "EDM_STORE_URL";

/// The password's variable when `[store] password_env` names none (libpq's).
const DEFAULT_PASSWORD_ENV: &str = "PGPASSWORD";

/// How long the operator's commands (`status`, `report`, `retry`,
/// `bounces`, `watch`) wait for a PostgreSQL server that went away: a
/// person is waiting at the terminal, and running the command again is
/// cheap; a run waits `[store] reconnect_for`.
const COMMAND_RECONNECT_FOR: Duration = Duration::from_secs(10);

/// Checks a store URL without connecting: PostgreSQL only, no password.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    PgOptions::parse(url, None, "", "")
        .map(|_| ())
        .map_err(|e| match e {
            edm_store::Error::StoreConfig { message } => message,
            other => other.to_string(),
        })
}

impl Campaign {
    /// Applies `--store URL` and `EDM_STORE_URL` over `[store] url` (in that
    /// order of precedence), and refuses them together with a state file
    /// (`--state` or `[state] path`): the state lives in one place.
    pub fn choose_store(
        &mut self,
        cli_url: Option<String>,
        cli_state: Option<&Path>,
    ) -> Result<(), Error> {
        let env = std::env::var(STORE_URL_ENV).ok().filter(|v| !v.is_empty());
        self.choose_store_from(cli_url, env, cli_state)
    }

    /// [`Campaign::choose_store`] with the environment's value given.
    pub(crate) fn choose_store_from(
        &mut self,
        cli_url: Option<String>,
        env_url: Option<String>,
        cli_state: Option<&Path>,
    ) -> Result<(), Error> {
        let (url, from) = match (cli_url, env_url) {
            (Some(u), _) => (Some(u), "--store"),
            (None, Some(u)) => (Some(u), STORE_URL_ENV),
            (None, None) => (self.config.store.url.clone(), "[store] url"),
        };
        let Some(url) = url else {
            return Ok(());
        };
        let bad = |message: String| Error::Config {
            file: self.file.clone(),
            message,
        };
        if cli_state.is_some() {
            return Err(bad(format!(
                "{from} and --state together: the state lives in one place; \
                 keep one of them"
            )));
        }
        if self.config.state.path.is_some() {
            return Err(bad(format!(
                "{from} and [state] path together: the state lives in one place; \
                 drop [state] path to use PostgreSQL"
            )));
        }
        check_url(&url).map_err(|e| bad(format!("{from}: {e}")))?;
        self.config.store.url = Some(url);
        Ok(())
    }

    /// True when the state lives in PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.config.store.url.is_some()
    }
}

/// The options of the campaign's PostgreSQL store, `None` for SQLite.
pub(crate) fn pg_options(c: &Campaign) -> Result<Option<PgOptions>, Error> {
    let Some(url) = &c.config.store.url else {
        return Ok(None);
    };
    let var = c
        .config
        .store
        .password_env
        .as_deref()
        .unwrap_or(DEFAULT_PASSWORD_ENV);
    let password = std::env::var(var).ok();
    if password.is_none() && c.config.store.password_env.is_some() {
        return Err(Error::Config {
            file: c.file.clone(),
            message: format!(
                "[store] password_env = {var:?}: the variable {var} is not set \
                 (it holds the PostgreSQL password)"
            ),
        });
    }
    let cfg = &c.config.campaign;
    let mut options = PgOptions::parse(
        url,
        password,
        &cfg.name,
        &crate::fingerprint::sender_hash(cfg),
    )?;
    if let Some(bound) = c.config.store.reconnect_for {
        options.reconnect_for = bound;
    }
    Ok(Some(options))
}

/// Where the state is, for messages and `edm status`: the SQLite file, or
/// `postgres://user@host:port/db campaign NAME`.
pub(crate) fn location(c: &Campaign, state: Option<&Path>) -> PathBuf {
    match pg_options(c) {
        Ok(Some(o)) => o.location(),
        _ => state
            .map(Path::to_path_buf)
            .unwrap_or_else(|| c.state_path()),
    }
}

/// The state for a run (`edm send`): created if missing. `worker` names
/// this worker in PostgreSQL (`--worker`; default `host:pid`).
pub(crate) fn open_for_run(
    c: &Campaign,
    state: &Path,
    durability: Durability,
    worker: Option<&str>,
) -> Result<Box<dyn CampaignStore>, Error> {
    match (pg_options(c)?, worker) {
        (Some(o), Some(w)) => Ok(Box::new(PgStore::open(&o.with_worker(w))?)),
        (Some(o), None) => Ok(Box::new(PgStore::open(&o)?)),
        (None, _) => Ok(Box::new(Store::open(state, durability)?)),
    }
}

/// The PostgreSQL state of an existing campaign, for the operator's
/// commands; `None` when the state is a SQLite file. A campaign that is not
/// in the database is [`Error::NoState`].
pub(crate) fn open_existing_pg(c: &Campaign) -> Result<Option<Box<dyn CampaignStore>>, Error> {
    let Some(mut o) = pg_options(c)? else {
        return Ok(None);
    };
    o.reconnect_for = o.reconnect_for.min(COMMAND_RECONNECT_FOR);
    match PgStore::open_with(&o, OpenMode::Existing) {
        Ok(s) => Ok(Some(Box::new(s))),
        Err(edm_store::Error::NotFound { path }) => Err(Error::NoState(path)),
        Err(e) => Err(e.into()),
    }
}

/// An existing campaign's state, wherever it lives, for the commands that
/// read or change it after a run (`status`, `report`, `retry`, `bounces`,
/// and the bounce mailbox read during `edm send`): PostgreSQL when the
/// campaign names a store, else the SQLite file (`state`, or the default),
/// read-only unless `write`. A state that does not exist is
/// [`Error::NoState`]: these commands never create one.
pub fn open_existing(
    c: &Campaign,
    state: Option<&Path>,
    write: bool,
) -> Result<Box<dyn CampaignStore>, Error> {
    if let Some(pg) = open_existing_pg(c)? {
        return Ok(pg);
    }
    let path = state
        .map(Path::to_path_buf)
        .unwrap_or_else(|| c.state_path());
    if !path.exists() {
        return Err(Error::NoState(path));
    }
    if write {
        Ok(Box::new(Store::open(&path, Durability::Normal)?))
    } else {
        Ok(Box::new(Store::open_read_only(&path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(extra: &str) -> (tempfile::TempDir, Campaign) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("campaign.toml"),
            format!(
                "[campaign]\nname = \"c\"\nfrom = \"a@example.com\"\nsubject = \"s\"\n\
                 text = \"t.txt\"\nrecipients = \"r.csv\"\n[smtp]\nhost = \"127.0.0.1\"\n{extra}"
            ),
        )
        .unwrap();
        let c = Campaign::load(d.path()).unwrap();
        (d, c)
    }

    #[test]
    fn store_url_precedence_and_exclusions() {
        let (_d, mut c) = campaign("[store]\nurl = \"postgres://edm@db/edm\"\n");
        assert!(c.uses_postgres());
        c.choose_store_from(None, Some("postgres://env@db/edm".into()), None)
            .unwrap();
        assert_eq!(c.config.store.url.as_deref(), Some("postgres://env@db/edm"));
        c.choose_store_from(
            Some("postgres://cli@db/edm".into()),
            Some("postgres://env@db/edm".into()),
            None,
        )
        .unwrap();
        assert_eq!(c.config.store.url.as_deref(), Some("postgres://cli@db/edm"));
        let err = c
            .choose_store_from(None, None, Some(Path::new("x.db")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[store] url and --state together"), "{err}");
        let err = c
            .choose_store_from(Some("postgres://u:hunter2@db/edm".into()), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--store: the store URL holds a password"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");

        let (_d, mut plain) = campaign("");
        plain.choose_store_from(None, None, None).unwrap();
        assert!(!plain.uses_postgres(), "SQLite stays the default");
        plain
            .choose_store_from(None, None, Some(Path::new("x.db")))
            .unwrap();
        assert!(!plain.uses_postgres());
        let err = plain
            .choose_store_from(
                None,
                Some("postgres://e@db/x".into()),
                Some(Path::new("x.db")),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("EDM_STORE_URL and --state together"), "{err}");
    }

    #[test]
    fn store_table_is_checked_at_load() {
        let d = tempfile::tempdir().unwrap();
        let write = |extra: &str| {
            std::fs::write(
                d.path().join("campaign.toml"),
                format!(
                    "[campaign]\nname = \"c\"\nfrom = \"a@example.com\"\nsubject = \"s\"\n\
                     text = \"t.txt\"\nrecipients = \"r.csv\"\n[smtp]\nhost = \"h\"\n{extra}"
                ),
            )
            .unwrap();
            Campaign::load(d.path())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let err = write("[store]\nurl = \"postgres://u:pw-in-file@db/edm\"\n");
        assert!(
            err.contains("[store] url: the store URL holds a password"),
            "{err}"
        );
        assert!(!err.contains("pw-in-file"), "{err}");
        let err = write("[store]\nurl = \"postgres://u@db/edm\"\n[state]\npath = \"s.db\"\n");
        assert!(
            err.contains("[store] url and [state] path together"),
            "{err}"
        );
        let err = write("[store]\nurl = \"postgres://u@db/edm\"\npassword_env = \" \"\n");
        assert!(err.contains("password_env must name"), "{err}");
        let err = write("[store]\nurl = \"postgres://u@db/edm\"\nuser = \"x\"\n");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn reconnect_for_is_the_runs_bound_and_commands_wait_less() {
        let (_d, mut c) = campaign("[store]\nurl = \"postgres://edm@db/edm\"\n");
        c.choose_store_from(None, None, None).unwrap();
        let o = pg_options(&c).unwrap().unwrap();
        assert_eq!(o.reconnect_for, edm_store::postgres::DEFAULT_RECONNECT_FOR);
        let (_d, mut c) =
            campaign("[store]\nurl = \"postgres://edm@db/edm\"\nreconnect_for = \"90s\"\n");
        c.choose_store_from(None, None, None).unwrap();
        let o = pg_options(&c).unwrap().unwrap();
        assert_eq!(o.reconnect_for, Duration::from_secs(90));
        assert!(COMMAND_RECONNECT_FOR < o.reconnect_for);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("campaign.toml"),
            "[campaign]\nname = \"c\"\nfrom = \"a@example.com\"\nsubject = \"s\"\n\
             text = \"t.txt\"\nrecipients = \"r.csv\"\n[smtp]\nhost = \"h\"\n\
             [store]\nurl = \"postgres://u@db/edm\"\nreconnect_for = \"soon\"\n",
        )
        .unwrap();
        let err = Campaign::load(d.path())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad duration \"soon\""), "{err}");
    }

    #[test]
    fn a_named_password_variable_must_be_set() {
        let (_d, mut c) = campaign(
            "[store]\nurl = \"postgres://edm@db/edm\"\npassword_env = \"EDM_TEST_PG_PW_SURELY_UNSET\"\n",
        );
        c.choose_store_from(None, None, None).unwrap();
        let err = pg_options(&c).unwrap_err().to_string();
        assert!(
            err.contains("EDM_TEST_PG_PW_SURELY_UNSET is not set"),
            "{err}"
        );
    }
}
