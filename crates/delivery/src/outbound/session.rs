//! One SMTP session: connect, greet, (STARTTLS), EHLO, AUTH, then many
//! transactions, each driven step by step so every failure has its stage.
//!
//! mail-send does the wire work; this module adds what it leaves to us
//! (see `DEPENDENCIES.md`): TCP_NODELAY, a timeout on every step, RSET after
//! a refused transaction, buffered writes, PIPELINING, and dropping the
//! connection after an error that leaves it in an unknown state.

use std::sync::Arc;
use std::time::Duration;

use edm_model::{Category, Envelope, Failure, Reply, Stage};
use mail_send::smtp::message::Parameters;
use mail_send::{Credentials, SmtpClient};
use smtp_proto::{EXT_PIPELINING, EXT_SIZE, EXT_START_TLS, EhloResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::classify::{ReplyRef, classify_error, classify_io, classify_reply, timeout};

/// How the connection is secured.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain SMTP (a local relay or a test server).
    None,
    /// Plain, then STARTTLS (required: refuse to send in the clear).
    StartTls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct SmtpSettings {
    /// Relay host name or address.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Transport security.
    pub security: Security,
    /// AUTH user name and secret; never logged.
    pub credentials: Option<(String, String)>,
    /// Name sent in EHLO.
    pub helo_name: String,
    /// TCP connect plus greeting.
    pub connect_timeout: Duration,
    /// Each command's reply.
    pub command_timeout: Duration,
    /// Writing the message and reading the final reply.
    pub data_timeout: Duration,
    /// Accept any certificate (self-signed test relays only).
    pub accept_invalid_certs: bool,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Object-safe stream of either kind.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Client = SmtpClient<BufStream<Box<dyn Io>>>;

/// An open, greeted and authenticated SMTP session.
pub struct Session {
    client: Client,
    pipelining: bool,
    max_size: Option<usize>,
    settings: Arc<SmtpSettings>,
}

/// What a failed transaction left of the connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Afterwards {
    /// Ready for the next transaction.
    Usable,
    /// Closed or in an unknown state: drop it and reconnect.
    Broken,
    /// Broken after the final dot was sent with no reply: the server may
    /// have accepted the message, so the recipient is in doubt.
    InDoubt,
}

async fn step<T>(
    stage: Stage,
    limit: Duration,
    fut: impl Future<Output = mail_send::Result<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify_error(stage, &e)),
        Err(_) => Err(timeout(stage)),
    }
}

fn negative(stage: Stage, r: &Response<String>) -> Failure {
    classify_reply(
        stage,
        ReplyRef {
            code: r.code,
            esc: r.esc,
            text: &r.message,
        },
    )
}

fn to_reply(r: Response<String>) -> Reply {
    Reply {
        code: r.code,
        enhanced: (r.esc != [0, 0, 0]).then(|| format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])),
        text: r.message.trim().to_string(),
        provider_message_id: None,
    }
}

async fn greet_and_hello<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<S>,
    s: &SmtpSettings,
    greeting: bool,
) -> Result<EhloResponse<String>, Failure> {
    if greeting {
        let r = step(Stage::Greeting, s.connect_timeout, client.read()).await?;
        if !r.is_positive_completion() {
            return Err(negative(Stage::Greeting, &r));
        }
    }
    step(Stage::Ehlo, s.command_timeout, client.ehlo(&s.helo_name)).await
}

