//! `edm check`: everything a send would find out row by row, found up front
//! without sending anything or touching the state.
//!
//! It reads every recipient (as ingest would: validation, dedupe,
//! suppression) and renders every sendable one (as the send loop would),
//! and reports each problem with its file, line and field, grouped by
//! [`ProblemKind`]. Each kind is an error or a warning ([`Severity`]):
//! errors are what would make messages fail or go out wrong (a template
//! that does not compile, a missing field, a message over the relay's
//! limits, a malformed CSV row); warnings are what edm handles safely on its
//! own (invalid, duplicate and suppressed rows are recorded and never sent)
//! and the bulk-sender checklist (List-Unsubscribe, one-click, a visible
//! unsubscribe link, a text part, DKIM). `docs/preflight.md` is the manual.
//!
//! Memory stays bounded: rows stream from the CSV to rendering workers in
//! small chunks through a bounded channel, and only counts and the first
//! examples of each kind are kept.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use edm_model::{Category, Failure, Recipient, RecipientId, domain_of};
use edm_recipients::{ReadOptions, Verdict};
use edm_template::{
    Dkim, DkimAlgorithm, DkimConfig, Limits, MessageSpec, SIGNED_HEADERS, Source, Templates,
    has_unsubscribe_link,
};
use serde::Serialize;

use crate::Error;
use crate::config::Campaign;

/// Rows handed to a rendering worker at a time.
const CHUNK: usize = 256;

/// How to run a check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Rendering threads (at least 1). Default: the machine's cores.
    pub workers: usize,
    /// Examples kept per problem kind (the first ones, by line).
    pub examples: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            examples: 10,
        }
    }
}

/// Whether a problem stops a clean send.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Fix before sending: `edm check` exits 1.
    Error,
    /// Worth knowing; edm handles it safely.
    Warning,
}

/// What kind of problem a [`Finding`] is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// `campaign.toml` values that do not work: From, Reply-To, a template
    /// file that cannot be read.
    Config,
    /// A template does not parse (file, line, column).
    TemplateSyntax,
    /// The recipients file cannot be read, or has no address column.
    RecipientsFile,
    /// The suppression file cannot be read.
    SuppressionFile,
    /// A row has more or fewer fields than the header (usually an unquoted
    /// delimiter inside a value): the row is not sent.
    RaggedRow,
    /// A field is not valid UTF-8.
    InvalidUtf8,
    /// No row would be sent.
    NoRecipients,
    /// A template uses a field the row does not have.
    MissingField,
    /// A row cannot be rendered for another reason (bad unsubscribe URL...).
    RenderFailed,
    /// A message is over `[limits] max_message_bytes` (DKIM signature included).
    MessageTooLarge,
    /// A message line is over `[limits] max_line_len`.
    LineTooLong,
    /// The `[dkim]` settings or key do not work.
    DkimInvalid,
    /// An attachment cannot be read (a shared file, or a row's own).
    AttachmentMissing,
    /// An attachment, or all of a message's, is over a `[limits]` key.
    AttachmentTooLarge,
    /// A row's address is not valid: recorded as `invalid`, not sent.
    InvalidAddress,
    /// A row repeats an earlier address: recorded as `skipped`, not sent.
    Duplicate,
    /// A row's address is on the suppression list: recorded, not sent.
    Suppressed,
    /// No `[campaign] list_unsubscribe`: no List-Unsubscribe header (RFC 2369).
    NoListUnsubscribe,
    /// The unsubscribe URL is not https: no one-click unsubscribe (RFC 8058).
    NoOneClick,
    /// The HTML has no visible unsubscribe link.
    NoUnsubscribeLink,
    /// No text part: HTML-only mail scores worse with spam filters.
    NoTextPart,
    /// No `[dkim]`: messages are not signed by edm.
    DkimNotConfigured,
    /// The DKIM domain does not align with the From domain (DMARC).
    DkimNotAligned,
    /// A row's attachment is refused: an absolute path, `..`, a symlink
    /// out of `attachment_dir`, or a file edm protects (state, keys...);
    /// or `attachment_dir` itself is the campaign folder.
    AttachmentRefused,
    /// A message is close to the provider's size cap (over 8 MB for
    /// Tencent Cloud SES, whose cap is 9 MB).
    MessageNearLimit,
    /// AUTH would go without TLS to a host that is not loopback, and
    /// `allow_plaintext_auth` is not set: `edm send` refuses to start.
    PlaintextAuthRefused,
    /// AUTH goes without TLS to a host that is not loopback, as
    /// `allow_plaintext_auth = true` allows.
    PlaintextAuth,
    /// `accept_invalid_certs = true`: the relay's certificate is not checked.
    InvalidCertsAccepted,
    /// The address (or the sender's) has a non-ASCII local part: it goes
    /// out only if the relay offers SMTPUTF8 (RFC 6531).
    #[serde(rename = "needs_smtputf8")]
    NeedsSmtpUtf8,
}

