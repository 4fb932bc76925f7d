//! `edm check`: everything a send would find out row by row, found up front
//! without sending anything or touching the state.
//!
//! It reads every recipient (as ingest would: validation, dedupe,
//! suppression) and renders every sendable one (as the send loop would),
//! and reports each problem with its file, line and field, grouped by
//! [`ProblemKind`]. Each kind is an error or a warning ([`Severity`]):
//! errors are what would make messages fail or go out wrong (a template
//! that does not compile, a missing field, a message over the relay's
//! limits, a malformed CSV row); warnings are what edm handles safely on its
//! own (invalid, duplicate and suppressed rows are recorded and never sent)
//! and the bulk-sender checklist (List-Unsubscribe, one-click, a visible
//! unsubscribe link, a text part, DKIM). `docs/preflight.md` is the manual.
//!
//! Memory stays bounded: rows stream from the CSV to rendering workers in
//! small chunks through a bounded channel, and only counts and the first
//! examples of each kind are kept.
//!
//! This module runs the check; `classify.rs` turns each typed problem into
//! the kind it is reported as, by its variant; `report.rs` is what it
//! reports. What it reads from the campaign it shares with `edm send`
//! through `inputs.rs`.

mod classify;
mod online;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use edm_model::Recipient;
use edm_recipients::Verdict;
use edm_template::{Dkim, Limits, MessageSpec, SIGNED_HEADERS, Templates, has_unsubscribe_link};

pub use online::{RelayCheck, check_online, human as online_human};
pub use report::{CheckReport, DkimInfo, Finding, ProblemGroup, ProblemKind, Severity};

use crate::Error;
use crate::config::Campaign;
use crate::inputs::{dkim_signer, message_spec, read_options, unsent};
use classify::{compile_finding, invalid_row_finding, recipients_finding, render_finding};

/// Rows handed to a rendering worker at a time.
const CHUNK: usize = 256;

/// How to run a check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Rendering threads (at least 1). Default: the machine's cores.
    pub workers: usize,
    /// Examples kept per problem kind (the first ones, by line).
    pub examples: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            examples: 10,
        }
    }
}

/// Counts and first examples per kind.
#[derive(Debug, Default)]
struct Tally {
    limit: usize,
    kinds: BTreeMap<ProblemKind, (u64, Vec<Finding>)>,
}

impl Tally {
    fn new(limit: usize) -> Tally {
        Tally {
            limit,
            kinds: BTreeMap::new(),
        }
    }

    fn add(&mut self, kind: ProblemKind, finding: Finding) {
        let (count, examples) = self.kinds.entry(kind).or_default();
        *count += 1;
        if examples.len() < self.limit {
            examples.push(finding);
        }
    }

    /// Each side holds its own first examples, so the first of the union
    /// are among them.
    fn merge(&mut self, other: Tally) {
        for (kind, (count, examples)) in other.kinds {
            let (total, mine) = self.kinds.entry(kind).or_default();
            *total += count;
            mine.extend(examples);
            mine.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            mine.truncate(self.limit);
        }
    }
}

