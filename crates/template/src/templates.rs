//! Compiling a [`MessageSpec`] once, and rendering it per recipient.

use handlebars::{
    Context, Handlebars, RenderError as HbsRenderError, RenderErrorReason, TemplateError,
    TemplateErrorReason,
};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::url::URL;
use mail_builder::mime::{BodyPart, MimePart};
use serde_json::{Map, Value};

use edm_model::{Envelope, Failure, Recipient, ascii_address, domain_of};

use crate::address::{Mailbox, MailboxProblem, parse_mailbox, unsafe_recipient};
use crate::direct::{Names, Plan};
use crate::message_id::MessageIds;
use crate::{
    AttachmentEncoding, Attachments, Dkim, Error, Limits, MessageSpec, Position, RenderError,
    RenderProblem, TemplateName,
};

// Names in the registries. Never shown: errors use `Part::label`.
const SUBJECT: &str = "subject";
const TEXT: &str = "text";
const HTML: &str = "html";
const UNSUBSCRIBE: &str = "list_unsubscribe";

/// Room for headers and MIME framing when sizing the output buffer.
const HEADROOM: usize = 1024;

/// One recipient's message: the envelope, and the parts it was built from.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The finished message, as [`Templates::render`] returns it.
    pub envelope: Envelope,
    /// The subject, one line.
    pub subject: String,
    /// The text body, when the campaign has one.
    pub text: Option<String>,
    /// The HTML body, when the campaign has one.
    pub html: Option<String>,
    /// The List-Unsubscribe URL, when the campaign has one.
    pub list_unsubscribe: Option<String>,
}

/// A campaign's message, compiled once and rendered for each recipient.
///
/// Rendering takes `&self` and the type is `Send + Sync`, so one instance
/// can serve every worker thread.
#[derive(Debug)]
pub struct Templates {
    /// HTML body, escaping on (the handlebars default).
    html: Handlebars<'static>,
    /// Subject, text body and unsubscribe URL, escaping off: they are not HTML.
    plain: Handlebars<'static>,
    /// Labels for error messages: the file names given in the spec.
    html_label: Option<String>,
    text_label: Option<String>,
    has_unsubscribe: bool,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    message_ids: MessageIds,
    limits: Limits,
    /// Signs each finished message when set.
    dkim: Option<Dkim>,
    /// Files to attach, and their limits.
    attachments: Option<Attachments>,
    /// The `Feedback-ID` header's value (Gmail's Feedback Loop).
    feedback_id: Option<String>,
    /// Each recipient's envelope sender (VERP), instead of the From address.
    return_path: Option<ReturnPath>,
    /// The templates rendered without handlebars (`direct.rs`).
    direct: Direct,
}

/// The direct renderer's plans (`direct.rs`), one per template that has
/// one, and the field names they use.
#[derive(Debug, Default)]
struct Direct {
    subject: Option<Plan>,
    text: Option<Plan>,
    html: Option<Plan>,
    unsubscribe: Option<Plan>,
    names: Names,
}

/// A per-recipient envelope sender: `[bounces] return_path`'s VERP address
/// (the campaign crate makes the authenticated token).
#[derive(Clone)]
pub struct ReturnPath(pub std::sync::Arc<dyn Fn(&Recipient) -> String + Send + Sync>);

impl std::fmt::Debug for ReturnPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReturnPath(..)")
    }
}

