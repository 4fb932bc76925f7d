//! The values that go in and out of the store.

use std::collections::BTreeMap;

use edm_model::{Category, Failure, RecipientId, Reply, Stage, Status, UnixMillis};

/// How hard commits are pushed to the disk.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: survives a process crash; a power
    /// loss may lose the last transactions (never corrupts the file).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced.
    Full,
}

/// One CSV row to insert at ingest.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRow {
    /// 1-based line of the CSV where the row starts.
    pub line: u64,
    /// The address as it will be used in RCPT TO.
    pub email: String,
    /// The row's values in header order.
    pub values: Vec<String>,
    /// `Pending`, `Invalid`, `Skipped` or `Suppressed`.
    pub status: Status,
    /// Why it is not pending (for example `InvalidAddress`).
    pub category: Option<Category>,
    /// A human explanation, stored in the `reply` column.
    pub reason: Option<String>,
    /// For a duplicate: the line of the first occurrence.
    pub duplicate_of: Option<u64>,
}

/// What to do with recipients that were `sending` when a run died.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InDoubtPolicy {
    /// Send them again (the server may deliver twice).
    Resend,
    /// Leave them `in_doubt` until an operator decides.
    Skip,
}

/// What happened to one claimed recipient.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Whose outcome.
    pub id: RecipientId,
    /// When it happened.
    pub at: UnixMillis,
    /// What happened.
    pub kind: OutcomeKind,
}

/// The kinds of [`Outcome`].
#[derive(Clone, Debug, PartialEq)]
pub enum OutcomeKind {
    /// Accepted: status `sent`, one more attempt, the reply kept, the category cleared.
    Sent {
        /// The server's final reply.
        reply: Reply,
        /// The Message-ID header value.
        message_id: String,
        /// The relay that sent it (`[[relay]] name`, `smtp` for `[smtp]`).
        relay: String,
    },
    /// Transient failure: status `deferred` until `next_attempt_at`.
    Deferred {
        /// The classified failure.
        failure: Failure,
        /// When it comes due again.
        next_attempt_at: UnixMillis,
        /// False for throttling: being asked to slow down does not use up an attempt.
        count_attempt: bool,
    },
    /// Permanent failure: status `failed`. Counts an attempt unless the
    /// failure happened before SMTP (stage `Ingest` or `Render`).
    Failed {
        /// The classified failure.
        failure: Failure,
    },
    /// Never attempted (the engine stopped): back to `pending`, or to
    /// `deferred` with its `next_attempt_at`, as before the claim.
    Released,
    /// Refused by a reply that stopped the run (it would hit every message):
    /// back to `pending` with the reply kept for `edm report`; no attempt used.
    Held {
        /// The refusal.
        failure: Failure,
    },
    /// The final dot was sent and no reply came: flagged `in_doubt` (kept
    /// whatever happens next), one attempt used. With `next_attempt_at` it is
    /// `deferred` and resent then (`--in-doubt resend`); without, it stays in
    /// status `in_doubt` until an operator decides.
    InDoubt {
        /// What happened instead of a reply.
        failure: Failure,
        /// When to resend it, if at all.
        next_attempt_at: Option<UnixMillis>,
    },
}

/// Counts over the whole campaign.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Recipients by status; every [`Status`] present, zeros included.
    pub counts: BTreeMap<Status, u64>,
    /// All recipients.
    pub total: u64,
    /// Recipients flagged in doubt (whatever their status now).
    pub in_doubt: u64,
    /// Failed, deferred and invalid recipients by category.
    pub by_category: BTreeMap<Category, u64>,
    /// The earliest `next_attempt_at` of deferred recipients.
    pub next_due: Option<UnixMillis>,
    /// The latest `next_attempt_at` of deferred recipients.
    pub last_deferred_due: Option<UnixMillis>,
}

impl Summary {
    /// The count of one status.
    pub fn count(&self, status: Status) -> u64 {
        self.counts.get(&status).copied().unwrap_or(0)
    }
}

/// One line of [`Store::top_replies`](crate::Store::top_replies):
/// `(code, enhanced code, text, count)`, the shape of `Progress::top_replies`.
pub type ReplyCount = (Option<u16>, Option<String>, String, u64);

/// Which rows [`Store::export`](crate::Store::export) yields. Empty lists mean "all".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// Only these statuses (empty: all).
    pub statuses: Vec<Status>,
    /// Only these categories (empty: all, including rows without one).
    pub categories: Vec<Category>,
    /// Only rows flagged in doubt.
    pub in_doubt_only: bool,
}

/// One exported recipient, its CSV values and its delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRow {
    /// 1-based CSV line.
    pub line: u64,
    /// The address.
    pub email: String,
    /// The CSV values in header order.
    pub values: Vec<String>,
    /// Where it stands.
    pub status: Status,
    /// The failure category, for failed, deferred and invalid rows.
    pub category: Option<Category>,
    /// The stage of the last failure.
    pub stage: Option<Stage>,
    /// The last reply's basic code.
    pub smtp_code: Option<u16>,
    /// The last reply's enhanced code.
    pub enhanced_code: Option<String>,
    /// The last reply's text, or the ingest reason.
    pub reply: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When the last attempt was made.
    pub last_attempt_at: Option<UnixMillis>,
    /// Whether it was ever in doubt.
    pub in_doubt: bool,
    /// The Message-ID it was sent with.
    pub message_id: Option<String>,
    /// For a duplicate: the line of the first occurrence.
    pub duplicate_of: Option<u64>,
    /// The relay that sent it.
    pub relay: Option<String>,
    /// The id the provider gave the message (Amazon SES's MessageId).
    pub provider_message_id: Option<String>,
}

/// What the store knows of one relay: the recipients whose `relay` column
/// names it (`edm status --json` `by_relay`; a pool member's daily quota).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Those recipients by status.
    pub by_status: BTreeMap<Status, u64>,
    /// Of them, sent at or after the instant asked for.
    pub sent_since: u64,
}
