//! IMAP (RFC 9051, RFC 3501) with async-imap over tokio-rustls.
//!
//! One pass: log in, SELECT the folder, `UID SEARCH UNDELETED`, then per
//! message `UID FETCH uid BODY.PEEK[]` (PEEK: reading sets no `\Seen`,
//! RFC 3501 §6.4.5), hand the bytes over, and move applied messages a
//! batch at a time ([`BATCH`]): `UID MOVE` (RFC 6851) when offered, else
//! `UID COPY` + `\Deleted` + `UID EXPUNGE` (RFC 4315), or only the last
//! two when `delete` is set.

use std::collections::HashSet;

use async_imap::imap_proto::{self, Response, Status};
use async_imap::types::Capabilities;
use async_imap::{Authenticator, Client, Session};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::net::{self, Stream, protocol, server, step};
use super::{Disposition, MailboxConfig, MailboxError, Security, Summary};

/// `AUTHENTICATE PLAIN` (RFC 4616): authzid empty, then user and password.
struct Plain<'a> {
    username: &'a str,
    password: &'a str,
}

impl Authenticator for Plain<'_> {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        let mut r = Vec::with_capacity(self.username.len() + self.password.len() + 2);
        r.push(0);
        r.extend_from_slice(self.username.as_bytes());
        r.push(0);
        r.extend_from_slice(self.password.as_bytes());
        r
    }
}

/// What the server offers, by upper-case name.
struct Caps(HashSet<String>);

impl Caps {
    fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    fn from_session(c: &Capabilities) -> Caps {
        Caps(
            c.iter()
                .map(|c| match c {
                    async_imap::types::Capability::Imap4rev1 => "IMAP4REV1".to_string(),
                    async_imap::types::Capability::Auth(a) => format!("AUTH={}", a.to_uppercase()),
                    async_imap::types::Capability::Atom(a) => a.to_uppercase(),
                })
                .collect(),
        )
    }
}

pub(super) async fn process<F>(cfg: &MailboxConfig, mut handle: F) -> Result<Summary, MailboxError>
where
    F: FnMut(&[u8]) -> Disposition + Send,
{
    let mut session = login(cfg).await?;
    let r = pass(cfg, &mut session, &mut handle).await;
    // LOGOUT is a courtesy: what was moved is moved already. After a
    // timeout the server is not answering: do not wait for it twice.
    if !matches!(r, Err(MailboxError::Timeout { .. })) {
        let _ = tokio::time::timeout(cfg.timeout, session.logout()).await;
    }
    r
}

/// Connects, protects the connection and logs in.
async fn login(cfg: &MailboxConfig) -> Result<Session<Stream>, MailboxError> {
    let tcp = net::connect(cfg).await?;
    let stream: Stream = match cfg.security {
        Security::Tls => net::handshake(cfg, &net::connector(cfg)?, tcp).await?,
        Security::Plain => Box::new(tcp),
        Security::Starttls => {
            let tls = net::connector(cfg)?;
            let mut client = Client::new(Box::new(tcp) as Stream);
            greeting(cfg, &mut client).await?;
            let caps = capabilities(cfg, &mut client).await?;
            if !caps.has("STARTTLS") {
                return Err(protocol(
                    cfg,
                    "the server does not offer STARTTLS: use security = \"tls\" (port 993)",
                ));
            }
            step(
                cfg,
                "STARTTLS",
                client.run_command_and_check_ok("STARTTLS", None),
                |e| protocol(cfg, format!("STARTTLS refused: {e}")),
            )
            .await?;
            // RFC 3501 §6.2.1: no greeting after STARTTLS. into_inner()
            // drops async-imap's read buffer, so bytes injected in clear
            // after the OK are never read as if they came over TLS
            // (CVE-2011-0411), and the capabilities are asked again.
            net::handshake(cfg, &tls, client.into_inner()).await?
        }
    };
    let mut client = Client::new(stream);
    if cfg.security != Security::Starttls {
        greeting(cfg, &mut client).await?;
    }
    let caps = capabilities(cfg, &mut client).await?;
    let auth_err = |e: async_imap::error::Error| match e {
        async_imap::error::Error::No(reason) | async_imap::error::Error::Bad(reason) => {
            MailboxError::Auth {
                server: server(cfg),
                username: cfg.username.clone(),
                reason: server_words(&reason),
            }
        }
        e => protocol(cfg, format!("while logging in: {e}")),
    };
    // AUTHENTICATE PLAIN carries any UTF-8 password; LOGIN's quoted
    // strings are 7-bit (RFC 3501 §4.3). LOGIN when PLAIN is not offered.
    let session = if caps.has("AUTH=PLAIN") {
        let auth = Plain {
            username: &cfg.username,
            password: &cfg.password,
        };
        step(
            cfg,
            "logging in",
            async { client.authenticate("PLAIN", auth).await.map_err(|(e, _)| e) },
            auth_err,
        )
        .await?
    } else if caps.has("LOGINDISABLED") {
        return Err(protocol(
            cfg,
            "the server offers neither LOGIN nor AUTHENTICATE PLAIN on this connection",
        ));
    } else {
        step(
            cfg,
            "logging in",
            async {
                client
                    .login(&cfg.username, &cfg.password)
                    .await
                    .map_err(|(e, _)| e)
            },
            auth_err,
        )
        .await?
    };
    Ok(session)
}

