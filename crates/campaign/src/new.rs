//! `edm new DIR [--provider P]`: a working campaign skeleton for a provider
//! (docs/campaign.md#starting-a-campaign-edm-new). What it writes passes
//! `edm check` as is; the operator then edits the sender, the relay's
//! account and the recipients.

use std::path::{Path, PathBuf};

use crate::Error;

/// Providers `edm new` knows.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NewProvider {
    /// Any SMTP relay (submission port, STARTTLS, AUTH).
    Smtp,
    /// Amazon SES v2 over its HTTP API.
    Ses,
    /// Resend over its HTTP API.
    Resend,
    /// Tencent Cloud SES over SMTP.
    Tencent,
    /// Gmail / Google Workspace over SMTP with an app password.
    Gmail,
}

impl NewProvider {
    /// Every provider, in `--help` order.
    pub const ALL: [NewProvider; 5] = [
        NewProvider::Smtp,
        NewProvider::Ses,
        NewProvider::Resend,
        NewProvider::Tencent,
        NewProvider::Gmail,
    ];

    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NewProvider::Smtp => "smtp",
            NewProvider::Ses => "ses",
            NewProvider::Resend => "resend",
            NewProvider::Tencent => "tencent",
            NewProvider::Gmail => "gmail",
        }
    }

    /// The relay section and the provider's limits, as TOML.
    fn relay(self) -> &'static str {
        match self {
            NewProvider::Smtp => {
                r#"# Your SMTP relay: submission with STARTTLS (RFC 6409), AUTH.
# The password is read from the environment, never written here.
[smtp]
host = "smtp.example.com"
port = 587
security = "starttls"
username = "news@example.com"
password_env = "EDM_SMTP_PASSWORD"

[delivery]
# Messages per second: ask your relay's operator for its limit.
rate = 10
concurrency = 4
"#
            }
            NewProvider::Ses => {
                r#"# Amazon SES v2 over its HTTP API (docs/transports.md). Credentials come
# from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or `profile = "..."`.
# Verify the sender's domain in SES first, and leave the sandbox.
[[relay]]
name = "ses"
kind = "ses"
region = "us-east-1"

[delivery]
# No rate: edm reads the account's MaxSendRate (GetAccount) at start.
concurrency = 4

[limits]
provider = "ses"
"#
            }
            NewProvider::Resend => {
                r#"# Resend over its HTTP API (docs/transports.md). The API key is read from
# $RESEND_API_KEY. Verify the sender's domain at resend.com/domains first.
[[relay]]
name = "resend"
kind = "resend"
api_key_env = "RESEND_API_KEY"

[delivery]
# Resend's default limit is 2 requests per second per team: raise it only
# when Resend has raised yours.
rate = 2
concurrency = 2

[limits]
provider = "resend"
"#
            }
            NewProvider::Tencent => {
                r#"# Tencent Cloud SES over SMTP (implicit TLS on 465). The user is the
# sender address set up in the console, the password its SMTP password.
[smtp]
host = "smtp.qcloudmail.com"
port = 465
security = "tls"
username = "news@example.com"
password_env = "EDM_SMTP_PASSWORD"

[delivery]
rate = 10
concurrency = 4

[limits]
# Tencent's size limits (9 MB message, 1 MB body, base64 attachments).
provider = "tencent"
"#
            }
            NewProvider::Gmail => {
                r#"# Gmail or Google Workspace over SMTP (submission, STARTTLS), with an
# app password (Google account > Security > App passwords).
[smtp]
host = "smtp.gmail.com"
port = 587
security = "starttls"
username = "you@gmail.com"
password_env = "EDM_SMTP_PASSWORD"

[delivery]
# Gmail sends at most 500 recipients a day from a personal account (2,000
# from Workspace) and throttles bursts: slow and steady.
rate = 1
concurrency = 1
daily_quota = 500
"#
            }
        }
    }
}

impl std::str::FromStr for NewProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NewProvider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown provider {s:?}: one of {}",
                    NewProvider::ALL.map(|p| p.as_str()).join(", ")
                )
            })
    }
}

const HTML: &str = r#"<!doctype html>
<html>
<body>
<p>Hello {{first_name}},</p>
<p>This is the first message of our campaign.</p>
<p style="font-size:small">You receive this because you signed up at example.com.
<a href="https://example.com/unsubscribe?email={{email}}">Unsubscribe</a></p>
</body>
</html>
"#;

const TEXT: &str = r#"Hello {{first_name}},

This is the first message of our campaign.

--
You receive this because you signed up at example.com.
Unsubscribe: https://example.com/unsubscribe?email={{email}}
"#;

const CSV: &str = "email,first_name\r\nann@example.com,Ann\r\nbob@example.org,Bob\r\n";

/// Writes a campaign skeleton for `provider` into `dir` (created if
/// missing); refuses a `dir` that exists and is not empty. Returns the files
/// written.
pub fn new_campaign(dir: &Path, provider: NewProvider) -> Result<Vec<PathBuf>, Error> {
    let io = |path: &Path, source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(io(
                    dir,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "not empty: edm new writes only into a new or empty directory",
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir, e)),
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "campaign".into());
    let toml = format!(
        r#"# edm campaign ({provider}): see docs/campaign.md and docs/transports.md.
# Check it with `edm check DIR`, try it with `edm send DIR --test-to you@...`.

[campaign]
name = {name:?}
from = "Example News <news@example.com>"
subject = "Hello {{{{first_name}}}}"
html = "templates/body.html.hbs"
text = "templates/body.txt.hbs"
recipients = "recipients.csv"
# One-click unsubscribe (RFC 8058): Gmail and Yahoo require it for bulk mail.
list_unsubscribe = "https://example.com/unsubscribe?email={{{{email}}}}"

{relay}"#,
        provider = provider.as_str(),
        relay = provider.relay(),
    );
    let files: [(&str, &str); 4] = [
        ("campaign.toml", &toml),
        ("templates/body.html.hbs", HTML),
        ("templates/body.txt.hbs", TEXT),
        ("recipients.csv", CSV),
    ];
    std::fs::create_dir_all(dir.join("templates")).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skeleton_loads_and_names_its_relay() {
        let d = tempfile::tempdir().unwrap();
        for p in NewProvider::ALL {
            let dir = d.path().join(p.as_str());
            new_campaign(&dir, p).unwrap();
            let c = crate::Campaign::load(&dir).unwrap();
            let kind = match p {
                NewProvider::Ses => crate::config::RelayKind::Ses,
                NewProvider::Resend => crate::config::RelayKind::Resend,
                _ => crate::config::RelayKind::Smtp,
            };
            assert_eq!(c.relay_kind(), kind, "{p:?}");
            assert!(c.config.campaign.list_unsubscribe.is_some(), "{p:?}");
        }
    }

    #[test]
    fn a_non_empty_directory_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("notes.txt"), "mine").unwrap();
        let e = new_campaign(d.path(), NewProvider::Smtp)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(!d.path().join("campaign.toml").exists());
    }

    #[test]
    fn providers_parse_by_name() {
        assert_eq!("Resend".parse::<NewProvider>(), Ok(NewProvider::Resend));
        assert!(
            "pigeon"
                .parse::<NewProvider>()
                .unwrap_err()
                .contains("smtp, ses, resend")
        );
    }
}