impl ProblemKind {
    /// Error or warning.
    pub fn severity(self) -> Severity {
        use ProblemKind::*;
        match self {
            Config | TemplateSyntax | RecipientsFile | SuppressionFile | RaggedRow
            | InvalidUtf8 | NoRecipients | MissingField | RenderFailed | MessageTooLarge
            | LineTooLong | DkimInvalid | AttachmentMissing | AttachmentTooLarge
            | AttachmentRefused | PlaintextAuthRefused => Severity::Error,
            InvalidAddress | Duplicate | Suppressed | NoListUnsubscribe | NoOneClick
            | NoUnsubscribeLink | NoTextPart | DkimNotConfigured | DkimNotAligned
            | MessageNearLimit | PlaintextAuth | InvalidCertsAccepted | NeedsSmtpUtf8 => {
                Severity::Warning
            }
        }
    }

    /// A heading for people.
    pub fn title(self) -> &'static str {
        use ProblemKind::*;
        match self {
            Config => "campaign settings",
            TemplateSyntax => "template does not compile",
            RecipientsFile => "recipients file",
            SuppressionFile => "suppression file",
            RaggedRow => "rows with the wrong number of fields",
            InvalidUtf8 => "fields that are not UTF-8",
            NoRecipients => "nothing to send",
            MissingField => "missing template fields",
            RenderFailed => "rows that cannot be rendered",
            MessageTooLarge => "messages over max_message_bytes",
            LineTooLong => "lines over max_line_len",
            DkimInvalid => "DKIM settings",
            AttachmentMissing => "attachments that cannot be read",
            AttachmentTooLarge => "attachments over the limits",
            InvalidAddress => "invalid addresses (recorded as invalid, not sent)",
            Duplicate => "duplicate addresses (recorded as skipped, not sent)",
            Suppressed => "suppressed addresses (recorded, not sent)",
            NoListUnsubscribe => "no List-Unsubscribe header",
            NoOneClick => "no one-click unsubscribe",
            NoUnsubscribeLink => "no visible unsubscribe link in the HTML",
            NoTextPart => "no text part",
            DkimNotConfigured => "DKIM: not configured",
            DkimNotAligned => "DKIM domain not aligned with From",
            AttachmentRefused => "attachments refused (outside attachment_dir or protected)",
            MessageNearLimit => "messages close to the provider's size cap",
            PlaintextAuthRefused => "password would be sent without TLS",
            PlaintextAuth => "password sent without TLS (allowed)",
            InvalidCertsAccepted => "TLS certificates not checked",
            NeedsSmtpUtf8 => "non-ASCII local parts (sent only over SMTPUTF8)",
        }
    }
}

