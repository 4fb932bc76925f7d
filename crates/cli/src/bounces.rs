//! `edm bounces`: bounces and complaints.
//!
//! - `edm bounces parse FILE... [--json]`: the parser's verdict on message
//!   files, touching no campaign.
//! - `edm bounces DIR [--json] [--unmatched]`: read the campaign's bounce
//!   mailbox and apply what it says (the mailbox intake).
//!
//! One clap command with an optional positional and a subcommand, so both
//! shapes parse: `args_conflicts_with_subcommands` makes `parse` the
//! subcommand and anything else the campaign directory (a directory named
//! `parse` is reached as `./parse`).

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};
use edm_bounce::Verdict;
use serde::Serialize;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BouncesArgs {
    #[command(subcommand)]
    pub command: Option<BouncesCommand>,
    /// Campaign directory whose bounce mailbox to read.
    pub dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// List the messages that match no recipient of this campaign.
    #[arg(long)]
    pub unmatched: bool,
}

#[derive(Subcommand, Debug)]
pub enum BouncesCommand {
    /// Show the parser's verdict on message files (.eml), touching no campaign.
    Parse {
        /// Message files (RFC 5322, CRLF or LF).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object per file, one per line, in argument order.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: BouncesArgs) -> anyhow::Result<u8> {
    match args.command {
        Some(BouncesCommand::Parse { files, json }) => Ok(parse_files(&files, json)),
        None => match args.dir {
            Some(dir) => bail!(
                "reading the bounce mailbox of {} is not available in this build",
                dir.display()
            ),
            None => {
                bail!("give a campaign directory (edm bounces DIR) or `edm bounces parse FILE...`")
            }
        },
    }
}

/// One line of `edm bounces parse --json`.
#[derive(Serialize)]
struct Line<'a> {
    file: String,
    #[serde(flatten)]
    verdict: &'a Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Prints one verdict per file, in argument order, a file that cannot be
/// read included (`not_bounce` with an `error`). Exit 0 when every file was
/// read, 1 when one or more could not be (the output is complete either way).
fn parse_files(files: &[PathBuf], json: bool) -> u8 {
    let mut code = 0;
    for file in files {
        let (verdict, error) = match std::fs::read(file) {
            Ok(raw) => (edm_bounce::parse(&raw), None),
            Err(e) => {
                code = 1;
                (
                    Verdict::not_bounce(),
                    Some(format!("cannot read {}: {e}", file.display())),
                )
            }
        };
        if json {
            let line = Line {
                file: file.display().to_string(),
                verdict: &verdict,
                error,
            };
            match serde_json::to_string(&line) {
                Ok(s) => outln!("{s}"),
                // Serialising these plain types cannot fail; if it ever did,
                // the line still has to be there.
                Err(e) => outln!(
                    "{{\"file\":{:?},\"verdict\":\"not_bounce\",\"recipients\":[],\"error\":{:?}}}",
                    file.display().to_string(),
                    e.to_string()
                ),
            }
        } else {
            outln!("{}", readable(file, &verdict, error.as_deref()));
        }
    }
    code
}

/// `FILE: bounce: a@b.example 5.1.1 hard (550 5.1.1 ...); c@d.example 4.2.2 soft`
fn readable(file: &Path, v: &Verdict, error: Option<&str>) -> String {
    let kind = serde_json::to_value(v.verdict)
        .ok()
        .and_then(|k| k.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut s = format!("{}: {kind}", file.display());
    if let Some(e) = error {
        s.push_str(&format!(" ({e})"));
    }
    let recipients: Vec<String> = v
        .recipients
        .iter()
        .map(|r| {
            let mut one = r.address.clone();
            if let Some(st) = &r.status {
                one.push_str(&format!(" {st} {}", if r.hard { "hard" } else { "soft" }));
            }
            if let Some(d) = &r.diagnostic {
                let short: String = d.chars().take(100).collect();
                one.push_str(&format!(" ({short})"));
            }
            one
        })
        .collect();
    if !recipients.is_empty() {
        s.push_str(": ");
        s.push_str(&recipients.join("; "));
    }
    if let Some(t) = &v.feedback_type {
        s.push_str(&format!(" [feedback-type {t}]"));
    }
    s
}
