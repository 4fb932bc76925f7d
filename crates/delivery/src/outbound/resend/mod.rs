//! Resend as a [`Transport`]: `POST /emails` with the message as fields
//! (docs/transports.md). The same HTTP client as the SES transport: reqwest
//! without default features, on mail-send's rustls configuration (ring).
//!
//! Every request carries an `Idempotency-Key` derived from the recipient's
//! deterministic Message-ID, and the body for a recipient is the same bytes
//! on every attempt ([`message`]): a request repeated after a crash or a
//! timeout within Resend's 24-hour window gets the first response back
//! instead of a second delivery.

pub mod classify;
pub mod message;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use edm_model::{Category, Envelope, Failure, Reply, Stage};
use sha2::Digest as _;

use crate::outbound::session::Afterwards;
use crate::transport::{BoxFuture, Connection, Transport};

/// Resend's API.
pub const DEFAULT_ENDPOINT: &str = "https://api.resend.com";

/// Resend's default request rate: "Every customer will have a rate limit of
/// 2 requests per second by default" (resend.com/changelog/api-rate-limit).
pub const DEFAULT_RATE: f64 = 2.0;

/// An API key. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key read from the environment.
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// What a Resend relay needs.
#[derive(Clone, Debug)]
pub struct ResendSettings {
    /// Base URL; [`DEFAULT_ENDPOINT`] when `None`.
    pub endpoint: Option<String>,
    /// The API key.
    pub api_key: ApiKey,
    /// The campaign's name, sent as the `campaign` tag.
    pub campaign: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (every request has one).
    pub request_timeout: Duration,
}

/// What `GET /domains` says about the sender's domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainCheck {
    /// Listed with status `verified`.
    Verified,
    /// Listed with another status (`pending`, `failed`, `not_started`...).
    NotVerified(String),
    /// Not in the account's domains.
    Missing,
    /// The key may only send (`401 restricted_api_key`): it is valid, but
    /// the domains cannot be read with it.
    SendingOnlyKey,
}

/// A Resend relay.
pub struct ResendTransport {
    inner: Arc<Inner>,
}

struct Inner {
    base: reqwest::Url,
    host: String,
    client: reqwest::Client,
    key: ApiKey,
    tag: String,
}

/// The `Idempotency-Key` for a recipient: `edm/` and its Message-ID (which
/// edm derives from the campaign and the address, the same on every
/// attempt), hashed when that would pass Resend's 256 characters.
pub fn idempotency_key(message_id: &str) -> String {
    let id = message_id.trim_start_matches('<').trim_end_matches('>');
    if id.len() <= 250 && id.bytes().all(|b| b.is_ascii_graphic()) {
        format!("edm/{id}")
    } else {
        let digest = sha2::Sha256::digest(id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("edm/sha256/{hex}")
    }
}

impl ResendTransport {
    /// A transport for `settings`.
    pub fn new(settings: ResendSettings) -> Result<ResendTransport, String> {
        let base = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into());
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
        Ok(ResendTransport {
            inner: Arc::new(Inner {
                base,
                host,
                client,
                key: settings.api_key,
                tag: message::sanitise_tag(&settings.campaign),
            }),
        })
    }

    /// Checks the key without sending (`GET /domains`) and says whether
    /// `domain` (the sender's) is a verified domain of the account.
    pub async fn check_domain(&self, domain: &str) -> Result<DomainCheck, Failure> {
        let url = self.inner.url("/domains");
        let resp = self
            .inner
            .client
            .get(url)
            .bearer_auth(&self.inner.key.0)
            .send()
            .await
            .map_err(|e| self.inner.transport_error(&e).0)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.inner.transport_error(&e).0)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if !(200..300).contains(&status) {
            let name = v["name"].as_str().unwrap_or("");
            if status == 401 && name == "restricted_api_key" {
                return Ok(DomainCheck::SendingOnlyKey);
            }
            return Err(self.inner.error(status, &bytes, None));
        }
        let domain = domain.to_ascii_lowercase();
        let found = v["data"].as_array().and_then(|list| {
            list.iter()
                .find(|d| d["name"].as_str().map(str::to_ascii_lowercase) == Some(domain.clone()))
        });
        Ok(match found {
            None => DomainCheck::Missing,
            Some(d) => match d["status"].as_str().unwrap_or("") {
                "verified" => DomainCheck::Verified,
                other => DomainCheck::NotVerified(other.to_string()),
            },
        })
    }
}

