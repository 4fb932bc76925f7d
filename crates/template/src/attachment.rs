//! Attachments: files for every recipient, read once and shared, and a file
//! per recipient named by a CSV column, read when that recipient is rendered.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use edm_model::Recipient;

use crate::{AttachmentProblem, Error, RenderProblem};

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

/// How attachments are encoded on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachmentEncoding {
    /// mail-builder's choice: base64 for binary types, 7bit or
    /// quoted-printable for text types when that is shorter.
    #[default]
    Auto,
    /// base64 for every attachment, text included: some providers (Tencent
    /// Cloud SES) accept attachments in no other transfer encoding.
    Base64,
}

/// What a campaign attaches: see [`Templates::with_attachments`](crate::Templates::with_attachments).
#[derive(Clone, Debug, Default)]
pub struct Attachments {
    /// Attached to every message, in this order.
    pub files: Vec<AttachmentFile>,
    /// The CSV column holding a per-recipient file (empty value: none).
    pub column: Option<String>,
    /// Per-recipient files come only from this directory
    /// (`[campaign] attachment_dir`): a CSV value is a path relative to it
    /// and, symlinks followed, must stay inside it ([`resolve_inside`]).
    pub base_dir: PathBuf,
    /// Where per-recipient paths were looked up before `base_dir` existed
    /// (the campaign folder): a value that names a file there but not in
    /// `base_dir` fails with a message saying what moved.
    pub moved_from: Option<PathBuf>,
    /// Files (or whole folders) never attached, even from inside
    /// `base_dir`: the state database, the DKIM key, `campaign.toml`...
    /// Canonical paths ([`std::fs::canonicalize`]).
    pub protected: Vec<PathBuf>,
    /// Checked before anything is sent.
    pub limits: AttachmentLimits,
    /// The transfer encoding of every attachment.
    pub encoding: AttachmentEncoding,
}

/// Why a per-recipient value does not name a file that may be attached
/// ([`resolve_inside`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRefusal {
    /// Absolute, `..`, a NUL or another control character: refused before
    /// touching the file system.
    NotRelative(&'static str),
    /// The attachment directory itself cannot be opened.
    DirUnavailable(String),
    /// Nothing by that name in the attachment directory.
    Missing(String),
    /// The path (a symlink in it) leads out of the attachment directory.
    Outside,
    /// A file edm protects (state, keys, configuration).
    Protected,
    /// A directory, a FIFO, a device: only regular files are attached.
    NotAFile,
}

impl std::fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathRefusal::NotRelative(why) => {
                write!(f, "refused: {why}; write a path relative to attachment_dir")
            }
            PathRefusal::DirUnavailable(e) => write!(f, "attachment_dir cannot be opened: {e}"),
            PathRefusal::Missing(e) => write!(f, "cannot read: {e}"),
            PathRefusal::Outside => {
                write!(f, "refused: it leads out of attachment_dir (a symlink)")
            }
            PathRefusal::Protected => write!(
                f,
                "refused: it is a file edm never attaches (campaign settings, state, keys)"
            ),
            PathRefusal::NotAFile => write!(f, "refused: not a regular file"),
        }
    }
}

