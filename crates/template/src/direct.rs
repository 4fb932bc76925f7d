//! A direct renderer for the templates most campaigns have: raw text and
//! `{{column}}` / `{{{column}}}`, nothing else (issue 11).
//!
//! Handlebars renders such a template through its general machinery (a
//! render context, a block stack, path resolution over JSON values, an
//! escaped copy of each value), which cost more per message than the MIME
//! encoding of the result. At compile time each registered template's
//! parsed elements are read once; when every one is raw text, a comment or
//! a plain name with no params, no hash, that is not a helper, the template
//! gets a [`Plan`]: its raw strings and the names of its fields, rendered
//! per recipient by copying. Anything else has no plan and is rendered by
//! handlebars as before; so is a recipient whose row lacks a field, so that
//! the strict-mode error (field, template, line, column) is handlebars' own.
//!
//! Whitespace control (`{{~x~}}`) and escaped tags (`\{{x}}`) are resolved
//! by the parser into the raw strings, so a plan needs nothing for them.
//! The proptest in `tests/direct.rs` checks the plan's output, and its
//! decision to fall back, against handlebars on generated templates.

use handlebars::template::{Parameter, TemplateElement};
use handlebars::{Context, Handlebars, Path, PathSeg};

use crate::templates::crlf;

/// A template as raw text and fields, rendered without handlebars.
#[derive(Debug)]
pub(crate) struct Plan {
    pieces: Vec<Piece>,
    /// Bytes of raw text, to size the output.
    raw_len: usize,
    /// A body: its raw text is CRLF already (see [`Plan::render`]).
    body: bool,
    /// The raw text alone makes mail-builder encode the body, whatever the
    /// values (see [`Plan::always_encoded`]).
    always_encoded: bool,
}

#[derive(Debug)]
enum Piece {
    Raw(String),
    /// A field: an index into [`Names`], and whether its value is
    /// HTML-escaped (`{{x}}` in the HTML registry) or copied as is.
    Field {
        name: usize,
        escape: bool,
    },
}

/// The distinct field names the plans of one campaign use.
#[derive(Debug, Default)]
pub(crate) struct Names(Vec<String>);

impl Names {
    fn index(&mut self, name: &str) -> usize {
        match self.0.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.0.push(name.to_owned());
                self.0.len() - 1
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Each name's value for one recipient, as the template context has it
    /// (`templates::context`): the value of the last column of that name
    /// (a later key replaces an earlier one in the JSON map), `email` always
    /// the recipient's address; `None` when the row has no such value.
    pub(crate) fn resolve<'a>(
        &self,
        columns: &[String],
        values: &'a [String],
        email: &'a str,
        out: &mut Vec<Option<&'a str>>,
    ) {
        out.clear();
        let known = columns.len().min(values.len());
        for name in &self.0 {
            let value = if name == "email" {
                Some(email)
            } else {
                columns[..known]
                    .iter()
                    .rposition(|c| c == name)
                    .map(|i| values[i].as_str())
            };
            out.push(value);
        }
    }
}

/// A value handlebars would look up for `{{name}}` can be rendered this
/// way only when `name` is neither a helper nor anything but a plain key:
/// asked of the registry itself, by rendering `{{name}}` with `name` set to
/// a marker. A helper (the built-ins `if`, `each`, `lookup`, `log`, `len`...)
/// renders something else or fails.
fn is_plain_value(registry: &Handlebars<'static>, name: &str) -> bool {
    const MARKER: &str = "edm-direct-probe";
    let mut data = serde_json::Map::new();
    data.insert(name.to_owned(), serde_json::Value::from(MARKER));
    let ctx = Context::from(serde_json::Value::Object(data));
    registry
        .render_template_with_context(&format!("{{{{{name}}}}}"), &ctx)
        .is_ok_and(|out| out == MARKER)
}

