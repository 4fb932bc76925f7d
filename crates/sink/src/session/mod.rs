//! One SMTP session: read what the client sent, answer every complete
//! command in it, flush once, read again (RFC 2920 pipelining).

mod auth;

use std::borrow::Cow;
use std::io::{self, Write as _};
use std::mem;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use smtp_proto::{Error as ParseError, MAIL_SMTPUTF8, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, trace};

use crate::headers::message_id;
use crate::reply::Reply;
use crate::rules::{Effect, Stage};
use crate::server::{Received, Shared, stopped};

/// Longest command line accepted, CRLF excluded. RFC 5321 §4.5.3.1.4 asks
/// for 512; parameters and long addresses make 2048 a kinder floor.
const MAX_LINE: usize = 2048;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// More recipients than this in one transaction get `452 4.5.3`
/// (RFC 5321 §4.5.3.1.8 requires at least 100).
const MAX_RCPTS: usize = 1000;

pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    watcher: watch::Receiver<bool>,
) {
    debug!(%peer, "session opened");
    let mut session = Session {
        stream,
        shared,
        watcher,
        input: Vec::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        mode: Mode::Command,
        greeted: false,
        refused: false,
        authenticated: false,
        mail_from: None,
        smtputf8: false,
        rcpts: Vec::new(),
        message: Vec::new(),
    };
    match session.serve().await {
        Ok(why) => debug!(%peer, why, "session closed"),
        Err(e) => debug!(%peer, error = %e, "session ended by I/O error"),
    }
}

/// What the session is reading.
enum Mode {
    Command,
    /// Discarding the rest of an over-long line, already answered.
    SkipLongLine,
    /// Message content after `354`, dot-unstuffed into `Session::message`.
    Data(DataReceiver),
    /// Message content past the size limit: read to the final dot, dropped.
    DataTooBig(DummyDataReceiver),
    /// `AUTH PLAIN` waiting for its response line.
    AuthPlain,
    /// `AUTH LOGIN` waiting for the user name.
    AuthLoginUser,
    /// `AUTH LOGIN` waiting for the password of this user.
    AuthLoginPassword(String),
}

/// Whether the session goes on after a step.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close(&'static str),
}

/// The outcome of a rule that applied.
enum Applied {
    /// It answered (or hung up): the command is done.
    Done(Flow),
    /// It only stalled: carry on with the normal reply.
    Proceed,
}

struct Session {
    stream: TcpStream,
    shared: Arc<Shared>,
    watcher: watch::Receiver<bool>,
    /// Bytes read and not yet consumed.
    input: Vec<u8>,
    /// Replies waiting for the next flush.
    out: Vec<u8>,
    mode: Mode,
    /// EHLO or HELO seen.
    greeted: bool,
    /// The greeting was a scripted refusal: only QUIT is served
    /// (RFC 5321 §3.1).
    refused: bool,
    authenticated: bool,
    mail_from: Option<String>,
    /// The transaction's MAIL carried SMTPUTF8 (RFC 6531 §3.4).
    smtputf8: bool,
    rcpts: Vec<String>,
    /// The message being received, behind a 2-byte CRLF seed (see `start_data`).
    message: Vec<u8>,
}

