//! `[campaign] attachments`, `attachment_column` and `attachment_dir`, with
//! the `[limits]` on them, turned into edm-template's [`Attachments`].
//!
//! A row's own file comes only from `attachment_dir`: the CSV may come from
//! anyone, and must not be able to attach the state database, a DKIM key or
//! anything else on the machine (edm-template's `resolve_inside` is the
//! rule, `protected` below the files refused even inside the folder).

use std::path::{Path, PathBuf};

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

/// What is wrong with `[campaign] attachment_dir`, said for people.
#[derive(Debug)]
pub(crate) enum DirProblem {
    /// It does not exist or is not a folder.
    Unavailable(String),
    /// It is the campaign folder, or holds it.
    HoldsCampaign(String),
}

impl DirProblem {
    pub(crate) fn message(self) -> String {
        match self {
            DirProblem::Unavailable(m) | DirProblem::HoldsCampaign(m) => m,
        }
    }
}

/// What is wrong with `[campaign] attachment_dir` when rows name their own
/// files (`attachment_column` is set): it does not exist, or it is the
/// campaign folder (or holds it), from where a row could reach the
/// settings and the state. `None` when it is fine or not used.
pub(crate) fn dir_problem(c: &Campaign) -> Option<DirProblem> {
    let cfg = &c.config.campaign;
    cfg.attachment_column.as_ref()?;
    let dir = c.path(&cfg.attachment_dir);
    let shown = format!(
        "[campaign] attachment_dir = {:?} ({})",
        cfg.attachment_dir.display().to_string(),
        dir.display()
    );
    let canonical = match dir.canonicalize() {
        Ok(d) if d.is_dir() => d,
        Ok(_) => return Some(DirProblem::Unavailable(format!("{shown} is not a folder"))),
        Err(e) => {
            return Some(DirProblem::Unavailable(format!(
                "{shown} cannot be opened: {e}. Per-row attachments (attachment_column) are \
                 looked up only in attachment_dir, their values relative to it (no longer \
                 relative to the campaign folder): create it and move the files there"
            )));
        }
    };
    let campaign = c.dir.canonicalize().unwrap_or_else(|_| c.dir.clone());
    campaign.starts_with(&canonical).then(|| {
        DirProblem::HoldsCampaign(format!(
            "{shown} is the campaign folder or holds it: per-row attachments must come from \
             a folder of their own, so that a CSV row cannot attach the campaign's settings, \
             state or keys"
        ))
    })
}

/// `path` canonical where it exists; else its parent canonical with its
/// name (a state database not created yet); else as it is.
fn canonical_or_near(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent().map(Path::canonicalize), path.file_name()) {
        (Some(Ok(parent)), Some(name)) => parent.join(name),
        _ => path.to_owned(),
    }
}

/// Files a row may never attach, even from inside `attachment_dir`: the
/// settings, the recipients and suppression lists, the state (database,
/// journal, WAL, the default `.edm` folder), the DKIM key and the SMTP
/// password file.
fn protected(c: &Campaign) -> Vec<PathBuf> {
    let cfg = &c.config;
    let state = c.state_path();
    let mut paths = vec![
        c.file.clone(),
        c.path(&cfg.campaign.recipients),
        c.dir.join(".edm"),
        crate::suppress::edm_home().join(crate::suppress::SHARED_SUPPRESSION_FILE),
    ];
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = state.clone().into_os_string();
        p.push(suffix);
        paths.push(PathBuf::from(p));
    }
    paths.extend(cfg.campaign.suppression.iter().map(|p| c.path(p)));
    paths.extend(cfg.dkim.iter().map(|d| c.path(&d.key_file)));
    paths.extend(cfg.smtp.password_file.iter().map(|p| c.path(p)));
    paths.iter().map(|p| canonical_or_near(p)).collect()
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
        base_dir: c.path(&cfg.attachment_dir),
        moved_from: Some(c.dir.clone()),
        protected: protected(c),
        limits,
        encoding: l.attachment_encoding,
    };
    a.check_shared()
        .map_err(|e| AttachmentProblem::TooLarge(e.to_string()))?;
    Ok(Some(a))
}

/// `templates` with the campaign's attachments, for `edm send` and
/// `edm preview`: a problem with a shared file, or an `attachment_dir` that
/// cannot be used, stops them before sending.
pub(crate) fn with_attachments(c: &Campaign, templates: Templates) -> Result<Templates, Error> {
    if let Some(problem) = dir_problem(c) {
        return Err(Error::Config {
            file: c.file.clone(),
            message: problem.message(),
        });
    }
    match attachments(c).map_err(|p| p.into_error(c))? {
        Some(a) => Ok(templates.with_attachments(a)?),
        None => Ok(templates),
    }
}
