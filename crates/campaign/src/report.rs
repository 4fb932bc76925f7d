//! `edm status`, `edm report`, `edm retry` and `edm watch`'s snapshots: all
//! read the state (read-only, except `retry`), so they work while a run goes on.
//! They see the state only through the [`CampaignStore`] seam; which
//! implementation holds it is decided in `open_ro` / `open_rw` (SQLite today).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use edm_model::{Category, Progress, RunState, Status, UnixMillis};
use edm_store::{CampaignStore, ExportFilter, ExportRow, WorkerRow};

use crate::Error;
use crate::config::Campaign;
use crate::writer::StoreView;

/// `edm status --json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusReport {
    /// Campaign name.
    pub campaign: String,
    /// State file.
    pub state: PathBuf,
    /// All recipients.
    pub total: u64,
    /// Accepted by the server.
    pub sent: u64,
    /// Failed permanently.
    pub failed: u64,
    /// Waiting for a retry.
    pub deferred: u64,
    /// Not yet attempted.
    pub pending: u64,
    /// Being sent right now (or left by a run that died and not yet recovered).
    pub sending: u64,
    /// Flagged in doubt: a run died while sending them.
    pub in_doubt: u64,
    /// Left in doubt, waiting for a decision (`edm retry --status in_doubt`).
    pub in_doubt_unresolved: u64,
    /// Rejected at ingest.
    pub invalid: u64,
    /// Duplicates.
    pub skipped: u64,
    /// On a suppression list.
    pub suppressed: u64,
    /// Failed, deferred and invalid recipients by category.
    pub by_category: BTreeMap<String, u64>,
    /// When the first deferred recipient comes due (Unix ms).
    pub next_retry_at: Option<UnixMillis>,
    /// True when every recipient is final (and the whole list is stored).
    pub complete: bool,
    /// False while an interrupted ingest has stored only part of the
    /// recipients file: the next `edm send` stores the rest, once each.
    pub ingested: bool,
    /// Sent, then bounced (a hard bounce, or `soft_bounce_limit` delays in
    /// a row) according to the bounce mailbox (`edm bounces`); still counted
    /// in `sent`.
    pub bounced: u64,
    /// Sent, then reported as spam (ARF); still counted in `sent`.
    pub complained: u64,
    /// Sent, with delays reported and no hard outcome yet.
    pub soft_bounced: u64,
    /// By relay (`[[relay]] name`, `smtp` for `[smtp]`): see [`RelayStatus`].
    pub by_relay: BTreeMap<String, RelayStatus>,
    /// The workers that sent or send the campaign (state in PostgreSQL,
    /// several `edm send`; empty for a SQLite state): see [`WorkerRow`].
    pub workers: Vec<WorkerRow>,
}

/// One relay in `edm status --json` (`by_relay`), from the recipients'
/// `relay` column (written with each outcome a relay gave: accepted,
/// refused, deferred, in doubt) and the last run's relay events.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStatus {
    /// Recipients this relay accepted.
    pub sent: u64,
    /// Recipients failed whose record names this relay.
    pub failed: u64,
    /// Recipients deferred whose record names this relay.
    pub deferred: u64,
    /// Recipients being sent whose record names this relay.
    pub in_flight: u64,
    /// `down` when the last run took it out of the pool (its last relay
    /// event), `unused` when no recipient names it, else `up`.
    pub state: String,
}

/// The relays' counts and states (see [`RelayStatus`]).
fn by_relay(
    c: &Campaign,
    store: &dyn CampaignStore,
) -> Result<BTreeMap<String, RelayStatus>, Error> {
    let counts = store.relay_counts(0)?;
    let mut names: Vec<String> = if c.config.relay.is_empty() {
        vec![c.relay_name().to_string()]
    } else {
        c.config.relay.iter().map(|r| r.name.clone()).collect()
    };
    let more: Vec<String> = counts
        .keys()
        .filter(|k| !names.contains(k))
        .cloned()
        .collect();
    names.extend(more);
    // The newest events last; a pool says each member's state at the start
    // of a run (`relay_up`) and when it takes one out (`relay_down`).
    let events = store.recent_events(10_000)?;
    let mut out = BTreeMap::new();
    for name in names {
        let prefix = format!("relay {name:?} ");
        let last = events
            .iter()
            .rev()
            .find(|(_, kind, text)| {
                // A worker among several names itself first: `[NAME] text`.
                let text = text
                    .strip_prefix('[')
                    .and_then(|t| t.split_once("] "))
                    .map_or(text.as_str(), |(_, rest)| rest);
                (kind == "relay_down" || kind == "relay_up") && text.starts_with(&prefix)
            })
            .map(|(_, kind, _)| kind.as_str());
        let n = counts.get(&name).cloned().unwrap_or_default();
        let count = |st: Status| n.by_status.get(&st).copied().unwrap_or(0);
        let state = match last {
            Some("relay_down") => "down",
            _ if n.by_status.values().sum::<u64>() == 0 => "unused",
            _ => "up",
        };
        out.insert(
            name,
            RelayStatus {
                sent: count(Status::Sent),
                failed: count(Status::Failed),
                deferred: count(Status::Deferred),
                in_flight: count(Status::Sending),
                state: state.into(),
            },
        );
    }
    Ok(out)
}

