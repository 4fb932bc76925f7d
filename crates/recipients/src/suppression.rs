//! Addresses never to send to: unsubscribes, complaints, hard bounces.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use crate::Error;
use crate::address::normalize;
use crate::ingest::{into_io, open_csv, record_line};
use crate::sniff::sniff_delimiter;

/// A set of addresses, compared trimmed and case-insensitively.
///
/// Cheap to clone (the set is shared), so an [`Ingest`](crate::Ingest) keeps
/// its own handle and has no lifetime.
#[derive(Clone, Default)]
pub struct Suppression {
    set: Arc<HashSet<String>>,
}

impl fmt::Debug for Suppression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suppression")
            .field("len", &self.set.len())
            .finish()
    }
}

impl Suppression {
    /// Loads a suppression file in one of two shapes:
    /// - CSV whose header has an `email` column (any case), delimiter sniffed;
    /// - otherwise one address per line.
    ///
    /// In both, blank lines and lines starting with `#` are ignored.
    pub fn load(path: &Path) -> Result<Suppression, Error> {
        let file = File::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        let first = first_content_line(path, BufReader::new(file))?;
        let Some(first) = first else {
            return Ok(Suppression::default());
        };
        let delimiter = sniff_delimiter(first.as_bytes());
        let email_index = first
            .split(delimiter as char)
            .map(|c| c.trim().trim_matches('"').trim())
            .position(|c| c.eq_ignore_ascii_case("email"));
        let set = match email_index {
            Some(index) => load_csv(path, delimiter, index)?,
            None => load_lines(path)?,
        };
        Ok(Suppression { set: Arc::new(set) })
    }

    /// Builds a set from addresses in memory.
    pub fn from_addresses<I>(addresses: I) -> Suppression
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let set = addresses
            .into_iter()
            .map(|a| normalize(a.as_ref()))
            .filter(|a| !a.is_empty())
            .collect();
        Suppression { set: Arc::new(set) }
    }

    /// True when the address (trimmed, any case) is in the set.
    pub fn contains(&self, email: &str) -> bool {
        self.contains_normalized(&normalize(email))
    }

    pub(crate) fn contains_normalized(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    /// How many distinct addresses the set holds.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The addresses, normalised (trimmed, lower-cased), in no order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.set.iter().map(String::as_str)
    }

    /// Every address of both sets (a campaign's list and the shared one).
    pub fn union(&self, other: &Suppression) -> Suppression {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let set = self.set.union(&other.set).cloned().collect();
        Suppression { set: Arc::new(set) }
    }
}

/// The first line that is neither blank nor a `#` comment, as text.
fn first_content_line(path: &Path, reader: impl BufRead) -> Result<Option<String>, Error> {
    let mut lines = Lines::new(path, reader);
    while let Some(line) = lines.next_line()? {
        let text = line.trim();
        if !text.is_empty() && !text.starts_with('#') {
            return Ok(Some(text.to_owned()));
        }
    }
    Ok(None)
}

fn load_csv(path: &Path, delimiter: u8, index: usize) -> Result<HashSet<String>, Error> {
    let (mut reader, _) = match open_csv(path, Some(delimiter), None, true) {
        Ok(r) => r,
        // Only comments and blank lines: checked by the caller, but be exact.
        Err(Error::Empty { .. } | Error::NoHeader { .. }) => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    let mut set = HashSet::new();
    let mut record = csv::ByteRecord::new();
    let mut header_seen = false;
    loop {
        let more = reader.read_byte_record(&mut record);
        let line = record_line(&mut reader, &record);
        let more = more.map_err(|e| Error::Read {
            path: path.to_owned(),
            line,
            source: into_io(e),
        })?;
        if !more {
            return Ok(set);
        }
        if !header_seen {
            header_seen = true;
            continue;
        }
        let Some(field) = record.get(index) else {
            continue;
        };
        let text = std::str::from_utf8(field).map_err(|e| Error::InvalidUtf8 {
            path: path.to_owned(),
            line,
            column: index + 1,
            field: "email".to_owned(),
            valid_up_to: e.valid_up_to(),
        })?;
        let key = normalize(text);
        if !key.is_empty() {
            set.insert(key);
        }
    }
}

fn load_lines(path: &Path) -> Result<HashSet<String>, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut lines = Lines::new(path, BufReader::new(file));
    let mut set = HashSet::new();
    while let Some(text) = lines.next_line()? {
        let text = text.trim();
        if !text.is_empty() && !text.starts_with('#') {
            set.insert(normalize(text));
        }
    }
    Ok(set)
}

/// Lines of a UTF-8 file with their numbers, BOM stripped, errors naming the line.
struct Lines<'p, R> {
    path: &'p Path,
    reader: R,
    line: u64,
    buffer: Vec<u8>,
}

impl<'p, R: BufRead> Lines<'p, R> {
    fn new(path: &'p Path, reader: R) -> Self {
        Lines {
            path,
            reader,
            line: 0,
            buffer: Vec::new(),
        }
    }

    fn next_line(&mut self) -> Result<Option<String>, Error> {
        self.buffer.clear();
        self.line += 1;
        let n = self
            .reader
            .read_until(b'\n', &mut self.buffer)
            .map_err(|source| Error::Read {
                path: self.path.to_owned(),
                line: self.line,
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        let bytes = if self.line == 1 {
            self.buffer
                .strip_prefix(b"\xEF\xBB\xBF")
                .unwrap_or(&self.buffer)
        } else {
            &self.buffer[..]
        };
        let text = std::str::from_utf8(bytes).map_err(|e| Error::InvalidUtf8 {
            path: self.path.to_owned(),
            line: self.line,
            column: 1,
            field: "address".to_owned(),
            valid_up_to: e.valid_up_to(),
        })?;
        Ok(Some(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_holds_both_sets() {
        let a = Suppression::from_addresses(["Ann@example.com", "bob@example.com"]);
        let b = Suppression::from_addresses(["BOB@example.com ", "carl@example.com"]);
        let u = a.union(&b);
        assert_eq!(u.len(), 3);
        assert!(u.contains("carl@EXAMPLE.com"));
        assert!(u.contains("ann@example.com"));
        let mut all: Vec<&str> = u.iter().collect();
        all.sort();
        assert_eq!(
            all,
            ["ann@example.com", "bob@example.com", "carl@example.com"]
        );
        assert_eq!(Suppression::default().union(&b).len(), 2);
        assert_eq!(a.union(&Suppression::default()).len(), 2);
    }
}
