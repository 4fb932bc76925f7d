//! One SMTP session: connect, greet, (STARTTLS), EHLO, AUTH, then many
//! transactions, each driven step by step so every failure has its stage.
//!
//! mail-send does the wire work; this module adds what it leaves to us
//! (see `DEPENDENCIES.md`): TCP_NODELAY, a timeout on every step, RSET after
//! a refused transaction, buffered writes, PIPELINING, and dropping the
//! connection after an error that leaves it in an unknown state.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use edm_model::{Category, Envelope, Failure, Reply, Stage};
use mail_send::{Credentials, SmtpClient};
use smtp_proto::{
    EXT_8BIT_MIME, EXT_DSN, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
    Response,
};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
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
    /// Allow AUTH on a connection without TLS to a host that is not
    /// loopback (`allow_plaintext_auth` in `[smtp]`); off, the session
    /// refuses before connecting rather than send the password in clear.
    pub allow_plaintext_auth: bool,
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
    /// The server offers SMTPUTF8 (RFC 6531) and 8BITMIME (RFC 6152).
    smtputf8: bool,
    eight_bit_mime: bool,
    /// The server offers DSN (RFC 3461): edm asks for bounces that say whose
    /// they are.
    dsn: bool,
    settings: Arc<SmtpSettings>,
    /// The envelope commands of the transaction being sent, built here and
    /// reused: one allocation per session, not three strings per message.
    cmds: Vec<u8>,
    /// The one timer of the transactions' steps (envelope, mark, body and
    /// final reply), reset to each step's deadline: a later deadline only
    /// moves the registered one (tokio's `TimerEntry::reset`), where a
    /// `timeout()` per step registered a timer and removed it again.
    timer: Pin<Box<Sleep>>,
}