/// The campaign's state, read-only (a run may be writing it meanwhile).
fn open_ro(c: &Campaign, state: Option<&Path>) -> Result<Box<dyn CampaignStore>, Error> {
    crate::state::open_existing(c, state, false)
}

/// The campaign's state, to change it (no run may hold it: see `retry`).
fn open_rw(c: &Campaign, state: Option<&Path>) -> Result<Box<dyn CampaignStore>, Error> {
    crate::state::open_existing(c, state, true)
}

/// Counts for `edm status`.
pub fn status(c: &Campaign, state: Option<&Path>) -> Result<StatusReport, Error> {
    let store = open_ro(c, state)?;
    let s = store.summary()?;
    let ingested = store.is_ingested()?;
    let late = store.late_counts()?;
    Ok(StatusReport {
        campaign: c.config.campaign.name.clone(),
        state: crate::state::location(c, state),
        total: s.total,
        sent: s.count(Status::Sent),
        failed: s.count(Status::Failed),
        deferred: s.count(Status::Deferred),
        pending: s.count(Status::Pending),
        sending: s.count(Status::Sending),
        in_doubt: s.in_doubt,
        in_doubt_unresolved: s.count(Status::InDoubt),
        invalid: s.count(Status::Invalid),
        skipped: s.count(Status::Skipped),
        suppressed: s.count(Status::Suppressed),
        by_category: s
            .by_category
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect(),
        next_retry_at: s.next_due,
        complete: ingested
            && Status::ALL
                .iter()
                .filter(|st| !st.is_final())
                .all(|st| s.count(*st) == 0),
        ingested,
        by_relay: by_relay(c, store.as_ref())?,
        workers: store.workers()?,
        bounced: late.bounced,
        complained: late.complained,
        soft_bounced: late.soft_bounced,
    })
}

/// Which recipients a report lists.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// Failed permanently: the CSV can be used as a new campaign's recipients.
    Failures,
    /// Flagged in doubt.
    InDoubt,
    /// Everyone.
    All,
}

/// Report formats.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// The original columns, then the outcome columns.
    Csv,
    /// One JSON object a line.
    Json,
}

const OUTCOME_COLUMNS: [&str; 7] = [
    "status",
    "category",
    "smtp_code",
    "enhanced_code",
    "reply",
    "attempts",
    "last_attempt_at",
];

/// Writes a report; returns the number of recipients in it.
pub fn export(
    c: &Campaign,
    state: Option<&Path>,
    kind: ReportKind,
    format: ReportFormat,
    out: &mut dyn Write,
) -> Result<u64, Error> {
    let store = open_ro(c, state)?;
    let columns = store.columns()?;
    let filter = match kind {
        ReportKind::Failures => ExportFilter {
            statuses: vec![Status::Failed],
            ..Default::default()
        },
        ReportKind::InDoubt => ExportFilter {
            in_doubt_only: true,
            ..Default::default()
        },
        ReportKind::All => ExportFilter::default(),
    };
    // An outcome column that clashes with an original one gets an `edm_` prefix,
    // so the original columns stay exactly as they were (the file feeds back in).
    // `--all` also says which relay sent each message and the provider's id
    // for it, after the others; `--failures` keeps exactly its columns,
    // since it feeds back in as input.
    let with_relay = kind == ReportKind::All;
    // Then what bounces and complaints said later (docs/bounces.md).
    let relay_columns: &[&str] = if with_relay {
        &[
            "relay",
            "provider_message_id",
            "late",
            "late_at",
            "late_status",
            "late_diagnostic",
            "soft_bounces",
        ]
    } else {
        &[]
    };
    let extra: Vec<String> = OUTCOME_COLUMNS
        .iter()
        .chain(relay_columns)
        .map(|n| {
            if columns.iter().any(|c| c.eq_ignore_ascii_case(n)) {
                format!("edm_{n}")
            } else {
                (*n).to_string()
            }
        })
        .collect();
    let path = PathBuf::from("<report>");
    let io = |e: std::io::Error| Error::Io {
        path: path.clone(),
        source: e,
    };
    let mut n = 0u64;
    match format {
        ReportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(columns.iter().chain(extra.iter()))
                .map_err(|e| io(e.into()))?;
            // The first write error stops the writing; the store's walk
            // finishes (it cannot be told to stop) and the error is returned.
            let mut failed: Option<csv::Error> = None;
            store.export_rows(&filter, &mut |row: &ExportRow| {
                if failed.is_some() {
                    return;
                }
                n += 1;
                let mut rec: Vec<String> = row.values.clone();
                rec.resize(columns.len(), String::new());
                rec.extend(outcome_fields(row));
                if with_relay {
                    rec.push(row.relay.clone().unwrap_or_default());
                    rec.push(row.provider_message_id.clone().unwrap_or_default());
                    let late = row.late.clone().unwrap_or_default();
                    rec.push(late.outcome.unwrap_or_default());
                    rec.push(late.at.map(rfc3339).unwrap_or_default());
                    rec.push(late.status.unwrap_or_default());
                    rec.push(late.diagnostic.unwrap_or_default());
                    rec.push(late.soft_bounces.to_string());
                }
                if let Err(e) = w.write_record(&rec) {
                    failed = Some(e);
                }
            })?;
            if let Some(e) = failed {
                return Err(io(e.into()));
            }
            w.flush().map_err(io)?;
        }
        ReportFormat::Json => {
            let mut failed: Option<std::io::Error> = None;
            store.export_rows(&filter, &mut |row: &ExportRow| {
                if failed.is_some() {
                    return;
                }
                n += 1;
                let write = |out: &mut dyn Write| -> Result<(), std::io::Error> {
                    let fields: serde_json::Map<String, serde_json::Value> = columns
                        .iter()
                        .zip(row.values.iter())
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect();
                    let obj = serde_json::json!({
                        "line": row.line,
                        "email": row.email,
                        "fields": fields,
                        "status": row.status.as_str(),
                        "category": row.category.map(Category::as_str),
                        "stage": row.stage.map(|s| s.as_str()),
                        "smtp_code": row.smtp_code,
                        "enhanced_code": row.enhanced_code,
                        "reply": row.reply,
                        "attempts": row.attempts,
                        "last_attempt_at": row.last_attempt_at,
                        "in_doubt": row.in_doubt,
                        "message_id": row.message_id,
                        "relay": row.relay,
                        "provider_message_id": row.provider_message_id,
                        "late": row.late.as_ref().and_then(|l| l.outcome.clone()),
                        "late_at": row.late.as_ref().and_then(|l| l.at),
                        "late_status": row.late.as_ref().and_then(|l| l.status.clone()),
                        "late_diagnostic": row.late.as_ref().and_then(|l| l.diagnostic.clone()),
                        "soft_bounces": row.late.as_ref().map_or(0, |l| l.soft_bounces),
                    });
                    writeln!(out, "{obj}")
                };
                if let Err(e) = write(&mut *out) {
                    failed = Some(e);
                }
            })?;
            if let Some(e) = failed {
                return Err(io(e));
            }
        }
    }
    Ok(n)
}

