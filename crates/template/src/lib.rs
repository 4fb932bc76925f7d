//! Renders an edm recipient into an [`Envelope`](edm_model::Envelope): the
//! finished MIME message and what SMTP needs to send it.
//!
//! # Overview
//! - [`MessageSpec`] is what a campaign says its message is: sender,
//!   subject, HTML and/or text body ([`Source`]), List-Unsubscribe URL,
//!   [`Limits`].
//! - [`Templates::compile`] parses it once (handlebars in strict mode) and
//!   fails with an [`Error`] naming the template file, line and column.
//! - [`Templates::render`] is called once per recipient. It fills the
//!   templates with the recipient's CSV row, builds the MIME message with
//!   mail-builder (multipart/alternative when both bodies exist), gives it a
//!   deterministic Message-ID, adds List-Unsubscribe (RFC 2369) and one-click
//!   (RFC 8058) headers, and checks it against [`Limits`]. A problem with one
//!   recipient is an [`edm_model::Failure`], not an error.
//! - [`Templates::render_parts`] returns that problem typed: a
//!   [`RenderError`] (the CSV line and a [`RenderProblem`]: a missing field
//!   with its template and position, a line or a message over a limit, an
//!   attachment refused...), so `edm check` decides by variant, never by
//!   reading text back.
//! - [`Templates::with_dkim`] makes `render` sign every message with a
//!   [`Dkim`] signer (RSA-SHA256 or Ed25519-SHA256, relaxed/relaxed, covering
//!   [`SIGNED_HEADERS`], List-Unsubscribe and List-Unsubscribe-Post included
//!   as RFC 8058 requires).
//! - [`Templates::with_attachments`] attaches files to every message, and a
//!   file named by a CSV column to each recipient's ([`Attachments`]): only
//!   from one folder, symlinks followed ([`resolve_inside`]), and in base64
//!   whatever its type when the provider takes nothing else
//!   ([`AttachmentEncoding`]).
//!
//! # Escaping and injection
//! The HTML body is HTML-escaped (`{{{raw}}}` opts out); the subject, text
//! body and URL are not. No header name is ever built from data; header
//! values from data are folded and encoded by mail-builder, subjects are made
//! one line, and recipient addresses and URLs that could break a header are
//! refused.
//!
//! # Layout
//! - `spec.rs`: [`MessageSpec`], [`Source`], [`Limits`].
//! - `templates.rs`: [`Templates`]: compile and render.
//! - `direct.rs`: the direct renderer: templates of raw text and plain
//!   `{{column}}` / `{{{column}}}` rendered without handlebars' machinery,
//!   byte for byte as handlebars would (anything else falls back to it).
//! - `address.rs`: From / Reply-To parsing ([`Mailbox::parse`], the one
//!   parser of the sender), the recipient address guard.
//! - `message_id.rs`: deterministic Message-IDs.
//! - `preflight.rs`: size and line-length checks.
//! - `attachment.rs`: [`Attachments`]: files for everyone and per recipient,
//!   their [`AttachmentLimits`].
//! - `dkim.rs`: [`Dkim`], the DKIM signer ([`DkimConfig`]).
//! - `lint.rs`: content checks for `edm check` ([`has_unsubscribe_link`]).
//! - `error.rs`: [`Error`].
//! - `problem.rs`: [`RenderError`], [`RenderProblem`], [`AttachmentProblem`]:
//!   why one recipient's message cannot be made.
//!
//! # Example
//! ```no_run
//! use edm_template::{Limits, MessageSpec, Source, Templates};
//!
//! let templates = Templates::compile(MessageSpec {
//!     campaign: "spring-sale".into(),
//!     from: "Acme News <news@acme.example>".into(),
//!     reply_to: None,
//!     subject: "Hello {{first_name}}".into(),
//!     html: None,
//!     text: Some(Source { name: "body.txt".into(), body: "Hi {{first_name}}!".into() }),
//!     list_unsubscribe: Some("https://acme.example/u/{{id}}".into()),
//!     limits: Limits::default(),
//! })?;
//! # Ok::<(), edm_template::Error>(())
//! ```
#![deny(missing_docs)]

mod address;
mod attachment;
mod direct;
mod dkim;
mod error;
mod lint;
mod message_id;
mod preflight;
mod problem;
mod spec;
mod templates;

pub use address::{Mailbox, MailboxProblem};
pub use attachment::{
    AttachmentEncoding, AttachmentFile, AttachmentLimits, Attachments, PathRefusal, content_type,
    resolve_inside,
};
pub use dkim::{
    Dkim, DkimAlgorithm, DkimConfig, SIGNED_HEADERS, SIGNED_HEADERS_WITHOUT_ID_AND_DATE,
};
pub use error::Error;
pub use lint::has_unsubscribe_link;
pub use problem::{AttachmentProblem, Position, RenderError, RenderProblem, TemplateName};
pub use spec::{Limits, MAX_LINE_LEN, MessageSpec, Source};
pub use templates::{Rendered, ReturnPath, Templates};