/// Runs every check on a campaign. Sends nothing and does not open the state.
///
/// `Err` only when the check itself cannot run; everything wrong with the
/// campaign is in the report.
pub fn check(c: &Campaign, opts: &CheckOptions) -> Result<CheckReport, Error> {
    let started = Instant::now();
    let mut tally = Tally::new(opts.examples.max(1));
    let cfg = &c.config.campaign;

    let (spec, templates) = match message_spec(c) {
        Ok(spec) => {
            // The size limit is checked here, with the DKIM signature's size
            // added, so rendering does not have to sign every message.
            let check_spec = MessageSpec {
                limits: Limits {
                    max_message_bytes: None,
                    ..spec.limits
                },
                ..spec.clone()
            };
            let templates = match Templates::compile(check_spec) {
                Ok(t) => Some(t.with_feedback_id(cfg.feedback_id.clone())),
                Err(e) => {
                    let (kind, finding) = compile_finding(c, e);
                    tally.add(kind, finding);
                    None
                }
            };
            (Some(spec), templates)
        }
        Err(e) => {
            let finding = match &e {
                Error::TemplateFile { path, source } => {
                    Finding::new(path, format!("cannot read the template: {source}"))
                }
                other => Finding::new(&c.file, other.to_string()),
            };
            tally.add(ProblemKind::Config, finding);
            (None, None)
        }
    };
    if let Some(spec) = &spec {
        config_checklist(c, spec, &mut tally);
    }
    let templates = templates.and_then(|t| with_attachments(c, t, &mut tally));

    let dkim = match dkim_signer(c) {
        Ok(Some(dkim)) => {
            // An unusable From is reported above (Config); nothing to align.
            let from_domain = c.from_domain().unwrap_or_default();
            if !from_domain.is_empty() && !aligned(&from_domain, dkim.domain()) {
                tally.add(
                    ProblemKind::DkimNotAligned,
                    Finding::new(&c.file, format!(
                        "d={} does not align with the From domain {from_domain}: DMARC needs the From domain to be d= or under it",
                        dkim.domain()
                    ))
                    .field("[dkim] domain"),
                );
            }
            Some(dkim)
        }
        Ok(None) => {
            tally.add(
                ProblemKind::DkimNotConfigured,
                Finding::new(
                    &c.file,
                    "messages are not signed by edm: add a [dkim] section (docs/preflight.md), unless your relay signs them",
                )
                .field("[dkim]"),
            );
            None
        }
        Err(e) => {
            tally.add(
                ProblemKind::DkimInvalid,
                Finding::new(&c.file, e.to_string()).field("[dkim]"),
            );
            None
        }
    };
    let dkim_overhead = dkim.as_ref().map_or(0, signature_overhead);

    let csv_path = c.path(&cfg.recipients);
    // The campaign's list and the shared one, as ingest merges them.
    let suppression = match crate::suppress::campaign_suppression(c) {
        Ok(s) => s,
        Err(Error::Recipients(e)) => {
            tally.add(ProblemKind::SuppressionFile, recipients_finding(&e));
            None
        }
        Err(e) => {
            tally.add(
                ProblemKind::SuppressionFile,
                Finding::new(&c.file, e.to_string()),
            );
            None
        }
    };

    let mut counts = Counts::default();
    match edm_recipients::open(&csv_path, &read_options(c), suppression.as_ref()) {
        Err(e) => tally.add(ProblemKind::RecipientsFile, recipients_finding(&e)),
        Ok(ingest) => {
            let columns = ingest.columns().to_vec();
            let email_field = columns[ingest.email_index()].clone();
            let job = Job {
                templates: templates.as_ref(),
                columns: &columns,
                csv: &csv_path,
                max_message_bytes: spec.as_ref().and_then(|s| s.limits.max_message_bytes),
                warn_message_bytes: c.config.limits.resolved().warn_message_bytes,
                dkim_overhead,
                examples: opts.examples.max(1),
            };
            let workers = opts.workers.max(1);
            // Bounded: the reader waits for the renderers, so memory is a
            // few chunks whatever the file's size.
            let (tx, rx) = mpsc::sync_channel::<Vec<Recipient>>(workers * 2);
            let rx = Mutex::new(rx);
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|_| scope.spawn(|| job.work(&rx)))
                    .collect();
                let mut chunk = Vec::with_capacity(CHUNK);
                for row in ingest {
                    let row = match row {
                        Ok(row) => row,
                        Err(e) => {
                            let kind = match e {
                                edm_recipients::Error::InvalidUtf8 { .. } => {
                                    ProblemKind::InvalidUtf8
                                }
                                _ => ProblemKind::RecipientsFile,
                            };
                            tally.add(kind, recipients_finding(&e));
                            continue;
                        }
                    };
                    counts.rows += 1;
                    // Made for a row with a problem only: a valid row (nearly
                    // all of them) costs no path, field or message string.
                    let at = || Finding::new(&csv_path, "").at(row.line).field(&email_field);
                    match row.verdict {
                        Verdict::Valid => {
                            counts.sendable += 1;
                            if job.templates.is_none() {
                                continue;
                            }
                            chunk.push(unsent(row));
                            // The next chunk sized at once, not grown from
                            // empty (seven reallocations per chunk).
                            if chunk.len() >= CHUNK
                                && tx
                                    .send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                                    .is_err()
                            {
                                break;
                            }
                        }
                        Verdict::Invalid { reason, .. } => {
                            let (kind, message) = invalid_row_finding(&reason, &row.email);
                            tally.add(kind, Finding { message, ..at() });
                        }
                        Verdict::Duplicate { first_line } => tally.add(
                            ProblemKind::Duplicate,
                            Finding {
                                message: format!("{} was already on line {first_line}", row.email),
                                ..at()
                            },
                        ),
                        Verdict::Suppressed => tally.add(
                            ProblemKind::Suppressed,
                            Finding {
                                message: format!("{} is on the suppression list", row.email),
                                ..at()
                            },
                        ),
                    }
                }
                if !chunk.is_empty() {
                    let _ = tx.send(chunk);
                }
                drop(tx);
                for handle in handles {
                    let outcome = match handle.join() {
                        Ok(outcome) => outcome,
                        Err(panic) => std::panic::resume_unwind(panic),
                    };
                    counts.rendered += outcome.rendered;
                    counts.render_failed += outcome.failed;
                    counts.largest = counts.largest.max(outcome.largest);
                    tally.merge(outcome.tally);
                }
            });
            if counts.sendable == 0 {
                tally.add(
                    ProblemKind::NoRecipients,
                    Finding::new(&csv_path, "no row would be sent"),
                );
            }
        }
    }

    let mut problems: Vec<ProblemGroup> = tally
        .kinds
        .into_iter()
        .map(|(kind, (count, examples))| ProblemGroup {
            kind,
            severity: kind.severity(),
            count,
            examples,
        })
        .collect();
    problems.sort_by_key(|g| (g.severity, g.kind));
    let sum = |s: Severity| {
        problems
            .iter()
            .filter(|g| g.severity == s)
            .map(|g| g.count)
            .sum()
    };
    Ok(CheckReport {
        campaign: cfg.name.clone(),
        recipients: csv_path,
        rows: counts.rows,
        sendable: counts.sendable,
        rendered: counts.rendered,
        render_failed: counts.render_failed,
        largest_message: (counts.largest > 0).then_some(counts.largest),
        dkim: dkim.as_ref().map(|d| DkimInfo {
            domain: d.domain().to_owned(),
            selector: d.selector().to_owned(),
            algorithm: d.algorithm().as_str().to_owned(),
            dns_name: d.dns_name(),
            dns_record: d.dns_record(),
        }),
        errors: sum(Severity::Error),
        warnings: sum(Severity::Warning),
        problems,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Default)]
