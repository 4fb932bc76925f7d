//! `edm bounces`: bounces and complaints.
//!
//! - `edm bounces DIR [--json] [--unmatched] [--from FILE_OR_MAILDIR...]`:
//!   reads the campaign's bounce mailbox (or files and Maildirs given with
//!   `--from`) and applies the bounces and complaints to the campaign's state
//!   (docs/bounces.md). Exit 0, or 2 when the mailbox cannot be read.
//! - `edm bounces parse FILE... [--json]`: the parser's verdict on message
//!   files, touching no campaign.
//!
//! One clap command with an optional positional and a subcommand, so both
//! shapes parse: `args_conflicts_with_subcommands` makes `parse` the
//! subcommand and anything else the campaign directory (a directory named
//! `parse` is reached as `./parse`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use edm_bounce::Verdict;
use edm_bounce::mailbox::Disposition;
use edm_campaign::Campaign;
use edm_campaign::bounces::{Applied, Intake, read_messages};
use edm_store::LateApplied;
use serde::Serialize;

/// `edm bounces DIR [--json] [--unmatched] [--from FILE_OR_MAILDIR...]`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BouncesArgs {
    #[command(subcommand)]
    pub command: Option<BouncesCommand>,
    /// Campaign directory (or its campaign.toml).
    pub dir: Option<PathBuf>,
    /// One JSON object a line per message instead of text.
    #[arg(long)]
    pub json: bool,
    /// List the messages that matched no recipient of this campaign, apply nothing.
    #[arg(long)]
    pub unmatched: bool,
    /// Apply messages from these files, folders of files or Maildirs instead
    /// of the `[bounces]` mailbox.
    #[arg(long = "from", num_args = 1..)]
    pub from: Vec<PathBuf>,
    /// State file (default DIR/.edm/state.db).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The state in PostgreSQL (postgres://user@host:port/db; also EDM_STORE_URL).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
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

/// One applied message, said as text or JSON.
fn describe(source: Option<&str>, a: &Applied, json: bool) -> String {
    let (result, email, status, suppressed, why) = match a {
        Applied::Changed {
            email,
            change,
            status,
            suppressed,
            ..
        } => (
            match change {
                LateApplied::Bounced => "bounced".to_string(),
                LateApplied::Complained => "complained".to_string(),
                LateApplied::SoftBounce(n) => format!("soft_bounce {n}"),
                other => format!("{other:?}"),
            },
            Some(email.as_str()),
            status.clone(),
            suppressed.clone(),
            None,
        ),
        Applied::AlreadyApplied { email, .. } => (
            "already_applied".to_string(),
            Some(email.as_str()),
            None,
            None,
            None,
        ),
        Applied::Ignored { email, why, .. } => (
            "ignored".to_string(),
            Some(email.as_str()),
            None,
            None,
            Some(why.clone()),
        ),
        Applied::Unmatched { why } => {
            ("unmatched".to_string(), None, None, None, Some(why.clone()))
        }
        Applied::NotBounce(kind) => (
            "not_bounce".to_string(),
            None,
            None,
            None,
            Some(format!("{kind:?}")),
        ),
    };
    if json {
        let (result, soft) = match result.split_once(' ') {
            Some((r, n)) => (r.to_string(), n.parse::<u32>().ok()),
            None => (result, None),
        };
        let mut obj = serde_json::json!({
            "result": result,
            "email": email,
            "status": status,
            "suppressed": suppressed,
            "why": why,
        });
        if let Some(s) = source {
            obj["file"] = serde_json::Value::String(s.to_string());
        }
        if let Some(n) = soft {
            obj["soft_bounces"] = serde_json::Value::from(n);
        }
        obj.to_string()
    } else {
        let mut line = String::new();
        if let Some(s) = source {
            line.push_str(s);
            line.push_str(": ");
        }
        if let Some(e) = email {
            line.push_str(e);
            line.push(' ');
        }
        line.push_str(&result.replace('_', " "));
        if let Some(s) = status {
            line.push(' ');
            line.push_str(&s);
        }
        if let Some(w) = why {
            line.push_str(&format!(" ({w})"));
        }
        if let Some(r) = suppressed {
            line.push_str(&format!("; added to the suppression list: {r}"));
        }
        line
    }
}

