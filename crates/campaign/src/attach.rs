//! `[campaign] attachments` and `attachment_column`, with the `[limits]` on
//! them, turned into edm-template's [`Attachments`].

use edm_template::{AttachmentFile, AttachmentLimits, Attachments, Templates};

use crate::Error;
use crate::config::Campaign;

/// Why the campaign's attachments cannot be used.
#[derive(Debug)]
pub(crate) enum AttachmentProblem {
    /// A file for everyone cannot be read.
    Missing { path: String, reason: String },
    /// A file for everyone (or all of them) is over a limit.
    TooLarge(String),
}

impl AttachmentProblem {
    pub(crate) fn into_error(self, c: &Campaign) -> Error {
        let message = match self {
            AttachmentProblem::Missing { path, reason } => {
                format!("[campaign] attachments: {path}: {reason}")
            }
            AttachmentProblem::TooLarge(m) => format!("[campaign] attachments: {m}"),
        };
        Error::Config {
            file: c.file.clone(),
            message,
        }
    }
}

/// The campaign's attachments (shared files read now), or `None` when it
/// has none and no limit that needs them checked.
pub(crate) fn attachments(c: &Campaign) -> Result<Option<Attachments>, AttachmentProblem> {
    let cfg = &c.config.campaign;
    let l = c.config.limits.resolved();
    let limits = AttachmentLimits {
        max_body_bytes: l.max_body_bytes,
        max_attachment_bytes: l.max_attachment_bytes,
        max_attachments_bytes: l.max_attachments_bytes,
    };
    if cfg.attachments.is_empty()
        && cfg.attachment_column.is_none()
        && limits == AttachmentLimits::default()
    {
        return Ok(None);
    }
    let mut files = Vec::with_capacity(cfg.attachments.len());
    for p in &cfg.attachments {
        let path = c.path(p);
        let file = AttachmentFile::read(&path).map_err(|e| AttachmentProblem::Missing {
            path: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        files.push(file);
    }
    let a = Attachments {
        files,
        column: cfg.attachment_column.clone(),
        base_dir: c.dir.clone(),
        limits,
    };
    a.check_shared()
        .map_err(|e| AttachmentProblem::TooLarge(e.to_string()))?;
    Ok(Some(a))
}

/// `templates` with the campaign's attachments, for `edm send` and
/// `edm preview`: a problem with a shared file stops them before sending.
pub(crate) fn with_attachments(c: &Campaign, templates: Templates) -> Result<Templates, Error> {
    match attachments(c).map_err(|p| p.into_error(c))? {
        Some(a) => templates
            .with_attachments(a)
            .map_err(|e| Error::Template(e.to_string())),
        None => Ok(templates),
    }
}