/// The server's first words: `* OK` (or `* PREAUTH`); `* BYE` is a refusal.
async fn greeting(cfg: &MailboxConfig, client: &mut Client<Stream>) -> Result<(), MailboxError> {
    let first = step(
        cfg,
        "waiting for the greeting",
        client.read_response(),
        |e| protocol(cfg, format!("reading the greeting: {e}")),
    )
    .await?;
    let Some(first) = first else {
        return Err(protocol(cfg, "the server closed the connection at once"));
    };
    match first.parsed() {
        Response::Data {
            status: Status::Ok | Status::PreAuth,
            ..
        } => Ok(()),
        other => Err(protocol(
            cfg,
            format!("unexpected greeting (is this an IMAP port?): {other:?}"),
        )),
    }
}

/// `CAPABILITY` before login (the greeting's may be stale after STARTTLS,
/// and Gmail's greeting carries none).
async fn capabilities(
    cfg: &MailboxConfig,
    client: &mut Client<Stream>,
) -> Result<Caps, MailboxError> {
    step(
        cfg,
        "CAPABILITY",
        async {
            // Written by hand: async-imap offers no pre-login CAPABILITY.
            // The tag cannot collide with async-imap's (`A0001`, …).
            let id = "C0";
            let io = client.get_mut();
            io.write_all(b"C0 CAPABILITY\r\n").await?;
            io.flush().await?;
            let mut caps = HashSet::new();
            loop {
                let Some(r) = client.read_response().await? else {
                    return Err(async_imap::error::Error::ConnectionLost);
                };
                match r.parsed() {
                    Response::Capabilities(list) => {
                        for c in list {
                            caps.insert(match c {
                                imap_proto::Capability::Imap4rev1 => "IMAP4REV1".to_string(),
                                imap_proto::Capability::Auth(a) => {
                                    format!("AUTH={}", a.to_uppercase())
                                }
                                imap_proto::Capability::Atom(a) => a.to_uppercase(),
                            });
                        }
                    }
                    Response::Done { tag, status, .. } if tag.0 == id => {
                        return match status {
                            Status::Ok => Ok(Caps(caps)),
                            _ => Err(async_imap::error::Error::Bad(format!(
                                "CAPABILITY answered {status:?}"
                            ))),
                        };
                    }
                    _ => {}
                }
            }
        },
        |e| protocol(cfg, format!("CAPABILITY: {e}")),
    )
    .await
}

/// One pass over the selected folder.
async fn pass<F>(
    cfg: &MailboxConfig,
    session: &mut Session<Stream>,
    handle: &mut F,
) -> Result<Summary, MailboxError>
where
    F: FnMut(&[u8]) -> Disposition + Send,
{
    let caps = step(cfg, "CAPABILITY", session.capabilities(), |e| {
        protocol(cfg, format!("CAPABILITY: {e}"))
    })
    .await?;
    let caps = Caps::from_session(&caps);
    step(cfg, "SELECT", session.select(&cfg.folder), |e| {
        protocol(cfg, format!("cannot open folder {:?}: {e}", cfg.folder))
    })
    .await?;
    // UNDELETED: a message already flagged \Deleted (a COPY fallback cut
    // short before its EXPUNGE) is on its way out and was handled.
    let uids = step(cfg, "UID SEARCH", session.uid_search("UNDELETED"), |e| {
        protocol(cfg, format!("UID SEARCH: {e}"))
    })
    .await?;
    let mut uids: Vec<u32> = uids.into_iter().collect();
    uids.sort_unstable();

    let mut summary = Summary::default();
    let mut folder_ready = cfg.delete;
    let mut applied = Vec::new();
    for uid in uids {
        drain(session);
        let Some(body) = fetch(cfg, session, uid).await? else {
            // Expunged by another client since the search: nothing to read.
            continue;
        };
        summary.seen += 1;
        match handle(&body) {
            Disposition::Leave => summary.left += 1,
            Disposition::Processed => {
                summary.processed += 1;
                applied.push(uid);
                if applied.len() >= BATCH {
                    if !folder_ready {
                        ensure_folder(cfg, session).await?;
                        folder_ready = true;
                    }
                    dispose(cfg, session, &caps, &applied).await?;
                    applied.clear();
                }
            }
        }
    }
    if !applied.is_empty() {
        if !folder_ready {
            ensure_folder(cfg, session).await?;
        }
        dispose(cfg, session, &caps, &applied).await?;
    }
    Ok(summary)
}

