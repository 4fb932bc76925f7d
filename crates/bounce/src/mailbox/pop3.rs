//! POP3 (RFC 1939) with STLS (RFC 2595), written over tokio-rustls: a few
//! line-based commands, smaller than any crate that would fit.
//!
//! POP3 has no folders: an applied message is deleted (`DELE`, committed by
//! `QUIT`, RFC 1939 §6) only when `delete` is set; otherwise every message
//! stays, and the next pass reads them all again. Applying nothing twice is
//! then the caller's job, by the message's identity.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::net::{self, Stream, protocol, server, step};
use super::{Disposition, MailboxConfig, MailboxError, Security, Summary};

/// A line longer than this is not POP3 (RFC 1939 §3: responses up to 512
/// octets; message lines up to 998 by RFC 5322, but some are longer in the
/// wild, hence the margin).
const MAX_LINE: usize = 1 << 20;
/// A message larger than this is refused rather than held in memory.
const MAX_MESSAGE: usize = 64 << 20;

struct Conn<'a> {
    cfg: &'a MailboxConfig,
    io: BufReader<Stream>,
}

impl<'a> Conn<'a> {
    fn new(cfg: &'a MailboxConfig, io: Stream) -> Conn<'a> {
        Conn {
            cfg,
            io: BufReader::new(io),
        }
    }

    fn into_inner(self) -> Stream {
        self.io.into_inner()
    }

    /// One line, CRLF included, under the timeout.
    async fn line(&mut self, what: &str) -> Result<Vec<u8>, MailboxError> {
        let cfg = self.cfg;
        let mut buf = Vec::new();
        let io = &mut self.io;
        let n = step(
            cfg,
            what,
            async {
                // Read in bounded pieces so a server that never sends a line
                // end cannot fill memory.
                loop {
                    let chunk = io.fill_buf().await?;
                    if chunk.is_empty() {
                        return Ok(buf.len());
                    }
                    let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (chunk.len(), false),
                    };
                    buf.extend_from_slice(&chunk[..take]);
                    io.consume(take);
                    if done {
                        return Ok(buf.len());
                    }
                    if buf.len() > MAX_LINE {
                        return Err(std::io::Error::other("a line longer than 1 MiB"));
                    }
                }
            },
            |e: std::io::Error| protocol(cfg, format!("{what}: {e}")),
        )
        .await?;
        if n == 0 {
            return Err(protocol(
                cfg,
                format!("{what}: the server closed the connection"),
            ));
        }
        Ok(buf)
    }

    /// A status line: the text after `+OK`, or the server's `-ERR` words.
    async fn status(&mut self, what: &str) -> Result<Result<String, String>, MailboxError> {
        let line = self.line(what).await?;
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if let Some(rest) = text.strip_prefix("+OK") {
            Ok(Ok(rest.trim().to_string()))
        } else if let Some(rest) = text.strip_prefix("-ERR") {
            Ok(Err(rest.trim().to_string()))
        } else {
            Err(protocol(
                self.cfg,
                format!("{what}: not a POP3 answer (is this a POP3 port?): {text:?}"),
            ))
        }
    }

    async fn send(&mut self, command: &str, what: &str) -> Result<(), MailboxError> {
        let cfg = self.cfg;
        let io = self.io.get_mut();
        step(
            cfg,
            what,
            async {
                io.write_all(command.as_bytes()).await?;
                io.write_all(b"\r\n").await?;
                io.flush().await
            },
            |e| protocol(cfg, format!("{what}: {e}")),
        )
        .await
    }

    /// Sends a command that must answer `+OK`; `what` names it in errors (a
    /// command carrying the password is never quoted).
    async fn ok(&mut self, command: &str, what: &str) -> Result<String, MailboxError> {
        self.send(command, what).await?;
        self.status(what)
            .await?
            .map_err(|e| protocol(self.cfg, format!("{what} refused: {e}")))
    }