impl Session {
    async fn serve(&mut self) -> io::Result<&'static str> {
        let flow = self.greet().await?;
        self.flush().await?;
        if let Flow::Close(why) = flow {
            return Ok(why);
        }
        let idle = self.shared.config.idle_timeout;
        loop {
            let flow = self.process_input().await?;
            self.flush().await?;
            if let Flow::Close(why) = flow {
                return Ok(why);
            }
            self.input.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = tokio::time::timeout(idle, self.stream.read_buf(&mut self.input)) => read,
                () = stopped(&mut self.watcher) => {
                    self.send(421, "4.3.2 Service shutting down, closing connection");
                    self.flush().await?;
                    return Ok("server shutdown");
                }
            };
            match read {
                Err(_elapsed) => {
                    let text = format!(
                        "4.4.2 {} Idle timeout, closing connection",
                        self.shared.config.hostname
                    );
                    self.send(421, &text);
                    self.flush().await?;
                    return Ok("idle timeout");
                }
                Ok(Ok(0)) => return Ok("client closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queues a reply built by the server: `code` then `text`, one line.
    fn send(&mut self, code: u16, text: &str) {
        // Writing to a Vec cannot fail.
        let _ = write!(self.out, "{code} {text}\r\n");
        if code >= 400 {
            self.shared.count_rejection(code);
        }
    }

    /// Queues a scripted reply; a 421 closes the session.
    fn send_reply(&mut self, reply: &Reply) -> Flow {
        reply.write_to(&mut self.out);
        if reply.is_rejection() {
            self.shared.count_rejection(reply.code());
        }
        if reply.closes_connection() {
            Flow::Close("421 sent")
        } else {
            Flow::Continue
        }
    }

    async fn greet(&mut self) -> io::Result<Flow> {
        if let Some(flow) = self.rule(Stage::Greeting, &[]).await? {
            // A refusal that keeps the line open (554) still has to answer
            // QUIT (RFC 5321 §3.1).
            self.refused = true;
            return Ok(flow);
        }
        let text = format!("{} ESMTP edm-sink", self.shared.config.hostname);
        self.send(220, &text);
        Ok(Flow::Continue)
    }

    /// Applies the first rule for this attempt, if any; `Some` when it
    /// answered (or hung up) in place of the normal reply.
    async fn rule(&mut self, stage: Stage, addresses: &[&str]) -> io::Result<Option<Flow>> {
        let Some(effect) = self.shared.script.evaluate(stage, addresses) else {
            return Ok(None);
        };
        trace!(%stage, ?addresses, ?effect, "rule applies");
        Ok(match self.apply(effect).await? {
            Applied::Done(flow) => Some(flow),
            Applied::Proceed => None,
        })
    }

    /// Carries out a rule's effect.
    async fn apply(&mut self, effect: Effect) -> io::Result<Applied> {
        Ok(match effect {
            Effect::Reply(reply) => Applied::Done(self.send_reply(&reply)),
            Effect::Disconnect => {
                self.shared.count_disconnect();
                Applied::Done(Flow::Close("scripted disconnect"))
            }
            Effect::Stall(duration) => match self.stall(duration).await? {
                Flow::Continue => Applied::Proceed,
                flow => Applied::Done(flow),
            },
            Effect::StallThenReply(duration, reply) => match self.stall(duration).await? {
                Flow::Continue => Applied::Done(self.send_reply(&reply)),
                flow => Applied::Done(flow),
            },
        })
    }

    /// Sends what is already answered, then waits, unless the server stops.
    async fn stall(&mut self, duration: Duration) -> io::Result<Flow> {
        self.flush().await?;
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(Flow::Continue),
            () = stopped(&mut self.watcher) => {
                self.send(421, "4.3.2 Service shutting down, closing connection");
                Ok(Flow::Close("server shutdown"))
            }
        }
    }

    /// Consumes every complete unit (command line, auth line, message) in
    /// `input`, queueing the replies.
    async fn process_input(&mut self) -> io::Result<Flow> {
        // Taken out so requests can borrow from it while `self` is mutated.
        let input = mem::take(&mut self.input);
        let mut pos = 0;
        let flow = loop {
            let rest = &input[pos..];
            if rest.is_empty() {
                break Flow::Continue;
            }
            match &mut self.mode {
                Mode::Data(receiver) => {
                    let mut bytes = rest.iter();
                    let done = receiver.ingest(&mut bytes, &mut self.message);
                    pos = input.len() - bytes.len();
                    // Minus the CRLF seed of `start_data`.
                    let too_big = over_limit(&self.shared, self.message.len() - 2);
                    if too_big && !done {
                        self.mode = Mode::DataTooBig(DummyDataReceiver::new_data(receiver));
                        self.message = Vec::new();
                    } else if too_big {
                        self.too_big();
                    } else if done {
                        self.mode = Mode::Command;
                        let flow = self.end_of_data().await?;
                        if flow != Flow::Continue {
                            break flow;
                        }
                    }
                }
                Mode::DataTooBig(receiver) => {
                    let mut bytes = rest.iter();
                    let done = receiver.ingest(&mut bytes);
                    pos = input.len() - bytes.len();
                    if done {
                        self.too_big();
                    }
                }
                Mode::SkipLongLine => match rest.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        pos += nl + 1;
                        self.mode = Mode::Command;
                    }
                    None => pos = input.len(),
                },
                Mode::Command
                | Mode::AuthPlain
                | Mode::AuthLoginUser
                | Mode::AuthLoginPassword(_) => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > MAX_LINE + 2 {
                            self.send(500, "5.5.2 Line too long");
                            self.mode = Mode::SkipLongLine;
                            pos = input.len();
                        }
                        break Flow::Continue;
                    };
                    let line = &rest[..=nl];
                    pos += nl + 1;
                    let content = line.strip_suffix(b"\n").unwrap_or(line);
                    let content = content.strip_suffix(b"\r").unwrap_or(content);
                    let flow = if content.len() > MAX_LINE {
                        self.send(500, "5.5.2 Line too long");
                        Flow::Continue
                    } else if matches!(self.mode, Mode::Command) {
                        self.command(Request::parse(&mut line.iter())).await?
                    } else {
                        self.auth_line(content);
                        Flow::Continue
                    };
                    if flow != Flow::Continue {
                        break flow;
                    }
                }
            }
        };
        self.input = input;
        self.input.drain(..pos);
        Ok(flow)
    }

    /// After the final dot of a message over the size limit (RFC 1870 §6.2).
    fn too_big(&mut self) {
        self.mode = Mode::Command;
        self.message = Vec::new();
        self.end_transaction();
        self.send(552, "5.3.4 Message size exceeds fixed maximum message size");
    }

    fn end_transaction(&mut self) {
        self.mail_from = None;
        self.smtputf8 = false;
        self.rcpts.clear();
    }

    async fn command(
        &mut self,
        request: Result<Request<Cow<'_, str>>, ParseError>,
    ) -> io::Result<Flow> {
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                self.parse_error(e);
                return Ok(Flow::Continue);
            }
        };
        if self.refused && !matches!(request, Request::Quit) {
            self.send(503, "5.5.1 No service here, only QUIT");
            return Ok(Flow::Continue);
        }
        match request {
            Request::Ehlo { .. } => {
                self.end_transaction();
                self.greeted = true;
                self.out.extend_from_slice(&self.shared.ehlo);
            }
            Request::Helo { .. } => {
                self.end_transaction();
                self.greeted = true;
                let text = self.shared.config.hostname.clone();
                self.send(250, &text);
            }
            Request::Mail { from } => {
                let utf8 = from.flags & MAIL_SMTPUTF8 != 0;
                return self.mail(&from.address, from.size, utf8).await;
            }
            Request::Rcpt { to } => return self.rcpt(&to.address).await,
            Request::Data => self.start_data(),
            Request::Rset => {
                self.end_transaction();
                self.send(250, "2.0.0 Ok");
            }
            Request::Noop { .. } => self.send(250, "2.0.0 Ok"),
            Request::Quit => {
                self.send(221, "2.0.0 Bye");
                return Ok(Flow::Close("QUIT"));
            }
            Request::Vrfy { .. } => {
                self.send(
                    252,
                    "2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                );
            }
            Request::Help { .. } => self.send(214, "2.0.0 See RFC 5321"),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::Lhlo { .. }
            | Request::Bdat { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::StartTls => self.send(502, "5.5.1 Command not implemented"),
        }
        Ok(Flow::Continue)
    }

    fn parse_error(&mut self, error: ParseError) {
        match error {
            ParseError::UnknownCommand => {
                self.send(500, "5.5.2 Syntax error, command unrecognized")
            }
            ParseError::InvalidSenderAddress => self.send(501, "5.1.7 Invalid sender address"),
            ParseError::InvalidRecipientAddress => {
                self.send(501, "5.1.3 Invalid recipient address")
            }
            ParseError::SyntaxError { syntax } => {
                self.send(501, &format!("5.5.4 Syntax: {syntax}"))
            }
            ParseError::InvalidParameter { param } => {
                self.send(501, &format!("5.5.4 Invalid parameter {param}"))
            }
            ParseError::UnsupportedParameter { param } => {
                self.send(555, &format!("5.5.4 Unsupported parameter {param}"))
            }
            // A whole line was given, so these only come from malformed input.
            ParseError::NeedsMoreData { .. }
            | ParseError::ResponseTooLong
            | ParseError::InvalidResponse { .. } => {
                self.send(500, "5.5.2 Syntax error, command unrecognized")
            }
        }
    }

    async fn mail(&mut self, from: &str, declared_size: usize, utf8: bool) -> io::Result<Flow> {
        if !self.greeted {
            self.send(503, "5.5.1 Send EHLO or HELO first");
        } else if self.shared.config.auth.is_some() && !self.authenticated {
            self.send(530, "5.7.0 Authentication required");
        } else if self.mail_from.is_some() {
            self.send(503, "5.5.1 Nested MAIL command");
        } else if over_limit(&self.shared, declared_size) {
            self.send(552, "5.3.4 Message size exceeds fixed maximum message size");
        } else if utf8 && !self.shared.config.smtputf8 {
            self.send(555, "5.5.4 Unsupported parameter SMTPUTF8");
        } else if !utf8 && !from.is_ascii() {
            // RFC 6531 §3.7.4.1.
            self.send(
                553,
                "5.6.7 Non-ASCII addresses not permitted for that sender",
            );
        } else {
            if let Some(flow) = self.rule(Stage::Mail, &[from]).await? {
                return Ok(flow);
            }
            self.mail_from = Some(from.to_owned());
            self.smtputf8 = utf8;
            self.shared.count_transaction();
            self.send(250, "2.1.0 Ok");
        }
        Ok(Flow::Continue)
    }

    async fn rcpt(&mut self, to: &str) -> io::Result<Flow> {
        if self.mail_from.is_none() {
            self.send(503, "5.5.1 Need MAIL before RCPT");
        } else if self.rcpts.len() >= MAX_RCPTS {
            self.send(452, "4.5.3 Too many recipients");
        } else if !self.smtputf8 && !to.is_ascii() {
            // RFC 6531 §3.7.4.1.
            self.send(
                553,
                "5.6.7 Non-ASCII addresses not permitted for that recipient",
            );
        } else {
            if let Some(flow) = self.rule(Stage::Rcpt, &[to]).await? {
                return Ok(flow);
            }
            self.rcpts.push(to.to_owned());
            self.send(250, "2.1.5 Ok");
        }
        Ok(Flow::Continue)
    }

    fn start_data(&mut self) {
        if self.mail_from.is_none() {
            self.send(503, "5.5.1 Need MAIL before DATA");
        } else if self.rcpts.is_empty() {
            self.send(503, "5.5.1 Need RCPT before DATA");
        } else {
            // The receiver recognises the final dot only after a CRLF, and
            // the CRLF ending the DATA line counts (RFC 5321 §4.1.1.4): seed
            // it, so an empty message or a stuffed first line work too.
            let mut receiver = DataReceiver::new();
            self.message.clear();
            receiver.ingest(&mut b"\r\n".iter(), &mut self.message);
            self.mode = Mode::Data(receiver);
            self.send(354, "End data with <CR><LF>.<CR><LF>");
        }
    }

    /// After the final dot: apply data-stage rules, then store.
    async fn end_of_data(&mut self) -> io::Result<Flow> {
        let mut message = mem::take(&mut self.message);
        message.drain(..2); // the CRLF seed of `start_data`
        let mail_from = self.mail_from.take().unwrap_or_default();
        let rcpts = mem::take(&mut self.rcpts);
        // RFC 6532 §3: UTF-8 in header fields only in an SMTPUTF8 transaction.
        let header_end = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(message.len());
        if !mem::take(&mut self.smtputf8) && !message[..header_end].is_ascii() {
            self.send(554, "5.6.7 Non-ASCII header without SMTPUTF8 (RFC 6532)");
            return Ok(Flow::Continue);
        }

        let addresses: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        if let Some(flow) = self.rule(Stage::Data, &addresses).await? {
            return Ok(flow);
        }

        let at_ms = now_ms();
        let queue_id = self.shared.next_queue_id();
        let size = message.len();
        let message_id = message_id(&message);
        let data = match &self.shared.maildir {
            Some(maildir) => {
                let maildir = maildir.clone();
                let (from, to) = (mail_from.clone(), rcpts.clone());
                let written = tokio::task::spawn_blocking(move || {
                    maildir.deliver(at_ms, &from, &to, &message)
                })
                .await;
                match written {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => {
                        debug!(error = %e, "maildir delivery failed");
                        self.send(451, "4.3.0 Local error in processing");
                        return Ok(Flow::Continue);
                    }
                    Err(e) => {
                        debug!(error = %e, "maildir task failed");
                        self.send(451, "4.3.0 Local error in processing");
                        return Ok(Flow::Continue);
                    }
                }
            }
            None => Some(message),
        };
        let reply = format!("2.0.0 Ok: queued as {queue_id}");
        // Recorded before the reply goes out, so a client that saw the 250
        // always finds the message in `received()`.
        self.shared.record(Received {
            at_ms,
            mail_from,
            rcpt_to: rcpts,
            size,
            message_id,
            queue_id,
            data,
        });
        self.send(250, &reply);
        Ok(Flow::Continue)
    }
}

/// Whether `size` bytes exceed the configured limit (0 is no limit).
fn over_limit(shared: &Shared, size: usize) -> bool {
    let limit = shared.config.max_message_size;
    limit > 0 && size > limit
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