/// Tallies of one pass.
#[derive(Default)]
struct Tally {
    seen: u64,
    changed: u64,
    already: u64,
    unmatched: u64,
    other: u64,
}

impl Tally {
    fn add(&mut self, a: &Applied) {
        self.seen += 1;
        match a {
            Applied::Changed { .. } => self.changed += 1,
            Applied::AlreadyApplied { .. } => self.already += 1,
            Applied::Unmatched { .. } => self.unmatched += 1,
            Applied::Ignored { .. } | Applied::NotBounce(_) => self.other += 1,
        }
    }
}

pub fn run(args: BouncesArgs) -> anyhow::Result<u8> {
    if let Some(BouncesCommand::Parse { files, json }) = args.command {
        return Ok(parse_files(&files, json));
    }
    crate::progress::init_logging(None, true);
    let Some(dir) = args.dir else {
        anyhow::bail!("which campaign? `edm bounces DIR` (or `edm bounces parse FILE...`)");
    };
    let mut c = Campaign::load(&dir)?;
    c.choose_store(args.store.clone(), args.state.as_deref())?;
    if args.unmatched {
        let store = edm_campaign::open_existing(&c, args.state.as_deref(), false)?;
        for u in store.unmatched()? {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "key": u.key,
                        "at": edm_campaign::rfc3339(u.at),
                        "summary": u.summary,
                    })
                );
            } else {
                outln!("{}  {}  {}", edm_campaign::rfc3339(u.at), u.key, u.summary);
            }
        }
        return Ok(0);
    }
    // The writer's connection: a running `edm send` may hold the run lock;
    // SQLite serialises the few transactions of both, PostgreSQL locks the
    // one row a late outcome changes.
    let mut store = edm_campaign::open_existing(&c, args.state.as_deref(), true)?;
    let suppression = c
        .config
        .campaign
        .auto_suppress
        .then(edm_campaign::SharedSuppression::open_default);
    let mut tally = Tally::default();
    if !args.from.is_empty() {
        let mut intake = Intake::new(&c, store.as_mut(), suppression)?;
        for from in &args.from {
            for (file, raw) in read_messages(from)? {
                let a = intake
                    .apply(&raw)
                    .with_context(|| format!("applying {}", file.display()))?;
                tally.add(&a);
                outln!(
                    "{}",
                    describe(Some(&file.display().to_string()), &a, args.json)
                );
            }
        }
    } else {
        let Some(cfg) = c.mailbox()? else {
            errln!(
                "edm: {}: no bounce mailbox: set [bounces] kind, host, username and password_env (docs/bounces.md), or give messages with --from",
                c.file.display()
            );
            return Ok(2);
        };
        let mut intake = Intake::new(&c, store.as_mut(), suppression)?;
        let mut failed: Option<edm_campaign::Error> = None;
        let json = args.json;
        let rt = crate::runtime()?;
        let result = rt.block_on(edm_bounce::mailbox::process(&cfg, |raw| {
            if failed.is_some() {
                return Disposition::Leave;
            }
            match intake.apply(raw) {
                Ok(a) => {
                    tally.add(&a);
                    outln!("{}", describe(None, &a, json));
                    a.disposition()
                }
                Err(e) => {
                    failed = Some(e);
                    Disposition::Leave
                }
            }
        }));
        if let Some(e) = failed {
            return Err(e.into());
        }
        if let Err(e) = result {
            errln!(
                "edm: the bounce mailbox {}:{} cannot be read: {e}",
                cfg.host,
                cfg.port
            );
            return Ok(2);
        }
    }
    if !args.json {
        outln!(
            "{} messages: {} changed a recipient, {} applied before, {} matched no recipient (edm bounces {} --unmatched), {} not bounces or nothing to change",
            tally.seen,
            tally.changed,
            tally.already,
            tally.unmatched,
            dir.display(),
            tally.other
        );
    }
    Ok(0)
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
