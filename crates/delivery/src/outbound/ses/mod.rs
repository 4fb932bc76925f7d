//! Amazon SES v2 as a [`Transport`]: `SendEmail` with `Content.Raw`, so the
//! message is byte for byte what the SMTP path sends (docs/transports.md).
//!
//! HTTP is reqwest without default features (no aws-lc), on the TLS
//! configuration mail-send builds for SMTP (rustls, ring provider, the
//! platform verifier): one crypto provider in the tree. Requests are signed
//! with our own SigV4 ([`sigv4`]).

pub mod classify;
pub mod sigv4;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use edm_model::{Category, Envelope, Failure, Reply, Stage};

use crate::outbound::session::Afterwards;
use crate::transport::{BoxFuture, Connection, Transport};

/// AWS credentials. `Debug` never shows the secret or the token.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id (`AKIA...`): not a secret, shown in errors.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// The credentials of `profile` in the shared credentials file when a
    /// profile is named; else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    /// `AWS_SESSION_TOKEN`; else the file's `default` profile. The file is
    /// `AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`.
    pub fn load(
        profile: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Credentials, String> {
        let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
        if profile.is_none()
            && let (Some(id), Some(secret)) = (
                nonempty("AWS_ACCESS_KEY_ID"),
                nonempty("AWS_SECRET_ACCESS_KEY"),
            )
        {
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: nonempty("AWS_SESSION_TOKEN"),
            });
        }
        let path = match nonempty("AWS_SHARED_CREDENTIALS_FILE") {
            Some(p) => PathBuf::from(p),
            None => match nonempty("HOME") {
                Some(h) => PathBuf::from(h).join(".aws").join("credentials"),
                None => {
                    return Err("no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set and there is no HOME for ~/.aws/credentials".into());
                }
            },
        };
        let name = profile.unwrap_or("default");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if profile.is_none() {
                format!(
                    "no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and {}: {e}",
                    path.display()
                )
            } else {
                format!("{}: {e}", path.display())
            }
        })?;
        parse_profile(&text, name)
            .map_err(|why| format!("{}: profile [{name}]: {why}", path.display()))
    }
}

/// Reads one profile of an AWS shared credentials file (INI: `[name]`, then
/// `key = value` lines; `#` and `;` start comments).
fn parse_profile(text: &str, name: &str) -> Result<Credentials, String> {
    let mut current: Option<&str> = None;
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut found = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            current = Some(section);
            found |= section == name;
            continue;
        }
        if current != Some(name) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    if !found {
        return Err("no such profile".into());
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err("aws_access_key_id or aws_secret_access_key missing".into()),
    }
}

/// What an SES relay needs.
#[derive(Clone, Debug)]
pub struct SesSettings {
    /// AWS region (`eu-west-1`).
    pub region: String,
    /// Base URL; `https://email.REGION.amazonaws.com` when `None`.
    pub endpoint: Option<String>,
    /// Signing credentials.
    pub credentials: Credentials,
    /// `ConfigurationSetName`, for SES event publishing.
    pub configuration_set: Option<String>,
    /// The campaign's name, sent as the `campaign` email tag.
    pub campaign: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (every request has one).
    pub request_timeout: Duration,
}

/// The account's sending limits (GetAccount `SendQuota`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SendQuota {
    /// Messages per 24 hours.
    pub max_24_hour_send: f64,
    /// Messages per second.
    pub max_send_rate: f64,
    /// Sent in the last 24 hours.
    pub sent_last_24_hours: f64,
}

/// An SES v2 relay.
pub struct SesTransport {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SesSettings,
    base: reqwest::Url,
    host: String,
    client: reqwest::Client,
    tag: String,
}

