//! What the CLI prints: logging setup, plain progress lines, summaries.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edm_campaign::{Campaign, RunEnd, RunReport, StatusReport};
use edm_model::{Progress, Status};
use tracing_subscriber::EnvFilter;

/// Logs go to stderr (warnings and up unless `EDM_LOG` says otherwise), or
/// to `file` while the dashboard owns the terminal.
pub fn init_logging(file: Option<&Path>, quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = EnvFilter::try_from_env("EDM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // 0600 whatever the umask, like the state database (`.edm/state.log`).
    let result = match file.and_then(|p| {
        let f = edm_campaign::private_options()
            .create(true)
            .append(true)
            .open(p)
            .ok()?;
        tighten(&f);
        Some(f)
    }) {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    let _ = result;
}

/// Takes group and world bits off a log file an older build created.
fn tighten(f: &std::fs::File) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = f.metadata()
            && m.permissions().mode() & 0o077 != 0
        {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
    }
    #[cfg(not(unix))]
    let _ = f;
}

/// True when the dashboard can be shown.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

fn hms(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// One plain progress line.
pub fn line(p: &Progress) -> String {
    let rate = p.recent_rate(5);
    let eta = match p.eta_secs() {
        Some(s) => hms(s),
        None => "--:--:--".into(),
    };
    let target = match p.effective_rate {
        Some(r) => format!("{r:.1}/s"),
        None => "unlimited".into(),
    };
    format!(
        "[{}] {:<8} sent {}  failed {}  deferred {}  pending {}  in flight {}  rate {:.1}/s (limit {})  ETA {}",
        hms((p.elapsed_ms() / 1000) as u64),
        p.state.label(),
        p.count(Status::Sent),
        p.count(Status::Failed),
        p.count(Status::Deferred),
        p.count(Status::Pending) + p.count(Status::Sending),
        p.in_flight,
        rate,
        target,
        eta,
    )
}

/// `name count, name count, ...`
fn categories<K: std::fmt::Display>(m: &std::collections::BTreeMap<K, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints `edm status`.
pub fn print_status(s: &StatusReport) {
    println!("Campaign {} ({})", s.campaign, s.state.display());
    println!(
        "  total {}  sent {}  failed {}  deferred {}  pending {}",
        s.total, s.sent, s.failed, s.deferred, s.pending
    );
    println!(
        "  invalid {}  skipped {}  suppressed {}  in doubt {} ({} unresolved)",
        s.invalid, s.skipped, s.suppressed, s.in_doubt, s.in_doubt_unresolved
    );
    if !s.by_category.is_empty() {
        println!("  by category: {}", categories(&s.by_category));
    }
    if s.bounced + s.complained + s.soft_bounced > 0 {
        println!(
            "  later: bounced {}  complained {}  soft bounced {} (edm bounces; still counted as sent)",
            s.bounced, s.complained, s.soft_bounced
        );
    }
    for w in &s.workers {
        println!(
            "  worker {} ({} pid {}): {}{}, sent {}, failed {}, in flight {}, rate {}, last heartbeat {}",
            w.name,
            w.host,
            w.pid,
            w.state,
            if w.alive || w.state != "running" {
                ""
            } else {
                " (lease expired)"
            },
            w.sent,
            w.failed,
            w.in_flight,
            worker_rate(w.share, w.rate),
            edm_campaign::rfc3339(w.heartbeat_at),
        );
    }
    if !s.ingested {
        println!(
            "  the recipients file is not all stored yet (an interrupted ingest): edm send stores the rest"
        );
    }
    println!(
        "  {}",
        if s.complete {
            "complete"
        } else {
            "not complete"
        }
    );
}

/// Prints the end of a run and what to do next.
pub fn print_report(dir: &Path, r: &RunReport) {
    let s = &r.summary;
    let head = match &r.end {
        RunEnd::Complete => "complete".to_string(),
        RunEnd::Stopped => "stopped; run `edm send` again to continue".to_string(),
        RunEnd::LimitReached => "--limit reached; run `edm send` again to continue".to_string(),
        RunEnd::WaitingForRetries { deferred, next_due } => format!(
            "{deferred} recipients deferred, the first due at {}; run `edm send` again then",
            edm_campaign_time(*next_due)
        ),
        RunEnd::AuthRefused(f) => format!(
            "stopped: the relay refused authentication ({f}). Check [smtp] username and the password variable. No recipient was marked failed."
        ),
        RunEnd::Outage(f) => format!(
            "stopped: the relay stayed unreachable ({f}). Check [smtp] host and port. No recipient was marked failed; run `edm send` again when it is back."
        ),
        RunEnd::StoreFailed(e) => format!("stopped: {e}"),
        RunEnd::Unreachable { relay, failure } => {
            errln!(
                "edm: cannot use the relay {relay}: {}: {}",
                failure.category,
                failure.reply
            );
            format!(
                "stopped: the relay {relay} cannot be used ({failure}). Check [smtp] host, port and security. No recipient was marked failed."
            )
        }
        RunEnd::Refused(f) => {
            errln!("edm: the relay refuses every message: {}", reply_text(f));
            format!(
                "stopped: the relay refuses every message ({f}). Fix the cause (sender, credentials, verified identity) and run `edm send` again. No recipient was marked failed; those refused are pending again."
            )
        }
        RunEnd::Crashed(e) => {
            errln!("edm: internal error: {e}");
            format!(
                "stopped on an internal error ({e}). No recipient was marked failed; please report it."
            )
        }
        RunEnd::InDoubt { count } => format!(
            "{count} recipients are in doubt (no reply to the final dot, --in-doubt skip): edm report {} --in-doubt",
            dir.display()
        ),
        RunEnd::DailyQuota { quota } => format!(
            "the daily quota of {quota} messages is used up (rolling 24 hours); run `edm send` again later"
        ),
        RunEnd::Reputation(trip) => format!(
            "stopped by the reputation breaker: {trip}. Clean the list (edm report {} --all shows who bounced), or run `edm send --accept-reputation` to go on anyway; the rest is pending.",
            dir.display()
        ),
    };
    // A run stopped on an error says why on stderr too, where a script
    // that sends stdout elsewhere (or a supervisor's journal) still sees it;
    // the ends above that name their cause there already are not repeated.
    if matches!(
        r.end,
        RunEnd::AuthRefused(_) | RunEnd::Outage(_) | RunEnd::StoreFailed(_) | RunEnd::Reputation(_)
    ) {
        errln!("edm: {head}");
    }
    outln!("Campaign: {head}");
    outln!(
        "  this run: sent {}, failed {}, retries scheduled {}, in doubt {}",
        r.sent,
        r.failed,
        r.retried,
        r.in_doubt
    );
    outln!(
        "  campaign: total {}, sent {}, failed {}, deferred {}, pending {}, invalid {}, skipped {}, suppressed {}, in doubt {}",
        s.total,
        s.count(Status::Sent),
        s.count(Status::Failed),
        s.count(Status::Deferred),
        s.count(Status::Pending) + s.count(Status::Sending),
        s.count(Status::Invalid),
        s.count(Status::Skipped),
        s.count(Status::Suppressed),
        s.in_doubt,
    );
    if !s.by_category.is_empty() {
        outln!("  failures by category: {}", categories(&s.by_category));
    }
    outln!("  state: {}", r.state.display());
    if s.count(Status::Failed) > 0 {
        outln!(
            "  failed recipients: edm report {} --failures --output failed.csv",
            dir.display()
        );
    }
    if s.in_doubt > 0 {
        outln!(
            "  in doubt (after a crash, or no reply to the final dot): edm report {} --in-doubt",
            dir.display()
        );
    }
}

/// The relay's reply as it said it: code, enhanced code, text.
fn reply_text(f: &edm_model::Failure) -> String {
    let mut out = String::new();
    if let Some(c) = f.smtp_code {
        out.push_str(&format!("{c} "));
    }
    if let Some(e) = &f.enhanced_code {
        out.push_str(&format!("{e} "));
    }
    out.push_str(&f.reply);
    out
}

fn edm_campaign_time(ms: i64) -> String {
    let secs = ((ms - edm_model::now_ms()) / 1000).max(0) as u64;
    format!("in {}", hms(secs))
}

/// `edm watch`: the dashboard, read-only, refreshed from the state DB.
pub fn watch(c: Campaign, state: Option<PathBuf>) -> anyhow::Result<u8> {
    init_logging(None, true);
    let started = edm_model::now_ms();
    // Fail early with a clear message if there is no state.
    let first = edm_campaign::watch_progress(&c, state.as_deref(), started)?;
    if !stdout_is_terminal() {
        println!("{}", line(&first));
        return Ok(0);
    }
    let mut last = first;
    let mut last_read = std::time::Instant::now();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    edm_dashboard::run_in_terminal(
        edm_dashboard::Options {
            no_color,
            read_only: true,
        },
        || {
            if last_read.elapsed() >= Duration::from_millis(500) {
                if let Ok(p) = edm_campaign::watch_progress(&c, state.as_deref(), started) {
                    last = p;
                }
                last_read = std::time::Instant::now();
            }
            last.clone()
        },
        |_| {},
    )?;
    Ok(0)
}

#[cfg(all(test, unix))]
mod log_file_tests {
    use std::os::unix::fs::PermissionsExt;

    /// Issue 9 point 7: `.edm/state.log` may quote addresses and replies.
    #[test]
    fn the_log_file_is_created_private_and_an_old_one_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let new = dir.path().join("new.log");
        super::init_logging(Some(&new), true);
        assert_eq!(mode(&new), 0o600);
        let old = dir.path().join("old.log");
        std::fs::write(&old, "").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::init_logging(Some(&old), true);
        assert_eq!(mode(&old), 0o600);
    }
}

/// A worker's rate in `edm status`. Its figures (share, rate) are written
/// at its first heartbeat: before that it is joining (it waits one
/// heartbeat before its first message), not running unlimited.
fn worker_rate(share: Option<f64>, rate: Option<f64>) -> String {
    match (share, rate) {
        (None, _) => "not reported yet (joining)".into(),
        (Some(_), None) => "unlimited".into(),
        (Some(_), Some(r)) => format!("{r:.1}/s"),
    }
}

#[cfg(test)]
mod worker_rate_tests {
    use super::worker_rate;

    #[test]
    fn a_joining_worker_is_not_shown_unlimited() {
        assert_eq!(worker_rate(None, None), "not reported yet (joining)");
        assert_eq!(worker_rate(Some(1.0), None), "unlimited");
        assert_eq!(worker_rate(Some(0.5), Some(50.0)), "50.0/s");
    }
}