impl Inner {
    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}{path}"));
        url
    }

    fn error(&self, status: u16, body: &[u8], retry_after: Option<Duration>) -> Failure {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let name = v["name"].as_str().unwrap_or("").to_string();
        let mut message = v["message"].as_str().unwrap_or("").to_string();
        if message.is_empty() && !v.is_object() {
            // Not JSON (a proxy's page): keep the start of it.
            message = String::from_utf8_lossy(body).chars().take(200).collect();
        }
        classify::classify(
            &classify::ApiError {
                status,
                name: &name,
                message: message.trim(),
            },
            retry_after,
        )
    }

    /// A request that got no HTTP reply. A failed connect never reached
    /// Resend; anything later (a timeout, a reset) may have: in doubt, as
    /// for SES. The idempotency key makes the later resend of such a
    /// recipient safe within Resend's window (docs/resume.md).
    fn transport_error(&self, e: &reqwest::Error) -> (Failure, Afterwards) {
        crate::outbound::http::request_failure(&self.host, e)
    }
}

impl Transport for ResendTransport {
    fn describe(&self) -> String {
        format!("Resend {}", self.inner.host)
    }

    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
        // reqwest pools the connections itself: a worker's "connection" is a
        // handle on the shared client.
        let inner = self.inner.clone();
        Box::pin(async move { Ok(Box::new(ResendConnection { inner }) as Box<dyn Connection>) })
    }
}