/// SES tag names and values allow ASCII letters, digits, `_`, `-` and `.`,
/// at most 256 characters (SES v2 `MessageTag`): anything else becomes `_`.
pub fn sanitise_tag(value: &str) -> String {
    let s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

impl SesTransport {
    /// A transport for `settings`.
    pub fn new(settings: SesSettings) -> Result<SesTransport, String> {
        let base = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://email.{}.amazonaws.com", settings.region));
        let base = reqwest::Url::parse(&base).map_err(|e| format!("endpoint {base:?}: {e}"))?;
        let host = match (base.host_str(), base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(format!("endpoint {base}: no host")),
        };
        // mail-send's connector: rustls on ring with the platform verifier,
        // the same trust as the SMTP path and no second crypto provider.
        let tls = mail_send::smtp::tls::build_tls_connector(false)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.config().as_ref().clone())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let tag = sanitise_tag(&settings.campaign);
        Ok(SesTransport {
            inner: Arc::new(Inner {
                settings,
                base,
                host,
                client,
                tag,
            }),
        })
    }

    /// The account's sending quota (SES v2 GetAccount), or `None` when the
    /// endpoint does not offer it (moto answers 404).
    pub async fn send_quota(&self) -> Result<Option<SendQuota>, Failure> {
        let (status, body) = self
            .inner
            .request("GET", "/v2/email/account", Vec::new())
            .await
            .map_err(|(f, _)| f)?;
        if status.as_u16() == 404 {
            tracing::debug!("GetAccount answered 404: the account's quota is not available");
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.inner.error(status.as_u16(), None, &body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let q = &v["SendQuota"];
        Ok(Some(SendQuota {
            max_24_hour_send: q["Max24HourSend"].as_f64().unwrap_or(0.0),
            max_send_rate: q["MaxSendRate"].as_f64().unwrap_or(0.0),
            sent_last_24_hours: q["SentLast24Hours"].as_f64().unwrap_or(0.0),
        }))
    }
}

impl SesTransport {
    /// Whether `identity` (a domain or an address) is verified for sending
    /// (SES v2 GetEmailIdentity), or `None` when the account has no such
    /// identity (404 NotFoundException). Used by `edm check --online`.
    /// moto says `VerifiedForSendingStatus: false` with `VerificationStatus:
    /// SUCCESS` for an identity it created: either counts.
    pub async fn identity_verified(&self, identity: &str) -> Result<Option<bool>, Failure> {
        // The path segment percent-encoded as SigV4's canonical URI wants it.
        let segment: String = identity
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, body) = self
            .inner
            .request(
                "GET",
                &format!("/v2/email/identities/{segment}"),
                Vec::new(),
            )
            .await
            .map_err(|(f, _)| f)?;
        if status.as_u16() == 404 {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Ok(Some(
            v["VerifiedForSendingStatus"].as_bool() == Some(true)
                || v["VerificationStatus"].as_str() == Some("SUCCESS"),
        ))
    }
}

impl Inner {
    /// Signs and sends one request; the error says whether it may have
    /// reached SES.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), (Failure, Afterwards)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let date = sigv4::amz_date(now);
        let creds = &self.settings.credentials;
        let mut headers: Vec<(&str, &str)> = vec![("host", &self.host), ("x-amz-date", &date)];
        if let Some(t) = &creds.session_token {
            headers.push(("x-amz-security-token", t));
        }
        let auth = sigv4::Signer {
            access_key_id: &creds.access_key_id,
            secret_access_key: &creds.secret_access_key,
            region: &self.settings.region,
            service: "ses",
        }
        .authorization(
            &sigv4::Request {
                method,
                path,
                query: "",
                headers: &headers,
                body: &body,
            },
            &date,
        );
        let mut url = self.base.clone();
        url.set_path(path);
        let method = if method == "GET" {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let mut req = self
            .client
            .request(method, url)
            .header("host", &self.host)
            .header("x-amz-date", &date)
            .header("authorization", auth)
            .header("content-type", "application/json");
        if let Some(t) = &creds.session_token {
            req = req.header("x-amz-security-token", t);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?
            .to_vec();
        if !status.is_success() && status.as_u16() != 404 {
            return Err((
                self.error(status.as_u16(), error_type.as_deref(), &bytes),
                Afterwards::Usable,
            ));
        }
        if status.as_u16() == 404
            && path != "/v2/email/account"
            && !path.starts_with("/v2/email/identities/")
        {
            return Err((
                self.error(404, error_type.as_deref(), &bytes),
                Afterwards::Usable,
            ));
        }
        Ok((status, bytes))
    }

    fn error(&self, status: u16, error_type: Option<&str>, body: &[u8]) -> Failure {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let code = classify::error_code(error_type, &v);
        let mut message = classify::error_message(&v);
        if message.is_empty() && !v.is_object() {
            // Not JSON (a proxy's page): keep the start of it.
            message = String::from_utf8_lossy(body).chars().take(200).collect();
        }
        classify::classify(&classify::ApiError {
            status,
            code: &code,
            message: message.trim(),
        })
    }

    /// A request that got no HTTP reply. A failed connect never reached SES;
    /// anything later (a timeout, a reset) may have: in doubt.
    fn transport_error(&self, e: &reqwest::Error) -> (Failure, Afterwards) {
        crate::outbound::http::request_failure(&self.host, e)
    }
}

impl Transport for SesTransport {
    fn describe(&self) -> String {
        format!("SES {}", self.inner.host)
    }

    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
        // reqwest pools the connections itself: a worker's "connection" is a
        // handle on the shared client.
        let inner = self.inner.clone();
        Box::pin(async move { Ok(Box::new(SesConnection { inner }) as Box<dyn Connection>) })
    }
}

struct SesConnection {
    inner: Arc<Inner>,
}

/// The SendEmail request body.
fn send_email_body(inner: &Inner, env: &Envelope) -> Vec<u8> {
    let mut body = serde_json::json!({
        "FromEmailAddress": env.mail_from,
        "Destination": { "ToAddresses": [env.rcpt_to] },
        "Content": { "Raw": { "Data": base64::engine::general_purpose::STANDARD.encode(&env.body) } },
        "EmailTags": [ { "Name": "campaign", "Value": inner.tag } ],
    });
    if let Some(set) = &inner.settings.configuration_set {
        body["ConfigurationSetName"] = serde_json::Value::String(set.clone());
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

impl Connection for SesConnection {
    fn send<'a>(
        &'a mut self,
        env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
        Box::pin(async move {
            let body = send_email_body(&self.inner, env);
            // The durable mark before SES may accept the message: the
            // request is not sent until it is committed.
            if let Err(reason) = before_dot.await {
                return Err((
                    Failure::local(Stage::Data, Category::Protocol, reason),
                    Afterwards::Broken,
                ));
            }
            let (status, bytes) = self
                .inner
                .request("POST", "/v2/email/outbound-emails", body)
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let id = v["MessageId"].as_str().map(str::to_string);
            Ok(Reply {
                code: status.as_u16(),
                enhanced: None,
                text: match &id {
                    Some(id) => format!("OK MessageId {id}"),
                    None => "OK".into(),
                },
                provider_message_id: id,
                relay: None,
            })
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_env_then_profile() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIDEXAMPLE".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t".to_string()),
            _ => None,
        };
        let c = Credentials::load(None, env).unwrap();
        assert_eq!(c.access_key_id, "AKIDEXAMPLE");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        let dir = std::env::temp_dir().join(format!("edm-ses-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n# c\n[mail]\naws_access_key_id=M\naws_secret_access_key = MS\naws_session_token = T\n",
        )
        .unwrap();
        let f = file.to_string_lossy().to_string();
        let env2 = |k: &str| (k == "AWS_SHARED_CREDENTIALS_FILE").then(|| f.clone());
        let m = Credentials::load(Some("mail"), env2).unwrap();
        assert_eq!(
            (m.access_key_id.as_str(), m.session_token.as_deref()),
            ("M", Some("T"))
        );
        assert_eq!(Credentials::load(None, env2).unwrap().access_key_id, "D");
        let err = Credentials::load(Some("nope"), env2).unwrap_err();
        assert!(err.contains("profile [nope]"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    fn transport_to(endpoint: String) -> SesTransport {
        SesTransport::new(SesSettings {
            region: "us-east-1".into(),
            endpoint: Some(endpoint),
            credentials: Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            },
            configuration_set: None,
            campaign: "t".into(),
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(300),
        })
        .unwrap()
    }

    fn envelope() -> Envelope {
        Envelope {
            attempt: Default::default(),
            id: edm_model::RecipientId(1),
            mail_from: "news@acme.example".into(),
            rcpt_to: "a@example.com".into(),
            domain: "example.com".into(),
            message_id: "<m@acme.example>".into(),
            body: b"Subject: x\r\n\r\nx\r\n".to_vec(),
        }
    }

    /// The request went out and no reply came: SES may have accepted the
    /// message, so the recipient is in doubt, never failed or resent blindly.
    #[tokio::test]
    async fn a_timeout_after_the_request_is_in_doubt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, reads, never answers.
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            while tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                .await
                .unwrap_or(0)
                > 0
            {}
        });
        let t = transport_to(format!("http://127.0.0.1:{port}"));
        let mut conn = t.open().await.unwrap();
        let env = envelope();
        let (f, after) = conn
            .send(&env, Box::pin(async { Ok(()) }))
            .await
            .unwrap_err();
        assert_eq!(after, Afterwards::InDoubt, "{f}");
        assert_eq!(f.category, Category::ReadTimeout, "{f}");
        assert!(!f.permanent);
        server.abort();
    }

    /// Nothing listening: the request never left, so it is a plain
    /// transient failure of the relay, not in doubt.
    #[tokio::test]
    async fn a_refused_connect_is_not_in_doubt() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = transport_to(format!("http://127.0.0.1:{port}"));
        let mut conn = t.open().await.unwrap();
        let env = envelope();
        let (f, after) = conn
            .send(&env, Box::pin(async { Ok(()) }))
            .await
            .unwrap_err();
        assert_eq!(after, Afterwards::Broken, "{f}");
        assert_eq!(f.category, Category::ConnectRefused, "{f}");
        assert!(!f.permanent);
    }

    /// A failed durable mark: nothing is sent.
    #[tokio::test]
    async fn no_request_without_the_durable_mark() {
        let t = transport_to("http://127.0.0.1:9".into());
        let mut conn = t.open().await.unwrap();
        let env = envelope();
        let (f, after) = conn
            .send(&env, Box::pin(async { Err("disk full".to_string()) }))
            .await
            .unwrap_err();
        assert_eq!(after, Afterwards::Broken);
        assert!(f.reply.contains("disk full"), "{f}");
    }

    /// Answers one request with `reply` (a whole HTTP response).
    async fn one_reply(reply: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply.as_bytes()).await;
        });
        port
    }

    #[tokio::test]
    async fn get_account_gives_the_quota_and_404_means_not_available() {
        let body = r#"{"SendQuota":{"Max24HourSend":50000.0,"MaxSendRate":14.0,"SentLast24Hours":49990.0}}"#;
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let port = one_reply(reply).await;
        let q = transport_to(format!("http://127.0.0.1:{port}"))
            .send_quota()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (q.max_send_rate, q.max_24_hour_send, q.sent_last_24_hours),
            (14.0, 50000.0, 49990.0)
        );
        let port =
            one_reply("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        let q = transport_to(format!("http://127.0.0.1:{port}"))
            .send_quota()
            .await
            .unwrap();
        assert_eq!(q, None);
    }

    #[test]
    fn tags_are_sanitised() {
        assert_eq!(sanitise_tag("Spring sale 2026/ü"), "Spring_sale_2026__");
        assert_eq!(sanitise_tag(""), "_");
        assert_eq!(sanitise_tag(&"x".repeat(300)).len(), 256);
    }
}
