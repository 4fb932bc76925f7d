//! Reading a bounce mailbox over IMAP or POP3.
//!
//! The mailbox knows nothing about campaigns: [`process`] hands each message's
//! raw bytes to the caller, who answers with a [`Disposition`]; messages
//! marked [`Disposition::Processed`] are moved to the processed folder (IMAP)
//! or deleted when `delete` is set, and the others are left where they are
//! (one mailbox may serve several campaigns).

mod imap;
mod net;
mod pop3;

use std::path::PathBuf;
use std::time::Duration;

/// Which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Imap,
    Pop3,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (IMAPS 993, POP3S 995).
    Tls,
    /// STARTTLS (IMAP) or STLS (POP3) before authenticating.
    Starttls,
    /// No TLS at all (`security = "none"`): the password crosses the network
    /// in clear, so it is refused unless the host is loopback or
    /// `allow_plaintext_auth` is set, the rule `[smtp]` follows.
    Plain,
}

impl std::str::FromStr for Kind {
    type Err = String;
    /// `[bounces] kind`: `imap` or `pop3`.
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "imap" => Ok(Kind::Imap),
            "pop3" => Ok(Kind::Pop3),
            _ => Err(format!(
                "{s:?} is not a mailbox kind: use \"imap\" or \"pop3\""
            )),
        }
    }
}

impl std::str::FromStr for Security {
    type Err = String;
    /// `[bounces] security`: `tls`, `starttls` or `none`.
    fn from_str(s: &str) -> Result<Security, String> {
        match s {
            "tls" => Ok(Security::Tls),
            "starttls" => Ok(Security::Starttls),
            "none" => Ok(Security::Plain),
            _ => Err(format!(
                "{s:?} is not a security: use \"tls\", \"starttls\" or \"none\""
            )),
        }
    }
}

/// The port when `[bounces] port` is not given: IMAPS 993 and POP3S 995
/// for TLS (RFC 8314 §7.3), 143 and 110 for STARTTLS/STLS and none.
pub fn default_port(kind: Kind, security: Security) -> u16 {
    match (kind, security) {
        (Kind::Imap, Security::Tls) => 993,
        (Kind::Imap, _) => 143,
        (Kind::Pop3, Security::Tls) => 995,
        (Kind::Pop3, _) => 110,
    }
}

/// `[bounces] timeout` when not given: each network step, not the pass.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the mailbox is and how to log in. The password is the secret itself
/// (read by the caller from `password_env`); it is never logged.
#[derive(Clone)]
pub struct MailboxConfig {
    pub kind: Kind,
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: String,
    pub password: String,
    /// IMAP folder to read (default `INBOX`).
    pub folder: String,
    /// IMAP folder applied messages are moved to (default `processed`).
    pub processed_folder: String,
    /// Delete applied messages instead of moving them (POP3 can only delete).
    pub delete: bool,
    /// Extra CA certificate (PEM) to trust, e.g. a self-signed test server.
    pub ca_file: Option<PathBuf>,
    /// Timeout of every network step.
    pub timeout: Duration,
    /// Allow [`Security::Plain`] to a host that is not loopback.
    pub allow_plaintext_auth: bool,
}

impl MailboxConfig {
    /// A configuration with the documented defaults (docs/bounces.md): TLS
    /// on the kind's port, `INBOX`, `processed`, no delete, the system's
    /// CAs, [`DEFAULT_TIMEOUT`], no plaintext password to remote hosts.
    pub fn new(kind: Kind, host: &str, username: &str, password: &str) -> MailboxConfig {
        MailboxConfig {
            kind,
            host: host.to_string(),
            port: default_port(kind, Security::Tls),
            security: Security::Tls,
            username: username.to_string(),
            password: password.to_string(),
            folder: "INBOX".to_string(),
            processed_folder: "processed".to_string(),
            delete: false,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            allow_plaintext_auth: false,
        }
    }
}

impl std::fmt::Debug for MailboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxConfig")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("folder", &self.folder)
            .field("processed_folder", &self.processed_folder)
            .field("delete", &self.delete)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("allow_plaintext_auth", &self.allow_plaintext_auth)
            .finish()
    }
}

/// What to do with a message once the caller has read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Applied: move it to the processed folder, or delete it when `delete`.
    Processed,
    /// Not ours, or not understood: leave it where it is.
    Leave,
}

/// What one pass over the mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub seen: usize,
    pub processed: usize,
    pub left: usize,
}

/// The mailbox could not be read (exit 2 for `edm bounces`).
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("cannot reach {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
    /// The server did not answer one step in time.
    #[error("{server}: no answer within {after:?} ({step})")]
    Timeout {
        server: String,
        step: String,
        after: Duration,
    },
    /// The TLS handshake failed (for example a certificate no trusted CA
    /// signed: set `ca_file`).
    #[error("{server}: TLS failed: {reason}")]
    Tls { server: String, reason: String },
    /// The server refused the username or password.
    #[error("{server}: login refused for {username}: {reason}")]
    Auth {
        server: String,
        username: String,
        reason: String,
    },
    /// The server answered something unexpected, or refused a command.
    #[error("{server}: {reason}")]
    Protocol { server: String, reason: String },
    /// The configuration cannot be used as it is.
    #[error("{0}")]
    Config(String),
}