impl Templates {
    /// Parses every template and the sender addresses. Errors name the
    /// template (its file) and the line and column where parsing failed.
    pub fn compile(spec: MessageSpec) -> Result<Templates, Error> {
        if spec.html.is_none() && spec.text.is_none() {
            return Err(Error::NoBody);
        }
        let from = parse_mailbox(&spec.from)
            .and_then(a_labels)
            .map_err(|reason| Error::From {
                value: spec.from.clone(),
                reason,
            })?;
        let reply_to =
            match &spec.reply_to {
                Some(value) => Some(parse_mailbox(value).and_then(a_labels).map_err(|reason| {
                    Error::ReplyTo {
                        value: value.clone(),
                        reason,
                    }
                })?),
                None => None,
            };

        let mut plain = registry();
        // Not HTML: `&` in a subject or a URL must stay `&`.
        plain.register_escape_fn(handlebars::no_escape);
        let mut html = registry();

        register(&mut plain, SUBJECT, TemplateName::Subject, &spec.subject)?;
        if let Some(text) = &spec.text {
            let name = TemplateName::File(text.name.clone());
            register(&mut plain, TEXT, name, &text.body)?;
        }
        if let Some(source) = &spec.html {
            let name = TemplateName::File(source.name.clone());
            register(&mut html, HTML, name, &source.body)?;
        }
        if let Some(url) = &spec.list_unsubscribe {
            register(&mut plain, UNSUBSCRIBE, TemplateName::ListUnsubscribe, url)?;
        }

        let mut names = Names::default();
        // The plain registry has `no_escape`, the HTML one handlebars' own
        // `html_escape`; bodies are CRLF, the subject and URL one line.
        let direct = Direct {
            subject: Plan::of(&plain, SUBJECT, false, false, &mut names),
            text: Plan::of(&plain, TEXT, false, true, &mut names),
            html: Plan::of(&html, HTML, true, true, &mut names),
            unsubscribe: Plan::of(&plain, UNSUBSCRIBE, false, false, &mut names),
            names,
        };
        let message_ids = MessageIds::new(&spec.campaign, &domain_of(&from.address));
        Ok(Templates {
            html,
            plain,
            html_label: spec.html.map(|s| s.name),
            text_label: spec.text.map(|s| s.name),
            has_unsubscribe: spec.list_unsubscribe.is_some(),
            from,
            reply_to,
            message_ids,
            limits: spec.limits,
            dkim: None,
            attachments: None,
            feedback_id: None,
            return_path: None,
            direct,
        })
    }

    /// Renders every template with handlebars, never with the direct
    /// renderer: for tests that compare the two (`tests/direct.rs`).
    #[doc(hidden)]
    pub fn without_direct_renderer(mut self) -> Templates {
        self.direct = Direct::default();
        self
    }

    /// Which templates (subject, text, html, list_unsubscribe) the direct
    /// renderer renders: for tests (`tests/direct.rs`).
    #[doc(hidden)]
    pub fn direct_plans(&self) -> [bool; 4] {
        let d = &self.direct;
        [&d.subject, &d.text, &d.html, &d.unsubscribe].map(Option::is_some)
    }

    /// Adds `Feedback-ID: <value>` to every message, for Gmail's Feedback
    /// Loop (Postmaster Tools reports spam rates per identifier): the value
    /// is `campaign:customer:mailtype:senderid`, checked by the caller
    /// (`[campaign] feedback_id`). Gmail only counts it when a DKIM
    /// signature covers it, so it is in [`SIGNED_HEADERS`](crate::SIGNED_HEADERS).
    pub fn with_feedback_id(mut self, value: Option<String>) -> Templates {
        self.feedback_id = value;
        self
    }

    /// Signs every message [`Templates::render`] makes with `dkim`. The
    /// signature is added before the [`Limits`] are checked, so they apply
    /// to the bytes sent.
    pub fn with_dkim(mut self, dkim: Dkim) -> Templates {
        self.dkim = Some(dkim);
        self
    }

    /// Attaches files to every message [`Templates::render`] makes: the
    /// shared ones (checked against the limits here, so a campaign whose
    /// files are too large never starts) and each recipient's own, read and
    /// checked when it is rendered. `max_body_bytes` applies to the message
    /// without its attachments (the whole message when it has none).
    pub fn with_attachments(mut self, attachments: Attachments) -> Result<Templates, Error> {
        attachments.check_shared()?;
        self.attachments = Some(attachments);
        Ok(self)
    }

    /// Sends each recipient's message with its own envelope sender (MAIL
    /// FROM), a VERP address whose bounces say whose they are. Test copies
    /// ([`Templates::render_to`]) keep the From address: their bounces are
    /// nobody's in the campaign.
    pub fn set_return_path(&mut self, return_path: Option<ReturnPath>) {
        self.return_path = return_path;
    }

    /// The DKIM signer in use, if any.
    pub fn dkim(&self) -> Option<&Dkim> {
        self.dkim.as_ref()
    }

