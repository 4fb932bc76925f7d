//! What `edm check` reports: the kinds of problems ([`ProblemKind`]), each
//! an error or a warning ([`Severity`]), the findings with their file, line
//! and field ([`Finding`]), and the whole [`CheckReport`].

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

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
    pub(crate) fn new(file: &Path, message: impl Into<String>) -> Finding {
        Finding {
            file: file.to_owned(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(mut self, line: u64) -> Finding {
        self.line = Some(line);
        self
    }

    pub(crate) fn field(mut self, field: impl Into<String>) -> Finding {
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