/// The file a per-recipient value names: `value` is relative to `dir`, and
/// the path, every symlink followed, must end inside `dir` (canonicalized
/// too), on a regular file that is not under one of `protected` (canonical
/// paths). The CSV may come from anyone: it must not reach the state
/// database, a DKIM key or anything else on the machine. The returned path
/// is canonical, so what is read is what was checked.
pub fn resolve_inside(
    dir: &Path,
    value: &str,
    protected: &[PathBuf],
) -> Result<PathBuf, PathRefusal> {
    if value.contains('\0') {
        return Err(PathRefusal::NotRelative("it contains a NUL byte"));
    }
    if value.chars().any(char::is_control) {
        return Err(PathRefusal::NotRelative("it contains a control character"));
    }
    for c in Path::new(value).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(PathRefusal::NotRelative("it contains ..")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathRefusal::NotRelative("it is an absolute path"));
            }
        }
    }
    let root = dir
        .canonicalize()
        .map_err(|e| PathRefusal::DirUnavailable(format!("{}: {e}", dir.display())))?;
    let joined = root.join(value);
    let path = joined
        .canonicalize()
        .map_err(|e| PathRefusal::Missing(format!("{}: {e}", joined.display())))?;
    if !path.starts_with(&root) {
        return Err(PathRefusal::Outside);
    }
    if protected.iter().any(|p| path.starts_with(p)) {
        return Err(PathRefusal::Protected);
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| PathRefusal::Missing(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(PathRefusal::NotAFile);
    }
    Ok(path)
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

    /// When `value` is not in `base_dir` but names a file relative to the
    /// campaign folder (where per-row attachments used to be looked up),
    /// what moved and what to do. Never for a protected file or one outside
    /// the folder.
    fn moved_hint(&self, value: &str) -> Option<AttachmentProblem> {
        let old = self.moved_from.as_deref()?;
        let found = resolve_inside(old, value, &self.protected).ok()?;
        let dir = self.base_dir.canonicalize().ok();
        let suggestion = match dir.as_deref().and_then(|d| found.strip_prefix(d).ok()) {
            Some(rest) => format!("write {:?}", rest.display().to_string()),
            None => "move the file there, or set [campaign] attachment_dir".to_owned(),
        };
        Some(AttachmentProblem::Moved {
            attachment_dir: self.base_dir.clone(),
            suggestion,
        })
    }

    /// The files of one recipient: everyone's, then its own (if its column
    /// names one). A file that cannot be read is a [`Category::Template`]
    /// problem, one over a limit a [`Category::Preflight`] one
    /// ([`RenderProblem::category`]).
    ///
    /// [`Category::Template`]: edm_model::Category::Template
    /// [`Category::Preflight`]: edm_model::Category::Preflight
    pub(crate) fn for_recipient(
        &self,
        columns: &[String],
        recipient: &Recipient,
    ) -> Result<Vec<AttachmentFile>, RenderProblem> {
        let mut files = self.files.clone();
        let own = self.column.as_deref().and_then(|column| {
            let i = columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(column))?;
            let value = recipient.values.get(i)?.trim();
            (!value.is_empty()).then_some((column, value))
        });
        if let Some((column, value)) = own {
            let fail = |problem| RenderProblem::Attachment {
                value: value.to_owned(),
                column: column.to_owned(),
                problem,
            };
            let unreadable = |path: &Path, e: std::io::Error| {
                fail(AttachmentProblem::Unreadable {
                    path: path.to_owned(),
                    error: e.to_string(),
                })
            };
            let path = match resolve_inside(&self.base_dir, value, &self.protected) {
                Ok(path) => path,
                Err(refusal @ (PathRefusal::Missing(_) | PathRefusal::DirUnavailable(_))) => {
                    let problem = self
                        .moved_hint(value)
                        .unwrap_or(AttachmentProblem::Path(refusal));
                    return Err(fail(problem));
                }
                Err(refusal) => return Err(fail(AttachmentProblem::Path(refusal))),
            };
            let size = std::fs::metadata(&path)
                .map_err(|e| unreadable(&path, e))?
                .len();
            // Refused before reading it whole.
            if let Some(max) = self.limits.max_attachment_bytes
                && size as usize > max
            {
                return Err(fail(AttachmentProblem::TooLarge {
                    size: size as usize,
                    max,
                }));
            }
            let mut file = AttachmentFile::read(&path).map_err(|e| unreadable(&path, e))?;
            // The name the CSV gave, not a symlink's target.
            file.name = file_name(Path::new(value));
            files.push(file);
        }
        let total = files.iter().map(|f| f.bytes.len()).sum();
        if let Some(max) = self.limits.max_attachments_bytes
            && total > max
        {
            return Err(RenderProblem::AttachmentsTooLarge { total, max });
        }
        Ok(files)
    }
}

fn over_one(size: usize, limits: &AttachmentLimits) -> Option<String> {
    let max = limits.max_attachment_bytes?;
    (size > max).then(|| AttachmentProblem::TooLarge { size, max }.to_string())
}

fn over_total(total: usize, limits: &AttachmentLimits) -> Option<String> {
    let max = limits.max_attachments_bytes?;
    (total > max).then(|| {
        format!(
            "attachments are {total} bytes together, over the max_attachments_bytes limit of {max}"
        )
    })
}

/// `file` as a MIME part encoded in base64 whatever its type
/// ([`AttachmentEncoding::Base64`]): mail-builder would pick 7bit or
/// quoted-printable for a text type, so the part carries its own
/// Content-Transfer-Encoding and lines of 76 characters (RFC 2045 §6.8).
pub(crate) fn base64_part(file: &AttachmentFile) -> mail_builder::mime::MimePart<'static> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&file.bytes[..]);
    let mut body = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for (i, line) in encoded.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(line);
    }
    body.extend_from_slice(b"\r\n");
    mail_builder::mime::MimePart::new(file.content_type, body)
        .attachment(file.name.clone())
        .transfer_encoding("base64")
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