    /// The limits every rendered message is checked against.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The envelope sender (MAIL FROM): the From header's address.
    pub fn mail_from(&self) -> &str {
        &self.from.address
    }

    /// Renders one recipient into a finished message.
    ///
    /// `columns` are the CSV header names, lined up with `recipient.values`;
    /// templates see them by name, plus `email` (the recipient's address,
    /// which wins over a column of that name).
    ///
    /// A failure is data about this recipient, at
    /// [`Stage::Render`](edm_model::Stage::Render), made from a
    /// [`RenderError`] (its [`RenderError::category`]:
    /// `template` for a missing field or a bad rendered value, `preflight`
    /// when the message breaks [`Limits`], `invalid_address` when the
    /// address could break the To header).
    pub fn render(&self, columns: &[String], recipient: &Recipient) -> Result<Envelope, Failure> {
        self.render_parts(columns, recipient)
            .map(|r| r.envelope)
            .map_err(Failure::from)
    }

    /// Like [`Templates::render`], and also returns the rendered parts
    /// (subject, bodies, unsubscribe URL) before MIME encoding, for checks
    /// and previews that look at the content; a problem is returned typed
    /// ([`RenderProblem`]) for them to decide on.
    pub fn render_parts(
        &self,
        columns: &[String],
        recipient: &Recipient,
    ) -> Result<Rendered, RenderError> {
        self.render_with(columns, recipient, None)
            .map_err(|problem| RenderError {
                line: recipient.line,
                problem,
            })
    }

    /// Renders a test copy of one recipient's message for another address
    /// (`edm send --test-to`): the templates see the recipient's row as
    /// usual, but the To header and RCPT TO are `to`, the subject starts
    /// with `subject_prefix`, and the Message-ID is the recipient's with
    /// `.test` added to its left part, so it is deterministic and never
    /// collides with the real message's.
    pub fn render_to(
        &self,
        columns: &[String],
        recipient: &Recipient,
        to: &str,
        subject_prefix: &str,
    ) -> Result<Rendered, Failure> {
        self.render_with(
            columns,
            recipient,
            Some(TestCopy {
                to: to.trim(),
                subject_prefix,
            }),
        )
        .map_err(|problem| {
            Failure::from(RenderError {
                line: recipient.line,
                problem,
            })
        })
    }

    fn render_with(
        &self,
        columns: &[String],
        recipient: &Recipient,
        test: Option<TestCopy<'_>>,
    ) -> Result<Rendered, RenderProblem> {
        let email = recipient.email.trim();
        let to = test.as_ref().map_or(email, |t| t.to);
        // The recipient, and a test copy's address when there is one; a
        // normal message's `to` is the recipient, checked once, not twice.
        let test_to = test.as_ref().map(|t| t.to);
        for address in std::iter::once(email).chain(test_to) {
            if let Some(reason) = unsafe_recipient(address) {
                return Err(RenderProblem::UnsafeAddress {
                    address: address.to_owned(),
                    reason,
                });
            }
        }
        // On the wire and in the To header an internationalised domain is
        // its A-labels (RFC 5890): no 8-bit byte unless the local part itself
        // needs SMTPUTF8 (RFC 6531/6532), which the session decides on.
        let to = ascii_address(to).map_err(|reason| RenderProblem::NoAsciiDomain {
            address: to.to_owned(),
            reason,
        })?;
        let to = to.as_ref();

        let mut values = Vec::with_capacity(self.direct.names.len());
        self.direct
            .names
            .resolve(columns, &recipient.values, email, &mut values);
        // Handlebars' context is built only when a template has no plan or a
        // field has no value (its strict-mode error is then handlebars' own).
        let mut ctx: Option<(Vec<String>, Context)> = None;
        // Bodies in CRLF (RFC 5322 §2.3): mail-builder turns a bare LF into
        // CRLF but passes a bare CR through, and a field holding `\r.\r` must
        // never reach the wire as something a lenient server reads as the
        // end of DATA (SMTP smuggling, 2023).
        let mut render =
            |plan: &Option<Plan>, registry: &Handlebars<'static>, name: &str, body: bool| {
                if let Some((out, breaks)) = plan.as_ref().and_then(|p| p.render(&values)) {
                    // The plan's raw text is CRLF already: only a value's line
                    // break (or one at a raw string's edge) needs the pass.
                    return Ok(if body && breaks { crlf(out) } else { out });
                }
                let ctx = ctx.get_or_insert_with(|| {
                    CONTEXT
                        .with_borrow_mut(|cached| reuse_context(cached, columns, recipient, email))
                });
                registry
                    .render_with_context(name, &ctx.1)
                    .map(|out| if body { crlf(out) } else { out })
                    .map_err(|e| self.render_problem(name, &e))
            };
        let d = &self.direct;
        let mut subject = one_line(render(&d.subject, &self.plain, SUBJECT, false)?);
        if let Some(t) = &test {
            subject.insert_str(0, &one_line(t.subject_prefix.to_owned()));
        }
        let text = match self.text_label {
            Some(_) => Some(render(&d.text, &self.plain, TEXT, true)?),
            None => None,
        };
        let html = match self.html_label {
            Some(_) => Some(render(&d.html, &self.html, HTML, true)?),
            None => None,
        };
        let unsubscribe = match self.has_unsubscribe {
            true => Some(unsubscribe_url(render(
                &d.unsubscribe,
                &self.plain,
                UNSUBSCRIBE,
                false,
            )?)?),
            false => None,
        };

