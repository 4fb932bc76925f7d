//! The transport seam: how the engine hands one envelope to a provider.
//!
//! The engine knows connections, not protocols: it opens one per worker with
//! [`Transport::open`], sends envelopes on it one at a time with
//! [`Connection::send`], and closes it with [`Connection::close`]. SMTP
//! (`outbound::smtp`) is the first implementation; an HTTP API transport would
//! be another, with a "connection" that is a client.
//!
//! A transport is two small impls. This one accepts every message, which is
//! all a test double needs (the engine's own tests use richer ones):
//!
//! ```
//! use edm_delivery::{Afterwards, BoxFuture, Connection, Transport};
//! use edm_model::{Category, Envelope, Failure, RecipientId, Reply, Stage};
//!
//! struct AcceptAll;
//! struct Open;
//!
//! impl Transport for AcceptAll {
//!     fn describe(&self) -> String {
//!         "accept-all".into()
//!     }
//!     fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>> {
//!         Box::pin(async { Ok(Box::new(Open) as Box<dyn Connection>) })
//!     }
//! }
//!
//! impl Connection for Open {
//!     fn send<'a>(
//!         &'a mut self,
//!         env: &'a Envelope,
//!         before_dot: BoxFuture<'a, Result<(), String>>,
//!     ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>> {
//!         Box::pin(async move {
//!             // Nothing may be accepted before the durable mark is committed.
//!             before_dot.await.map_err(|e| {
//!                 (Failure::local(Stage::Data, Category::OtherTransient, e), Afterwards::Usable)
//!             })?;
//!             Ok(Reply {
//!                 code: 250,
//!                 enhanced: None,
//!                 text: format!("queued {}", env.message_id),
//!                 provider_message_id: None,
//!                 relay: None,
//!             })
//!         })
//!     }
//!     fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
//!         Box::pin(async {})
//!     }
//! }
//!
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let reply = rt.block_on(async {
//!     let mut conn = AcceptAll.open().await.unwrap();
//!     let env = Envelope {
//!         id: RecipientId(1),
//!         mail_from: "news@acme.example".into(),
//!         rcpt_to: "ann@example.com".into(),
//!         domain: "example.com".into(),
//!         message_id: "1.welcome@acme.example".into(),
//!         body: b"Subject: hi\r\n\r\nHello\r\n".to_vec(),
//!         attempt: Default::default(),
//!     };
//!     let reply = conn.send(&env, Box::pin(async { Ok(()) })).await;
//!     conn.close().await;
//!     reply
//! });
//! assert_eq!(reply.unwrap().text, "queued 1.welcome@acme.example");
//! ```
//!
//! Dynamic dispatch on purpose: one boxed future per transaction costs
//! nothing next to a network round trip, and keeps the engine free of a type
//! parameter on every function.

use std::future::Future;
use std::pin::Pin;

use edm_model::{DeliveryEvent, Envelope, Failure, RecipientId, Reply};

pub use crate::outbound::session::Afterwards;

/// A boxed, sendable future (what trait methods return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way to reach a provider: opens connections.
pub trait Transport: Send + Sync + 'static {
    /// Where messages go, for the operator (`host:port`).
    fn describe(&self) -> String;

    /// Opens a connection (or client) ready for transactions. A failure here
    /// is about the provider, never about a recipient.
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn Connection>, Failure>>;

    /// Called once by the engine before the first [`Transport::open`], with
    /// the run's event channel: a transport with something of its own to
    /// report (a relay pool taking a member out) sends notices there. Most
    /// transports have nothing to say.
    fn attach(&self, _events: tokio::sync::mpsc::Sender<DeliveryEvent>) {}

    /// This worker's share of the campaign's limits
    /// ([`edm_model::Control::SetShare`]): a transport with rates of its own
    /// (a pool's members) runs them at this share. Nothing by default.
    fn set_share(&self, _share: f64) {}
}

/// One open connection: many transactions, one at a time.
pub trait Connection: Send {
    /// Sends one envelope. `before_dot` must complete before the point after
    /// which the provider may accept the message (SMTP: the body and its
    /// final dot); if it fails, the message must not be sent. On failure,
    /// says what is left of the connection, and [`Afterwards::InDoubt`] when
    /// the provider may have accepted it.
    fn send<'a>(
        &'a mut self,
        env: &'a Envelope,
        before_dot: BoxFuture<'a, Result<(), String>>,
    ) -> BoxFuture<'a, Result<Reply, (Failure, Afterwards)>>;

    /// Closes the connection politely, without waiting long.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;

    /// The name of the relay this connection sends through, when a transport
    /// has several (a pool's member); `None`: the engine's relay name
    /// ([`DeliveryConfig::relay`](crate::DeliveryConfig::relay)). Every event
    /// about an envelope sent on it carries this name.
    fn relay(&self) -> Option<&str> {
        None
    }
}

/// Records, durably, that a recipient's message may now be accepted (the
/// store's per-transaction mark, group-committed), so that after a crash only
/// those can be in doubt. [`Marker::mark`] sends the request at once and
/// returns a future for its commit: the engine overlaps it with the envelope
/// commands and waits for it only before the final dot.
pub trait Marker: Send + Sync + 'static {
    /// Asks for the mark; the future resolves once it is committed.
    fn mark(&self, id: RecipientId) -> BoxFuture<'static, Result<(), String>>;
}

impl std::fmt::Debug for dyn Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Marker")
    }
}
