//! `edm check` and `edm preview`: look before sending.

use std::path::PathBuf;

use clap::Args;
use edm_campaign::{Campaign, CheckOptions, CheckReport, PreviewOptions, Severity};

/// `edm check DIR [--json]`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Campaign directory (or its campaign.toml).
    pub dir: PathBuf,
    /// Machine-readable report on standard output.
    #[arg(long)]
    pub json: bool,
    /// Examples shown per kind of problem.
    #[arg(long, default_value_t = 10)]
    pub examples: usize,
    /// Rendering threads (default: the machine's cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also reach every relay, without sending: SMTP connect, EHLO, STARTTLS
    /// and AUTH; SES quota and sender identity; Resend key and sender domain.
    /// Exit 2 when a relay fails.
    #[arg(long)]
    pub online: bool,
}

/// `edm preview DIR [--row N]... [--sample N] --out DIR`.
#[derive(Args, Debug, Clone)]
pub struct PreviewArgs {
    /// Campaign directory (or its campaign.toml).
    pub dir: PathBuf,
    /// Render the row starting at this CSV line (as `edm check` prints it); repeatable.
    #[arg(long = "row")]
    pub rows: Vec<u64>,
    /// Render this many sendable rows picked at random (default 3 when no --row is given).
    #[arg(long)]
    pub sample: Option<usize>,
    /// Directory to write the .eml files to.
    #[arg(long)]
    pub out: PathBuf,
}

/// Exit code: 0 clean (warnings allowed), 1 errors found.
pub fn run_check(args: CheckArgs) -> anyhow::Result<u8> {
    crate::progress::init_logging(None, true);
    let campaign = Campaign::load(&args.dir)?;
    let mut opts = CheckOptions {
        examples: args.examples,
        ..CheckOptions::default()
    };
    if let Some(workers) = args.workers {
        opts.workers = workers;
    }
    let report = edm_campaign::check(&campaign, &opts)?;
    let online = if args.online {
        Some(crate::runtime()?.block_on(edm_campaign::check_online(&campaign)))
    } else {
        None
    };
    let text = if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(o), Some(map)) = (&online, v.as_object_mut()) {
            map.insert("online".into(), serde_json::to_value(o)?);
        }
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        let mut t = human(&report);
        if let Some(o) = &online {
            t.push('\n');
            t.push_str(&edm_campaign::online_human(o));
        }
        t
    };
    // A closed pipe (`edm check DIR | head`) is not an error of the check.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    if online.is_some_and(|o| o.iter().any(|r| !r.ok)) {
        return Ok(2);
    }
    Ok(if report.is_clean() { 0 } else { 1 })
}

/// The human report: a summary line, each kind of problem with its count
/// and first examples (errors first), and a verdict.
pub fn human(r: &CheckReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let skipped = r.rows - r.sendable;
    let _ = writeln!(
        out,
        "campaign {:?}: {} rows in {}, {} to send ({skipped} not sent), {} rendered{} in {:.2}s",
        r.campaign,
        r.rows,
        r.recipients.display(),
        r.sendable,
        r.rendered,
        match r.largest_message {
            Some(bytes) => format!(" (largest {bytes} bytes)"),
            None => String::new(),
        },
        r.elapsed_secs,
    );
    if let Some(d) = &r.dkim {
        let _ = writeln!(
            out,
            "DKIM: {} signing as d={} s={}; publish TXT {}:\n  {}",
            d.algorithm, d.domain, d.selector, d.dns_name, d.dns_record
        );
    }
    for group in &r.problems {
        let label = match group.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "\n{label}: {} ({})", group.kind.title(), group.count);
        for example in &group.examples {
            let _ = writeln!(out, "  {example}");
        }
        let more = group.count.saturating_sub(group.examples.len() as u64);
        if more > 0 {
            let _ = writeln!(out, "  ... and {more} more");
        }
    }
    let _ = writeln!(
        out,
        "\n{}: {} error{}, {} warning{}",
        if r.is_clean() {
            "ok: sending would be clean"
        } else {
            "NOT READY: fix the errors before sending"
        },
        r.errors,
        if r.errors == 1 { "" } else { "s" },
        r.warnings,
        if r.warnings == 1 { "" } else { "s" },
    );
    out
}

/// Exit code: 0 when every chosen row was written, 1 otherwise.
pub fn run_preview(args: PreviewArgs) -> anyhow::Result<u8> {
    crate::progress::init_logging(None, true);
    let campaign = Campaign::load(&args.dir)?;
    let sample = args
        .sample
        .unwrap_or(if args.rows.is_empty() { 3 } else { 0 });
    let report = edm_campaign::preview(
        &campaign,
        &PreviewOptions {
            lines: args.rows,
            sample,
            out: args.out,
        },
    )?;
    for file in &report.written {
        let note = file
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        println!(
            "{}  line {} {}: {}{note}",
            file.path.display(),
            file.line,
            file.email,
            file.subject
        );
    }
    for failure in &report.failed {
        println!("cannot render {failure}");
    }
    for line in &report.missing_lines {
        println!("no CSV row starts at line {line}");
    }
    println!("{} message(s) written", report.written.len());
    Ok(
        if report.failed.is_empty() && report.missing_lines.is_empty() {
            0
        } else {
            1
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use edm_campaign::{Finding, ProblemGroup, ProblemKind};

    #[test]
    fn human_report_groups_counts_and_verdict() {
        let finding = |line| Finding {
            file: "r.csv".into(),
            line: Some(line),
            column: None,
            field: Some("email".into()),
            message: "missing @: \"x\"".into(),
        };
        let report = CheckReport {
            campaign: "c".into(),
            recipients: "r.csv".into(),
            rows: 12,
            sendable: 0,
            rendered: 0,
            render_failed: 0,
            largest_message: None,
            dkim: None,
            problems: vec![ProblemGroup {
                kind: ProblemKind::InvalidAddress,
                severity: Severity::Warning,
                count: 12,
                examples: vec![finding(2), finding(3)],
            }],
            errors: 0,
            warnings: 12,
            elapsed_secs: 0.0,
        };
        let text = human(&report);
        assert!(text.contains("\nwarning: invalid addresses (recorded as invalid, not sent) (12)\n  r.csv:2: email: missing @: \"x\"\n  r.csv:3: email: missing @: \"x\"\n  ... and 10 more\n"), "{text}");
        assert!(
            text.ends_with("\nok: sending would be clean: 0 errors, 12 warnings\n"),
            "{text}"
        );
    }
}