/// Reads every message of the folder, hands each to `handle`, and disposes
/// of it as answered.
///
/// IMAP reads with `BODY.PEEK[]`, so a message left alone is not even marked
/// `\Seen`; POP3 deletes only with `delete` and otherwise leaves everything
/// (re-reading must then apply nothing twice: that is the caller's job, by
/// message identity). Every network step is bounded by `cfg.timeout`; no
/// error or log line carries the password.
pub async fn process<F>(cfg: &MailboxConfig, handle: F) -> Result<Summary, MailboxError>
where
    F: FnMut(&[u8]) -> Disposition + Send,
{
    check(cfg)?;
    let r = match cfg.kind {
        Kind::Imap => imap::process(cfg, handle).await,
        Kind::Pop3 => pop3::process(cfg, handle).await,
    };
    // Belt and braces: a server that echoes what it was sent must not put
    // the password into an error the caller prints.
    r.map_err(|e| net::redact(e, &cfg.password))
}

/// Refuses what would leak the password or cannot be said to the server.
fn check(cfg: &MailboxConfig) -> Result<(), MailboxError> {
    if cfg.security == Security::Plain && !cfg.allow_plaintext_auth && !net::is_loopback(&cfg.host)
    {
        return Err(MailboxError::Config(format!(
            "refusing to send the mailbox password to {} without TLS: set security = \"tls\" or \"starttls\", or allow_plaintext_auth = true in [bounces]",
            cfg.host
        )));
    }
    // A CR or LF would end the command early and let the rest be read as
    // another command (RFC 9051 §4.3 strings, RFC 1939 §3 lines).
    for (field, value) in [
        ("username", &cfg.username),
        ("password", &cfg.password),
        ("folder", &cfg.folder),
        ("processed_folder", &cfg.processed_folder),
    ] {
        if value.contains(['\r', '\n', '\0']) {
            return Err(MailboxError::Config(format!(
                "[bounces] {field} contains a line break or NUL"
            )));
        }
    }
    // Moving a message to the folder it is in would leave it to be read
    // and applied again on every pass.
    if cfg.kind == Kind::Imap && !cfg.delete && same_folder(&cfg.folder, &cfg.processed_folder) {
        return Err(MailboxError::Config(format!(
            "[bounces] processed_folder {:?} is the folder being read: choose another, or set delete = true",
            cfg.processed_folder
        )));
    }
    // Non-ASCII folder names need modified UTF-7 (RFC 3501 §5.1.3), which
    // this client does not encode: refuse rather than open the wrong one.
    for (field, value) in [
        ("folder", &cfg.folder),
        ("processed_folder", &cfg.processed_folder),
    ] {
        if cfg.kind == Kind::Imap && !value.is_ascii() {
            return Err(MailboxError::Config(format!(
                "[bounces] {field} = {value:?}: only ASCII folder names are supported"
            )));
        }
    }
    Ok(())
}

/// Folder names compare exactly, except INBOX, which is case-insensitive
/// (RFC 3501 §5.1).
fn same_folder(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MailboxConfig {
        MailboxConfig::new(Kind::Imap, "imap.example.com", "u", "p")
    }

    #[test]
    fn config_words_parse() {
        assert_eq!("pop3".parse::<Kind>(), Ok(Kind::Pop3));
        assert_eq!("none".parse::<Security>(), Ok(Security::Plain));
        assert!("imaps".parse::<Kind>().unwrap_err().contains("\"imap\""));
        assert!("ssl".parse::<Security>().is_err());
        assert_eq!(default_port(Kind::Imap, Security::Tls), 993);
        assert_eq!(default_port(Kind::Pop3, Security::Starttls), 110);
        let c = MailboxConfig::new(Kind::Pop3, "h", "u", "p");
        assert_eq!((c.port, c.security), (995, Security::Tls));
        assert_eq!((c.folder.as_str(), c.delete), ("INBOX", false));
    }

    #[test]
    fn what_cannot_be_said_safely_is_refused_before_connecting() {
        let mut c = cfg();
        c.username = "u\r\nA1 DELETE INBOX".into();
        assert!(check(&c).unwrap_err().to_string().contains("username"));
        let mut c = cfg();
        c.processed_folder = "traité".into();
        assert!(check(&c).unwrap_err().to_string().contains("ASCII"));
        let mut c = cfg();
        c.processed_folder = "inbox".into();
        assert!(check(&c).unwrap_err().to_string().contains("delete = true"));
        c.delete = true;
        assert!(check(&c).is_ok());
        let mut c = cfg();
        c.security = Security::Plain;
        assert!(check(&c).is_err());
        c.allow_plaintext_auth = true;
        assert!(check(&c).is_ok());
        c.allow_plaintext_auth = false;
        c.host = "127.0.0.1".into();
        assert!(check(&c).is_ok());
    }

    #[test]
    fn a_pass_can_run_on_a_spawned_task() {
        // `[bounces] poll` runs passes in the background of `edm send`:
        // tokio::spawn needs the future to be Send.
        fn send<T: Send>(_: &T) {}
        let c = cfg();
        let fut = process(&c, |_: &[u8]| Disposition::Leave);
        send(&fut);
    }

    #[test]
    fn debug_hides_the_password() {
        let mut c = cfg();
        c.password = "hunter2".into();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
