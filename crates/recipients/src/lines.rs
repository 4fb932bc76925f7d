//! Line numbers of records.
//!
//! csv's `Position::line` is taken when the reader starts on a record, before
//! it has skipped what lies between records: the `\n` of a CRLF ending (csv
//! ends a record at its `\r`) and any empty lines. After CRLF rows or blank
//! lines it points at the line before the record. So we count line breaks
//! ourselves as bytes go by, and map a record's byte offset to its line.

use std::collections::VecDeque;
use std::io::{self, Read};

/// A reader that remembers where the line breaks are in what it has read and
/// the caller has not yet passed.
#[derive(Debug)]
pub(crate) struct LineCounter<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    offset: u64,
    /// Offsets of `\r` and `\n` bytes at or after the last record start, and
    /// whether each is a `\n`. Bounded by what csv buffers ahead.
    breaks: VecDeque<(u64, bool)>,
    /// The line of the byte just after the last break pruned.
    line: u64,
    /// Bytes of a UTF-8 BOM at offset 0, which csv skips.
    bom: u64,
}

impl<R> LineCounter<R> {
    pub(crate) fn new(inner: R, has_bom: bool) -> Self {
        LineCounter {
            inner,
            offset: 0,
            breaks: VecDeque::new(),
            line: 1,
            bom: if has_bom { 3 } else { 0 },
        }
    }

    /// The line of the first byte of a record that csv started reading at
    /// byte `start`: the line breaks (and a BOM) right at `start` are what
    /// csv skips before the record. Calls must come with increasing `start`.
    pub(crate) fn line_at(&mut self, start: u64) -> u64 {
        let mut start = if start == 0 { self.bom } else { start };
        while let Some(&(at, is_lf)) = self.breaks.front() {
            if at > start {
                break;
            }
            if at == start {
                // A break where the record "starts": csv skips it.
                start += 1;
            }
            self.breaks.pop_front();
            if is_lf {
                self.line += 1;
            }
        }
        self.line
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for at in memchr::memchr2_iter(b'\r', b'\n', &buf[..n]) {
            self.breaks
                .push_back((self.offset + at as u64, buf[at] == b'\n'));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(text: &[u8], bom: bool) -> Vec<u64> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(LineCounter::new(text, bom));
        let mut record = csv::ByteRecord::new();
        let mut lines = Vec::new();
        while reader.read_byte_record(&mut record).unwrap() {
            let start = record.position().unwrap().byte();
            lines.push(reader.get_mut().line_at(start));
        }
        lines
    }

    #[test]
    fn lines_after_crlf_blank_lines_and_quoted_breaks() {
        assert_eq!(starts(b"a\nb\nc", false), [1, 2, 3]);
        assert_eq!(starts(b"a\r\nb\r\n\r\n\nc\r\n", false), [1, 2, 5]);
        assert_eq!(starts(b"\n\na\n\"x\r\ny\"\r\nz", false), [3, 4, 6]);
        assert_eq!(starts(b"a\rb\rc", false), [1, 1, 1]);
        assert_eq!(starts(b"\xEF\xBB\xBF\r\na\nb", true), [2, 3]);
    }
}
