//! Each typed problem to the [`ProblemKind`] it is reported as: decided by
//! the variant (of [`RenderProblem`], [`RowProblem`], edm-template's and
//! edm-recipients' errors), never by reading the text back.

use std::path::PathBuf;

use edm_recipients::RowProblem;
use edm_template::{PathRefusal, RenderProblem, TemplateName};

use super::{Finding, ProblemKind};
use crate::config::Campaign;

/// Classifies a row ingest found invalid: a ragged row, or a bad address
/// (said with the address).
pub(super) fn invalid_row_finding(reason: &RowProblem, email: &str) -> (ProblemKind, String) {
    match reason {
        RowProblem::FieldCount { .. } => (ProblemKind::RaggedRow, reason.to_string()),
        RowProblem::Address(_) => (ProblemKind::InvalidAddress, format!("{reason}: {email:?}")),
    }
}

/// Classifies a render problem by its variant. The finding already carries
/// the CSV line, so the message leaves it out.
pub(super) fn render_finding(problem: RenderProblem, at: Finding) -> (ProblemKind, Finding) {
    use edm_template::AttachmentProblem as A;
    let kind = match &problem {
        RenderProblem::MissingField {
            field,
            template,
            position,
        } => {
            let at_position = match position {
                Some(p) => format!(" (template line {}, column {})", p.line, p.column),
                None => String::new(),
            };
            let finding = Finding {
                field: Some(field.clone()),
                message: format!("missing field in {template}{at_position}"),
                ..at
            };
            return (ProblemKind::MissingField, finding);
        }
        RenderProblem::LineTooLong { .. } => ProblemKind::LineTooLong,
        RenderProblem::MessageTooLarge { .. } | RenderProblem::BodyTooLarge { .. } => {
            ProblemKind::MessageTooLarge
        }
        RenderProblem::AttachmentsTooLarge { .. }
        | RenderProblem::Attachment {
            problem: A::TooLarge { .. },
            ..
        } => ProblemKind::AttachmentTooLarge,
        RenderProblem::Attachment {
            problem:
                A::Path(
                    PathRefusal::NotRelative(_)
                    | PathRefusal::Outside
                    | PathRefusal::Protected
                    | PathRefusal::NotAFile,
                ),
            ..
        } => ProblemKind::AttachmentRefused,
        RenderProblem::Attachment {
            problem:
                A::Path(PathRefusal::Missing(_) | PathRefusal::DirUnavailable(_))
                | A::Moved { .. }
                | A::Unreadable { .. },
            ..
        } => ProblemKind::AttachmentMissing,
        RenderProblem::UnsafeAddress { .. } | RenderProblem::NoAsciiDomain { .. } => {
            ProblemKind::InvalidAddress
        }
        RenderProblem::Render { .. }
        | RenderProblem::UnsubscribeUrl { .. }
        | RenderProblem::Dkim(_) => ProblemKind::RenderFailed,
    };
    let finding = Finding {
        message: problem.to_string(),
        ..at
    };
    (kind, finding)
}

pub(super) fn compile_finding(c: &Campaign, e: edm_template::Error) -> (ProblemKind, Finding) {
    use edm_template::Error as E;
    match e {
        E::Template {
            template,
            line,
            column,
            reason,
        } => {
            // Inline templates (subject, list_unsubscribe) live in campaign.toml.
            let (file, field) = match template {
                TemplateName::Subject | TemplateName::ListUnsubscribe => {
                    (c.file.clone(), Some(format!("[campaign] {template}")))
                }
                TemplateName::File(name) => (PathBuf::from(name), None),
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

pub(super) fn recipients_finding(e: &edm_recipients::Error) -> Finding {
    // The finding shows the file and line in their own places.
    let mut finding = Finding::new(e.path(), e.reason());
    finding.line = e.line();
    if let edm_recipients::Error::InvalidUtf8 { column, field, .. } = e {
        finding.column = Some(*column as u64);
        finding.field = Some(field.clone());
    }
    finding
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use edm_recipients::AddressProblem;

    use super::*;

    #[test]
    fn render_problems_are_classified_by_variant() {
        use edm_template::{AttachmentProblem, Position};
        let at = Finding::new(Path::new("r.csv"), "").at(7);
        let (kind, finding) = render_finding(
            RenderProblem::MissingField {
                field: "last_name".into(),
                template: TemplateName::File("body.html".into()),
                position: Some(Position { line: 3, column: 9 }),
            },
            at.clone(),
        );
        assert_eq!(kind, ProblemKind::MissingField);
        assert_eq!(finding.field.as_deref(), Some("last_name"));
        assert_eq!(
            finding.to_string(),
            "r.csv:7: last_name: missing field in body.html (template line 3, column 9)"
        );
        let (kind, finding) = render_finding(
            RenderProblem::LineTooLong {
                number: 3,
                len: 2000,
                max: 998,
                head: "List-Unsubscribe: <https://".into(),
            },
            at.clone(),
        );
        assert_eq!(kind, ProblemKind::LineTooLong);
        assert!(
            finding
                .message
                .starts_with("line 3 of the message is 2000 bytes")
        );
        let attachment = |problem| RenderProblem::Attachment {
            value: "a.pdf".into(),
            column: "file".into(),
            problem,
        };
        let kind = |p| render_finding(p, at.clone()).0;
        assert_eq!(
            kind(attachment(AttachmentProblem::Path(PathRefusal::Protected))),
            ProblemKind::AttachmentRefused
        );
        // Refusals and missing files say "refused"/"cannot read" in their
        // text; the variant decides, whatever the words.
        assert_eq!(
            kind(attachment(AttachmentProblem::Path(PathRefusal::Missing(
                "refused: x".into()
            )))),
            ProblemKind::AttachmentMissing
        );
        assert_eq!(
            kind(attachment(AttachmentProblem::TooLarge { size: 2, max: 1 })),
            ProblemKind::AttachmentTooLarge
        );
        assert_eq!(
            kind(RenderProblem::BodyTooLarge { size: 2, max: 1 }),
            ProblemKind::MessageTooLarge
        );
        assert_eq!(
            kind(RenderProblem::Dkim("max_line_len".into())),
            ProblemKind::RenderFailed
        );
    }

    #[test]
    fn invalid_rows_are_classified_by_variant() {
        let (kind, message) = invalid_row_finding(
            &RowProblem::FieldCount {
                found: 3,
                expected: 4,
            },
            "a@example.com",
        );
        assert_eq!(kind, ProblemKind::RaggedRow);
        assert_eq!(message, "row has 3 fields, header has 4");
        let (kind, message) = invalid_row_finding(
            &RowProblem::Address(AddressProblem::Syntax("missing @")),
            "x",
        );
        assert_eq!(kind, ProblemKind::InvalidAddress);
        assert_eq!(message, "missing @: \"x\"");
    }
}
