//! `edm`: the command line. Thin: it parses arguments, sets up logging,
//! calls `edm-campaign`, `edm-dashboard` and `edm-sink`, and maps outcomes to
//! exit codes (0 done, 1 done with failures, 2 could not run, 3 not finished,
//! 130 stopped by the operator).

/// `println!` that never panics: after SIGHUP the terminal may be gone (EIO),
/// and `edm send ... | head` closes the pipe (EPIPE). Everything is already
/// recorded when these lines are printed; failing to print them is no reason
/// to exit 101 instead of the run's own status.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see [`outln!`]).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bounces;
mod check;
mod demo;
mod progress;
mod send;
mod signals;
mod suppress;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edm_campaign::{Campaign, ReportFormat, ReportKind};
use edm_model::{Category, Status};

/// edm: send bulk email campaigns through your SMTP relay, exactly once each.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send a campaign (resumes where the last run stopped).
    Send(send::SendArgs),
    /// Counts of a campaign's recipients by status and failure category.
    Status {
        /// Campaign directory (or its campaign.toml).
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// State file (default DIR/.edm/state.db).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The state in PostgreSQL (postgres://user@host:port/db; also EDM_STORE_URL).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Export recipients with their outcome (CSV that feeds back in as recipients).
    Report {
        /// Campaign directory.
        dir: PathBuf,
        /// Permanently failed recipients.
        #[arg(long, group = "kind")]
        failures: bool,
        /// Recipients flagged in doubt after a crash.
        #[arg(long, group = "kind")]
        in_doubt: bool,
        /// Every recipient.
        #[arg(long, group = "kind")]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// State file.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The state in PostgreSQL (postgres://user@host:port/db; also EDM_STORE_URL).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Put failed (or deferred, in-doubt) recipients back to pending for the next send.
    Retry {
        /// Campaign directory.
        dir: PathBuf,
        /// Only these categories (e.g. throttled, mailbox_full).
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Only these statuses (failed, deferred, in_doubt); default failed.
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// State file.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The state in PostgreSQL (postgres://user@host:port/db; also EDM_STORE_URL).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Watch a campaign another `edm send` is running, read-only (with
    /// several workers on PostgreSQL: the campaign and a row per worker).
    Watch {
        /// Campaign directory.
        dir: PathBuf,
        /// State file.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The state in PostgreSQL (postgres://user@host:port/db; also EDM_STORE_URL).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Run edm's own SMTP server (for demos and tests; loopback only by default).
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2525")]
        listen: std::net::SocketAddr,
        /// Store accepted messages in this Maildir (default: memory only).
        #[arg(long)]
        maildir: Option<PathBuf>,
        /// A scripted fault, e.g. "match=bounce,stage=rcpt,reply=550 5.1.1 No such user".
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Use the demo's built-in script (bounce*, full*, retry*, throttle*, blocked*, drop*).
        #[arg(long)]
        demo_rules: bool,
        /// Require AUTH with this user; the password is read from $EDM_SINK_PASSWORD.
        #[arg(long)]
        auth_user: Option<String>,
    },
    /// Run the bundled example campaign end to end through edm's own sink.
    Demo(demo::DemoArgs),
    /// Read every recipient and render every message, send nothing: exit 1 on errors.
    Check(check::CheckArgs),
    /// Write chosen recipients' rendered messages as .eml files.
    Preview(check::PreviewArgs),
    /// The suppression list shared by every campaign ($EDM_HOME/suppression.csv).
    #[command(subcommand)]
    Suppress(suppress::SuppressCommand),
    /// Write a working campaign skeleton for a provider into a new directory.
    New {
        /// The directory to create (or an empty one).
        dir: PathBuf,
        /// The provider whose limits, rate and security to write.
        #[arg(long, value_enum, default_value_t = Provider::Smtp)]
        provider: Provider,
    },
    /// Bounces and complaints: apply them from the [bounces] mailbox (or --from files) to a
    /// campaign, or show the parser's verdicts (`edm bounces parse FILE...`).
    Bounces(bounces::BouncesArgs),
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Provider {
    Smtp,
    Ses,
    Resend,
    Tencent,
    Gmail,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Format {
    Csv,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.downcast_ref::<send::Stopped>().is_some() => {
            // Stopped by the operator, not an error: the state is consistent.
            let _ = writeln!(std::io::stderr(), "edm: {e:#}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("edm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--rate`: the rule `[delivery] rate` follows (campaign's `rate_problem`).
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of messages per second"))?;
    match edm_campaign::rate_problem(rate) {
        Some(why) => Err(why),
        None => Ok(rate),
    }
}

/// `--concurrency`: the rule `[delivery] concurrency` follows.
fn parse_concurrency(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of connections"))?;
    match edm_campaign::concurrency_problem(n) {
        Some(why) => Err(why),
        None => Ok(n),
    }
}

/// The async runtime: one worker thread per core but one, which is left to
/// the threads that are not tokio's (the store writer of `edm send`, the
/// rendering of a slow batch); at least one. On 2 cores one worker took 12%
/// less CPU per message than two, for 3% more messages per second
/// (docs/benchmarks.md, issue 11): two workers on two cores fought the writer
/// for them and woke each other. `TOKIO_WORKER_THREADS` still decides when
/// set.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Send(args) => send::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Check(args) => check::run_check(args),
        Command::Preview(args) => check::run_preview(args),
        Command::Suppress(command) => suppress::run(command),
        Command::Bounces(args) => bounces::run(args),
        Command::New { dir, provider } => {
            let provider = match provider {
                Provider::Smtp => edm_campaign::NewProvider::Smtp,
                Provider::Ses => edm_campaign::NewProvider::Ses,
                Provider::Resend => edm_campaign::NewProvider::Resend,
                Provider::Tencent => edm_campaign::NewProvider::Tencent,
                Provider::Gmail => edm_campaign::NewProvider::Gmail,
            };
            let files = edm_campaign::new_campaign(&dir, provider)?;
            for f in &files {
                outln!("wrote {}", f.display());
            }
            outln!(
                "next: edit {} (from, the relay's account), then `edm check {}`",
                dir.join("campaign.toml").display(),
                dir.display()
            );
            Ok(0)
        }
        Command::Status {
            dir,
            json,
            state,
            store,
        } => {
            progress::init_logging(None, true);
            let mut c = Campaign::load(&dir)?;
            c.choose_store(store, state.as_deref())?;
            let s = edm_campaign::status(&c, state.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                progress::print_status(&s);
            }
            Ok(0)
        }
        Command::Report {
            dir,
            failures,
            in_doubt,
            all,
            format,
            output,
            state,
            store,
        } => {
            progress::init_logging(None, true);
            let mut c = Campaign::load(&dir)?;
            c.choose_store(store, state.as_deref())?;
            let kind = match (failures, in_doubt, all) {
                (_, true, _) => ReportKind::InDoubt,
                (_, _, true) => ReportKind::All,
                _ => ReportKind::Failures,
            };
            let format = match format {
                Format::Csv => ReportFormat::Csv,
                Format::Json => ReportFormat::Json,
            };
            let n = match &output {
                Some(path) => {
                    let mut f = std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("creating {}", path.display()))?,
                    );
                    let n = edm_campaign::export(&c, state.as_deref(), kind, format, &mut f)?;
                    std::io::Write::flush(&mut f)?;
                    n
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    edm_campaign::export(&c, state.as_deref(), kind, format, &mut lock)?
                }
            };
            if let Some(path) = output {
                eprintln!("{n} recipients written to {}", path.display());
            }
            Ok(0)
        }
        Command::Retry {
            dir,
            categories,
            statuses,
            state,
            store,
        } => {
            progress::init_logging(None, true);
            let mut c = Campaign::load(&dir)?;
            c.choose_store(store, state.as_deref())?;
            let categories = categories
                .iter()
                .map(|s| {
                    Category::parse(s).with_context(|| {
                        format!(
                            "unknown category {s:?}; known: {}",
                            Category::ALL.map(|c| c.as_str()).join(", ")
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let statuses = statuses
                .iter()
                .map(|s| {
                    Status::parse(s)
                        .filter(|s| {
                            matches!(s, Status::Failed | Status::Deferred | Status::InDoubt)
                        })
                        .with_context(|| {
                            format!("--status takes failed, deferred or in_doubt, not {s:?}")
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let n = edm_campaign::retry(&c, state.as_deref(), &statuses, &categories)?;
            println!(
                "{n} recipients are pending again; run `edm send {}` to send them.",
                dir.display()
            );
            Ok(0)
        }
        Command::Watch { dir, state, store } => {
            let mut c = Campaign::load(&dir)?;
            c.choose_store(store, state.as_deref())?;
            progress::watch(c, state)
        }
        Command::Sink {
            listen,
            maildir,
            rules,
            demo_rules,
            auth_user,
        } => {
            progress::init_logging(None, false);
            demo::run_sink(listen, maildir, rules, demo_rules, auth_user)
        }
    }
}
