//! `edm send`: run a campaign with the dashboard or plain progress lines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use edm_campaign::{Campaign, InDoubtPolicy, RunReport, SendOptions, TestOutcome, TestSendOptions};

use crate::progress;
use crate::signals::Signals;

/// The campaign was stopped by a signal before it started sending: exit 130.
#[derive(Debug)]
pub struct Stopped(pub edm_campaign::Error);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Stopped {}

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Campaign directory (or its campaign.toml).
    pub dir: PathBuf,
    /// Plain progress lines instead of the dashboard.
    #[arg(long)]
    pub no_tui: bool,
    /// Messages per second (overrides [delivery] rate; 0 = unlimited).
    #[arg(long, value_parser = crate::parse_rate)]
    pub rate: Option<f64>,
    /// SMTP connections (overrides [delivery] concurrency).
    #[arg(long, value_parser = crate::parse_concurrency)]
    pub concurrency: Option<usize>,
    /// Attempt at most N recipients in this run.
    #[arg(long)]
    pub limit: Option<u64>,
    /// State file (default DIR/.edm/state.db).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The state in PostgreSQL: postgres://user@host:port/db, no password
    /// (PGPASSWORD or [store] password_env). Also EDM_STORE_URL.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// What to do with recipients a crashed run was sending.
    #[arg(long, value_enum, default_value_t = InDoubt::Resend)]
    pub in_doubt: InDoubt,
    /// Go on although the CSV, templates or sender changed since the campaign started.
    #[arg(long)]
    pub accept_changes: bool,
    /// Wait within this run for retries due at most this many seconds ahead.
    #[arg(long, default_value_t = edm_campaign::MAX_RETRY_WAIT.as_secs())]
    pub max_retry_wait: u64,
    /// Test send: render sample recipients and send them all to ADDR
    /// (the campaign's state is not touched).
    #[arg(long, value_name = "ADDR")]
    pub test_to: Option<String>,
    /// With --test-to: how many sample recipients (the first valid rows).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "test_to")]
    pub sample: usize,
    /// With --test-to: do not prefix subjects with "[TEST] ".
    #[arg(long, requires = "test_to")]
    pub no_prefix: bool,
    /// Go on although hard bounces or complaints are above [bounces]
    /// max_bounce_rate / max_complaint_rate (the reputation breaker).
    #[arg(long)]
    pub accept_reputation: bool,
    /// This worker's name, when several `edm send` run one campaign whose
    /// state is in PostgreSQL (default: host:pid). Refused for a SQLite state.
    #[arg(long, value_name = "NAME", value_parser = parse_worker)]
    pub worker: Option<String>,
}

