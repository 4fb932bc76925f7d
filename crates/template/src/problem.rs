//! Why one recipient's message cannot be made, as data with its fields.
//!
//! [`Templates::render_parts`](crate::Templates::render_parts) returns a
//! [`RenderError`]: `edm check` and `edm preview` decide by its
//! [`RenderProblem`] variant (a missing field, a line over the limit...),
//! never by reading its text back. The send path turns it into an
//! [`edm_model::Failure`] ([`From`]), whose reply is the same text
//! (`line N: ...`) and whose category is [`RenderError::category`].

use std::fmt;
use std::path::PathBuf;

use edm_model::{Category, Failure, Stage};

use crate::PathRefusal;

/// One recipient's message could not be rendered: where (its CSV line) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct RenderError {
    /// The recipient's CSV line.
    pub line: u64,
    /// What is wrong.
    pub problem: RenderProblem,
}

impl RenderError {
    /// The failure category a user sees: [`Category::InvalidAddress`],
    /// [`Category::Template`] or [`Category::Preflight`].
    pub fn category(&self) -> Category {
        self.problem.category()
    }
}

impl From<RenderError> for Failure {
    fn from(e: RenderError) -> Failure {
        Failure::local(Stage::Render, e.category(), e.to_string())
    }
}

/// Which template: one written inline in `campaign.toml`, or a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateName {
    /// `[campaign] subject`.
    Subject,
    /// `[campaign] list_unsubscribe`.
    ListUnsubscribe,
    /// A body template file, by the name the [`Source`](crate::Source) gave.
    File(String),
}

impl fmt::Display for TemplateName {
    /// `subject`, `list_unsubscribe`, or the file's name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateName::Subject => f.write_str("subject"),
            TemplateName::ListUnsubscribe => f.write_str("list_unsubscribe"),
            TemplateName::File(name) => f.write_str(name),
        }
    }
}

/// Where in a template something went wrong, 1-based.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line in the template.
    pub line: usize,
    /// Column in that line.
    pub column: usize,
}

/// `" (template line L, column C)"`, or nothing when the position is unknown.
struct At(Option<Position>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " (template line {}, column {})", p.line, p.column),
            None => Ok(()),
        }
    }
}

/// Why one recipient's message could not be rendered.
///
/// Not `#[non_exhaustive]` on purpose: `edm check` matches it without a
/// wildcard, so a new problem forces a decision there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderProblem {
    /// The address could break the To header (a line break, whitespace, an
    /// angle bracket...): the last guard against header injection.
    #[error("{reason}: {address:?}")]
    UnsafeAddress {
        /// The address.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A template uses a field the row does not have (handlebars strict mode).
    #[error("missing field `{field}` in {template}{}", At(*position))]
    MissingField {
        /// The field.
        field: String,
        /// The template.
        template: TemplateName,
        /// Where in the template, when handlebars says.
        position: Option<Position>,
    },
    /// Another handlebars rendering error.
    #[error("cannot render {template}{}: {reason}", At(*position))]
    Render {
        /// The template.
        template: TemplateName,
        /// Where in the template, when handlebars says.
        position: Option<Position>,
        /// handlebars' reason.
        reason: String,
    },
    /// The rendered List-Unsubscribe URL cannot go in the header (RFC 2369).
    #[error("list_unsubscribe URL {reason}: {url:?}")]
    UnsubscribeUrl {
        /// The rendered URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The row's own attachment (`attachment_column`) cannot be attached.
    #[error("attachment {value:?} (column `{column}`): {problem}")]
    Attachment {
        /// The value in the CSV.
        value: String,
        /// The column.
        column: String,
        /// What is wrong.
        problem: AttachmentProblem,
    },
    /// The message's attachments together are over `max_attachments_bytes`.
    #[error(
        "attachments: attachments are {total} bytes together, over the max_attachments_bytes limit of {max}"
    )]
    AttachmentsTooLarge {
        /// Their total, in bytes of the files.
        total: usize,
        /// The limit.
        max: usize,
    },
    /// The message without its attachments is over `max_body_bytes`.
    #[error("message without attachments is {size} bytes, over the max_body_bytes limit of {max}")]
    BodyTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The finished message (DKIM signature included) is over `max_message_bytes`.
    #[error("message is {size} bytes, over the max_message_bytes limit of {max}")]
    MessageTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A line of the finished message is over `max_line_len` (RFC 5322
    /// §2.1.1); nearly always a header, as mail-builder encodes long body lines.
    #[error(
        "line {number} of the message is {len} bytes, over the max_line_len limit of {max} (it starts {head:?})"
    )]
    LineTooLong {
        /// 1-based line of the message.
        number: usize,
        /// Its length, CRLF excluded.
        len: usize,
        /// The limit.
        max: usize,
        /// Its first 40 bytes, for people.
        head: String,
    },
    /// DKIM signing failed.
    #[error("DKIM signing failed: {0}")]
    Dkim(String),
    /// The address's domain has no A-label form (RFC 5890), so it cannot go
    /// on the wire.
    #[error("{reason}: {address:?}")]
    NoAsciiDomain {
        /// The address.
        address: String,
        /// Why, from IDNA processing.
        reason: String,
    },
}

