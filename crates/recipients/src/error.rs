//! The one error type of this crate. Every variant names the file, and the
//! line (and column) where one applies, so an operator can open the file and
//! go straight to the problem.

use std::io;
use std::path::{Path, PathBuf};

/// Why a recipients or suppression file could not be read.
///
/// Row-level problems (a bad address, a ragged row) are not errors: they come
/// back as [`Verdict::Invalid`](crate::Verdict::Invalid) so a run can report
/// them and go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened.
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The configured encoding is not a label the WHATWG Encoding Standard
    /// knows (or names only its "replacement" encoding).
    #[error(
        "{}: unknown encoding {label:?}; use a WHATWG label such as \
         \"windows-1252\", \"iso-8859-1\", \"utf-16le\", \"gbk\" or \"shift_jis\"",
        path.display()
    )]
    UnknownEncoding {
        /// The file.
        path: PathBuf,
        /// The label as configured.
        label: String,
    },
    /// The file has no bytes (a lone UTF-8 or UTF-16 BOM counts as none).
    #[error("{}: the file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file holds only blank lines: there is no header line.
    #[error("{}: no header line (the file holds only blank lines)", path.display())]
    NoHeader {
        /// The file.
        path: PathBuf,
    },
    /// The header has no column of the wanted name.
    #[error(
        "{}: line {line}: no `{wanted}` column in the header; the columns are: {}",
        path.display(),
        list_columns(columns)
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The header's line.
        line: u64,
        /// The column asked for.
        wanted: String,
        /// The columns the header has.
        columns: Vec<String>,
    },
    /// Reading failed part-way (after it, the iterator ends).
    #[error("{}: line {line}: read error: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The line being read when it failed.
        line: u64,
        /// What the OS said.
        source: io::Error,
    },
    /// A field is not valid UTF-8 (only when no encoding is configured: a
    /// configured one replaces invalid bytes with U+FFFD).
    #[error(
        "{}: line {line}, column {column} (`{field}`): not valid UTF-8 \
         (byte {valid_up_to} of the field); save the file as UTF-8 or \
         configure its encoding",
        path.display()
    )]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The line where the record starts.
        line: u64,
        /// 1-based column number.
        column: usize,
        /// The column's name from the header (or `header` for the header itself).
        field: String,
        /// Bytes of the field that are valid before the first bad one.
        valid_up_to: usize,
    },
}

impl Error {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Open { path, .. }
            | Error::UnknownEncoding { path, .. }
            | Error::Empty { path }
            | Error::NoHeader { path }
            | Error::MissingColumn { path, .. }
            | Error::Read { path, .. }
            | Error::InvalidUtf8 { path, .. } => path,
        }
    }

    /// What is wrong, without the file and line that [`Error::path`] and
    /// [`Error::line`] give: for reports that show those in their own
    /// columns (`edm check`). The error's text is `path[: line N]: ` and this
    /// (`path: line N, column ...` for [`Error::InvalidUtf8`]).
    pub fn reason(&self) -> String {
        match self {
            Error::Open { source, .. } => format!("cannot open: {source}"),
            Error::UnknownEncoding { label, .. } => format!(
                "unknown encoding {label:?}; use a WHATWG label such as \
                 \"windows-1252\", \"iso-8859-1\", \"utf-16le\", \"gbk\" or \"shift_jis\""
            ),
            Error::Empty { .. } => "the file is empty".to_owned(),
            Error::NoHeader { .. } => "no header line (the file holds only blank lines)".to_owned(),
            Error::MissingColumn {
                wanted, columns, ..
            } => format!(
                "no `{wanted}` column in the header; the columns are: {}",
                list_columns(columns)
            ),
            Error::Read { source, .. } => format!("read error: {source}"),
            Error::InvalidUtf8 {
                column,
                field,
                valid_up_to,
                ..
            } => format!(
                "column {column} (`{field}`): not valid UTF-8 \
                 (byte {valid_up_to} of the field); save the file as UTF-8 or \
                 configure its encoding"
            ),
        }
    }

    /// The 1-based line the error is about, when it is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            Error::Open { .. }
            | Error::UnknownEncoding { .. }
            | Error::Empty { .. }
            | Error::NoHeader { .. } => None,
            Error::MissingColumn { line, .. }
            | Error::Read { line, .. }
            | Error::InvalidUtf8 { line, .. } => Some(*line),
        }
    }
}

fn list_columns(columns: &[String]) -> String {
    if columns.is_empty() {
        return "(none)".to_owned();
    }
    let quoted: Vec<String> = columns.iter().map(|c| format!("`{c}`")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_the_text_after_file_and_line() {
        let path = PathBuf::from("r.csv");
        let errors = [
            Error::Open {
                path: path.clone(),
                source: io::Error::from(io::ErrorKind::NotFound),
            },
            Error::UnknownEncoding {
                path: path.clone(),
                label: "klingon".into(),
            },
            Error::Empty { path: path.clone() },
            Error::NoHeader { path: path.clone() },
            Error::MissingColumn {
                path: path.clone(),
                line: 1,
                wanted: "email".into(),
                columns: vec!["mail".into()],
            },
            Error::Read {
                path: path.clone(),
                line: 4,
                source: io::Error::other("disk"),
            },
            Error::InvalidUtf8 {
                path: path.clone(),
                line: 3,
                column: 2,
                field: "name".into(),
                valid_up_to: 1,
            },
        ];
        for e in errors {
            let head = match (&e, e.line()) {
                (Error::InvalidUtf8 { .. }, Some(line)) => format!("r.csv: line {line}, "),
                (_, Some(line)) => format!("r.csv: line {line}: "),
                (_, None) => "r.csv: ".to_owned(),
            };
            assert_eq!(e.to_string(), format!("{head}{}", e.reason()), "{e:?}");
        }
    }
}
