//! Reading the start of a file: emptiness, and the delimiter of its header line.

use std::io::{self, BufRead};

/// Delimiters recognised when none is configured, in tie-break order.
pub(crate) const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];

/// How much of the file's start is looked at to find the header line. A header
/// longer than this is still read whole by the CSV reader; only sniffing stops.
const SNIFF_LIMIT: u64 = 64 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What the start of a file says.
pub(crate) enum Start {
    /// No bytes at all, or only a BOM.
    Empty,
    /// Only line breaks within the sniffed part (the CSV reader skips empty
    /// lines, so there is no header).
    Blank,
    /// The first line holding something, without its BOM and line break.
    Header {
        /// The line's bytes.
        line: Vec<u8>,
        /// Whether the file starts with a UTF-8 BOM.
        bom: bool,
    },
}

/// Reads the first non-blank line (at most [`SNIFF_LIMIT`] bytes in all).
pub(crate) fn read_start(reader: impl BufRead) -> io::Result<Start> {
    let mut reader = io::Read::take(reader, SNIFF_LIMIT);
    let mut line = Vec::new();
    let mut total = 0;
    let mut bom = false;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(if total == 0 {
                Start::Empty
            } else {
                Start::Blank
            });
        }
        let first = total == 0 && !bom;
        let content = match line.strip_prefix(BOM) {
            Some(rest) if first => {
                bom = true;
                rest
            }
            _ => &line[..],
        };
        total += content.len();
        if !content.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            let end = content
                .iter()
                .rposition(|b| !matches!(b, b'\r' | b'\n'))
                .map_or(0, |i| i + 1);
            return Ok(Start::Header {
                line: content[..end].to_vec(),
                bom,
            });
        }
    }
}

/// The candidate delimiter seen most often outside double quotes in a header
/// line; ties go to the earlier candidate, and `,` when none is seen.
pub(crate) fn sniff_delimiter(header: &[u8]) -> u8 {
    let mut counts = [0usize; CANDIDATES.len()];
    let mut in_quotes = false;
    for &b in header {
        if b == b'"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && let Some(i) = CANDIDATES.iter().position(|&c| c == b) {
            counts[i] += 1;
        }
    }
    let mut best = 0;
    for i in 1..counts.len() {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    CANDIDATES[best]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_candidate() {
        assert_eq!(sniff_delimiter(b"email,name"), b',');
        assert_eq!(sniff_delimiter(b"email;name;city"), b';');
        assert_eq!(sniff_delimiter(b"email\tname"), b'\t');
        assert_eq!(sniff_delimiter(b"email|name"), b'|');
        assert_eq!(sniff_delimiter(b"email"), b',');
        // Delimiters inside quotes do not count.
        assert_eq!(sniff_delimiter(b"\"a,b,c\";email"), b';');
    }

    #[test]
    fn start_skips_bom_and_blank_lines() {
        let start = read_start(&b"\xEF\xBB\xBF\r\n\nemail;x\r\nrow"[..]).unwrap();
        let Start::Header { line, bom } = start else {
            panic!("expected a header");
        };
        assert_eq!(line, b"email;x");
        assert!(bom);
        assert!(matches!(read_start(&b""[..]).unwrap(), Start::Empty));
        assert!(matches!(
            read_start(&b"\xEF\xBB\xBF"[..]).unwrap(),
            Start::Empty
        ));
        assert!(matches!(
            read_start(&b"\n\r\n\n"[..]).unwrap(),
            Start::Blank
        ));
    }
}
