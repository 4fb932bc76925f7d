//! Before the first message: compile templates, open and lock the state,
//! ingest the CSV once, check the input fingerprint, recover in-doubt rows.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use edm_model::{RecipientId, Status};
use edm_recipients::{Suppression, Verdict};
use edm_store::{CampaignStore, Durability, InDoubtPolicy, IngestPass, NewRow};
use edm_template::Templates;

use crate::Error;
use crate::config::{Campaign, DurabilityName};
use crate::fingerprint::{Input, fingerprint};
use crate::inputs::compile_templates;

/// A campaign ready to send.
pub struct Prepared {
    /// The state, locked for this run (SQLite here; the run only uses the
    /// [`CampaignStore`] interface).
    pub store: Box<dyn CampaignStore>,
    /// The CSV header.
    pub columns: Vec<String>,
    /// Compiled templates.
    pub templates: Templates,
    /// Rows the ingest pass finished by this call has stored, those of an
    /// interrupted earlier run included (0 when the campaign was ingested before).
    pub ingested: u64,
    /// Rows found `sending` from a run that died, and what was done.
    pub in_doubt: u64,
    /// New rows added by `--accept-changes`.
    pub added: u64,
    /// Unsent rows skipped because `--accept-changes` found them removed.
    pub removed: u64,
    /// Extra copies of records (stored twice by an interrupted ingest of an
    /// older build) marked `skipped` when the state was opened.
    pub repaired: u64,
    /// True when the recipients CSV changed before anything was sent and
    /// was read again in place of the old list.
    pub reingested: bool,
    /// One worker among several (PostgreSQL): its heartbeat, running from
    /// its join on, so a long ingest never lets its lease lapse.
    pub(crate) member: Option<crate::workers::Member>,
}

const INGEST_BATCH: usize = 2000;

/// The campaign's suppression file and the shared list (`suppress.rs`), merged.
fn suppression(c: &Campaign) -> Result<Option<Suppression>, Error> {
    crate::suppress::campaign_suppression(c)
}

/// Opens the state for a run: everything `edm send` does before sending.
pub fn prepare(
    c: &Campaign,
    state: &Path,
    in_doubt: InDoubtPolicy,
    accept_changes: bool,
) -> Result<Prepared, Error> {
    prepare_with_stop(c, state, in_doubt, accept_changes, &AtomicBool::new(false))
}

/// [`prepare`], with a flag a signal handler sets to stop the ingest at the
/// next batch boundary: the rows read so far and their checkpoint are
/// committed, and the call returns [`Error::Interrupted`].
pub fn prepare_with_stop(
    c: &Campaign,
    state: &Path,
    in_doubt: InDoubtPolicy,
    accept_changes: bool,
    stop: &AtomicBool,
) -> Result<Prepared, Error> {
    prepare_as(c, state, in_doubt, accept_changes, stop, None)
}