        let attached = match &self.attachments {
            Some(a) => a.for_recipient(columns, recipient)?,
            None => Vec::new(),
        };
        let body_limit = self
            .attachments
            .as_ref()
            .and_then(|a| a.limits.max_body_bytes);
        let over_body = |size: usize, max: usize| RenderProblem::BodyTooLarge { size, max };

        let mut message_id = self.message_ids.for_recipient(email);
        if test.is_some()
            && let Some(at) = message_id.rfind('@')
        {
            message_id.insert_str(at, ".test");
        }
        let mut builder = MessageBuilder::new()
            .from(mailbox(&self.from))
            .to(Address::new_address(None::<&str>, to))
            .subject(subject.as_str())
            .message_id(message_id.as_str());
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(mailbox(reply_to));
        }
        if let Some(id) = &self.feedback_id {
            builder = builder.header("Feedback-ID", Raw::new(id.as_str()));
        }
        if let Some(url) = &unsubscribe {
            builder = builder.header("List-Unsubscribe", URL::new(url.as_str()));
            // RFC 8058 §3.1: one-click needs an HTTPS URI.
            if starts_with_ignore_case(url, "https://") {
                builder = builder.header(
                    "List-Unsubscribe-Post",
                    Raw::new("List-Unsubscribe=One-Click"),
                );
            }
        }
        let mut size = HEADROOM + subject.len();
        // Bodies are lent to the builder, not copied: they are returned too.
        if let Some(text) = &text {
            size += text.len();
            builder.text_body = Some(body_part("text/plain", text, d.text.as_ref()));
        }
        if let Some(html) = &html {
            size += html.len();
            builder.html_body = Some(body_part("text/html", html, d.html.as_ref()));
        }
        if let Some(max) = body_limit
            && !attached.is_empty()
        {
            // Measured as serialized, without the attachments.
            let mut probe = Vec::with_capacity(size + size / 8);
            builder.clone().serialize(&mut probe);
            if probe.len() > max {
                return Err(over_body(probe.len(), max));
            }
        }
        for file in &attached {
            size += file.bytes.len() * 4 / 3 + file.bytes.len() / 38 + 256;
            builder = match self.attachments.as_ref().map(|a| a.encoding) {
                Some(AttachmentEncoding::Base64) => {
                    builder
                        .attachments
                        .get_or_insert_with(Vec::new)
                        .push(crate::attachment::base64_part(file));
                    builder
                }
                _ => builder.attachment(file.content_type, file.name.as_str(), &file.bytes[..]),
            };
        }
        // Date and MIME-Version are added by mail-builder.
        let mut body = Vec::with_capacity(size + size / 8);
        builder.serialize(&mut body);
        if let Some(max) = body_limit
            && attached.is_empty()
            && body.len() > max
        {
            return Err(over_body(body.len(), max));
        }
        if let Some(dkim) = &self.dkim {
            // Sign the finished bytes (docs/DEPENDENCIES.md): nothing may
            // change the message after this.
            body = dkim.sign(&body).map_err(RenderProblem::Dkim)?;
        }

        crate::preflight::check(&body, &self.limits)?;

        let mail_from = match (&self.return_path, test) {
            (Some(rp), None) => (rp.0)(recipient),
            _ => self.from.address.clone(),
        };
        // The context goes back for this thread's next recipient (on an
        // error it is dropped and built again: errors are rare).
        if let Some(ctx) = ctx {
            CONTEXT.with_borrow_mut(|cached| *cached = Some(ctx));
        }
        let envelope = Envelope {
            attempt: Default::default(),
            id: recipient.id,
            mail_from,
            rcpt_to: to.to_owned(),
            domain: domain_of(to),
            message_id,
            body,
        };
        Ok(Rendered {
            envelope,
            subject,
            text,
            html,
            list_unsubscribe: unsubscribe,
        })
    }

    /// Turns a handlebars error into a problem naming the field and the
    /// template.
    fn render_problem(&self, name: &str, error: &HbsRenderError) -> RenderProblem {
        let template = self.label(name);
        let position = match (error.line_no, error.column_no) {
            (Some(line), Some(column)) => Some(Position { line, column }),
            _ => None,
        };
        match error.reason() {
            RenderErrorReason::MissingVariable(Some(field)) => RenderProblem::MissingField {
                field: field.clone(),
                template,
                position,
            },
            other => RenderProblem::Render {
                template,
                position,
                reason: other.to_string(),
            },
        }
    }

    fn label(&self, name: &str) -> TemplateName {
        let file = |label: &Option<String>| TemplateName::File(label.clone().unwrap_or_default());
        match name {
            HTML => file(&self.html_label),
            TEXT => file(&self.text_label),
            UNSUBSCRIBE => TemplateName::ListUnsubscribe,
            _ => TemplateName::Subject,
        }
    }
}

