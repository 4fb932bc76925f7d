//! Before the first message: compile templates, open and lock the state,
//! ingest the CSV once, check the input fingerprint, recover in-doubt rows.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use edm_model::{RecipientId, Status};
use edm_recipients::{Suppression, Verdict};
use edm_store::{Durability, InDoubtPolicy, NewRow, Store};
use edm_template::Templates;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::config::{Campaign, DurabilityName};
use crate::inputs::compile_templates;

/// A campaign ready to send.
pub struct Prepared {
    /// The state, locked for this run.
    pub store: Store,
    /// The CSV header.
    pub columns: Vec<String>,
    /// Compiled templates.
    pub templates: Templates,
    /// Rows ingested by this call (0 when the campaign was ingested before).
    pub ingested: u64,
    /// Rows found `sending` from a run that died, and what was done.
    pub in_doubt: u64,
    /// New rows added by `--accept-changes`.
    pub added: u64,
    /// Unsent rows skipped because `--accept-changes` found them removed.
    pub removed: u64,
}

const INGEST_BATCH: usize = 2000;

/// The campaign's suppression file and the shared list (`suppress.rs`), merged.
fn suppression(c: &Campaign) -> Result<Option<Suppression>, Error> {
    crate::suppress::campaign_suppression(c)
}

/// Hashes of what changes the messages: the CSV, the templates, the sender.
fn fingerprint(c: &Campaign) -> Result<[(&'static str, String); 3], Error> {
    let cfg = &c.config.campaign;
    let csv_path = c.path(&cfg.recipients);
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(&csv_path).map_err(|e| Error::Io {
        path: csv_path.clone(),
        source: e,
    })?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::Io {
            path: csv_path.clone(),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let csv = hex(&h.finalize());
    let mut t = Sha256::new();
    t.update(cfg.subject.as_bytes());
    for p in [&cfg.html, &cfg.text].into_iter().flatten() {
        t.update([0]);
        t.update(std::fs::read(c.path(p)).unwrap_or_default());
    }
    t.update([0]);
    t.update(
        cfg.list_unsubscribe
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    let templates = hex(&t.finalize());
    let mut s = Sha256::new();
    s.update(cfg.from.as_bytes());
    s.update([0]);
    s.update(cfg.reply_to.as_deref().unwrap_or_default().as_bytes());
    s.update([0]);
    s.update(cfg.name.as_bytes());
    let settings = hex(&s.finalize());
    Ok([
        ("fingerprint.recipients", csv),
        ("fingerprint.templates", templates),
        ("fingerprint.sender", settings),
    ])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Opens the state for a run: everything `edm send` does before sending.
pub fn prepare(
    c: &Campaign,
    state: &Path,
    in_doubt: InDoubtPolicy,
    accept_changes: bool,
) -> Result<Prepared, Error> {
    let templates = compile_templates(c)?;
    if let Some(dir) = state.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    let durability = match c.config.state.durability {
        DurabilityName::Normal => Durability::Normal,
        DurabilityName::Full => Durability::Full,
    };
    let mut store = Store::open(state, durability)?;
    store.lock_for_run(std::process::id())?;
    let prints = fingerprint(c)?;
    let mut ingested = 0;
    let mut added = 0;
    let mut skipped = 0;
    if !store.is_ingested()? {
        ingested = ingest(c, &mut store, None)?;
        for (k, v) in &prints {
            store.set_meta(k, v)?;
        }
        store.set_meta("campaign", &c.config.campaign.name)?;
    } else {
        let changed: Vec<&str> = prints
            .iter()
            .filter(|(k, v)| store.meta(k).ok().flatten().as_deref() != Some(v.as_str()))
            .map(|(k, _)| match *k {
                "fingerprint.recipients" => "the recipients CSV",
                "fingerprint.templates" => "the templates or subject",
                _ => "the sender or campaign name",
            })
            .collect();
        if !changed.is_empty() {
            if !accept_changes {
                return Err(Error::InputsChanged(changed.join(", ")));
            }
            if changed.contains(&"the recipients CSV") {
                let known = store.rows_by_email()?;
                let mut present = HashSet::new();
                added = ingest(c, &mut store, Some((&known, &mut present)))?;
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
            for (k, v) in &prints {
                store.set_meta(k, v)?;
            }
            store.log_event(
                edm_model::now_ms(),
                "inputs_changed",
                &format!(
                    "accepted changes to {}; {added} new recipients, {skipped} removed ones skipped",
                    changed.join(", ")
                ),
            )?;
        }
    }
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
    })
}

/// Streams the CSV into the store in batches. With `known`, only addresses
/// not already in the store are added (accepting a changed CSV).
/// Addresses already in the store, and the set of addresses the file still has.
type Known<'a> = (
    &'a HashMap<String, (RecipientId, Status)>,
    &'a mut HashSet<String>,
);

fn ingest(c: &Campaign, store: &mut Store, mut known: Option<Known<'_>>) -> Result<u64, Error> {
    let supp = suppression(c)?;
    let path = c.path(&c.config.campaign.recipients);
    let rows = edm_recipients::open(&path, &crate::inputs::read_options(c), supp.as_ref())?;
    let columns = rows.columns().to_vec();
    let mut batch = Vec::with_capacity(INGEST_BATCH);
    let mut n = 0u64;
    for row in rows {
        let row = row?;
        if let Some((known, present)) = known.as_mut() {
            let norm = edm_recipients::normalize(&row.email);
            let seen = known.contains_key(&norm);
            present.insert(norm);
            if seen {
                continue;
            }
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
        }
    }
    store.insert_rows(&batch)?;
    if known.is_none() {
        store.mark_ingested(&columns)?;
    }
    Ok(n)
}