/// [`prepare_with_stop`] as the worker `worker` (`edm send --worker`; the
/// state in PostgreSQL, where several workers run one campaign together).
pub fn prepare_as(
    c: &Campaign,
    state: &Path,
    in_doubt: InDoubtPolicy,
    accept_changes: bool,
    stop: &AtomicBool,
    worker: Option<&str>,
) -> Result<Prepared, Error> {
    let templates = compile_templates(c)?;
    if let Some(dir) = state.parent() {
        edm_store::create_private_dir(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let durability = match c.config.state.durability {
        DurabilityName::Normal => Durability::Normal,
        DurabilityName::Full => Durability::Full,
    };
    let mut store = crate::state::open_for_run(c, state, durability, worker)?;
    store.lock_for_run(std::process::id())?;
    let member = match store.lease()? {
        Some(lease) => {
            Some(
                crate::workers::Member::start(lease, in_doubt).map_err(|e| Error::Io {
                    path: state.to_path_buf(),
                    source: e,
                })?,
            )
        }
        None => None,
    };
    let repaired = store.take_repair_notice()?;
    let prints = fingerprint(c)?;
    // An ingest pass is tied to the file it reads: resumed only while the
    // file is the same.
    let csv_print = prints.hash(Input::Recipients);
    let meta: Vec<(&str, &str)> = prints.meta().collect();
    let mut ingested = 0;
    let mut added = 0;
    let mut skipped = 0;
    let mut reingested = false;
    // Several workers starting together (PostgreSQL): one ingests, the
    // others wait here, then find the campaign ingested and check their
    // inputs against it. An error below drops the store, and with its
    // session the lock.
    store.lock_ingest()?;
    if !store.is_ingested()? {
        // The first ingest, or one a run left unfinished. Before it completes
        // nothing can have been sent, so a pass of another file (or rows from
        // a build without passes) is simply dropped and the file read afresh.
        let pass = match store.ingest_pass()? {
            Some(p) if !p.complete && p.source == csv_print => p,
            _ => {
                store.discard_recipients()?;
                store.begin_ingest(csv_print)?
            }
        };
        let (n, columns) = ingest(c, store.as_mut(), None, &pass, stop)?;
        ingested = n;
        let mut meta = meta.clone();
        meta.push(("campaign", &c.config.campaign.name));
        store.finish_ingest(Some(&columns), &meta)?;
    } else {
        let changed = prints.changed(|key| store.meta(key).ok().flatten());
        let csv_changed = changed.contains(Input::Recipients);
        if !changed.is_empty() && !store.ever_attempted()? {
            // Nothing was ever sent or attempted: the new inputs are simply
            // the campaign's inputs. A corrected CSV replaces the list.
            let mut columns = None;
            if csv_changed {
                store.discard_recipients()?;
                let pass = store.begin_ingest(csv_print)?;
                let (n, read) = ingest(c, store.as_mut(), None, &pass, stop)?;
                (ingested, columns, reingested) = (n, Some(read), true);
            }
            store.finish_ingest(columns.as_deref(), &meta)?;
            store.log_event(
                edm_model::now_ms(),
                "inputs_changed",
                &format!(
                    "{changed} changed before anything was sent: {}",
                    if csv_changed {
                        format!("the list was read again ({ingested} recipients)")
                    } else {
                        "taken as they are".to_string()
                    }
                ),
            )?;
        } else if !changed.is_empty() {
            if !accept_changes {
                return Err(Error::InputsChanged(changed));
            }
            if csv_changed {
                // A pass of this very file that a run left unfinished goes on
                // after its checkpoint; otherwise a new pass begins.
                let pass = match store.ingest_pass()? {
                    Some(p) if !p.complete && p.source == csv_print => p,
                    _ => store.begin_ingest(csv_print)?,
                };
                let known = store.rows_by_email()?;
                let mut present = HashSet::new();
                added = ingest(c, store.as_mut(), Some((&known, &mut present)), &pass, stop)?.0;
                // Rows no longer in the file: not sent any more, and said so.
                let removed: Vec<_> = known
                    .iter()
                    .filter(|(email, (_, st))| {
                        !present.contains(*email)
                            && matches!(st, Status::Pending | Status::Deferred | Status::InDoubt)
                    })
                    .map(|(_, (id, _))| *id)
                    .collect();
                skipped = store.skip_unsent(&removed, "removed from the recipients file")?;
            }
            store.finish_ingest(None, &meta)?;
            store.log_event(
                edm_model::now_ms(),
                "inputs_changed",
                &format!(
                    "accepted changes to {changed}; {added} new recipients, {skipped} removed ones skipped"
                ),
            )?;
        }
    }
    store.unlock_ingest()?;
    let in_doubt_count = store.recover_in_doubt(in_doubt)?;
    if in_doubt_count > 0 {
        store.log_event(
            edm_model::now_ms(),
            "in_doubt",
            &format!(
                "{in_doubt_count} recipients were being sent when the last run died ({})",
                match in_doubt {
                    InDoubtPolicy::Resend => "sending them again",
                    InDoubtPolicy::Skip => "left in_doubt",
                }
            ),
        )?;
    }
    let columns = store.columns()?;
    Ok(Prepared {
        store,
        columns,
        templates,
        ingested,
        in_doubt: in_doubt_count,
        added,
        removed: skipped,
        repaired,
        reingested,
        member,
    })
}

/// Addresses already in the store, and the set of addresses the file still has.
type Known<'a> = (
    &'a HashMap<String, (RecipientId, Status)>,
    &'a mut HashSet<String>,
);

/// Streams the CSV into the store in batches, each committed with the pass's
/// checkpoint. Rows up to `pass.after_line` were stored by an earlier run of
/// this pass: they are read again (the duplicate check needs them) but not
/// stored. With `known`, only addresses not already in the store are added
/// (accepting a changed CSV). Returns the rows the pass has stored in all,
/// and the file's header.
///
/// On a bad record (an invalid byte, a read error) or when `stop` is set, the
/// rows read before it are committed first, so the next run goes on from
/// there: nothing is stored twice and nothing read is lost.
fn ingest(
    c: &Campaign,
    store: &mut dyn CampaignStore,
    mut known: Option<Known<'_>>,
    pass: &IngestPass,
    stop: &AtomicBool,
) -> Result<(u64, Vec<String>), Error> {
    let supp = suppression(c)?;
    let path = c.path(&c.config.campaign.recipients);
    let rows = edm_recipients::open(&path, &crate::inputs::read_options(c), supp.as_ref())?;
    let columns = rows.columns().to_vec();
    let mut batch = Vec::with_capacity(INGEST_BATCH);
    let mut n = pass.rows;
    for row in rows {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                store.insert_rows(&batch)?;
                return Err(e.into());
            }
        };
        if let Some((known, present)) = known.as_mut() {
            let norm = edm_recipients::normalize(&row.email);
            let seen = known.contains_key(&norm);
            present.insert(norm);
            if seen {
                continue;
            }
        }
        if row.line <= pass.after_line {
            continue;
        }
        let (status, category, reason, duplicate_of) = match row.verdict {
            Verdict::Valid => (Status::Pending, None, None, None),
            Verdict::Invalid { category, reason } => (
                Status::Invalid,
                Some(category),
                Some(reason.to_string()),
                None,
            ),
            Verdict::Duplicate { first_line } => (
                Status::Skipped,
                None,
                Some(format!("duplicate of line {first_line}")),
                Some(first_line),
            ),
            Verdict::Suppressed => (
                Status::Suppressed,
                None,
                Some("on the suppression list".into()),
                None,
            ),
        };
        batch.push(NewRow {
            line: row.line,
            email: row.email,
            values: row.values,
            status,
            category,
            reason,
            duplicate_of,
        });
        n += 1;
        if batch.len() >= INGEST_BATCH {
            store.insert_rows(&batch)?;
            batch.clear();
            if stop.load(Ordering::SeqCst) {
                return Err(Error::Interrupted { stored: n });
            }
        }
    }
    store.insert_rows(&batch)?;
    Ok((n, columns))
}