/// Applied messages are moved this many at a time: Dovecot takes about
/// 14 ms per MOVE command on a Maildir (index update and fsync), whatever
/// the number of messages in it. A pass cut short leaves at most this many
/// applied messages in the folder; the next pass reads them again and
/// applying them again changes nothing (docs/bounces.md).
const BATCH: usize = 100;

/// A UID set (RFC 3501 §9 `sequence-set`) of sorted UIDs, runs as `a:b`.
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Unsolicited responses (EXPUNGE after a MOVE, EXISTS) are not needed:
/// empty the channel so nothing piles up.
fn drain(session: &mut Session<Stream>) {
    while session.unsolicited_responses.try_recv().is_ok() {}
}

/// `UID FETCH uid BODY.PEEK[]`: the message's exact bytes, or `None` when
/// it is gone.
async fn fetch(
    cfg: &MailboxConfig,
    session: &mut Session<Stream>,
    uid: u32,
) -> Result<Option<Vec<u8>>, MailboxError> {
    let what = format!("UID FETCH {uid}");
    step(
        cfg,
        &what,
        async {
            let mut stream = session.uid_fetch(uid.to_string(), "BODY.PEEK[]").await?;
            let mut body = None;
            while let Some(f) = stream.next().await {
                let f = f?;
                // A FETCH about another message (a flag change elsewhere)
                // may arrive in between: keep only ours.
                if f.uid == Some(uid)
                    && let Some(b) = f.body()
                {
                    body = Some(b.to_vec());
                }
            }
            Ok::<_, async_imap::error::Error>(body)
        },
        |e| protocol(cfg, format!("{what}: {e}")),
    )
    .await
}

/// Creates the processed folder unless it exists.
async fn ensure_folder(
    cfg: &MailboxConfig,
    session: &mut Session<Stream>,
) -> Result<(), MailboxError> {
    let name = &cfg.processed_folder;
    let pattern = quote(name);
    let exists = step(
        cfg,
        "LIST",
        async {
            let names: Vec<_> = session
                .list(Some(""), Some(&pattern))
                .await?
                .collect()
                .await;
            let mut found = false;
            for n in names {
                found |= n?.name() == name.as_str();
            }
            Ok::<_, async_imap::error::Error>(found)
        },
        |e| protocol(cfg, format!("LIST {name:?}: {e}")),
    )
    .await?;
    if !exists {
        step(cfg, "CREATE", session.create(name), |e| {
            protocol(cfg, format!("cannot create folder {name:?}: {e}"))
        })
        .await?;
    }
    Ok(())
}

/// Moves (or deletes, with `delete`) applied messages.
async fn dispose(
    cfg: &MailboxConfig,
    session: &mut Session<Stream>,
    caps: &Caps,
    uids: &[u32],
) -> Result<(), MailboxError> {
    let set = uid_set(uids);
    let uid = &set;
    let folder = &cfg.processed_folder;
    if !cfg.delete && caps.has("MOVE") {
        return step(cfg, "UID MOVE", session.uid_mv(&set, folder), |e| {
            protocol(cfg, format!("UID MOVE {uid} to {folder:?}: {e}"))
        })
        .await;
    }
    if !cfg.delete {
        step(cfg, "UID COPY", session.uid_copy(&set, folder), |e| {
            protocol(cfg, format!("UID COPY {uid} to {folder:?}: {e}"))
        })
        .await?;
    }
    step(
        cfg,
        "UID STORE",
        async {
            let s = session.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?;
            s.collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        },
        |e| protocol(cfg, format!("UID STORE {uid} \\Deleted: {e}")),
    )
    .await?;
    // UID EXPUNGE removes only these messages (RFC 4315 §2.1); a plain
    // EXPUNGE would also remove whatever another client flagged \Deleted,
    // so without UIDPLUS the message stays flagged (and is skipped by the
    // next pass's UNDELETED search) until the server or a client expunges.
    if caps.has("UIDPLUS") {
        step(
            cfg,
            "UID EXPUNGE",
            async {
                let s = session.uid_expunge(&set).await?;
                s.collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
            },
            |e| protocol(cfg, format!("UID EXPUNGE {uid}: {e}")),
        )
        .await?;
    }
    Ok(())
}

/// The server's own words from async-imap's `code: .., info: Some("..")`.
fn server_words(s: &str) -> String {
    s.split_once("info: Some(\"")
        .and_then(|(_, rest)| rest.strip_suffix("\")"))
        .map_or_else(|| s.to_string(), |w| w.replace("\\\"", "\""))
}

/// An IMAP quoted string (RFC 3501 §4.3).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_words_are_taken_from_async_imap_errors() {
        assert_eq!(
            server_words(
                r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#
            ),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(server_words("something else"), "something else");
    }

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