/// One problem, where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The file to open.
    pub file: PathBuf,
    /// 1-based line (the CSV row's first line, or the template line).
    pub line: Option<u64>,
    /// 1-based column, in a template.
    pub column: Option<u64>,
    /// The CSV column, template field or setting concerned.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Finding {
    fn new(file: &Path, message: impl Into<String>) -> Finding {
        Finding {
            file: file.to_owned(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    fn at(mut self, line: u64) -> Finding {
        self.line = Some(line);
        self
    }

    fn field(mut self, field: impl Into<String>) -> Finding {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Finding {
    /// `file:line[:column]: field: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every finding of one kind: how many, and the first few.
#[derive(Clone, Debug, Serialize)]
pub struct ProblemGroup {
    /// The kind.
    pub kind: ProblemKind,
    /// Its severity.
    pub severity: Severity,
    /// How many findings (rows, usually).
    pub count: u64,
    /// The first findings, by file and line.
    pub examples: Vec<Finding>,
}

/// The public half of the DKIM setup, to compare with DNS.
#[derive(Clone, Debug, Serialize)]
pub struct DkimInfo {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `rsa` or `ed25519`.
    pub algorithm: String,
    /// Where the TXT record goes.
    pub dns_name: String,
    /// The TXT record to publish.
    pub dns_record: String,
}

/// What `edm check` found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Campaign name.
    pub campaign: String,
    /// The recipients file.
    pub recipients: PathBuf,
    /// CSV records read (the header excluded).
    pub rows: u64,
    /// Rows that would be sent (valid, first of their address, not suppressed).
    pub sendable: u64,
    /// Messages rendered without a problem that stops them.
    pub rendered: u64,
    /// Rows that could not be rendered.
    pub render_failed: u64,
    /// The largest message rendered, in bytes (DKIM signature included).
    pub largest_message: Option<u64>,
    /// The DKIM key in use, when configured and valid.
    pub dkim: Option<DkimInfo>,
    /// Findings by kind, errors first.
    pub problems: Vec<ProblemGroup>,
    /// Findings that are errors.
    pub errors: u64,
    /// Findings that are warnings.
    pub warnings: u64,
    /// Wall time of the check, in seconds.
    pub elapsed_secs: f64,
}

impl CheckReport {
    /// True when sending would be clean: no errors (warnings allowed).
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }

    /// The group of a kind, if anything of that kind was found.
    pub fn group(&self, kind: ProblemKind) -> Option<&ProblemGroup> {
        self.problems.iter().find(|g| g.kind == kind)
    }

    /// How many findings of a kind.
    pub fn count(&self, kind: ProblemKind) -> u64 {
        self.group(kind).map_or(0, |g| g.count)
    }
}

/// Counts and first examples per kind.
#[derive(Debug, Default)]
struct Tally {
    limit: usize,
    kinds: BTreeMap<ProblemKind, (u64, Vec<Finding>)>,
}

impl Tally {
    fn new(limit: usize) -> Tally {
        Tally {
            limit,
            kinds: BTreeMap::new(),
        }
    }

    fn add(&mut self, kind: ProblemKind, finding: Finding) {
        let (count, examples) = self.kinds.entry(kind).or_default();
        *count += 1;
        if examples.len() < self.limit {
            examples.push(finding);
        }
    }

    /// Each side holds its own first examples, so the first of the union
    /// are among them.
    fn merge(&mut self, other: Tally) {
        for (kind, (count, examples)) in other.kinds {
            let (total, mine) = self.kinds.entry(kind).or_default();
            *total += count;
            mine.extend(examples);
            mine.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            mine.truncate(self.limit);
        }
    }
}

/// Runs every check on a campaign. Sends nothing and does not open the state.
///
/// `Err` only when the check itself cannot run; everything wrong with the
/// campaign is in the report.
pub fn check(c: &Campaign, opts: &CheckOptions) -> Result<CheckReport, Error> {
    let started = Instant::now();
    let mut tally = Tally::new(opts.examples.max(1));
    let cfg = &c.config.campaign;

    let (spec, templates) = match message_spec(c) {
        Ok(spec) => {
            // The size limit is checked here, with the DKIM signature's size
            // added, so rendering does not have to sign every message.
            let check_spec = MessageSpec {
                limits: Limits {
                    max_message_bytes: None,
                    ..spec.limits
                },
                ..spec.clone()
            };
            let templates = match Templates::compile(check_spec) {
                Ok(t) => Some(t),
                Err(e) => {
                    let (kind, finding) = compile_finding(c, e);
                    tally.add(kind, finding);
                    None
                }
            };
            (Some(spec), templates)
        }
        Err(finding) => {
            tally.add(ProblemKind::Config, finding);
            (None, None)
        }
    };
    if let Some(spec) = &spec {
        config_checklist(c, spec, &mut tally);
    }
    let templates = templates.and_then(|t| with_attachments(c, t, &mut tally));

    let dkim = match dkim_signer(c) {
        Ok(Some(dkim)) => {
            let from_domain = domain_of(&mailbox_address(&cfg.from));
            if !aligned(&from_domain, dkim.domain()) {
                tally.add(
                    ProblemKind::DkimNotAligned,
                    Finding::new(&c.file, format!(
                        "d={} does not align with the From domain {from_domain}: DMARC needs the From domain to be d= or under it",
                        dkim.domain()
                    ))
                    .field("[dkim] domain"),
                );
            }
            Some(dkim)
        }
        Ok(None) => {
            tally.add(
                ProblemKind::DkimNotConfigured,
                Finding::new(
                    &c.file,
                    "messages are not signed by edm: add a [dkim] section (docs/preflight.md), unless your relay signs them",
                )
                .field("[dkim]"),
            );
            None
        }
        Err(e) => {
            tally.add(
                ProblemKind::DkimInvalid,
                Finding::new(&c.file, e.to_string()).field("[dkim]"),
            );
            None
        }
    };
    let dkim_overhead = dkim.as_ref().map_or(0, signature_overhead);

    let csv_path = c.path(&cfg.recipients);
    // The campaign's list and the shared one, as ingest merges them.
    let suppression = match crate::suppress::campaign_suppression(c) {
        Ok(s) => s,
        Err(Error::Recipients(e)) => {
            tally.add(ProblemKind::SuppressionFile, recipients_finding(&e));
            None
        }
        Err(e) => {
            tally.add(
                ProblemKind::SuppressionFile,
                Finding::new(&c.file, e.to_string()),
            );
            None
        }
    };

    let mut counts = Counts::default();
    match edm_recipients::open(&csv_path, &read_options(c), suppression.as_ref()) {
        Err(e) => tally.add(ProblemKind::RecipientsFile, recipients_finding(&e)),
        Ok(ingest) => {
            let columns = ingest.columns().to_vec();
            let email_field = columns[ingest.email_index()].clone();
            let job = Job {
                templates: templates.as_ref(),
                columns: &columns,
                csv: &csv_path,
                max_message_bytes: spec.as_ref().and_then(|s| s.limits.max_message_bytes),
                warn_message_bytes: c.config.limits.resolved().warn_message_bytes,
                dkim_overhead,
                examples: opts.examples.max(1),
            };
            let workers = opts.workers.max(1);
            // Bounded: the reader waits for the renderers, so memory is a
            // few chunks whatever the file's size.
            let (tx, rx) = mpsc::sync_channel::<Vec<Recipient>>(workers * 2);
            let rx = Mutex::new(rx);
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| scope.spawn(|| job.work(&rx)))
                    .collect();
                let mut chunk = Vec::with_capacity(CHUNK);
                for row in ingest {
                    let row = match row {
                        Ok(row) => row,
                        Err(e) => {
                            let kind = match e {
                                edm_recipients::Error::InvalidUtf8 { .. } => {
                                    ProblemKind::InvalidUtf8
                                }
                                _ => ProblemKind::RecipientsFile,
                            };
                            tally.add(kind, recipients_finding(&e));
                            continue;
                        }
                    };
                    counts.rows += 1;
                    let at = Finding::new(&csv_path, "").at(row.line).field(&email_field);
                    match row.verdict {
                        Verdict::Valid => {
                            counts.sendable += 1;
                            if job.templates.is_none() {
                                continue;
                            }
                            chunk.push(unsent(row));
                            if chunk.len() >= CHUNK && tx.send(std::mem::take(&mut chunk)).is_err()
                            {
                                break;
                            }
                        }
                        Verdict::Invalid { reason, .. } => {
                            // Ingest checks the field count first and says so.
                            let kind = if reason.starts_with("row has ") {
                                ProblemKind::RaggedRow
                            } else {
                                ProblemKind::InvalidAddress
                            };
                            let message = match kind {
                                ProblemKind::RaggedRow => reason,
                                _ => format!("{reason}: {:?}", row.email),
                            };
                            tally.add(kind, Finding { message, ..at });
                        }
                        Verdict::Duplicate { first_line } => tally.add(
                            ProblemKind::Duplicate,
                            Finding {
                                message: format!("{} was already on line {first_line}", row.email),
                                ..at
                            },
                        ),
                        Verdict::Suppressed => tally.add(
                            ProblemKind::Suppressed,
                            Finding {
                                message: format!("{} is on the suppression list", row.email),
                                ..at
                            },
                        ),
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.send(chunk);
                }
                drop(tx);
                for handle in handles {
                    let outcome = match handle.join() {
                        Ok(outcome) => outcome,
                        Err(panic) => std::panic::resume_unwind(panic),
                    };
                    counts.rendered += outcome.rendered;
                    counts.render_failed += outcome.failed;
                    counts.largest = counts.largest.max(outcome.largest);
                    tally.merge(outcome.tally);
                }
            });
            if counts.sendable == 0 {
                tally.add(
                    ProblemKind::NoRecipients,
                    Finding::new(&csv_path, "no row would be sent"),
                );
            }
        }
    }

    let mut problems: Vec<ProblemGroup> = tally
        .kinds
        .into_iter()
        .map(|(kind, (count, examples))| ProblemGroup {
            kind,
            severity: kind.severity(),
            count,
            examples,
        })
        .collect();
    problems.sort_by_key(|g| (g.severity, g.kind));
    let sum = |s: Severity| {
        problems
            .iter()
            .filter(|g| g.severity == s)
            .map(|g| g.count)
            .sum()
    };
    Ok(CheckReport {
        campaign: cfg.name.clone(),
        recipients: csv_path,
        rows: counts.rows,
        sendable: counts.sendable,
        rendered: counts.rendered,
        render_failed: counts.render_failed,
        largest_message: (counts.largest > 0).then_some(counts.largest),
        dkim: dkim.as_ref().map(|d| DkimInfo {
            domain: d.domain().to_owned(),
            selector: d.selector().to_owned(),
            algorithm: d.algorithm().as_str().to_owned(),
            dns_name: d.dns_name(),
            dns_record: d.dns_record(),
        }),
        errors: sum(Severity::Error),
        warnings: sum(Severity::Warning),
        problems,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Default)]
struct Counts {
    rows: u64,
    sendable: u64,
    rendered: u64,
    render_failed: u64,
    largest: u64,
}

/// What each rendering worker shares.
struct Job<'a> {
    templates: Option<&'a Templates>,
    columns: &'a [String],
    csv: &'a Path,
    max_message_bytes: Option<usize>,
    /// Over this (and under the cap) a message gets a warning.
    warn_message_bytes: Option<usize>,
    dkim_overhead: usize,
    examples: usize,
}

struct Outcome {
    tally: Tally,
    rendered: u64,
    failed: u64,
    largest: u64,
}

impl Job<'_> {
    /// Renders chunks until the channel closes.
    fn work(&self, rx: &Mutex<mpsc::Receiver<Vec<Recipient>>>) -> Outcome {
        let mut out = Outcome {
            tally: Tally::new(self.examples),
            rendered: 0,
            failed: 0,
            largest: 0,
        };
        let Some(templates) = self.templates else {
            return out;
        };
        loop {
            // Holding the lock only while waiting: the receiver is shared.
            let chunk = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(chunk) = chunk else {
                return out;
            };
            for recipient in &chunk {
                self.one(templates, recipient, &mut out);
            }
        }
    }

    fn one(&self, templates: &Templates, r: &Recipient, out: &mut Outcome) {
        let at = Finding::new(self.csv, "").at(r.line);
        let parts = match templates.render_parts(self.columns, r) {
            Ok(parts) => parts,
            Err(failure) => {
                out.failed += 1;
                let (kind, finding) = render_finding(&failure, at);
                out.tally.add(kind, finding);
                return;
            }
        };
        let size = parts.envelope.body.len() + self.dkim_overhead;
        out.largest = out.largest.max(size as u64);
        if let Some(max) = self.max_message_bytes
            && size > max
        {
            out.failed += 1;
            let signed = if self.dkim_overhead > 0 {
                " with its DKIM signature"
            } else {
                ""
            };
            out.tally.add(
                ProblemKind::MessageTooLarge,
                Finding {
                    message: format!(
                        "message is {size} bytes{signed}, over the max_message_bytes limit of {max}"
                    ),
                    ..at
                },
            );
            return;
        }
        out.rendered += 1;
        let env = &parts.envelope;
        if !env.rcpt_to.is_ascii() || !env.mail_from.is_ascii() {
            let whose = if env.rcpt_to.is_ascii() {
                format!("the sender {:?}", env.mail_from)
            } else {
                format!("{:?}", r.email)
            };
            out.tally.add(
                ProblemKind::NeedsSmtpUtf8,
                Finding {
                    message: format!(
                        "{whose} has a non-ASCII local part: it goes out only if the relay offers SMTPUTF8 (RFC 6531), otherwise it fails as smtputf8_required"
                    ),
                    ..at.clone()
                },
            );
        }
        if let Some(warn) = self.warn_message_bytes
            && size > warn
        {
            out.tally.add(
                ProblemKind::MessageNearLimit,
                Finding {
                    message: format!(
                        "message is {size} bytes, over {warn}: close to the provider's cap{}",
                        self.max_message_bytes
                            .map_or(String::new(), |m| format!(" of {m} bytes"))
                    ),
                    ..at.clone()
                },
            );
        }
        if let Some(url) = &parts.list_unsubscribe
            && !url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            out.tally.add(
                ProblemKind::NoOneClick,
                Finding {
                    message: format!(
                        "List-Unsubscribe URL {url:?} is not https, so List-Unsubscribe-Post (one-click, RFC 8058) is left out"
                    ),
                    ..at.clone()
                }
                .field("list_unsubscribe"),
            );
        }
        if let Some(html) = &parts.html
            && !has_unsubscribe_link(html, parts.list_unsubscribe.as_deref())
        {
            out.tally.add(
                ProblemKind::NoUnsubscribeLink,
                Finding {
                    message: "the rendered HTML has no <a href> link that says \"unsubscribe\" or points to the List-Unsubscribe URL".to_owned(),
                    ..at
                }
                .field("html"),
            );
        }
    }
}