impl Plan {
    /// The plan of the template registered as `name`, or `None` when it
    /// uses anything handlebars must render itself. `escape` says whether
    /// the registry HTML-escapes `{{x}}` (the HTML body) or not (subject,
    /// text, URL: `no_escape`). `body` pre-converts line breaks to CRLF in
    /// the raw text (see [`Plan::render`]).
    pub(crate) fn of(
        registry: &Handlebars<'static>,
        name: &str,
        escape: bool,
        body: bool,
        names: &mut Names,
    ) -> Option<Plan> {
        let template = registry.get_template(name)?;
        let mut pieces = Vec::with_capacity(template.elements.len());
        let mut raw_len = 0;
        let mut always_encoded = false;
        for element in &template.elements {
            match element {
                TemplateElement::RawString(s) => {
                    let s = if body { crlf_inside(s) } else { s.clone() };
                    raw_len += s.len();
                    always_encoded |= body && needs_encoding(&s);
                    pieces.push(Piece::Raw(s));
                }
                TemplateElement::Comment(_) => {}
                TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                    if ht.block
                        || !ht.params.is_empty()
                        || !ht.hash.is_empty()
                        || ht.template.is_some()
                        || ht.inverse.is_some()
                        || ht.block_param.is_some()
                    {
                        return None;
                    }
                    let field = match &ht.name {
                        Parameter::Path(Path::Relative((segs, raw))) => match segs.as_slice() {
                            [PathSeg::Named(n)] if n == raw => n,
                            _ => return None,
                        },
                        _ => return None,
                    };
                    if field.is_empty()
                        || field == "this"
                        || field.starts_with(['@', '.', '['])
                        || !is_plain_value(registry, field)
                    {
                        return None;
                    }
                    let html = matches!(element, TemplateElement::HtmlExpression(_));
                    pieces.push(Piece::Field {
                        name: names.index(field),
                        escape: escape && !html,
                    });
                }
                _ => return None,
            }
        }
        Some(Plan {
            pieces,
            raw_len,
            body,
            always_encoded,
        })
    }

    /// Whether mail-builder's choice of transfer encoding for a rendered
    /// body is known to be "encoded" (quoted-printable or base64, never
    /// 7bit) from the raw text alone: it holds a byte over 0x7E, or a whole
    /// line (between two LFs of one raw string, so no value can change it)
    /// longer than mail-builder's 77 bytes with its line break
    /// (`BodyEncoding::for_text`, mail-builder 2.0: RFC 5322 §2.1.1's 78,
    /// less the CR). Lines only grow with values, and bytes are only added.
    pub(crate) fn always_encoded(&self) -> bool {
        self.always_encoded
    }

    /// Renders the plan with `values` (one per [`Names`] entry, from
    /// [`Names::resolve`]) into a new string, exactly as handlebars would;
    /// `None` when a field has no value (handlebars then renders, and fails
    /// with its strict-mode error).
    ///
    /// For a body, the second value says whether the result may still hold
    /// a bare CR or LF: the raw text is already CRLF, but for a leading LF
    /// and a trailing CR, which could pair with a neighbouring value's. A
    /// leading LF after a CR completes that CR's pair, as the CRLF pass
    /// would have it; after anything else it is written as CRLF (that CR
    /// came from a value or a trailing CR, which call for the pass anyway).
    /// So only a value with a line break, or a raw string ending in CR,
    /// needs the pass.
    pub(crate) fn render(&self, values: &[Option<&str>]) -> Option<(String, bool)> {
        let mut len = self.raw_len;
        for piece in &self.pieces {
            if let Piece::Field { name, .. } = piece {
                len += values.get(*name).copied().flatten()?.len();
            }
        }
        let mut out = String::with_capacity(len + len / 8);
        let mut breaks = false;
        for piece in &self.pieces {
            match piece {
                Piece::Raw(s) => {
                    let mut s = s.as_str();
                    if self.body
                        && let Some(rest) = s.strip_prefix('\n')
                    {
                        out.push_str(if out.ends_with('\r') { "\n" } else { "\r\n" });
                        s = rest;
                    }
                    breaks |= s.ends_with('\r');
                    out.push_str(s);
                }
                Piece::Field { name, escape } => {
                    let value = values.get(*name).copied().flatten()?;
                    breaks |= memchr::memchr2(b'\r', b'\n', value.as_bytes()).is_some();
                    if *escape {
                        escape_html(&mut out, value);
                    } else {
                        out.push_str(value);
                    }
                }
            }
        }
        Some((out, breaks))
    }
}

