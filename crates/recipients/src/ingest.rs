//! The streaming reader: one [`Row`] per CSV record, each with its [`Verdict`].

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use edm_model::Category;

use crate::address::{AddressProblem, normalize_into, validate};
use crate::decode::{Decoded, encoding_for, lone_utf16_bom};
use crate::lines::LineCounter;
use crate::seen::Seen;
use crate::sniff::{Start, read_start, sniff_delimiter};
use crate::{Error, Suppression};

/// The CSV reader's buffer: large enough that a multi-gigabyte file is read in
/// few system calls, small enough to never matter for memory.
const READ_BUFFER: usize = 64 * 1024;

/// The CSV reader over a file: decoded, then line-counted.
pub(crate) type CsvReader = csv::Reader<LineCounter<Decoded<File>>>;

/// How to read a recipients file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// The header name of the address column, matched case-insensitively
    /// after trimming. Default `email`.
    pub email_column: String,
    /// The field delimiter; `None` sniffs it from the header line among
    /// `,` `;` tab and `|`.
    pub delimiter: Option<u8>,
    /// The file's encoding, as a WHATWG label ("windows-1252", "iso-8859-1",
    /// "utf-16le", "gbk", "shift_jis", ...). `None` reads UTF-8 (with or
    /// without BOM), and invalid UTF-8 is an [`Error::InvalidUtf8`]; a
    /// UTF-16 BOM is recognised either way. With an encoding, bytes invalid
    /// in it become U+FFFD instead of failing. An unknown label is
    /// [`Error::UnknownEncoding`].
    pub encoding: Option<String>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            email_column: "email".to_owned(),
            delimiter: None,
            encoding: None,
        }
    }
}

/// One record of the file and what ingest thinks of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// 1-based line where the record starts (a quoted field may span lines).
    pub line: u64,
    /// The address, trimmed (empty when the row is too short to have one).
    pub email: String,
    /// The values in header order, padded with empty strings or truncated to
    /// the header's length.
    pub values: Vec<String>,
    /// Whether to send to it.
    pub verdict: Verdict,
}

/// What ingest decided about a row.
///
/// The checks run in this order and the first that applies wins:
/// 1. the row has as many fields as the header, else [`Verdict::Invalid`];
/// 2. the address is valid, else [`Verdict::Invalid`];
/// 3. the address (case-insensitive, trimmed) was not seen on an earlier
///    valid row, else [`Verdict::Duplicate`];
/// 4. the address is not on the suppression list, else [`Verdict::Suppressed`].
///
/// So a suppressed address that appears twice is `Suppressed` on its first
/// row and `Duplicate` on the second: each person is counted once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send to it.
    Valid,
    /// The row or its address is not usable.
    Invalid {
        /// Always [`Category::InvalidAddress`].
        category: Category,
        /// Why: a ragged row, or an invalid address. Its text is for a
        /// person: "missing @", "row has 3 fields, header has 4".
        reason: RowProblem,
    },
    /// The address already appeared on a valid row.
    Duplicate {
        /// The line where that row starts.
        first_line: u64,
    },
    /// The address is on the suppression list.
    Suppressed,
}

impl Verdict {
    fn invalid(reason: RowProblem) -> Verdict {
        Verdict::Invalid {
            category: Category::InvalidAddress,
            reason,
        }
    }
}

/// Why a row is [`Verdict::Invalid`].
///
/// Not `#[non_exhaustive]` on purpose: `edm check` matches it without a
/// wildcard, so a new problem forces a decision there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RowProblem {
    /// The row has more or fewer fields than the header: usually an
    /// unquoted delimiter inside a value, so its values cannot be trusted.
    #[error("row has {found} fields, header has {expected}")]
    FieldCount {
        /// Fields in the row.
        found: usize,
        /// Fields in the header.
        expected: usize,
    },
    /// The address is not usable ([`validate`](crate::validate)).
    #[error("{0}")]
    Address(AddressProblem),
}