/// Classifies a render failure. Its text starts `line N: `, which the
/// finding carries as its line instead.
fn render_finding(failure: &Failure, at: Finding) -> (ProblemKind, Finding) {
    let text = failure.reply.as_str();
    let text = match text.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => text,
    };
    let missing = text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'));
    let kind = match failure.category {
        Category::Template if missing.is_some() => ProblemKind::MissingField,
        Category::Preflight if text.contains("max_line_len") => ProblemKind::LineTooLong,
        Category::Preflight if text.contains("max_message_bytes") => ProblemKind::MessageTooLarge,
        Category::Preflight if text.contains("max_body_bytes") => ProblemKind::MessageTooLarge,
        Category::Preflight if text.contains("max_attachment") => ProblemKind::AttachmentTooLarge,
        // edm-template's `PathRefusal`s say "refused: " after the value.
        Category::Template if text.starts_with("attachment") && text.contains("): refused: ") => {
            ProblemKind::AttachmentRefused
        }
        Category::Template if text.starts_with("attachment") => ProblemKind::AttachmentMissing,
        Category::InvalidAddress => ProblemKind::InvalidAddress,
        _ => ProblemKind::RenderFailed,
    };
    let finding = match missing {
        Some((field, rest)) => Finding {
            field: Some(field.to_owned()),
            message: format!("missing field{rest}"),
            ..at
        },
        None => Finding {
            message: text.to_owned(),
            ..at
        },
    };
    (kind, finding)
}