struct Counts {
    rows: u64,
    sendable: u64,
    rendered: u64,
    render_failed: u64,
    largest: u64,
}

/// What each rendering worker shares.
struct Job<'a> {
    templates: Option<&'a Templates>,
    columns: &'a [String],
    csv: &'a Path,
    max_message_bytes: Option<usize>,
    /// Over this (and under the cap) a message gets a warning.
    warn_message_bytes: Option<usize>,
    dkim_overhead: usize,
    examples: usize,
}

struct Outcome {
    tally: Tally,
    rendered: u64,
    failed: u64,
    largest: u64,
}

impl Job<'_> {
    /// Renders chunks until the channel closes.
    fn work(&self, rx: &Mutex<mpsc::Receiver<Vec<Recipient>>>) -> Outcome {
        let mut out = Outcome {
            tally: Tally::new(self.examples),
            rendered: 0,
            failed: 0,
            largest: 0,
        };
        let Some(templates) = self.templates else {
            return out;
        };
        loop {
            // Holding the lock only while waiting: the receiver is shared.
            let chunk = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(chunk) = chunk else {
                return out;
            };
            for recipient in &chunk {
                self.one(templates, recipient, &mut out);
            }
        }
    }

    fn one(&self, templates: &Templates, r: &Recipient, out: &mut Outcome) {
        // Only a row with a finding needs one (most have none).
        let at = || Finding::new(self.csv, "").at(r.line);
        let parts = match templates.render_parts(self.columns, r) {
            Ok(parts) => parts,
            Err(e) => {
                out.failed += 1;
                let (kind, finding) = render_finding(e.problem, at());
                out.tally.add(kind, finding);
                return;
            }
        };
        let size = parts.envelope.body.len() + self.dkim_overhead;
        out.largest = out.largest.max(size as u64);
        if let Some(max) = self.max_message_bytes
            && size > max
        {
            out.failed += 1;
            let signed = if self.dkim_overhead > 0 {
                " with its DKIM signature"
            } else {
                ""
            };
            out.tally.add(
                ProblemKind::MessageTooLarge,
                Finding {
                    message: format!(
                        "message is {size} bytes{signed}, over the max_message_bytes limit of {max}"
                    ),
                    ..at()
                },
            );
            return;
        }
        out.rendered += 1;
        let env = &parts.envelope;
        if !env.rcpt_to.is_ascii() || !env.mail_from.is_ascii() {
            let whose = if env.rcpt_to.is_ascii() {
                format!("the sender {:?}", env.mail_from)
            } else {
                format!("{:?}", r.email)
            };
            out.tally.add(
                ProblemKind::NeedsSmtpUtf8,
                Finding {
                    message: format!(
                        "{whose} has a non-ASCII local part: it goes out only if the relay offers SMTPUTF8 (RFC 6531), otherwise it fails as smtputf8_required"
                    ),
                    ..at()
                },
            );
        }
        if let Some(warn) = self.warn_message_bytes
            && size > warn
        {
            out.tally.add(
                ProblemKind::MessageNearLimit,
                Finding {
                    message: format!(
                        "message is {size} bytes, over {warn}: close to the provider's cap{}",
                        self.max_message_bytes
                            .map_or(String::new(), |m| format!(" of {m} bytes"))
                    ),
                    ..at()
                },
            );
        }
        if let Some(url) = &parts.list_unsubscribe
            && !url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            out.tally.add(
                ProblemKind::NoOneClick,
                Finding {
                    message: format!(
                        "List-Unsubscribe URL {url:?} is not https, so List-Unsubscribe-Post (one-click, RFC 8058) is left out"
                    ),
                    ..at()
                }
                .field("list_unsubscribe"),
            );
        }
        if let Some(html) = &parts.html
            && !has_unsubscribe_link(html, parts.list_unsubscribe.as_deref())
        {
            out.tally.add(
                ProblemKind::NoUnsubscribeLink,
                Finding {
                    message: "the rendered HTML has no <a href> link that says \"unsubscribe\" or points to the List-Unsubscribe URL".to_owned(),
                    ..at()
                }
                .field("html"),
            );
        }
    }
}