struct ResendConnection {
    inner: Arc<Inner>,
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Connection for ResendConnection {
    fn send<'a>(
        &'a mut self,
        env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
        Box::pin(async move {
            let inner = &self.inner;
            let body = match message::send_email(env, &inner.tag)
                .and_then(|m| serde_json::to_vec(&m).map_err(|e| e.to_string()))
            {
                Ok(b) => b,
                Err(why) => {
                    // Nothing was sent: about this message only.
                    return Err((
                        Failure::local(Stage::Data, Category::ContentRejected, why),
                        Afterwards::Usable,
                    ));
                }
            };
            // The durable mark before Resend may accept the message: the
            // request is not sent until it is committed.
            if let Err(reason) = before_dot.await {
                return Err((
                    Failure::local(Stage::Data, Category::Protocol, reason),
                    Afterwards::Broken,
                ));
            }
            let key = idempotency_key(&env.message_id);
            let resp = inner
                .client
                .post(inner.url("/emails"))
                .bearer_auth(&inner.key.0)
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .body(body)
                .send()
                .await
                .map_err(|e| inner.transport_error(&e))?;
            let status = resp.status().as_u16();
            let h = resp.headers();
            let wait = classify::wait_asked(
                header(h, "retry-after"),
                header(h, "ratelimit-remaining"),
                header(h, "ratelimit-reset"),
            );
            let bytes = resp.bytes().await.map_err(|e| inner.transport_error(&e))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if (200..300).contains(&status) {
                let id = v["id"].as_str().map(str::to_string);
                return Ok(Reply {
                    code: status,
                    enhanced: None,
                    text: match &id {
                        Some(id) => format!("OK id {id}"),
                        None => "OK".into(),
                    },
                    provider_message_id: id,
                    relay: None,
                });
            }
            let name = v["name"].as_str().unwrap_or("");
            let message = v["message"].as_str().unwrap_or("");
            let e = classify::ApiError {
                status,
                name,
                message,
            };
            if classify::is_invalid_idempotent_request(&e) {
                // The body for a recipient never changes, so a first request
                // under this key was taken: sent, never failed; flagged so
                // the report shows it was not confirmed.
                tracing::warn!(
                    key = %key,
                    "Resend says the idempotency key was used with another body: a first request went through; recorded sent, in doubt"
                );
                return Ok(Reply {
                    code: status,
                    enhanced: None,
                    text: format!(
                        "in doubt: sent under idempotency key {key} by an earlier request (HTTP 409 invalid_idempotent_request: {message})"
                    ),
                    provider_message_id: None,
                    relay: None,
                });
            }
            Err((inner.error(status, &bytes, wait), Afterwards::Usable))
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport_to(endpoint: String) -> ResendTransport {
        ResendTransport::new(ResendSettings {
            endpoint: Some(endpoint),
            api_key: ApiKey::new("re_s3cr3t".into()),
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
            message_id: "m@acme.example".into(),
            body: b"From: news@acme.example\r\nTo: a@example.com\r\nSubject: x\r\n\r\nx\r\n"
                .to_vec(),
        }
    }

    #[test]
    fn the_key_never_shows() {
        let t = ResendSettings {
            endpoint: None,
            api_key: ApiKey::new("re_s3cr3t".into()),
            campaign: "t".into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("re_s3cr3t"), "{shown}");
    }

    #[test]
    fn idempotency_keys_follow_the_message_id() {
        assert_eq!(idempotency_key("<m1@acme.example>"), "edm/m1@acme.example");
        assert_eq!(idempotency_key("m1@acme.example"), "edm/m1@acme.example");
        let long = idempotency_key(&"x".repeat(300));
        assert!(
            long.starts_with("edm/sha256/") && long.len() <= 256,
            "{long}"
        );
        assert_eq!(long, idempotency_key(&"x".repeat(300)));
    }

    /// The request went out and no reply came: Resend may have accepted the
    /// message, so the recipient is in doubt, as for SES.
    #[tokio::test]
    async fn a_timeout_after_the_request_is_in_doubt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
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
        server.abort();
    }

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
    }

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

    /// Answers one request with `status` and `body`, and `extra` headers.
    async fn one_reply(status: &str, extra: &str, body: &str) -> u16 {
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
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

    async fn send_to(port: u16) -> Result<Reply, (Failure, Afterwards)> {
        let t = transport_to(format!("http://127.0.0.1:{port}"));
        let mut conn = t.open().await.unwrap();
        let env = envelope();
        conn.send(&env, Box::pin(async { Ok(()) })).await
    }

    #[tokio::test]
    async fn the_id_is_the_provider_message_id() {
        let port = one_reply("200 OK", "", r#"{"id":"49a3999c-0ce1"}"#).await;
        let r = send_to(port).await.unwrap();
        assert_eq!(r.provider_message_id.as_deref(), Some("49a3999c-0ce1"));
    }

    /// Same key, another body: a first request went through. Sent, flagged.
    #[tokio::test]
    async fn invalid_idempotent_request_is_sent_in_doubt_never_failed() {
        let body = r#"{"statusCode":409,"name":"invalid_idempotent_request","message":"Same idempotency key used with a different request payload."}"#;
        let port = one_reply("409 Conflict", "", body).await;
        let r = send_to(port).await.unwrap();
        assert!(r.text.starts_with("in doubt"), "{r}");
        assert_eq!(r.provider_message_id, None);
    }

    #[tokio::test]
    async fn a_429_waits_as_asked() {
        let body =
            r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests."}"#;
        let port = one_reply(
            "429 Too Many Requests",
            "retry-after: 7\r\nratelimit-limit: 2\r\nratelimit-remaining: 0\r\nratelimit-reset: 1\r\n",
            body,
        )
        .await;
        let (f, after) = send_to(port).await.unwrap_err();
        assert_eq!(after, Afterwards::Usable);
        assert_eq!(f.category, Category::Throttled);
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn get_domains_says_whether_the_sender_domain_is_verified() {
        let list = r#"{"object":"list","has_more":false,"data":[{"id":"d1","name":"acme.example","status":"verified"},{"id":"d2","name":"other.example","status":"pending"}]}"#;
        for (domain, want) in [
            ("Acme.example", DomainCheck::Verified),
            ("other.example", DomainCheck::NotVerified("pending".into())),
            ("nope.example", DomainCheck::Missing),
        ] {
            let port = one_reply("200 OK", "", list).await;
            let t = transport_to(format!("http://127.0.0.1:{port}"));
            assert_eq!(t.check_domain(domain).await.unwrap(), want);
        }
        let port = one_reply(
            "401 Unauthorized",
            "",
            r#"{"statusCode":401,"name":"restricted_api_key","message":"This API key is restricted to only send emails."}"#,
        )
        .await;
        let t = transport_to(format!("http://127.0.0.1:{port}"));
        assert_eq!(
            t.check_domain("acme.example").await.unwrap(),
            DomainCheck::SendingOnlyKey
        );
        let port = one_reply(
            "403 Forbidden",
            "",
            r#"{"statusCode":403,"name":"invalid_api_key","message":"API key is invalid."}"#,
        )
        .await;
        let t = transport_to(format!("http://127.0.0.1:{port}"));
        let f = t.check_domain("acme.example").await.unwrap_err();
        assert_eq!(f.category, Category::Auth, "{f}");
    }
}