/// The campaign-level checklist items that need no rendering.
fn config_checklist(c: &Campaign, spec: &MessageSpec, tally: &mut Tally) {
    if spec.list_unsubscribe.is_none() {
        tally.add(
            ProblemKind::NoListUnsubscribe,
            Finding::new(
                &c.file,
                "no List-Unsubscribe header: Gmail and Yahoo require it (with one-click, RFC 8058) from bulk senders; set an https URL",
            )
            .field("[campaign] list_unsubscribe"),
        );
    }
    let smtp = &c.config.smtp;
    if let Some(message) = crate::send::plaintext_auth_refusal(c, &smtp.host) {
        tally.add(
            ProblemKind::PlaintextAuthRefused,
            Finding::new(&c.file, message).field("[smtp] allow_plaintext_auth"),
        );
    } else if smtp.username.is_some()
        && smtp.security == crate::config::SecurityName::None
        && !edm_delivery::is_loopback(&smtp.host)
    {
        tally.add(
            ProblemKind::PlaintextAuth,
            Finding::new(
                &c.file,
                format!(
                    "the password goes to {} without TLS (allow_plaintext_auth = true): anyone on the path can read it",
                    smtp.host
                ),
            )
            .field("[smtp] allow_plaintext_auth"),
        );
    }
    if smtp.accept_invalid_certs {
        tally.add(
            ProblemKind::InvalidCertsAccepted,
            Finding::new(&c.file, crate::send::INVALID_CERTS_WARNING)
                .field("[smtp] accept_invalid_certs"),
        );
    }
    if spec.text.is_none() {
        tally.add(
            ProblemKind::NoTextPart,
            Finding::new(
                &c.file,
                "HTML only: add a text version (multipart/alternative) for text-only readers and spam filters",
            )
            .field("[campaign] text"),
        );
    }
}

