//! Small text helpers shared by the panels: numbers, durations, truncation.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// `1234567` → `1,234,567`: counts stay readable at a glance.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as `HH:MM:SS` (hours grow past 99 rather than wrap).
pub(crate) fn hms(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A rate in messages per second, one decimal.
pub(crate) fn rate(r: f64) -> String {
    format!("{r:.1}/s")
}

/// An optional rate, `None` meaning unlimited.
pub(crate) fn opt_rate(r: Option<f64>) -> String {
    match r {
        Some(r) => rate(r),
        None => "unlimited".to_string(),
    }
}

/// `part` of `whole` as a percentage, `0` when `whole` is zero.
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One line of text: control characters (multi-line SMTP replies) become spaces.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Cuts `s` to at most `width` terminal columns, ending with `…` when cut.
pub(crate) fn truncate(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width - 1 {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// Pads (or truncates) `s` on the right to exactly `width` columns.
pub(crate) fn pad(s: &str, width: usize) -> String {
    let s = truncate(s, width);
    let fill = width.saturating_sub(s.width());
    format!("{s}{}", " ".repeat(fill))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
    }

    #[test]
    fn durations() {
        assert_eq!(hms(0), "00:00:00");
        assert_eq!(hms(3723), "01:02:03");
        assert_eq!(hms(360_000), "100:00:00");
    }

    #[test]
    fn truncation_counts_columns() {
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        // Each CJK character takes two columns.
        assert_eq!(truncate("收件人不存在", 5), "收件…");
        assert_eq!(pad("ab", 4), "ab  ");
        assert_eq!(one_line("550 a\r\n550 b"), "550 a 550 b");
    }
}