/// Where a test copy goes instead of the recipient ([`Templates::render_to`]).
struct TestCopy<'a> {
    to: &'a str,
    subject_prefix: &'a str,
}

fn registry() -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry
}

fn register(
    registry: &mut Handlebars<'static>,
    name: &str,
    label: TemplateName,
    source: &str,
) -> Result<(), Error> {
    registry
        .register_template_string(name, source)
        .map_err(|e| template_error(label, source, &e))
}

fn template_error(label: TemplateName, source: &str, error: &TemplateError) -> Error {
    let (line, column) = error.pos().unzip();
    let mut reason = error.reason().to_string();
    // The grammar reports an unclosed `{{#if}}` as a syntax error at the very
    // end with a long list of expected tokens: say what it most likely means.
    if matches!(error.reason(), TemplateErrorReason::InvalidSyntax(_))
        && error.pos().is_some_and(|pos| pos == end_position(source))
    {
        reason = format!(
            "unexpected end: a block ({{{{#if}}}}, {{{{#each}}}}...) is not closed ({reason})"
        );
    }
    Error::Template {
        template: label,
        line,
        column,
        reason,
    }
}

/// The (line, column) just past the end of `source`, 1-based, as the
/// handlebars parser counts them.
fn end_position(source: &str) -> (usize, usize) {
    let line = source.matches('\n').count() + 1;
    let last = source.rsplit('\n').next().unwrap_or("");
    (line, last.chars().count() + 1)
}

thread_local! {
    /// Each rendering thread's last context and the columns it was built
    /// for: the next recipient of the same list overwrites its values in
    /// place (their strings' buffers reused), instead of building a JSON
    /// map with a new key and value string per column for every message
    /// (issue 11: the per-message allocations of rendering).
    static CONTEXT: std::cell::RefCell<Option<(Vec<String>, Context)>> =
        const { std::cell::RefCell::new(None) };
}