impl Session {
    /// Opens a session: every step has its own timeout and stage.
    pub async fn connect(
        settings: Arc<SmtpSettings>,
        tls: &TlsConnector,
    ) -> Result<Session, Failure> {
        let s = &*settings;
        let addrs = match tokio::time::timeout(
            s.connect_timeout,
            tokio::net::lookup_host((s.host.as_str(), s.port)),
        )
        .await
        {
            Ok(Ok(a)) => a.collect::<Vec<_>>(),
            Ok(Err(e)) => {
                return Err(Failure::local(
                    Stage::Connect,
                    Category::Dns,
                    format!("cannot resolve {}: {e}", s.host),
                ));
            }
            Err(_) => return Err(timeout(Stage::Connect)),
        };
        let mut last = Failure::local(
            Stage::Connect,
            Category::Dns,
            format!("{} has no address", s.host),
        );
        let mut tcp = None;
        for addr in addrs {
            match tokio::time::timeout(s.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    tcp = Some(stream);
                    break;
                }
                Ok(Err(e)) => last = classify_io(Stage::Connect, &e),
                Err(_) => last = timeout(Stage::Connect),
            }
        }
        let tcp = tcp.ok_or(last)?;
        // mail-send leaves Nagle on: ~40 ms per message without this.
        let _ = tcp.set_nodelay(true);
        let mut plain = SmtpClient {
            stream: tcp,
            timeout: s.command_timeout,
        };
        let (stream, caps): (Box<dyn Io>, _) = match s.security {
            Security::None => {
                let caps = greet_and_hello(&mut plain, s, true).await?;
                (Box::new(plain.stream), caps)
            }
            Security::StartTls => {
                let caps = greet_and_hello(&mut plain, s, true).await?;
                if !caps.has_capability(EXT_START_TLS) {
                    return Err(classify_error(
                        Stage::Tls,
                        &mail_send::Error::MissingStartTls,
                    ));
                }
                plain.timeout = s.connect_timeout;
                let mut tls_client = plain
                    .start_tls(tls, &s.host)
                    .await
                    .map_err(|e| classify_error(Stage::Tls, &e))?;
                tls_client.timeout = s.command_timeout;
                let caps = greet_and_hello(&mut tls_client, s, false).await?;
                (Box::new(tls_client.stream), caps)
            }
            Security::Tls => {
                plain.timeout = s.connect_timeout;
                let mut tls_client = plain
                    .into_tls(tls, &s.host)
                    .await
                    .map_err(|e| classify_error(Stage::Tls, &e))?;
                tls_client.timeout = s.command_timeout;
                let caps = greet_and_hello(&mut tls_client, s, true).await?;
                (Box::new(tls_client.stream), caps)
            }
        };
        let mut client = SmtpClient {
            stream: BufStream::new(stream),
            timeout: s.command_timeout,
        };
        if let Some((user, secret)) = &s.credentials {
            let creds = Credentials::new(user.as_str(), secret.as_str());
            step(
                Stage::Auth,
                s.command_timeout,
                client.authenticate(&creds, &caps),
            )
            .await?;
        }
        let max_size = caps
            .has_capability(EXT_SIZE)
            .then_some(caps.size)
            .filter(|n| *n > 0);
        Ok(Session {
            client,
            pipelining: caps.has_capability(EXT_PIPELINING),
            max_size,
            settings,
        })
    }

    /// Sends one message. On failure, says whether the connection can be reused
    /// (an RSET has already been done where one was needed).
    pub async fn send(&mut self, env: &Envelope) -> Result<Reply, (Failure, Afterwards)> {
        self.send_marked(env, Box::pin(async { Ok(()) })).await
    }

    /// [`Session::send`], waiting for `before_dot` (the store's durable mark)
    /// once the server is ready for the body: if it fails, the connection is
    /// dropped without the final dot, so the message cannot be accepted.
    pub async fn send_marked(
        &mut self,
        env: &Envelope,
        before_dot: crate::transport::BoxFuture<'_, Result<(), String>>,
    ) -> Result<Reply, (Failure, Afterwards)> {
        let s = self.settings.clone();
        if let Some(max) = self.max_size
            && env.body.len() > max
        {
            let f = Failure {
                stage: Stage::MailFrom,
                category: Category::MessageTooLarge,
                smtp_code: None,
                enhanced_code: None,
                reply: format!(
                    "message is {} bytes, the server accepts at most {max} (EHLO SIZE)",
                    env.body.len()
                ),
                permanent: true,
                retry_after: None,
            };
            return Err((f, Afterwards::Usable));
        }
        let mut params = Parameters::new();
        if self.max_size.is_some() {
            params.add(("SIZE".to_string(), env.body.len().to_string()));
        }
        let envelope_result = if self.pipelining {
            self.envelope_pipelined(env, &params, &s).await
        } else {
            self.envelope_step_by_step(env, &params, &s).await
        };
        if let Err((f, after)) = envelope_result {
            return Err((f, self.reset_if(after, &s).await));
        }
        match tokio::time::timeout(s.command_timeout, before_dot).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err((
                    Failure::local(Stage::Data, Category::Protocol, reason),
                    Afterwards::Broken,
                ));
            }
            Err(_) => {
                return Err((
                    Failure::local(
                        Stage::Data,
                        Category::Protocol,
                        "the store did not mark in time",
                    ),
                    Afterwards::Broken,
                ));
            }
        }
        // The message and the final dot: from here on the server may accept it.
        let client = &mut self.client;
        let deadline = tokio::time::Instant::now() + s.data_timeout;
        let write = async {
            use tokio::io::AsyncWriteExt;
            // One buffer, one write: mail-send's `write_message` walks the
            // message a byte at a time and writes in pieces.
            let stuffed = dot_stuff(&env.body);
            client.stream.write_all(&stuffed).await?;
            client.stream.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            // The final dot is the last thing written: the server cannot
            // have the whole message, so this is an ordinary failure.
            Ok(Err(e)) => return Err((classify_io(Stage::Data, &e), Afterwards::Broken)),
            Err(_) => return Err((timeout(Stage::Data), Afterwards::Broken)),
        }
        // The final dot is out: without its reply the message may have been
        // accepted (RFC 5321 §4.1.1.4, §6.1), so it is in doubt, not failed.
        match tokio::time::timeout_at(deadline, client.read()).await {
            Ok(Ok(r)) if r.is_positive_completion() => Ok(to_reply(r)),
            Ok(Ok(r)) => {
                let f = negative(Stage::Data, &r);
                // After a refusal at the end of DATA the session is ready again
                // (RFC 5321 §4.1.1.4), unless the server is closing (421).
                let after = if r.code == 421 {
                    Afterwards::Broken
                } else {
                    Afterwards::Usable
                };
                Err((f, after))
            }
            Ok(Err(e)) => Err((classify_error(Stage::Data, &e), Afterwards::InDoubt)),
            Err(_) => Err((timeout(Stage::Data), Afterwards::InDoubt)),
        }
    }

    /// MAIL, RCPT and DATA in one round trip (RFC 2920).
    async fn envelope_pipelined(
        &mut self,
        env: &Envelope,
        params: &Parameters<'_>,
        s: &SmtpSettings,
    ) -> Result<(), (Failure, Afterwards)> {
        let cmds = [
            format!("MAIL FROM:<{}>{params}\r\n", env.mail_from),
            format!("RCPT TO:<{}>\r\n", env.rcpt_to),
            "DATA\r\n".to_string(),
        ];
        let (replies, err) =
            match tokio::time::timeout(s.command_timeout, pipeline(&mut self.client.stream, &cmds))
                .await
            {
                Ok(r) => r,
                Err(_) => return Err((timeout(Stage::MailFrom), Afterwards::Broken)),
            };
        let mut replies = replies.into_iter();
        let (mail, rcpt, data) = (replies.next(), replies.next(), replies.next());
        // A server that closes after refusing (421) answers fewer commands:
        // classify what it did say, at the stage it said it.
        let (mail, rcpt, data) = match (mail, rcpt, data, err) {
            (Some(m), Some(r), Some(d), None) => (m, r, d),
            (m, r, _, err) => {
                let broken = |stage| {
                    let e = err.unwrap_or(mail_send::Error::UnparseableReply);
                    Err((classify_error(stage, &e), Afterwards::Broken))
                };
                return match (m, r) {
                    (Some(m), _) if !m.is_positive_completion() => {
                        Err((negative(Stage::MailFrom, &m), Afterwards::Broken))
                    }
                    (Some(_), Some(r)) if !r.is_positive_completion() => {
                        Err((negative(Stage::RcptTo, &r), Afterwards::Broken))
                    }
                    (None, _) => broken(Stage::MailFrom),
                    (Some(_), None) => broken(Stage::RcptTo),
                    (Some(_), Some(_)) => broken(Stage::Data),
                };
            }
        };
        let failed = if !mail.is_positive_completion() {
            Some((Stage::MailFrom, mail))
        } else if !rcpt.is_positive_completion() {
            Some((Stage::RcptTo, rcpt))
        } else {
            None
        };
        match (failed, data.code) {
            (None, 354) => Ok(()),
            (None, _) => Err((negative(Stage::Data, &data), after_code(data.code))),
            // A server that said 354 after refusing the envelope is waiting for
            // a message we will not send: the session is in an unknown state.
            (Some((stage, r)), 354) => Err((negative(stage, &r), Afterwards::Broken)),
            (Some((stage, r)), _) => {
                let after = after_code(r.code);
                Err((negative(stage, &r), after))
            }
        }
    }

    async fn envelope_step_by_step(
        &mut self,
        env: &Envelope,
        params: &Parameters<'_>,
        s: &SmtpSettings,
    ) -> Result<(), (Failure, Afterwards)> {
        let c = &mut self.client;
        let mail = format!("MAIL FROM:<{}>{params}\r\n", env.mail_from);
        let rcpt = format!("RCPT TO:<{}>\r\n", env.rcpt_to);
        for (stage, cmd, want) in [
            (Stage::MailFrom, mail.as_str(), None),
            (Stage::RcptTo, rcpt.as_str(), None),
            (Stage::Data, "DATA\r\n", Some(354)),
        ] {
            let r = step(stage, s.command_timeout, c.cmd(cmd.as_bytes()))
                .await
                .map_err(|f| (f, Afterwards::Broken))?;
            let ok = match want {
                Some(code) => r.code == code,
                None => r.is_positive_completion(),
            };
            if !ok {
                return Err((negative(stage, &r), after_code(r.code)));
            }
        }
        Ok(())
    }

    /// RSET after a refused envelope; mail-send does not (a later MAIL would
    /// get `503 nested MAIL command`).
    async fn reset_if(&mut self, after: Afterwards, s: &SmtpSettings) -> Afterwards {
        if after == Afterwards::Broken {
            return after;
        }
        match step(Stage::Reset, s.command_timeout, self.client.rset()).await {
            Ok(()) => Afterwards::Usable,
            Err(_) => Afterwards::Broken,
        }
    }

    /// Says goodbye politely, without waiting long.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.cmd(b"QUIT\r\n")).await;
    }
}

