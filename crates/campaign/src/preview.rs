//! `edm preview`: render chosen recipients to `.eml` files that open in any
//! mail client, exactly as `edm send` would send them (DKIM signature
//! included when `[dkim]` is set). Sends nothing, touches no state.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use edm_model::Recipient;
use edm_recipients::Verdict;
use edm_template::Templates;

use crate::Error;
use crate::check::Finding;
use crate::config::Campaign;
use crate::inputs::{dkim_signer, message_spec, read_options};

/// Which rows to preview and where to put them.
#[derive(Clone, Debug, Default)]
pub struct PreviewOptions {
    /// CSV lines (as `edm check` prints them) to render, whatever their verdict.
    pub lines: Vec<u64>,
    /// Also this many sendable rows, picked evenly at random (the same ones
    /// on every run of the same file).
    pub sample: usize,
    /// The directory to write to (created if needed).
    pub out: PathBuf,
}

/// One `.eml` written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PreviewFile {
    /// The CSV line of the row.
    pub line: u64,
    /// The recipient.
    pub email: String,
    /// The rendered subject.
    pub subject: String,
    /// The file written.
    pub path: PathBuf,
    /// Why edm would not send it, when it would not (duplicate, suppressed...).
    pub note: Option<String>,
}

/// What `edm preview` did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PreviewReport {
    /// Files written, by line.
    pub written: Vec<PreviewFile>,
    /// Rows that did not render, with why.
    pub failed: Vec<Finding>,
    /// Lines asked for where no CSV record starts.
    pub missing_lines: Vec<u64>,
}

/// Renders the chosen rows into `opts.out`.
pub fn preview(c: &Campaign, opts: &PreviewOptions) -> Result<PreviewReport, Error> {
    let spec = message_spec(c)?;
    let templates =
        Templates::compile(spec)?.with_feedback_id(c.config.campaign.feedback_id.clone());
    let mut templates = crate::attach::with_attachments(c, templates)?;
    if let Some(dkim) = dkim_signer(c)? {
        templates = templates.with_dkim(dkim);
    }
    let csv = c.path(&c.config.campaign.recipients);
    let suppression = match &c.config.campaign.suppression {
        Some(p) => Some(edm_recipients::Suppression::load(&c.path(p))?),
        None => None,
    };
    let ingest = edm_recipients::open(&csv, &read_options(c), suppression.as_ref())?;
    let columns = ingest.columns().to_vec();

    let mut wanted: BTreeSet<u64> = opts.lines.iter().copied().collect();
    let mut chosen: Vec<(Recipient, Option<String>)> = Vec::new();
    let mut sample = Reservoir::new(opts.sample);
    for row in ingest {
        let row = row?;
        let note = match &row.verdict {
            Verdict::Valid => None,
            Verdict::Invalid { reason, .. } => Some(format!("not sent: invalid ({reason})")),
            Verdict::Duplicate { first_line } => {
                Some(format!("not sent: duplicate of line {first_line}"))
            }
            Verdict::Suppressed => Some("not sent: on the suppression list".to_owned()),
        };
        let asked = wanted.remove(&row.line);
        let valid = note.is_none();
        let recipient = crate::inputs::unsent(row);
        if asked {
            chosen.push((recipient, note));
        } else if valid {
            sample.offer(recipient);
        }
    }
    chosen.extend(sample.into_items().into_iter().map(|r| (r, None)));
    chosen.sort_by_key(|(r, _)| r.line);

    std::fs::create_dir_all(&opts.out).map_err(|source| Error::Io {
        path: opts.out.clone(),
        source,
    })?;
    let mut report = PreviewReport {
        missing_lines: wanted.into_iter().collect(),
        ..PreviewReport::default()
    };
    for (recipient, note) in chosen {
        match templates.render_parts(&columns, &recipient) {
            Ok(parts) => {
                let path = opts.out.join(file_name(recipient.line, &recipient.email));
                std::fs::write(&path, &parts.envelope.body).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                report.written.push(PreviewFile {
                    line: recipient.line,
                    email: recipient.email,
                    subject: parts.subject,
                    path,
                    note,
                });
            }
            Err(e) => report.failed.push(Finding {
                file: csv.clone(),
                line: Some(recipient.line),
                column: None,
                field: None,
                message: e.to_string(),
            }),
        }
    }
    Ok(report)
}

/// `line-000042-ann@example.com.eml`: sorted by line in a file manager, and
/// safe on every file system.
fn file_name(line: u64, email: &str) -> String {
    let safe: String = email
        .chars()
        .take(80)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '@' | '.' | '_' | '+' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("line-{line:06}-{safe}.eml")
}

/// Reservoir sampling (Vitter's algorithm R) with a fixed seed: a uniform
/// sample in one pass and bounded memory, the same on every run.
struct Reservoir<T> {
    size: usize,
    seen: u64,
    items: Vec<T>,
    state: u64,
}

impl<T> Reservoir<T> {
    fn new(size: usize) -> Self {
        Reservoir {
            size,
            seen: 0,
            items: Vec::with_capacity(size.min(1024)),
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn offer(&mut self, item: T) {
        self.seen += 1;
        if self.items.len() < self.size {
            self.items.push(item);
            return;
        }
        let j = self.next() % self.seen;
        if let Ok(j) = usize::try_from(j)
            && j < self.size
        {
            self.items[j] = item;
        }
    }

    /// xorshift64*: plenty for picking rows.
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn into_items(self) -> Vec<T> {
        self.items
    }
}

/// For tests and the CLI: where a preview of `line` and `email` is written.
pub fn preview_path(out: &Path, line: u64, email: &str) -> PathBuf {
    out.join(file_name(line, email))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(
            file_name(42, "ann@example.com"),
            "line-000042-ann@example.com.eml"
        );
        assert_eq!(file_name(7, "a/b\\c d@x.y"), "line-000007-a_b_c_d@x.y.eml");
    }

    #[test]
    fn reservoir_is_bounded_uniform_and_repeatable() {
        let pick = || {
            let mut r = Reservoir::new(5);
            for i in 0..1000 {
                r.offer(i);
            }
            r.into_items()
        };
        let a = pick();
        assert_eq!(a.len(), 5);
        assert_eq!(a, pick());
        // Not just the first five.
        assert!(a.iter().any(|&i| i >= 5), "{a:?}");
        let mut small = Reservoir::new(5);
        small.offer(1);
        assert_eq!(small.into_items(), [1]);
    }
}
