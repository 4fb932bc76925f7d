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

#[cfg(test)]
impl Outcome {
    /// Tests: recipient `id` accepted at `at` under `message_id` by relay
    /// `smtp` ("250 ok").
    pub(crate) fn sent_for_test(id: RecipientId, at: UnixMillis, message_id: String) -> Outcome {
        Outcome {
            id,
            at,
            kind: OutcomeKind::Sent {
                reply: Reply {
                    code: 250,
                    enhanced: None,
                    text: "ok".into(),
                    provider_message_id: None,
                    relay: None,
                },
                message_id,
                relay: "smtp".into(),
            },
        }
    }
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
        /// The relay that refused it (empty: none, kept as it was), so
        /// `status --json` `by_relay` counts it.
        relay: String,
    },
    /// Permanent failure: status `failed`. Counts an attempt unless the
    /// failure happened before SMTP (stage `Ingest` or `Render`).
    Failed {
        /// The classified failure.
        failure: Failure,
        /// The relay that refused it (empty: none, as for a render failure).
        relay: String,
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
        /// The relay that went silent (empty: none).
        relay: String,
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
    /// What bounces and complaints said after it was sent (schema V5).
    pub late: Option<LateState>,
}

/// What a bounce or complaint says about a recipient already sent.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LateKind {
    /// A permanent failure (status class 5, RFC 3463): `bounced`.
    HardBounce,
    /// A delay or transient failure (class 4): counted; `soft_bounce_limit`
    /// of them in a row make a hard bounce.
    SoftBounce,
    /// A spam complaint (ARF, RFC 5965): `complained`.
    Complaint,
}

/// A late outcome to apply to one recipient ([`CampaignStore::apply_late`](crate::CampaignStore::apply_late)).
#[derive(Clone, Debug, PartialEq)]
pub struct LateOutcome {
    /// Whose.
    pub id: RecipientId,
    /// When it was applied.
    pub at: UnixMillis,
    /// The identity of the message that said it (its Message-ID, or a hash
    /// of its bytes): applying the same key twice changes nothing.
    pub key: String,
    /// What it says.
    pub kind: LateKind,
    /// RFC 3463 status (`5.1.1`), when the message gives or implies one.
    pub status: Option<String>,
    /// The remote server's words, or the ARF feedback type.
    pub diagnostic: Option<String>,
    /// Soft bounces in a row that make a hard one (`[bounces] soft_bounce_limit`).
    pub soft_bounce_limit: u32,
}

/// What [`CampaignStore::apply_late`](crate::CampaignStore::apply_late) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LateApplied {
    /// The recipient is now `bounced` (a hard bounce, or the soft limit reached).
    Bounced,
    /// The recipient is now `complained`.
    Complained,
    /// One more soft bounce (the count so far), below the limit.
    SoftBounce(u32),
    /// This message was applied before: nothing changed.
    AlreadyApplied,
    /// The recipient already has this or a worse late outcome (a bounce after
    /// a complaint, say): nothing changed but the message is recorded.
    Unchanged,
    /// The recipient was never sent (its status): nothing changed.
    NotSent(Status),
    /// No recipient has this id.
    NoSuchRecipient,
}

/// A recipient's late state (schema V5), as `edm report --all` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LateState {
    /// `bounced` or `complained`; `None` while only soft bounces were counted.
    pub outcome: Option<String>,
    /// When the last late outcome was applied.
    pub at: Option<UnixMillis>,
    /// Its RFC 3463 status.
    pub status: Option<String>,
    /// Its diagnostic.
    pub diagnostic: Option<String>,
    /// Soft bounces in a row.
    pub soft_bounces: u32,
}

/// Counts of late outcomes over the campaign.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LateCounts {
    /// Recipients `bounced`.
    pub bounced: u64,
    /// Recipients `complained`.
    pub complained: u64,
    /// Recipients with soft bounces counted and no hard outcome.
    pub soft_bounced: u64,
}

/// One recipient of the reputation window ([`CampaignStore::reputation_window`](crate::CampaignStore::reputation_window)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowEntry {
    /// The recipient's domain.
    pub domain: String,
    /// A hard bounce: `bounced` late, or refused as `recipient_unknown`.
    pub hard_bounce: bool,
    /// A complaint.
    pub complaint: bool,
}

/// A bounce-mailbox message that matched no recipient of the campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmatched {
    /// The message's identity (as [`LateOutcome::key`]).
    pub key: String,
    /// When it was first seen.
    pub at: UnixMillis,
    /// What it is about (verdict, addresses, why it did not match).
    pub summary: String,
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