/// The DATA payload: dot-stuffed (RFC 5321 §4.5.2) and terminated by
/// `CRLF . CRLF`, with no blank line added when the message already ends in CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut rest = body;
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    while let Some(i) = memchr::memchr(b'\n', rest) {
        out.extend_from_slice(&rest[..=i]);
        rest = &rest[i + 1..];
        if rest.first() == Some(&b'.') {
            out.push(b'.');
        }
    }
    out.extend_from_slice(rest);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Writes pipelined commands and reads one reply per command, keeping the
/// replies read before an error (mail-send's `cmds` drops them).
async fn pipeline<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    cmds: &[String],
) -> (Vec<Response<String>>, Option<mail_send::Error>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut replies = Vec::with_capacity(cmds.len());
    for c in cmds {
        if let Err(e) = stream.write_all(c.as_bytes()).await {
            return (replies, Some(mail_send::Error::Io(e)));
        }
    }
    if let Err(e) = stream.flush().await {
        return (replies, Some(mail_send::Error::Io(e)));
    }
    let mut buf = vec![0u8; 1024];
    let mut parser = smtp_proto::response::parser::ResponseReceiver::default();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => return (replies, Some(mail_send::Error::UnparseableReply)),
            Ok(n) => n,
            Err(e) => return (replies, Some(mail_send::Error::Io(e))),
        };
        let mut iter = buf[..n].iter();
        loop {
            match parser.parse(&mut iter) {
                Ok(r) => {
                    replies.push(r);
                    if replies.len() == cmds.len() {
                        return (replies, None);
                    }
                    parser.reset();
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                Err(_) => return (replies, Some(mail_send::Error::UnparseableReply)),
            }
        }
    }
}

/// A 421 means the server is closing the channel (RFC 5321 §3.8).
fn after_code(code: u16) -> Afterwards {
    if code == 421 {
        Afterwards::Broken
    } else {
        Afterwards::Usable
    }
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    #[test]
    fn dot_stuffing() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuff(b".start"), b"..start\r\n.\r\n".to_vec());
        assert_eq!(
            dot_stuff(b"no newline at end"),
            b"no newline at end\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n".to_vec());
        assert_eq!(dot_stuff(b"x.\r\n"), b"x.\r\n.\r\n".to_vec());
    }
}
