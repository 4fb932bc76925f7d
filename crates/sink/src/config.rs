//! What a sink is told at start.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::rules::Rule;

/// Where accepted messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// One file per accepted message per recipient in `DIR/new/`, as a local
    /// delivery agent would write it (see the crate docs for the format).
    Maildir(PathBuf),
    /// Kept in memory: [`Received::data`](crate::Received::data) holds the bytes.
    Memory,
}

/// Everything [`start`](crate::start) needs. Build one with
/// `SinkConfig { rules, ..SinkConfig::default() }`.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Address to listen on; port 0 picks a free one (see
    /// [`SinkHandle::local_addr`](crate::SinkHandle::local_addr)).
    pub listen: SocketAddr,
    /// Where accepted messages go.
    pub storage: Storage,
    /// Scripted faults, tried in order; the first that applies wins.
    pub rules: Vec<Rule>,
    /// Largest message accepted, in bytes (after dot-unstuffing), advertised
    /// as `SIZE`; larger ones get `552 5.3.4`. 0 means no limit.
    pub max_message_size: usize,
    /// When set, `AUTH PLAIN LOGIN` is advertised and required before `MAIL`;
    /// other credentials get `535 5.7.8`.
    pub auth: Option<(String, String)>,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// A session silent this long is closed with `421 4.4.2`
    /// (RFC 5321 §4.5.3.2.7 suggests at least 5 minutes).
    pub idle_timeout: Duration,
    /// Advertise and accept SMTPUTF8 (RFC 6531). Off, the sink is a server
    /// of the old kind: `MAIL ... SMTPUTF8` gets `555`, and with or without
    /// the extension a non-ASCII address gets `553 5.6.7` and a message with
    /// a non-ASCII header `554 5.6.7`, so a client that sends 8-bit bytes
    /// where they are not allowed is caught.
    pub smtputf8: bool,
}

impl Default for SinkConfig {
    /// Loopback on a free port, memory storage, no rules, 10 MiB limit, no
    /// AUTH, 5-minute idle timeout, SMTPUTF8 offered.
    fn default() -> Self {
        SinkConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            storage: Storage::Memory,
            rules: Vec::new(),
            max_message_size: 10 * 1024 * 1024,
            auth: None,
            hostname: "edm-sink.localhost".to_owned(),
            idle_timeout: Duration::from_secs(300),
            smtputf8: true,
        }
    }
}