/// Adds the campaign's attachments to the templates, reporting a shared
/// file that cannot be read or is over the limits (the rows are then
/// rendered without the shared files).
fn with_attachments(c: &Campaign, t: Templates, tally: &mut Tally) -> Option<Templates> {
    use crate::attach::AttachmentProblem;
    // Reported, and the rows still rendered: each says what it names.
    if let Some(problem) = crate::attach::dir_problem(c) {
        let kind = match problem {
            crate::attach::DirProblem::HoldsCampaign(_) => ProblemKind::AttachmentRefused,
            crate::attach::DirProblem::Unavailable(_) => ProblemKind::AttachmentMissing,
        };
        let message = problem.message();
        tally.add(
            kind,
            Finding::new(&c.file, message).field("[campaign] attachment_dir"),
        );
    }
    match crate::attach::attachments(c) {
        Ok(None) => Some(t),
        Ok(Some(a)) => match t.with_attachments(a) {
            Ok(t) => Some(t),
            Err(e) => {
                let finding = Finding::new(&c.file, e.to_string()).field("[campaign] attachments");
                tally.add(ProblemKind::AttachmentTooLarge, finding);
                None
            }
        },
        Err(problem) => {
            let (kind, file, message) = match problem {
                AttachmentProblem::Missing { path, reason } => {
                    (ProblemKind::AttachmentMissing, PathBuf::from(path), reason)
                }
                AttachmentProblem::TooLarge(m) => {
                    (ProblemKind::AttachmentTooLarge, c.file.clone(), m)
                }
            };
            tally.add(
                kind,
                Finding::new(&file, message).field("[campaign] attachments"),
            );
            Some(t)
        }
    }
}

