//! Checks on a finished message against the relay's limits.

use crate::{Limits, RenderProblem};

/// Why `message` breaks `limits`, if it does: the size first, then the
/// longest line. mail-builder encodes long body lines, so a long line is
/// nearly always a header (a long unbreakable URL, say).
pub(crate) fn check(message: &[u8], limits: &Limits) -> Result<(), RenderProblem> {
    if let Some(max) = limits.max_message_bytes
        && message.len() > max
    {
        return Err(RenderProblem::MessageTooLarge {
            size: message.len(),
            max,
        });
    }
    if lines_fit(message, limits.max_line_len) {
        return Ok(());
    }
    longest_line(message, limits)
}

/// True when no line of `message` can be longer than `max`: a fast scan
/// that jumps, from each line start, to the last line feed within the next
/// `max + 1` bytes (one `memrchr` per `max` bytes, not one `memchr` per
/// line: the check ran at ~2 instructions a byte, a tenth of the cost of
/// rendering a message, issue 11). Every line ending in that window is at
/// most `max` bytes long, so skipping past it is safe; `false` only means
/// "not sure" (a line of `max + 1` bytes ending in CR LF fits), and
/// [`longest_line`] then gives the exact answer.
fn lines_fit(message: &[u8], max: usize) -> bool {
    let mut start = 0;
    loop {
        let rest = &message[start..];
        if rest.len() <= max {
            return true;
        }
        match memchr::memrchr(b'\n', &rest[..=max]) {
            Some(i) => start += i + 1,
            None => return false,
        }
    }
}

/// The exact line-by-line check: the first line over the limit, numbered.
fn longest_line(message: &[u8], limits: &Limits) -> Result<(), RenderProblem> {
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', message).chain(std::iter::once(message.len()));
    for (number, end) in (1..).zip(ends) {
        let line = &message[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > limits.max_line_len {
            return Err(RenderProblem::LineTooLong {
                number,
                len: line.len(),
                max: limits.max_line_len,
                head: String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned(),
            });
        }
        start = end + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::Just;

    #[test]
    fn size_and_line_limits() {
        let limits = Limits {
            max_message_bytes: Some(20),
            max_line_len: 5,
        };
        assert_eq!(check(b"abc\r\nde\r\n", &limits), Ok(()));
        let err = check(&[b'a'; 21], &limits).unwrap_err();
        assert_eq!(err, RenderProblem::MessageTooLarge { size: 21, max: 20 });
        let err = err.to_string();
        assert!(err.contains("21 bytes"), "{err}");
        assert!(err.contains("max_message_bytes limit of 20"), "{err}");
        let err = check(b"abc\r\nabcdef\r\nab", &limits).unwrap_err();
        assert!(matches!(
            err,
            RenderProblem::LineTooLong {
                number: 2,
                len: 6,
                max: 5,
                ..
            }
        ));
        let err = err.to_string();
        assert!(err.starts_with("line 2 of the message is 6 bytes"), "{err}");
        let err = check(b"abc\r\nabcdef", &limits).unwrap_err().to_string();
        assert!(err.starts_with("line 2 "), "{err}");
        assert_eq!(check(b"abcde", &limits), Ok(()));
    }

    proptest::proptest! {
        /// The fast scan never says a message fits when a line does not,
        /// so `check` answers as the line-by-line scan alone did.
        #[test]
        fn the_fast_scan_agrees_with_the_exact_one(
            message in proptest::collection::vec(
                proptest::prop_oneof![
                    Just(b'\n'), Just(b'\r'), Just(b'a'), Just(b' ')
                ],
                0..200,
            ),
            max in 0usize..30,
        ) {
            let limits = Limits { max_message_bytes: None, max_line_len: max };
            if lines_fit(&message, max) {
                proptest::prop_assert_eq!(longest_line(&message, &limits), Ok(()));
            }
            proptest::prop_assert_eq!(
                check(&message, &limits),
                longest_line(&message, &limits)
            );
        }
    }
}