/// A recipients file being read, record by record. Created by [`open`].
///
/// Memory grows only with the set of distinct addresses kept for dedupe,
/// never with the file. After an I/O error the iterator ends; after an
/// invalid UTF-8 error it goes on with the next record.
#[derive(Debug)]
pub struct Ingest {
    path: PathBuf,
    reader: CsvReader,
    record: csv::ByteRecord,
    columns: Vec<String>,
    email_index: usize,
    delimiter: u8,
    /// Normalised address -> line of its first valid row.
    /// A fingerprint of each normalised address, not the address: 20 to 30
    /// bytes an address ([`Seen`]), so 10M recipients fit.
    seen: Seen,
    suppression: Option<Suppression>,
    finished: bool,
    /// The last row's normalised address, its buffer reused row to row.
    key: String,
}

/// Opens a recipients file, reads its header and finds the address column.
///
/// The file is not read further until the returned [`Ingest`] is iterated.
/// It is decoded as it is read (see [`ReadOptions::encoding`]): line numbers
/// and byte offsets in errors are those of the decoded text.
pub fn open(
    path: &Path,
    opts: &ReadOptions,
    suppression: Option<&Suppression>,
) -> Result<Ingest, Error> {
    let (reader, delimiter) = open_csv(path, opts.delimiter, opts.encoding.as_deref(), false)?;
    let mut ingest = Ingest {
        path: path.to_owned(),
        reader,
        record: csv::ByteRecord::new(),
        columns: Vec::new(),
        email_index: 0,
        delimiter,
        seen: Seen::new(),
        suppression: suppression.cloned(),
        finished: false,
        key: String::new(),
    };
    let (columns, line) = ingest.read_header()?;
    let wanted = opts.email_column.trim();
    let Some(email_index) = columns.iter().position(|c| c.eq_ignore_ascii_case(wanted)) else {
        return Err(Error::MissingColumn {
            path: path.to_owned(),
            line,
            wanted: wanted.to_owned(),
            columns,
        });
    };
    ingest.columns = columns;
    ingest.email_index = email_index;
    Ok(ingest)
}