/// Builds the message spec from `campaign.toml`, reading the template files.
pub(crate) fn message_spec(c: &Campaign) -> Result<MessageSpec, Finding> {
    let cfg = &c.config.campaign;
    let read = |p: &Path| -> Result<Source, Finding> {
        let path = c.path(p);
        let body = std::fs::read_to_string(&path)
            .map_err(|e| Finding::new(&path, format!("cannot read the template: {e}")))?;
        Ok(Source {
            name: path.display().to_string(),
            body,
        })
    };
    Ok(MessageSpec {
        campaign: cfg.name.clone(),
        from: cfg.from.clone(),
        reply_to: cfg.reply_to.clone(),
        subject: cfg.subject.clone(),
        html: cfg.html.as_deref().map(read).transpose()?,
        text: cfg.text.as_deref().map(read).transpose()?,
        list_unsubscribe: cfg.list_unsubscribe.clone(),
        limits: {
            let l = c.config.limits.resolved();
            Limits {
                max_message_bytes: l.max_message_bytes,
                max_line_len: l.max_line_len,
            }
        },
    })
}

fn compile_finding(c: &Campaign, e: edm_template::Error) -> (ProblemKind, Finding) {
    use edm_template::Error as E;
    match e {
        E::Template {
            template,
            line,
            column,
            reason,
        } => {
            // Inline templates (subject, list_unsubscribe) live in campaign.toml.
            let (file, field) = match template.as_str() {
                "subject" | "list_unsubscribe" => {
                    (c.file.clone(), Some(format!("[campaign] {template}")))
                }
                _ => (PathBuf::from(template), None),
            };
            (
                ProblemKind::TemplateSyntax,
                Finding {
                    file,
                    line: line.map(|l| l as u64),
                    column: column.map(|c| c as u64),
                    field,
                    message: reason,
                },
            )
        }
        E::From { .. } => (
            ProblemKind::Config,
            Finding::new(&c.file, e.to_string()).field("[campaign] from"),
        ),
        E::ReplyTo { .. } => (
            ProblemKind::Config,
            Finding::new(&c.file, e.to_string()).field("[campaign] reply_to"),
        ),
        other => (
            ProblemKind::Config,
            Finding::new(&c.file, other.to_string()),
        ),
    }
}

fn recipients_finding(e: &edm_recipients::Error) -> Finding {
    let mut finding = Finding::new(e.path(), e.to_string());
    finding.line = e.line();
    // The error's text starts with the path and line: keep only the rest.
    let prefix = match e.line() {
        Some(line) => format!("{}: line {line}", e.path().display()),
        None => e.path().display().to_string(),
    };
    if let Some(rest) = finding.message.strip_prefix(&prefix) {
        finding.message = rest.trim_start_matches([':', ',', ' ']).to_owned();
    }
    if let edm_recipients::Error::InvalidUtf8 { column, field, .. } = e {
        finding.column = Some(*column as u64);
        finding.field = Some(field.clone());
    }
    finding
}

/// A CSV row as a never-attempted recipient, for rendering outside a run
/// (check, preview, test sends): the CSV line stands in for the store's id.
pub(crate) fn unsent(row: edm_recipients::Row) -> Recipient {
    Recipient {
        id: RecipientId(row.line as i64),
        line: row.line,
        email: row.email,
        values: row.values,
        attempts: 0,
        first_attempt_at: None,
    }
}

pub(crate) fn read_options(c: &Campaign) -> ReadOptions {
    ReadOptions {
        email_column: c.config.campaign.email_column.clone(),
        delimiter: c
            .config
            .campaign
            .delimiter
            .as_ref()
            .and_then(|d| d.bytes().next()),
        encoding: c.config.campaign.encoding.clone(),
    }
}

