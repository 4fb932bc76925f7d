//! What IMAP and POP3 share: the TCP connection, TLS, and one timeout per
//! network step.

use std::future::Future;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig};

use super::{MailboxConfig, MailboxError};

/// A byte stream, plain or TLS, that both clients read and write.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}
pub(super) type Stream = Box<dyn Io>;

/// `host:port`, how every error names the server.
pub(super) fn server(cfg: &MailboxConfig) -> String {
    if cfg.host.contains(':') {
        format!("[{}]:{}", cfg.host, cfg.port)
    } else {
        format!("{}:{}", cfg.host, cfg.port)
    }
}

/// Runs one network step under `cfg.timeout`; `step` says what was being
/// waited for when the time ran out.
pub(super) async fn step<T, E, F>(
    cfg: &MailboxConfig,
    step: &str,
    fut: F,
    err: impl FnOnce(E) -> MailboxError,
) -> Result<T, MailboxError>
where
    F: Future<Output = Result<T, E>>,
{
    match tokio::time::timeout(cfg.timeout, fut).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(MailboxError::Timeout {
            server: server(cfg),
            step: step.to_string(),
            after: cfg.timeout,
        }),
    }
}

/// A protocol error naming the server.
pub(super) fn protocol(cfg: &MailboxConfig, reason: impl Into<String>) -> MailboxError {
    MailboxError::Protocol {
        server: server(cfg),
        reason: reason.into(),
    }
}

/// TCP to the server, under the timeout (name resolution included).
pub(super) async fn connect(cfg: &MailboxConfig) -> Result<TcpStream, MailboxError> {
    let tcp = step(
        cfg,
        "connecting",
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
        |e| MailboxError::Connect {
            host: cfg.host.clone(),
            port: cfg.port,
            reason: e.to_string(),
        },
    )
    .await?;
    // Commands and replies are short and alternate: without this each
    // round trip can wait for a delayed ACK (the SMTP side measured 40 ms).
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS client: the platform's trust store (as mail-send's SMTP
/// connector), plus the certificates of `ca_file` when set; rustls on ring,
/// the provider the rest of edm uses.
pub(super) fn connector(cfg: &MailboxConfig) -> Result<TlsConnector, MailboxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match &cfg.ca_file {
        None => Vec::new(),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    MailboxError::Config(format!(
                        "[bounces] ca_file {}: cannot read a PEM certificate: {e}",
                        path.display()
                    ))
                })?;
            if certs.is_empty() {
                return Err(MailboxError::Config(format!(
                    "[bounces] ca_file {}: no certificate in it",
                    path.display()
                )));
            }
            certs
        }
    };
    let tls_err = |e: rustls::Error| MailboxError::Tls {
        server: server(cfg),
        reason: e.to_string(),
    };
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(tls_err)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The TLS handshake over `io`, under the timeout.
pub(super) async fn handshake<S>(
    cfg: &MailboxConfig,
    tls: &TlsConnector,
    io: S,
) -> Result<Stream, MailboxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let name = ServerName::try_from(cfg.host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| MailboxError::Config(format!("[bounces] host {:?}: {e}", cfg.host)))?
        .to_owned();
    let s = step(cfg, "the TLS handshake", tls.connect(name, io), |e| {
        let reason = e.to_string();
        let hint = tls_hint(&reason, &cfg.host);
        MailboxError::Tls {
            server: server(cfg),
            reason: format!("{reason}{hint}"),
        }
    })
    .await?;
    Ok(Box::new(s))
}

/// What to do about the certificate errors people meet with their own
/// servers.
fn tls_hint(reason: &str, host: &str) -> String {
    if reason.contains("UnknownIssuer") {
        " (no CA the system trusts signed the server's certificate: set [bounces] ca_file to the CA's certificate, PEM)".into()
    } else if reason.contains("CaUsedAsEndEntity") {
        // webpki refuses a certificate marked CA:TRUE as the server's own,
        // and `openssl req -x509` marks it so by default.
        " (the server's self-signed certificate is marked as a CA, which is refused as a server's certificate: make it with -addext basicConstraints=critical,CA:FALSE, or sign it with a separate CA and set ca_file to that CA)".into()
    } else if reason.contains("NotValidForName") {
        format!(" (the certificate does not name {host})")
    } else {
        String::new()
    }
}

/// 127.0.0.0/8, ::1 and `localhost` (RFC 6761 §6.3): nothing leaves the
/// machine. Same rule as the SMTP side's `allow_plaintext_auth`.
pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Replaces the password wherever an error's text might carry it.
pub(super) fn redact(e: MailboxError, password: &str) -> MailboxError {
    if password.is_empty() || !e.to_string().contains(password) {
        return e;
    }
    let clean = |s: String| s.replace(password, "<redacted>");
    match e {
        MailboxError::Connect { host, port, reason } => MailboxError::Connect {
            host,
            port,
            reason: clean(reason),
        },
        MailboxError::Other(s) => MailboxError::Other(clean(s)),
        MailboxError::Timeout {
            server,
            step,
            after,
        } => MailboxError::Timeout {
            server,
            step: clean(step),
            after,
        },
        MailboxError::Tls { server, reason } => MailboxError::Tls {
            server,
            reason: clean(reason),
        },
        MailboxError::Auth {
            server,
            username,
            reason,
        } => MailboxError::Auth {
            server,
            username: clean(username),
            reason: clean(reason),
        },
        MailboxError::Protocol { server, reason } => MailboxError::Protocol {
            server,
            reason: clean(reason),
        },
        MailboxError::Config(s) => MailboxError::Config(clean(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_the_password_from_every_field() {
        let e = MailboxError::Auth {
            server: "h:1".into(),
            username: "u".into(),
            reason: "BAD LOGIN u hunter2".into(),
        };
        let text = redact(e, "hunter2").to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn loopback_names() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("imap.example.com"));
        assert!(!is_loopback("evil.localhost"));
    }
}
