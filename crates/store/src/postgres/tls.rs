//! TLS to PostgreSQL with rustls (the ring provider, as the rest of edm),
//! driven by libpq's URL keys.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` and refuses
//! libpq's `verify-ca`, `verify-full` and `sslrootcert=`; so those two keys
//! are taken out of the URL here ([`split`]) before the rest is parsed, and
//! become the rustls client configuration ([`Tls`]). As in libpq
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html>, table 34.1):
//!
//! - absent or `disable`: no TLS (edm's default, unlike libpq's `prefer`:
//!   the store's URL said nothing of TLS before this);
//! - `allow`, `prefer`: TLS when the server offers it, else plain; the
//!   certificate is not checked (libpq checks none either);
//! - `require`: TLS or nothing; the certificate is not checked, unless
//!   `sslrootcert` names a CA, which then makes it `verify-ca` (libpq's
//!   rule "for backwards compatibility");
//! - `verify-ca`: the server's certificate must chain to the CA;
//! - `verify-full`: and name the host connected to.
//!
//! The CA is `sslrootcert=FILE` (PEM), or libpq's default
//! `~/.postgresql/root.crt`; a verifying mode without either is refused
//! before connecting, saying so.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::Client;
use postgres::Socket;
use postgres::config::SslMode;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    /// No TLS (absent or `disable`).
    #[default]
    Disable,
    /// TLS if offered, unchecked (`allow`, `prefer`).
    Prefer,
    /// TLS, unchecked unless a CA is named.
    Require,
    /// TLS, chained to the CA.
    VerifyCa,
    /// TLS, chained to the CA and naming the host.
    VerifyFull,
}

/// The TLS keys taken out of a store URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    pub(crate) root_cert: Option<PathBuf>,
}

fn bad(message: String) -> Error {
    Error::StoreConfig { message }
}

fn mode(value: &str) -> Result<Mode> {
    Ok(match value {
        "disable" => Mode::Disable,
        "allow" | "prefer" => Mode::Prefer,
        "require" => Mode::Require,
        "verify-ca" => Mode::VerifyCa,
        "verify-full" => Mode::VerifyFull,
        other => {
            return Err(bad(format!(
                "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            )));
        }
    })
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL or
/// a libpq `key=value` string): what is left is for `postgres::Config`.
pub(crate) fn split(url: &str) -> Result<(String, Settings)> {
    let mut settings = Settings::default();
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => settings.mode = mode(value)?,
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(&percent_decode(k), &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(url)? {
            if !take(&k, &v)? {
                let quoted = v.replace('\\', "\\\\").replace('\'', "\\'");
                kept.push(format!("{k}='{quoted}'"));
            }
        }
        kept.join(" ")
    };
    Ok((rest, settings))
}

/// `%XX` escapes of a URL's query, as tokio-postgres reads them.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `key = value` pairs; a value may be quoted with `'`, with `\`
/// escaping inside.
fn key_values(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    let unterminated = || bad("the store URL has an unterminated quoted value".into());
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(format!(
                "the store URL's {key:?} has no value (key=value)"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(unterminated()),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(unterminated)?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push((key, value));
    }
}

/// How to connect: plain, or rustls with a verifier.
#[derive(Clone)]
pub(crate) enum Tls {
    /// No TLS.
    Off,
    /// TLS (`sslmode` other than disable).
    On(MakeRustls),
}

impl Tls {
    /// Builds the connector for `settings` and sets the matching
    /// tokio-postgres `ssl_mode` on `config`.
    pub(crate) fn new(settings: &Settings, config: &mut postgres::Config) -> Result<Tls> {
        let (ssl_mode, verify) = match settings.mode {
            Mode::Disable => {
                config.ssl_mode(SslMode::Disable);
                return Ok(Tls::Off);
            }
            Mode::Prefer => (SslMode::Prefer, None),
            Mode::Require if settings.root_cert.is_none() => (SslMode::Require, None),
            Mode::Require | Mode::VerifyCa => (SslMode::Require, Some(false)),
            Mode::VerifyFull => (SslMode::Require, Some(true)),
        };
        config.ssl_mode(ssl_mode);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            None => Arc::new(Unchecked(provider.clone())),
            Some(full) => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let roots = roots(settings, home.as_deref())?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| bad(format!("sslrootcert: {e}")))?;
                if full {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Tls::On(MakeRustls(Arc::new(client))))
    }

    /// Opens a session with `config`.
    pub(crate) fn connect(
        &self,
        config: &postgres::Config,
    ) -> std::result::Result<Client, postgres::Error> {
        match self {
            Tls::Off => config.connect(postgres::NoTls),
            Tls::On(make) => config.connect(make.clone()),
        }
    }
}

/// The CA certificates of `sslrootcert` (or libpq's default file).
fn roots(settings: &Settings, home: Option<&Path>) -> Result<rustls::RootCertStore> {
    let path = match &settings.root_cert {
        Some(p) => p.clone(),
        None => {
            let default = home
                .map(|h| h.join(".postgresql/root.crt"))
                .filter(|p| p.is_file());
            default.ok_or_else(|| {
                bad(
                    "sslmode=verify-ca and verify-full check the server's certificate against \
                     a CA: name its certificate with sslrootcert=FILE in the store URL \
                     (libpq's default ~/.postgresql/root.crt does not exist)"
                        .into(),
                )
            })?
        }
    };
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| bad(format!("sslrootcert={shown}: cannot read it: {e}")))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(format!(
                "sslrootcert={shown}: not a PEM certificate file: {e}"
            ))
        })?;
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad(format!(
            "sslrootcert={shown}: holds no usable CA certificate"
        )));
    }
    Ok(store)
}