impl RenderProblem {
    /// The failure category of this problem (the one table that decides it).
    pub fn category(&self) -> Category {
        match self {
            RenderProblem::UnsafeAddress { .. } | RenderProblem::NoAsciiDomain { .. } => {
                Category::InvalidAddress
            }
            RenderProblem::MissingField { .. }
            | RenderProblem::Render { .. }
            | RenderProblem::UnsubscribeUrl { .. } => Category::Template,
            RenderProblem::Attachment { problem, .. } => match problem {
                AttachmentProblem::TooLarge { .. } => Category::Preflight,
                AttachmentProblem::Path(_)
                | AttachmentProblem::Moved { .. }
                | AttachmentProblem::Unreadable { .. } => Category::Template,
            },
            RenderProblem::AttachmentsTooLarge { .. }
            | RenderProblem::BodyTooLarge { .. }
            | RenderProblem::MessageTooLarge { .. }
            | RenderProblem::LineTooLong { .. }
            | RenderProblem::Dkim(_) => Category::Preflight,
        }
    }
}

/// Why a row's own attachment cannot be attached.
///
/// Not `#[non_exhaustive]` on purpose: `edm check` matches it without a
/// wildcard, so a new problem forces a decision there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentProblem {
    /// The value does not name a file that may be attached ([`crate::resolve_inside`]).
    #[error("{0}")]
    Path(PathRefusal),
    /// Not in `attachment_dir`, but a file by that name is in the campaign
    /// folder, where per-row attachments used to be looked up.
    #[error(
        "not found in attachment_dir ({}): per-row attachments are now looked up in \
         [campaign] attachment_dir, relative to it, no longer relative to the campaign \
         folder, where this value names a file; {suggestion}",
        attachment_dir.display()
    )]
    Moved {
        /// `[campaign] attachment_dir`.
        attachment_dir: PathBuf,
        /// What to write instead, or where to move the file.
        suggestion: String,
    },
    /// The file was found but could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: String,
    },
    /// The file is over `max_attachment_bytes`.
    #[error("attachment is {size} bytes, over the max_attachment_bytes limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_stays_what_the_store_and_reports_show() {
        let e = RenderError {
            line: 7,
            problem: RenderProblem::MissingField {
                field: "last_name".into(),
                template: TemplateName::File("body.html".into()),
                position: Some(Position { line: 3, column: 9 }),
            },
        };
        assert_eq!(
            e.to_string(),
            "line 7: missing field `last_name` in body.html (template line 3, column 9)"
        );
        let f = Failure::from(e);
        assert_eq!(f.category, Category::Template);
        assert_eq!(f.stage, Stage::Render);
        assert!(f.permanent);
    }

    #[test]
    fn categories_follow_the_variant() {
        let too_large = |problem| RenderProblem::Attachment {
            value: "a.pdf".into(),
            column: "file".into(),
            problem,
        };
        assert_eq!(
            too_large(AttachmentProblem::TooLarge { size: 2, max: 1 }).category(),
            Category::Preflight
        );
        assert_eq!(
            too_large(AttachmentProblem::Path(PathRefusal::Outside)).category(),
            Category::Template
        );
        assert_eq!(
            RenderProblem::UnsafeAddress {
                address: "a b@x.example".into(),
                reason: "address contains whitespace"
            }
            .category(),
            Category::InvalidAddress
        );
        assert_eq!(
            RenderProblem::LineTooLong {
                number: 3,
                len: 2000,
                max: 998,
                head: "Subject".into()
            }
            .category(),
            Category::Preflight
        );
    }
}