/// The context of one recipient, made from `cached` when it was built for
/// the same columns: the same data [`context`] builds, the same values in
/// the same keys (a later column of the same name wins, `email` last).
fn reuse_context(
    cached: &mut Option<(Vec<String>, Context)>,
    columns: &[String],
    recipient: &Recipient,
    email: &str,
) -> (Vec<String>, Context) {
    if let Some((built_for, mut ctx)) = cached.take()
        && built_for == columns
        && recipient.values.len() >= columns.len()
        && let Value::Object(data) = ctx.data_mut()
    {
        let mut complete = true;
        for (column, value) in columns.iter().zip(&recipient.values) {
            match data.get_mut(column) {
                Some(Value::String(s)) => {
                    s.clear();
                    s.push_str(value);
                }
                _ => complete = false,
            }
        }
        match data.get_mut("email") {
            Some(Value::String(s)) => {
                s.clear();
                s.push_str(email);
            }
            _ => complete = false,
        }
        if complete {
            return (built_for, ctx);
        }
    }
    (columns.to_vec(), context(columns, recipient, email))
}

/// The template data of one recipient: column name -> value, plus `email`.
fn context(columns: &[String], recipient: &Recipient, email: &str) -> Context {
    let mut data = Map::new();
    for (column, value) in columns.iter().zip(&recipient.values) {
        data.insert(column.clone(), Value::String(value.clone()));
    }
    data.insert("email".to_owned(), Value::String(email.to_owned()));
    Context::from(Value::Object(data))
}

/// The mailbox with its domain in A-label form (RFC 5890), as it goes in
/// MAIL FROM, From and Reply-To.
fn a_labels(m: Mailbox) -> Result<Mailbox, MailboxProblem> {
    let address = ascii_address(&m.address)
        .map_err(MailboxProblem::NoAsciiDomain)?
        .into_owned();
    Ok(Mailbox { address, ..m })
}

/// Line breaks as CRLF: a bare CR or a bare LF becomes CRLF, an existing
/// CRLF stays one. Works on bytes a line at a time (only ASCII bytes are
/// replaced, so the text stays UTF-8); returned as is when already CRLF.
pub(crate) fn crlf(body: String) -> String {
    let bytes = body.as_bytes();
    let mut rest = bytes;
    let mut out: Option<Vec<u8>> = None;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        let pair = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        let taken = i + if pair { 2 } else { 1 };
        match &mut out {
            Some(out) => {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(b"\r\n");
            }
            None if pair => {}
            None => {
                // The first bare one: copy what came before it as is.
                let done = bytes.len() - rest.len();
                let mut v = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 2);
                v.extend_from_slice(&bytes[..done + i]);
                v.extend_from_slice(b"\r\n");
                out = Some(v);
            }
        }
        rest = &rest[taken..];
    }
    match out {
        None => body,
        Some(mut out) => {
            out.extend_from_slice(rest);
            // Only ASCII CR and LF were replaced: still UTF-8.
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
    }
}

/// The MIME part of a body, as `MessageBuilder::text_body` / `html_body`
/// make it; but when the plan proves mail-builder would encode it
/// ([`Plan::always_encoded`]), encoded here in quoted-printable with the
/// engine and the rule mail-builder itself uses (`BodyEncoding::for_text`:
/// `qp::BODY` when its output is shorter than base64's), which saves its
/// scan of the body for long lines and its counting pass (issue 11). Base64
/// (a body that is mostly non-ASCII) is left to mail-builder.
/// `tests/direct.rs` checks the bytes against mail-builder's own.
fn body_part<'x>(content_type: &'static str, body: &'x str, plan: Option<&Plan>) -> MimePart<'x> {
    if plan.is_some_and(Plan::always_encoded)
        && let Some(encoded) = quoted_printable(body)
    {
        return MimePart::new(content_type, BodyPart::Text(encoded.into()))
            .transfer_encoding("quoted-printable");
    }
    MimePart::new(content_type, BodyPart::Text(body.into()))
}

/// `body` in quoted-printable when mail-builder would choose it over
/// base64 for a body it must encode: when it is at most base64's length
/// less one (`encoded_len_within(input, base64_len - 1)` in
/// `BodyEncoding::for_text`).
fn quoted_printable(body: &str) -> Option<String> {
    let limit = encodify::base64::MIME
        .encoded_len(body.len())
        .saturating_sub(1);
    let mut out = String::with_capacity(body.len() + body.len() / 16 + 64);
    let len = encodify::qp::BODY.encode_append(body, &mut out);
    (len <= limit).then_some(out)
}