/// `verify-ca`: the chain is checked, the name is not (libpq's meaning).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a CA: encrypted, but the certificate is
/// not checked (libpq's meaning: it protects against eavesdropping, not
/// against a server in the middle). The handshake signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's `MakeTlsConnect` over tokio-rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
            name,
        })
    }
}

/// One TLS handshake to come.
pub(crate) struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let s = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS session over the server's socket.
pub(crate) struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl postgres::tls::TlsStream for RustlsStream {
    /// No channel binding: SCRAM then authenticates without it (the server
    /// accepts that unless `channel_binding=require` is asked for).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_leave_the_url_and_the_rest_stays() {
        let (rest, s) = split(
            "postgres://edm@db:5432/edm?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://edm@db:5432/edm?application_name=x");
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some(Path::new("/tmp/ca.pem")));
        let (rest, s) = split("postgres://edm@db/edm?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), s.mode),
            ("postgres://edm@db/edm", Mode::Require)
        );
        let (rest, s) =
            split("host=db user=edm sslmode = verify-ca sslrootcert='/a b/c\\'a.pem'").unwrap();
        assert_eq!(rest, "host='db' user='edm'");
        assert_eq!(s.mode, Mode::VerifyCa);
        assert_eq!(s.root_cert.as_deref(), Some(Path::new("/a b/c'a.pem")));
        assert_eq!(
            split("postgres://edm@db/edm").unwrap().1,
            Settings::default()
        );
        let err = split("postgres://edm@db/edm?sslmode=maybe").unwrap_err();
        assert!(err.to_string().contains("sslmode=\"maybe\""), "{err}");
        assert!(split("host='db").is_err());
    }

    #[test]
    fn a_verifying_mode_without_a_ca_is_refused_before_connecting() {
        let mut config = postgres::Config::new();
        let settings = Settings {
            mode: Mode::VerifyFull,
            root_cert: Some(PathBuf::from("/nonexistent/edm-ca.pem")),
        };
        let err = Tls::new(&settings, &mut config).err().unwrap().to_string();
        assert!(
            err.contains("sslrootcert=/nonexistent/edm-ca.pem: cannot read it"),
            "{err}"
        );
        // No CA at all: said so (a HOME without ~/.postgresql/root.crt).
        let home = tempfile::tempdir().unwrap();
        let no_ca = Settings {
            mode: Mode::VerifyCa,
            root_cert: None,
        };
        let err = roots(&no_ca, Some(home.path())).err().unwrap().to_string();
        assert!(
            err.contains("name its certificate with sslrootcert=FILE"),
            "{err}"
        );
        // Plain by default, unchecked TLS for require.
        assert!(matches!(
            Tls::new(&Settings::default(), &mut config).unwrap(),
            Tls::Off
        ));
        assert!(matches!(
            Tls::new(
                &Settings {
                    mode: Mode::Require,
                    root_cert: None
                },
                &mut config
            )
            .unwrap(),
            Tls::On(_)
        ));
    }
}