/// mail-builder's longest line, its LF included, before it encodes a body.
const MAX_LINE_LEN: usize = 77;

/// See [`Plan::always_encoded`]: `raw` is a raw string of a body, CRLF.
fn needs_encoding(raw: &str) -> bool {
    if raw.bytes().any(|b| b >= 0x7f) {
        return true;
    }
    let mut newlines = memchr::memchr_iter(b'\n', raw.as_bytes());
    let Some(mut last) = newlines.next() else {
        return false;
    };
    for at in newlines {
        if at - last > MAX_LINE_LEN {
            return true;
        }
        last = at;
    }
    false
}

/// Line breaks of a raw string as CRLF, as [`crlf`] makes them, but for a
/// leading LF and a trailing CR, left as they are: in the rendered text they
/// may pair with a value's CR or LF into one CRLF, which the CRLF pass over
/// the whole text then sees. Inside, the pairs are the same as in the whole
/// text, so converting them here gives the same bytes.
fn crlf_inside(s: &str) -> String {
    let start = usize::from(s.starts_with('\n'));
    let end = if s.len() > start && s.ends_with('\r') {
        s.len() - 1
    } else {
        s.len()
    };
    let mut out = String::with_capacity(s.len() + s.len() / 16 + 2);
    out.push_str(&s[..start]);
    out.push_str(&crlf(s[start..end].to_owned()));
    out.push_str(&s[end..]);
    out
}

/// `handlebars::html_escape` (its `escape_html`), written into `out`: the
/// same seven characters, the same entities.
pub(crate) fn escape_html(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    let mut done = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let entity = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'&' => "&amp;",
            b'\'' => "&#x27;",
            b'`' => "&#x60;",
            b'=' => "&#x3D;",
            _ => continue,
        };
        // ASCII bytes: `done..i` lies on character boundaries.
        out.push_str(&value[done..i]);
        out.push_str(entity);
        done = i + 1;
    }
    out.push_str(&value[done..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_is_handlebars_escape() {
        for s in ["", "plain", "<a href=\"x\">&'`=</a>", "é<ü>", "==", "a&"] {
            let mut out = String::new();
            escape_html(&mut out, s);
            assert_eq!(out, handlebars::html_escape(s), "{s:?}");
        }
    }

    #[test]
    fn encoding_is_needed_for_a_whole_long_line_or_a_high_byte() {
        let line = |n: usize| "a".repeat(n);
        // 76 bytes and CR: 77 with the LF, the most mail-builder leaves as is.
        assert!(!needs_encoding(&format!("x\r\n{}\r\ny", line(75))));
        assert!(needs_encoding(&format!("x\r\n{}\r\ny", line(76))));
        // A long line at an edge may be shortened by nothing, but is not a
        // whole line of this raw string: a value ends or starts it.
        assert!(!needs_encoding(&format!("{}\r\n", line(200))));
        assert!(!needs_encoding(&format!("\r\n{}", line(200))));
        assert!(needs_encoding("é"));
        assert!(needs_encoding("\x7f"));
        assert!(!needs_encoding("plain ~ text"));
    }

    #[test]
    fn raw_text_keeps_its_edges_for_the_crlf_pass() {
        assert_eq!(crlf_inside("\na\nb\r"), "\na\r\nb\r");
        assert_eq!(crlf_inside("\n"), "\n");
        assert_eq!(crlf_inside("\r"), "\r");
        assert_eq!(crlf_inside("\n\r"), "\n\r");
        assert_eq!(crlf_inside("a\rb"), "a\r\nb");
        assert_eq!(crlf_inside("\r\n"), "\r\n");
    }
}