fn mailbox(m: &Mailbox) -> Address<'_> {
    Address::new_address(m.name.as_deref(), m.address.as_str())
}

/// A subject is one line: line breaks (from the data or the template) become
/// spaces, and other control characters go. mail-builder would encode them
/// safely anyway; this keeps what the reader sees sensible.
fn one_line(subject: String) -> String {
    if !subject.chars().any(char::is_control) {
        return subject;
    }
    let mut out = String::with_capacity(subject.len());
    let mut last_space = false;
    for c in subject.trim().chars() {
        if c == '\r' || c == '\n' || c == '\t' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else if !c.is_control() {
            out.push(c);
            last_space = c == ' ';
        }
    }
    out
}

/// Checks a rendered unsubscribe URL. It goes between angle brackets in the
/// header as is (RFC 2369 §2), so it must not hold anything that could end
/// the bracket or the header.
fn unsubscribe_url(url: String) -> Result<String, RenderProblem> {
    let url = url.trim();
    let problem = if url.is_empty() {
        Some("is empty")
    } else if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("contains whitespace or a control character")
    } else if url.contains(['<', '>']) {
        Some("contains an angle bracket")
    } else if !["https://", "http://", "mailto:"]
        .iter()
        .any(|scheme| starts_with_ignore_case(url, scheme))
    {
        Some("is not an https, http or mailto URL")
    } else {
        None
    };
    match problem {
        Some(reason) => Err(RenderProblem::UnsubscribeUrl {
            url: url.to_owned(),
            reason,
        }),
        None => Ok(percent_encode_non_ascii(url)),
    }
}

/// A header holds no 8-bit byte without SMTPUTF8 (RFC 6532), and a URI is
/// ASCII anyway: non-ASCII characters (from `{{email}}` with `josé@…`, or a
/// name) become their percent-encoded UTF-8 octets (RFC 3987 §3.1).
fn percent_encode_non_ascii(url: &str) -> String {
    if url.is_ascii() {
        return url.to_owned();
    }
    let mut out = String::with_capacity(url.len() * 3);
    for &b in url.as_bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_subjects() {
        assert_eq!(one_line("Hello".into()), "Hello");
        assert_eq!(one_line("Bob\r\nBcc: x".into()), "Bob Bcc: x");
        assert_eq!(one_line("a\x07b\n".into()), "ab");
    }

    #[test]
    fn unsubscribe_urls() {
        assert!(unsubscribe_url("https://x.example/u?a=1&b=2".into()).is_ok());
        assert!(unsubscribe_url("mailto:u@x.example".into()).is_ok());
        for bad in [
            "",
            "ftp://x",
            "https://x\r\nBcc: y",
            "https://x>, <https://y",
            "https://a b",
        ] {
            let problem = unsubscribe_url(bad.into()).unwrap_err();
            assert!(matches!(problem, RenderProblem::UnsubscribeUrl { .. }));
            let f = Failure::from(RenderError { line: 7, problem });
            assert_eq!(f.category, edm_model::Category::Template);
            assert!(
                f.reply.starts_with("line 7: list_unsubscribe URL"),
                "{}",
                f.reply
            );
        }
    }

    #[test]
    fn bodies_become_crlf() {
        assert_eq!(crlf("a\r.\rb".into()), "a\r\n.\r\nb");
        assert_eq!(crlf("a\n.\nb".into()), "a\r\n.\r\nb");
        assert_eq!(crlf("a\r\n.\r\nb".into()), "a\r\n.\r\nb");
        assert_eq!(crlf("\n\r\r\n\r".into()), "\r\n\r\n\r\n\r\n");
        assert_eq!(crlf("ü\rü".into()), "ü\r\nü");
    }

    #[test]
    fn non_ascii_urls_are_percent_encoded() {
        let url = unsubscribe_url("https://x.example/u/josé@bücher.example".into()).unwrap();
        assert_eq!(url, "https://x.example/u/jos%C3%A9@b%C3%BCcher.example");
    }

    #[test]
    fn templates_are_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Templates>();
    }
}
