//! Errors of compiling a message spec. Rendering one recipient never returns
//! these: it returns an [`edm_model::Failure`], which is data.

/// Why a [`MessageSpec`](crate::MessageSpec) could not be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A template does not parse.
    #[error("{template}{}: {reason}", position(*line, *column))]
    Template {
        /// Which template.
        template: crate::TemplateName,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// Column in that line, when known.
        column: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The From address is not usable.
    #[error("invalid From {value:?}: {reason}")]
    From {
        /// The value given.
        value: String,
        /// What is wrong.
        reason: crate::MailboxProblem,
    },
    /// The Reply-To address is not usable.
    #[error("invalid Reply-To {value:?}: {reason}")]
    ReplyTo {
        /// The value given.
        value: String,
        /// What is wrong.
        reason: crate::MailboxProblem,
    },
    /// The DKIM key or settings are not usable.
    #[error("DKIM: {reason}")]
    Dkim {
        /// What is wrong.
        reason: String,
    },
    /// An attachment for every recipient breaks a limit.
    #[error("{path}: {reason}")]
    Attachment {
        /// The file (or `[campaign] attachments` for the total).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Neither an HTML nor a text body was given.
    #[error("a message needs an HTML or a text body, and neither is set")]
    NoBody,
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}
