//! Attachments: files for every recipient, read once and shared, and a file
//! per recipient named by a CSV column, read when that recipient is rendered.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use edm_model::{Category, Failure, Recipient, Stage};

use crate::Error;

/// A file attached to messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentFile {
    /// The file name shown to the reader (the path's last component).
    pub name: String,
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// Guessed from the extension ([`content_type`]).
    pub content_type: &'static str,
    /// The bytes, shared by every message that carries the file.
    pub bytes: Arc<[u8]>,
}

impl AttachmentFile {
    /// Reads a file whole.
    pub fn read(path: &Path) -> std::io::Result<AttachmentFile> {
        let bytes = std::fs::read(path)?;
        Ok(AttachmentFile {
            name: file_name(path),
            path: path.to_owned(),
            content_type: content_type(path),
            bytes: bytes.into(),
        })
    }
}

/// Limits on attachments, in bytes of the files (before base64, which adds
/// a third). `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachmentLimits {
    /// The message without its attachments (headers and bodies).
    pub max_body_bytes: Option<usize>,
    /// One attachment.
    pub max_attachment_bytes: Option<usize>,
    /// All of one message's attachments together.
    pub max_attachments_bytes: Option<usize>,
}

/// What a campaign attaches: see [`Templates::with_attachments`](crate::Templates::with_attachments).
#[derive(Clone, Debug, Default)]
pub struct Attachments {
    /// Attached to every message, in this order.
    pub files: Vec<AttachmentFile>,
    /// The CSV column holding a per-recipient file (empty value: none).
    pub column: Option<String>,
    /// Per-recipient paths are relative to this directory.
    pub base_dir: PathBuf,
    /// Checked before anything is sent.
    pub limits: AttachmentLimits,
}

impl Attachments {
    /// Checks the files for everyone against the limits (as
    /// [`Templates::with_attachments`](crate::Templates::with_attachments) does).
    pub fn check_shared(&self) -> Result<(), Error> {
        let mut total = 0usize;
        for f in &self.files {
            if let Some(reason) = over_one(f.bytes.len(), &self.limits) {
                return Err(Error::Attachment {
                    path: f.path.display().to_string(),
                    reason,
                });
            }
            total += f.bytes.len();
        }
        if let Some(reason) = over_total(total, &self.limits) {
            return Err(Error::Attachment {
                path: "[campaign] attachments".into(),
                reason,
            });
        }
        Ok(())
    }

    /// The files of one recipient: everyone's, then its own (if its column
    /// names one). A file that cannot be read is a [`Category::Template`]
    /// failure, one over a limit a [`Category::Preflight`] one.
    pub(crate) fn for_recipient(
        &self,
        columns: &[String],
        recipient: &Recipient,
    ) -> Result<Vec<AttachmentFile>, Failure> {
        let line = recipient.line;
        let mut files = self.files.clone();
        let own = self.column.as_deref().and_then(|column| {
            let i = columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(column))?;
            let value = recipient.values.get(i)?.trim();
            (!value.is_empty()).then_some((column, value))
        });
        if let Some((column, value)) = own {
            let fail = |category, reason: String| {
                Failure::local(
                    Stage::Render,
                    category,
                    format!("line {line}: attachment {value:?} (column `{column}`): {reason}"),
                )
            };
            let relative = Path::new(value);
            // The CSV may come from elsewhere: it names files in the
            // campaign directory, never elsewhere on the machine.
            if relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(fail(
                    Category::Template,
                    "must be a path inside the campaign directory (no absolute path, no ..)".into(),
                ));
            }
            let path = self.base_dir.join(relative);
            let size = std::fs::metadata(&path)
                .map_err(|e| {
                    fail(
                        Category::Template,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .len();
            // Refused before reading it whole.
            if let Some(reason) = over_one(size as usize, &self.limits) {
                return Err(fail(Category::Preflight, reason));
            }
            let file = AttachmentFile::read(&path).map_err(|e| {
                fail(
                    Category::Template,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            files.push(file);
        }
        let total = files.iter().map(|f| f.bytes.len()).sum();
        if let Some(reason) = over_total(total, &self.limits) {
            return Err(Failure::local(
                Stage::Render,
                Category::Preflight,
                format!("line {line}: attachments: {reason}"),
            ));
        }
        Ok(files)
    }
}

fn over_one(size: usize, limits: &AttachmentLimits) -> Option<String> {
    let max = limits.max_attachment_bytes?;
    (size > max).then(|| {
        format!("attachment is {size} bytes, over the max_attachment_bytes limit of {max}")
    })
}

fn over_total(total: usize, limits: &AttachmentLimits) -> Option<String> {
    let max = limits.max_attachments_bytes?;
    (total > max).then(|| {
        format!(
            "attachments are {total} bytes together, over the max_attachments_bytes limit of {max}"
        )
    })
}

/// The content type for a file name's extension (case-insensitive):
/// pdf, png, jpg/jpeg, gif, txt, csv, zip, ics, html/htm; anything else is
/// `application/octet-stream`.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "zip" => "application/zip",
        "ics" => "text/calendar",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type(Path::new("a/terms.PDF")), "application/pdf");
        assert_eq!(content_type(Path::new("x.jpeg")), "image/jpeg");
        assert_eq!(content_type(Path::new("invite.ics")), "text/calendar");
        assert_eq!(
            content_type(Path::new("data.bin")),
            "application/octet-stream"
        );
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