    /// The lines of a multi-line answer up to the lone `.`, dot-unstuffed
    /// (RFC 1939 §3), line ends as sent.
    async fn multiline(&mut self, what: &str) -> Result<Vec<u8>, MailboxError> {
        let mut out = Vec::new();
        loop {
            let line = self.line(what).await?;
            if line == b".\r\n" || line == b".\n" {
                return Ok(out);
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            out.extend_from_slice(line);
            if out.len() > MAX_MESSAGE {
                return Err(protocol(
                    self.cfg,
                    format!("{what}: larger than {} MiB", MAX_MESSAGE >> 20),
                ));
            }
        }
    }
}

pub(super) async fn process<F>(cfg: &MailboxConfig, mut handle: F) -> Result<Summary, MailboxError>
where
    F: FnMut(&[u8]) -> Disposition + Send,
{
    let mut conn = login(cfg).await?;
    // On an error no QUIT is sent, so nothing marked is deleted (RFC 1939
    // §6): the next pass sees those messages again.
    let summary = pass(&mut conn, &mut handle).await?;
    // QUIT commits the deletions (the UPDATE state, RFC 1939 §6).
    match conn.ok("QUIT", "QUIT").await {
        Ok(_) => Ok(summary),
        Err(e) if summary.processed > 0 && cfg.delete => Err(protocol(
            cfg,
            format!(
                "the deletions of {} applied messages were not committed: {e}",
                summary.processed
            ),
        )),
        Err(_) => Ok(summary),
    }
}

async fn login(cfg: &MailboxConfig) -> Result<Conn<'_>, MailboxError> {
    let tcp = net::connect(cfg).await?;
    let stream: Stream = match cfg.security {
        Security::Tls => net::handshake(cfg, &net::connector(cfg)?, tcp).await?,
        Security::Plain | Security::Starttls => Box::new(tcp),
    };
    let mut conn = Conn::new(cfg, stream);
    conn.status("waiting for the greeting")
        .await?
        .map_err(|e| protocol(cfg, format!("the server refused the connection: {e}")))?;
    if cfg.security == Security::Starttls {
        let tls = net::connector(cfg)?;
        conn.send("STLS", "STLS").await?;
        conn.status("STLS").await?.map_err(|e| {
            protocol(
                cfg,
                format!("STLS refused ({e}): use security = \"tls\" (port 995)"),
            )
        })?;
        // Whatever was buffered after the STLS answer is dropped with the
        // reader: bytes injected in clear before the handshake must not be
        // read as if they came over TLS (CVE-2011-0411; RFC 2595 §4 also
        // has the client forget what it learned before TLS).
        let io = conn.into_inner();
        conn = Conn::new(cfg, net::handshake(cfg, &tls, io).await?);
    }
    let auth_err = |reason: String| MailboxError::Auth {
        server: server(cfg),
        username: cfg.username.clone(),
        reason,
    };
    conn.send(&format!("USER {}", cfg.username), "USER").await?;
    conn.status("USER").await?.map_err(auth_err)?;
    // The command text is never put into an error: it holds the password.
    conn.send(&format!("PASS {}", cfg.password), "PASS").await?;
    conn.status("PASS").await?.map_err(auth_err)?;
    Ok(conn)
}

/// One pass: every message in the maildrop, in order.
async fn pass<F>(conn: &mut Conn<'_>, handle: &mut F) -> Result<Summary, MailboxError>
where
    F: FnMut(&[u8]) -> Disposition + Send,
{
    let cfg = conn.cfg;
    let stat = conn.ok("STAT", "STAT").await?;
    let count: usize = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| protocol(cfg, format!("STAT: cannot read {stat:?}")))?;
    let mut summary = Summary::default();
    for n in 1..=count {
        conn.ok(&format!("RETR {n}"), &format!("RETR {n}")).await?;
        let body = conn.multiline(&format!("RETR {n}")).await?;
        summary.seen += 1;
        match handle(&body) {
            Disposition::Leave => summary.left += 1,
            Disposition::Processed => {
                if cfg.delete {
                    conn.ok(&format!("DELE {n}"), &format!("DELE {n}")).await?;
                }
                summary.processed += 1;
            }
        }
    }
    Ok(summary)
}
