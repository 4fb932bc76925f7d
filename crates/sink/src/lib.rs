//! A loopback SMTP server with scripted faults, for `edm demo` and for tests.
//!
//! [`start`] binds a [`SinkConfig`]'s address and serves ESMTP (PIPELINING,
//! 8BITMIME, SIZE, ENHANCEDSTATUSCODES, SMTPUTF8 unless turned off, and AUTH
//! PLAIN/LOGIN when credentials are configured). Every accepted message is reported by
//! [`SinkHandle::received`] and stored per [`Storage`]; [`Rule`]s script
//! the failures real providers produce (bounces, greylisting, throttling,
//! dropped connections, stalls), reproducibly.
//!
//! # Layout
//! - `config`: [`SinkConfig`], [`Storage`].
//! - `rules`: [`Rule`], its spec grammar ([`Rule::parse`]), [`demo_rules`].
//! - `script`: which rule applies to an attempt; the `times=`/`percent=` counters.
//! - `server`: the accept loop, shared state, [`SinkHandle`], [`Received`], [`SinkStats`].
//! - `session`: one task per connection; commands parsed by `smtp-proto`,
//!   replies batched into one write per read (RFC 2920).
//! - `maildir`: Maildir delivery; `headers`: the Message-ID look-up.
//! - `reply`: reply formatting, multi-line included.
//!
//! # Maildir format
//! With [`Storage::Maildir`]`(DIR)`, each accepted message is written once
//! per recipient to `DIR/new/<unix_ms>.<pid>_<counter>.edm-sink` (through
//! `DIR/tmp/` and a rename), headed by exactly two added lines:
//!
//! ```text
//! Return-Path: <sender@example.test>
//! Delivered-To: rcpt@example.test
//! ```
//!
//! # Example
//! ```ignore
//! let sink = edm_sink::start(edm_sink::SinkConfig {
//!     rules: vec![edm_sink::Rule::parse("stage=rcpt,match=bounce,reply=550 5.1.1 No such user")?],
//!     ..Default::default()
//! })
//! .await?;
//! // ... send to sink.local_addr() ...
//! assert_eq!(sink.accepted(), 1);
//! sink.shutdown().await;
//! ```
#![deny(missing_docs)]

mod config;
mod headers;
mod maildir;
mod reply;
mod rules;
mod script;
mod server;
mod session;

pub use config::{SinkConfig, Storage};
pub use rules::{Rule, RuleError, Stage, demo_rules};
pub use server::{Received, SinkHandle, SinkStats, start};