/// The campaign's DKIM signer, from the `[dkim]` section of `campaign.toml`
/// (`selector`, `domain`, `key_file` relative to the campaign directory,
/// `algorithm` = `rsa` (default) or `ed25519`); `None` without one.
///
pub fn dkim_signer(c: &Campaign) -> Result<Option<Dkim>, Error> {
    let bad = |message: String| Error::Config {
        file: c.file.clone(),
        message,
    };
    let Some(section) = c.config.dkim.clone() else {
        return Ok(None);
    };
    let algorithm = match section.algorithm.as_deref() {
        None => DkimAlgorithm::Rsa,
        Some(name) => DkimAlgorithm::parse(name).ok_or_else(|| {
            bad(format!(
                "[dkim] algorithm must be \"rsa\" or \"ed25519\", not {name:?}"
            ))
        })?,
    };
    let key_path = c.path(&section.key_file);
    let key_pem = std::fs::read_to_string(&key_path)
        .map_err(|e| bad(format!("[dkim] key_file {}: {e}", key_path.display())))?;
    // SES replaces the Message-ID: a signature over it would break
    // (docs/transports.md).
    let headers: &[&str] = if c.relay_kind() == crate::config::RelayKind::Ses {
        &edm_template::SIGNED_HEADERS_WITHOUT_ID_AND_DATE
    } else {
        &edm_template::SIGNED_HEADERS
    };
    let dkim = Dkim::with_headers(
        DkimConfig {
            selector: section.selector,
            domain: section.domain,
            key_pem,
            algorithm,
        },
        headers,
    )
    .map_err(|e| bad(format!("[dkim] key_file {}: {e}", key_path.display())))?;
    Ok(Some(dkim))
}

/// An upper bound of the DKIM-Signature header's size: every signable
/// header present, and room for a longer timestamp.
fn signature_overhead(dkim: &Dkim) -> usize {
    let mut message = String::new();
    for name in SIGNED_HEADERS {
        message.push_str(name);
        message.push_str(": x\r\n");
    }
    message.push_str("\r\nbody\r\n");
    dkim.signature_header(message.as_bytes())
        .map_or(0, |h| h.len() + 16)
}

/// The bare address of `Name <address>` or `address`.
fn mailbox_address(value: &str) -> String {
    let value = value.trim();
    match value.rfind('<') {
        Some(open) => value[open + 1..].trim_end_matches('>').trim().to_owned(),
        None => value.to_owned(),
    }
}

/// DMARC relaxed alignment: the From domain is the DKIM domain or under it.
/// (The organisational domain would need the public suffix list.)
fn aligned(from_domain: &str, dkim_domain: &str) -> bool {
    let from = from_domain.to_ascii_lowercase();
    let d = dkim_domain.to_ascii_lowercase();
    from == d || from.ends_with(&format!(".{d}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert!(aligned("acme.example", "acme.example"));
        assert!(aligned("news.acme.example", "acme.example"));
        assert!(!aligned("acme.example", "news.acme.example"));
        assert!(!aligned("notacme.example", "acme.example"));
        assert_eq!(mailbox_address("Acme <a@acme.example>"), "a@acme.example");
        assert_eq!(mailbox_address(" a@acme.example "), "a@acme.example");
    }

    #[test]
    fn tally_keeps_the_first_examples_across_workers() {
        let f = |line| Finding::new(Path::new("r.csv"), "x").at(line);
        let mut a = Tally::new(2);
        let mut b = Tally::new(2);
        for line in [5, 7, 9] {
            a.add(ProblemKind::Duplicate, f(line));
        }
        for line in [2, 8] {
            b.add(ProblemKind::Duplicate, f(line));
        }
        a.merge(b);
        let (count, examples) = &a.kinds[&ProblemKind::Duplicate];
        assert_eq!(*count, 5);
        let lines: Vec<_> = examples.iter().map(|e| e.line.unwrap()).collect();
        assert_eq!(lines, [2, 5]);
    }

    #[test]
    fn render_failures_are_classified() {
        let at = Finding::new(Path::new("r.csv"), "").at(7);
        let f = Failure::local(
            edm_model::Stage::Render,
            Category::Template,
            "line 7: missing field `last_name` in body.html (template line 3, column 9)",
        );
        let (kind, finding) = render_finding(&f, at.clone());
        assert_eq!(kind, ProblemKind::MissingField);
        assert_eq!(finding.field.as_deref(), Some("last_name"));
        assert_eq!(
            finding.to_string(),
            "r.csv:7: last_name: missing field in body.html (template line 3, column 9)"
        );
        let f = Failure::local(
            edm_model::Stage::Render,
            Category::Preflight,
            "line 7: line 3 of the message is 2000 bytes, over the max_line_len limit of 998",
        );
        assert_eq!(render_finding(&f, at).0, ProblemKind::LineTooLong);
    }
}