/// The campaign-level checklist items that need no rendering.
fn config_checklist(c: &Campaign, spec: &MessageSpec, tally: &mut Tally) {
    if spec.list_unsubscribe.is_none() {
        tally.add(
            ProblemKind::NoListUnsubscribe,
            Finding::new(
                &c.file,
                "no List-Unsubscribe header: Gmail and Yahoo require it (with one-click, RFC 8058) from bulk senders; set an https URL",
            )
            .field("[campaign] list_unsubscribe"),
        );
    }
    let smtp = &c.config.smtp;
    if let Some(message) = crate::send::plaintext_auth_refusal(c, &smtp.host) {
        tally.add(
            ProblemKind::PlaintextAuthRefused,
            Finding::new(&c.file, message).field("[smtp] allow_plaintext_auth"),
        );
    } else if smtp.username.is_some()
        && smtp.security == crate::config::SecurityName::None
        && !edm_delivery::is_loopback(&smtp.host)
    {
        tally.add(
            ProblemKind::PlaintextAuth,
            Finding::new(
                &c.file,
                format!(
                    "the password goes to {} without TLS (allow_plaintext_auth = true): anyone on the path can read it",
                    smtp.host
                ),
            )
            .field("[smtp] allow_plaintext_auth"),
        );
    }
    if smtp.accept_invalid_certs {
        tally.add(
            ProblemKind::InvalidCertsAccepted,
            Finding::new(&c.file, crate::send::INVALID_CERTS_WARNING)
                .field("[smtp] accept_invalid_certs"),
        );
    }
    if spec.text.is_none() {
        tally.add(
            ProblemKind::NoTextPart,
            Finding::new(
                &c.file,
                "HTML only: add a text version (multipart/alternative) for text-only readers and spam filters",
            )
            .field("[campaign] text"),
        );
    }
}