/// A worker name: shown in events and `edm status`, kept in the database.
fn parse_worker(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 100 {
        return Err("a worker name has 1 to 100 characters".into());
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("a worker name has no control characters".into());
    }
    Ok(s.to_string())
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum InDoubt {
    /// Send them again (the server may deliver a second copy).
    Resend,
    /// Leave them in_doubt; `edm retry --status in_doubt` sends them later.
    Skip,
}

impl SendArgs {
    pub fn options(&self) -> SendOptions {
        SendOptions {
            rate: self.rate.map(|r| (r > 0.0).then_some(r)),
            concurrency: self.concurrency,
            limit: self.limit,
            state: self.state.clone(),
            in_doubt: match self.in_doubt {
                InDoubt::Resend => InDoubtPolicy::Resend,
                InDoubt::Skip => InDoubtPolicy::Skip,
            },
            accept_changes: self.accept_changes,
            relay: None,
            max_retry_wait: Duration::from_secs(self.max_retry_wait),
            stop_ingest: None,
            accept_reputation: self.accept_reputation,
            worker: self.worker.clone(),
        }
    }
}

pub fn run(args: SendArgs) -> anyhow::Result<u8> {
    let mut campaign = Campaign::load(&args.dir)?;
    campaign.choose_store(args.store.clone(), args.state.as_deref())?;
    if let Some(to) = &args.test_to {
        return test_send(&campaign, to, &args);
    }
    let tui = !args.no_tui && progress::stdout_is_terminal();
    let state = args.state.clone().unwrap_or_else(|| campaign.state_path());
    let log = state.with_extension("log");
    if tui {
        // The log sits next to the state and may quote addresses: private too.
        if let Some(dir) = log.parent() {
            let _ = edm_campaign::create_private_dir(dir);
        }
        progress::init_logging(Some(&log), false);
    } else {
        progress::init_logging(None, false);
    }
    let rt = crate::runtime()?;
    let report = rt.block_on(send(campaign, args.options(), tui, &args.dir))?;
    progress::print_report(&args.dir, &report);
    Ok(report.exit_code())
}

/// `edm send --test-to ADDR`: prints one line per sample message.
fn test_send(campaign: &Campaign, to: &str, args: &SendArgs) -> anyhow::Result<u8> {
    progress::init_logging(None, false);
    let opts = TestSendOptions {
        sample: args.sample,
        prefix: !args.no_prefix,
        ..TestSendOptions::new(to)
    };
    let rt = crate::runtime()?;
    let report = rt
        .block_on(edm_campaign::test_send(campaign, &opts))
        .context("cannot run the test send")?;
    for m in &report.messages {
        let what = match &m.outcome {
            TestOutcome::Accepted { reply } => format!("accepted: {reply}"),
            TestOutcome::Failed { failure } => format!("FAILED: {failure}"),
            TestOutcome::NotSent { reason } => format!("NOT SENT: {reason}"),
        };
        println!(
            "line {} ({}) -> {} via relay {:?}: {:?}: {what}",
            m.line, m.recipient, report.to, m.relay, m.subject
        );
    }
    let accepted = report
        .messages
        .iter()
        .filter(|m| matches!(m.outcome, TestOutcome::Accepted { .. }))
        .count();
    println!(
        "test send: {accepted} of {} sample messages accepted for {}",
        report.messages.len(),
        report.to
    );
    if let Some(f) = &report.relay_failure {
        eprintln!("edm: the relay could not be used: {f}");
    }
    Ok(report.exit_code())
}

/// Runs one send to the end; shared with `edm demo`.
pub async fn send(
    campaign: Campaign,
    mut opts: SendOptions,
    tui: bool,
    dir: &Path,
) -> anyhow::Result<RunReport> {
    // Listening before the ingest: a signal while a large CSV is read stops
    // it at a batch boundary (Ctrl-C, SIGTERM, SIGHUP; a second one exits).
    let signals = Signals::listen(tui);
    opts.stop_ingest = Some(signals.stop_flag());
    let run = match edm_campaign::start_send(campaign, opts).await {
        Ok(run) => run,
        Err(e @ edm_campaign::Error::Interrupted { .. }) => return Err(Stopped(e).into()),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot start the campaign")),
    };
    if run.repaired > 0 {
        errln!(
            "{} extra copies of recipients, stored twice by an interrupted ingest of an older edm, were marked skipped (edm report {} --all)",
            run.repaired,
            dir.display()
        );
    }
    if run.reingested {
        errln!(
            "the recipients CSV changed before anything was sent: it was read again in place of the old list"
        );
    }
    if run.ingested > 0 {
        errln!("read {} recipients from the CSV", run.ingested);
    }
    if run.in_doubt_found > 0 {
        errln!(
            "{} recipients were being sent when the last run died: they are in doubt (edm report {} --in-doubt)",
            run.in_doubt_found,
            dir.display()
        );
    }
    let control = run.control.clone();
    signals.attach(control.clone());
    let ui = if tui {
        let progress = run.progress.clone();
        let control = control.clone();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let signalled = signals.stop_flag();
        let mut stop_shown = false;
        Some(tokio::task::spawn_blocking(move || {
            edm_dashboard::run_in_terminal(
                edm_dashboard::Options {
                    no_color,
                    read_only: false,
                },
                move || {
                    let mut p = progress.borrow().clone();
                    // A signal's stop may finish between two frames: show
                    // `Stopping` once, so the dashboard knows the stop was
                    // asked and leaves when the run is done without a key.
                    if !stop_shown && signalled.load(std::sync::atomic::Ordering::SeqCst) {
                        stop_shown = true;
                        p.state = edm_model::RunState::Stopping;
                    }
                    p
                },
                |c| {
                    let _ = control.send(c);
                },
            )
        }))
    } else {
        let mut progress = run.progress.clone();
        Some(tokio::spawn(async move {
            // At most one line a second; ends as soon as the run is done (not
            // on the next tick: a run should not take a second longer).
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let done = |p: &edm_model::Progress| p.state == edm_model::RunState::Done;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // `is_ok()` drops the (non-Send) guard inside the future.
                    _ = async { progress.wait_for(done).await.is_ok() } => break,
                }
                let p = progress.borrow_and_update().clone();
                if done(&p) {
                    break;
                }
                outln!("{}", progress::line(&p));
            }
            Ok(())
        }))
    };
    let report = run.wait().await?;
    if let Some(ui) = ui {
        // The dashboard waits for a key once the run is done; plain lines end by themselves.
        match ui.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the dashboard failed"),
            Err(e) => tracing::warn!(error = %e, "the dashboard crashed"),
            Ok(Ok(())) => {}
        }
    }
    drop(signals);
    Ok(report)
}
