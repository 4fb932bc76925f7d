//! Reading a bounce mailbox over IMAP or POP3.
//!
//! The mailbox knows nothing about campaigns: [`process`] hands each message's
//! raw bytes to the caller, who answers with a [`Disposition`]; messages
//! marked [`Disposition::Processed`] are moved to the processed folder (IMAP)
//! or deleted when `delete` is set, and the others are left where they are
//! (one mailbox may serve several campaigns).

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
}

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
}

/// Reads every message of the folder, hands each to `handle`, and disposes
/// of it as answered.
///
/// Scaffold: the IMAP and POP3 clients are being written.
pub async fn process<F>(cfg: &MailboxConfig, handle: F) -> Result<Summary, MailboxError>
where
    F: FnMut(&[u8]) -> Disposition + Send,
{
    let _ = handle;
    Err(MailboxError::Other(format!(
        "reading a {:?} mailbox is not built yet",
        cfg.kind
    )))
}
