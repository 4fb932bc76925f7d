//! Bounces and complaints applied to the campaign (issue 13, docs/bounces.md).
//!
//! - [`Verp`]: the per-recipient envelope sender of `[bounces] return_path`
//!   and its authenticated token: `<id>-<13 base32 chars>`, the 8 first
//!   bytes of HMAC-SHA256 over the campaign name and the recipient id,
//!   keyed by a random secret created once per campaign and kept in the
//!   state's metadata. A token edited or made up never matches, so a forged
//!   bounce cannot mark (or suppress) an arbitrary recipient.
//! - [`Intake`]: takes one raw message from the bounce mailbox, reads it
//!   with [`edm_bounce::parse`], ties it to a recipient of this campaign
//!   (the VERP token in the address it was delivered to, then the DSN's
//!   `ENVID`, then the returned Message-ID), applies it through the store
//!   once ([`CampaignStore::apply_late`]) and says what happened
//!   ([`Applied`]), so the mailbox reader can choose a
//!   [`Disposition`](edm_bounce::mailbox::Disposition).

use std::collections::HashMap;
use std::path::Path;

use edm_bounce::{Verdict, VerdictKind};
use edm_model::{Recipient, RecipientId, Status, now_ms};
use edm_store::{CampaignStore, LateApplied, LateKind, LateOutcome, Unmatched};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::config::Campaign;
use crate::suppress::{SharedSuppression, SuppressedAddress};

/// The metadata key of the VERP secret (hex). Never printed or logged.
pub const SECRET_META: &str = "bounces.secret";

/// The VERP return path of one campaign (see the module documentation).
#[derive(Clone)]
pub struct Verp {
    prefix: String,
    suffix: String,
    key: Vec<u8>,
    campaign: String,
}

impl std::fmt::Debug for Verp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verp")
            .field("prefix", &self.prefix)
            .field("suffix", &self.suffix)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// RFC 4648 base32, lowercase, no padding: local parts are matched without
/// regard to case by many MTAs, so the token must survive lowercasing.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for b in bytes {
        buf = (buf << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Verp {
    /// The campaign's VERP, creating its secret in the state the first time
    /// (`edm send`); `None` without `[bounces] return_path`.
    pub fn load_or_create(
        c: &Campaign,
        store: &mut dyn CampaignStore,
    ) -> Result<Option<Verp>, Error> {
        if c.config.bounces.return_path.is_none() {
            return Ok(None);
        }
        if store.meta(SECRET_META)?.is_none() {
            let key: [u8; 32] = rand::random();
            store.set_meta(SECRET_META, &hex(&key))?;
        }
        Verp::load(c, store)
    }

    /// The campaign's VERP from the state; `None` without `return_path` or
    /// before any send created the secret (then no token was ever issued).
    pub fn load(c: &Campaign, store: &dyn CampaignStore) -> Result<Option<Verp>, Error> {
        let Some(rp) = &c.config.bounces.return_path else {
            return Ok(None);
        };
        let Some(secret) = store.meta(SECRET_META)? else {
            return Ok(None);
        };
        let key = unhex(&secret).ok_or_else(|| {
            Error::Store(edm_store::Error::Corrupt {
                path: store.location().to_path_buf(),
                column: "meta.bounces.secret",
                value: "<not hex>".into(),
            })
        })?;
        // `validate` made sure `{token}` is there exactly once.
        let (prefix, suffix) = rp.split_once("{token}").unwrap_or((rp.as_str(), ""));
        Ok(Some(Verp {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            key,
            campaign: c.config.campaign.name.clone(),
        }))
    }

    fn mac(&self, id: RecipientId) -> String {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts any key length")
        };
        mac.update(self.campaign.as_bytes());
        mac.update(&[0]);
        mac.update(id.0.to_string().as_bytes());
        let tag = mac.finalize().into_bytes();
        base32(&tag[..8])
    }

    /// The recipient's token: `<id>-<mac>`.
    pub fn token(&self, id: RecipientId) -> String {
        format!("{}-{}", id.0, self.mac(id))
    }

    /// The recipient's envelope sender.
    pub fn address(&self, id: RecipientId) -> String {
        format!("{}{}{}", self.prefix, self.token(id), self.suffix)
    }

    /// The recipient a token names, if it is authentic.
    pub fn verify(&self, token: &str) -> Option<RecipientId> {
        let (id, mac) = token.trim().split_once('-')?;
        let id = RecipientId(id.parse().ok()?);
        // Constant-time enough for 13 characters compared once per message;
        // the HMAC is what makes a forgery fail, not the comparison's timing.
        (self.mac(id).eq_ignore_ascii_case(mac)).then_some(id)
    }

    /// What an address says, if it is of this return path's shape: `None`
    /// for another address, `Some(None)` for a VERP address whose token is
    /// not authentic (forged or damaged), `Some(Some(id))` for a recipient.
    pub fn read_address(&self, address: &str) -> Option<Option<RecipientId>> {
        let a = address
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase();
        let (p, s) = (
            self.prefix.to_ascii_lowercase(),
            self.suffix.to_ascii_lowercase(),
        );
        if a.len() < p.len() + s.len() || !a.starts_with(&p) || !a.ends_with(&s) {
            return None;
        }
        let token = &a[p.len()..a.len() - s.len()];
        Some(self.verify(token))
    }

    /// The envelope sender for the templates (each recipient its own).
    pub fn return_path(&self) -> edm_template::ReturnPath {
        let verp = self.clone();
        edm_template::ReturnPath(std::sync::Arc::new(move |r: &Recipient| verp.address(r.id)))
    }
}