/// `fut`, or `Err(())` once `deadline` has passed: `tokio::time::timeout_at`
/// on the session's one timer.
async fn within<T>(
    timer: &mut Pin<Box<Sleep>>,
    deadline: Instant,
    fut: impl Future<Output = T>,
) -> Result<T, ()> {
    timer.as_mut().reset(deadline);
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        timer.as_mut().poll(cx).map(|()| Err(()))
    })
    .await
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
    // The reply's own string, trimmed in place (one per message: no copy).
    let mut text = r.message;
    text.truncate(text.trim_end().len());
    let lead = text.len() - text.trim_start().len();
    text.drain(..lead);
    Reply {
        code: r.code,
        enhanced: (r.esc != [0, 0, 0]).then(|| {
            let mut e = String::with_capacity(11);
            for (i, n) in r.esc.iter().enumerate() {
                if i > 0 {
                    e.push('.');
                }
                push_decimal(&mut e, u64::from(*n));
            }
            e
        }),
        text,
        provider_message_id: None,
        relay: None,
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
        if let Some(refusal) = plaintext_auth_refusal(s) {
            return Err(refusal);
        }
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
        let timer_start = s.command_timeout;
        Ok(Session {
            client,
            pipelining: caps.has_capability(EXT_PIPELINING),
            max_size,
            smtputf8: caps.has_capability(EXT_SMTP_UTF8),
            eight_bit_mime: caps.has_capability(EXT_8BIT_MIME),
            dsn: caps.has_capability(EXT_DSN),
            settings,
            cmds: Vec::with_capacity(256),
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + timer_start)),
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
        // An address with a non-ASCII local part, or a UTF-8 header, can only
        // travel over SMTPUTF8 (RFC 6531 §3.2, RFC 6532); without it this
        // recipient fails before anything is sent (never 8-bit bytes in the
        // envelope or the headers of a server that did not ask for them).
        let utf8 = needs_smtputf8(env);
        if let Some(what) = utf8
            && !self.smtputf8
        {
            let f = Failure {
                stage: Stage::MailFrom,
                category: Category::SmtpUtf8Required,
                smtp_code: None,
                enhanced_code: None,
                reply: format!(
                    "{what} needs SMTPUTF8 (RFC 6531), which the server does not offer: nothing was sent"
                ),
                permanent: true,
                retry_after: None,
            };
            return Err((f, Afterwards::Usable));
        }
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
        // MAIL FROM and RCPT TO, built once into the session's buffer; the
        // parameters in mail-send's order and spelling (the bytes on the wire
        // are the same as its `Parameters` wrote).
        let mut cmds = std::mem::take(&mut self.cmds);
        cmds.clear();
        push_mail_from(
            &mut cmds,
            env,
            MailParams {
                size: self.max_size.is_some(),
                smtputf8: utf8.is_some(),
                eight_bit_mime: self.eight_bit_mime,
                dsn: self.dsn,
            },
        );
        let mail_len = cmds.len();
        push_rcpt(&mut cmds, env, self.dsn);
        let envelope_result = if self.pipelining {
            self.envelope_pipelined(&cmds, &s).await
        } else {
            self.envelope_step_by_step(&cmds, mail_len, &s).await
        };
        self.cmds = cmds;
        if let Err((f, after)) = envelope_result {
            return Err((f, self.reset_if(after, &s).await));
        }
        let deadline = Instant::now() + s.command_timeout;
        match within(&mut self.timer, deadline, before_dot).await {
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
        // One deadline for both (`data_timeout` from the first byte of the
        // message to the reply to its final dot), one timer; `dot_out` says
        // on which side of the final dot a failure or the deadline came.
        let stream = &mut self.client.stream;
        let deadline = Instant::now() + s.data_timeout;
        let mut dot_out = false;
        let data = async {
            use tokio::io::AsyncWriteExt;
            // The body as rendered when nothing in it needs stuffing (edm's
            // own messages: CRLF lines, most with no line starting with a
            // dot): no copy of it here, one vectored write with the final dot.
            let (body, tail) = payload(&env.body);
            write_all_vectored(stream, &body, tail)
                .await
                .map_err(|e| classify_io(Stage::Data, &e))?;
            stream
                .flush()
                .await
                .map_err(|e| classify_io(Stage::Data, &e))?;
            dot_out = true;
            let mut replies = Vec::with_capacity(1);
            match read_replies(stream, 1, &mut replies).await {
                None => replies.pop().ok_or_else(|| {
                    classify_error(Stage::Data, &mail_send::Error::UnparseableReply)
                }),
                Some(e) => Err(classify_error(Stage::Data, &e)),
            }
        };
        let outcome = within(&mut self.timer, deadline, data).await;
        // The final dot is the last thing written: before it is out the server
        // cannot have the whole message, so a failure is an ordinary one. Once
        // it is out, without its reply the message may have been accepted
        // (RFC 5321 §4.1.1.4, §6.1), so it is in doubt, not failed.
        let lost = if dot_out {
            Afterwards::InDoubt
        } else {
            Afterwards::Broken
        };
        match outcome {
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
            Ok(Err(f)) => Err((f, lost)),
            Err(_) => Err((timeout(Stage::Data), lost)),
        }
    }

    /// MAIL, RCPT and DATA in one round trip (RFC 2920).
    async fn envelope_pipelined(
        &mut self,
        cmds: &[u8],
        s: &SmtpSettings,
    ) -> Result<(), (Failure, Afterwards)> {
        let deadline = Instant::now() + s.command_timeout;
        let (replies, err) = match within(
            &mut self.timer,
            deadline,
            pipeline(&mut self.client.stream, cmds),
        )
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
        cmds: &[u8],
        mail_len: usize,
        s: &SmtpSettings,
    ) -> Result<(), (Failure, Afterwards)> {
        let c = &mut self.client;
        let (mail, rcpt) = cmds.split_at(mail_len);
        for (stage, cmd, want) in [
            (Stage::MailFrom, mail, None),
            (Stage::RcptTo, rcpt, None),
            (Stage::Data, &b"DATA\r\n"[..], Some(354)),
        ] {
            let r = step(stage, s.command_timeout, c.cmd(cmd))
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

/// What in this envelope needs SMTPUTF8, if anything: a non-ASCII address
/// (only the local part can be: domains are A-labels by now) or a non-ASCII
/// byte in the header section.
/// `RCPT TO`, with `NOTIFY=FAILURE,DELAY` when the server offers DSN
/// (RFC 3461 §4.1): a bounce for a failure and a notice for a delay, never
/// one for a success.
fn push_rcpt(out: &mut Vec<u8>, env: &Envelope, dsn: bool) {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(env.rcpt_to.as_bytes());
    if dsn {
        out.extend_from_slice(b"> NOTIFY=FAILURE,DELAY\r\n");
    } else {
        out.extend_from_slice(b">\r\n");
    }
}

#[cfg(test)]
fn rcpt_line(env: &Envelope, dsn: bool) -> String {
    let mut out = Vec::new();
    push_rcpt(&mut out, env, dsn);
    String::from_utf8(out).unwrap_or_default()
}

/// What the server offered that MAIL FROM asks for.
#[derive(Copy, Clone)]
struct MailParams {
    /// SIZE (RFC 1870): the message's size.
    size: bool,
    /// This message needs SMTPUTF8 (RFC 6531).
    smtputf8: bool,
    /// The server offers 8BITMIME (RFC 6152).
    eight_bit_mime: bool,
    /// The server offers DSN (RFC 3461).
    dsn: bool,
}

/// `MAIL FROM:<…>` and its parameters, in the order and spelling
/// mail-send's `Parameters` gave them: SIZE, SMTPUTF8 (with BODY=8BITMIME
/// where offered: UTF-8 headers are 8-bit content, RFC 6531 §3.1 item 8),
/// then RET and ENVID (RFC 3461 §4.3: only the headers come back in a
/// bounce; §4.4: ENVID comes back as Original-Envelope-Id, tying the DSN to
/// the message, whose Message-ID names the recipient).
fn push_mail_from(out: &mut Vec<u8>, env: &Envelope, p: MailParams) {
    out.extend_from_slice(b"MAIL FROM:<");
    out.extend_from_slice(env.mail_from.as_bytes());
    out.push(b'>');
    if p.size {
        out.extend_from_slice(b" SIZE=");
        let mut n = String::new();
        push_decimal(&mut n, env.body.len() as u64);
        out.extend_from_slice(n.as_bytes());
    }
    if p.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
        if p.eight_bit_mime {
            out.extend_from_slice(b" BODY=8BITMIME");
        }
    }
    if p.dsn {
        out.extend_from_slice(b" RET=HDRS");
        let start = out.len();
        out.extend_from_slice(b" ENVID=");
        if !push_envid(out, &env.message_id) {
            out.truncate(start);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without the formatting machinery (`{}` costs ~500
/// instructions; this runs several times per message).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// The ENVID of a message: its Message-ID in xtext (RFC 3461 §4: `+` and
/// `=`, controls and non-ASCII as `+HH`), appended to `out`; `false` (and
/// `out` to be cut back) when empty or longer than the 100 characters §4.4
/// allows.
fn push_envid(out: &mut Vec<u8>, message_id: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let start = out.len();
    let plain = |b: u8| (33..=126).contains(&b) && b != b'+' && b != b'=';
    if message_id.bytes().all(plain) {
        // Edm's own Message-IDs: nothing to encode.
        out.extend_from_slice(message_id.as_bytes());
        let n = message_id.len();
        return n > 0 && n <= 100;
    }
    for b in message_id.bytes() {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'+', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    let n = out.len() - start;
    n > 0 && n <= 100
}

#[cfg(test)]
fn envid(message_id: &str) -> Option<String> {
    let mut out = Vec::new();
    push_envid(&mut out, message_id).then(|| String::from_utf8(out).unwrap_or_default())
}

fn needs_smtputf8(env: &Envelope) -> Option<&'static str> {
    if !env.rcpt_to.is_ascii() {
        Some("the recipient address has a non-ASCII local part and")
    } else if !env.mail_from.is_ascii() {
        Some("the sender address has a non-ASCII local part and")
    } else {
        // One searcher for every message (building one costs more than the
        // search through a header section).
        static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
        let end = BLANK_LINE.find(&env.body).unwrap_or(env.body.len());
        (!env.body[..end].is_ascii()).then_some("a header holds non-ASCII text and")
    }
}

/// Refuses AUTH without TLS to a host that is not loopback, unless the
/// operator said `allow_plaintext_auth = true`: the password would cross
/// the network readable by anyone on the path (RFC 4954 §4 asks for a
/// protected channel for mechanisms like PLAIN).
fn plaintext_auth_refusal(s: &SmtpSettings) -> Option<Failure> {
    let plain = s.security == Security::None;
    (s.credentials.is_some() && plain && !s.allow_plaintext_auth && !is_loopback(&s.host)).then(
        || {
            Failure::local(
                Stage::Auth,
                Category::Auth,
                format!(
                    "refusing to send the SMTP password to {} without TLS: set security = \"starttls\" or \"tls\", or allow_plaintext_auth = true in [smtp]",
                    s.host
                ),
            )
        },
    )
}

/// 127.0.0.0/8, ::1 and `localhost` (RFC 6761 §6.3): nothing leaves the
/// machine. Names under `.localhost` are not trusted: a resolver is only
/// asked, not guaranteed, to keep them on loopback.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The DATA payload: line breaks made CRLF, dot-stuffed (RFC 5321 §4.5.2)
/// and terminated by `CRLF . CRLF`, with no blank line added when the
/// message already ends in CRLF.
///
/// A bare CR or LF becomes CRLF before stuffing: a server that takes either
/// as a line end would otherwise read `\r.\r` or `\n.\n` from a field as
/// the end of the message and the rest as commands (SMTP smuggling, 2023;
/// RFC 5321 §2.3.8 forbids bare CR and LF in the first place).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut rest = body;
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\r\n");
        let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        rest = &rest[i + if crlf { 2 } else { 1 }..];
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

/// The DATA payload of `body`, in two pieces written one after the other:
/// exactly [`dot_stuff`]'s output (test:
/// `the_fast_path_writes_what_dot_stuff_writes`), copied only when it must
/// differ from the body.
///
/// - Every CR followed by LF, every LF after a CR (edm's rendered
///   messages), and no line starting with a dot: the body itself, then
///   `.CRLF` (`CRLF.CRLF` when it does not end in CRLF).
/// - The same, but lines starting with a dot (about one message in five
///   of a 4 KB quoted-printable body): a copy with those dots doubled,
///   then the same tail.
/// - Anything else (bare CR or LF): [`dot_stuff`].
///
/// Each pair of neighbouring bytes is looked at once, in a loop the compiler
/// vectorises (no branch per line): a 4 KB message with ~70 lines cost
/// ~13k instructions with one `memchr2` and one copy per line, ~4k so.
fn payload(body: &[u8]) -> (Cow<'_, [u8]>, &'static [u8]) {
    /// Bytes per flag of the scan.
    const SCAN: usize = 128;
    let (Some(&first), Some(&last)) = (body.first(), body.last()) else {
        return (Cow::Borrowed(body), b"\r\n.\r\n");
    };
    if first == b'\n' || last == b'\r' {
        return (Cow::Owned(dot_stuff(body)), b"");
    }
    // Where a line starts with a dot (the index of that dot).
    let mut dots: Vec<usize> = Vec::new();
    if first == b'.' {
        dots.push(0);
    }
    let pairs = body.len() - 1;
    let (a, b) = (&body[..pairs], &body[1..]);
    for (n, (ca, cb)) in a.chunks(SCAN).zip(b.chunks(SCAN)).enumerate() {
        // One flag for the chunk (vectorised); the rare flagged chunk is
        // looked at again byte by byte to say what it holds.
        let mut flag = 0u8;
        for (&x, &y) in ca.iter().zip(cb) {
            flag |= u8::from((x == b'\r') != (y == b'\n')) | u8::from((x == b'\n') & (y == b'.'));
        }
        if flag == 0 {
            continue;
        }
        for (i, (&x, &y)) in ca.iter().zip(cb).enumerate() {
            if (x == b'\r') != (y == b'\n') {
                return (Cow::Owned(dot_stuff(body)), b"");
            }
            if x == b'\n' && y == b'.' {
                dots.push(n * SCAN + i + 1);
            }
        }
    }
    let tail: &'static [u8] = if body.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    };
    if dots.is_empty() {
        return (Cow::Borrowed(body), tail);
    }
    // RFC 5321 §4.5.2: a line that starts with a dot gets one more.
    let mut out = Vec::with_capacity(body.len() + dots.len());
    let mut from = 0;
    for at in dots {
        out.extend_from_slice(&body[from..at]);
        out.push(b'.');
        from = at;
    }
    out.extend_from_slice(&body[from..]);
    (Cow::Owned(out), tail)
}

/// Writes `a` then `b` with vectored writes: into the buffer when they fit
/// (then one `write` at the flush), else straight to the socket, without
/// copying them together first.
async fn write_all_vectored<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut a: &[u8],
    mut b: &[u8],
) -> std::io::Result<()> {
    use std::io::IoSlice;
    use tokio::io::AsyncWriteExt;
    while !a.is_empty() || !b.is_empty() {
        let n = stream
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[(n - from_a).min(b.len())..];
    }
    Ok(())
}

/// Reads replies until `replies` holds `n` (`None`), or the error that
/// stopped it, keeping the replies read before it. Parses in the stream's
/// own buffer and takes from it only what was parsed: no buffer per read,
/// no copy.
async fn read_replies<S: AsyncBufRead + Unpin>(
    stream: &mut S,
    n: usize,
    replies: &mut Vec<Response<String>>,
) -> Option<mail_send::Error> {
    use tokio::io::AsyncBufReadExt;
    let mut parser = smtp_proto::response::parser::ResponseReceiver::default();
    loop {
        let buf = match stream.fill_buf().await {
            Ok([]) => return Some(mail_send::Error::UnparseableReply),
            Ok(buf) => buf,
            Err(e) => return Some(mail_send::Error::Io(e)),
        };
        let len = buf.len();
        let mut iter = buf.iter();
        let mut end = None;
        loop {
            match parser.parse(&mut iter) {
                Ok(r) => {
                    replies.push(r);
                    if replies.len() >= n {
                        end = Some(None);
                        break;
                    }
                    parser.reset();
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                Err(_) => {
                    end = Some(Some(mail_send::Error::UnparseableReply));
                    break;
                }
            }
        }
        let used = len - iter.as_slice().len();
        stream.consume(used);
        if let Some(end) = end {
            return end;
        }
    }
}

/// Writes pipelined commands (MAIL, RCPT, then DATA) in one write and reads
/// one reply per command, keeping the replies read before an error
/// (mail-send's `cmds` drops them).
async fn pipeline<S: AsyncBufRead + AsyncWrite + Unpin>(
    stream: &mut S,
    cmds: &[u8],
) -> (Vec<Response<String>>, Option<mail_send::Error>) {
    use tokio::io::AsyncWriteExt;
    let mut replies = Vec::with_capacity(3);
    if let Err(e) = stream.write_all(cmds).await {
        return (replies, Some(mail_send::Error::Io(e)));
    }
    if let Err(e) = stream.write_all(b"DATA\r\n").await {
        return (replies, Some(mail_send::Error::Io(e)));
    }
    if let Err(e) = stream.flush().await {
        return (replies, Some(mail_send::Error::Io(e)));
    }
    let err = read_replies(stream, 3, &mut replies).await;
    (replies, err)
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
    use super::*;

    #[test]
    fn bare_line_breaks_become_crlf_before_stuffing() {
        assert_eq!(dot_stuff(b"a\r.\rb"), b"a\r\n..\r\nb\r\n.\r\n".to_vec());
        assert_eq!(dot_stuff(b"a\n.\nb"), b"a\r\n..\r\nb\r\n.\r\n".to_vec());
        assert_eq!(dot_stuff(b"a\r\n.\rb"), b"a\r\n..\r\nb\r\n.\r\n".to_vec());
        assert_eq!(dot_stuff(b"a\n.\r\n"), b"a\r\n..\r\n.\r\n".to_vec());
        assert_eq!(dot_stuff(b"a\r\r\n"), b"a\r\n\r\n.\r\n".to_vec());
        assert_eq!(dot_stuff(b"\r\n."), b"\r\n..\r\n.\r\n".to_vec());
        // Whatever the input, the only `CRLF . CRLF` is the final one.
        for body in [&b"x\r.\r\n.\n.\r\r\n.\r\n"[..], b".\r\n\n.\n\r.\r"] {
            let out = dot_stuff(body);
            let ends = memchr::memmem::find_iter(&out, b"\r\n.\r\n").count();
            assert_eq!(ends, 1, "{:?}", String::from_utf8_lossy(&out));
            assert!(out.ends_with(b"\r\n.\r\n"));
            for (i, &b) in out.iter().enumerate() {
                match b {
                    b'\n' => assert_eq!(out[i - 1], b'\r'),
                    b'\r' => assert_eq!(out[i + 1], b'\n'),
                    _ => {}
                }
            }
        }
    }

    fn envelope(mail_from: &str, rcpt_to: &str, body: &[u8]) -> Envelope {
        Envelope {
            attempt: Default::default(),
            id: edm_model::RecipientId(1),
            mail_from: mail_from.into(),
            rcpt_to: rcpt_to.into(),
            domain: "x".into(),
            message_id: "m@x".into(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn smtputf8_is_needed_for_non_ascii_local_parts_and_headers_only() {
        let ascii = b"To: <a@xn--bcher-kva.example>\r\n\r\nbody \xc3\xa9";
        assert_eq!(
            needs_smtputf8(&envelope("n@a.example", "a@xn--bcher-kva.example", ascii)),
            None
        );
        assert!(needs_smtputf8(&envelope("n@a.example", "jos\u{e9}@a.example", ascii)).is_some());
        assert!(needs_smtputf8(&envelope("\u{e9}@a.example", "a@a.example", ascii)).is_some());
        let header = "To: <jos\u{e9}@a.example>\r\n\r\nbody".as_bytes();
        assert!(needs_smtputf8(&envelope("n@a.example", "a@a.example", header)).is_some());
    }

    fn settings(host: &str, security: Security, allow: bool) -> SmtpSettings {
        SmtpSettings {
            host: host.into(),
            port: 25,
            security,
            credentials: Some(("u".into(), "secret".into())),
            helo_name: "h".into(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            data_timeout: Duration::from_secs(1),
            accept_invalid_certs: false,
            allow_plaintext_auth: allow,
        }
    }

    #[test]
    fn plaintext_auth_is_refused_off_loopback_unless_allowed() {
        let f = plaintext_auth_refusal(&settings("smtp.example.com", Security::None, false))
            .expect("refused");
        assert_eq!(f.category, Category::Auth);
        assert_eq!(f.stage, Stage::Auth);
        assert!(f.permanent);
        assert!(f.reply.contains("allow_plaintext_auth"), "{}", f.reply);
        assert!(!f.reply.contains("secret"));
        assert!(
            plaintext_auth_refusal(&settings("smtp.example.com", Security::None, true)).is_none()
        );
        assert!(
            plaintext_auth_refusal(&settings("smtp.example.com", Security::StartTls, false))
                .is_none()
        );
        assert!(
            plaintext_auth_refusal(&settings("smtp.example.com", Security::Tls, false)).is_none()
        );
        for host in [
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "[::1]",
            "localhost",
            "LocalHost",
        ] {
            assert!(
                plaintext_auth_refusal(&settings(host, Security::None, false)).is_none(),
                "{host}"
            );
        }
        for host in [
            "10.0.0.1",
            "128.0.0.1",
            "localhost.example.com",
            "a.localhost",
            "::2",
        ] {
            assert!(
                plaintext_auth_refusal(&settings(host, Security::None, false)).is_some(),
                "{host}"
            );
        }
        let mut s = settings("smtp.example.com", Security::None, false);
        s.credentials = None;
        assert!(plaintext_auth_refusal(&s).is_none());
    }

    #[test]
    fn dsn_parameters_in_xtext_within_limits() {
        assert_eq!(
            envid("ab12.news@acme.example").as_deref(),
            Some("ab12.news@acme.example")
        );
        assert_eq!(envid("a+b=c d").as_deref(), Some("a+2Bb+3Dc+20d"));
        assert_eq!(envid(&"x".repeat(101)), None);
        assert_eq!(envid(""), None);
        let env = envelope("s@a.example", "r@b.example", b"x");
        assert_eq!(rcpt_line(&env, false), "RCPT TO:<r@b.example>\r\n");
        assert_eq!(
            rcpt_line(&env, true),
            "RCPT TO:<r@b.example> NOTIFY=FAILURE,DELAY\r\n"
        );
    }

    /// A server of a few lines that offers DSN (or not) and records the
    /// commands it gets, up to DATA.
    async fn scripted(dsn: bool) -> (u16, tokio::task::JoinHandle<(Vec<String>, Vec<Vec<u8>>)>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut r = tokio::io::BufReader::new(r);
            w.write_all(b"220 test ESMTP\r\n").await.unwrap();
            let mut seen = Vec::new();
            let mut payloads = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                let cmd = line.trim_end().to_string();
                let upper = cmd.to_ascii_uppercase();
                let reply: &[u8] = if upper.starts_with("EHLO") {
                    if dsn {
                        b"250-test\r\n250 DSN\r\n"
                    } else {
                        b"250 test\r\n"
                    }
                } else if upper == "DATA" {
                    seen.push(cmd);
                    w.write_all(b"354 go\r\n").await.unwrap();
                    // The message, up to the final dot, as it came.
                    let mut payload = Vec::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap() == 0 {
                            break;
                        }
                        payload.extend_from_slice(line.as_bytes());
                        if line == ".\r\n" {
                            break;
                        }
                    }
                    payloads.push(payload);
                    w.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                    continue;
                } else if upper == "QUIT" {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                } else {
                    b"250 ok\r\n"
                };
                if !upper.starts_with("EHLO") {
                    seen.push(cmd);
                }
                w.write_all(reply).await.unwrap();
            }
            (seen, payloads)
        });
        (port, task)
    }

    /// RFC 3461 on the wire: with DSN offered, MAIL FROM asks for headers
    /// only and names the message (ENVID, xtext); RCPT TO asks for failures
    /// and delays. Without it, neither (a server that does not know them
    /// would refuse the commands, RFC 5321 §4.1.1.11).
    #[tokio::test]
    async fn dsn_is_asked_for_only_where_offered() {
        for dsn in [true, false] {
            let (port, task) = scripted(dsn).await;
            let mut s = settings("127.0.0.1", Security::None, false);
            s.port = port;
            s.credentials = None;
            let tls = mail_send::smtp::tls::build_tls_connector(false).unwrap();
            let mut session = Session::connect(Arc::new(s), &tls).await.unwrap();
            let mut env = envelope(
                "bounces+7-abc@acme.example",
                "r@b.example",
                b"Subject: x\r\n\r\nhi\r\n",
            );
            env.message_id = "ab12+x@acme.example".into();
            session.send(&env).await.unwrap();
            session.quit().await;
            let (seen, _) = task.await.unwrap();
            let want = if dsn {
                vec![
                    "MAIL FROM:<bounces+7-abc@acme.example> RET=HDRS ENVID=ab12+2Bx@acme.example",
                    "RCPT TO:<r@b.example> NOTIFY=FAILURE,DELAY",
                    "DATA",
                ]
            } else {
                vec![
                    "MAIL FROM:<bounces+7-abc@acme.example>",
                    "RCPT TO:<r@b.example>",
                    "DATA",
                ]
            };
            assert_eq!(seen, want, "dsn offered: {dsn}");
        }
    }

    /// What goes on the wire after DATA is `dot_stuff`'s output, whether the
    /// body is written as it is (the fast path) or stuffed first, and the
    /// session stays in step for the next message either way.
    #[tokio::test]
    async fn the_payload_on_the_wire_is_the_stuffed_body() {
        let (port, task) = scripted(false).await;
        let mut s = settings("127.0.0.1", Security::None, false);
        s.port = port;
        s.credentials = None;
        let tls = mail_send::smtp::tls::build_tls_connector(false).unwrap();
        let mut session = Session::connect(Arc::new(s), &tls).await.unwrap();
        let bodies: [&[u8]; 4] = [
            b"Subject: x\r\n\r\nhi\r\n",
            b"Subject: x\r\n\r\n.hi\r\nthere\n.\r\nend",
            b"Subject: x\r\n\r\nno line break at the end",
            &[b'x'; 20_000],
        ];
        for body in bodies {
            session
                .send(&envelope("s@a.example", "r@b.example", body))
                .await
                .unwrap();
        }
        session.quit().await;
        let (_, payloads) = task.await.unwrap();
        let want: Vec<Vec<u8>> = bodies.iter().map(|b| dot_stuff(b)).collect();
        assert_eq!(payloads, want);
    }

    /// `payload` writes `dot_stuff`'s output, and the body as it is exactly
    /// when `dot_stuff` would write the body unchanged followed by the final
    /// dot: every body of up to 8 bytes over the bytes that matter (CR, LF,
    /// dot, other).
    #[test]
    fn the_fast_path_writes_what_dot_stuff_writes() {
        let alphabet = [b'a', b'.', b'\r', b'\n'];
        let mut body = Vec::new();
        let mut fast = 0;
        for len in 0..=8u32 {
            for mut code in 0..4usize.pow(len) {
                body.clear();
                for _ in 0..len {
                    body.push(alphabet[code % 4]);
                    code /= 4;
                }
                let stuffed = dot_stuff(&body);
                let as_is = if body.ends_with(b"\r\n") {
                    [&body[..], b".\r\n"].concat()
                } else {
                    [&body[..], b"\r\n.\r\n"].concat()
                };
                let (first, tail) = payload(&body);
                assert_eq!([&first[..], tail].concat(), stuffed, "{body:?}");
                match first {
                    Cow::Borrowed(_) => fast += 1,
                    Cow::Owned(_) => assert_ne!(as_is, stuffed, "{body:?} could go as it is"),
                }
            }
        }
        assert!(fast > 600, "{fast}");
        // Longer bodies, across the scan's chunks: mostly CRLF lines, some
        // starting with a dot, now and then a bare CR or LF.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut dotted, mut bare) = (0, 0);
        for _ in 0..2000 {
            body.clear();
            let len = (next() % 700) as usize;
            while body.len() < len {
                match next() % 200 {
                    0 => body.push(b'\n'),
                    1 => body.push(b'\r'),
                    2..=20 => body.extend_from_slice(b"\r\n"),
                    21..=24 => body.extend_from_slice(b"\r\n."),
                    _ => body.push(b'a'),
                }
            }
            let (first, tail) = payload(&body);
            assert_eq!([&first[..], tail].concat(), dot_stuff(&body), "{body:?}");
            dotted += usize::from(matches!(first, Cow::Owned(_)) && !tail.is_empty());
            bare += usize::from(tail.is_empty());
        }
        assert!(dotted > 100 && bare > 100, "{dotted} {bare}");
        // A rendered message, longer than one chunk of the scan.
        let mut msg = b"Subject: hi\r\n\r\n".to_vec();
        for _ in 0..100 {
            msg.extend_from_slice(b"a line. of text.\r\n");
        }
        assert_eq!(payload(&msg), (Cow::Borrowed(&msg[..]), &b".\r\n"[..]));
        msg.extend_from_slice(b".dot\r\nx");
        let mut want = msg.clone();
        want.insert(want.len() - 7, b'.');
        assert_eq!(payload(&msg), (Cow::Owned(want), &b"\r\n.\r\n"[..]));
        msg.extend_from_slice(b"bare\nLF\r\n");
        assert_eq!(payload(&msg).1, b"");
    }

    #[test]
    fn replies_and_numbers_as_format_wrote_them() {
        for n in [0u64, 7, 10, 255, 4_213, u64::MAX] {
            let mut s = String::new();
            push_decimal(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        let r = to_reply(Response {
            code: 250,
            esc: [2, 10, 255],
            message: " \tqueued as 4F2A \r\n".into(),
        });
        assert_eq!(r.enhanced.as_deref(), Some("2.10.255"));
        assert_eq!(r.text, "queued as 4F2A");
        let r = to_reply(Response {
            code: 250,
            esc: [0, 0, 0],
            message: "ok".into(),
        });
        assert_eq!((r.enhanced, r.text.as_str()), (None, "ok"));
    }

    #[test]
    fn mail_from_is_what_mail_send_wrote() {
        let mut env = envelope("s@a.example", "r@b.example", b"0123456789");
        env.message_id = "ab+x=@acme.example".into();
        let all = MailParams {
            size: true,
            smtputf8: true,
            eight_bit_mime: true,
            dsn: true,
        };
        let none = MailParams {
            size: false,
            smtputf8: false,
            eight_bit_mime: false,
            dsn: false,
        };
        let line = |env: &Envelope, p| {
            let mut out = Vec::new();
            push_mail_from(&mut out, env, p);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            line(&env, all),
            "MAIL FROM:<s@a.example> SIZE=10 SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=ab+2Bx+3D@acme.example\r\n"
        );
        assert_eq!(line(&env, none), "MAIL FROM:<s@a.example>\r\n");
        // An ENVID too long is left out, RET stays.
        env.message_id = "x".repeat(101);
        assert_eq!(
            line(&env, MailParams { dsn: true, ..none }),
            "MAIL FROM:<s@a.example> RET=HDRS\r\n"
        );
    }

    /// A server that answers the first message and then stops answering:
    /// at the final dot (`at_dot`), or at the envelope of the next one.
    async fn stalling(at_dot: bool) -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut r = tokio::io::BufReader::new(r);
            w.write_all(b"220 test ESMTP\r\n").await.unwrap();
            let (mut line, mut dots) = (String::new(), 0);
            let mut in_data = false;
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let reply: &[u8] = if in_data {
                    if line != ".\r\n" {
                        continue;
                    }
                    in_data = false;
                    dots += 1;
                    if at_dot && dots == 2 {
                        // Holds the connection, says nothing.
                        std::future::pending::<()>().await;
                    }
                    b"250 2.0.0 queued\r\n"
                } else if line.starts_with("EHLO") {
                    b"250-test\r\n250 PIPELINING\r\n"
                } else if line.starts_with("DATA") {
                    in_data = true;
                    b"354 go\r\n"
                } else if !at_dot && dots == 1 {
                    std::future::pending::<()>().await;
                    continue;
                } else {
                    b"250 ok\r\n"
                };
                w.write_all(reply).await.unwrap();
            }
        });
        port
    }

    /// The session's one timer, moved from step to step, still ends each
    /// step at its own deadline: after a message that went through, a
    /// silence after the final dot is in doubt (`data_timeout`), a silence
    /// at the envelope is a broken connection (`command_timeout`).
    #[tokio::test]
    async fn each_step_times_out_on_the_reused_timer() {
        for at_dot in [true, false] {
            let mut s = settings("127.0.0.1", Security::None, false);
            s.port = stalling(at_dot).await;
            s.credentials = None;
            s.command_timeout = Duration::from_millis(300);
            s.data_timeout = Duration::from_millis(600);
            let tls = mail_send::smtp::tls::build_tls_connector(false).unwrap();
            let mut session = Session::connect(Arc::new(s), &tls).await.unwrap();
            let env = envelope("s@a.example", "r@b.example", b"Subject: x\r\n\r\nhi\r\n");
            session.send(&env).await.unwrap();
            let started = std::time::Instant::now();
            let (f, after) = session.send(&env).await.unwrap_err();
            let took = started.elapsed();
            assert_eq!(f.category, Category::ReadTimeout, "{f:?}");
            if at_dot {
                assert_eq!((f.stage, after), (Stage::Data, Afterwards::InDoubt));
                assert!(took >= Duration::from_millis(600), "{took:?}");
            } else {
                assert_eq!((f.stage, after), (Stage::MailFrom, Afterwards::Broken));
                assert!(took >= Duration::from_millis(300), "{took:?}");
            }
        }
    }

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
