//! The listener, the state shared by sessions, and the handle tests hold.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING,
    EXT_SIZE, EXT_SMTP_UTF8, EhloResponse,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::config::{SinkConfig, Storage};
use crate::maildir::Maildir;
use crate::script::Script;
use crate::session;

/// One accepted message, as [`SinkHandle::received`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Unix time in milliseconds at the end of DATA.
    pub at_ms: i64,
    /// The `MAIL FROM` address (empty for the null sender `<>`).
    pub mail_from: String,
    /// The accepted `RCPT TO` addresses, in order.
    pub rcpt_to: Vec<String>,
    /// Message size in bytes after dot-unstuffing.
    pub size: usize,
    /// The `Message-ID` header without its angle brackets, if present.
    pub message_id: Option<String>,
    /// The id in the `250 2.0.0 Ok: queued as <id>` reply.
    pub queue_id: String,
    /// The message bytes, only with [`Storage::Memory`].
    pub data: Option<Vec<u8>>,
}

/// Counters since start, from [`SinkHandle::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// `MAIL FROM` commands accepted (transactions started).
    pub transactions: u64,
    /// Messages accepted at the end of DATA.
    pub accepted: u64,
    /// Every 4xx/5xx reply sent, by code, scripted or not.
    pub rejections: BTreeMap<u16, u64>,
    /// Connections closed by an `action=disconnect` rule.
    pub disconnects: u64,
}

impl SinkStats {
    /// How many replies with this code were sent.
    pub fn rejected(&self, code: u16) -> u64 {
        self.rejections.get(&code).copied().unwrap_or(0)
    }
}

/// State every session reads and updates. Locks are held for a push or a
/// map update, never across an await.
pub(crate) struct Shared {
    pub(crate) config: SinkConfig,
    pub(crate) script: Script,
    pub(crate) maildir: Option<Arc<Maildir>>,
    /// The EHLO reply, built once.
    pub(crate) ehlo: Vec<u8>,
    received: Mutex<Vec<Received>>,
    rejections: Mutex<BTreeMap<u16, u64>>,
    connections: AtomicU64,
    transactions: AtomicU64,
    accepted: AtomicU64,
    disconnects: AtomicU64,
    queue_ids: AtomicU64,
}

/// A poisoned lock only means a session panicked while pushing plain data;
/// what is there is still consistent enough for a test server.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn count_transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_disconnect(&self) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rejection(&self, code: u16) {
        *lock(&self.rejections).entry(code).or_default() += 1;
    }

    pub(crate) fn next_queue_id(&self) -> String {
        format!(
            "{:010X}",
            self.queue_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    pub(crate) fn record(&self, received: Received) {
        lock(&self.received).push(received);
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }
}

fn ehlo_reply(config: &SinkConfig) -> Vec<u8> {
    let mut ehlo = EhloResponse::new(config.hostname.as_str());
    ehlo.capabilities = EXT_PIPELINING | EXT_8BIT_MIME | EXT_SIZE | EXT_ENHANCED_STATUS_CODES;
    ehlo.size = config.max_message_size;
    if config.smtputf8 {
        ehlo.capabilities |= EXT_SMTP_UTF8;
    }
    if config.auth.is_some() {
        ehlo.capabilities |= EXT_AUTH;
        ehlo.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
    }
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ehlo.write(&mut out);
    out
}

/// A running sink. Dropping it stops the server too; [`shutdown`](Self::shutdown)
/// also waits for the sessions to end.
#[must_use = "dropping the handle stops the sink"]
pub struct SinkHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// Sessions and the accept loop watch it; `true` (or the sender being
    /// dropped with the handle) means stop.
    shutdown: watch::Sender<bool>,
    /// The accept loop, which owns the sessions and ends after them.
    task: JoinHandle<()>,
}

/// Binds `config.listen` and starts serving in the background.
///
/// Fails if the address cannot be bound or the Maildir cannot be created.
pub async fn start(config: SinkConfig) -> io::Result<SinkHandle> {
    let maildir = match &config.storage {
        Storage::Maildir(dir) => Some(Arc::new(Maildir::create(dir)?)),
        Storage::Memory => None,
    };
    let listener = TcpListener::bind(config.listen).await?;
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        script: Script::new(config.rules.clone()),
        ehlo: ehlo_reply(&config),
        config,
        maildir,
        received: Mutex::new(Vec::new()),
        rejections: Mutex::new(BTreeMap::new()),
        connections: AtomicU64::new(0),
        transactions: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        queue_ids: AtomicU64::new(0),
    });
    let (shutdown, watcher) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, shared.clone(), watcher));
    debug!(%local_addr, "edm-sink listening");
    Ok(SinkHandle {
        local_addr,
        shared,
        shutdown,
        task,
    })
}

/// Resolves once shutdown is asked for, or the handle is gone.
pub(crate) async fn stopped(watcher: &mut watch::Receiver<bool>) {
    let _ = watcher.wait_for(|&stop| stop).await;
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut watcher: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut watcher) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Without TCP_NODELAY each reply waits for the peer's
                    // delayed ACK: ~40 ms per message.
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(%peer, error = %e, "set_nodelay failed");
                    }
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    sessions.spawn(session::run(stream, peer, shared.clone(), watcher.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
    debug!("edm-sink stopped");
}

impl SinkHandle {
    /// The address actually bound (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every accepted message so far, in order of acceptance.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// How many messages were accepted.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SinkStats {
        let s = &self.shared;
        SinkStats {
            connections: s.connections.load(Ordering::Relaxed),
            transactions: s.transactions.load(Ordering::Relaxed),
            accepted: s.accepted.load(Ordering::Relaxed),
            rejections: lock(&s.rejections).clone(),
            disconnects: s.disconnects.load(Ordering::Relaxed),
        }
    }

    /// Stops listening, tells open sessions `421 4.3.2` and closes them, and
    /// waits until they are gone.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}