/// Decodes RFC 3461 xtext (`+HH` escapes), as `Original-Envelope-Id` carries
/// the ENVID edm sent.
pub fn xtext_decode(s: &str) -> String {
    let b = s.trim().as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What [`Intake::apply`] did with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied to a recipient: what changed.
    Changed {
        /// Who.
        id: RecipientId,
        /// Their address.
        email: String,
        /// What the store did.
        change: LateApplied,
        /// The RFC 3463 status, if any.
        status: Option<String>,
        /// Added to the shared suppression list (and why).
        suppressed: Option<String>,
    },
    /// Applied before (same message): nothing changed.
    AlreadyApplied {
        /// Who.
        id: RecipientId,
        /// Their address.
        email: String,
    },
    /// Tied to a recipient that was never sent, or who already has this or a
    /// worse outcome: nothing changed, the message is recorded as applied.
    Ignored {
        /// Who.
        id: RecipientId,
        /// Their address.
        email: String,
        /// Why.
        why: String,
    },
    /// Matches no recipient of this campaign (listed by `--unmatched`);
    /// another campaign sharing the mailbox may own it.
    Unmatched {
        /// Why, with the addresses it names.
        why: String,
    },
    /// Not a bounce or complaint (an auto-reply, a delivery report, other mail).
    NotBounce(VerdictKind),
}

impl Applied {
    /// What the mailbox should do with the message: applied (or applied
    /// before) messages are done; others stay for whoever owns them.
    pub fn disposition(&self) -> edm_bounce::mailbox::Disposition {
        use edm_bounce::mailbox::Disposition;
        match self {
            Applied::Changed { .. } | Applied::AlreadyApplied { .. } | Applied::Ignored { .. } => {
                Disposition::Processed
            }
            Applied::Unmatched { .. } | Applied::NotBounce(_) => Disposition::Leave,
        }
    }

    /// True when the campaign's state changed.
    pub fn changed(&self) -> bool {
        matches!(self, Applied::Changed { .. })
    }
}

/// The identity of a message in the bounce mailbox: its own Message-ID, or
/// a hash of its bytes when it has none. Applying the same key twice changes
/// nothing, so a mailbox read twice (or a message copied twice) counts once.
pub fn message_key(raw: &[u8]) -> String {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("message-id") {
            continue;
        }
        let mut value = value.trim().to_string();
        // A folded header continues on lines starting with white space.
        while let Some(next) = lines.peek()
            && next.starts_with([' ', '\t'])
        {
            value.push_str(next.trim());
            lines.next();
        }
        let id = value.trim_start_matches('<').trim_end_matches('>').trim();
        if !id.is_empty() {
            return format!("mid:{id}");
        }
    }
    format!("sha256:{}", hex(&Sha256::digest(raw)))
}