/// Opens `path` as CSV, decoded from `encoding` (a WHATWG label; `None` for
/// UTF-8 as-is), sniffing the delimiter unless one is given. Fails on an
/// unknown encoding and on an empty or blank file. `comments` makes lines
/// starting with `#` skipped.
pub(crate) fn open_csv(
    path: &Path,
    delimiter: Option<u8>,
    encoding: Option<&str>,
    comments: bool,
) -> Result<(CsvReader, u8), Error> {
    let encoding = encoding_for(path, encoding)?;
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    let read_error = |source| Error::Read {
        path: path.to_owned(),
        line: 1,
        source,
    };
    if lone_utf16_bom(&file).map_err(read_error)? {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    (&file).seek(SeekFrom::Start(0)).map_err(read_error)?;
    // Sniff through a decoder of its own (reading via `&File`), then rewind
    // and decode again from the start for csv.
    let start = read_start(BufReader::new(Decoded::new(&file, encoding))).map_err(read_error)?;
    let header = match start {
        Start::Empty => {
            return Err(Error::Empty {
                path: path.to_owned(),
            });
        }
        Start::Blank => {
            return Err(Error::NoHeader {
                path: path.to_owned(),
            });
        }
        Start::Header { line, bom } => (line, bom),
    };
    let delimiter = delimiter.unwrap_or_else(|| sniff_delimiter(&header.0));
    (&file).seek(SeekFrom::Start(0)).map_err(read_error)?;
    let reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .comment(comments.then_some(b'#'))
        .buffer_capacity(READ_BUFFER)
        .from_reader(LineCounter::new(Decoded::new(file, encoding), header.1));
    Ok((reader, delimiter))
}

impl Ingest {
    /// The header's column names, trimmed, in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The delimiter in use (configured or sniffed).
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// The index of the address column in [`Ingest::columns`].
    pub fn email_index(&self) -> usize {
        self.email_index
    }

    /// Reads the first record as the header: trimmed names and its line.
    fn read_header(&mut self) -> Result<(Vec<String>, u64), Error> {
        let line = match self.read_record() {
            Ok(true) => self.record_line(),
            Ok(false) => {
                return Err(Error::NoHeader {
                    path: self.path.clone(),
                });
            }
            Err(e) => return Err(e),
        };
        let mut columns = Vec::with_capacity(self.record.len());
        for (i, field) in self.record.iter().enumerate() {
            let name = std::str::from_utf8(field).map_err(|e| Error::InvalidUtf8 {
                path: self.path.clone(),
                line,
                column: i + 1,
                field: "header".to_owned(),
                valid_up_to: e.valid_up_to(),
            })?;
            columns.push(name.trim().to_owned());
        }
        Ok((columns, line))
    }

    fn read_record(&mut self) -> Result<bool, Error> {
        self.reader
            .read_byte_record(&mut self.record)
            .map_err(|e| Error::Read {
                path: self.path.clone(),
                line: self.record_line(),
                source: into_io(e),
            })
    }

    /// The line where the last record read starts.
    fn record_line(&mut self) -> u64 {
        record_line(&mut self.reader, &self.record)
    }

    /// Turns the record just read into a row.
    fn row(&mut self) -> Result<Row, Error> {
        let line = self.record_line();
        let width = self.columns.len();
        let mut values = Vec::with_capacity(width);
        for (i, field) in self.record.iter().take(width).enumerate() {
            match std::str::from_utf8(field) {
                Ok(s) => values.push(s.to_owned()),
                Err(e) => {
                    return Err(Error::InvalidUtf8 {
                        path: self.path.clone(),
                        line,
                        column: i + 1,
                        field: self.columns[i].clone(),
                        valid_up_to: e.valid_up_to(),
                    });
                }
            }
        }
        values.resize(width, String::new());
        let email = values[self.email_index].trim().to_owned();
        let verdict = self.judge(line, &email);
        Ok(Row {
            line,
            email,
            values,
            verdict,
        })
    }

    /// Applies the checks in the order documented on [`Verdict`].
    fn judge(&mut self, line: u64, email: &str) -> Verdict {
        let fields = self.record.len();
        if fields != self.columns.len() {
            return Verdict::invalid(RowProblem::FieldCount {
                found: fields,
                expected: self.columns.len(),
            });
        }
        if let Err(reason) = validate(email) {
            return Verdict::invalid(RowProblem::Address(reason));
        }
        normalize_into(email, &mut self.key);
        let key = self.key.as_str();
        let suppressed = self
            .suppression
            .as_ref()
            .is_some_and(|s| s.contains_normalized(key));
        match self.seen.first_or_insert(fingerprint(key), line) {
            Some(first_line) => Verdict::Duplicate { first_line },
            None => {
                if suppressed {
                    Verdict::Suppressed
                } else {
                    Verdict::Valid
                }
            }
        }
    }
}

/// Two independent 64-bit SipHash values of the address, as one u128.
fn fingerprint(key: &str) -> u128 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    type Sip = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    let a = Sip::default().hash_one((0u8, key));
    let b = Sip::default().hash_one((1u8, key));
    (u128::from(a) << 64) | u128::from(b)
}

impl Iterator for Ingest {
    type Item = Result<Row, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.read_record() {
            Ok(true) => Some(self.row()),
            Ok(false) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// The line where `record`, just read by `reader`, starts. csv sets a
/// position on every record it reads, even at EOF or on error.
pub(crate) fn record_line<R: io::Read>(
    reader: &mut csv::Reader<LineCounter<R>>,
    record: &csv::ByteRecord,
) -> u64 {
    let start = record.position().map_or(0, |p| p.byte());
    reader.get_mut().line_at(start)
}

/// `read_byte_record` only fails on I/O (parsing bytes never fails and UTF-8
/// is checked by us), but the error type is wider: keep any other kind as text.
pub(crate) fn into_io(error: csv::Error) -> io::Error {
    match error.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}
