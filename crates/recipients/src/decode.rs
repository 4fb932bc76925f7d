//! Decoding a recipients file to UTF-8 as it is read.
//!
//! The decoder sits right on the file, below the sniffer and the line counter,
//! so both see UTF-8 and line numbers count the decoded text (which has the
//! same line breaks as the file).
//!
//! - No encoding configured: the bytes pass through untouched (invalid UTF-8
//!   is reported field by field, see [`Error::InvalidUtf8`]), a UTF-8 BOM
//!   included, except that a UTF-16 BOM makes the file read as UTF-16.
//! - An encoding configured: the bytes are decoded with it, and bytes invalid
//!   in it become U+FFFD instead of failing. A BOM still wins over the
//!   configured encoding, as in the WHATWG Encoding Standard.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use encoding_rs::Encoding;
use encoding_rs_io::{DecodeReaderBytes, DecodeReaderBytesBuilder};

use crate::Error;

/// The transcoding buffer: input bytes decoded per refill.
const DECODE_BUFFER: usize = 64 * 1024;

/// The encoding named by a WHATWG label ("windows-1252", "latin1", "utf-16le",
/// "shift_jis", ...), or `None` for UTF-8 as-is. Labels that only map to the
/// "replacement" encoding (which turns a whole file into one U+FFFD) are
/// refused like unknown ones.
pub(crate) fn encoding_for(
    path: &Path,
    label: Option<&str>,
) -> Result<Option<&'static Encoding>, Error> {
    let Some(label) = label else {
        return Ok(None);
    };
    match Encoding::for_label_no_replacement(label.trim().as_bytes()) {
        Some(encoding) => Ok(Some(encoding)),
        None => Err(Error::UnknownEncoding {
            path: path.to_owned(),
            label: label.to_owned(),
        }),
    }
}

/// Whether the file is exactly a UTF-16 BOM, which the decoder (needing 3
/// bytes to recognise a BOM) would pass through as text. Leaves the file
/// position anywhere.
pub(crate) fn lone_utf16_bom(mut file: &File) -> io::Result<bool> {
    if file.metadata()?.len() != 2 {
        return Ok(false);
    }
    let mut start = [0; 2];
    file.read_exact(&mut start)?;
    Ok(matches!(&start, b"\xFF\xFE" | b"\xFE\xFF"))
}

/// A reader yielding the file as UTF-8 (or as-is when no encoding is set and
/// there is no UTF-16 BOM).
pub(crate) struct Decoded<R> {
    inner: DecodeReaderBytes<R, Vec<u8>>,
    encoding: Option<&'static Encoding>,
    /// Whether the first read has been served.
    started: bool,
}

impl<R: Read> Decoded<R> {
    pub(crate) fn new(inner: R, encoding: Option<&'static Encoding>) -> Self {
        let inner = DecodeReaderBytesBuilder::new()
            .encoding(encoding)
            // A BOM names the encoding, configured or not.
            .bom_override(true)
            // Without a configured encoding a UTF-8 BOM leaves the bytes as
            // they are: invalid UTF-8 stays an error and the BOM is handled
            // by the sniffer and csv as before. With one, a UTF-8 BOM
            // switches to (replacing) UTF-8 decoding.
            .utf8_passthru(encoding.is_none())
            .strip_bom(false)
            .build_with_buffer(inner, vec![0; DECODE_BUFFER])
            .expect("the buffer is larger than 4 bytes");
        Decoded {
            inner,
            encoding,
            started: false,
        }
    }
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.started {
            return self.inner.read(buf);
        }
        self.started = true;
        // A passed-through BOM comes back alone from the first read; csv
        // strips a BOM only from its first buffer and takes that buffer,
        // once stripped, for the end of the file. So fill past it.
        let mut n = 0;
        while n < 4 && n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

impl<R> fmt::Debug for Decoded<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("encoding", &self.encoding.map_or("none", |e| e.name()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_read_holds_more_than_a_bom() {
        let mut reader = Decoded::new(&b"\xEF\xBB\xBFemail\n"[..], None);
        let mut buf = [0; 64];
        let n = reader.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\xEF\xBB\xBFemail\n");
    }

    fn decode(bytes: &[u8], label: Option<&str>) -> Vec<u8> {
        let encoding = encoding_for(Path::new("x.csv"), label).unwrap();
        let mut out = Vec::new();
        Decoded::new(bytes, encoding).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn passes_utf8_through_untouched_without_an_encoding() {
        assert_eq!(decode(b"a\xE9b", None), b"a\xE9b");
        assert_eq!(decode(b"\xEF\xBB\xBFa\xFF", None), b"\xEF\xBB\xBFa\xFF");
        assert_eq!(decode(b"", None), b"");
    }

    #[test]
    fn decodes_a_utf16_bom_without_an_encoding() {
        assert_eq!(decode(b"\xFF\xFEa\0\xE9\0", None), "a\u{e9}".as_bytes());
        assert_eq!(decode(b"\xFE\xFF\0a\0\xE9", None), "a\u{e9}".as_bytes());
        // encoding_rs_io needs 3 bytes to see a BOM: a lone UTF-16 BOM
        // passes through (`lone_utf16_bom` catches that file).
        assert_eq!(decode(b"\xFF\xFE", None), b"\xFF\xFE");
    }

    #[test]
    fn decodes_and_replaces_with_an_encoding() {
        assert_eq!(
            decode(b"\xE9\x80", Some("windows-1252")),
            "\u{e9}\u{20ac}".as_bytes()
        );
        // iso-8859-1 is windows-1252 in WHATWG.
        assert_eq!(decode(b"\x80", Some(" ISO-8859-1 ")), "\u{20ac}".as_bytes());
        assert_eq!(decode(b"a\xFFb", Some("utf-8")), "a\u{fffd}b".as_bytes());
        assert_eq!(
            decode(b"\x82\xA0", Some("shift_jis")),
            "\u{3042}".as_bytes()
        );
        // A BOM wins over the configured encoding.
        assert_eq!(
            decode(b"\xEF\xBB\xBF\xC3\xA9", Some("windows-1252")),
            "\u{e9}".as_bytes()
        );
    }

    #[test]
    fn refuses_unknown_and_replacement_labels() {
        for label in ["klingon", "", "iso-2022-kr"] {
            let err = encoding_for(Path::new("x.csv"), Some(label)).unwrap_err();
            assert!(matches!(err, Error::UnknownEncoding { .. }), "{err:?}");
        }
    }
}