/// Applies bounce-mailbox messages to one campaign's state.
pub struct Intake<'a> {
    campaign: &'a Campaign,
    store: &'a mut dyn CampaignStore,
    verp: Option<Verp>,
    suppression: Option<SharedSuppression>,
    by_email: Option<HashMap<String, (RecipientId, Status)>>,
}

impl<'a> Intake<'a> {
    /// An intake on the campaign's state; applied hard bounces (5.1.x,
    /// 5.2.1) and complaints go to `suppression` when given.
    pub fn new(
        campaign: &'a Campaign,
        store: &'a mut dyn CampaignStore,
        suppression: Option<SharedSuppression>,
    ) -> Result<Intake<'a>, Error> {
        let verp = Verp::load(campaign, store)?;
        Ok(Intake {
            campaign,
            store,
            verp,
            suppression,
            by_email: None,
        })
    }

    /// Reads one raw message and applies it.
    pub fn apply(&mut self, raw: &[u8]) -> Result<Applied, Error> {
        let verdict = edm_bounce::parse(raw);
        self.apply_verdict(&verdict, &message_key(raw))
    }

    /// Applies a parsed message whose identity is `key`.
    pub fn apply_verdict(&mut self, v: &Verdict, key: &str) -> Result<Applied, Error> {
        if !matches!(v.verdict, VerdictKind::Bounce | VerdictKind::Complaint) {
            return Ok(Applied::NotBounce(v.verdict));
        }
        let id = match self.find(v)? {
            Ok(id) => id,
            Err(why) => {
                let addresses: Vec<&str> =
                    v.recipients.iter().map(|r| r.address.as_str()).collect();
                let why = format!(
                    "{} for {}: {why}",
                    match v.verdict {
                        VerdictKind::Complaint => "complaint",
                        _ => "bounce",
                    },
                    if addresses.is_empty() {
                        "no named recipient".to_string()
                    } else {
                        addresses.join(", ")
                    }
                );
                self.store.record_unmatched(&Unmatched {
                    key: key.to_string(),
                    at: now_ms(),
                    summary: why.clone(),
                })?;
                return Ok(Applied::Unmatched { why });
            }
        };
        let Some((email, _)) = self.store.recipient_state(id)? else {
            return Ok(Applied::Unmatched {
                why: format!("no recipient {id}"),
            });
        };
        // The verdict's line about this recipient (edm sends one recipient
        // per message, so usually the only one).
        let norm = edm_store::normalize(&email);
        let line = v
            .recipients
            .iter()
            .find(|r| edm_store::normalize(&r.address) == norm)
            .or_else(|| v.recipients.first());
        let (kind, status, diagnostic) = match v.verdict {
            VerdictKind::Complaint => (
                LateKind::Complaint,
                None,
                Some(format!(
                    "complaint ({})",
                    v.feedback_type.as_deref().unwrap_or("abuse")
                )),
            ),
            _ => {
                let status = line.and_then(|r| r.status.clone());
                // RFC 3463: only class 5 is permanent; a 4.x.x is a delay,
                // never a hard bounce.
                let hard = line.is_some_and(|r| r.hard)
                    && !status.as_deref().is_some_and(|s| s.starts_with('4'));
                let kind = if hard {
                    LateKind::HardBounce
                } else {
                    LateKind::SoftBounce
                };
                (kind, status, line.and_then(|r| r.diagnostic.clone()))
            }
        };
        let late = LateOutcome {
            id,
            at: now_ms(),
            key: key.to_string(),
            kind,
            status: status.clone(),
            diagnostic: diagnostic.clone(),
            soft_bounce_limit: self.campaign.config.bounces.soft_bounce_limit,
        };
        let change = self.store.apply_late(&late)?;
        let changed = match &change {
            LateApplied::AlreadyApplied => return Ok(Applied::AlreadyApplied { id, email }),
            LateApplied::NotSent(st) => {
                return Ok(Applied::Ignored {
                    id,
                    email,
                    why: format!("never sent (status {st})"),
                });
            }
            LateApplied::Unchanged => {
                return Ok(Applied::Ignored {
                    id,
                    email,
                    why: "already bounced or complained".into(),
                });
            }
            LateApplied::NoSuchRecipient => {
                return Ok(Applied::Unmatched {
                    why: format!("no recipient {id}"),
                });
            }
            other => other.clone(),
        };
        let reason = suppression_reason(&changed, status.as_deref(), diagnostic.as_deref());
        let mut suppressed = None;
        if let (Some(reason), Some(list)) = (reason, &self.suppression) {
            list.add(&[SuppressedAddress::now(
                &email,
                &reason,
                &self.campaign.config.campaign.name,
            )])?;
            suppressed = Some(reason);
        }
        let what = match &changed {
            LateApplied::Bounced => format!("bounced {}", status.as_deref().unwrap_or("")),
            LateApplied::Complained => "complained".to_string(),
            LateApplied::SoftBounce(n) => format!(
                "soft bounce {n} of {} {}",
                self.campaign.config.bounces.soft_bounce_limit,
                status.as_deref().unwrap_or("")
            ),
            _ => String::new(),
        };
        self.store
            .log_event(now_ms(), "late", &format!("{email}: {}", what.trim_end()))?;
        Ok(Applied::Changed {
            id,
            email,
            change: changed,
            status,
            suppressed,
        })
    }

    /// Ties a verdict to a recipient: the VERP token first, then the ENVID,
    /// then the returned Message-ID; by address only when the campaign has no
    /// return path (with one, an address alone is what a forger knows).
    fn find(&mut self, v: &Verdict) -> Result<Result<RecipientId, String>, Error> {
        if let Some(verp) = &self.verp {
            let mut forged = false;
            for a in &v.delivered_to {
                match verp.read_address(a) {
                    Some(Some(id)) => return Ok(Ok(id)),
                    Some(None) => forged = true,
                    None => {}
                }
            }
            if forged {
                // Sent to our return path with a token we never issued: a
                // forgery (or damage); the Message-ID is not trusted then.
                return Ok(Err(format!(
                    "the return path's token is not authentic ({})",
                    v.delivered_to.join(", ")
                )));
            }
        }
        if let Some(envid) = &v.envelope_id {
            let mid = xtext_decode(envid);
            if let Some(id) = self.store.find_by_message_id(&mid)? {
                return Ok(Ok(id));
            }
        }
        if let Some(mid) = &v.original_message_id {
            let mid = mid.trim().trim_start_matches('<').trim_end_matches('>');
            if let Some(id) = self.store.find_by_message_id(mid)? {
                return Ok(Ok(id));
            }
            // Amazon SES replaces the Message-ID with `<MessageId@region.amazonses.com>`:
            // its local part is the id SES returned, kept as provider_message_id.
            if let Some((local, _)) = mid.split_once('@')
                && let Some(id) = self.store.find_by_provider_message_id(local)?
            {
                return Ok(Ok(id));
            }
        }
        if self.campaign.config.bounces.return_path.is_some() {
            return Ok(Err(
                "no token, envelope id or Message-ID of this campaign (an address alone is not trusted with a return_path)".into(),
            ));
        }
        if self.by_email.is_none() {
            self.by_email = Some(self.store.rows_by_email()?);
        }
        let Some(map) = &self.by_email else {
            return Ok(Err("no recipient with that address".into()));
        };
        for r in &v.recipients {
            if let Some((id, _)) = map.get(&edm_store::normalize(&r.address)) {
                return Ok(Ok(*id));
            }
        }
        Ok(Err(
            "no envelope id or Message-ID of this campaign, and no recipient with that address"
                .into(),
        ))
    }
}