/// Adds the campaign's attachments to the templates, reporting a shared
/// file that cannot be read or is over the limits (the rows are then
/// rendered without the shared files).
fn with_attachments(c: &Campaign, t: Templates, tally: &mut Tally) -> Option<Templates> {
    use crate::attach::AttachmentProblem;
    // Reported, and the rows still rendered: each says what it names.
    if let Some(problem) = crate::attach::dir_problem(c) {
        let kind = match problem {
            crate::attach::DirProblem::HoldsCampaign(_) => ProblemKind::AttachmentRefused,
            crate::attach::DirProblem::Unavailable(_) => ProblemKind::AttachmentMissing,
        };
        let message = problem.message();
        tally.add(
            kind,
            Finding::new(&c.file, message).field("[campaign] attachment_dir"),
        );
    }
    match crate::attach::attachments(c) {
        Ok(None) => Some(t),
        Ok(Some(a)) => match t.with_attachments(a) {
            Ok(t) => Some(t),
            Err(e) => {
                let finding = Finding::new(&c.file, e.to_string()).field("[campaign] attachments");
                tally.add(ProblemKind::AttachmentTooLarge, finding);
                None
            }
        },
        Err(problem) => {
            let (kind, file, message) = match problem {
                AttachmentProblem::Missing { path, reason } => {
                    (ProblemKind::AttachmentMissing, PathBuf::from(path), reason)
                }
                AttachmentProblem::TooLarge(m) => {
                    (ProblemKind::AttachmentTooLarge, c.file.clone(), m)
                }
            };
            tally.add(
                kind,
                Finding::new(&file, message).field("[campaign] attachments"),
            );
            Some(t)
        }
    }
}

/// An upper bound of the DKIM-Signature header's size: every signable
/// header present, and room for a longer timestamp.
fn signature_overhead(dkim: &Dkim) -> usize {
    let mut message = String::new();
    for name in SIGNED_HEADERS {
        message.push_str(name);
        message.push_str(": x\r\n");
    }
    message.push_str("\r\nbody\r\n");
    dkim.signature_header(message.as_bytes())
        .map_or(0, |h| h.len() + 16)
}

/// DMARC relaxed alignment: the From domain is the DKIM domain or under it.
/// (The organisational domain would need the public suffix list.)
fn aligned(from_domain: &str, dkim_domain: &str) -> bool {
    let from = from_domain.to_ascii_lowercase();
    let d = dkim_domain.to_ascii_lowercase();
    from == d || from.ends_with(&format!(".{d}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert!(aligned("acme.example", "acme.example"));
        assert!(aligned("news.acme.example", "acme.example"));
        assert!(!aligned("acme.example", "news.acme.example"));
        assert!(!aligned("notacme.example", "acme.example"));
    }

    #[test]
    fn tally_keeps_the_first_examples_across_workers() {
        let f = |line| Finding::new(Path::new("r.csv"), "x").at(line);
        let mut a = Tally::new(2);
        let mut b = Tally::new(2);
        for line in [5, 7, 9] {
            a.add(ProblemKind::Duplicate, f(line));
        }
        for line in [2, 8] {
            b.add(ProblemKind::Duplicate, f(line));
        }
        a.merge(b);
        let (count, examples) = &a.kinds[&ProblemKind::Duplicate];
        assert_eq!(*count, 5);
        let lines: Vec<_> = examples.iter().map(|e| e.line.unwrap()).collect();
        assert_eq!(lines, [2, 5]);
    }
}