fn outcome_fields(row: &ExportRow) -> [String; 7] {
    [
        row.status.as_str().to_string(),
        row.category
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        row.smtp_code.map(|c| c.to_string()).unwrap_or_default(),
        row.enhanced_code.clone().unwrap_or_default(),
        row.reply.clone().unwrap_or_default(),
        row.attempts.to_string(),
        row.last_attempt_at.map(rfc3339).unwrap_or_default(),
    ]
}

/// Formats Unix milliseconds as RFC 3339 UTC.
pub fn rfc3339(ms: UnixMillis) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `edm retry`: puts recipients back to pending for the next `edm send`.
pub fn retry(
    c: &Campaign,
    state: Option<&Path>,
    statuses: &[Status],
    categories: &[Category],
) -> Result<u64, Error> {
    let mut store = open_rw(c, state)?;
    // Not while a run is sending: the run lock says so.
    store.lock_for_run(std::process::id())?;
    let statuses = if statuses.is_empty() {
        vec![Status::Failed]
    } else {
        statuses.to_vec()
    };
    let n = store.reset_for_retry(&statuses, categories)?;
    store.log_event(
        edm_model::now_ms(),
        "retry",
        &format!("{n} recipients put back to pending by `edm retry`"),
    )?;
    Ok(n)
}

/// A progress snapshot read from the state, for `edm watch` in another terminal.
pub fn watch_progress(
    c: &Campaign,
    state: Option<&Path>,
    started_at: UnixMillis,
) -> Result<Progress, Error> {
    let store = open_ro(c, state)?;
    let view = StoreView::read(store.as_ref())?;
    let events = store.recent_events(20)?;
    let late = crate::send::late_tally(store.as_ref());
    let mut p = Progress {
        campaign: c.config.campaign.name.clone(),
        started_at,
        now: edm_model::now_ms(),
        counts: view.summary.counts.clone(),
        by_category: view.summary.by_category.clone(),
        top_replies: view.top_replies,
        domains: view.domains.into_iter().collect(),
        recent_failures: view.recent_failures.into_iter().rev().collect(),
        target_rate: c.rate(),
        effective_rate: c.rate(),
        late,
        // Several workers (PostgreSQL): a row each, as `edm send` shows them.
        workers: store.workers().unwrap_or_default(),
        ..Default::default()
    };
    for (at, _kind, text) in events.into_iter().rev() {
        p.push_event(at, text, 50);
    }
    let active = p.count(Status::Sending) > 0;
    let open = Status::ALL.iter().any(|s| !s.is_final() && p.count(*s) > 0);
    p.state = if active {
        RunState::Running
    } else if open {
        RunState::WaitingForRetries
    } else {
        RunState::Done
    };
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_219_200_000), "2026-11-21T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
    }
}