/// Why an applied outcome puts the address on the shared suppression list:
/// a complaint (the person asked not to get mail), or a hard bounce saying
/// the mailbox does not exist or is disabled (RFC 3463: 5.1.x address
/// status, 5.2.1 mailbox disabled). A policy or content refusal (5.7.x), a
/// full mailbox (5.2.2) or a soft bounce says nothing about the person.
pub fn suppression_reason(
    change: &LateApplied,
    status: Option<&str>,
    diagnostic: Option<&str>,
) -> Option<String> {
    match change {
        LateApplied::Complained => Some(format!(
            "complaint: {}",
            diagnostic.unwrap_or("spam report")
        )),
        LateApplied::Bounced => {
            let s = status?;
            (s.starts_with("5.1.") || s == "5.2.1").then(|| match diagnostic {
                Some(d) => format!("bounced {s}: {d}"),
                None => format!("bounced {s}"),
            })
        }
        _ => None,
    }
}

/// `[bounces] poll` during `edm send`: reads the mailbox every `poll` on a
/// connection of its own to the state (SQLite serialises it with the run's
/// writer), as `edm bounces DIR` does. A mailbox that cannot be read is
/// said in the log and tried again at the next tick: it never stops a run.
/// `None` without `poll` or without a usable mailbox (said once).
pub(crate) fn spawn_poll(c: &Campaign, state: &Path) -> Option<Poller> {
    let every = c.config.bounces.poll?;
    let cfg = match c.mailbox() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            tracing::warn!(
                "[bounces] poll is set without a mailbox (kind, host, ...): bounces are not read during the run"
            );
            return None;
        }
        Err(e) => {
            tracing::warn!("{e}: bounces are not read during the run");
            return None;
        }
    };
    let (c, state) = (c.clone(), state.to_path_buf());
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    // A pass under way when the run ends is let finish (each of its
    // operations is bounded by the mailbox timeout), then the task ends.
    let finish = cfg.timeout.saturating_mul(2);
    let task = tokio::spawn(async move {
        // Once at the start (what came in since the last run), then every tick.
        loop {
            match poll_once(&c, &state, &cfg).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("bounce mailbox: {n} recipients changed"),
                Err(e) => tracing::warn!("bounce mailbox {}:{}: {e}", cfg.host, cfg.port),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stopped => break,
            }
        }
    });
    Some(Poller { task, stop, finish })
}

