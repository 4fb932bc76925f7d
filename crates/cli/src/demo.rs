//! `edm demo` and `edm sink`: edm's own SMTP server, and the bundled example
//! campaign sent through it with the real engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use edm_campaign::{Campaign, RunEnd, SendOptions};
use edm_sink::{Rule, SinkConfig, Storage};

use crate::progress;

/// The example campaign, built into the binary so the demo runs from anywhere.
const FILES: [(&str, &str); 4] = [
    (
        "campaign.toml",
        include_str!("../../../campaigns/welcome/campaign.toml"),
    ),
    (
        "recipients.csv",
        include_str!("../../../campaigns/welcome/recipients.csv"),
    ),
    (
        "templates/welcome.html.hbs",
        include_str!("../../../campaigns/welcome/templates/welcome.html.hbs"),
    ),
    (
        "templates/welcome.txt.hbs",
        include_str!("../../../campaigns/welcome/templates/welcome.txt.hbs"),
    ),
];

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where to put the campaign copy, its state and the Maildir: a new or
    /// empty folder, or an earlier demo's (wiped first); any other folder
    /// is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Plain progress lines instead of the dashboard.
    #[arg(long)]
    pub no_tui: bool,
    /// Messages per second (default: the campaign's 100).
    #[arg(long, value_parser = crate::parse_rate)]
    pub rate: Option<f64>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("edm-demo"));
    clean_out(&out)?;
    let dir = out.join("campaign");
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let maildir = out.join("maildir");
    let tui = !args.no_tui && progress::stdout_is_terminal();
    let log = out.join("edm.log");
    progress::init_logging(tui.then_some(log.as_path()), false);
    let rt = crate::runtime()?;
    rt.block_on(async {
        let sink = edm_sink::start(SinkConfig {
            storage: Storage::Maildir(maildir.clone()),
            rules: edm_sink::demo_rules(),
            ..Default::default()
        })
        .await
        .context("starting the demo SMTP sink on 127.0.0.1")?;
        let addr = sink.local_addr();
        println!("edm demo: SMTP sink listening on {addr} (scripted: bounce*, full*, retry*, throttle*, blocked*, drop*)");
        let campaign = Campaign::load(&dir)?;
        let opts = SendOptions {
            relay: Some((addr.ip().to_string(), addr.port())),
            rate: args.rate.map(|r| (r > 0.0).then_some(r)),
            ..Default::default()
        };
        let report = crate::send::send(campaign, opts, tui, &dir).await?;
        let stats = sink.stats();
        sink.shutdown().await;
        progress::print_report(&dir, &report);
        let files = count_files(&maildir.join("new"));
        println!(
            "Messages landed in {}: {files} files ({} connections, {} refusals scripted by the sink).",
            maildir.join("new").display(),
            stats.connections,
            stats.rejections.values().sum::<u64>(),
        );
        println!(
            "Try: edm status {0}   |   edm report {0} --failures",
            dir.display()
        );
        // Failures are part of the demo: it succeeded if the run completed.
        Ok(match report.end {
            RunEnd::Complete => 0,
            _ => report.exit_code(),
        })
    })
}

/// Marks a folder `edm demo` made, so the next demo may wipe it.
const MARKER: &str = ".edm-demo";

/// Everything `edm demo` writes in its folder.
const DEMO_ENTRIES: [&str; 4] = [MARKER, "campaign", "maildir", "edm.log"];

/// Makes `out` an empty folder for the demo, refusing to wipe one that is
/// not an earlier demo: `--out ~/work` must never delete someone's files.
/// An earlier demo holds only what the demo writes, and either the marker
/// or (from before the marker) the bundled `campaign.toml` unchanged.
fn clean_out(out: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            return mark(out);
        }
        Err(e) => anyhow::bail!("--out {}: {e}", out.display()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", out.display()))?;
        names.push(entry.file_name());
    }
    if names.is_empty() {
        return mark(out);
    }
    let stranger = names
        .iter()
        .find(|n| !DEMO_ENTRIES.iter().any(|d| n.as_os_str() == *d));
    let bundled = std::fs::read_to_string(out.join("campaign/campaign.toml"))
        .is_ok_and(|text| text == FILES[0].1);
    let marked = out.join(MARKER).is_file();
    let refused = match stranger {
        Some(name) => Some(name),
        None if !(marked || bundled) => names.first(),
        None => None,
    };
    if let Some(name) = refused {
        anyhow::bail!(
            "--out {}: the folder is not empty and is not an earlier edm demo (it holds {:?}); \
             the demo wipes its folder before each run, so give it a new or empty folder",
            out.display(),
            name
        );
    }
    for name in &names {
        let path = out.join(name);
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("cleaning {}", path.display()))?;
    }
    mark(out)
}

fn mark(out: &Path) -> anyhow::Result<()> {
    let path = out.join(MARKER);
    std::fs::write(
        &path,
        "made by `edm demo`: the next `edm demo --out` here wipes this folder\n",
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

pub fn run_sink(
    listen: SocketAddr,
    maildir: Option<PathBuf>,
    rules: Vec<String>,
    demo_rules: bool,
    auth_user: Option<String>,
) -> anyhow::Result<u8> {
    let mut parsed = Vec::new();
    for r in &rules {
        parsed.push(Rule::parse(r)?);
    }
    if demo_rules {
        parsed.extend(edm_sink::demo_rules());
    }
    let auth = match auth_user {
        Some(user) => {
            let pw = std::env::var("EDM_SINK_PASSWORD")
                .context("--auth-user needs the password in $EDM_SINK_PASSWORD")?;
            Some((user, pw))
        }
        None => None,
    };
    let rt = crate::runtime()?;
    rt.block_on(async {
        let sink = edm_sink::start(SinkConfig {
            listen,
            storage: match &maildir {
                Some(d) => Storage::Maildir(d.clone()),
                None => Storage::Memory,
            },
            rules: parsed,
            auth,
            ..Default::default()
        })
        .await
        .with_context(|| format!("listening on {listen}"))?;
        println!("edm sink listening on {}", sink.local_addr());
        if let Some(d) = &maildir {
            println!("messages go to {}", d.join("new").display());
        }
        let _ = tokio::signal::ctrl_c().await;
        let stats = sink.stats();
        sink.shutdown().await;
        println!(
            "accepted {} messages over {} connections; refusals by code: {:?}",
            stats.accepted, stats.connections, stats.rejections
        );
        Ok(0)
    })
}