/// The background reader of `[bounces] poll`.
pub(crate) struct Poller {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    finish: std::time::Duration,
}

impl Poller {
    /// Ends the reader at the end of the run: a pass already under way
    /// finishes (aborting it would drop what a short run had just read: the
    /// first pass starts with the run), within twice the mailbox timeout;
    /// past that it is aborted, and what it had not moved yet is read again
    /// next time (applying a message twice changes nothing).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(self.finish, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn poll_once(
    c: &Campaign,
    state: &Path,
    cfg: &edm_bounce::mailbox::MailboxConfig,
) -> Result<u64, String> {
    use edm_bounce::mailbox::Disposition;
    // The run's store, wherever it lives ([store] url: PostgreSQL), through
    // its own connection: the run keeps writing meanwhile.
    let mut store = crate::state::open_existing(c, Some(state), true).map_err(|e| e.to_string())?;
    let suppression = c
        .config
        .campaign
        .auto_suppress
        .then(SharedSuppression::open_default);
    let mut intake = Intake::new(c, store.as_mut(), suppression).map_err(|e| e.to_string())?;
    let mut changed = 0u64;
    edm_bounce::mailbox::process(cfg, |raw| match intake.apply(raw) {
        Ok(a) => {
            changed += u64::from(a.changed());
            a.disposition()
        }
        Err(e) => {
            tracing::warn!("applying a bounce: {e}");
            Disposition::Leave
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(changed)
}

/// Reads every message of a file or Maildir (its `new` and `cur`, or a
/// folder of `.eml` files), oldest name first, for `edm bounces --from`.
pub fn read_messages(path: &Path) -> Result<Vec<(std::path::PathBuf, Vec<u8>)>, Error> {
    let io = |p: &Path, source: std::io::Error| Error::Io {
        path: p.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        let raw = std::fs::read(path).map_err(|e| io(path, e))?;
        return Ok(vec![(path.to_path_buf(), raw)]);
    }
    let mut dirs = Vec::new();
    for sub in ["new", "cur"] {
        if path.join(sub).is_dir() {
            dirs.push(path.join(sub));
        }
    }
    if dirs.is_empty() {
        dirs.push(path.to_path_buf());
    }
    let mut files = Vec::new();
    for d in dirs {
        for entry in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
            let entry = entry.map_err(|e| io(&d, e))?;
            let p = entry.path();
            let name = entry.file_name();
            if p.is_file() && !name.to_string_lossy().starts_with('.') {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let raw = std::fs::read(&p).map_err(|e| io(&p, e))?;
            Ok((p, raw))
        })
        .collect()
}

#[cfg(test)]
mod tests;
